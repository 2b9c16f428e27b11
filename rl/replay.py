"""The replay buffer of the off-policy trainer (rl/sac.py): per-env observation streams on the device.

Each of the N envs writes its observations into a ring of ``L`` slots, ``obs[slot, env]``; slot
``t`` also holds the action taken from that observation, the reward and ``terminated`` of the
step, and ``valid[t, env]``: whether the step from slot ``t`` to slot ``t + 1`` is a transition.
The next observation of a transition is the next slot's, so every observation is stored once
(SB3's ``optimize_memory_usage``) and the buffer needs no ``next_obs`` copy.

Gymnasium 1.x vector envs reset on the step *after* a done (``AutoresetMode.NEXT_STEP``, see
rl/rollout.py): the slot after a done holds the episode's final observation, and the step from
it only resets (its action is ignored, the next slot holds the reset observation). That step is
stored with ``valid = False``, so no sampled transition ever crosses a reset; a truncated episode's
last transition is an ordinary one (``terminated = False``: its target bootstraps).

Storage: observations keep the env's dtype when it is compact (uint8 images, bool MinAtar grids),
float32 otherwise; masks (when the env has them) as bool, one per slot, so the mask of the next
state comes with the next observation. `ReplayBuffer.nbytes` is the memory, computed before
anything is allocated; the trainer prints it and refuses a buffer above ``algo.max_buffer_gb``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["ReplayBuffer", "ReplayBatch", "replay_nbytes"]


@dataclass
class ReplayBatch:
    obs: torch.Tensor
    actions: torch.Tensor  # int64 (B,)
    rewards: torch.Tensor  # float32 (B,)
    terminated: torch.Tensor  # bool (B,)
    next_obs: torch.Tensor
    masks: torch.Tensor | None  # bool (B, A): allowed actions at obs
    next_masks: torch.Tensor | None  # ... at next_obs


def _storage_dtype(obs_dtype: torch.dtype) -> torch.dtype:
    return obs_dtype if obs_dtype in (torch.uint8, torch.bool) else torch.float32


def _slots(capacity: int, num_envs: int) -> int:
    # capacity transitions over N envs, plus one slot for the newest observation (no action yet)
    return math.ceil(capacity / num_envs) + 1


def replay_nbytes(capacity: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                  n_actions: int, has_mask: bool) -> int:
    """Device bytes of a `ReplayBuffer` of these arguments (observations, masks, actions, rewards,
    flags), computed without allocating it."""
    cells = _slots(capacity, num_envs) * num_envs
    obs = cells * int(np.prod(obs_shape, dtype=np.int64)) * _storage_dtype(obs_dtype).itemsize
    mask = cells * n_actions if has_mask else 0
    return obs + mask + cells * (8 + 4 + 1)  # actions int64, rewards float32, terminated bool


class ReplayBuffer:
    """Ring of ``capacity`` transitions (all envs together) on ``device``; see the module docstring."""

    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                 n_actions: int, has_mask: bool, device: torch.device):
        L, N = _slots(capacity, num_envs), num_envs
        self.L, self.N, self.n_actions = L, N, n_actions
        self.device = device
        self.obs = torch.zeros((L, N, *obs_shape), dtype=_storage_dtype(obs_dtype), device=device)
        self.masks = torch.ones((L, N, n_actions), dtype=torch.bool, device=device) if has_mask else None
        self.actions = torch.zeros((L, N), dtype=torch.int64, device=device)
        self.rewards = torch.zeros((L, N), dtype=torch.float32, device=device)
        self.terminated = torch.zeros((L, N), dtype=torch.bool, device=device)
        # On the CPU: sampling draws its indices there (one generator, reproducible on any device).
        self.valid = np.zeros((L, N), dtype=bool)
        self.head = 0  # slot of the newest observation
        self.size = 0  # slots before head holding a stored step (valid or not), at most L - 1
        self.num_transitions = 0  # valid entries
        self.started = False  # the head slot holds an observation

    @property
    def nbytes(self) -> int:
        tensors = [self.obs, self.actions, self.rewards, self.terminated]
        if self.masks is not None:
            tensors.append(self.masks)
        return sum(t.numel() * t.element_size() for t in tensors)

    def current(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The newest observations ``(N, *obs_shape)`` and their masks (views)."""
        return self.obs[self.head], None if self.masks is None else self.masks[self.head]

    def _advance(self) -> None:
        self.head = (self.head + 1) % self.L
        # the new head overwrites the oldest stored step
        self.num_transitions -= int(self.valid[self.head].sum())
        self.valid[self.head] = False

    def start(self, obs: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Begins new episodes (after a reset that is no env step): the newest slot is left without
        a transition and ``obs`` goes into the next one."""
        if self.started:
            self._advance()
            self.size = min(self.size + 1, self.L - 1)
        self.started = True
        self.obs[self.head].copy_(obs)
        if self.masks is not None and mask is not None:
            self.masks[self.head].copy_(mask)

    def add(self, actions: torch.Tensor, rewards: torch.Tensor, terminated: torch.Tensor,
            valid: np.ndarray, next_obs: torch.Tensor, next_mask: torch.Tensor | None) -> None:
        """One env step of every env: the action taken from the newest observation, its reward
        and ``terminated``, whether it is a transition (``valid``: False for the reset-only step
        after a done), and the observation (and mask) it led to."""
        h = self.head
        self.actions[h].copy_(actions)
        self.rewards[h].copy_(rewards)
        self.terminated[h].copy_(terminated)
        valid = np.asarray(valid, dtype=bool)
        self.valid[h] = valid
        self.num_transitions += int(valid.sum())
        self._advance()
        self.size = min(self.size + 1, self.L - 1)
        self.obs[self.head].copy_(next_obs)
        if self.masks is not None and next_mask is not None:
            self.masks[self.head].copy_(next_mask)

    def sample(self, batch_size: int, generator: torch.Generator) -> ReplayBatch:
        """``batch_size`` transitions drawn uniformly (with replacement) from the valid ones.

        Indices come from ``generator`` (a CPU generator): a slot among the ``size`` stored ones
        and an env, uniformly; draws that hit an invalid entry (a reset-only step) are redrawn.
        """
        if self.num_transitions == 0:
            raise ValueError("the replay buffer holds no transition yet; nothing to sample")
        chosen_t, chosen_e, have = [], [], 0
        while have < batch_size:
            n = 2 * (batch_size - have)
            back = torch.randint(self.size, (n,), generator=generator).numpy()
            env = torch.randint(self.N, (n,), generator=generator).numpy()
            slot = (self.head - 1 - back) % self.L
            keep = self.valid[slot, env]
            slot, env = slot[keep][:batch_size - have], env[keep][:batch_size - have]
            chosen_t.append(slot)
            chosen_e.append(env)
            have += len(slot)
        t = torch.from_numpy(np.concatenate(chosen_t)).to(self.device)
        e = torch.from_numpy(np.concatenate(chosen_e)).to(self.device)
        t1 = (t + 1) % self.L
        return ReplayBatch(
            obs=self.obs[t, e], actions=self.actions[t, e], rewards=self.rewards[t, e],
            terminated=self.terminated[t, e], next_obs=self.obs[t1, e],
            masks=None if self.masks is None else self.masks[t, e],
            next_masks=None if self.masks is None else self.masks[t1, e])

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Tensors on the CPU and plain numbers (readable by ``torch.load(weights_only=True)``)."""
        return {
            "obs": self.obs.cpu(), "masks": None if self.masks is None else self.masks.cpu(),
            "actions": self.actions.cpu(), "rewards": self.rewards.cpu(),
            "terminated": self.terminated.cpu(), "valid": torch.from_numpy(self.valid.copy()),
            "head": self.head, "size": self.size, "num_transitions": self.num_transitions,
            "started": self.started,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["obs"].shape) != tuple(self.obs.shape) or state["obs"].dtype != self.obs.dtype:
            raise ValueError(
                f"the saved replay buffer holds observations {tuple(state['obs'].shape)} "
                f"{state['obs'].dtype}; this run's is {tuple(self.obs.shape)} {self.obs.dtype} "
                "(algo.buffer_size and num_envs must be the checkpoint's)")
        self.obs.copy_(state["obs"])
        if self.masks is not None and state["masks"] is not None:
            self.masks.copy_(state["masks"])
        self.actions.copy_(state["actions"])
        self.rewards.copy_(state["rewards"])
        self.terminated.copy_(state["terminated"])
        self.valid[:] = state["valid"].numpy()
        self.head, self.size = int(state["head"]), int(state["size"])
        self.num_transitions = int(state["num_transitions"])
        self.started = bool(state["started"])
