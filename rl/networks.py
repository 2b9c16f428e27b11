"""Actor-critic network: logits for the policy mapping and a state value.

Vector observations go through MLPs, uint8 images (``(C, H, W)`` or ``(H, W, C)``, e.g.
Atari's 4x84x84 frame stack) through the Nature-DQN CNN (Mnih et al. 2015) scaled by
1/255, Discrete observations are one-hot encoded. The encoder is chosen from the
observation space. Initialization follows the PPO implementation details (Huang et al.
2022, "The 37 implementation details of PPO"): orthogonal weights with gain sqrt(2) in
hidden layers, 0.01 on the policy head (near-uniform initial policy, so every mapping
starts at high entropy), 1.0 on the value head, zero biases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rl.config import network_settings

__all__ = ["ACTIVATIONS", "ActorCritic", "layer_init"]

# The hidden activations the MLPs implement; rl.config's schema accepts exactly these names.
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}

HIDDEN_GAIN = math.sqrt(2.0)
POLICY_GAIN = 0.01
VALUE_GAIN = 1.0
NATURE_CNN_FEATURES = 512


# Functional forms of the layers an MLP path holds. Calling them directly instead of through
# nn.Module.__call__ (hooks, dispatch) saves a few microseconds per layer, which is much of a
# small network's forward at RL batch sizes (8 rows in a rollout step, 256 in a minibatch).
def _linear(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, m.weight, m.bias)


_FUNCTIONAL = {
    nn.Linear: _linear,
    nn.Tanh: lambda m, x: torch.tanh(x),
    nn.ReLU: lambda m, x: torch.relu(x),
    nn.ELU: lambda m, x: F.elu(x),
    nn.GELU: lambda m, x: F.gelu(x),
    nn.SiLU: lambda m, x: F.silu(x),
}


def _call_module(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x)


def _plan(layers: nn.Module) -> tuple[tuple, ...]:
    """``(function, module)`` pairs that run ``layers`` (a Sequential or a single layer)."""
    modules = list(layers) if isinstance(layers, nn.Sequential) else [layers]
    return tuple((_FUNCTIONAL.get(type(m), _call_module), m) for m in modules)


def _run(plan: tuple[tuple, ...], x: torch.Tensor) -> torch.Tensor:
    for fn, m in plan:
        x = fn(m, x)
    return x


def layer_init(layer: nn.Module, gain: float) -> nn.Module:
    """Orthogonal weight with ``gain``, zero bias; returns the layer."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _is_image(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


class _Preprocess(nn.Module):
    """Observation tensor -> float features in the layout the encoder expects."""

    def __init__(self, space: gym.Space):
        super().__init__()
        self.one_hot = space.n if isinstance(space, gym.spaces.Discrete) else 0
        self.start = int(space.start) if self.one_hot else 0
        self.image = _is_image(space)
        # channels-last images (H, W, C): the channel axis is the short one
        self.channels_last = self.image and space.shape[-1] < space.shape[0]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.one_hot:
            return nn.functional.one_hot(obs.long().reshape(-1) - self.start, self.one_hot).float()
        if self.image:
            x = obs.permute(0, 3, 1, 2) if self.channels_last else obs
            return x.float() * (1.0 / 255.0)
        return obs.float().flatten(1)


def _mlp(in_features: int, hidden_sizes: Sequence[int], activation: type[nn.Module]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [layer_init(nn.Linear(in_features, size), HIDDEN_GAIN), activation()]
        in_features = size
    return layers


def _nature_cnn(space: gym.spaces.Box, channels_last: bool) -> tuple[nn.Sequential, int]:
    shape = space.shape
    c, h, w = (shape[2], shape[0], shape[1]) if channels_last else shape
    if h < 36 or w < 36:
        raise ValueError(
            f"observation_space {space} is too small for the Nature CNN (height and width >= 36)"
        )
    conv = nn.Sequential(
        layer_init(nn.Conv2d(c, 32, 8, stride=4), HIDDEN_GAIN), nn.ReLU(),
        layer_init(nn.Conv2d(32, 64, 4, stride=2), HIDDEN_GAIN), nn.ReLU(),
        layer_init(nn.Conv2d(64, 64, 3, stride=1), HIDDEN_GAIN), nn.ReLU(),
        nn.Flatten(),
    )
    with torch.no_grad():
        n_flat = conv(torch.zeros(1, c, h, w)).shape[1]
    encoder = nn.Sequential(
        *conv, layer_init(nn.Linear(n_flat, NATURE_CNN_FEATURES), HIDDEN_GAIN), nn.ReLU()
    )
    return encoder, NATURE_CNN_FEATURES


class ActorCritic(nn.Module):
    """Policy logits and state values from one observation batch.

    Parameters
    ----------
    observation_space:
        Single-env observation space (``EnvInfo.observation_space``; a Dict
        ``{"observation", "action_mask"}`` space is reduced to its ``"observation"``).
    n_actions:
        Number of discrete actions (width of the logits).
    hidden_sizes:
        Hidden layer widths of the MLPs. With image observations they add layers after the
        512-unit CNN features (``()``, the default for Atari presets, gives linear heads).
    activation:
        Hidden activation of the MLP layers: one of ``ACTIVATIONS``. The CNN uses ReLU.
    shared:
        One encoder/trunk for actor and critic (two heads) instead of two separate networks.
        Separate is the usual choice for small MLPs; sharing halves the cost of a CNN.

    ``hidden_sizes``, ``activation`` and ``shared`` are the ``policy`` fields of the same names
    and are checked by the schema's rules (``rl.config.network_settings``).
    """

    def __init__(
        self,
        observation_space: gym.Space,
        n_actions: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        shared: bool = False,
    ):
        super().__init__()
        if isinstance(observation_space, gym.spaces.Dict) and "observation" in observation_space.spaces:
            observation_space = observation_space["observation"]
        if not isinstance(observation_space, (gym.spaces.Box, gym.spaces.Discrete)):
            raise ValueError(
                f"observation_space must be a Box or Discrete space; got {observation_space}"
            )
        if not isinstance(n_actions, (int, np.integer)) or isinstance(n_actions, bool) or n_actions < 1:
            raise ValueError(f"n_actions={n_actions!r} is not allowed; allowed: an integer >= 1")
        # The policy fields, checked by the schema's own rules (the one place they are checked).
        settings = network_settings(hidden_sizes, activation, shared)
        hidden_sizes, shared = settings.hidden_sizes, settings.shared
        self.observation_space = observation_space
        self.n_actions = int(n_actions)
        self.shared = shared
        self.preprocess = _Preprocess(observation_space)
        # float32 vectors (CartPole, LunarLander) go straight to the first layer: no extra call
        self._raw = (
            isinstance(observation_space, gym.spaces.Box)
            and len(observation_space.shape) == 1
            and observation_space.dtype == np.float32
        )
        act = ACTIVATIONS[settings.activation]

        def trunk() -> tuple[nn.Sequential, int]:
            if self.preprocess.image:
                encoder, width = _nature_cnn(observation_space, self.preprocess.channels_last)
                layers = [*encoder]
            else:
                width = self.preprocess.one_hot or int(np.prod(observation_space.shape, dtype=np.int64))
                layers = []
            layers += _mlp(width, hidden_sizes, act)
            return nn.Sequential(*layers), (hidden_sizes[-1] if hidden_sizes else width)

        actor_trunk, width = trunk()
        policy_head = layer_init(nn.Linear(width, self.n_actions), POLICY_GAIN)
        value_head = layer_init(nn.Linear(width, 1), VALUE_GAIN)
        if shared:
            self.trunk = actor_trunk
            self.actor, self.critic = policy_head, value_head
        else:
            critic_trunk, _ = trunk()
            # each path is one Sequential, so a forward is just its layers
            self.actor = nn.Sequential(*actor_trunk, policy_head)
            self.critic = nn.Sequential(*critic_trunk, value_head)
        # Plain tuples (not registered submodules): the same layers, run without Module calls.
        self._actor_plan, self._critic_plan = _plan(self.actor), _plan(self.critic)
        self._trunk_plan = _plan(self.trunk) if shared else ()

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, n_actions)`` and values ``(B,)`` for observations ``(B, *obs_shape)``."""
        x = obs if self._raw else self.preprocess(obs)
        if self.shared:
            h = _run(self._trunk_plan, x)
            return _run(self._actor_plan, h), _run(self._critic_plan, h).squeeze(-1)
        return _run(self._actor_plan, x), _run(self._critic_plan, x).squeeze(-1)

    def values(self, obs: torch.Tensor) -> torch.Tensor:
        """State values ``(B,)`` (skips the policy head; with separate nets, the whole actor)."""
        x = obs if self._raw else self.preprocess(obs)
        if self.shared:
            return _run(self._critic_plan, _run(self._trunk_plan, x)).squeeze(-1)
        return _run(self._critic_plan, x).squeeze(-1)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        """Policy logits ``(B, n_actions)`` (skips the value path)."""
        x = obs if self._raw else self.preprocess(obs)
        if self.shared:
            return _run(self._actor_plan, _run(self._trunk_plan, x))
        return _run(self._actor_plan, x)
