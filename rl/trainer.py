"""The actor-critic training loop (PPO and A2C) -- one class that owns the run's state.

One iteration: collect ``n_steps`` steps from ``num_envs`` envs (inference only) -> GAE
advantages (rl/rollout.py) -> minibatch losses (rl/algos.py, fused ops) -> optimizer steps ->
TensorBoard scalars, progress bar, checkpoint. Policy mapping (alpha), temperature and beta are
config values that reach ``ops`` unchanged.

Resume. A checkpoint is written at a rollout boundary and holds the network, the optimizer,
the beta/temperature schedules, the step/update/episode counters, the RNG states (torch's
global one and the trainer's sampler/minibatch generators), the episode statistics, the
observation-normalization statistics, the last observation and the autoreset flags. Vector
envs themselves cannot in general be saved (simulator state, Box2D, ALE), so by default a
resumed run re-creates them and resets them with a seed derived from ``(seed, global_step)``:
everything above continues exactly, the episodes in progress at the checkpoint are dropped.
With ``exact_env_resume=true`` the vector env is also pickled next to the checkpoint (when it
pickles: classic control does) and restored on resume; then "train N+M steps" and "train N,
checkpoint, resume, train M" give bit-identical networks on CPU.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf

import ops
from rl import algos
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
from rl.optim import make_optimizer
from rl.rollout import RolloutBuffer
from rl.schedules import build_coefficient

__all__ = ["Trainer", "TrainingDiverged", "CHECKPOINT_NAME", "SUMMARY_NAME"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoints/last.pt"
SUMMARY_NAME = SUMMARY_FILE  # one name for the summary file: rl.checkpoint.SUMMARY_FILE
_STAT_NAMES = ("losses/policy", "losses/value", "losses/total", "entropy/mean", "entropy/min",
               "entropy/max", "policy/support_size", "grad_norm/policy", "grad_norm/entropy",
               "grad_norm/value", "grad_norm/total", "ppo/approx_kl", "ppo/clip_fraction")
# Episodes in the running mean reported as "mean return" (the solved criterion of gym's
# classic-control tasks is a mean over 100 consecutive episodes).
_RETURN_WINDOW = 100


class TrainingDiverged(RuntimeError):
    """A loss, a gradient or the logits became non-finite; the run stopped before the bad step."""


def _wrapper_chain(env: Any):
    while env is not None:
        yield env
        env = getattr(env, "env", None)


def _rms_state(envs: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Running statistics of the normalization wrappers (obs_rms, return_rms) as tensors."""
    state = {}
    for env in _wrapper_chain(envs):
        for attr in ("obs_rms", "return_rms"):
            rms = getattr(env, attr, None)
            if rms is not None and attr not in state:
                state[attr] = {k: torch.as_tensor(np.asarray(getattr(rms, k), dtype=np.float64))
                               for k in ("mean", "var", "count")}
    return state


def _load_rms_state(envs: Any, state: dict[str, dict[str, torch.Tensor]]) -> None:
    for env in _wrapper_chain(envs):
        for attr, values in state.items():
            rms = getattr(env, attr, None)
            if rms is not None:
                for k, v in values.items():
                    old = getattr(rms, k)
                    setattr(rms, k, v.numpy().astype(np.asarray(old).dtype).reshape(np.shape(old)))


class Trainer:
    """Owns the envs, the agent, the optimizer, the schedules and the counters of one run.

    Parameters
    ----------
    cfg : composed config (schema ``base_config`` in rl/config.py).
    run_dir : where TensorBoard events, checkpoints and summary.json go.
    resume : checkpoint to continue from (overrides ``cfg.resume``).
    make_envs, make_network : factories, by default ``rl.envs.make_envs`` and
        ``rl.networks.ActorCritic`` (tests inject small stand-ins).
    """

    def __init__(self, cfg: Any, run_dir: str | os.PathLike, resume: str | None = None,
                 make_envs: Callable | None = None, make_network: Callable | None = None):
        checked = validate(cfg)  # the one place config values are checked; the parts trust it
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        # A plain copy of the algo node: the update reads it every gradient step, and an
        # OmegaConf attribute costs microseconds (a dozen per step add up on a small network).
        self.algo = SimpleNamespace(**OmegaConf.to_container(cfg.algo, resolve=True))
        self._num_envs = int(cfg.num_envs)
        self._total_steps = int(cfg.total_steps)
        self._solved_return = cfg.env.solved_return
        self.device = resolve_device(str(cfg.device))
        torch.set_num_threads(cfg.threads)
        self.beta_coef = build_coefficient(checked.beta)
        self.temperature_coef = build_coefficient(checked.temperature)
        self.alpha = float(cfg.policy.alpha)

        if make_envs is None or make_network is None:
            from rl import envs as _envs  # noqa: F401 -- import errors surface here, before training
        if make_envs is None:
            from rl.envs import make_envs
        if make_network is None:
            from rl.networks import ActorCritic as make_network
        from rl.envs import action_mask_from, env_info, policy_obs

        self._make_envs, self._action_mask_from, self._policy_obs = make_envs, action_mask_from, policy_obs
        resume = resume if resume is not None else cfg.resume
        self._state = load_checkpoint(resume, name="resume") if resume else None

        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.envs = make_envs(checked.env, cfg.num_envs, cfg.seed, gamma=float(cfg.algo.gamma))
        info = env_info(self.envs)  # refuses a non-Discrete action space
        self.n_actions = info.n_actions
        obs_space = info.observation_space
        net = checked.network
        self.net = make_network(obs_space, self.n_actions, hidden_sizes=net.hidden_sizes,
                                activation=net.activation, shared=net.shared).to(self.device)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.critic_params = self._critic_parameters()
        # Actor-only logits per rollout step, values batched after it: worth it when the critic
        # is a network of its own (a shared trunk would run twice).
        self._split_forward = (callable(getattr(self.net, "logits", None))
                               and callable(getattr(self.net, "values", None))
                               and not getattr(self.net, "shared", True))
        self.flat_params = _flatten_parameters(self.params)
        self.optimizer = self._make_optimizer()
        mode = self.envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if mode not in (gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP):
            raise ValueError(f"env autoreset_mode={mode} is not supported; use NEXT_STEP or SAME_STEP")
        self.same_step_reset = mode == gym.vector.AutoresetMode.SAME_STEP

        # Sampling draws from a generator on the device; minibatch shuffles from one on the CPU.
        self.sample_gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.perm_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.global_step = 0
        self.update = 0
        self.num_episodes = 0
        self.wall_time = 0.0  # seconds spent in train(), summed over resumes
        self.recent_returns: deque[float] = deque(maxlen=_RETURN_WINDOW)
        self.best_mean_return = -math.inf
        self.solved_at: dict[str, float] | None = None
        self.last_entropy: tuple[float, float] | None = None
        self._stop_requested: str | None = None

        env_seed = cfg.seed
        if self._state is not None:
            env_seed = int(np.random.SeedSequence([cfg.seed, int(self._state["global_step"])])
                           .generate_state(1)[0])
        obs, infos = self.envs.reset(seed=env_seed)
        mask = self._action_mask_from(obs, infos)
        obs = np.asarray(self._policy_obs(obs))
        obs_dtype = torch.uint8 if obs.dtype == np.uint8 else torch.float32
        self.buffer = RolloutBuffer(self.algo.n_steps, cfg.num_envs, obs.shape[1:], obs_dtype,
                                    self.n_actions, mask is not None, self.device)
        self.buffer.obs[0].copy_(torch.from_numpy(obs))
        if mask is not None:
            self.buffer.masks[0].copy_(torch.from_numpy(np.asarray(mask, dtype=bool)))
        self.prev_done = np.zeros(cfg.num_envs, dtype=bool)
        self.ep_return = np.zeros(cfg.num_envs, dtype=np.float64)
        self.ep_length = np.zeros(cfg.num_envs, dtype=np.int64)
        if self._state is not None:
            self._restore(self._state, resume)
        self.writer = None

    # ------------------------------------------------------------------ construction
    def _critic_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters only the value loss reaches: the critic network (the value head alone when
        actor and critic share a trunk). Their gradient norm is grad_norm/value."""
        getter = getattr(self.net, "critic_parameters", None)
        if callable(getter):
            return list(getter())
        return [p for name, p in self.net.named_parameters()
                if p.requires_grad and any(k in name for k in ("critic", "value"))]

    def _make_optimizer(self) -> torch.optim.Optimizer:
        a = self.algo
        # One flat tensor (see _flatten_parameters) and fused Adam / foreach RMSprop: one kernel
        # per step; the per-tensor bookkeeping of torch.optim is most of a small network's step.
        params = self.params if self.flat_params is None else [self.flat_params]
        # rl.optim: torch's Adam/RMSprop without the compile wrappers that import torch._dynamo
        return make_optimizer(a.optimizer, params, lr=a.learning_rate, adam_eps=a.adam_eps,
                              rmsprop_alpha=a.rmsprop_alpha, rmsprop_eps=a.rmsprop_eps)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, as tensors and plain python values (weights_only-safe)."""
        buf = self.buffer
        return {
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
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
            "rng": {"torch": torch.get_rng_state(), "sample": self.sample_gen.get_state(),
                    "perm": self.perm_gen.get_state()},
            "obs_normalization": _rms_state(self.envs),
            "env_state": {
                "obs": buf.obs[0].cpu(),
                "mask": None if buf.masks is None else buf.masks[0].cpu(),
                "prev_done": torch.from_numpy(self.prev_done.copy()),
                "ep_return": torch.from_numpy(self.ep_return.copy()),
                "ep_length": torch.from_numpy(self.ep_length.copy()),
            },
        }

    def _restore(self, state: dict[str, Any], path: str) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
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
        torch.set_rng_state(state["rng"]["torch"])
        self.sample_gen.set_state(state["rng"]["sample"])
        self.perm_gen.set_state(state["rng"]["perm"])
        _load_rms_state(self.envs, state["obs_normalization"])
        snapshot = env_snapshot_path(path)
        if self.cfg.exact_env_resume and snapshot.is_file():
            # Continue the very same episodes: the pickled envs plus the saved observation/flags.
            self.envs.close()
            self.envs = load_pickle(snapshot)
            env_state = state["env_state"]
            self.buffer.obs[0].copy_(env_state["obs"])
            if self.buffer.masks is not None and env_state["mask"] is not None:
                self.buffer.masks[0].copy_(env_state["mask"])
            self.prev_done = env_state["prev_done"].numpy().copy()
            self.ep_return = env_state["ep_return"].numpy().copy()
            self.ep_length = env_state["ep_length"].numpy().copy()
        elif self.cfg.exact_env_resume:
            log.warning("exact_env_resume: no env snapshot %s; envs were re-created and re-seeded", snapshot)
        log.info("resumed from %s at env step %d (update %d)", path, self.global_step, self.update)

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Atomically writes the checkpoint (default ``run_dir/checkpoints/last.pt``)."""
        path = Path(path) if path is not None else self.run_dir / CHECKPOINT_NAME
        save_checkpoint(path, self.state_dict())
        if self.cfg.exact_env_resume:
            try:
                save_pickle(env_snapshot_path(path), self.envs)
            except Exception as err:  # e.g. Box2D or ALE state: resume falls back to re-seeding
                log.warning("exact_env_resume: the envs cannot be pickled (%s); a resume re-seeds them", err)
        return path

    # ------------------------------------------------------------------ rollout
    def _record_episodes(self, done: np.ndarray, infos: dict, step: int) -> list[tuple[float, int]]:
        if "episode" in infos:  # RecordEpisodeStatistics: raw returns even under reward scaling
            ep = infos["episode"]
            finished = np.flatnonzero(infos.get("_episode", done))
            episodes = [(float(ep["r"][i]), int(ep["l"][i])) for i in finished]
        else:
            finished = np.flatnonzero(done)
            episodes = [(float(self.ep_return[i]), int(self.ep_length[i])) for i in finished]
        self.ep_return[done] = 0.0
        self.ep_length[done] = 0
        solved = self._solved_return
        for ret, _ in episodes:
            self.recent_returns.append(ret)
            self.num_episodes += 1
            if len(self.recent_returns) == _RETURN_WINDOW:
                mean = sum(self.recent_returns) / _RETURN_WINDOW
                self.best_mean_return = max(self.best_mean_return, mean)
                if solved is not None and self.solved_at is None and mean >= solved:
                    self.solved_at = {"step": step, "episodes": self.num_episodes,
                                      "wall_time": self._wall_before + time.perf_counter() - self._t_start}
        return episodes

    def _collect(self, episodes: list[tuple[float, int]]) -> None:
        buf, net, N = self.buffer, self.net, self._num_envs
        temperature = self.temperature_coef.value
        # Separate actor and critic: each step runs only the actor, and the critic runs once
        # over all T + 1 observations after the rollout (one batched call instead of T small ones).
        split = self._split_forward
        with torch.inference_mode():
            for t in range(buf.n_steps):
                mask = None if buf.masks is None else buf.masks[t]
                if split:
                    logits = net.logits(buf.obs[t])
                else:
                    logits, values = net(buf.obs[t])
                    buf.values[t].copy_(values.reshape(N))
                # One pass of the mapping gives both the sample and (after the rollout, from the
                # stored probabilities) its log-probability; masked and (alpha > 1)
                # out-of-support actions have p = 0 exactly, and multinomial never draws a
                # zero-probability category.
                p = ops.probs(logits, self.alpha, temperature, mask)
                torch.multinomial(p, 1, generator=self.sample_gen, out=buf.actions[t].unsqueeze(1))
                buf.probs[t].copy_(p)
                actions = buf.actions[t].cpu().numpy()
                obs, rewards, terminated, truncated, infos = self.envs.step(actions)
                done = terminated | truncated
                buf.rewards[t] = rewards
                buf.terminated[t] = terminated
                buf.truncated[t] = truncated
                # Next-step autoreset: the step after a done only resets (action ignored).
                valid = ~self.prev_done if not self.same_step_reset else np.ones(N, dtype=bool)
                buf.valid[t] = valid
                self.ep_return += rewards
                self.ep_length += valid
                if self.same_step_reset and truncated.any():
                    self._final_values(t, truncated, infos)
                if done.any():
                    episodes.extend(self._record_episodes(done, infos, self.global_step + (t + 1) * N))
                self.prev_done = done
                mask = self._action_mask_from(obs, infos)
                buf.obs[t + 1].copy_(torch.from_numpy(np.asarray(self._policy_obs(obs))))
                if buf.masks is not None:
                    buf.masks[t + 1].copy_(torch.from_numpy(np.asarray(mask, dtype=bool)))
            if split:
                buf.values.copy_(net.values(buf.obs.flatten(0, 1)).view(buf.n_steps + 1, N))
            else:
                buf.values[-1] = net.values(buf.obs[-1]).reshape(N)
            torch.log(buf.probs.gather(2, buf.actions.unsqueeze(2)).squeeze(2), out=buf.log_probs)
        self.global_step += buf.n_steps * N

    def _final_values(self, t: int, truncated: np.ndarray, infos: dict) -> None:
        """Same-step autoreset: V(final observation) of the truncated envs, for bootstrapping."""
        idx = np.flatnonzero(truncated)
        final = np.stack([np.asarray(self._policy_obs(infos["final_obs"][i])) for i in idx])
        _, v = self.net(torch.from_numpy(final).to(self.buffer.obs.dtype).to(self.device))
        self.buffer.final_values[t, idx] = v.reshape(-1).float().cpu().numpy()

    # ------------------------------------------------------------------ update
    def _batch(self) -> tuple[algos.Batch, np.ndarray, np.ndarray]:
        """The rollout's valid entries, flattened (the reset-only entries are dropped)."""
        buf, a = self.buffer, self.algo
        advantages, returns = buf.advantages_and_returns(a.gamma, a.gae_lambda)
        if not np.isfinite(advantages[buf.valid]).all():
            # Before any loss sees them: ops would refuse them as bad input, but here they are
            # the run diverging (a reward or a value estimate blew up), not a caller's mistake.
            rewards_ok = np.isfinite(buf.rewards[buf.valid]).all()
            term = "values (critic output)" if rewards_ok else "rewards from the env"
            raise TrainingDiverged(f"non-finite advantages at env step {self.global_step} "
                                   f"(update {self.update + 1}): non-finite {term}; {self._last_good()}")
        T, N = buf.n_steps, buf.num_envs
        valid = buf.valid.reshape(-1)
        idx = None if valid.all() else torch.from_numpy(np.flatnonzero(valid)).to(self.device)

        def flat(x: torch.Tensor) -> torch.Tensor:
            x = x[:T].reshape(T * N, *x.shape[2:])
            return x if idx is None else x.index_select(0, idx)

        def flat_np(x: np.ndarray) -> torch.Tensor:
            x = x.reshape(-1) if idx is None else x.reshape(-1)[valid]
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)

        batch = algos.Batch(
            obs=flat(buf.obs), actions=flat(buf.actions), log_probs=flat(buf.log_probs),
            advantages=flat_np(advantages), returns=flat_np(returns), values=flat(buf.values),
            masks=None if buf.masks is None else flat(buf.masks),
        )
        return batch, returns.reshape(-1)[valid], buf.values[:T].cpu().numpy().reshape(-1)[valid]

    def _anneal(self) -> tuple[float, float | None]:
        """Learning rate and clip range for this update: linear to 0 at total_steps (as SB3,
        after the rollout's steps are counted)."""
        a = self.algo
        frac = max(0.0, 1.0 - self.global_step / self._total_steps)
        lr = a.learning_rate * frac if a.anneal_lr else a.learning_rate
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        clip = None
        if a.name == "ppo":
            clip = max(a.clip_eps * frac, 1e-8) if a.anneal_clip else a.clip_eps
        return lr, clip

    def _diverged(self, losses: algos.Losses, grad_total: torch.Tensor, where: str) -> TrainingDiverged:
        """Names the first non-finite term of a step that is about to be skipped."""
        grad_value = self._grad_norm(self.critic_params)
        terms = {
            "policy loss (pg_loss - beta * entropy)": losses.out.loss,
            "entropy": losses.out.entropy.mean(),
            "value loss": losses.v_loss,
            "gradient of the policy term (at the logits)": losses.out.grad_norm_policy,
            "gradient of the entropy term (at the logits)": losses.out.grad_norm_entropy,
            "gradient of the value loss (critic parameters)": grad_value,
            "total gradient (parameters)": grad_total,
        }
        bad = [name for name, v in terms.items() if not math.isfinite(float(v.detach()))]
        return TrainingDiverged(
            f"non-finite {'; '.join(bad) or 'loss'} at env step {self.global_step} ({where}); "
            f"the step was not applied; {self._last_good()}"
        )

    def _last_good(self) -> str:
        ckpt = self.run_dir / CHECKPOINT_NAME
        return f"the last good checkpoint is {ckpt}" if ckpt.is_file() else "no checkpoint was written yet"

    @staticmethod
    def _grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.tensor(math.nan)
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def _step(self, mb: algos.Batch, beta: float, clip: float | None, temperature: float,
              norm_adv: bool, want_stats: bool, where: Callable[[], str]) -> tuple[torch.Tensor | None, bool]:
        """One gradient step on a minibatch; ``where()`` names it in error messages.

        Returns ``(stats, applied)``: the metrics of `_STAT_NAMES` stacked in one tensor when
        `want_stats` (else None), and False when PPO's target-KL rule skipped the step.
        """
        a = self.algo
        logits, values = self.net(mb.obs)
        try:
            if a.name == "ppo":
                losses = algos.ppo_losses(logits, values, mb, beta=beta, clip_eps=clip, alpha=self.alpha,
                                          temperature=temperature, vf_coef=a.vf_coef,
                                          clip_value=a.clip_value, norm_adv=norm_adv, metrics=want_stats)
            else:
                losses = algos.a2c_losses(logits, values, mb, beta=beta, alpha=self.alpha,
                                          temperature=temperature, vf_coef=a.vf_coef, norm_adv=norm_adv,
                                          metrics=want_stats)
        except ValueError:
            if not bool(torch.isfinite(logits).all()):
                raise TrainingDiverged(
                    f"non-finite logits at env step {self.global_step} ({where()})") from None
            raise
        if a.name == "ppo" and a.target_kl is not None:
            kl = losses.approx_kl if losses.approx_kl is not None else algos.approx_kl(
                losses.out.log_prob, mb.log_probs)
            if float(kl) > 1.5 * a.target_kl:  # SB3's rule: stop the epochs before this step
                return None, False
        flat = self.flat_params
        if flat is None:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            flat.grad.zero_()  # the parameters' .grad are views of it: backward accumulates there
        losses.loss.backward()
        max_norm = a.max_grad_norm if a.max_grad_norm > 0 else math.inf
        if flat is None:
            grad_total = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
        else:
            grad_total = torch.linalg.vector_norm(flat.grad)
        total = grad_total.item()
        # A non-finite loss makes a non-finite gradient: one check per step, before applying it.
        if not math.isfinite(total):
            raise self._diverged(losses, grad_total, where())
        # clip_grad_norm_'s rule: scale by max_norm / (norm + 1e-6) when that is below 1.
        clip_coef = min(1.0, max_norm / (total + 1e-6))
        if flat is not None and clip_coef < 1.0:
            flat.grad.mul_(clip_coef)
        stats = None
        if want_stats:
            # grad_norm/value after clipping would be scaled: measure it from the clip factor.
            out, H = losses.out, losses.out.entropy
            self._entropy_rows = H
            zero = grad_total.new_zeros(())
            stats = torch.stack([
                losses.pg_loss, losses.v_loss.detach(), losses.loss.detach(), H.mean(), H.min(), H.max(),
                out.support_size.float().mean(), out.grad_norm_policy.float(), out.grad_norm_entropy.float(),
                self._grad_norm(self.critic_params) / clip_coef, grad_total,
                zero if losses.approx_kl is None else losses.approx_kl,
                zero if losses.clip_fraction is None else losses.clip_fraction,
            ])
        self.optimizer.step()
        return stats, True

    def _update(self) -> dict[str, Any]:
        a = self.algo
        batch, returns, values = self._batch()
        lr, clip = self._anneal()
        beta, temperature = self.beta_coef.value, self.temperature_coef.value
        n = batch.actions.shape[0]
        ppo = a.name == "ppo"
        epochs = a.update_epochs if ppo else 1
        # Minibatches per epoch from the nominal rollout size, so their number does not change
        # with how many reset-only entries were dropped.
        rollout_size = self.buffer.n_steps * self.buffer.num_envs
        num_mb = max(1, rollout_size // a.batch_size) if ppo else 1
        norm_adv = a.norm_adv
        if norm_adv and num_mb == 1:  # the minibatch is the batch: normalize once, not per epoch
            batch.advantages = algos.normalize(batch.advantages)
            norm_adv = False
        # Metrics come from the last epoch (all epochs when a target KL may stop early).
        every_epoch = ppo and a.target_kl is not None
        stats: list[torch.Tensor] = []
        stopped = False
        for epoch in range(epochs):
            want_stats = every_epoch or epoch == epochs - 1
            epoch_stats = []
            order = torch.randperm(n, generator=self.perm_gen).to(self.device) if num_mb > 1 else None
            for m, idx in enumerate(order.tensor_split(num_mb) if order is not None else [None]):
                mb = batch if idx is None else batch.select(idx)
                s, applied = self._step(
                    mb, beta, clip, temperature, norm_adv, want_stats,
                    lambda e=epoch, m=m: f"update {self.update + 1}, epoch {e + 1}, minibatch {m + 1}")
                if not applied:
                    stopped = True
                    break
                if s is not None:
                    epoch_stats.append(s)
            if epoch_stats:
                stats = epoch_stats
            if stopped:
                break
        self.update += 1
        result = dict(zip(_STAT_NAMES, torch.stack(stats).mean(0).tolist(), strict=True)) if stats else {}
        if not ppo:
            result.pop("ppo/approx_kl", None)
            result.pop("ppo/clip_fraction", None)
        if batch.masks is None:
            max_entropy = float(ops.max_entropy(self.alpha, self.n_actions))
        else:
            max_entropy = float(ops.max_entropy(self.alpha, batch.masks.sum(-1)).mean())
        entropy_mean = result.get("entropy/mean", math.nan)
        self.last_entropy = (entropy_mean, max_entropy)
        var_returns = float(np.var(returns))
        explained = math.nan if var_returns == 0 else 1.0 - float(np.var(returns - values)) / var_returns
        result.update({"charts/learning_rate": lr, "policy/beta": beta,
                       "value/explained_variance": explained})
        # The target of this batch (f * its H_max), beside the entropy measured on it; a beta
        # target takes the tag when both coefficients have one.
        tuned = next((c for c in (self.beta_coef, self.temperature_coef) if c.adaptive), None)
        if tuned is not None:
            result["policy/target_entropy"] = tuned.target_fraction * max_entropy
        if self.temperature_coef.adaptive or self.temperature_coef.kind != "constant":
            result["policy/temperature"] = temperature
        # Advance the coefficients for the next rollout and update (a dual step uses this
        # update's measured entropy).
        if math.isfinite(entropy_mean):
            self.beta_coef.step(self.global_step, entropy_mean, max_entropy)
            self.temperature_coef.step(self.global_step, entropy_mean, max_entropy)
        self.buffer.roll_over()
        return result

    # ------------------------------------------------------------------ the loop
    def request_stop(self, reason: str = "stop requested") -> None:
        """Finish the current update, write a checkpoint and return (the signal handlers' action)."""
        self._stop_requested = reason

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame):
            if self._stop_requested is not None:  # second signal: stop now
                raise KeyboardInterrupt
            self.request_stop(signal.Signals(signum).name)
            log.warning("%s: finishing this update, then saving a checkpoint (again to abort)",
                        signal.Signals(signum).name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def _open_writer(self):
        from rl.logging import TBLogger

        # Events up to the checkpoint's step were logged before the checkpoint was written, so
        # they belong to the run: purge only the ones after it (an interrupted attempt's).
        return TBLogger(self.run_dir / "tb", purge_step=self.global_step + 1 if self.global_step else None)

    def train(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """Trains to ``total_steps`` (or until ``stop_at_step``, a signal, or divergence).

        Writes checkpoints, TensorBoard events and ``summary.json`` in ``run_dir`` and returns
        the summary. Raises `TrainingDiverged` after writing a summary with status "diverged".
        """
        cfg = self.cfg
        from tqdm import tqdm

        # Plain values for the loop: a DictConfig attribute costs tens of microseconds.
        total_steps, log_interval = self._total_steps, int(cfg.log_interval)
        histogram_interval, progress = int(cfg.histogram_interval), bool(cfg.progress)
        checkpoint_interval = int(cfg.checkpoint_interval)

        self.writer = self._open_writer()
        previous_handlers = self._install_signal_handlers()
        bar = tqdm(total=total_steps, initial=self.global_step, disable=not progress,
                   unit="step", mininterval=1.0, dynamic_ncols=True)
        steps_per_update = self.buffer.n_steps * cfg.num_envs
        next_checkpoint = (self.global_step // checkpoint_interval + 1) * checkpoint_interval \
            if checkpoint_interval else None
        status = "running"
        episodes: list[tuple[float, int]] = []
        self._t_start = time.perf_counter()
        t_log, step_log, t_bar = self._t_start, self.global_step, 0.0
        wall_before, wall_step = self.wall_time, self.global_step
        self._wall_before = wall_before
        try:
            while self.global_step < total_steps:
                if self._stop_requested is not None:
                    break
                if stop_at_step is not None and self.global_step >= stop_at_step:
                    break
                self._collect(episodes)
                metrics = self._update()
                now = time.perf_counter()
                self.wall_time = wall_before + now - self._t_start
                if self.update % log_interval == 0:
                    metrics["charts/SPS"] = (self.global_step - step_log) / max(now - t_log, 1e-9)
                    if episodes:
                        metrics["charts/episodic_return"] = float(np.mean([r for r, _ in episodes]))
                        metrics["charts/episodic_length"] = float(np.mean([n for _, n in episodes]))
                        episodes.clear()
                    self.writer.scalars(metrics, self.global_step)
                    t_log, step_log = now, self.global_step
                if histogram_interval and self.update % histogram_interval == 0:
                    self.writer.histogram("entropy/histogram", self._entropy_rows.float().cpu().numpy(),
                                          self.global_step)
                bar.update(steps_per_update)
                if progress and now - t_bar > 1.0:
                    t_bar = now
                    sps = (self.global_step - wall_step) / max(self.wall_time - wall_before, 1e-9)
                    bar.set_postfix(SPS=f"{sps:.0f}", ret=f"{self.mean_return():.1f}",
                                    H=f"{metrics.get('entropy/mean', math.nan):.3f}", refresh=False)
                if next_checkpoint is not None and self.global_step >= next_checkpoint:
                    self.save()
                    next_checkpoint += checkpoint_interval * max(
                        1, math.ceil((self.global_step - next_checkpoint + 1) / checkpoint_interval))
            status = "completed" if self.global_step >= total_steps else "interrupted"
        except TrainingDiverged:
            status = "diverged"
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            self.wall_time = wall_before + time.perf_counter() - self._t_start
            bar.close()
            for sig, h in previous_handlers.items():
                signal.signal(sig, h)
            if status in ("completed", "interrupted"):
                self.save()
            summary = self.summary(status)
            self.write_summary(summary)
            self.writer.close()
        return summary

    def mean_return(self) -> float:
        return float(np.mean(self.recent_returns)) if self.recent_returns else math.nan

    def summary(self, status: str) -> dict[str, Any]:
        return {
            "status": status,
            "env": self.cfg.env.id,
            "algo": self.algo.name,
            "policy": self.cfg.policy.name,
            "alpha": self.alpha,
            "beta": float(self.cfg.beta),
            "seed": int(self.cfg.seed),
            "steps": self.global_step,
            "updates": self.update,
            "episodes": self.num_episodes,
            "final_mean_return": self.mean_return(),
            "best_mean_return": None if self.best_mean_return == -math.inf else self.best_mean_return,
            "return_window": _RETURN_WINDOW,
            "solved_return": self.cfg.env.solved_return,
            "solved_at_step": None if self.solved_at is None else self.solved_at["step"],
            "solved_at_seconds": None if self.solved_at is None else self.solved_at["wall_time"],
            "wall_time_s": self.wall_time,
            "sps": self.global_step / self.wall_time if self.wall_time > 0 else None,
            "device": str(self.device),
        }

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return write_json(self.run_dir / SUMMARY_NAME, _finite(summary))

    def close(self) -> None:
        self.envs.close()


def _flatten_parameters(params: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """Moves the parameters into one contiguous tensor and their gradients into another.

    Each parameter's data and ``.grad`` become views of the two buffers (``.grad`` of the
    returned tensor is the gradient buffer), so the optimizer step and the gradient norm run as
    one op on one tensor instead of a dozen small ones -- most of a small network's step on the
    CPU. Backward accumulates into the existing ``.grad`` views in place; ``load_state_dict``
    copies into the views. Returns None (nothing flattened) when the parameters differ in
    dtype or device.
    """
    if not params or len({(p.dtype, p.device) for p in params}) != 1:
        return None
    n = sum(p.numel() for p in params)
    flat = params[0].new_empty(n)
    grad = params[0].new_zeros(n)
    offset = 0
    for p in params:
        k = p.numel()
        flat[offset:offset + k].copy_(p.detach().reshape(-1))
        p.data = flat[offset:offset + k].view_as(p)
        p.grad = grad[offset:offset + k].view_as(p)
        offset += k
    flat.grad = grad
    return flat


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
