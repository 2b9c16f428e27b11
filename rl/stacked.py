"""K independent networks as one batched computation, and their optimizer.

A population (rl/trainer.py, rl/sac.py) trains K members whose networks have the same shapes.
Their parameters live in one ``(K, P)`` tensor, member ``k``'s in row ``k``, in the order of the
member network's ``named_parameters`` with the critic-only parameters last (so the value term's
gradient norm is a norm over one column range). The member networks are
``rl.networks.ActorCritic`` (``forward`` gives logits and values; ``critic=False`` stacks the
policy path only) or ``rl.networks.QNetwork`` (``forward`` gives the action values). The forward
walks the member network's layers once for all K members:

* ``nn.Linear``: ``torch.baddbmm`` over ``(K, B, in)`` activations and ``(K, in, out)`` weights;
* ``nn.Conv2d``: on CUDA one grouped convolution (``groups=K``) over the members' channels, on
  the CPU one convolution per member (faster there);
* ``nn.Flatten`` and the activations of ``rl.networks.ACTIVATIONS``: elementwise, as they are.

A network built of anything else (tests inject small stand-ins) runs member by member, with its
parameters as views of the same ``(K, P)`` tensor, so everything after the forward is the same.
Members never share a statistic: the optimizer's moments, the gradient norm and its clipping are
per row.

``member_state_dict(k)`` / ``load_member_state_dict(k, sd)`` read and write a member in the
single network's own ``state_dict`` format: a member's checkpoint is an ordinary run's. With
``views=True`` the member networks are kept, their parameters views of their rows (``members[k]``
is member k as a live single module). A stack with ``trainable=False`` (SAC's target critics)
has no gradient buffer: its rows change only by writing ``flat``.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rl.networks import ActorCritic, QNetwork

__all__ = ["StackedNetwork", "StackedOptimizer", "stacked_conv2d"]

# The leaves' gradients are strided views of the (K, P) gradient buffer by design (see
# StackedNetwork.__init__); autograd accumulates into them in place and says so once.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")

_ELEMENTWISE = {nn.Tanh: torch.tanh, nn.ReLU: torch.relu, nn.ELU: F.elu, nn.GELU: F.gelu, nn.SiLU: F.silu}


def stacked_conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride, padding, dilation, *,
                   grouped: bool) -> torch.Tensor:
    """K members' convolutions: ``x`` (K, B, C, H, W), ``w`` (K, out, C, kh, kw), ``b`` (K, out)
    -> (K, B, out, H', W'). ``grouped``: one grouped convolution (``groups=K``) over the members'
    channels, the one kernel launch CUDA wants; otherwise one plain convolution per member, which
    on the CPU takes about half the time of the grouped one, forward and backward, for K >= 3
    (MinAtar's 3x3 layer: ``scripts/bench_population.py sps --env minatar_seaquest``)."""
    K = w.shape[0]
    if not grouped:
        return torch.stack([F.conv2d(x[k], w[k], b[k], stride=stride, padding=padding, dilation=dilation)
                            for k in range(K)])
    B, out_c = x.shape[1], w.shape[1]
    # (K, B, C, H, W) -> (B, K*C, H, W)
    y = F.conv2d(x.transpose(0, 1).flatten(1, 2), w.reshape(K * out_c, *w.shape[2:]), b.reshape(-1),
                 stride=stride, padding=padding, dilation=dilation, groups=K)
    return y.view(B, K, out_c, *y.shape[2:]).transpose(0, 1)


def _critic_names(net: nn.Module) -> set[str]:
    """Names of the parameters only the value loss reaches (rl.networks.ActorCritic: ``critic.*``)."""
    getter = getattr(net, "critic_parameters", None)
    ids = {id(p) for p in getter()} if callable(getter) else None
    return {name for name, p in net.named_parameters()
            if (id(p) in ids if ids is not None else any(k in name for k in ("critic", "value")))}


class StackedNetwork(nn.Module):
    """``K`` networks of one architecture; ``forward(obs (K, B, ...))`` gives what each network's
    forward does, stacked: ``logits (K, B, A), values (K, B)`` (ActorCritic) or ``Q (K, B, A)``
    (QNetwork).

    ``critic=False``: the critic-only parameters (the value path) stay out of the stack; each
    member's own values of them are kept as built and returned by ``member_state_dict``.
    ``views``: keep the member networks, their parameters views of their rows. ``trainable``:
    False gives no gradient buffer (target networks).
    """

    def __init__(self, nets: Sequence[nn.Module], *, critic: bool = True, views: bool = False,
                 trainable: bool = True):
        super().__init__()
        if not nets:
            raise ValueError("a population needs at least one member network")
        first = nets[0]
        value_path = _critic_names(first)
        names = [n for n, p in first.named_parameters()
                 if p.requires_grad and (critic or n not in value_path)]
        stacked_critic = value_path & set(names)
        order = [n for n in names if n not in stacked_critic] + [n for n in names if n in stacked_critic]
        shapes = {n: p.shape for n, p in first.named_parameters()}
        for k, net in enumerate(nets[1:], 1):
            other = {n: p.shape for n, p in net.named_parameters() if n in shapes and n in names}
            if other != {n: shapes[n] for n in names}:
                raise ValueError(f"member {k}'s network differs in shape from member 0's")
        self.K = len(nets)
        self.layout: OrderedDict[str, tuple[int, int, torch.Size]] = OrderedDict()
        offset = 0
        for n in order:
            size = shapes[n].numel()
            self.layout[n] = (offset, offset + size, shapes[n])
            offset += size
        self.P = offset
        critic_offsets = [self.layout[n][0] for n in order if n in stacked_critic]
        self.critic_columns = (min(critic_offsets), self.P) if critic_offsets else (self.P, self.P)
        dtype, device = next(first.parameters()).dtype, next(first.parameters()).device
        flat = torch.empty(self.K, self.P, dtype=dtype, device=device)
        for k, net in enumerate(nets):
            params = dict(net.named_parameters())
            for n, (a, b, _) in self.layout.items():
                flat[k, a:b].copy_(params[n].detach().reshape(-1))
        self.flat = nn.Parameter(flat, requires_grad=trainable)
        if trainable:
            self.flat.grad = torch.zeros_like(flat)
        self.trainable = trainable
        # what is not stacked (the value path with critic=False), each member's own, as built
        self._fixed = [{n: t.detach().cpu().clone() for n, t in net.state_dict().items()
                        if n not in self.layout} for net in nets]
        self._dtype, self._device = dtype, device
        self.n_actions = int(getattr(first, "n_actions", 0)) or None
        self.preprocess = getattr(first, "preprocess", None)
        self._raw = bool(getattr(first, "_raw", False))
        self.shared = bool(getattr(first, "shared", False))
        self.batched = self._batchable(first)
        self.is_q = isinstance(first, QNetwork)
        self._critic_stacked = bool(critic)
        self._template = first
        self.members: list[nn.Module] = []
        if self.batched:
            if self.is_q:
                self._q = self._plan(first.q, "q")
            else:
                self._actor = self._plan(first.actor, "actor")
                self._critic = self._plan(first.critic, "critic") if self._critic_stacked else ()
                self._trunk = self._plan(first.trunk, "trunk") if self.shared else ()
        if not self.batched or views:
            # Each member's parameters become views of its row (data and gradient): stand-in
            # networks run member by member with the optimizer and the norms acting on ``flat``
            # as in the batched path; ``views`` keeps live single modules of a batched stack.
            self.members = list(nets)
            for k, net in enumerate(nets):
                params = dict(net.named_parameters())
                for n, (a, b, shape) in self.layout.items():
                    params[n].data = self.flat.data[k, a:b].view(shape)
                    if trainable:
                        params[n].grad = self.flat.grad[k, a:b].view(shape)
                    else:
                        params[n].requires_grad_(False)
        if not self.batched:
            self._members_module = nn.ModuleList(nets)

    # ------------------------------------------------------------------ structure
    @staticmethod
    def _batchable(net: nn.Module) -> bool:
        if type(net) is QNetwork:
            parts = [net.q]
        elif type(net) is ActorCritic:
            parts = [net.actor, net.critic] + ([net.trunk] if net.shared else [])
        else:
            return False
        for part in parts:
            modules = list(part) if isinstance(part, nn.Sequential) else [part]
            for m in modules:
                if not isinstance(m, (nn.Linear, nn.Conv2d, nn.Flatten, *_ELEMENTWISE)):
                    return False
                if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or m.groups != 1):
                    return False
        return True

    def _plan(self, part: nn.Module, prefix: str) -> tuple[tuple[str, Any], ...]:
        modules = list(part.named_children()) if isinstance(part, nn.Sequential) else [("", part)]
        plan = []
        for name, m in modules:
            key = f"{prefix}.{name}" if name else prefix
            if isinstance(m, nn.Linear):  # x @ W^T + b as baddbmm(b (K, 1, out), x, W^T (K, in, out))
                plan.append(("linear", (self._leaf(key + ".weight", lambda t: t.transpose(1, 2)),
                                        self._leaf(key + ".bias", lambda t: t.unsqueeze(1)))))
            elif isinstance(m, nn.Conv2d):
                plan.append(("conv", (self._leaf(key + ".weight"), self._leaf(key + ".bias"),
                                      m.stride, m.padding, m.dilation)))
            elif isinstance(m, nn.Flatten):
                plan.append(("flatten", None))
            else:
                plan.append(("act", _ELEMENTWISE[type(m)]))
        return tuple(plan)

    def _leaf(self, name: str, view=None) -> torch.Tensor:
        """A leaf tensor whose data and gradient are views of parameter ``name``'s columns of the
        two (K, P) buffers (``view`` of the (K, *shape) view, e.g. the transposed weight the batched
        matmul takes): backward accumulates straight into ``flat.grad``, and the forward needs no
        per-call reshaping (slicing ``flat`` in the forward instead would make each slice's
        backward write a whole (K, P) tensor)."""
        a, b, shape = self.layout[name]
        view = view or (lambda t: t)
        leaf = torch.empty(0, dtype=self._dtype, device=self._device, requires_grad=self.trainable)
        leaf.data = view(self.flat.data[:, a:b].view(self.K, *shape))
        if self.trainable:
            leaf.grad = view(self.flat.grad[:, a:b].view(self.K, *shape))
        return leaf

    def _run(self, plan, x: torch.Tensor) -> torch.Tensor:
        """``x``: (K, B, features...) -> (K, B, out...)."""
        for kind, arg in plan:
            if kind == "linear":
                x = torch.baddbmm(arg[1], x, arg[0])
            elif kind == "act":
                x = arg(x)
            elif kind == "flatten":
                x = x.flatten(2)
            else:
                x = stacked_conv2d(x, *arg, grouped=x.is_cuda)
        return x

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        if self._raw or self.preprocess is None:
            return obs
        K, B = obs.shape[:2]
        x = self.preprocess(obs.reshape(K * B, *obs.shape[2:]))
        return x.view(K, B, *x.shape[1:])

    # ------------------------------------------------------------------ forward
    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Logits ``(K, B, A)`` and values ``(K, B)`` for observations ``(K, B, *obs_shape)``;
        a stack of QNetworks: the action values ``(K, B, A)``."""
        if self.is_q:
            if not self.batched:
                return torch.stack([net(obs[k]) for k, net in enumerate(self.members)])
            return self._run(self._q, self._features(obs))
        if not self.batched:
            outs = [net(obs[k]) for k, net in enumerate(self.members)]
            return torch.stack([o[0] for o in outs]), torch.stack([o[1].reshape(-1) for o in outs])
        if not self._critic_stacked:
            raise ValueError("this stack holds the policy path only (critic=False): call logits()")
        x = self._features(obs)
        if self.shared:
            h = self._run(self._trunk, x)
            return self._run(self._actor, h), self._run(self._critic, h).squeeze(-1)
        return self._run(self._actor, x), self._run(self._critic, x).squeeze(-1)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.batched:
            return torch.stack([net.logits(obs[k]) for k, net in enumerate(self.members)])
        x = self._features(obs)
        if self.shared:
            x = self._run(self._trunk, x)
        return self._run(self._actor, x)

    def values(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.batched:
            return self.forward(obs)[1]
        if not self._critic_stacked:
            raise ValueError("this stack holds the policy path only (critic=False): no values")
        x = self._features(obs)
        if self.shared:
            x = self._run(self._trunk, x)
        return self._run(self._critic, x).squeeze(-1)

    # ------------------------------------------------------------------ members
    def member_state_dict(self, k: int) -> OrderedDict[str, torch.Tensor]:
        """Member ``k`` as the single network's ``state_dict`` (copies, on the CPU)."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name in self._template.state_dict():
            if name in self.layout:
                a, b, shape = self.layout[name]
                out[name] = self.flat.detach()[k, a:b].reshape(shape).cpu().clone()
            else:
                out[name] = self._fixed[k][name].clone()
        return out

    def load_member_state_dict(self, k: int, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.layout if n not in state]
        if missing:
            raise ValueError(f"the checkpoint's model lacks {missing[:3]} (not this network)")
        with torch.no_grad():
            for n, (a, b, shape) in self.layout.items():
                t = state[n]
                if tuple(t.shape) != tuple(shape):
                    raise ValueError(f"the checkpoint's {n} has shape {tuple(t.shape)}; "
                                     f"this network's is {tuple(shape)}")
                self.flat[k, a:b].copy_(t.reshape(-1))
            for n in self._fixed[k]:
                if n in state:
                    self._fixed[k][n] = state[n].detach().cpu().clone()
                    if self.members:
                        self.members[k].state_dict()[n].copy_(state[n])


class StackedOptimizer:
    """Adam or RMSprop on the ``(K, P)`` parameter rows, with a learning rate per member.

    The update of each row is torch's own (``torch.optim.Adam`` with ``eps`` outside the square
    root and bias correction; ``torch.optim.RMSprop`` with ``centered=False``, no momentum),
    written over rows so one call steps every member. ``step(lr, active)`` leaves the rows where
    ``active`` is False untouched, moments and step counts included (a member stopped by its
    target KL, finished, or diverged).
    """

    def __init__(self, name: str, flat: torch.Tensor, *, adam_eps: float = 1e-8,
                 rmsprop_alpha: float = 0.99, rmsprop_eps: float = 1e-8,
                 betas: tuple[float, float] = (0.9, 0.999)):
        if name not in ("adam", "rmsprop"):
            raise ValueError(f"algo.optimizer={name!r} is not allowed; allowed: adam, rmsprop")
        self.name, self.flat = name, flat
        self.betas, self.adam_eps = betas, adam_eps
        self.alpha, self.rms_eps = rmsprop_alpha, rmsprop_eps
        K = flat.shape[0]
        self.steps = np.zeros(K, dtype=np.float64)
        self.exp_avg = torch.zeros_like(flat.detach()) if name == "adam" else None
        self.exp_avg_sq = torch.zeros_like(flat.detach())

    @torch.no_grad()
    def step(self, lr: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """One step of every row where ``active`` (K,) bool; ``lr``: (K,) learning rates."""
        p, g = self.flat.data, self.flat.grad
        K = p.shape[0]
        # the per-row scalars in NumPy: a handful of K-vectors, cheaper than tensor ops
        act = np.ones(K, dtype=bool) if active is None else active.cpu().numpy()
        if not act.any():
            return
        self.steps += act
        rows = None if act.all() else torch.from_numpy(np.flatnonzero(act)).to(p.device)
        lr = lr.cpu().numpy().astype(np.float64)

        def column(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(x).to(p.dtype).to(p.device).unsqueeze(1)

        if self.name == "adam":
            b1, b2 = self.betas
            t = self.steps
            step_size = column(lr / (1.0 - b1 ** t))
            bc2_sqrt = column(np.sqrt(1.0 - b2 ** t))
            if rows is None:
                self.exp_avg.lerp_(g, 1 - b1)
                self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = self.exp_avg_sq.sqrt().div_(bc2_sqrt).add_(self.adam_eps)
                p.sub_(self.exp_avg.mul(step_size).div_(denom))
            else:
                m = self.exp_avg[rows].lerp_(g[rows], 1 - b1)
                v = self.exp_avg_sq[rows].mul_(b2).addcmul_(g[rows], g[rows], value=1 - b2)
                self.exp_avg[rows], self.exp_avg_sq[rows] = m, v
                denom = (v.sqrt() / bc2_sqrt[rows]).add_(self.adam_eps)
                p[rows] = p[rows] - step_size[rows] * m / denom
        else:
            a = self.alpha
            lr_col = column(lr)
            if rows is None:
                self.exp_avg_sq.mul_(a).addcmul_(g, g, value=1 - a)
                p.sub_(g.mul(lr_col).div_(self.exp_avg_sq.sqrt().add_(self.rms_eps)))
            else:
                v = self.exp_avg_sq[rows].mul_(a).addcmul_(g[rows], g[rows], value=1 - a)
                self.exp_avg_sq[rows] = v
                p[rows] = p[rows] - lr_col[rows] * g[rows] / v.sqrt().add_(self.rms_eps)

    def member_state(self, k: int) -> dict[str, Any]:
        return {"name": self.name, "step": float(self.steps[k]),
                "exp_avg": None if self.exp_avg is None else self.exp_avg[k].cpu().clone(),
                "exp_avg_sq": self.exp_avg_sq[k].cpu().clone()}

    def load_member_state(self, k: int, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("name") != self.name:
            raise ValueError(f"the checkpoint's optimizer state is not {self.name}'s "
                             "(a checkpoint of another algo or of an older version)")
        self.steps[k] = float(state["step"])
        if self.exp_avg is not None:
            self.exp_avg[k].copy_(state["exp_avg"])
        self.exp_avg_sq[k].copy_(state["exp_avg_sq"])


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row of a (K, P) tensor."""
    return torch.linalg.vector_norm(x, dim=1)

