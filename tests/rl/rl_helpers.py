"""What the tests under tests/rl share, one copy each: config composition and the tiny run
settings, a training run and its TensorBoard scalars, independent oracles of the mappings and
their entropies, and a toy env with action masks.

The module is named ``rl_helpers`` (not ``helpers``): pytest imports test directories without
``__init__.py`` by putting them on ``sys.path``, so two ``helpers`` modules in two test
directories would shadow each other.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import entmax
import gymnasium as gym
import numpy as np
import torch
from hydra import compose as _compose
from hydra import initialize_config_dir

from rl.callbacks import Callback
from rl.config import register_configs
from rl.train import CONF_DIR

register_configs()

# Tiny CPU runs: one 16-unit layer, 2 envs x 16 steps = 32 env steps per update; PPO adds
# 2 epochs of 2 minibatches of 16.
N_ENVS, N_STEPS = 2, 16
ROLLOUT = N_ENVS * N_STEPS  # env steps per update
TINY = ("device=cpu", "progress=false", "policy.hidden_sizes=[16]", f"num_envs={N_ENVS}",
        f"algo.n_steps={N_STEPS}", "histogram_interval=0", "checkpoint_interval=0", "eval.episodes=0")
TINY_PPO = ("algo.batch_size=16", "algo.update_epochs=2")
MINIBATCHES_PER_UPDATE = 2 * 2  # PPO: update_epochs x (ROLLOUT / batch_size)


def compose(*overrides: str, config_dir: str = CONF_DIR):
    """The ``rl-train`` config with command-line style overrides (not validated)."""
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return _compose("config", overrides=list(overrides))


def tiny(*overrides: str, algo: str = "ppo"):
    """A tiny CPU run's config (`TINY`, plus `TINY_PPO` for PPO), then ``overrides``."""
    extra = TINY_PPO if algo == "ppo" else ()
    return compose(f"algo={algo}", *TINY, *extra, *overrides)


def train(cfg, run_dir, trainer_class=None, **kwargs):
    """Trains ``cfg`` to the end in ``run_dir``; returns ``(trainer, summary)`` (trainer closed).
    ``trainer_class``: rl.trainer.Trainer by default (rl.sac.SACTrainer for SAC)."""
    from rl.trainer import Trainer

    trainer = (trainer_class or Trainer)(cfg, run_dir, **kwargs)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    return trainer, summary


def scalars(run_dir) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar tag of a run's TensorBoard events: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
            for tag in acc.Tags()["scalars"]}


@contextlib.contextmanager
def registered(env_id: str, entry_point, **kwargs) -> Iterator[str]:
    """``env_id`` registered in Gymnasium for the duration of the block."""
    gym.register(env_id, entry_point=entry_point, **kwargs)
    try:
        yield env_id
    finally:
        del gym.registry[env_id]


# ---------------------------------------------------------------- oracles


def probs_oracle(z: torch.Tensor, alpha: float, temperature: float = 1.0) -> torch.Tensor:
    """The policy of ``z / temperature``, independent of ops: torch's softmax, or the entmax
    package (differentiable, so autograd through it is a reference gradient)."""
    z = z / temperature
    if alpha == 1.0:
        return torch.softmax(z, -1)
    if alpha == 2.0:
        return entmax.sparsemax(z, dim=-1)
    if alpha == 1.5:
        return entmax.entmax15(z, dim=-1)
    return entmax.entmax_bisect(z, alpha, dim=-1, n_iter=100)


def entropy_oracle(p: torch.Tensor, alpha: float) -> torch.Tensor:
    """The alpha-family entropy of ``p``, written out independently of ops (0 log 0 = 0):
    Shannon for alpha = 1, Tsallis ``(1 - sum p^alpha) / (alpha (alpha - 1))`` above."""
    if alpha == 1.0:
        return -(p * torch.where(p > 0, p, torch.ones_like(p)).log()).sum(-1)
    return (1.0 - p.pow(alpha).sum(-1)) / (alpha * (alpha - 1.0))


# ---------------------------------------------------------------- toy envs

N_MASKED = 5


class MaskedEnv(gym.Env):
    """``N_MASKED`` actions of which a random subset is allowed each step; a forbidden action
    raises, so a test that drives it fails loudly if a masked action ever gets through.

    ``where="obs"`` puts the mask in a Dict observation ``{"observation", "action_mask"}``,
    ``where="info"`` in ``infos["action_mask"]``. Each step allows ``k`` actions, ``k`` uniform
    in ``allowed = (low, high)``. The lowest allowed action pays 1. Episodes end after
    ``horizon`` steps (truncated; ``terminate=True``: terminated).
    """

    action_space = gym.spaces.Discrete(N_MASKED)

    def __init__(self, where: str = "obs", allowed: tuple[int, int] = (1, N_MASKED), horizon: int = 8,
                 terminate: bool = False):
        self.where, self.allowed, self.horizon, self.terminate = where, allowed, horizon, terminate
        inner = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.observation_space = inner if where == "info" else gym.spaces.Dict(
            {"observation": inner, "action_mask": gym.spaces.Box(0, 1, (N_MASKED,), np.int8)})

    def _out(self):
        low, high = self.allowed
        self.mask = np.zeros(N_MASKED, np.int8)
        k = int(self.np_random.integers(low, high + 1))
        self.mask[self.np_random.choice(N_MASKED, k, replace=False)] = 1
        obs = self.np_random.normal(size=3).astype(np.float32)
        if self.where == "info":
            return obs, {"action_mask": self.mask.copy()}
        return {"observation": obs, "action_mask": self.mask.copy()}, {}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._out()

    def step(self, action):
        if not self.mask[int(action)]:
            raise RuntimeError(f"forbidden action {action} taken under mask {self.mask}")
        reward = float(action == int(np.flatnonzero(self.mask)[0]))
        self.t += 1
        obs, info = self._out()
        end = self.t >= self.horizon
        return obs, reward, end and self.terminate, end and not self.terminate, info


def assert_same(a, b, path="state"):
    """Exact equality of nested checkpoint states (tensors bitwise)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, (path, a, b)


class RunawayBeta(Callback):
    """Puts member ``k``'s dual variable e times beyond float32's range at its update ``at``: its
    next dual step makes beta unrepresentable for the ops, as a sparse policy at a one-action
    support does over a long run."""

    def __init__(self, k: int, at: int):
        self.k, self.at = k, at

    def on_rollout_end(self, trainer):
        m = trainer.members[self.k]
        if m.running and m.update == self.at:
            m.beta_coef.log_value = math.log(float(torch.finfo(torch.float32).max)) + 1.0


# Members 0 and 1 share a mapping, so one ops call with beta per row: an inf beta there would be
# refused for both. Member 1's target is out of its reach (RunawayBeta makes it run away).
RUNAWAY_MEMBERS = (("seed=0", "policy=sparsemax", "beta=0.1"),
                   ("seed=1", "policy=sparsemax", "beta=0.1", "beta_schedule.target_entropy=0.99"),
                   ("seed=2", "policy=softmax", "beta=0.1"))


def assert_runaway_stopped_alone(summaries, total_steps: int) -> None:
    """Member 1 of RUNAWAY_MEMBERS stopped with a reason naming beta_schedule.max; the others ran on."""
    assert [s["status"] for s in summaries] == ["completed", "diverged", "completed"]
    reason = summaries[1]["diverged"]
    assert "beta_schedule" in reason and "ran away" in reason and "beta_schedule.max" in reason
    assert summaries[1]["steps"] < total_steps
    assert summaries[0]["steps"] == summaries[2]["steps"] == total_steps


class Returns(Callback):
    """Every member's episode returns with their end steps, as the trainer reports them."""

    def __init__(self):
        self.by_member = {}

    def on_episode_end(self, trainer, member, episode_return, length, step):
        self.by_member.setdefault(member, []).append((step, episode_return))
