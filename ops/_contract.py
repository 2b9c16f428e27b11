"""The backend contract: what ``ops.functions`` hands a backend and what it gets back.

Two backends implement ``Backend`` in full: ``ops.reference`` (plain PyTorch, the CPU path and
the oracle) and ``ops.kernels.backend`` (Triton). Every entry point takes keyword-only
arguments of the types below and returns a typed result, so an argument cannot slip into the
wrong position between layers.

* ``Mapping``: alpha, temperature and the algorithm, chosen once from alpha by ``mapping``.
* ``Rows``: flattened ``(N, V)`` raw logits (not yet divided by the temperature) with unit
  column stride, the optional bool mask with the same layout, and the mapping.
* ``LossInput``: ``Rows`` plus the per-row operands of a fused loss. Building one makes every
  per-row tensor a contiguous 1-D tensor of length N in the compute dtype (scalars and
  broadcasts materialised, strided views copied): the kernels read them as ``ptr + row``.
* ``SoftInput``: ``Rows`` plus what the soft actor loss reads: ``q_values`` in the logits'
  ``(N, V)`` row-major layout (made contiguous here) and the contiguous per-row ``row_scale``.
* ``ProbsResult``, ``EntropyResult``, ``LossRows``: the results. ``saved`` is opaque: a
  NamedTuple of tensors (or None) that only the same backend's backward reads; the autograd
  Functions store it with ``save_for_backward`` and rebuild it by its type.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

from ops._validate import compute_dtype


class Algorithm(enum.IntEnum):
    """How a backend finds the mapping; the values are the kernels' MAPPING constexpr codes."""

    SOFTMAX = 0  # alpha = 1: log-sum-exp, closed form
    SPARSEMAX = 1  # alpha = 2: exact threshold (sort; kernels: Michelot steps + closed form)
    ENTMAX15 = 2  # alpha = 1.5: exact threshold (sort; kernels: Newton + closed form)
    ENTMAX = 3  # any other alpha > 1: threshold by bisection (kernels: Newton when alpha < 2)


@dataclass(frozen=True)
class Mapping:
    """The policy mapping of ``z = logits / temperature`` (DESIGN.md section 1).

    ``newton``: the kernels' threshold search takes Newton steps from the start (``h(tau)`` is
    convex for alpha <= 2); otherwise it bisects until a Newton step keeps the support.
    Build it with ``mapping``, the one place that reads alpha.
    """

    alpha: float
    temperature: float
    algorithm: Algorithm
    newton: bool


@functools.lru_cache(maxsize=256)
def mapping(alpha: float, temperature: float) -> Mapping:
    """The ``Mapping`` for validated ``alpha >= 1`` and ``temperature > 0``."""
    alpha, temperature = float(alpha), float(temperature)
    if alpha == 1.0:
        algorithm = Algorithm.SOFTMAX
    elif alpha == 2.0:
        algorithm = Algorithm.SPARSEMAX
    elif alpha == 1.5:
        algorithm = Algorithm.ENTMAX15
    else:
        algorithm = Algorithm.ENTMAX
    return Mapping(alpha, temperature, algorithm, newton=1.0 < alpha <= 2.0)


@dataclass(frozen=True)
class Rows:
    """``(N, V)`` raw logits and mask (True = allowed) in the layout the backends address.

    Both are made row-major contiguous here (a no-op for the usual contiguous input), so the
    logits, the mask and a gradient of the same shape share one row stride and unit columns.
    """

    logits: torch.Tensor
    mask: torch.Tensor | None
    mapping: Mapping

    def __post_init__(self):
        logits = self.logits
        if logits.dim() != 2:
            raise ValueError(f"Rows takes flattened (N, V) logits; got shape {tuple(logits.shape)}")
        if not logits.is_contiguous():
            object.__setattr__(self, "logits", logits.contiguous())
        mask = self.mask
        if mask is not None:
            if mask.shape != logits.shape or mask.dtype != torch.bool:
                raise ValueError(f"Rows.mask must be bool {tuple(logits.shape)}; got "
                                 f"{mask.dtype} {tuple(mask.shape)}")
            if not mask.is_contiguous():
                object.__setattr__(self, "mask", mask.contiguous())

    @property
    def n_rows(self) -> int:
        return self.logits.shape[0]


def _per_row(name: str, value: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``value`` as a contiguous ``(n,)`` tensor of ``dtype``: a fresh copy unless it already is.

    ``.view(-1)`` keeps strides and a scalar's ``expand`` has stride 0, so ``contiguous`` is what
    makes ``ptr + row`` address row ``row``.
    """
    if value.dtype != dtype:
        value = value.to(dtype)
    if value.dim() != 1:
        value = value.reshape(-1)
    if value.shape[0] != n:
        raise ValueError(f"{name} has {value.shape[0]} rows; the logits have {n}")
    return value if value.is_contiguous() else value.contiguous()


@dataclass(frozen=True)
class LossInput:
    """Everything a fused loss (``pg`` or ``ppo``) reads.

    ``actions`` int64, ``advantages``, ``row_scale`` (the loss is ``sum_i row_scale_i l_i``) and,
    for PPO, ``old_log_prob``: per-row, made contiguous ``(N,)`` here (int64 / compute dtype).
    ``beta``: the entropy coefficient, a float or (a population's members in one call) a
    per-row tensor, made contiguous ``(N,)`` like the others.
    ``grad_out``: optional ``(N, V)`` buffer in the logits' dtype that receives the gradient; it
    may alias the logits. ``need_norms``: report the two squared gradient norms (the kernels get
    them for free and always do).
    """

    rows: Rows
    actions: torch.Tensor
    advantages: torch.Tensor
    row_scale: torch.Tensor
    beta: float | torch.Tensor
    need_grad: bool
    grad_out: torch.Tensor | None = None
    need_norms: bool = True
    old_log_prob: torch.Tensor | None = None
    clip_eps: float | None = None

    def __post_init__(self):
        n = self.rows.n_rows
        cdt = compute_dtype(self.rows.logits.dtype)
        set_ = functools.partial(object.__setattr__, self)
        set_("actions", _per_row("actions", self.actions, n, torch.int64))
        set_("advantages", _per_row("advantages", self.advantages, n, cdt))
        set_("row_scale", _per_row("row_scale", self.row_scale, n, cdt))
        if isinstance(self.beta, torch.Tensor):
            set_("beta", _per_row("beta", self.beta.detach(), n, cdt))
        if (self.old_log_prob is None) != (self.clip_eps is None):
            raise ValueError("LossInput: old_log_prob and clip_eps go together (PPO) or not at all")
        if self.old_log_prob is not None:
            set_("old_log_prob", _per_row("old_log_prob", self.old_log_prob, n, cdt))
        g = self.grad_out
        if g is not None and (g.shape != self.rows.logits.shape or not g.is_contiguous()
                              or g.dtype != self.rows.logits.dtype):
            raise ValueError("LossInput.grad_out must be contiguous with the logits' shape and dtype")

    @property
    def is_ppo(self) -> bool:
        return self.old_log_prob is not None


@dataclass(frozen=True)
class SoftInput:
    """Everything the soft actor loss (``soft``) reads.

    ``q_values``: ``(N, V)`` action values, made contiguous here in the logits' row-major layout
    (its own float dtype; the backends compute in the logits' compute dtype). Entries of masked
    actions (mask False or logit -inf) are never read into a result, whatever they hold.
    ``row_scale``: per-row, contiguous ``(N,)`` in the compute dtype (the loss is
    ``sum_i row_scale_i l_i``). ``beta``, ``need_grad`` / ``need_norms`` as in ``LossInput``
    (a per-row beta: the members of a population of SAC runs that share a mapping, one call).
    """

    rows: Rows
    q_values: torch.Tensor
    row_scale: torch.Tensor
    beta: float | torch.Tensor
    need_grad: bool
    need_norms: bool = True

    def __post_init__(self):
        n = self.rows.n_rows
        q = self.q_values
        if q.shape != self.rows.logits.shape or not q.is_floating_point():
            raise ValueError(f"SoftInput.q_values must be a float tensor of the logits' shape "
                             f"{tuple(self.rows.logits.shape)}; got {q.dtype} {tuple(q.shape)}")
        if not q.is_contiguous():
            object.__setattr__(self, "q_values", q.contiguous())
        cdt = compute_dtype(self.rows.logits.dtype)
        object.__setattr__(self, "row_scale", _per_row("row_scale", self.row_scale, n, cdt))
        if isinstance(self.beta, torch.Tensor):
            object.__setattr__(self, "beta", _per_row("beta", self.beta.detach(), n, cdt))


class ProbsResult(NamedTuple):
    """``probs``: (N, V) in the logits' dtype; ``saved``: for the same backend's backward."""

    probs: torch.Tensor
    saved: Any


class EntropyResult(NamedTuple):
    """``entropy`` (N,) in the compute dtype, ``support`` (N,) int32, ``saved`` for backward."""

    entropy: torch.Tensor
    support: torch.Tensor
    saved: Any


class LossRows(NamedTuple):
    """Per-row results of a fused loss, in the compute dtype unless stated.

    ``loss_rows`` l_i; ``entropy``; ``log_prob`` of the taken action (None for ``soft``: no
    action is taken); ``support`` int32;
    ``grad`` the gradient of ``sum_i row_scale_i l_i`` (logits' dtype; None without need_grad);
    ``grad_policy_sq`` / ``grad_entropy_sq`` (N,) per-row squared norms of its two terms' rows
    (their sums are the squared Frobenius norms; None when not computed); PPO only: ``ratio`` and
    bool ``clipped``.
    """

    loss_rows: torch.Tensor
    entropy: torch.Tensor
    log_prob: torch.Tensor
    support: torch.Tensor
    grad: torch.Tensor | None
    grad_policy_sq: torch.Tensor | None
    grad_entropy_sq: torch.Tensor | None
    ratio: torch.Tensor | None = None
    clipped: torch.Tensor | None = None


@runtime_checkable
class Backend(Protocol):
    """What ``ops.reference`` and ``ops.kernels.backend`` implement (as modules)."""

    def probs_forward(self, *, rows: Rows) -> ProbsResult: ...

    def probs_backward(self, *, saved: Any, grad_probs: torch.Tensor,
                       mapping: Mapping) -> torch.Tensor: ...

    def entropy_forward(self, *, rows: Rows) -> EntropyResult: ...

    def entropy_backward(self, *, saved: Any, grad_entropy: torch.Tensor,
                         mapping: Mapping) -> torch.Tensor: ...

    def pg(self, *, inp: LossInput) -> LossRows: ...

    def ppo(self, *, inp: LossInput) -> LossRows: ...

    def soft(self, *, inp: SoftInput) -> LossRows: ...
