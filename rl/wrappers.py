"""Environment wrappers for the experiments.

`DistractorActions` (vector envs) and `DistractorActionsEnv` (one env) grow a
``Discrete(n)`` action space to ``Discrete(n + k)``: the k extra actions all act as
one base action. This is the setting of Lee, Choi,
Oh 2018 ("Sparse Markov decision processes with causal sparse Tsallis entropy
regularization") and Nachum, Chow, Ghavamzadeh 2018: the optimum of
``<p, q> + beta H(p)`` under a Shannon regularizer puts probability ``exp(q_i/beta)/Z``
on *every* action, so its bias grows with log |A|, while the Tsallis/sparsemax optimum
gives the distractors exactly zero once their value falls below the threshold tau.

Default distractor: base action 0. Which base action that is depends on the env:

| env            | action 0                     |
|----------------|------------------------------|
| CartPole-v1    | push cart left               |
| Acrobot-v1     | torque -1                    |
| LunarLander-v3 | do nothing (a true no-op)    |
| MountainCar-v0 | accelerate left              |

In CartPole action 0 is not a no-op but a fixed push: a policy that spreads mass
over k copies of it pushes left with probability ~k/(k+1) and drops the pole, so
the distractors cost return, which is what the experiment needs. Pass
``duplicate_of`` to pick another action (e.g. 1, the no-op of Acrobot).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorActionWrapper, VectorEnv
from gymnasium.vector.utils import batch_space

__all__ = ["DistractorActions", "DistractorActionsEnv"]


def _check_args(space: gym.Space, k: Any, duplicate_of: Any) -> tuple[int, int, int]:
    """Validate the wrapper arguments; return (n, start, duplicate_of as an action value)."""
    if not isinstance(space, gym.spaces.Discrete):
        raise ValueError(
            f"DistractorActions needs a Discrete action space; got {space!r}"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an integer >= 0 (number of distractor actions); got {k!r}")
    n, start = int(space.n), int(space.start)
    if duplicate_of is None:
        duplicate_of = start
    if (
        isinstance(duplicate_of, bool)
        or not isinstance(duplicate_of, (int, np.integer))
        or not start <= duplicate_of < start + n
    ):
        raise ValueError(
            f"duplicate_of must be a base action in [{start}, {start + n}); got {duplicate_of!r}"
        )
    return n, start, int(duplicate_of)


def _map_actions(actions: np.ndarray, n: int, start: int, duplicate_of: int) -> np.ndarray:
    """Send every action >= start + n (a distractor) to `duplicate_of`; keep the others."""
    actions = np.asarray(actions)
    return np.where(actions >= start + n, duplicate_of, actions).astype(actions.dtype, copy=False)


class DistractorActionsEnv(gym.ActionWrapper):
    """Single-env version: Discrete(n) -> Discrete(n + k), actions n..n+k-1 act as `duplicate_of`.

    Parameters
    ----------
    env : gym.Env
        Environment with a ``Discrete(n)`` action space (any ``start``).
    k : int
        Number of distractor actions to add (0 leaves the space unchanged).
    duplicate_of : int, optional
        Base action every distractor behaves as. Default: the first action (see the
        module docstring for what that is in each classic-control env).
    """

    def __init__(self, env: gym.Env, k: int, duplicate_of: int | None = None):
        super().__init__(env)
        self.n, self.start, self.duplicate_of = _check_args(env.action_space, k, duplicate_of)
        self.k = int(k)
        self.action_space = gym.spaces.Discrete(self.n + self.k, start=self.start)

    def action(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must lie in {self.action_space}; got {action!r}")
        return int(_map_actions(np.asarray(action), self.n, self.start, self.duplicate_of))


class DistractorActions(VectorActionWrapper):
    """Vector env: Discrete(n) -> Discrete(n + k), actions n..n+k-1 act as `duplicate_of`.

    What ``rl.envs.make_envs`` applies when ``env.distractor_actions > 0``.

    ``single_action_space`` becomes ``Discrete(n + k)`` and ``action_space`` its batch
    (``MultiDiscrete([n + k] * num_envs)``). Actions arrive as an integer array of shape
    ``(num_envs,)``; distractors are replaced by `duplicate_of` before the base env steps.
    Arguments as in `DistractorActionsEnv`, with a vector env.
    """

    def __init__(self, env: VectorEnv, k: int, duplicate_of: int | None = None):
        if not isinstance(env, VectorEnv):
            raise ValueError(
                f"env must be a gymnasium VectorEnv (use DistractorActionsEnv for one env); "
                f"got {type(env).__name__}"
            )
        super().__init__(env)
        self.n, self.start, self.duplicate_of = _check_args(
            env.single_action_space, k, duplicate_of
        )
        self.k = int(k)
        self.single_action_space = gym.spaces.Discrete(self.n + self.k, start=self.start)
        self.action_space = batch_space(self.single_action_space, env.num_envs)

    def actions(self, actions):
        actions = np.asarray(actions)
        low, high = self.start, self.start + self.n + self.k
        if actions.shape != (self.num_envs,) or (actions < low).any() or (actions >= high).any():
            raise ValueError(
                f"actions must be an integer array of shape ({self.num_envs},) with values in "
                f"[{low}, {high}); got shape {actions.shape}, range "
                f"[{actions.min() if actions.size else None}, "
                f"{actions.max() if actions.size else None}]"
            )
        return _map_actions(actions, self.n, self.start, self.duplicate_of)
