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

A population of K runs (``members=K``) keeps K such buffers side by side: member k owns the env
columns ``k N .. (k + 1) N - 1`` of ``obs[slot, column]`` (so one env step of the K x N envs is
one write), its own count of stored steps and transitions, and samples only its own columns with
its own generator: members never see each other's transitions. The slot of the newest
observation (``head``) is shared; a member's saved buffer is rotated onto it when loaded.

n-step targets (``algo.td_steps = n``): `ReplayBuffer.sample` with ``td_steps=n`` follows each
sampled transition along its env's stream for up to ``n`` steps, as far as the stream's next
entries are transitions (``valid``): it stops at the end of an episode (a terminated or
truncated step is followed by a reset-only one), at the newest observation, and where a resumed
member skipped a slot. For a chain of ``m <= n`` steps from slot ``t`` the batch holds the
discounted reward sum ``sum_{j<m} gamma^j r_{t+j}``, ``terminated`` of its last step, the
observation ``m`` slots on as ``next_obs``, ``gamma^m`` as ``discounts``, and the ``n - 1``
intermediate observations ``t + j`` (``mid_obs``, with their masks) weighted ``gamma^j`` for
``j < m`` and 0 beyond (``mid_weights``): the soft n-step target adds the policy's entropy bonus
at those states (rl/sac.py).

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
    # n-step batches (``td_steps > 1``) only; None for one-step ones, whose discount is gamma
    discounts: torch.Tensor | None = None  # float32 (B,): gamma^m, m the chain's steps
    mid_obs: torch.Tensor | None = None  # (B, n - 1, *obs_shape): the states t + 1 .. t + n - 1
    mid_masks: torch.Tensor | None = None  # bool (B, n - 1, A)
    mid_weights: torch.Tensor | None = None  # float32 (B, n - 1): gamma^j within the chain, else 0


def _storage_dtype(obs_dtype: torch.dtype) -> torch.dtype:
    return obs_dtype if obs_dtype in (torch.uint8, torch.bool) else torch.float32


def _slots(capacity: int, num_envs: int) -> int:
    # capacity transitions over N envs, plus one slot for the newest observation (no action yet)
    return math.ceil(capacity / num_envs) + 1


def replay_nbytes(capacity: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                  n_actions: int, has_mask: bool, members: int = 1) -> int:
    """Device bytes of a `ReplayBuffer` of these arguments (observations, masks, actions, rewards,
    flags; all ``members`` together), computed without allocating it."""
    cells = _slots(capacity, num_envs) * num_envs * members
    obs = cells * int(np.prod(obs_shape, dtype=np.int64)) * _storage_dtype(obs_dtype).itemsize
    mask = cells * n_actions if has_mask else 0
    return obs + mask + cells * (8 + 4 + 1)  # actions int64, rewards float32, terminated bool


class ReplayBuffer:
    """Ring of ``capacity`` transitions per member (its N envs together) on ``device``; see the
    module docstring. ``size``, ``num_transitions`` and ``started`` are per member, (K,) arrays."""

    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                 n_actions: int, has_mask: bool, device: torch.device, members: int = 1):
        L, N, K = _slots(capacity, num_envs), num_envs, members
        self.L, self.N, self.K, self.n_actions = L, N, K, n_actions
        C = K * N  # env columns, member k's are k N .. (k + 1) N - 1
        self.device = device
        self.obs = torch.zeros((L, C, *obs_shape), dtype=_storage_dtype(obs_dtype), device=device)
        self.masks = torch.ones((L, C, n_actions), dtype=torch.bool, device=device) if has_mask else None
        self.actions = torch.zeros((L, C), dtype=torch.int64, device=device)
        self.rewards = torch.zeros((L, C), dtype=torch.float32, device=device)
        self.terminated = torch.zeros((L, C), dtype=torch.bool, device=device)
        # On the CPU: sampling draws its indices there (one generator per member, reproducible on
        # any device).
        self.valid = np.zeros((L, C), dtype=bool)
        self.head = 0  # slot of the newest observation (every member's)
        self.size = np.zeros(K, dtype=np.int64)  # slots before head holding a stored step, <= L - 1
        self.num_transitions = np.zeros(K, dtype=np.int64)  # valid entries
        self.started = np.zeros(K, dtype=bool)  # the head slot holds an observation

    @property
    def nbytes(self) -> int:
        tensors = [self.obs, self.actions, self.rewards, self.terminated]
        if self.masks is not None:
            tensors.append(self.masks)
        return sum(t.numel() * t.element_size() for t in tensors)

    def _cols(self, k: int) -> slice:
        return slice(k * self.N, (k + 1) * self.N)

    def current(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The newest observations ``(K N, *obs_shape)`` and their masks (views)."""
        return self.obs[self.head], None if self.masks is None else self.masks[self.head]

    def _advance(self) -> None:
        self.head = (self.head + 1) % self.L
        # the new head overwrites the oldest stored step
        self.num_transitions -= self.valid[self.head].reshape(self.K, self.N).sum(1)
        self.valid[self.head] = False
        self.size = np.where(self.started, np.minimum(self.size + 1, self.L - 1), self.size)

    def start(self, obs: torch.Tensor, mask: torch.Tensor | None, members: np.ndarray | None = None) -> None:
        """Begins new episodes (after a reset that is no env step) for ``members`` ((K,) bool,
        default all): their newest slot is left without a transition and their part of ``obs``
        (``(K N, ...)``) goes into the next one. Members whose episodes go on keep theirs."""
        which = np.ones(self.K, dtype=bool) if members is None else np.asarray(members, dtype=bool)
        if bool((self.started & which).any()):
            previous = self.head
            self._advance()
            for k in np.flatnonzero(self.started & ~which):  # carried over, one slot skipped
                cols = self._cols(k)
                self.obs[self.head, cols] = self.obs[previous, cols]
                if self.masks is not None:
                    self.masks[self.head, cols] = self.masks[previous, cols]
        self.started |= which
        if bool(which.all()):
            self.obs[self.head].copy_(obs)
            if self.masks is not None and mask is not None:
                self.masks[self.head].copy_(mask)
            return
        for k in np.flatnonzero(which):
            cols = self._cols(k)
            self.obs[self.head, cols] = obs[cols]
            if self.masks is not None and mask is not None:
                self.masks[self.head, cols] = mask[cols]

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
        self.num_transitions += valid.reshape(self.K, self.N).sum(1)
        self._advance()
        self.obs[self.head].copy_(next_obs)
        if self.masks is not None and next_mask is not None:
            self.masks[self.head].copy_(next_mask)

    def sample(self, batch_size: int,
               generators: torch.Generator | list[torch.Generator | None],
               td_steps: int = 1, gamma: float = 1.0) -> ReplayBatch:
        """``batch_size`` transitions of each member drawn uniformly (with replacement) from its
        valid ones; rows member-major (member k's are rows ``k B .. (k + 1) B - 1``).
        ``td_steps > 1``: n-step chains from those transitions, discounted by ``gamma`` (module
        docstring); the draws are the same as with ``td_steps=1``.

        ``generators``: one CPU generator per member (a single one for one member); member k's
        indices come from its own: a slot among its ``size[k]`` stored ones and one of its envs,
        uniformly; draws that hit an invalid entry (a reset-only step) are redrawn. A member whose
        generator is None draws nothing: its rows repeat its newest entry (rows to be ignored).
        """
        gens = [generators] if isinstance(generators, torch.Generator) else list(generators)
        if len(gens) != self.K:
            raise ValueError(f"sample got {len(gens)} generators for {self.K} members")
        slots, cols = [], []
        for k, g in enumerate(gens):
            if g is None:
                slots.append(np.full(batch_size, self.head))
                cols.append(np.full(batch_size, k * self.N))
                continue
            if self.num_transitions[k] == 0:
                raise ValueError(f"member {k}'s replay buffer holds no transition yet; nothing to sample")
            have = 0
            while have < batch_size:
                n = 2 * (batch_size - have)
                back = torch.randint(int(self.size[k]), (n,), generator=g).numpy()
                env = torch.randint(self.N, (n,), generator=g).numpy() + k * self.N
                slot = (self.head - 1 - back) % self.L
                keep = self.valid[slot, env]
                slot, env = slot[keep][:batch_size - have], env[keep][:batch_size - have]
                slots.append(slot)
                cols.append(env)
                have += len(slot)
        if td_steps > 1:
            return self._chains(np.concatenate(slots), np.concatenate(cols), td_steps, gamma)
        t = torch.from_numpy(np.concatenate(slots)).to(self.device)
        e = torch.from_numpy(np.concatenate(cols)).to(self.device)
        t1 = (t + 1) % self.L
        return ReplayBatch(
            obs=self.obs[t, e], actions=self.actions[t, e], rewards=self.rewards[t, e],
            terminated=self.terminated[t, e], next_obs=self.obs[t1, e],
            masks=None if self.masks is None else self.masks[t, e],
            next_masks=None if self.masks is None else self.masks[t1, e])

    def _chains(self, slots: np.ndarray, cols: np.ndarray, n: int, gamma: float) -> ReplayBatch:
        """The n-step batch of the transitions at (``slots``, ``cols``) (module docstring)."""
        L = self.L
        offsets = np.arange(n)
        idx = (slots[:, None] + offsets) % L  # (B, n): slots t .. t + n - 1
        # step j is in the chain when steps 0 .. j all are transitions (step 0 is, by sampling)
        inside = np.logical_and.accumulate(self.valid[idx, cols[:, None]], axis=1)
        m = inside.sum(1)  # chain lengths, 1 .. n
        powers = gamma ** offsets.astype(np.float64)
        weights = np.where(inside, powers, 0.0)  # gamma^j on the chain's steps
        dev = self.device
        e = torch.from_numpy(cols).to(dev)
        ti = torch.from_numpy(idx).to(dev)
        rewards = (self.rewards[ti, e[:, None]].double()
                   * torch.from_numpy(weights).to(dev)).sum(1).float()
        last = torch.from_numpy((slots + m - 1) % L).to(dev)
        end = torch.from_numpy((slots + m) % L).to(dev)
        t = torch.from_numpy(slots).to(dev)
        # intermediate states t + j, 1 <= j < n; past the chain's end, its last state (weight 0)
        mid = torch.from_numpy((slots[:, None] + np.minimum(offsets[1:], m[:, None])) % L).to(dev)
        return ReplayBatch(
            obs=self.obs[t, e], actions=self.actions[t, e], rewards=rewards,
            terminated=self.terminated[last, e], next_obs=self.obs[end, e],
            masks=None if self.masks is None else self.masks[t, e],
            next_masks=None if self.masks is None else self.masks[end, e],
            discounts=torch.from_numpy(gamma ** m.astype(np.float64)).float().to(dev),
            mid_obs=self.obs[mid, e[:, None]],
            mid_masks=None if self.masks is None else self.masks[mid, e[:, None]],
            mid_weights=torch.from_numpy(weights[:, 1:]).float().to(dev))

    # ------------------------------------------------------------------ checkpoints
    def member_state_dict(self, k: int) -> dict[str, Any]:
        """Member k's buffer as a one-member buffer's `state_dict` (tensors on the CPU, plain
        numbers; readable by ``torch.load(weights_only=True)``)."""
        cols = self._cols(k)

        def host(t: torch.Tensor) -> torch.Tensor:
            # compact: torch.save writes a view's whole storage (all K members)
            return t[:, cols].cpu().contiguous()

        return {
            "obs": host(self.obs), "masks": None if self.masks is None else host(self.masks),
            "actions": host(self.actions), "rewards": host(self.rewards),
            "terminated": host(self.terminated),
            "valid": torch.from_numpy(self.valid[:, cols].copy()),
            "head": self.head, "size": int(self.size[k]), "num_transitions": int(self.num_transitions[k]),
            "started": bool(self.started[k]),
        }

    def load_member_state_dict(self, k: int, state: dict[str, Any]) -> None:
        """Restores member k from `member_state_dict`'s format, rotated so that its newest slot is
        the buffer's head (a buffer no member has started yet takes the saved head)."""
        cols = self._cols(k)
        want = (self.L, self.N, *self.obs.shape[2:])
        if tuple(state["obs"].shape) != want or state["obs"].dtype != self.obs.dtype:
            raise ValueError(
                f"the saved replay buffer holds observations {tuple(state['obs'].shape)} "
                f"{state['obs'].dtype}; this run's is {want} {self.obs.dtype} "
                "(algo.buffer_size and num_envs must be the checkpoint's)")
        if not self.started.any():
            self.head = int(state["head"])
        shift = (self.head - int(state["head"])) % self.L

        def put(dst: torch.Tensor, src: torch.Tensor) -> None:
            dst[:, cols] = (src if shift == 0 else torch.roll(src, shift, dims=0)).to(dst.device)

        put(self.obs, state["obs"])
        if self.masks is not None and state["masks"] is not None:
            put(self.masks, state["masks"])
        put(self.actions, state["actions"])
        put(self.rewards, state["rewards"])
        put(self.terminated, state["terminated"])
        self.valid[:, cols] = np.roll(state["valid"].numpy(), shift, axis=0)
        self.size[k] = int(state["size"])
        self.num_transitions[k] = int(state["num_transitions"])
        self.started[k] = bool(state["started"])

    def state_dict(self) -> dict[str, Any]:
        """A one-member buffer's contents (`member_state_dict` of its member)."""
        if self.K != 1:
            raise ValueError(f"state_dict of a buffer of {self.K} members: use member_state_dict(k)")
        return self.member_state_dict(0)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.K != 1:
            raise ValueError(f"load_state_dict of a buffer of {self.K} members: use load_member_state_dict")
        self.load_member_state_dict(0, state)
