"""Rollout storage and generalized advantage estimation under Gymnasium 1.x autoreset.

Gymnasium 1.x vector envs reset a finished sub-env on the *next* ``step`` call
(``AutoresetMode.NEXT_STEP``): the step after a done ignores its action, returns the reset
observation and reward 0. That entry is not a transition of the environment, so it is
marked invalid (``valid = False``) and never trained on. Bootstrapping then works out as
follows, for the step ``t`` of one env:

* ``terminated[t]``: the episode really ended; the target is ``r_t`` (no bootstrap).
* ``truncated[t]`` (time limit): the episode was cut, not ended; the target is
  ``r_t + gamma V(s_{t+1})`` where ``s_{t+1}`` is the final observation. In next-step mode
  that observation is the one the done step returned, i.e. the next buffer entry's
  observation, whose value the rollout computed anyway (the policy runs on every entry).
  (The trainer refuses ``AutoresetMode.SAME_STEP`` envs, whose final observation would live
  only in ``infos["final_obs"]``.)
* otherwise ``r_t + gamma V(s_{t+1})`` and the GAE recursion continues.

Either way the recursion stops at a done: ``A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}``
(Schulman et al. 2016, "High-dimensional continuous control using GAE", eq. 16).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["RolloutBuffer", "compute_gae"]


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    valid: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> np.ndarray:
    """GAE(lambda) advantages of a ``(T, N)`` rollout; 0 on invalid entries.

    Parameters
    ----------
    rewards, values, terminated, truncated, valid : (T, N) arrays, one column per env.
    next_values : (T, N) ``V(s_{t+1})`` for every entry: the value of the observation the
        step returned (``values[t + 1]`` in next-step autoreset mode, the value after the
        last step for ``t = T - 1``).
    gamma, gae_lambda : discount and GAE lambda (``lambda = 1``: n-step returns).

    Returns
    -------
    (T, N) float array of advantages; the value targets are ``advantages + values``.
    """
    T = rewards.shape[0]
    advantages = np.zeros_like(values)
    not_terminal = 1.0 - terminated.astype(values.dtype)
    # The recursion continues only through steps that neither terminated nor were truncated.
    carry = gamma * gae_lambda * (1.0 - (terminated | truncated).astype(values.dtype))
    valid_f = valid.astype(values.dtype)
    last = np.zeros_like(values[0])
    for t in range(T - 1, -1, -1):
        delta = rewards[t] + gamma * next_values[t] * not_terminal[t] - values[t]
        last = (delta + carry[t] * last) * valid_f[t]
        advantages[t] = last
    return advantages


class RolloutBuffer:
    """Fixed-size storage for ``n_steps`` steps of ``num_envs`` envs, allocated once.

    ``obs`` has ``n_steps + 1`` rows: row ``t`` is what the policy saw at step ``t`` and
    row ``n_steps`` the observation after the last step (moved to row 0 by `roll_over`), so
    observations are copied exactly once, straight from the env's arrays.
    """

    def __init__(self, n_steps: int, num_envs: int, obs_shape: tuple[int, ...],
                 obs_dtype: torch.dtype, n_actions: int, with_mask: bool, device: torch.device):
        T, N = n_steps, num_envs
        self.n_steps, self.num_envs, self.device = T, N, device
        self.obs = torch.zeros((T + 1, N, *obs_shape), dtype=obs_dtype, device=device)
        self.masks = (torch.ones((T + 1, N, n_actions), dtype=torch.bool, device=device)
                      if with_mask else None)
        self.actions = torch.zeros((T, N), dtype=torch.int64, device=device)
        # the policy's probabilities at each step; log_probs (of the taken actions) are
        # gathered from them once per rollout
        self.probs = torch.zeros((T, N, n_actions), dtype=torch.float32, device=device)
        self.log_probs = torch.zeros((T, N), dtype=torch.float32, device=device)
        self.values = torch.zeros((T + 1, N), dtype=torch.float32, device=device)
        # Env-side arrays stay in numpy: they arrive as numpy and GAE runs there.
        self.rewards = np.zeros((T, N), dtype=np.float32)
        self.terminated = np.zeros((T, N), dtype=bool)
        self.truncated = np.zeros((T, N), dtype=bool)
        self.valid = np.ones((T, N), dtype=bool)

    def roll_over(self) -> None:
        """Start the next rollout from the observation after the last step."""
        self.obs[0].copy_(self.obs[-1])
        if self.masks is not None:
            self.masks[0].copy_(self.masks[-1])

    def advantages_and_returns(self, gamma: float, gae_lambda: float) -> tuple[np.ndarray, np.ndarray]:
        """GAE advantages and value targets, (T, N) each; ``values[T]`` must hold V(obs[T])."""
        values = self.values.cpu().numpy()
        next_values = values[1:]
        advantages = compute_gae(self.rewards, values[:-1], next_values, self.terminated,
                                 self.truncated, self.valid, gamma, gae_lambda)
        return advantages, advantages + values[:-1]
