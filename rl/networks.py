"""Actor-critic network: logits for the policy mapping and a state value.

The encoder is ``policy.network`` (`NETWORKS`), by default chosen from the observation space
(``auto``):

- ``mlp``: vectors (and anything flattened), Discrete observations one-hot encoded;
- ``minatar_cnn``: MinAtar's 10x10xC bool grids (Young & Tian 2019, "MinAtar: An Atari-inspired
  testbed"): one 3x3 convolution with 16 channels, stride 1, ReLU, flatten, one 128-unit
  layer, ReLU; picked for 3-D bool observations;
- ``nature_cnn``: uint8 images (``(C, H, W)`` or ``(H, W, C)``, e.g. Atari's 4x84x84 frame
  stack), the Nature-DQN CNN (Mnih et al. 2015) scaled by 1/255; picked for 3-D uint8
  observations.

Every network is built only from nn.Conv2d, nn.Linear, nn.Flatten and the `ACTIVATIONS`
inside the ``actor``/``critic``/``trunk`` Sequentials (rl.population batches K copies by walking
them); casting, scaling and layout are `_Preprocess`'s, which holds no parameters.
Initialization follows the PPO implementation details (Huang et al.
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

__all__ = ["ACTIVATIONS", "NETWORKS", "ActorCritic", "QNetwork", "layer_init", "resolve_network"]

# The hidden activations the MLPs implement; rl.config's schema accepts exactly these names.
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}

HIDDEN_GAIN = math.sqrt(2.0)
POLICY_GAIN = 0.01
VALUE_GAIN = 1.0
NATURE_CNN_FEATURES = 512
MINATAR_CONV_CHANNELS = 16  # Young & Tian 2019, section 4: 16 3x3 filters, stride 1
MINATAR_FEATURES = 128  # ... then a fully connected layer of 128 units

# The encoders policy.network names; rl.config's schema accepts exactly these.
NETWORKS = ("auto", "mlp", "minatar_cnn", "nature_cnn")


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


def _is_bool_grid(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.dtype == np.bool_ and len(space.shape) == 3


def resolve_network(network: str, space: gym.Space) -> str:
    """The encoder ``network`` (a `NETWORKS` name) means for ``space``: ``auto`` resolved.

    Raises ValueError naming ``policy.network`` when a CNN is asked for a space it cannot read
    (not a 3-D Box).
    """
    if network not in NETWORKS:
        raise ValueError(f"policy.network={network!r} is not allowed; allowed: {' | '.join(NETWORKS)}")
    if network == "auto":
        if _is_image(space):
            return "nature_cnn"
        return "minatar_cnn" if _is_bool_grid(space) else "mlp"
    if network != "mlp" and not (isinstance(space, gym.spaces.Box) and len(space.shape) == 3):
        raise ValueError(
            f"policy.network={network!r} is not allowed for observation_space {space}; allowed: "
            "a 3-D Box observation ((C, H, W) or (H, W, C)) for a CNN, else mlp or auto"
        )
    return network


class _Preprocess(nn.Module):
    """Observation tensor -> float features in the layout the encoder expects (no parameters).

    CNNs get ``(B, C, H, W)`` floats: channels-last input is permuted, uint8 pixels scaled by
    1/255, bool grids (MinAtar) cast to 0/1. The MLP gets the observation flattened (uint8
    pixels scaled the same way) or, for a Discrete space, one-hot encoded.
    """

    def __init__(self, space: gym.Space, network: str = "auto"):
        super().__init__()
        network = resolve_network(network, space)
        self.one_hot = space.n if isinstance(space, gym.spaces.Discrete) else 0
        self.start = int(space.start) if self.one_hot else 0
        self.image = network in ("nature_cnn", "minatar_cnn")
        # channels-last images (H, W, C): the channel axis is the short one
        self.channels_last = self.image and space.shape[-1] < space.shape[0]
        self.scale = 1.0 / 255.0 if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 else 1.0

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.one_hot:
            return nn.functional.one_hot(obs.long().reshape(-1) - self.start, self.one_hot).float()
        if self.image:
            x = obs.permute(0, 3, 1, 2) if self.channels_last else obs
            x = x.float()
        else:
            x = obs.float().flatten(1)
        return x * self.scale if self.scale != 1.0 else x


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


def _minatar_cnn(space: gym.spaces.Box, channels_last: bool) -> tuple[list[nn.Module], int]:
    """Young & Tian 2019's network body: conv 3x3/16/stride 1, ReLU, flatten, 128 units, ReLU."""
    shape = space.shape
    c, h, w = (shape[2], shape[0], shape[1]) if channels_last else shape
    if h < 3 or w < 3:
        raise ValueError(
            f"observation_space {space} is too small for policy.network='minatar_cnn' (height and "
            "width >= 3, the kernel size)"
        )
    n_flat = MINATAR_CONV_CHANNELS * (h - 2) * (w - 2)  # 3x3 kernel, stride 1, no padding
    return [
        layer_init(nn.Conv2d(c, MINATAR_CONV_CHANNELS, 3, stride=1), HIDDEN_GAIN), nn.ReLU(),
        nn.Flatten(),
        layer_init(nn.Linear(n_flat, MINATAR_FEATURES), HIDDEN_GAIN), nn.ReLU(),
    ], MINATAR_FEATURES


def _encoder(space: gym.Space, network: str, preprocess: _Preprocess, hidden_sizes: Sequence[int],
             activation: type[nn.Module]) -> tuple[list[nn.Module], int]:
    """The layers from preprocessed observations to features (the chosen CNN, if any, then the
    MLP of ``hidden_sizes``) and the feature width."""
    if network == "nature_cnn":
        encoder, width = _nature_cnn(space, preprocess.channels_last)
        layers = [*encoder]
    elif network == "minatar_cnn":
        layers, width = _minatar_cnn(space, preprocess.channels_last)
    else:
        width = preprocess.one_hot or int(np.prod(space.shape, dtype=np.int64))
        layers = []
    layers += _mlp(width, hidden_sizes, activation)
    return layers, (hidden_sizes[-1] if hidden_sizes else width)


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
        Hidden layer widths of the MLPs. With a CNN they add layers after its features (512
        Nature CNN, 128 MinAtar CNN; ``()``, as the Atari and MinAtar presets set, gives linear
        heads).
    activation:
        Hidden activation of the MLP layers: one of ``ACTIVATIONS``. The CNN uses ReLU.
    shared:
        One encoder/trunk for actor and critic (two heads) instead of two separate networks.
        Separate is the usual choice for small MLPs; sharing halves the cost of a CNN.
    network:
        The encoder: one of `NETWORKS`; ``auto`` picks it from the observation space (module
        docstring).

    ``hidden_sizes``, ``activation``, ``shared`` and ``network`` are the ``policy`` fields of the
    same names and are checked by the schema's rules (``rl.config.network_settings``).
    """

    def __init__(
        self,
        observation_space: gym.Space,
        n_actions: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        shared: bool = False,
        network: str = "auto",
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
        settings = network_settings(hidden_sizes, activation, shared, network)
        hidden_sizes, shared = settings.hidden_sizes, settings.shared
        self.observation_space = observation_space
        self.n_actions = int(n_actions)
        self.shared = shared
        self.network = resolve_network(settings.network, observation_space)
        self.preprocess = _Preprocess(observation_space, self.network)
        # float32 vectors (CartPole, LunarLander) go straight to the first layer: no extra call
        self._raw = (
            self.network == "mlp"
            and isinstance(observation_space, gym.spaces.Box)
            and len(observation_space.shape) == 1
            and observation_space.dtype == np.float32
        )
        act = ACTIVATIONS[settings.activation]

        def trunk() -> tuple[nn.Sequential, int]:
            layers, width = _encoder(observation_space, self.network, self.preprocess, hidden_sizes, act)
            return nn.Sequential(*layers), width

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


class QNetwork(nn.Module):
    """Action values ``Q(s, .)`` for every action at once (discrete SAC's critic, rl/sac.py).

    The same encoder as `ActorCritic`'s critic path (``policy.network``, ``hidden_sizes``,
    ``activation``), ending in a linear head of ``n_actions`` outputs initialized with the value
    head's gain. ``forward(obs)`` returns ``(B, n_actions)``.
    """

    def __init__(self, observation_space: gym.Space, n_actions: int, hidden_sizes: Sequence[int] = (64, 64),
                 activation: str = "tanh", network: str = "auto"):
        super().__init__()
        if isinstance(observation_space, gym.spaces.Dict) and "observation" in observation_space.spaces:
            observation_space = observation_space["observation"]
        if not isinstance(observation_space, (gym.spaces.Box, gym.spaces.Discrete)):
            raise ValueError(f"observation_space must be a Box or Discrete space; got {observation_space}")
        if not isinstance(n_actions, (int, np.integer)) or isinstance(n_actions, bool) or n_actions < 1:
            raise ValueError(f"n_actions={n_actions!r} is not allowed; allowed: an integer >= 1")
        settings = network_settings(hidden_sizes, activation, False, network)
        self.n_actions = int(n_actions)
        self.network = resolve_network(settings.network, observation_space)
        self.preprocess = _Preprocess(observation_space, self.network)
        layers, width = _encoder(observation_space, self.network, self.preprocess, settings.hidden_sizes,
                                 ACTIVATIONS[settings.activation])
        self.q = nn.Sequential(*layers, layer_init(nn.Linear(width, self.n_actions), VALUE_GAIN))
        self._plan = _plan(self.q)
        # float32 vectors go straight to the first layer (as ActorCritic's)
        self._raw = (self.network == "mlp" and isinstance(observation_space, gym.spaces.Box)
                     and len(observation_space.shape) == 1 and observation_space.dtype == np.float32)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return _run(self._plan, obs if self._raw else self.preprocess(obs))
