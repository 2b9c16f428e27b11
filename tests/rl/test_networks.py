"""ActorCritic: shapes, encoder choice, orthogonal init gains, image scaling, bad arguments."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from rl.networks import ActorCritic


def _box(shape, dtype=np.float32):
    if dtype == np.uint8:
        return gym.spaces.Box(0, 255, shape, np.uint8)
    return gym.spaces.Box(-np.inf, np.inf, shape, dtype)


def _linears(module):
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _orthogonal_gain(weight):
    """The gain g of an orthogonal-init weight: W W^T = g^2 I (rows <= cols) or W^T W = g^2 I."""
    w = weight.detach().double()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    g2 = gram.diagonal().mean()
    torch.testing.assert_close(gram, g2 * torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)
    return math.sqrt(g2)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("hidden_sizes", [(64, 64), (32,), ()])
def test_vector_shapes_and_consistency(shared, hidden_sizes):
    torch.manual_seed(0)
    model = ActorCritic(_box((6,)), 3, hidden_sizes=hidden_sizes, shared=shared)
    obs = torch.randn(11, 6)
    logits, values = model(obs)
    assert logits.shape == (11, 3) and values.shape == (11,)
    torch.testing.assert_close(model.values(obs), values)
    torch.testing.assert_close(model.logits(obs), logits)
    # the 0.01 policy gain starts every mapping near the uniform policy
    assert logits.abs().max() < 0.2


def test_init_gains_and_zero_biases():
    torch.manual_seed(1)
    model = ActorCritic(_box((8,)), 4, hidden_sizes=(64, 32))
    actor, critic = _linears(model.actor), _linears(model.critic)
    for layer in actor + critic:
        assert torch.count_nonzero(layer.bias) == 0
    for layer in actor[:-1] + critic[:-1]:
        assert _orthogonal_gain(layer.weight) == pytest.approx(math.sqrt(2), rel=1e-4)
    assert _orthogonal_gain(actor[-1].weight) == pytest.approx(0.01, rel=1e-4)
    assert _orthogonal_gain(critic[-1].weight) == pytest.approx(1.0, rel=1e-4)


def test_separate_and_shared_parameter_sets():
    sep = ActorCritic(_box((4,)), 2, hidden_sizes=(64, 64), shared=False)
    shared = ActorCritic(_box((4,)), 2, hidden_sizes=(64, 64), shared=True)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    trunk = 4 * 64 + 64 + 64 * 64 + 64
    assert n(sep) == 2 * trunk + (64 * 2 + 2) + (64 + 1)
    assert n(shared) == trunk + (64 * 2 + 2) + (64 + 1)
    # separate nets: the value loss leaves the actor untouched
    sep.zero_grad()
    sep.values(torch.randn(5, 4)).sum().backward()
    assert all(p.grad is None for p in sep.actor.parameters())


def test_gradients_reach_every_parameter():
    torch.manual_seed(2)
    for shared in (False, True):
        model = ActorCritic(_box((5,)), 4, shared=shared)
        logits, values = model(torch.randn(9, 5))
        (logits.square().sum() + values.square().sum()).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


# Atari's frame stack, and a smaller image (>= 36 px) to keep the two-CNN case cheap
@pytest.mark.parametrize("shared,shape", [(True, (4, 84, 84)), (False, (2, 40, 52))])
def test_image_observations_use_the_nature_cnn(shared, shape):
    torch.manual_seed(3)
    model = ActorCritic(_box(shape, np.uint8), 6, hidden_sizes=(), shared=shared)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 64] * (1 if shared else 2)
    obs = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
    logits, values = model(obs)
    assert logits.shape == (3, 6) and values.shape == (3,)
    # the encoder scales by 1/255: feeding the scaled floats to the raw layers gives the same
    x = obs.float() / 255.0
    if shared:
        h = model.trunk(x)
        expected = model.actor(h), model.critic(h).squeeze(-1)
    else:
        expected = model.actor(x), model.critic(x).squeeze(-1)
    torch.testing.assert_close(logits, expected[0])
    torch.testing.assert_close(values, expected[1])


def test_channels_last_images_match_channels_first():
    torch.manual_seed(4)
    first = ActorCritic(_box((3, 40, 48), np.uint8), 5, hidden_sizes=(16,), shared=True)
    last = ActorCritic(_box((40, 48, 3), np.uint8), 5, hidden_sizes=(16,), shared=True)
    last.load_state_dict(first.state_dict())
    obs = torch.randint(0, 256, (2, 3, 40, 48), dtype=torch.uint8)
    torch.testing.assert_close(last(obs.permute(0, 2, 3, 1)), first(obs))


def test_discrete_observations_are_one_hot():
    torch.manual_seed(5)
    model = ActorCritic(gym.spaces.Discrete(7), 3, hidden_sizes=(8,))
    obs = torch.tensor([0, 6, 3])
    logits, values = model(obs)
    assert logits.shape == (3, 3) and values.shape == (3,)
    # one-hot input: the first layer's output is its weight column plus bias
    first = model.actor[0]
    torch.testing.assert_close(first(nn.functional.one_hot(obs, 7).float()), first.weight.T[obs] + first.bias)


def test_dict_space_with_mask_uses_the_observation():
    space = gym.spaces.Dict(
        {"observation": _box((3,)), "action_mask": gym.spaces.Box(0, 1, (4,), np.int8)}
    )
    model = ActorCritic(space, 4)
    logits, _ = model(torch.randn(2, 3))
    assert logits.shape == (2, 4)


def test_float64_and_matrix_observations_are_flattened_to_float32():
    model = ActorCritic(_box((2, 3), np.float64), 2)
    logits, values = model(torch.randn(4, 2, 3, dtype=torch.float64))
    assert logits.dtype == torch.float32 and logits.shape == (4, 2) and values.shape == (4,)


@pytest.mark.parametrize(
    "kwargs,culprit",
    [
        ({"activation": "sigmoid"}, "activation"),
        ({"n_actions": 0}, "n_actions"),
        ({"hidden_sizes": (64, 0)}, "hidden_sizes"),
        ({"shared": "yes"}, "shared"),
        ({"observation_space": gym.spaces.MultiBinary(3)}, "observation_space"),
        ({"observation_space": gym.spaces.Box(0, 255, (4, 20, 20), np.uint8)}, "too small"),
    ],
)
def test_bad_arguments(kwargs, culprit):
    args = {"observation_space": _box((4,)), "n_actions": 2, **kwargs}
    with pytest.raises(ValueError, match=culprit):
        ActorCritic(**args)


def test_minatar_grids_use_the_young_tian_network():
    # MinAtar Breakout: 10x10x4 bool, channels last
    space = gym.spaces.Box(0, 1, (10, 10, 4), np.bool_)
    torch.manual_seed(5)
    model = ActorCritic(space, 3, hidden_sizes=())
    assert model.network == "minatar_cnn"
    types = [type(m) for m in model.actor]
    assert types == [nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    conv, hidden = model.actor[0], model.actor[3]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (4, 16, (3, 3), (1, 1))
    assert (hidden.in_features, hidden.out_features) == (16 * 8 * 8, 128)
    obs = torch.rand(6, 10, 10, 4) > 0.7
    logits, values = model(obs)
    assert logits.shape == (6, 3) and values.shape == (6,)
    # bool -> 0/1 floats, channels first, no 1/255: the raw layers on that input agree
    x = obs.permute(0, 3, 1, 2).float()
    torch.testing.assert_close(logits, model.actor(x))
    torch.testing.assert_close(values, model.critic(x).squeeze(-1))
    assert not list(model.preprocess.parameters())


def test_network_choice_overrides_the_observation_default():
    grid = gym.spaces.Box(0, 1, (10, 10, 4), np.bool_)
    mlp = ActorCritic(grid, 3, hidden_sizes=(32,), network="mlp")
    assert mlp.network == "mlp" and mlp.actor[0].in_features == 400
    logits, _ = mlp(torch.ones(2, 10, 10, 4, dtype=torch.bool))
    assert logits.shape == (2, 3)
    small = ActorCritic(_box((4, 84, 84), np.uint8), 6, hidden_sizes=(), network="minatar_cnn", shared=True)
    assert small.trunk[3].in_features == 16 * 82 * 82
    with pytest.raises(ValueError, match="policy.network='nature_cnn'"):
        ActorCritic(_box((4,)), 2, network="nature_cnn")
    with pytest.raises(ValueError, match="policy.network='resnet'"):
        ActorCritic(_box((4,)), 2, network="resnet")


def test_existing_state_dict_names_are_unchanged():
    # checkpoints of the MLP and Nature CNN written before policy.network existed still load
    mlp = ActorCritic(_box((4,)), 2)
    assert sorted(mlp.state_dict()) == sorted(
        f"{path}.{i}.{p}" for path in ("actor", "critic") for i in (0, 2, 4) for p in ("weight", "bias"))
    cnn = ActorCritic(_box((4, 84, 84), np.uint8), 6, hidden_sizes=(), shared=True)
    assert sorted(cnn.state_dict()) == sorted(
        [f"trunk.{i}.{p}" for i in (0, 2, 4, 7) for p in ("weight", "bias")]
        + [f"{h}.{p}" for h in ("actor", "critic") for p in ("weight", "bias")])
