"""Evaluation during training: greedy and sampled returns on env instances of their own.

Every ``eval.interval`` env steps (0: only at the end of the run) and when a member completes,
each member plays ``eval.episodes`` episodes with its greedy policy (``ops.greedy``, the same under
every mapping) and as many with its sampled policy (its own mapping, temperature and a generator
seeded from ``(seed, env step)``), on envs separate from the training ones:

* seeded with a seed of their own (the same at every evaluation, so successive evaluations
  differ only by the policy);
* observations normalized with the member's training statistics, frozen (as ``rl-eval``); no
  reward normalization (returns are the env's own, as the training curves);
* every member of a population at once: one vector env of K x 2 x episodes sub-envs and one
  batched forward per step; each sub-env's first finished episode counts.

TensorBoard gets ``eval/return_greedy`` and ``eval/return_sampled`` (means over the episodes);
``summary.json`` gets the last evaluation as ``eval_return_greedy`` / ``eval_return_sampled`` and
its env step as ``eval_step``. ``eval.episodes=0`` turns evaluation off.

A member that stops as diverged has no weights worth playing, but its last checkpoint was written
before the non-finite step (the trainer never applies one) or the runaway coefficient. Its final
evaluation is that checkpoint's, played as ``rl-eval`` plays it (`rl.evaluate.evaluate`, greedy
and sampled, ``eval.episodes`` each, on envs seeded like the ones above); ``eval_step`` is the
checkpoint's env step and ``eval_checkpoint`` its path. Without a checkpoint the summary keeps
the last evaluation during training, if any; a checkpoint that cannot be played leaves its error
in ``eval_error`` and stops nothing else. So a diverged run is judged at its last good policy,
not left out of the greedy tables.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import ops
from rl.callbacks import Callback

if TYPE_CHECKING:  # pragma: no cover
    from rl.trainer import Trainer

__all__ = ["EvalCallback", "evaluate_members"]

log = logging.getLogger(__name__)

# A seed offset that keeps evaluation envs off the training envs' seeds (seed, seed + 1, ...).
_EVAL_SEED_OFFSET = 1_000_003


def evaluate_members(trainer: Trainer, members: list[int], episodes: int) -> dict[int, tuple[float, float]]:
    """Greedy and sampled mean returns of ``members``: ``{k: (greedy, sampled)}``."""
    from rl.envs import (
        MemberEnvs,
        action_mask_from,
        concat_infos,
        concat_obs,
        derived_seed,
        make_envs,
        policy_obs,
        rms_state,
    )
    from rl.evaluate import _restore_obs_rms

    K, E = trainer.K, episodes
    per = 2 * E  # sub-envs per member: E greedy, then E sampled
    env_s = trainer.env_settings
    eval_env_s = type(env_s)(**{**env_s.__dict__, "normalize_reward": False})
    seeds = [trainer.members[k].seed + _EVAL_SEED_OFFSET for k in range(K)]
    if trainer.per_member_envs:
        envs = MemberEnvs([make_envs(eval_env_s, per, s) for s in seeds])
        for k, env in enumerate(envs.envs):
            _restore_obs_rms(env, {"obs_normalization": rms_state(trainer.envs.envs[k])})
        results = [envs.reset_member(k, s) for k, s in enumerate(seeds)]
        obs = concat_obs([r[0] for r in results])
        infos = concat_infos([r[1] for r in results], envs.sizes)
    else:
        envs = make_envs(eval_env_s, K * per, seeds[0])
        obs, infos = envs.reset(seed=derived_seed(*seeds))
    dev = trainer.device
    gens = [torch.Generator(device=dev).manual_seed(
        derived_seed(m.seed, m.global_step, 1))
        for m in trainer.members]
    returns = np.full(K * per, np.nan)
    obs_dtype = trainer.buffer.obs.dtype
    greedy_cols = torch.zeros(K, per, dtype=torch.bool, device=dev)
    greedy_cols[:, :E] = True
    try:
        with torch.inference_mode():
            while np.isnan(returns).any():
                x = torch.as_tensor(np.asarray(policy_obs(obs)), device=dev).to(obs_dtype)
                x = x.view(K, per, *x.shape[1:])
                mask = action_mask_from(obs, infos)
                mask_t = None if mask is None else torch.as_tensor(mask, device=dev).view(K, per, -1)
                logits = trainer.net.logits(x)
                greedy = ops.greedy(logits, mask=mask_t)
                p = trainer.policy_probs(logits, mask_t)
                sampled = torch.empty(K, per, dtype=torch.int64, device=dev)
                trainer.sample_actions(p, sampled, gens)
                actions = torch.where(greedy_cols, greedy, sampled).reshape(-1)
                obs, _, _, _, infos = envs.step(actions.cpu().numpy())
                if "episode" in infos:
                    finished = np.asarray(infos["_episode"], dtype=bool) & np.isnan(returns)
                    returns[finished] = np.asarray(infos["episode"]["r"])[finished]
    finally:
        envs.close()
    by_member = returns.reshape(K, per)
    return {k: (float(by_member[k, :E].mean()), float(by_member[k, E:].mean())) for k in members}


class EvalCallback(Callback):
    """Runs `evaluate_members` every ``eval.interval`` env steps and at each member's end."""

    def __init__(self, interval: int, episodes: int):
        self.interval, self.episodes = int(interval), int(episodes)
        self.next: dict[int, float] = {}

    def on_train_start(self, trainer):
        for k, m in enumerate(trainer.members):
            self.next[k] = ((m.global_step // self.interval + 1) * self.interval
                            if self.interval > 0 else math.inf)

    def on_update_end(self, trainer, metrics):
        if self.episodes <= 0:
            return
        due = [k for k, m in enumerate(trainer.members) if m.running and metrics[k] is not None
               and (m.global_step >= self.next[k] or m.global_step >= m.total_steps)]
        if not due:
            return
        for k, (greedy, sampled) in evaluate_members(trainer, due, self.episodes).items():
            m = trainer.members[k]
            m.extra.update(eval_return_greedy=greedy, eval_return_sampled=sampled,
                           eval_step=m.global_step)
            metrics[k]["eval/return_greedy"] = greedy
            metrics[k]["eval/return_sampled"] = sampled
            if self.interval > 0:
                while self.next[k] <= m.global_step:
                    self.next[k] += self.interval

    def on_member_diverged(self, trainer, k):
        if self.episodes <= 0:
            return
        from rl.checkpoint import load_checkpoint
        from rl.evaluate import evaluate
        from rl.trainer import CHECKPOINT_NAME

        m = trainer.members[k]
        ckpt = m.run_dir / CHECKPOINT_NAME
        if not ckpt.is_file():
            return
        try:
            step = int(load_checkpoint(ckpt, require=("global_step",))["global_step"])
            seed = m.seed + _EVAL_SEED_OFFSET
            found = {greedy: evaluate(ckpt, episodes=self.episodes, greedy=greedy, seed=seed,
                                      device=str(trainer.device))["mean"]
                     for greedy in (True, False)}
        except Exception as err:  # the diverged member's own problem: the population goes on
            log.warning("%s: the last checkpoint %s could not be evaluated: %s", m.run_dir, ckpt, err)
            m.extra["eval_error"] = f"{type(err).__name__}: {err}"
            return
        m.extra.update(eval_return_greedy=found[True], eval_return_sampled=found[False], eval_step=step,
                       eval_checkpoint=str(ckpt))
        log.info("%s: diverged; its last checkpoint (env step %d) evaluates to %.4g greedy, %.4g "
                 "sampled", m.run_dir, step, found[True], found[False])


def make_eval_callback(cfg: Any) -> EvalCallback | None:
    node = cfg.get("eval") if hasattr(cfg, "get") else None
    if node is None:
        return None
    return EvalCallback(int(node.interval), int(node.episodes))
