"""The actor-critic training loop (PPO and A2C) for a population of K runs; one run is K = 1.

`Trainer.train` is the algorithm, in this order (each step for all members at once)::

    while a member is running:
        collect a rollout: n_steps steps of the K x num_envs envs          (collect_rollout)
        advantages: GAE over the rollout, per env column                   (rl/rollout.py)
        epochs of minibatches:                                               (update)
            loss = policy_loss - beta * H + vf_coef * v_loss   (rl/algos.py; ops fuses the first two)
            backward, per-member gradient clipping, optimizer step
        hooks: logging, checkpoints, progress, stop requests               (rl/callbacks.py)

Members share the env id, the algo, the network shapes and the total steps; they differ in seed,
beta and its schedule, the temperature and its schedule, the policy mapping (alpha) and the
learning rate (rl.population.MEMBER_FIELDS). Their networks are one batched computation
(rl/stacked.py); their envs step as one vector env of K x num_envs sub-envs (or, when an env
wrapper keeps statistics -- observation/reward normalization -- or the envs are pickled for an
exact resume, as K vector envs stepped in turn, so no statistic is shared; one vector env draws
the reset states of all K x num_envs sub-envs from one RNG, so there a member's episodes depend on
its mates' episode ends). Every member has its
own RNG streams (action sampling, minibatch shuffles), advantage normalization, gradient norm and
clipping, learning rate, clip range, target-KL stop, beta/temperature coefficients and counters.
A member whose loss or gradient becomes non-finite stops alone: its summary says "diverged".

Each member writes an ordinary run directory: ``tb/``, ``checkpoints/last.pt`` and
``summary.json``, exactly as a single run (rl-eval, rl.analysis and resume read them unchanged).

Resume. A member's checkpoint is written at a rollout boundary and holds its network, optimizer
moments, coefficients, counters, RNG states, observation-normalization statistics, last
observation and flags. Vector envs cannot in general be saved (simulator state, Box2D, ALE), so a
resumed member's envs are re-created, given the saved normalization statistics, and reset with a
seed derived from ``(seed, global_step)``: everything else continues exactly, the episodes in
progress at the checkpoint are dropped. With ``exact_env_resume=true`` each member's vector env
is pickled next to its checkpoint (when it pickles: classic control does) and restored; then
"train N+M steps" and "train N, checkpoint, resume, train M" give bit-identical networks on CPU.

Annealing. The learning rate and PPO's clip range of update k are annealed linearly from the env
steps *before* rollout k (CleanRL's rule, so the last update does not run at learning rate 0), the
same step count from which beta and the temperature of update k come (docs/beta.md).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf

import ops
from rl import algos
from rl.callbacks import Callback, CheckpointCallback, ProgressCallback, TensorBoardCallback
from rl.checkpoint import (
    SUMMARY_FILE,
    env_snapshot_path,
    load_checkpoint,
    load_pickle,
    resolve_device,
    save_checkpoint,
    save_pickle,
    write_json,
)
from rl.config import validate
from rl.envs import MemberEnvs, concat_infos, concat_obs, derived_seed, load_rms_state, rms_state
from rl.rollout import RolloutBuffer
from rl.schedules import build_coefficient
from rl.stacked import StackedNetwork, StackedOptimizer, row_norms

__all__ = ["Trainer", "MemberRun", "TrainingDiverged", "CHECKPOINT_NAME", "SUMMARY_NAME"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoints/last.pt"
SUMMARY_NAME = SUMMARY_FILE  # one name for the summary file: rl.checkpoint.SUMMARY_FILE
# Episodes in the running mean reported as "mean return" (the solved criterion of gym's
# classic-control tasks is a mean over 100 consecutive episodes).
_RETURN_WINDOW = 100
# The largest coefficient the ops take: they carry beta per row as float32.
_COEF_MAX = float(torch.finfo(torch.float32).max)
# Consecutive updates with entropy exactly 0 (a one-action support in every measured state)
# after which a sparse member's run log warns that its actor has no gradient left.
_DEAD_SUPPORT_UPDATES = 10


class TrainingDiverged(RuntimeError):
    """A loss, a gradient or the logits became non-finite; the run stopped before the bad step."""


# ---------------------------------------------------------------------------------------------
# One member's state
# ---------------------------------------------------------------------------------------------
@dataclass
class MemberRun:
    """Everything one run of the population owns, besides its row of the stacked network."""

    cfg: Any
    run_dir: Path
    resume: str | None
    seed: int
    alpha: float
    learning_rate: float
    total_steps: int
    beta_coef: Any
    temperature_coef: Any
    log_interval: int
    histogram_interval: int
    checkpoint_interval: int
    solved_return: float | None
    sample_gen: torch.Generator
    perm_gen: torch.Generator
    global_step: int = 0
    update: int = 0
    num_episodes: int = 0
    wall_time: float = 0.0
    recent_returns: deque = field(default_factory=lambda: deque(maxlen=_RETURN_WINDOW))
    best_mean_return: float = -math.inf
    solved_at: dict[str, float] | None = None
    last_entropy: tuple[float, float] | None = None
    lr: float = 0.0  # the learning rate of the last update
    status: str = "running"  # running | completed | interrupted | diverged
    diverged_reason: str | None = None
    entropy_rows: torch.Tensor | None = None  # the entropies of the last logged minibatch
    start_step: int = 0  # global_step when this train() started (for SPS)
    extra: dict[str, Any] = field(default_factory=dict)  # summary fields callbacks add (evaluation)
    zero_entropy_updates: int = 0  # consecutive updates at entropy 0 (sparse mappings)
    warned_one_action: bool = False

    @property
    def running(self) -> bool:
        return self.status == "running"

    def mean_return(self) -> float:
        return float(np.mean(self.recent_returns)) if self.recent_returns else math.nan

    def state_dict(self) -> dict[str, Any]:
        """The run's own part of a checkpoint: config, coefficients, counters, episode
        statistics and RNG states (plain values and tensors, weights_only-safe)."""
        return {
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "beta_schedule": self.beta_coef.state_dict(),
            "temperature_schedule": self.temperature_coef.state_dict(),
            "global_step": self.global_step,
            "update": self.update,
            "num_episodes": self.num_episodes,
            "wall_time": self.wall_time,
            "recent_returns": list(self.recent_returns),
            "best_mean_return": self.best_mean_return,
            "solved_at": self.solved_at,
            "last_entropy": None if self.last_entropy is None else list(self.last_entropy),
            "rng": {"sample": self.sample_gen.get_state(), "perm": self.perm_gen.get_state()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict`'s part (raises KeyError/TypeError on a foreign checkpoint)."""
        self.beta_coef.load_state_dict(state["beta_schedule"])
        self.temperature_coef.load_state_dict(state["temperature_schedule"])
        self.global_step = int(state["global_step"])
        self.update = int(state["update"])
        self.num_episodes = int(state["num_episodes"])
        self.wall_time = float(state["wall_time"])
        self.recent_returns.extend(float(r) for r in state["recent_returns"])
        self.best_mean_return = float(state["best_mean_return"])
        self.solved_at = state["solved_at"]
        self.last_entropy = None if state["last_entropy"] is None else tuple(state["last_entropy"])
        self.sample_gen.set_state(state["rng"]["sample"])
        self.perm_gen.set_state(state["rng"]["perm"])


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Trains a population of runs (one run: ``Trainer(cfg, run_dir)``).

    Parameters
    ----------
    cfg : a composed config (schema ``base_config`` in rl/config.py) for a single run, or None
        when ``members`` is given.
    run_dir : the single run's directory (TensorBoard events, checkpoints, summary.json).
    resume : the single run's checkpoint to continue from (overrides ``cfg.resume``).
    members : ``rl.population.Member`` s (cfg, run_dir, resume) of a population; their configs
        must have equal ``rl.population.population_key``.
    make_envs, make_network : factories, by default ``rl.envs.make_envs`` and
        ``rl.networks.ActorCritic`` (tests inject small stand-ins).
    callbacks : extra `rl.callbacks.Callback` s, after the trainer's own (TensorBoard,
        checkpoints, progress bar).

    ``train()`` returns the summary (a dict) for a single run, the list of the members'
    summaries for a population.
    """

    def __init__(self, cfg: Any = None, run_dir: str | os.PathLike | None = None,
                 resume: str | None = None, *, members: Sequence[Any] | None = None,
                 make_envs: Callable | None = None, make_network: Callable | None = None,
                 callbacks: Sequence[Callback] = ()):
        checked, states = self._setup_members(cfg, run_dir, resume, members)
        if make_network is None:
            from rl.networks import ActorCritic as make_network
        info = self._setup_envs(checked[0].env, make_envs)

        # Networks: member k initialized from its own seed, exactly as a single run would be.
        net = checked[0].network
        nets = []
        for m in self.members:
            torch.manual_seed(m.seed)
            nets.append(make_network(info.observation_space, self.n_actions,
                                     hidden_sizes=net.hidden_sizes, activation=net.activation,
                                     shared=net.shared, network=net.network).to(self.device))
        self.net = StackedNetwork(nets)
        # Actor-only logits per rollout step, values batched after it: worth it when the critic
        # is a network of its own (a shared trunk would run twice).
        self._split_forward = self.net.batched and not self.net.shared
        a = self.algo
        self.optimizer = StackedOptimizer(a.optimizer, self.net.flat, adam_eps=a.adam_eps,
                                          rmsprop_alpha=a.rmsprop_alpha, rmsprop_eps=a.rmsprop_eps)

        # Restore what precedes the first reset: normalization statistics (the first observation
        # must be normalized with the saved ones), counters, RNG states, network, optimizer.
        for k, state in enumerate(states):
            if state is not None:
                self._restore(k, state)
        obs, infos = self._reset(states)
        mask = self._action_mask_from(obs, infos)
        obs = np.asarray(self._policy_obs(obs))
        obs_dtype = torch.uint8 if obs.dtype == np.uint8 else torch.float32
        self.buffer = RolloutBuffer(a.n_steps, self.K * self.N, obs.shape[1:], obs_dtype,
                                    self.n_actions, mask is not None, self.device)
        self.buffer.obs[0].copy_(torch.from_numpy(obs))
        if mask is not None:
            self.buffer.masks[0].copy_(torch.from_numpy(np.asarray(mask, dtype=bool)))
        self.prev_done = np.zeros(self.K * self.N, dtype=bool)
        self.ep_return = np.zeros(self.K * self.N, dtype=np.float64)
        self.ep_length = np.zeros(self.K * self.N, dtype=np.int64)
        for k, state in enumerate(states):
            if state is not None and self._exact_snapshot(k, state) is not None:
                self._restore_env_state(k, state["env_state"])
        self._setup_callbacks(callbacks)

    # ------------------------------------------------------------------ construction helpers
    def _setup_members(self, cfg: Any, run_dir: str | os.PathLike | None, resume: str | None,
                       members: Sequence[Any] | None) -> tuple[list[Any], list[dict | None]]:
        """The members (`MemberRun`, own seeds and RNG streams), the shared settings (``cfg``,
        ``algo``, ``K``, ``N``, ``device``); returns the checked configs and the resume states."""
        name = type(self).__name__
        if members is None:
            if cfg is None or run_dir is None:
                raise ValueError(f"{name} needs a config and a run directory, or members")
            from rl.population import Member

            members = [Member(cfg, Path(run_dir), resume if resume is not None else cfg.resume)]
            self._single = True
        else:
            self._single = False
            if not members:
                raise ValueError("members is empty; a population needs at least one run")
        checked = [validate(m.cfg) for m in members]  # the one place config values are checked
        if len(members) > 1:
            from rl.population import population_key

            key = population_key(members[0].cfg)
            for m in members[1:]:
                if population_key(m.cfg) != key:
                    raise ValueError(
                        f"run {m.run_dir} cannot share a population with {members[0].run_dir}: "
                        "members may differ only in " + ", ".join(_member_fields()))
        cfg0 = members[0].cfg
        self.cfg = cfg0  # the shared settings (members[k].cfg for a member's own)
        self.algo = SimpleNamespace(**OmegaConf.to_container(cfg0.algo, resolve=True))
        self.K = len(members)
        self.N = int(cfg0.num_envs)
        self.device = resolve_device(str(cfg0.device))
        torch.set_num_threads(cfg0.threads)
        states = [load_checkpoint(m.resume, name="resume") if m.resume else None for m in members]
        self.members: list[MemberRun] = []
        for m, c in zip(members, checked, strict=True):
            seed = int(m.cfg.seed)
            self.members.append(MemberRun(
                cfg=m.cfg, run_dir=Path(m.run_dir), resume=m.resume, seed=seed,
                alpha=float(m.cfg.policy.alpha), learning_rate=float(m.cfg.algo.learning_rate),
                total_steps=int(m.cfg.total_steps), beta_coef=build_coefficient(c.beta),
                temperature_coef=build_coefficient(c.temperature),
                log_interval=int(m.cfg.log_interval), histogram_interval=int(m.cfg.histogram_interval),
                checkpoint_interval=int(m.cfg.checkpoint_interval),
                solved_return=m.cfg.env.solved_return,
                # Sampling draws from a generator on the device; minibatch shuffles from the CPU.
                sample_gen=torch.Generator(device=self.device).manual_seed(seed),
                perm_gen=torch.Generator().manual_seed(seed + 1),
            ))
        self._stop_requested: str | None = None
        self._t_start = time.perf_counter()
        self._wall_before = [0.0] * self.K
        return checked, states

    def _setup_envs(self, env_s: Any, make_envs: Callable | None):
        """Envs: one vector env of K x N, or one per member when a wrapper keeps statistics or
        the envs are pickled at checkpoints. Returns the envs' ``rl.envs.EnvInfo``."""
        if make_envs is None:
            from rl.envs import make_envs
        from rl.envs import action_mask_from, env_info, policy_obs

        self._action_mask_from, self._policy_obs = action_mask_from, policy_obs
        gamma = float(self.algo.gamma)
        self.env_settings = env_s
        self.per_member_envs = bool(env_s.normalize_obs or env_s.normalize_reward
                                    or self.cfg.exact_env_resume)
        np.random.seed(self.members[0].seed)
        if self.per_member_envs:
            self.envs = MemberEnvs([make_envs(env_s, self.N, m.seed, gamma=gamma) for m in self.members])
            info = env_info(self.envs.envs[0])
        else:
            self.envs = make_envs(env_s, self.N * self.K, self._population_seed(), gamma=gamma)
            info = env_info(self.envs)  # refuses a non-Discrete action space
        mode = self.envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if mode != gym.vector.AutoresetMode.NEXT_STEP:
            self.envs.close()
            raise ValueError(f"env autoreset_mode={mode} is not supported; the trainer needs "
                             "AutoresetMode.NEXT_STEP (Gymnasium's default)")
        self.n_actions = info.n_actions
        return info

    def _setup_callbacks(self, callbacks: Sequence[Callback]) -> None:
        """The trainer's own callbacks (evaluation, TensorBoard, checkpoints, progress), then
        ``callbacks``."""
        from rl.evaluation import make_eval_callback

        evaluation = make_eval_callback(self.cfg)  # first: its returns join the update's scalars
        self.callbacks: list[Callback] = [c for c in (evaluation,) if c is not None]
        self.callbacks += [TensorBoardCallback(), CheckpointCallback()]
        if bool(self.cfg.progress):
            self.callbacks.append(ProgressCallback())
        self.callbacks.extend(callbacks)

    def _population_seed(self) -> int:
        """The seed of the shared vector env: the run's seed for one member (a single run's
        envs are seeded exactly as before), else one drawn from all members' seeds."""
        seeds = [m.seed for m in self.members]
        if len(seeds) == 1:
            return seeds[0]
        return derived_seed(*seeds)

    def _resume_seed(self, seeds: list[int], step: int) -> int:
        return derived_seed(*seeds, step)

    def _exact_snapshot(self, k: int, state: dict) -> Path | None:
        if not bool(self.cfg.exact_env_resume):
            return None
        snapshot = env_snapshot_path(self.members[k].resume)
        return snapshot if snapshot.is_file() else None

    def _reset(self, states: list[dict | None]):
        """The first reset (after the saved normalization statistics are in place)."""
        if not self.per_member_envs:
            if states[0] is None:
                return self.envs.reset(seed=self._population_seed())
            seeds = [m.seed for m in self.members]
            return self.envs.reset(seed=self._resume_seed(seeds, self.members[0].global_step))
        results = []
        for k, (m, state) in enumerate(zip(self.members, states, strict=True)):
            snapshot = None if state is None else self._exact_snapshot(k, state)
            if snapshot is not None:
                # Continue the very same episodes: the pickled envs plus the saved observation.
                self.envs.envs[k].close()
                self.envs.envs[k] = load_pickle(snapshot)
                env_state = state["env_state"]
                infos = {} if env_state["mask"] is None else {"action_mask": env_state["mask"].numpy()}
                results.append((env_state["obs"].numpy(), infos))
                continue
            if state is not None and bool(self.cfg.exact_env_resume):
                log.warning("exact_env_resume: no env snapshot for %s; envs were re-created and re-seeded",
                            m.run_dir)
            seed = m.seed if state is None else self._resume_seed([m.seed], m.global_step)
            results.append(self.envs.reset_member(k, seed))
        obs = concat_obs([r[0] for r in results])
        return obs, concat_infos([r[1] for r in results], self.envs.sizes)

    # ------------------------------------------------------------------ checkpoints
    def _cols(self, k: int) -> slice:
        return slice(k * self.N, (k + 1) * self.N)

    def member_state_dict(self, k: int) -> dict[str, Any]:
        """Everything member k's resume needs, as tensors and plain values (weights_only-safe)."""
        m, buf, cols = self.members[k], self.buffer, self._cols(k)
        return {
            **m.state_dict(),
            "model": self.net.member_state_dict(k),
            "optimizer": self.optimizer.member_state(k),
            "obs_normalization": rms_state(self.envs.envs[k] if self.per_member_envs else self.envs),
            "env_state": {
                "obs": buf.obs[0, cols].cpu(),
                "mask": None if buf.masks is None else buf.masks[0, cols].cpu(),
                **self._episode_flags(k),
            },
        }

    def _restore(self, k: int, state: dict[str, Any]) -> None:
        m = self.members[k]
        try:
            self.net.load_member_state_dict(k, state["model"])
            self.optimizer.load_member_state(k, state["optimizer"])
            m.load_state_dict(state)
        except (KeyError, TypeError) as err:
            raise ValueError(f"resume={m.resume}: the checkpoint lacks {err} (written by another "
                             "version of the trainer?); start a new run or use a checkpoint of this "
                             "version") from None
        norm = state["obs_normalization"]
        if norm:
            if self.per_member_envs:
                load_rms_state(self.envs.envs[k], norm)
        log.info("%s: resumed from %s at env step %d (update %d)", m.run_dir, m.resume,
                 m.global_step, m.update)

    def _restore_env_state(self, k: int, env_state: dict[str, Any]) -> None:
        cols, buf = self._cols(k), self.buffer
        buf.obs[0, cols].copy_(env_state["obs"])
        if buf.masks is not None and env_state["mask"] is not None:
            buf.masks[0, cols].copy_(env_state["mask"])
        self._restore_episode_flags(k, env_state)

    def _episode_flags(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's part of the envs' episode flags (a checkpoint's ``env_state``)."""
        cols = self._cols(k)
        return {"prev_done": torch.from_numpy(self.prev_done[cols].copy()),
                "ep_return": torch.from_numpy(self.ep_return[cols].copy()),
                "ep_length": torch.from_numpy(self.ep_length[cols].copy())}

    def _restore_episode_flags(self, k: int, env_state: dict[str, Any]) -> None:
        cols = self._cols(k)
        self.prev_done[cols] = env_state["prev_done"].numpy()
        self.ep_return[cols] = env_state["ep_return"].numpy()
        self.ep_length[cols] = env_state["ep_length"].numpy()

    def save_member(self, k: int, path: str | os.PathLike | None = None) -> Path:
        """Atomically writes member k's checkpoint (default ``<run_dir>/checkpoints/last.pt``)."""
        m = self.members[k]
        path = Path(path) if path is not None else m.run_dir / CHECKPOINT_NAME
        save_checkpoint(path, self.member_state_dict(k))
        if bool(self.cfg.exact_env_resume):
            env = self.envs.envs[k] if self.per_member_envs else self.envs
            try:
                save_pickle(env_snapshot_path(path), env)
            except Exception as err:  # e.g. Box2D or ALE state: resume falls back to re-seeding
                log.warning("exact_env_resume: the envs cannot be pickled (%s); a resume re-seeds them", err)
        return path

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """A single run's checkpoint (member 0)."""
        return self.save_member(0, path)

    def state_dict(self) -> dict[str, Any]:
        """A single run's checkpoint contents (member 0)."""
        return self.member_state_dict(0)

    # ------------------------------------------------------------------ inspection
    def member_network(self, k: int = 0) -> torch.nn.Module:
        """Member k's network as a single module (``rl.networks.ActorCritic`` for the default
        factory), holding a copy of its current parameters."""
        if not self.net.batched:
            return self.net.members[k]
        import copy

        net = copy.deepcopy(self.net._template)
        net.load_state_dict(self.net.member_state_dict(k))
        return net

    def batch(self, k: int = 0) -> algos.Batch:
        """Member k's part of the last rollout as the update sees it: its valid transitions
        (reset-only entries dropped), flattened over steps and envs, with advantages and returns."""
        a, buf, K, N, T = self.algo, self.buffer, self.K, self.N, self.buffer.n_steps
        advantages, returns = buf.advantages_and_returns(a.gamma, a.gae_lambda)
        valid = buf.valid.reshape(T, K, N)[:, k].reshape(-1)
        idx = torch.from_numpy(np.flatnonzero(valid)).to(self.device)

        def rows(x: torch.Tensor) -> torch.Tensor:
            return self._per_member(x)[k].index_select(0, idx).clone()

        def rows_np(x: np.ndarray) -> torch.Tensor:
            x = x.reshape(T, K, N)[:, k].reshape(-1)[valid]
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)

        return algos.Batch(obs=rows(buf.obs), actions=rows(buf.actions), log_probs=rows(buf.log_probs),
                           advantages=rows_np(advantages), returns=rows_np(returns),
                           values=rows(buf.values), masks=None if buf.masks is None else rows(buf.masks))

    # ------------------------------------------------------------------ rollout
    def mapping_groups(self, device: torch.device) -> list[tuple[float, float, torch.Tensor]]:
        """``(alpha, temperature, member indices)`` of the members sharing a mapping."""
        groups: dict[tuple[float, float], list[int]] = {}
        for k, m in enumerate(self.members):
            groups.setdefault((m.alpha, m.temperature_coef.value), []).append(k)
        return [(alpha, t, torch.tensor(ks, device=device)) for (alpha, t), ks in groups.items()]

    def policy_probs(self, logits: torch.Tensor, masks: torch.Tensor | None,
                     groups: list | None = None) -> torch.Tensor:
        """The members' policies, (K, B, A): one ops call per distinct (alpha, temperature)
        (``groups``: `mapping_groups`, computed once per rollout by the caller)."""
        groups = groups if groups is not None else self.mapping_groups(logits.device)
        if len(groups) == 1:
            alpha, temperature, _ = groups[0]
            return ops.probs(logits, alpha, temperature, masks)
        p = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
        for alpha, temperature, idx in groups:
            sub_mask = None if masks is None else masks.index_select(0, idx)
            p.index_copy_(0, idx, ops.probs(logits.index_select(0, idx), alpha, temperature,
                                            sub_mask).float())
        return p

    def sample_actions(self, p: torch.Tensor, out: torch.Tensor,
                       generators: list[torch.Generator] | None = None) -> None:
        """One action per row of the (K, N, A) policies, from each member's own generator.

        Inverse-CDF sampling: action ``a`` is drawn when ``cdf[a-1] <= u < cdf[a]``; an action
        of probability 0 (masked, or outside a sparse policy's support) is never drawn.
        """
        K, N, A = p.shape
        gens = generators if generators is not None else [m.sample_gen for m in self.members]
        u = (torch.rand(1, N, generator=gens[0], device=p.device) if K == 1 else
             torch.stack([torch.rand(N, generator=g, device=p.device) for g in gens]))
        cdf = p.cumsum(-1)
        # the first action whose cdf exceeds u * total: never one of probability 0
        draw = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1), right=True).squeeze(-1)
        if bool((draw >= A).any()):  # rounding put u * total at the total: the last possible action
            last = A - 1 - (p > 0).flip(-1).int().argmax(-1)
            draw = torch.minimum(draw, last)
        out.view(K, N).copy_(draw)

    def collect_rollout(self) -> list[tuple[int, float, int, int]]:
        """One rollout of n_steps steps; returns the finished episodes (member, return, length, step)."""
        buf, net, K, N = self.buffer, self.net, self.K, self.N
        episodes: list[tuple[int, float, int, int]] = []
        split = self._split_forward
        obs_shape = buf.obs.shape[2:]
        step0 = [m.global_step for m in self.members]
        groups = self.mapping_groups(buf.obs.device)  # the temperature changes between rollouts only
        with torch.inference_mode():
            for t in range(buf.n_steps):
                obs = buf.obs[t].view(K, N, *obs_shape)
                mask = None if buf.masks is None else buf.masks[t].view(K, N, -1)
                if split:
                    logits = net.logits(obs)
                else:
                    logits, values = net(obs)
                    buf.values[t].copy_(values.reshape(K * N))
                p = self.policy_probs(logits, mask, groups)
                self.sample_actions(p, buf.actions[t])
                buf.probs[t].copy_(p.reshape(K * N, -1))
                obs, rewards, terminated, truncated, infos = self.envs.step(buf.actions[t].cpu().numpy())
                done = terminated | truncated
                buf.rewards[t] = rewards
                buf.terminated[t] = terminated
                buf.truncated[t] = truncated
                # Next-step autoreset: the step after a done only resets (its action is ignored).
                valid = ~self.prev_done
                buf.valid[t] = valid
                self.ep_return += rewards
                self.ep_length += valid
                if done.any():
                    self._record_episodes(done, infos, t, step0, episodes)
                self.prev_done = done
                mask = self._action_mask_from(obs, infos)
                buf.obs[t + 1].copy_(torch.from_numpy(np.asarray(self._policy_obs(obs))))
                if buf.masks is not None:
                    buf.masks[t + 1].copy_(torch.from_numpy(np.asarray(mask, dtype=bool)))
            if split:
                T1 = buf.n_steps + 1
                obs_all = buf.obs.view(T1, K, N, *obs_shape).transpose(0, 1).reshape(K, T1 * N, *obs_shape)
                buf.values.copy_(net.values(obs_all).view(K, T1, N).transpose(0, 1).reshape(T1, K * N))
            else:
                buf.values[-1] = net.values(buf.obs[-1].view(K, N, *obs_shape)).reshape(K * N)
            torch.log(buf.probs.gather(2, buf.actions.unsqueeze(2)).squeeze(2), out=buf.log_probs)
        for m in self.members:
            if m.running:
                m.global_step += buf.n_steps * N
        return episodes

    def _record_episodes(self, done: np.ndarray, infos: dict, t: int, step0: list[int],
                         episodes: list) -> None:
        N = self.N
        if "episode" in infos:  # RecordEpisodeStatistics: raw returns even under reward scaling
            ep = infos["episode"]
            finished = np.flatnonzero(infos.get("_episode", done))
            found = [(int(i), float(ep["r"][i]), int(ep["l"][i])) for i in finished]
        else:
            finished = np.flatnonzero(done)
            found = [(int(i), float(self.ep_return[i]), int(self.ep_length[i])) for i in finished]
        self.ep_return[done] = 0.0
        self.ep_length[done] = 0
        now = time.perf_counter()
        for i, ret, length in found:
            k = i // N
            m = self.members[k]
            if not m.running:
                continue
            step = step0[k] + (t + 1) * N
            m.recent_returns.append(ret)
            m.num_episodes += 1
            if len(m.recent_returns) == _RETURN_WINDOW:
                mean = sum(m.recent_returns) / _RETURN_WINDOW
                m.best_mean_return = max(m.best_mean_return, mean)
                if m.solved_return is not None and m.solved_at is None and mean >= m.solved_return:
                    m.solved_at = {"step": step, "episodes": m.num_episodes,
                                   "wall_time": self._wall_before[k] + now - self._t_start}
            episodes.append((k, ret, length, step))

    # ------------------------------------------------------------------ update
    def _per_member(self, x: torch.Tensor) -> torch.Tensor:
        """(T, K*N, ...) rollout tensor -> (K, T*N, ...) rows per member (row = t * N + j)."""
        T = self.buffer.n_steps
        rest = x.shape[2:]
        return x[:T].reshape(T, self.K, self.N, *rest).transpose(0, 1).reshape(self.K, T * self.N, *rest)

    def _step_coefficients(self, k: int, entropy_mean: float, max_entropy: float) -> bool:
        """Advances member k's beta and temperature to its env step (a dual step uses this
        update's measured entropy). A coefficient that leaves float32's range -- a beta tuned to a
        target the policy cannot reach, e.g. a sparse policy with a one-action support, whose
        entropy stays 0 -- stops the member alone ("diverged"): the ops take beta per row as
        float32 and would refuse the call of every member sharing it. False when it stopped."""
        m = self.members[k]
        self._watch_support(k, entropy_mean)
        for coef in (m.beta_coef, m.temperature_coef):
            value = coef.step(m.global_step, entropy_mean, max_entropy)
            if not (math.isfinite(value) and value <= _COEF_MAX):
                target = "" if coef.target is None else f" against a target of {coef.target:.4g}"
                # At entropy 0 a sparse policy's support is one action in the measured states,
                # where its actor gradient is exactly zero whatever the coefficient: a bound keeps
                # the run going, it does not widen the support (README, "Beta schedules and a
                # target entropy").
                dead = (" (entropy 0: a state with a one-action support gives no actor gradient, "
                        "so no bounded value widens it)") if entropy_mean <= 0.0 else ""
                self._diverge(k, f"{coef.field}: the tuned {coef.name} ran away to {value:.4g}, beyond "
                                 f"float32 (entropy {entropy_mean:.4g}{target}); set {coef.field}.max "
                                 f"to bound it{dead}")
                return False
        return True

    # What the one-action warning suggests: measured on A2C (docs/beta.md, "Sparse policies").
    collapse_remedy = "A temperature above 1 (e.g. policy.temperature=2) starts the support wider"

    def _watch_support(self, k: int, entropy_mean: float) -> None:
        """Warns once when a sparse member's entropy has been exactly 0 for
        ``_DEAD_SUPPORT_UPDATES`` updates in a row: its support is one action in every state it
        trained on, where the actor gradient is exactly zero (DESIGN.md, "Jacobians"), so nothing
        in the loss brings it back. With a fixed beta nothing else says so; the run goes on."""
        m = self.members[k]
        if m.alpha <= 1.0:
            return
        m.zero_entropy_updates = m.zero_entropy_updates + 1 if entropy_mean <= 0.0 else 0
        if m.zero_entropy_updates >= _DEAD_SUPPORT_UPDATES and not m.warned_one_action:
            m.warned_one_action = True
            log.warning(
                "%s: the %s policy has had a one-action support in every state of the last %d "
                "updates (entropy 0, env step %d): its actor gets no gradient in those states, "
                "and only the network shared with other states can move it. %s (docs/beta.md, "
                "\"Sparse policies\")",
                m.run_dir, m.cfg.policy.name, _DEAD_SUPPORT_UPDATES, m.global_step, self.collapse_remedy)

    def _diverge(self, k: int, reason: str) -> None:
        m = self.members[k]
        m.status = "diverged"
        ckpt = m.run_dir / CHECKPOINT_NAME
        last = f"the last good checkpoint is {ckpt}" if ckpt.is_file() else "no checkpoint was written yet"
        m.diverged_reason = f"{reason} at env step {m.global_step} (update {m.update + 1}); {last}"
        log.error("%s diverged: %s", m.run_dir, m.diverged_reason)
        m.wall_time = self._wall_before[k] + time.perf_counter() - self._t_start
        for cb in self.callbacks:
            cb.on_member_diverged(self, k)
        self.write_summary(k, self.summary(k))
        for cb in self.callbacks:
            if isinstance(cb, TensorBoardCallback):
                cb.close_member(k)

    def update(self) -> list[dict[str, float] | None]:
        """Epochs of minibatch steps for every running member; each member's metrics (or None)."""
        a, buf, K = self.algo, self.buffer, self.K
        ppo = a.name == "ppo"
        advantages, returns = buf.advantages_and_returns(a.gamma, a.gae_lambda)
        valid = torch.from_numpy(buf.valid.reshape(buf.n_steps, K, self.N).transpose(1, 0, 2)
                                 .reshape(K, -1).copy())
        adv = torch.from_numpy(np.ascontiguousarray(
            advantages.reshape(buf.n_steps, K, self.N).transpose(1, 0, 2).reshape(K, -1), dtype=np.float32))
        ret = torch.from_numpy(np.ascontiguousarray(
            returns.reshape(buf.n_steps, K, self.N).transpose(1, 0, 2).reshape(K, -1), dtype=np.float32))
        for k, m in enumerate(self.members):
            if m.running and not bool(torch.isfinite(adv[k][valid[k]]).all()):
                # Before any loss sees them: ops would refuse them as bad input, but here they
                # are the run diverging (a reward or a value estimate blew up).
                rew = buf.rewards.reshape(buf.n_steps, K, self.N)[:, k]
                ok = np.isfinite(rew[buf.valid.reshape(buf.n_steps, K, self.N)[:, k]]).all()
                self._diverge(k, "non-finite advantages: non-finite "
                              + ("values (critic output)" if ok else "rewards from the env"))
        running = [k for k, m in enumerate(self.members) if m.running]
        if not running:
            return [None] * K
        dev = self.device
        data = SimpleNamespace(
            obs=self._per_member(buf.obs), actions=self._per_member(buf.actions),
            log_probs=self._per_member(buf.log_probs), values=self._per_member(buf.values),
            masks=None if buf.masks is None else self._per_member(buf.masks),
            advantages=adv.to(dev), returns=ret.to(dev))
        explained = self._explained_variance(ret, valid, running)

        # Annealing from the steps before this rollout (module docstring).
        steps_per_rollout = buf.n_steps * self.N
        fracs = [max(0.0, 1.0 - (m.global_step - steps_per_rollout) / m.total_steps) for m in self.members]
        lrs = [m.learning_rate * (f if a.anneal_lr else 1.0)
               for m, f in zip(self.members, fracs, strict=True)]
        clips = [(max(a.clip_eps * f, 1e-8) if a.anneal_clip else a.clip_eps) if ppo else None for f in fracs]
        lr_t = torch.tensor(lrs, dtype=torch.float64)

        # Minibatches: from the valid rows (reset-only rows are never trained on), the same number
        # for every member, never empty; rows padded to a common size carry weight 0.
        n_valid = valid.sum(1)
        counts = [int(n_valid[k]) for k in running]
        if min(counts) == 0:
            for k in running:
                if int(n_valid[k]) == 0:
                    log.warning("%s: a rollout without a valid transition; update skipped",
                                self.members[k].run_dir)
            running = [k for k in running if int(n_valid[k]) > 0]
            if not running:
                return [None] * K
            counts = [int(n_valid[k]) for k in running]
        num_mb = 1 if not ppo else max(1, min(math.ceil(max(counts) / a.batch_size), min(counts)))
        valid_rows = [torch.nonzero(valid[k]).squeeze(1) for k in range(K)]
        norm_once = a.norm_adv and num_mb == 1  # the minibatch is the batch: normalize once
        if norm_once:
            data.advantages = _masked_normalize(data.advantages, valid.to(dev).float())
        epochs = a.update_epochs if ppo else 1
        every_epoch = ppo and a.target_kl is not None
        active = torch.zeros(K, dtype=torch.bool)
        active[running] = True
        stats: dict[int, list[dict[str, torch.Tensor]]] = {k: [] for k in running}
        # Losses and per-term gradient norms (one ops call per member) only on updates that log.
        m0 = self.members[running[0]]
        logs = (m0.update + 1) % m0.log_interval == 0 or (
            m0.histogram_interval and (m0.update + 1) % m0.histogram_interval == 0)
        whole = None  # one minibatch (the rollout): gathered once, the same every epoch
        plans: dict = {}
        for epoch in range(epochs):
            want = every_epoch or epoch == epochs - 1
            epoch_stats: dict[int, list] = {k: [] for k in running}
            if num_mb == 1:
                whole = whole or [self._gather(data, idx.to(dev), weight.to(dev), norm_adv=False)
                                  for idx, weight in self._minibatches(valid_rows, running, 1)]
                batches = whole
            else:
                batches = (self._gather(data, idx.to(dev), weight.to(dev), norm_adv=a.norm_adv)
                           for idx, weight in self._minibatches(valid_rows, running, num_mb))
            for mb, batch in enumerate(batches):
                if not bool(active.any()):
                    break
                where = (f"update {self.members[running[0]].update + 1}, epoch {epoch + 1}, "
                         f"minibatch {mb + 1}")
                step_stats = self._step(batch, active, lr_t, clips, plans, want_stats=want,
                                        want_norms=want and logs, where=where)
                for k, s in step_stats.items():
                    epoch_stats[k].append(s)
            for k in running:
                if epoch_stats[k]:
                    stats[k] = epoch_stats[k]
            if not bool(active.any()):
                break
        return self._finish_update(stats, running, lrs, explained, data)

    def _minibatches(self, valid_rows: list[torch.Tensor], running: list[int], num_mb: int):
        """(idx, weight) per minibatch: (K, S) row indices and 0/1 weights (0 = padding)."""
        K = self.K
        chunks: dict[int, list[torch.Tensor]] = {}
        for k in running:
            rows = valid_rows[k]
            if num_mb > 1:
                rows = rows[torch.randperm(rows.numel(), generator=self.members[k].perm_gen)]
            chunks[k] = list(rows.tensor_split(num_mb))
        for mb in range(num_mb):
            S = max(chunks[k][mb].numel() for k in running)
            idx = torch.zeros(K, S, dtype=torch.int64)
            weight = torch.zeros(K, S)
            for k in running:
                c = chunks[k][mb]
                idx[k, :c.numel()] = c
                idx[k, c.numel():] = c[0]
                weight[k, :c.numel()] = 1.0
            yield idx, weight

    def _gather(self, data, idx: torch.Tensor, weight: torch.Tensor, *, norm_adv: bool) -> SimpleNamespace:
        """The (K, S) minibatch ``idx`` of every member's rollout rows (``weight`` 0 = padding),
        advantages normalized per member when ``norm_adv``."""
        rows = torch.arange(self.K, device=idx.device).unsqueeze(1)
        adv = data.advantages[rows, idx]
        return SimpleNamespace(
            obs=data.obs[rows, idx], actions=data.actions[rows, idx], old_logp=data.log_probs[rows, idx],
            old_values=data.values[rows, idx], target=data.returns[rows, idx],
            adv=_masked_normalize(adv, weight) if norm_adv else adv,
            masks=None if data.masks is None else data.masks[rows, idx],
            weight=weight, count=weight.sum(1).clamp_min(1.0), S=idx.shape[1])

    def _plan(self, active: torch.Tensor, clips: list, S: int, device: torch.device, plans: dict) -> list:
        """The ops calls of a step: members sharing (alpha, temperature, clip range) share one,
        with beta per row when they differ in it (a float keeps ops' scalar path). Cached per
        update for each set of active members."""
        key = (tuple(bool(x) for x in active), S)
        if key not in plans:
            groups: dict[tuple, list[int]] = {}
            for k in range(self.K):
                if bool(active[k]):
                    m = self.members[k]
                    groups.setdefault((m.alpha, m.temperature_coef.value, clips[k]), []).append(k)
            plan = []
            for (alpha, temperature, clip), ks in groups.items():
                betas = [self.members[k].beta_coef.value for k in ks]
                beta = betas[0] if len(set(betas)) == 1 else torch.tensor(
                    betas, dtype=torch.float32, device=device).repeat_interleave(S)
                sel = None if len(ks) == self.K else torch.tensor(ks, device=device)
                plan.append((ks, sel, beta, alpha, temperature, clip))
            plans[key] = plan
        return plans[key]

    def _step(self, mb, active, lr_t, clips, plans, *, want_stats, want_norms, where):
        """One gradient step of every active member on its minibatch ``mb`` (`_gather`).

        ``want_stats``: return each member's entropy, support and PPO statistics of this step;
        ``want_norms``: also its losses and per-term gradient norms. Members sharing the mapping,
        the temperature and the clip range share one ops call (beta per row); every member's
        numbers come from its own rows of the call's per-row outputs.
        """
        a, K, A = self.algo, self.K, self.n_actions
        ppo = a.name == "ppo"
        obs, actions, old_logp, old_values, target = mb.obs, mb.actions, mb.old_logp, mb.old_values, mb.target
        adv, masks, weight, count, S = mb.adv, mb.masks, mb.weight, mb.count, mb.S
        logits, values = self.net(obs)
        # value loss per member: mean over its real rows ((V - R)^2, PPO's clipped form optional)
        v_rows = (values - target).square()
        if ppo and a.clip_value is not None:
            clipped_v = old_values + (values - old_values).clamp(-a.clip_value, a.clip_value)
            v_rows = torch.maximum(v_rows, (clipped_v - target).square())
        v_loss = (v_rows * weight).sum(1) / count
        act_list = [k for k in range(K) if bool(active[k])]
        total = (v_loss.sum() if len(act_list) == K else v_loss[act_list].sum()) * a.vf_coef
        per_member: dict[int, dict[str, torch.Tensor]] = {}
        out_rows = {}
        need_kl = ppo and (a.target_kl is not None or want_stats)
        new_logp = old_logp.new_zeros(old_logp.shape) if need_kl else None
        w_all = weight / count.unsqueeze(1)
        for ks, sel, beta, alpha, temperature, clip in self._plan(active, clips, S, obs.device, plans):
            def pick(x, sel=sel):
                return x if sel is None else x.index_select(0, sel)

            kw = dict(beta=beta, alpha=alpha, temperature=temperature,
                      mask=None if masks is None else pick(masks).reshape(-1, A),
                      weights=pick(w_all).reshape(-1), grad_norms=want_norms)
            lg = pick(logits).reshape(-1, A)
            act = pick(actions).reshape(-1)
            ad = pick(adv).reshape(-1)
            try:
                if ppo:
                    out = ops.ppo_loss(lg, act, ad, pick(old_logp).reshape(-1), clip_eps=clip, **kw)
                else:
                    out = ops.pg_loss(lg, act, ad, **kw)
            except ValueError:
                if not bool(torch.isfinite(lg).all()):
                    for k in ks:
                        if not bool(torch.isfinite(logits[k]).all()):
                            self._diverge(k, f"non-finite logits ({where})")
                            active[k] = False
                    return {}
                raise
            # the group's loss is the mean of its members' means: the sum is the members' total
            total = total + out.loss * len(ks)
            out_rows[tuple(ks)] = out
            if need_kl:
                logp = out.log_prob.detach().view(len(ks), -1).to(new_logp.dtype)
                if sel is None:
                    new_logp = logp
                else:
                    new_logp.index_copy_(0, sel, logp)
        kl = self._approx_kl(new_logp, old_logp, weight, count) if need_kl else None
        self.net.flat.grad.zero_()
        total.backward()
        grad = self.net.flat.grad
        stopped = torch.zeros(K, dtype=torch.bool)
        if ppo and a.target_kl is not None:
            stopped = (kl.cpu() > 1.5 * a.target_kl) & active
            if bool(stopped.any()):  # SB3's rule: stop this member's epochs before this step
                grad[stopped.to(grad.device)] = 0.0
                active &= ~stopped
        norms = row_norms(grad)
        norms_cpu = norms.cpu()
        for k in act_list:
            if bool(active[k]) and not math.isfinite(float(norms_cpu[k])):
                out = next((o for g, o in out_rows.items() if k in g), None)
                self._diverge(k, "non-finite " + self._bad_terms(k, out, v_loss[k], norms_cpu[k], where))
                active[k] = False
                grad[k] = 0.0
        c0, c1 = self.net.critic_columns
        value_norms = row_norms(grad[:, c0:c1]) if want_norms else None
        max_norm = a.max_grad_norm if a.max_grad_norm > 0 else math.inf
        # clip_grad_norm_'s rule, per member: scale by max_norm / (norm + 1e-6) when below 1
        coef = torch.nan_to_num((max_norm / (norms + 1e-6)).clamp(max=1.0), nan=0.0)
        grad.mul_(coef.unsqueeze(1))
        self.optimizer.step(lr_t, active)
        if not want_stats:
            return {}
        with torch.no_grad():
            for ks, out in out_rows.items():
                g = len(ks)
                H_all = out.entropy.view(g, S)
                support_all = out.support_size.view(g, S).float()
                ratio_all = out.ratio.view(g, S) if ppo else None
                clipped_all = out.clipped.view(g, S).float() if ppo else None
                loss_all = out.loss_rows.view(g, S)
                if want_norms:
                    # the op's gradient is that of the mean of the g members' losses: a member's
                    # own rows, times g, are its own loss's gradient rows
                    pol_sq = out.grad_sq_policy.view(g, S).sum(1).sqrt() * g
                    ent_sq = out.grad_sq_entropy.view(g, S).sum(1).sqrt() * g
                for i, k in enumerate(ks):
                    m = self.members[k]
                    if bool(stopped[k]) or not m.running:
                        continue  # a skipped step has no metrics
                    wk, n, H = weight[k], count[k], H_all[i]
                    real = wk > 0
                    s = {
                        "entropy/mean": (H * wk).sum() / n,
                        "entropy/min": H[real].min(),
                        "entropy/max": H[real].max(),
                        "policy/support_size": (support_all[i] * wk).sum() / n,
                    }
                    if want_norms:
                        loss_k = (loss_all[i] * wk).sum() / n  # pg_loss - beta * H of the member
                        s.update({
                            "losses/policy": loss_k + m.beta_coef.value * s["entropy/mean"],
                            "losses/value": v_loss[k].detach(),
                            "losses/total": loss_k + a.vf_coef * v_loss[k].detach(),
                            "grad_norm/policy": pol_sq[i],
                            "grad_norm/entropy": ent_sq[i],
                            "grad_norm/value": value_norms[k],
                            "grad_norm/total": norms[k],
                        })
                    if ppo:
                        s["ppo/approx_kl"] = kl[k]
                        # the conventional definition (SB3, CleanRL): rows with |r - 1| > clip_eps
                        s["ppo/clip_fraction"] = (((ratio_all[i] - 1.0).abs() > clips[k]).float()
                                                  * wk).sum() / n
                        # the rows whose clipped branch is the active one (they give no gradient)
                        s["ppo/clip_active_fraction"] = (clipped_all[i] * wk).sum() / n
                    m.entropy_rows = H[real]
                    per_member[k] = s
        return per_member

    @staticmethod
    def _approx_kl(logp, old_logp, weight, count) -> torch.Tensor:
        """Per member ``E[(r - 1) - log r]`` over its real rows (rl.algos.approx_kl, row-wise)."""
        with torch.no_grad():
            log_ratio = (logp - old_logp).clamp_min(algos.MIN_LOG_RATIO)
            return ((log_ratio.exp() - 1.0 - log_ratio) * weight).sum(1) / count

    def _bad_terms(self, k, out, v_loss, norm, where) -> str:
        terms = {"value loss": v_loss, "total gradient (parameters)": norm}
        if out is not None:
            terms = {"policy loss (pg_loss - beta * entropy)": out.loss,
                     "entropy": out.entropy.mean(),
                     "gradient of the policy term (at the logits)": out.grad_norm_policy,
                     "gradient of the entropy term (at the logits)": out.grad_norm_entropy, **terms}
        bad = [name for name, v in terms.items() if not math.isfinite(float(v.detach()))]
        return f"{'; '.join(bad) or 'loss'} ({where}); the step was not applied"

    def _explained_variance(self, ret: torch.Tensor, valid: torch.Tensor, running: list[int]) -> dict:
        values = self._per_member(self.buffer.values).cpu()
        out = {}
        for k in running:
            r, v = ret[k][valid[k]].double().numpy(), values[k][valid[k]].double().numpy()
            var = float(np.var(r))
            out[k] = math.nan if var == 0 else 1.0 - float(np.var(r - v)) / var
        return out

    def _finish_update(self, stats, running, lrs, explained, data) -> list[dict[str, float] | None]:
        """Means of the logged minibatches' metrics, the coefficients' next values, counters."""
        a = self.algo
        names = sorted({name for k in running for s in stats[k] for name in s})
        table = []
        for k in running:
            for name in names:
                vals = [s[name] for s in stats[k] if name in s]
                table.append(torch.stack(vals).float().mean() if vals else torch.tensor(math.nan))
        flat = torch.stack(table).tolist() if table else []
        results: list[dict[str, float] | None] = [None] * self.K
        masks_all = data.masks
        for i, k in enumerate(running):
            m = self.members[k]
            if not m.running:
                continue
            result = dict(zip(names, flat[i * len(names):(i + 1) * len(names)], strict=True))
            m.update += 1
            if masks_all is None:
                max_entropy = float(ops.max_entropy(m.alpha, self.n_actions))
            else:
                max_entropy = float(ops.max_entropy(m.alpha, masks_all[k].sum(-1)).mean())
            entropy_mean = result.get("entropy/mean", math.nan)
            m.last_entropy = (entropy_mean, max_entropy)
            m.lr = lrs[k]
            result.update({"charts/learning_rate": lrs[k], "policy/beta": m.beta_coef.value,
                           "value/explained_variance": explained.get(k, math.nan)})
            # The target of this batch (f * its H_max), beside the entropy measured on it; a beta
            # target takes the tag when both coefficients have one.
            tuned = next((c for c in (m.beta_coef, m.temperature_coef) if c.adaptive), None)
            if tuned is not None:
                result["policy/target_entropy"] = tuned.target_fraction * max_entropy
            if m.temperature_coef.adaptive or m.temperature_coef.kind != "constant":
                result["policy/temperature"] = m.temperature_coef.value
            # Advance the coefficients for the next rollout and update (a dual step uses this
            # update's measured entropy).
            if math.isfinite(entropy_mean) and not self._step_coefficients(k, entropy_mean, max_entropy):
                continue
            results[k] = result
        if a.name != "ppo":
            for r in results:
                if r is not None:
                    for tag in ("ppo/approx_kl", "ppo/clip_fraction", "ppo/clip_active_fraction"):
                        r.pop(tag, None)
        self.buffer.roll_over()
        return results

    # ------------------------------------------------------------------ the loop
    def request_stop(self, reason: str = "stop requested") -> None:
        """Finish the current update, write checkpoints and return (the signal handlers' action)."""
        self._stop_requested = reason

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame):
            if self._stop_requested is not None:  # second signal: stop now
                raise KeyboardInterrupt
            self.request_stop(signal.Signals(signum).name)
            log.warning("%s: finishing this update, then saving checkpoints (again to abort)",
                        signal.Signals(signum).name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def population_steps(self) -> int:
        return sum(m.global_step for m in self.members)

    def train(self, stop_at_step: int | None = None) -> dict[str, Any] | list[dict[str, Any]]:
        """Trains every member to its ``total_steps`` (or ``stop_at_step``, a stop request, a signal).

        Writes each member's checkpoints, TensorBoard events and ``summary.json`` and returns the
        summaries (a single run: its summary). A member that diverges stops alone, with a summary
        of status "diverged"; for a single run `TrainingDiverged` is raised after its summary is
        written.
        """
        for k, m in enumerate(self.members):
            if m.running and m.global_step >= m.total_steps:
                # resumed from the checkpoint written at the end (its summary was lost)
                m.status = "completed"
                self._finish_member(k, save=False)
        self._t_start = time.perf_counter()
        self._wall_before = [m.wall_time for m in self.members]
        for m in self.members:
            m.start_step = m.global_step
        previous_handlers = self._install_signal_handlers()
        failed = True
        try:
            for cb in self.callbacks:
                cb.on_train_start(self)
            while any(m.running for m in self.members):
                if self._stop_requested is not None:
                    break
                if stop_at_step is not None and all(m.global_step >= stop_at_step
                                                    for m in self.members if m.running):
                    break
                episodes = self.collect_rollout()
                for k, ret, length, step in episodes:
                    for cb in self.callbacks:
                        cb.on_episode_end(self, k, ret, length, step)
                for cb in self.callbacks:
                    cb.on_rollout_end(self)
                metrics = self.update()
                now = time.perf_counter()
                for k, m in enumerate(self.members):
                    if m.running:
                        m.wall_time = self._wall_before[k] + now - self._t_start
                for cb in self.callbacks:
                    cb.on_update_end(self, metrics)
                for k, m in enumerate(self.members):
                    if m.running and m.global_step >= m.total_steps:
                        m.status = "completed"
                        self._finish_member(k)
                for cb in self.callbacks:
                    reason = cb.should_stop(self)
                    if reason:
                        self.request_stop(reason)
            failed = False
        finally:
            for sig, h in previous_handlers.items():
                signal.signal(sig, h)
            now = time.perf_counter()
            for k, m in enumerate(self.members):
                if m.running:
                    m.wall_time = self._wall_before[k] + now - self._t_start
                    m.status = "failed" if failed else "interrupted"
                    self._finish_member(k, save=not failed)
            summaries = [self.summary(k) for k in range(self.K)]
            for cb in self.callbacks:
                cb.on_train_end(self, summaries)
        if self._single:
            if summaries[0]["status"] == "diverged":
                raise TrainingDiverged(self.members[0].diverged_reason)
            return summaries[0]
        return summaries

    def _finish_member(self, k: int, save: bool = True) -> None:
        if save:
            self.save_member(k)
        self.write_summary(k, self.summary(k))

    def mean_return(self, k: int = 0) -> float:
        return self.members[k].mean_return()

    def summary(self, k: int = 0) -> dict[str, Any]:
        m = self.members[k]
        s = {
            "status": m.status,
            "env": m.cfg.env.id,
            "algo": self.algo.name,
            "policy": m.cfg.policy.name,
            "alpha": m.alpha,
            "beta": float(m.cfg.beta),
            "seed": m.seed,
            "steps": m.global_step,
            "updates": m.update,
            "episodes": m.num_episodes,
            "final_mean_return": m.mean_return(),
            "best_mean_return": None if m.best_mean_return == -math.inf else m.best_mean_return,
            "return_window": _RETURN_WINDOW,
            "solved_return": m.solved_return,
            "solved_at_step": None if m.solved_at is None else m.solved_at["step"],
            "solved_at_seconds": None if m.solved_at is None else m.solved_at["wall_time"],
            "wall_time_s": m.wall_time,
            "sps": m.global_step / m.wall_time if m.wall_time > 0 else None,
            "device": str(self.device),
            "population_size": self.K,
            "eval_return_greedy": None,
            "eval_return_sampled": None,
            "eval_step": None,
        }
        s.update(m.extra)
        if m.diverged_reason is not None:
            s["diverged"] = m.diverged_reason
        return s

    def write_summary(self, k: int, summary: dict[str, Any]) -> Path:
        return write_json(self.members[k].run_dir / SUMMARY_NAME, _finite(summary))

    def close(self) -> None:
        self.envs.close()


def _masked_normalize(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(A - mean) / (std + 1e-8)`` per row of (K, S) over the entries of weight 1 (unbiased std,
    as ``torch.std``); rows with fewer than two such entries are left as they are."""
    n = weight.sum(1, keepdim=True)
    mean = (x * weight).sum(1, keepdim=True) / n.clamp_min(1.0)
    var = ((x - mean).square() * weight).sum(1, keepdim=True) / (n - 1.0).clamp_min(1.0)
    out = (x - mean) / (var.sqrt() + 1e-8)
    return torch.where(n >= 2, out, x)


def _member_fields() -> tuple[str, ...]:
    from rl.population import MEMBER_FIELDS

    return MEMBER_FIELDS


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
