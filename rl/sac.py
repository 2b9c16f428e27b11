"""Discrete soft actor-critic (``algo=sac``) for every policy mapping: a population of K runs,
one run is K = 1.

Christodoulou 2019, "Soft Actor-Critic for Discrete Action Settings"; CleanRL's ``sac_atari.py``;
TorchRL's ``DiscreteSACLoss``. With the mapping ``p = mapping(logits / T)`` (softmax, entmax,
sparsemax) and its own entropy ``H`` (Shannon or Tsallis), each gradient step on a replay batch::

    V(s')  = <p(s'), min_i Qtarg_i(s', .)> + beta H(p(s'))      ops.soft_value (mask at s')
    y      = r + gamma (1 - terminated) V(s')                   a truncated episode bootstraps
    L_Q    = mean (Q_1(s, a) - y)^2 + mean (Q_2(s, a) - y)^2    critic step (CleanRL's qf_loss)
    L_pi   = mean -<p(s), min_i Q_i(s, .)> - beta H(p(s))       ops.soft_policy_loss, Q detached

then beta (and a scheduled or tuned temperature) advances: fixed, scheduled, or tuned to a target
entropy ``f * H_max`` with ``H_max = ops.max_entropy(alpha, n_allowed)``, the same rl/schedules.py
`Coefficient` as the on-policy trainer, stepped once per gradient step on the batch's entropy.
Every ``algo.target_update_interval`` env steps the targets move:
``Qtarg <- tau Q + (1 - tau) Qtarg`` (tau = 1: a hard copy, CleanRL's default).

With ``algo.td_steps = n > 1`` the target is the soft n-step return along the stored episode
(rl/replay.py), cut at its end, at the newest step, and at ``n`` steps (``m <= n`` steps)::

    y = sum_{j<m} gamma^j r_{t+j} + sum_{0<j<m} gamma^j beta H(p(s_{t+j}))
        + gamma^m (1 - terminated_{t+m-1}) V(s_{t+m})

the soft Bellman backup unrolled along the stored actions (the stored actions stand in for the
current policy's, without an off-policy correction, as in Rainbow's n-step returns, Hessel et al.
2018), with the current policy's entropy bonus at the intermediate states that the soft backup
adds. n = 1 is the one-step target above.

The loop is `rl.trainer.Trainer.train`'s, with `SACTrainer` supplying its two steps:
``collect_rollout`` plays ``algo.train_frequency`` steps of the K x N envs into the replay buffer
(rl/replay.py; uniformly random allowed actions for a member's first ``algo.learning_starts`` env
steps, drawn from its own generator), ``update`` runs ``algo.gradient_steps`` gradient steps. The
callbacks (TensorBoard, checkpoints, progress, evaluation), the run directories, ``summary.json``
(the same keys; ``updates`` counts loop iterations, warm-up included), stop requests and signals
are the on-policy trainer's.

A population (``SACTrainer(members=[...])``, what `rl.population.train_population` builds for
SAC runs) shares the env, network shapes, total steps, num_envs and the algo's buffer and batch
sizes; its members differ in seed, beta and its schedule (a target entropy included), the
temperature and its schedule, the mapping (alpha) and the two learning rates
(`rl.population.MEMBER_FIELDS`). As in the on-policy trainer they share no statistic:

* networks: the actors (``rl.networks.ActorCritic``, its value path unused and not stacked), the
  twin critics (``rl.networks.QNetwork``; rows ``k`` and ``K + k`` of one stack are member k's
  Q_1 and Q_2) and their targets are `rl.stacked.StackedNetwork` s, K parameter sets evaluated
  in one batched computation; Adam (`rl.stacked.StackedOptimizer`) steps each member's rows,
  gradient clipping on each member's own norm (its two critics together, as
  ``clip_grad_norm_`` over both); the target update is one lerp/copy of the (2K, P) rows;
* replay: member k's transitions are its own columns of one buffer and its batches are drawn by
  its own generator (rl/replay.py); the memory of all K buffers is stated before anything is
  allocated and refused above ``algo.max_buffer_gb`` (the total);
* losses: ``ops.soft_value`` / ``ops.soft_policy_loss`` run once per distinct (alpha,
  temperature) of the members, with beta per row when they differ in it; every member's loss is
  its own mean (the group's mean times its size), its metrics come from its own rows;
* envs: the K x N envs step as one vector env (or K vector envs with ``exact_env_resume``);
* a member whose target, loss or gradient becomes non-finite stops alone ("diverged"), before
  its bad step; the others go on.

Each member's checkpoint is a single run's: the actor (``model``, what ``rl-eval`` and
``load_policy`` read), the critics, their targets, both optimizers' moments, the coefficients,
RNG states, counters and the envs' last observation; its replay buffer goes into
``last.replay.pt`` next to it when it is at most ``algo.checkpoint_buffer_gb`` GiB. A resume
without it (too large, or missing) starts from an empty buffer and waits until it holds
``algo.batch_size`` transitions before training again. With ``exact_env_resume`` and the buffer
saved, "train N+M" and "train N, resume, train M" give bit-identical networks on CPU, for a
single run and for every member of a population.

Limits: members of one population take their gradient steps together, so a member whose warm-up
or buffer is behind (resumed without its buffer beside others) waits without stepping while the
others step. A population mixing members resumed with their envs pickled and others whose
buffers were restored without them skips one replay slot for the former (their transitions are
kept, the exact-resume guarantee is not). Checkpoints of the single-run trainer before
populations resume: their ``torch.optim.Adam`` states are converted to the member's rows.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ops
from rl.callbacks import Callback
from rl.checkpoint import load_checkpoint, save_checkpoint
from rl.replay import ReplayBuffer, replay_nbytes
from rl.stacked import StackedNetwork, StackedOptimizer, row_norms
from rl.trainer import CHECKPOINT_NAME, Trainer

__all__ = ["SACTrainer", "replay_path"]

log = logging.getLogger(__name__)

_GIB = 2 ** 30


def replay_path(checkpoint: str | os.PathLike) -> Path:
    """Where the replay buffer of ``checkpoint`` is saved (``last.pt`` -> ``last.replay.pt``)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".replay.pt")



def _torch_adam_rows(state: dict, first: int, count: int, name: str = "adam") -> dict[str, Any]:
    """A `rl.stacked.StackedOptimizer` row state from a ``torch.optim.Adam`` state_dict (the
    single-run trainer before populations): parameters ``first .. first + count - 1``, flattened
    in order (the stacked layout's)."""
    per_param = state["state"]
    steps = {float(per_param[i]["step"]) for i in range(first, first + count) if i in per_param}
    if len(steps) > 1:
        raise ValueError("the checkpoint's Adam state has parameters at different step counts")

    def flat(key: str) -> torch.Tensor:
        return torch.cat([per_param[i][key].reshape(-1) for i in range(first, first + count)])

    return {"name": name, "step": steps.pop() if steps else 0.0, "exp_avg": flat("exp_avg"),
            "exp_avg_sq": flat("exp_avg_sq")}


# The ops calls of `SACTrainer._per_group`: (rows, *others, beta, alpha, temperature).
def _probs(logits, mask, beta, alpha, temperature):
    return ops.probs(logits, alpha, temperature, mask)


def _soft_value(logits, q, mask, beta, alpha, temperature):
    return ops.soft_value(logits, q, beta, alpha, temperature, mask)


def _soft_policy_loss(logits, q, mask, beta, alpha, temperature):
    return ops.soft_policy_loss(logits, q, beta, alpha, temperature, mask)


class SACTrainer(Trainer):
    """Trains a population of SAC runs (one run: ``SACTrainer(cfg, run_dir)``), as
    `rl.trainer.Trainer` trains PPO runs.

    Parameters
    ----------
    cfg, run_dir, resume : as `rl.trainer.Trainer` (``cfg.algo.name == "sac"``).
    members : ``rl.population.Member`` s of a population instead (equal
        ``rl.population.population_key``); ``train()`` then returns the list of summaries and
        does not raise on divergence.
    make_envs : factory, by default ``rl.envs.make_envs``.
    callbacks : extra callbacks after the trainer's own.

    ``actor``, ``q1``, ``q2``, ``q1_target``, ``q2_target`` are member 0's networks (a single
    run's) as ordinary modules whose parameters are views of their stacked rows.
    """

    # Measured in LunarLander's warm-up (docs/beta.md, "Sparse policies"): at temperature 2 the
    # support still reached one action on 2 of 5 seeds but came back within 1,500 env steps;
    # with a slower actor it did not reach one action for 10 updates on any seed.
    collapse_remedy = ("On SAC a temperature above 1 (e.g. policy.temperature=2) brought the support "
                       "back, and a slower actor (e.g. algo.learning_rate=3e-4) kept it")

    def __init__(self, cfg: Any = None, run_dir: str | os.PathLike | None = None,
                 resume: str | None = None, *, members: Sequence[Any] | None = None,
                 make_envs: Callable | None = None, callbacks: Sequence[Callback] = ()):
        checked, states = self._setup_members(cfg, run_dir, resume, members)
        for m in self.members:
            if m.cfg.algo.name != "sac":
                raise ValueError(f"algo.name={m.cfg.algo.name!r} is not allowed for SACTrainer; "
                                 "allowed: sac")
        a = self.algo
        K, N, dev = self.K, self.N, self.device
        info = self._setup_envs(checked[0].env, make_envs)
        A = self.n_actions

        # Networks: member k's actor and critics initialized from its own seed, in a single run's
        # order (actor, Q_1, Q_2); the targets start as copies.
        from rl.networks import ActorCritic, QNetwork

        net = checked[0].network
        actors, q1s, q2s = [], [], []
        for m in self.members:
            torch.manual_seed(m.seed)
            actors.append(ActorCritic(info.observation_space, A, hidden_sizes=net.hidden_sizes,
                                      activation=net.activation, shared=net.shared,
                                      network=net.network).to(dev))
            for qs in (q1s, q2s):
                qs.append(QNetwork(info.observation_space, A, hidden_sizes=net.hidden_sizes,
                                   activation=net.activation, network=net.network).to(dev))
        targets = [copy.deepcopy(q) for q in q1s + q2s]
        # the value path of ActorCritic is not SAC's: only what the logits depend on is stacked
        self.net = StackedNetwork(actors, critic=False, views=True)
        self.q_net = StackedNetwork(q1s + q2s, views=True)  # rows: Q_1 of members 0..K-1, then Q_2
        self.q_target = StackedNetwork(targets, views=True, trainable=False)
        self.actor_optimizer = StackedOptimizer(a.optimizer, self.net.flat, adam_eps=a.adam_eps)
        self.q_optimizer = StackedOptimizer(a.optimizer, self.q_net.flat, adam_eps=a.adam_eps)
        self._actor_lr = torch.tensor([m.learning_rate for m in self.members], dtype=torch.float64)
        self._q_lr = torch.tensor([float(m.cfg.algo.q_learning_rate) for m in self.members] * 2,
                                  dtype=torch.float64)
        for m in self.members:
            m.lr = m.learning_rate
        self.gradient_steps = np.zeros(K, dtype=np.int64)  # each member's gradient steps
        self.target_mark = np.zeros(K, dtype=np.int64)  # global_step // interval at its last target update

        # the replay buffers: their memory up front, refused above algo.max_buffer_gb (all K)
        obs_space = info.observation_space
        compact = {np.dtype(np.uint8): torch.uint8, np.dtype(np.bool_): torch.bool}
        obs_dtype = compact.get(np.dtype(obs_space.dtype), torch.float32)  # Discrete (int64): float32
        self._obs_shape = obs_shape = tuple(obs_space.shape)
        nbytes = replay_nbytes(a.buffer_size, N, obs_shape, obs_dtype, A, info.has_action_mask, K)
        if nbytes > a.max_buffer_gb * _GIB:
            self.envs.close()
            who = "its replay buffer needs" if K == 1 else f"the replay buffers of its {K} runs need"
            raise ValueError(
                f"algo.buffer_size={a.buffer_size} is not allowed: {who} "
                f"{nbytes / _GIB:.2f} GiB on {dev}, above algo.max_buffer_gb={a.max_buffer_gb}; allowed: a "
                "smaller buffer_size, or a larger max_buffer_gb if the device has the memory")
        log.info("replay buffer%s: %d transitions of %s %s observations%s, %.3f GiB on %s",
                 "s" if K > 1 else "", a.buffer_size, obs_shape, str(obs_dtype).removeprefix("torch."),
                 f" for each of {K} runs" if K > 1 else "", nbytes / _GIB, dev)
        self.buffer = ReplayBuffer(a.buffer_size, N, obs_shape, obs_dtype, A, info.has_action_mask,
                                   dev, members=K)

        self.prev_done = np.zeros(K * N, dtype=bool)
        self.ep_return = np.zeros(K * N, dtype=np.float64)
        self.ep_length = np.zeros(K * N, dtype=np.int64)
        restored = np.zeros(K, dtype=bool)  # the replay buffer came back
        for k, state in enumerate(states):
            if state is not None:
                restored[k] = self._restore(k, state)
        # The first reset: members continuing their episodes (envs pickled, buffer restored)
        # keep their newest observation; the others start episodes in the buffer.
        obs, infos = self._reset(states)
        snap = np.array([s is not None and self._exact_snapshot(k, s) is not None
                         for k, s in enumerate(states)], dtype=bool)
        self._start_episodes(obs, infos, ~(snap & restored))
        for k, state in enumerate(states):
            if snap[k]:
                self._restore_episode_flags(k, state["env_state"])
        self._setup_callbacks(callbacks)

    # ------------------------------------------------------------------ a single run's networks
    @property
    def actor(self) -> torch.nn.Module:
        return self.net.members[0]

    @property
    def q1(self) -> torch.nn.Module:
        return self.q_net.members[0]

    @property
    def q2(self) -> torch.nn.Module:
        return self.q_net.members[self.K]

    @property
    def q1_target(self) -> torch.nn.Module:
        return self.q_target.members[0]

    @property
    def q2_target(self) -> torch.nn.Module:
        return self.q_target.members[self.K]

    @property
    def actor_params(self) -> list[torch.Tensor]:
        return [p for name, p in self.actor.named_parameters() if name in self.net.layout]

    @property
    def gradient_steps_done(self) -> int:
        return int(self.gradient_steps.max())

    # ------------------------------------------------------------------ envs
    def _start_episodes(self, obs, infos, which: np.ndarray | None = None) -> None:
        mask = self._action_mask_from(obs, infos)
        self.buffer.start(torch.from_numpy(np.asarray(self._policy_obs(obs))).to(self.device),
                          None if mask is None else torch.from_numpy(np.asarray(mask, dtype=bool)).to(
                              self.device), which)

    def collect_rollout(self) -> list[tuple[int, float, int, int]]:
        """``algo.train_frequency`` steps of the K x N envs into the replay buffer; the finished
        episodes (member, return, length, step)."""
        buf, K, N, a = self.buffer, self.K, self.N, self.algo
        episodes: list[tuple[int, float, int, int]] = []
        step0 = [m.global_step for m in self.members]
        actions = torch.empty(K * N, dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            for t in range(a.train_frequency):
                obs, mask = buf.current()
                mask = None if mask is None else mask.view(K, N, -1)
                # a member's warm-up, and a stopped member (its steps count for nothing): uniformly
                # random allowed actions (CleanRL samples the action space)
                acting = [k for k, m in enumerate(self.members)
                          if m.running and m.global_step + t * N >= a.learning_starts]
                p = torch.ones(K, N, self.n_actions, device=self.device) if mask is None else mask.float()
                if acting:
                    logits = self.net.logits(obs.view(K, N, *self._obs_shape))
                    probs = self._per_group(_probs, logits, [mask], acting, N, "logits (acting)",
                                            f"env step {self.members[acting[0]].global_step + t * N}",
                                            with_beta=False)
                    for g, pg in probs.items():
                        if len(g) == K:
                            p = pg.view(K, N, -1).float()
                        else:
                            p[list(g)] = pg.view(len(g), N, -1).float()
                self.sample_actions(p, actions)
                next_obs, rewards, terminated, truncated, infos = self.envs.step(actions.cpu().numpy())
                done = terminated | truncated
                # Next-step autoreset: the step after a done only resets; it is no transition.
                valid = ~self.prev_done
                self.ep_return += rewards
                self.ep_length += valid
                if done.any():
                    self._record_episodes(done, infos, t, step0, episodes)
                self.prev_done = done
                next_mask = self._action_mask_from(next_obs, infos)
                buf.add(actions, torch.from_numpy(np.asarray(rewards, dtype=np.float32)),
                        torch.from_numpy(np.asarray(terminated, dtype=bool)), valid,
                        torch.from_numpy(np.asarray(self._policy_obs(next_obs))),
                        None if next_mask is None else torch.from_numpy(np.asarray(next_mask, dtype=bool)))
        for m in self.members:
            if m.running:
                m.global_step += a.train_frequency * N
        return episodes

    # ------------------------------------------------------------------ update
    def _max_entropies(self, masks: torch.Tensor | None, ks: list[int], B: int) -> list[float]:
        """``H_max`` of each member in ``ks`` on its batch (mean over rows when masked)."""
        if masks is None:
            return [float(ops.max_entropy(self.members[k].alpha, self.n_actions)) for k in ks]
        counts = masks.view(self.K, B, -1).sum(-1)
        return torch.stack([ops.max_entropy(self.members[k].alpha, counts[k]).mean()
                            for k in ks]).tolist()

    def _groups(self, ks: list[int], B: int, with_beta: bool = True) -> list[tuple]:
        """The ops calls of a step: members ``ks`` sharing (alpha, temperature) share one, with
        beta per row when they differ in it (a float keeps ops' scalar path).
        ``(members, their row selection or None for all K, beta, alpha, temperature)``."""
        groups: dict[tuple[float, float], list[int]] = {}
        for k in ks:
            m = self.members[k]
            groups.setdefault((m.alpha, m.temperature_coef.value), []).append(k)
        plan = []
        for (alpha, temperature), g in groups.items():
            beta = None
            if with_beta:
                betas = [self.members[k].beta_coef.value for k in g]
                beta = betas[0] if len(set(betas)) == 1 else torch.tensor(
                    betas, dtype=torch.float32, device=self.device).repeat_interleave(B)
            sel = None if len(g) == self.K else torch.tensor(g, device=self.device)
            plan.append((g, sel, beta, alpha, temperature))
        return plan

    def _per_group(self, fn: Callable, logits: torch.Tensor, others: list[torch.Tensor | None],
                   ks: list[int], B: int, what: str, where: str,
                   with_beta: bool = True) -> dict[tuple[int, ...], Any]:
        """``fn(logits, *others, beta, alpha, temperature)`` (an ops call) once per `_groups` group
        of members ``ks`` on their rows of the (K, B, ...) tensors, flattened to (g B, ...). A
        member whose rows make the op refuse them (non-finite logits or Q values) diverges, and
        its group runs again without it; ``ks`` loses the diverged."""
        out: dict[tuple[int, ...], Any] = {}
        pending = self._groups(list(ks), B, with_beta)
        while pending:
            g, sel, beta, alpha, temperature = pending.pop(0)

            def pick(x, sel=sel):
                if x is None:
                    return None
                return (x if sel is None else x.index_select(0, sel)).flatten(0, 1)

            try:
                out[tuple(g)] = fn(pick(logits), *map(pick, others), beta, alpha, temperature)
            except ValueError:
                floats = [logits] + [x for x in others if x is not None and x.is_floating_point()]
                bad = [k for k in g if not all(bool(torch.isfinite(x[k]).all()) for x in floats)]
                if not bad:
                    raise
                for k in bad:
                    self._diverge(k, f"non-finite {what} ({where})")
                    ks.remove(k)
                rest = [k for k in g if k not in bad]
                if rest:
                    pending = self._groups(rest, B, with_beta) + pending
        return out

    def critic_target(self, batch, active: list[int] | None = None) -> torch.Tensor:
        """``r + gamma (1 - terminated) V(s')`` with V the soft value of the current policy under
        the smaller target Q (module docstring); for an n-step batch (``algo.td_steps``) the
        soft n-step target of the module docstring. Rows member-major as the batch's, (K B,).
        ``active``: the members whose rows count (default all); the others' targets are 0."""
        K, A = self.K, self.n_actions
        B = batch.rewards.shape[0] // K
        ks = list(range(K)) if active is None else active
        with torch.no_grad():
            next_obs = batch.next_obs.view(K, B, *batch.next_obs.shape[1:])
            next_logits = self.net.logits(next_obs)
            q_t = self.q_target(torch.cat([next_obs, next_obs]))
            q_next = torch.minimum(q_t[:K], q_t[K:])
            masks = None if batch.next_masks is None else batch.next_masks.view(K, B, A)
            values = self._per_group(_soft_value, next_logits, [q_next, masks], ks, B,
                                     "target Q values or logits", self._where())
            v_next = next_logits.new_zeros(K, B)
            for g, v in values.items():
                v_next[list(g)] = v.view(len(g), B).to(v_next.dtype)
            if batch.discounts is None:
                return batch.rewards + self.algo.gamma * (~batch.terminated).float() * v_next.reshape(-1)
            # n-step: the entropy bonus beta H(p(s_{t+j})) of the states inside the chain, weighted
            # gamma^j (soft_value with zero Q values is beta H)
            n1 = batch.mid_obs.shape[1]
            mid_obs = batch.mid_obs.reshape(K, B * n1, *batch.mid_obs.shape[2:])
            mid_logits = self.net.logits(mid_obs)
            mid_masks = None if batch.mid_masks is None else batch.mid_masks.reshape(K, B * n1, A)
            bonuses = self._per_group(_soft_value, mid_logits, [torch.zeros_like(mid_logits), mid_masks],
                                      ks, B * n1, "logits at the n-step chain's states", self._where())
            bonus = next_logits.new_zeros(K, B * n1)
            for g, v in bonuses.items():
                bonus[list(g)] = v.view(len(g), B * n1).to(bonus.dtype)
            bonus = (bonus.view(K * B, n1) * batch.mid_weights).sum(1)
            return (batch.rewards + bonus
                    + batch.discounts * (~batch.terminated).float() * v_next.reshape(-1))

    def _where(self) -> str:
        return f"gradient step {self.gradient_steps_done + 1}"

    def update(self) -> list[dict[str, float] | None]:
        """``algo.gradient_steps`` gradient steps of the members past their warm-up with a batch
        in their buffer; each member's metrics (None for a stopped one)."""
        a, K = self.algo, self.K
        results: list[dict[str, float] | None] = [None] * K
        ready = []
        for k, m in enumerate(self.members):
            if not m.running:
                continue
            m.update += 1
            results[k] = {"policy/beta": m.beta_coef.value}
            if m.global_step >= a.learning_starts and self.buffer.num_transitions[k] >= a.batch_size:
                ready.append(k)
        if not ready:
            return results
        if a.anneal_lr:
            self._anneal(ready)
        logs = {k for k in ready if self.members[k].update % self.members[k].log_interval == 0 or (
            self.members[k].histogram_interval
            and self.members[k].update % self.members[k].histogram_interval == 0)}
        stats: dict[int, dict[str, float]] = {}
        for g in range(a.gradient_steps):
            last = g == a.gradient_steps - 1
            stats = self._gradient_step(want_stats=logs if last else (), active=ready)
            ready = [k for k in ready if self.members[k].running]
            if not ready:
                break
        for k in range(K):
            if results[k] is not None and not self.members[k].running:
                results[k] = None
        interval = a.target_update_interval
        due = [k for k in ready if self.members[k].global_step // interval != self.target_mark[k]]
        if due:
            for k in due:
                self.target_mark[k] = self.members[k].global_step // a.target_update_interval
            self._update_targets(due)
        for k in ready:
            results[k].update(stats.get(k, {}))
            results[k]["policy/beta"] = self.members[k].beta_coef.value
        return results

    def _anneal(self, ks: list[int]) -> None:
        """``algo.anneal_lr``: members ``ks``' actor and critic learning rates, decayed linearly
        from the env steps before this phase's collection (the on-policy trainer's rule, so the
        last phase does not run at 0) to 0 at ``total_steps``. A function of ``global_step``
        alone, so a resumed run continues exactly."""
        K, phase = self.K, self.algo.train_frequency * self.N
        for k in ks:
            m = self.members[k]
            f = min(1.0, max(0.0, 1.0 - (m.global_step - phase) / m.total_steps))
            m.lr = m.learning_rate * f
            self._actor_lr[k] = m.lr
            q_lr = float(m.cfg.algo.q_learning_rate) * f
            self._q_lr[k] = self._q_lr[k + K] = q_lr

    @torch.no_grad()
    def _update_targets(self, ks: list[int]) -> None:
        """``Qtarg <- tau Q + (1 - tau) Qtarg`` on members ``ks``' rows (tau = 1: a copy)."""
        tau, K = self.algo.tau, self.K
        src, dst = self.q_net.flat.data, self.q_target.flat.data
        if len(ks) == K:
            dst.copy_(src) if tau == 1.0 else dst.lerp_(src, tau)  # dst + tau (src - dst)
            return
        rows = torch.tensor(ks + [k + K for k in ks], device=src.device)
        new = src[rows] if tau == 1.0 else dst[rows].lerp_(src[rows], tau)
        dst[rows] = new

    def _clip_coefficients(self, norms: torch.Tensor) -> torch.Tensor:
        """clip_grad_norm_'s rule per member: scale by max_norm / (norm + 1e-6) when below 1."""
        max_norm = self.algo.max_grad_norm if self.algo.max_grad_norm > 0 else math.inf
        return torch.nan_to_num((max_norm / (norms + 1e-6)).clamp(max=1.0), nan=0.0)

    def _gradient_step(self, want_stats: bool | Sequence[int] = False,
                       active: Sequence[int] | None = None) -> dict[int, dict[str, float]]:
        """One gradient step of the members ``active`` (default all): critic step, then actor step
        against the updated critics, then the coefficients. ``want_stats``: True or the members
        whose metrics to return ({member: metrics})."""
        a, K, A = self.algo, self.K, self.n_actions
        B = a.batch_size
        ks = list(range(K)) if active is None else [k for k in active]
        want = set(ks) if want_stats is True else set(want_stats or ())
        gens = [m.perm_gen if k in ks else None for k, m in enumerate(self.members)]
        batch = self.buffer.sample(B, gens, a.td_steps, a.gamma)
        where = self._where()
        obs = batch.obs.view(K, B, *batch.obs.shape[1:])
        obs2 = torch.cat([obs, obs])
        masks = None if batch.masks is None else batch.masks.view(K, B, A)

        # critic
        target = self.critic_target(batch, ks).view(K, B)
        if not ks:
            return {}
        q_all = self.q_net(obs2)  # (2K, B, A)
        act = batch.actions.view(K, B, 1).repeat(2, 1, 1)
        q_a = q_all.gather(2, act).squeeze(2)  # (2K, B): Q_1 rows, then Q_2 rows
        rows_loss = (q_a - target.repeat(2, 1)).square().mean(1)
        q_loss = rows_loss[:K] + rows_loss[K:]  # each member's L_Q
        sel = torch.tensor(ks + [k + K for k in ks], device=self.device)
        self.q_net.flat.grad.zero_()
        (rows_loss.sum() if len(ks) == K else rows_loss.index_select(0, sel).sum()).backward()
        grad = self.q_net.flat.grad
        row_sq = row_norms(grad).square()
        q_norm = (row_sq[:K] + row_sq[K:]).sqrt()
        checks = torch.stack([q_loss.detach(), q_norm]).tolist()  # one sync for both
        for k in list(ks):
            if not (math.isfinite(checks[0][k]) and math.isfinite(checks[1][k])):
                self._diverge(k, f"non-finite critic loss or gradient ({where}); the step was not applied")
                ks.remove(k)
        on = torch.zeros(K, dtype=torch.bool)
        on[ks] = True
        if not ks:
            return {}
        grad.mul_(self._clip_coefficients(q_norm).repeat(2).unsqueeze(1))
        self.q_optimizer.step(self._q_lr, on.repeat(2))

        # actor, against the critics just updated (CleanRL's order), held fixed
        logits = self.net.logits(obs)
        with torch.no_grad():
            q_now = self.q_net(obs2)
            q_pi = torch.minimum(q_now[:K], q_now[K:])
        outs = self._per_group(_soft_policy_loss, logits, [q_pi, masks], ks, B,
                               "logits or Q values in the actor loss", where)
        if not ks:
            return {}
        self.net.flat.grad.zero_()
        total = sum(out.loss * len(g) for g, out in outs.items())  # each member's own mean loss
        total.backward()
        agrad = self.net.flat.grad
        actor_norm = row_norms(agrad)
        H = torch.empty(K, B, device=self.device)
        member_loss = torch.empty(K, device=self.device)
        for g, out in outs.items():
            H[list(g)] = out.entropy.view(len(g), B).float()
            member_loss[list(g)] = out.loss_rows.view(len(g), B).float().mean(1)
        H_mean = H.mean(1)
        checks = torch.stack([member_loss, actor_norm.float(), H_mean]).tolist()
        for k in list(ks):
            if not (math.isfinite(checks[0][k]) and math.isfinite(checks[1][k])):
                self._diverge(k, f"non-finite actor loss or gradient ({where}); the step was not applied")
                ks.remove(k)
        if not ks:
            return {}
        on = torch.zeros(K, dtype=torch.bool)
        on[ks] = True
        agrad.mul_(self._clip_coefficients(actor_norm).unsqueeze(1))
        self.actor_optimizer.step(self._actor_lr, on)
        self.gradient_steps[ks] += 1

        # the coefficients: a schedule's value at this env step, or one dual step on this batch
        max_entropy = dict(zip(ks, self._max_entropies(masks, ks, B), strict=True))
        stats: dict[int, dict[str, float]] = {}
        betas = {k: self.members[k].beta_coef.value for k in ks}
        for k in list(ks):
            self.members[k].last_entropy = (checks[2][k], max_entropy[k])
            if not self._step_coefficients(k, checks[2][k], max_entropy[k]):
                ks.remove(k)
        want = [k for k in ks if k in want]
        if not want:
            return stats
        with torch.no_grad():
            q1_a, q2_a = q_a[:K].detach(), q_a[K:].detach()
            support = torch.empty(K, device=self.device)
            pol_sq = torch.zeros(K, device=self.device)
            ent_sq = torch.zeros(K, device=self.device)
            for g, out in outs.items():
                n = len(g)
                support[list(g)] = out.support_size.view(n, B).float().mean(1)
                # the op's gradient is that of the mean of the g members' losses: a member's
                # own rows, times g, are its own loss's gradient rows
                pol_sq[list(g)] = out.grad_sq_policy.view(n, B).sum(1).float() * n * n
                ent_sq[list(g)] = out.grad_sq_entropy.view(n, B).sum(1).float() * n * n
            table = torch.stack([
                q_loss.detach().float(), H.min(1).values, H.max(1).values, support, pol_sq.sqrt(),
                ent_sq.sqrt(), q_norm.float(), torch.cat([q1_a, q2_a], 1).mean(1).float(),
                torch.minimum(q1_a, q2_a).min(1).values.float(),
                torch.maximum(q1_a, q2_a).max(1).values.float(),
                target.mean(1).float()]).tolist()
        for k in want:
            m = self.members[k]
            col = [row[k] for row in table]
            s = {
                "losses/q": col[0],
                "losses/policy": checks[0][k] + betas[k] * checks[2][k],  # -<p, q> alone
                "entropy/mean": checks[2][k],
                "entropy/min": col[1],
                "entropy/max": col[2],
                "policy/support_size": col[3],
                "grad_norm/policy": col[4],
                "grad_norm/entropy": col[5],
                "grad_norm/value": col[6],
                "grad_norm/actor": checks[1][k],
                "q/mean": col[7],
                "q/min": col[8],
                "q/max": col[9],
                "q/target": col[10],
                "charts/learning_rate": m.lr,
                "charts/q_learning_rate": float(self._q_lr[k]),
            }
            tuned = next((c for c in (m.beta_coef, m.temperature_coef) if c.adaptive), None)
            if tuned is not None:
                s["policy/target_entropy"] = tuned.target_fraction * max_entropy[k]
            if m.temperature_coef.adaptive or m.temperature_coef.kind != "constant":
                s["policy/temperature"] = m.temperature_coef.value
            m.entropy_rows = H[k]
            stats[k] = s
        return stats

    # ------------------------------------------------------------------ checkpoints
    def member_state_dict(self, k: int = 0) -> dict[str, Any]:
        m, K, cols = self.members[k], self.K, self._cols(k)
        obs, mask = self.buffer.current()

        def host(t: torch.Tensor) -> torch.Tensor:
            return t.to("cpu", copy=True)  # a copy: a view would save the whole replay buffer

        return {
            **m.state_dict(),
            "model": self.net.member_state_dict(k),  # what rl-eval loads
            "q1": self.q_net.member_state_dict(k), "q2": self.q_net.member_state_dict(K + k),
            "q1_target": self.q_target.member_state_dict(k),
            "q2_target": self.q_target.member_state_dict(K + k),
            "actor_optimizer": self.actor_optimizer.member_state(k),
            "q_optimizer": {"q1": self.q_optimizer.member_state(k),
                            "q2": self.q_optimizer.member_state(K + k)},
            "gradient_steps": int(self.gradient_steps[k]),
            "target_mark": int(self.target_mark[k]),
            "obs_normalization": {},
            "env_state": {"obs": host(obs[cols]), "mask": None if mask is None else host(mask[cols]),
                          **self._episode_flags(k)},
        }

    def _restore(self, k: int, state: dict[str, Any]) -> bool:
        """Loads member k's checkpoint; True when its replay buffer was restored too."""
        m, K = self.members[k], self.K
        try:
            self.net.load_member_state_dict(k, state["model"])
            for i, name in ((k, "q1"), (K + k, "q2")):
                self.q_net.load_member_state_dict(i, state[name])
                self.q_target.load_member_state_dict(i, state[f"{name}_target"])
            actor_opt, q_opt = state["actor_optimizer"], state["q_optimizer"]
            if "param_groups" in actor_opt:  # a checkpoint of the single-run trainer (torch Adam)
                actor_opt = _torch_adam_rows(actor_opt, 0, len(self.net.layout))
                n = len(self.q_net.layout)
                q_opt = {"q1": _torch_adam_rows(q_opt, 0, n), "q2": _torch_adam_rows(q_opt, n, n)}
            self.actor_optimizer.load_member_state(k, actor_opt)
            self.q_optimizer.load_member_state(k, q_opt["q1"])
            self.q_optimizer.load_member_state(K + k, q_opt["q2"])
            self.gradient_steps[k] = int(state["gradient_steps"])
            self.target_mark[k] = int(state["target_mark"])
            m.load_state_dict(state)
        except (KeyError, TypeError) as err:
            raise ValueError(f"resume={m.resume}: the checkpoint lacks {err} (not a SAC checkpoint of "
                             "this version?); start a new run or use a checkpoint of algo=sac") from None
        path = replay_path(m.resume)
        restored = False
        if path.is_file():
            replay = load_checkpoint(path, name="resume (replay buffer)")
            if int(replay.get("global_step", -1)) == m.global_step:
                self.buffer.load_member_state_dict(k, replay["buffer"])
                restored = True
            else:
                log.warning("%s belongs to env step %s, the checkpoint to %d: not used", path,
                            replay.get("global_step"), m.global_step)
        if not restored:
            log.warning("%s: resumed without a replay buffer; training waits until it holds "
                        "algo.batch_size=%d transitions", m.run_dir, self.algo.batch_size)
        log.info("%s: resumed from %s at env step %d", m.run_dir, m.resume, m.global_step)
        return restored

    def save_member(self, k: int = 0, path: str | os.PathLike | None = None) -> Path:
        """Atomically writes member k's checkpoint (default ``<run_dir>/checkpoints/last.pt``), its
        replay buffer next to it when small enough (``last.replay.pt``, written first) and, with
        ``exact_env_resume``, its envs."""
        m = self.members[k]
        path = Path(path) if path is not None else m.run_dir / CHECKPOINT_NAME
        rpath = replay_path(path)
        nbytes = self.buffer.nbytes / self.K
        if nbytes <= self.algo.checkpoint_buffer_gb * _GIB:
            save_checkpoint(rpath, {"global_step": m.global_step, "buffer": self.buffer.member_state_dict(k)})
        else:
            if rpath.is_file():
                rpath.unlink()  # a stale buffer must not pair with this checkpoint
            log.warning("the replay buffer (%.2f GiB) is above algo.checkpoint_buffer_gb=%s: not saved; "
                        "a resume starts with an empty buffer", nbytes / _GIB, self.algo.checkpoint_buffer_gb)
        return super().save_member(k, path)

    def member_network(self, k: int = 0) -> torch.nn.Module:
        """Member k's actor (``rl.networks.ActorCritic``; its value path is untrained), a copy."""
        net = copy.deepcopy(self.net.members[k])
        for p in net.parameters():
            p.data = p.data.clone()  # its own storage, not a view of a copy of the stack
        return net

    def batch(self, k: int = 0):
        raise NotImplementedError("SACTrainer has no rollout batch; sample its replay buffer")
