"""Discrete soft actor-critic (``algo=sac``) for every policy mapping: a single run.

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

The loop is `rl.trainer.Trainer.train`'s, with `SACTrainer` supplying its two steps:
``collect_rollout`` plays ``algo.train_frequency`` steps of the N envs into the replay buffer
(rl/replay.py; uniformly random allowed actions for the first ``algo.learning_starts`` env steps),
``update`` runs ``algo.gradient_steps`` gradient steps. The callbacks (TensorBoard, checkpoints,
progress, evaluation), the run directory, ``summary.json`` (the same keys; ``updates`` counts
loop iterations, warm-up included), stop requests and signals are the on-policy trainer's.

The actor is an ``rl.networks.ActorCritic`` whose value path is unused (its checkpoint entry
``model`` is what ``rl-eval`` and ``load_policy`` read); the critics are two
``rl.networks.QNetwork`` and their targets.

Limits: one run per trainer. `rl.population.train_population` trains a population of SAC runs
one after another; there is no batched population of SAC runs yet.
Resume: the checkpoint holds the actor, the critics, their targets, both optimizers, the
coefficients, RNG states, counters and the envs' last observation; the replay buffer goes into
``last.replay.pt`` next to it when it is at most ``algo.checkpoint_buffer_gb`` GiB. A resume
without it (too large, or missing) starts from an empty buffer and waits until it holds
``algo.batch_size`` transitions before training again. With ``exact_env_resume`` and the buffer
saved, "train N+M" and "train N, resume, train M" give bit-identical networks on CPU.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

import ops
from rl.callbacks import Callback, CheckpointCallback, ProgressCallback, TensorBoardCallback
from rl.checkpoint import (
    env_snapshot_path,
    load_checkpoint,
    load_pickle,
    resolve_device,
    save_checkpoint,
    save_pickle,
)
from rl.config import validate
from rl.envs import MemberEnvs, derived_seed
from rl.replay import ReplayBuffer, replay_nbytes
from rl.schedules import build_coefficient
from rl.trainer import CHECKPOINT_NAME, MemberRun, Trainer

__all__ = ["SACTrainer", "replay_path"]

log = logging.getLogger(__name__)

_GIB = 2 ** 30


def replay_path(checkpoint: str | os.PathLike) -> Path:
    """Where the replay buffer of ``checkpoint`` is saved (``last.pt`` -> ``last.replay.pt``)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".replay.pt")


class _ActorView:
    """The actor as the evaluation callback calls a population's network: ``logits`` of (K, B, ...)."""

    def __init__(self, actor: torch.nn.Module):
        self.actor = actor

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        K, B = obs.shape[:2]
        return self.actor.logits(obs.reshape(K * B, *obs.shape[2:])).view(K, B, -1)


class SACTrainer(Trainer):
    """Trains one SAC run (``SACTrainer(cfg, run_dir)``), as `rl.trainer.Trainer` trains one PPO run.

    Parameters
    ----------
    cfg, run_dir, resume : as `rl.trainer.Trainer` (``cfg.algo.name == "sac"``).
    members : a list of exactly one ``rl.population.Member`` instead (``train()`` then returns a
        list of one summary and does not raise on divergence, as a population).
    make_envs : factory, by default ``rl.envs.make_envs``.
    callbacks : extra callbacks after the trainer's own.
    """

    def __init__(self, cfg: Any = None, run_dir: str | os.PathLike | None = None,
                 resume: str | None = None, *, members: Sequence[Any] | None = None,
                 make_envs: Callable | None = None, callbacks: Sequence[Callback] = ()):
        from rl.population import Member

        if members is None:
            if cfg is None or run_dir is None:
                raise ValueError("SACTrainer needs a config and a run directory, or members")
            members = [Member(cfg, Path(run_dir), resume if resume is not None else cfg.resume)]
            self._single = True
        else:
            if len(members) != 1:
                raise ValueError(f"members has {len(members)} runs; SACTrainer trains exactly one "
                                 "(rl.population.train_population trains SAC runs one after another)")
            self._single = False
        member = members[0]
        cfg = member.cfg
        checked = validate(cfg)
        if cfg.algo.name != "sac":
            raise ValueError(f"algo.name={cfg.algo.name!r} is not allowed for SACTrainer; allowed: sac")
        self.cfg = cfg
        self.algo = a = SimpleNamespace(**OmegaConf.to_container(cfg.algo, resolve=True))
        self.K, self.N = 1, int(cfg.num_envs)
        self.device = dev = resolve_device(str(cfg.device))
        torch.set_num_threads(cfg.threads)
        state = load_checkpoint(member.resume, name="resume") if member.resume else None
        if make_envs is None:
            from rl.envs import make_envs
        from rl.envs import action_mask_from, env_info, policy_obs
        from rl.networks import ActorCritic, QNetwork

        self._action_mask_from, self._policy_obs = action_mask_from, policy_obs
        seed = int(cfg.seed)
        m = MemberRun(
            cfg=cfg, run_dir=Path(member.run_dir), resume=member.resume, seed=seed,
            alpha=float(cfg.policy.alpha), learning_rate=float(a.learning_rate),
            total_steps=int(cfg.total_steps), beta_coef=build_coefficient(checked.beta),
            temperature_coef=build_coefficient(checked.temperature),
            log_interval=int(cfg.log_interval), histogram_interval=int(cfg.histogram_interval),
            checkpoint_interval=int(cfg.checkpoint_interval), solved_return=cfg.env.solved_return,
            # actions are drawn on the device; replay indices on the CPU
            sample_gen=torch.Generator(device=dev).manual_seed(seed),
            perm_gen=torch.Generator().manual_seed(seed + 1),
        )
        m.lr = float(a.learning_rate)
        self.members = [m]

        env_s = checked.env
        self.env_settings = env_s
        # one member: MemberEnvs only so the evaluation and the env pickle see the trainer's layout
        self.per_member_envs = bool(cfg.exact_env_resume)
        np.random.seed(seed)
        vec = make_envs(env_s, self.N, seed, gamma=float(a.gamma))
        self.envs = MemberEnvs([vec]) if self.per_member_envs else vec
        info = env_info(vec)
        mode = vec.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if mode != gym.vector.AutoresetMode.NEXT_STEP:
            raise ValueError(f"env autoreset_mode={mode} is not supported; SAC needs "
                             "AutoresetMode.NEXT_STEP (Gymnasium's default)")
        self.n_actions = A = info.n_actions

        net = checked.network
        torch.manual_seed(seed)
        self.actor = ActorCritic(info.observation_space, A, hidden_sizes=net.hidden_sizes,
                                 activation=net.activation, shared=net.shared,
                                 network=net.network).to(dev)
        self.q1, self.q2 = (QNetwork(info.observation_space, A, hidden_sizes=net.hidden_sizes,
                                     activation=net.activation, network=net.network).to(dev)
                            for _ in range(2))
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        for p in (*self.q1_target.parameters(), *self.q2_target.parameters()):
            p.requires_grad_(False)
        self.net = _ActorView(self.actor)
        # the value path of ActorCritic is not SAC's: only what the logits depend on is trained
        self.actor_params = [p for name, p in self.actor.named_parameters() if not name.startswith("critic")]
        self.q_params = [*self.q1.parameters(), *self.q2.parameters()]
        self.actor_optimizer = torch.optim.Adam(self.actor_params, lr=a.learning_rate, eps=a.adam_eps)
        self.q_optimizer = torch.optim.Adam(self.q_params, lr=a.q_learning_rate, eps=a.adam_eps)
        self.gradient_steps_done = 0
        self.target_mark = 0  # global_step // target_update_interval at the last target update

        # the replay buffer: its memory up front, refused above algo.max_buffer_gb
        obs_space = info.observation_space
        compact = {np.dtype(np.uint8): torch.uint8, np.dtype(np.bool_): torch.bool}
        obs_dtype = compact.get(np.dtype(obs_space.dtype), torch.float32)  # Discrete (int64): float32
        obs_shape = tuple(obs_space.shape)
        nbytes = replay_nbytes(a.buffer_size, self.N, obs_shape, obs_dtype, A, info.has_action_mask)
        if nbytes > a.max_buffer_gb * _GIB:
            self.envs.close()
            raise ValueError(
                f"algo.buffer_size={a.buffer_size} is not allowed: its replay buffer needs "
                f"{nbytes / _GIB:.2f} GiB on {dev}, above algo.max_buffer_gb={a.max_buffer_gb}; allowed: a "
                "smaller buffer_size, or a larger max_buffer_gb if the device has the memory")
        log.info("replay buffer: %d transitions of %s %s observations, %.3f GiB on %s",
                 a.buffer_size, obs_shape, str(obs_dtype).removeprefix("torch."), nbytes / _GIB, dev)
        self.buffer = ReplayBuffer(a.buffer_size, self.N, obs_shape, obs_dtype, A,
                                   info.has_action_mask, dev)

        self._stop_requested: str | None = None
        self._t_start = time.perf_counter()
        self._wall_before = [0.0]
        self.prev_done = np.zeros(self.N, dtype=bool)
        self.ep_return = np.zeros(self.N, dtype=np.float64)
        self.ep_length = np.zeros(self.N, dtype=np.int64)
        buffer_restored = False
        if state is not None:
            buffer_restored = self._restore(state)
        self._first_reset(state, buffer_restored)

        from rl.evaluation import make_eval_callback

        evaluation = make_eval_callback(cfg)
        self.callbacks: list[Callback] = [c for c in (evaluation,) if c is not None]
        self.callbacks += [TensorBoardCallback(), CheckpointCallback()]
        if bool(cfg.progress):
            self.callbacks.append(ProgressCallback())
        self.callbacks.extend(callbacks)

    # ------------------------------------------------------------------ envs
    def _vec(self):
        return self.envs.envs[0] if self.per_member_envs else self.envs

    def _first_reset(self, state: dict | None, buffer_restored: bool) -> None:
        m = self.members[0]
        snapshot = None
        if state is not None and bool(self.cfg.exact_env_resume):
            path = env_snapshot_path(m.resume)
            snapshot = path if path.is_file() else None
            if snapshot is None:
                log.warning("exact_env_resume: no env snapshot for %s; envs were re-created and re-seeded",
                            m.run_dir)
        if snapshot is not None:
            # Continue the very same episodes: the pickled envs, their last observation and flags.
            self._vec().close()
            self.envs.envs[0] = load_pickle(snapshot)
            env_state = state["env_state"]
            self.prev_done[:] = env_state["prev_done"].numpy()
            self.ep_return[:] = env_state["ep_return"].numpy()
            self.ep_length[:] = env_state["ep_length"].numpy()
            if not buffer_restored:
                self.buffer.start(env_state["obs"].to(self.device),
                                  None if env_state["mask"] is None else env_state["mask"].to(self.device))
            return
        seed = m.seed if state is None else derived_seed(m.seed, m.global_step)
        obs, infos = self._vec().reset(seed=seed)
        self._start_episodes(obs, infos)

    def _start_episodes(self, obs, infos) -> None:
        mask = self._action_mask_from(obs, infos)
        self.buffer.start(torch.from_numpy(np.asarray(self._policy_obs(obs))).to(self.device),
                          None if mask is None else torch.from_numpy(np.asarray(mask, dtype=bool)).to(
                              self.device))

    def collect_rollout(self) -> list[tuple[int, float, int, int]]:
        """``algo.train_frequency`` steps of the N envs into the replay buffer; the finished episodes."""
        m, buf, N = self.members[0], self.buffer, self.N
        episodes: list[tuple[int, float, int, int]] = []
        step0 = [m.global_step]
        actions = torch.empty(N, dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            for t in range(self.algo.train_frequency):
                obs, mask = buf.current()
                if m.global_step + t * N < self.algo.learning_starts:
                    # uniformly random allowed actions (CleanRL samples the action space)
                    p = torch.ones(N, self.n_actions, device=self.device) if mask is None else mask.float()
                else:
                    p = self.policy_probs(self.actor.logits(obs).unsqueeze(0),
                                          None if mask is None else mask.unsqueeze(0))[0]
                self.sample_actions(p.unsqueeze(0), actions)
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
        m.global_step += self.algo.train_frequency * N
        return episodes

    # ------------------------------------------------------------------ update
    def _max_entropy(self, masks: torch.Tensor | None) -> float:
        alpha = self.members[0].alpha
        if masks is None:
            return float(ops.max_entropy(alpha, self.n_actions))
        return float(ops.max_entropy(alpha, masks.sum(-1)).mean())

    def critic_target(self, batch) -> torch.Tensor:
        """``r + gamma (1 - terminated) V(s')`` with V the soft value of the current policy under
        the smaller target Q (module docstring)."""
        m = self.members[0]
        with torch.no_grad():
            next_logits = self.actor.logits(batch.next_obs)
            q_next = torch.minimum(self.q1_target(batch.next_obs), self.q2_target(batch.next_obs))
            v_next = ops.soft_value(next_logits, q_next, m.beta_coef.value, m.alpha,
                                    m.temperature_coef.value, batch.next_masks).float()
            return batch.rewards + self.algo.gamma * (~batch.terminated).float() * v_next

    def update(self) -> list[dict[str, float] | None]:
        """``algo.gradient_steps`` gradient steps once the warm-up is over; the member's metrics."""
        a, m = self.algo, self.members[0]
        m.update += 1
        if not m.running:
            return [None]
        result: dict[str, float] = {"policy/beta": m.beta_coef.value}
        if m.global_step < a.learning_starts or self.buffer.num_transitions < a.batch_size:
            return [result]
        logs = m.update % m.log_interval == 0 or (
            m.histogram_interval and m.update % m.histogram_interval == 0)
        stats = None
        for g in range(a.gradient_steps):
            stats = self._gradient_step(want_stats=logs and g == a.gradient_steps - 1)
            if not m.running:
                return [None]
        if (m.global_step // a.target_update_interval) != self.target_mark:
            self.target_mark = m.global_step // a.target_update_interval
            self._update_targets()
        if stats:
            result.update(stats)
        result["policy/beta"] = m.beta_coef.value
        return [result]

    @torch.no_grad()
    def _update_targets(self) -> None:
        tau = self.algo.tau
        for online, target in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
            src, dst = list(online.parameters()), list(target.parameters())
            if tau == 1.0:
                torch._foreach_copy_(dst, src)
            else:
                torch._foreach_lerp_(dst, src, tau)  # dst + tau (src - dst)

    def _grad_norm(self, params: list[torch.Tensor]) -> torch.Tensor:
        max_norm = self.algo.max_grad_norm if self.algo.max_grad_norm > 0 else math.inf
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def _gradient_step(self, want_stats: bool) -> dict[str, float] | None:
        a, m = self.algo, self.members[0]
        batch = self.buffer.sample(a.batch_size, m.perm_gen)
        beta, alpha, temperature = m.beta_coef.value, m.alpha, m.temperature_coef.value
        where = f"gradient step {self.gradient_steps_done + 1}"
        # critic
        try:
            target = self.critic_target(batch)
        except ValueError:
            self._diverge(0, f"non-finite target Q values or logits ({where})")
            return None
        q1_all, q2_all = self.q1(batch.obs), self.q2(batch.obs)
        act = batch.actions.unsqueeze(1)
        q1_a, q2_a = q1_all.gather(1, act).squeeze(1), q2_all.gather(1, act).squeeze(1)
        q_loss = F.mse_loss(q1_a, target) + F.mse_loss(q2_a, target)
        self.q_optimizer.zero_grad(set_to_none=False)
        q_loss.backward()
        q_norm = self._grad_norm(self.q_params)
        # one device sync for both numbers
        if not all(map(math.isfinite, torch.stack([q_loss.detach(), q_norm]).tolist())):
            self._diverge(0, f"non-finite critic loss or gradient ({where}); the step was not applied")
            return None
        self.q_optimizer.step()
        # actor, against the critics just updated (CleanRL's order), held fixed
        obs_masks = batch.masks
        logits = self.actor.logits(batch.obs)
        with torch.no_grad():
            q_pi = torch.minimum(self.q1(batch.obs), self.q2(batch.obs))
        try:
            out = ops.soft_policy_loss(logits, q_pi, beta, alpha, temperature, obs_masks)
        except ValueError:
            self._diverge(0, f"non-finite logits or Q values in the actor loss ({where})")
            return None
        self.actor_optimizer.zero_grad(set_to_none=False)
        out.loss.backward()
        actor_norm = self._grad_norm(self.actor_params)
        actor_loss, actor_norm_f, H_mean = torch.stack(
            [out.loss.detach().float(), actor_norm.float(), out.entropy.float().mean()]).tolist()
        if not (math.isfinite(actor_loss) and math.isfinite(actor_norm_f)):
            self._diverge(0, f"non-finite actor loss or gradient ({where}); the step was not applied")
            return None
        self.actor_optimizer.step()
        self.gradient_steps_done += 1
        # the coefficients: a schedule's value at this env step, or one dual step on this batch
        max_entropy = self._max_entropy(obs_masks)
        m.last_entropy = (H_mean, max_entropy)
        tuned = next((c for c in (m.beta_coef, m.temperature_coef) if c.adaptive), None)
        m.beta_coef.step(m.global_step, H_mean, max_entropy)
        m.temperature_coef.step(m.global_step, H_mean, max_entropy)
        if not want_stats:
            return None
        with torch.no_grad():
            H = out.entropy.float()
            q_taken = torch.cat([q1_a, q2_a]).detach()
            s = {
                "losses/q": float(q_loss.detach()),
                "losses/policy": actor_loss + beta * H_mean,  # -<p, q> alone
                "entropy/mean": H_mean,
                "entropy/min": float(H.min()),
                "entropy/max": float(H.max()),
                "policy/support_size": float(out.support_size.float().mean()),
                "grad_norm/policy": float(out.grad_norm_policy),
                "grad_norm/entropy": float(out.grad_norm_entropy),
                "grad_norm/value": float(q_norm),
                "grad_norm/actor": actor_norm_f,
                "q/mean": float(q_taken.mean()),
                "q/min": float(q_taken.min()),
                "q/max": float(q_taken.max()),
                "q/target": float(target.mean()),
                "charts/learning_rate": float(a.learning_rate),
            }
            if tuned is not None:
                s["policy/target_entropy"] = tuned.target_fraction * max_entropy
            if m.temperature_coef.adaptive or m.temperature_coef.kind != "constant":
                s["policy/temperature"] = m.temperature_coef.value
            m.entropy_rows = H
        return s

    # ------------------------------------------------------------------ checkpoints
    def member_state_dict(self, k: int = 0) -> dict[str, Any]:
        m, (obs, mask) = self.members[0], self.buffer.current()
        return {
            **m.state_dict(),
            "model": self.actor.state_dict(),  # what rl-eval loads
            "q1": self.q1.state_dict(), "q2": self.q2.state_dict(),
            "q1_target": self.q1_target.state_dict(), "q2_target": self.q2_target.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "q_optimizer": self.q_optimizer.state_dict(),
            "gradient_steps": self.gradient_steps_done,
            "target_mark": self.target_mark,
            "obs_normalization": {},
            "env_state": {
                "obs": obs.cpu(), "mask": None if mask is None else mask.cpu(),
                "prev_done": torch.from_numpy(self.prev_done.copy()),
                "ep_return": torch.from_numpy(self.ep_return.copy()),
                "ep_length": torch.from_numpy(self.ep_length.copy()),
            },
        }

    def _restore(self, state: dict[str, Any]) -> bool:
        """Loads the checkpoint; True when the replay buffer was restored too."""
        m = self.members[0]
        try:
            self.actor.load_state_dict(state["model"])
            for name in ("q1", "q2", "q1_target", "q2_target"):
                getattr(self, name).load_state_dict(state[name])
            self.actor_optimizer.load_state_dict(state["actor_optimizer"])
            self.q_optimizer.load_state_dict(state["q_optimizer"])
            self.gradient_steps_done = int(state["gradient_steps"])
            self.target_mark = int(state["target_mark"])
            m.load_state_dict(state)
        except (KeyError, TypeError) as err:
            raise ValueError(f"resume={m.resume}: the checkpoint lacks {err} (not a SAC checkpoint of "
                             "this version?); start a new run or use a checkpoint of algo=sac") from None
        path = replay_path(m.resume)
        restored = False
        if path.is_file():
            replay = load_checkpoint(path, name="resume (replay buffer)")
            if int(replay.get("global_step", -1)) == m.global_step:
                self.buffer.load_state_dict(replay["buffer"])
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
        """Atomically writes the checkpoint (default ``<run_dir>/checkpoints/last.pt``), the replay
        buffer next to it when small enough (``last.replay.pt``, written first) and, with
        ``exact_env_resume``, the envs."""
        m = self.members[0]
        path = Path(path) if path is not None else m.run_dir / CHECKPOINT_NAME
        rpath = replay_path(path)
        if self.buffer.nbytes <= self.algo.checkpoint_buffer_gb * _GIB:
            save_checkpoint(rpath, {"global_step": m.global_step, "buffer": self.buffer.state_dict()})
        else:
            if rpath.is_file():
                rpath.unlink()  # a stale buffer must not pair with this checkpoint
            log.warning("the replay buffer (%.2f GiB) is above algo.checkpoint_buffer_gb=%s: not saved; "
                        "a resume starts with an empty buffer", self.buffer.nbytes / _GIB,
                        self.algo.checkpoint_buffer_gb)
        save_checkpoint(path, self.member_state_dict(0))
        if bool(self.cfg.exact_env_resume):
            try:
                save_pickle(env_snapshot_path(path), self._vec())
            except Exception as err:  # e.g. Box2D or ALE state: resume falls back to re-seeding
                log.warning("exact_env_resume: the envs cannot be pickled (%s); a resume re-seeds them", err)
        return path

    def member_network(self, k: int = 0) -> torch.nn.Module:
        """The actor (``rl.networks.ActorCritic``; its value path is untrained)."""
        return self.actor

    def batch(self, k: int = 0):
        raise NotImplementedError("SACTrainer has no rollout batch; sample its replay buffer")
