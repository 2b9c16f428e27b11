"""DistractorActions: the k extra actions must behave exactly as the base action they copy."""

import gymnasium as gym
import numpy as np
import pytest

from rl.wrappers import DistractorActions, DistractorActionsEnv


def _rollout_pair(wrapped, base, actions_wrapped, actions_base, seed):
    """Step two envs side by side from the same seed; return both trajectories."""
    out = []
    for env, actions in ((wrapped, actions_wrapped), (base, actions_base)):
        obs, _ = env.reset(seed=seed)
        traj = [obs]
        for a in actions:
            obs, reward, terminated, truncated, _ = env.step(a)
            traj.append((obs, reward, terminated, truncated))
        out.append(traj)
    return out


def _assert_same(traj_a, traj_b):
    np.testing.assert_array_equal(traj_a[0], traj_b[0])
    for step_a, step_b in zip(traj_a[1:], traj_b[1:], strict=True):
        for x, y in zip(step_a, step_b, strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("env_id,duplicate_of", [("CartPole-v1", None), ("Acrobot-v1", 1)])
@pytest.mark.parametrize("k", [1, 7, 100])
def test_single_env_distractors_act_as_base_action(env_id, duplicate_of, k):
    rng = np.random.default_rng()
    wrapped = DistractorActionsEnv(gym.make(env_id), k=k, duplicate_of=duplicate_of)
    base = gym.make(env_id)
    n = base.action_space.n
    assert wrapped.action_space == gym.spaces.Discrete(n + k)
    # Short enough that no episode ends (CartPole lasts >= ~8 steps, Acrobot 500).
    actions = rng.integers(0, n + k, size=6)
    actions[0] = n + k - 1  # always exercise a distractor
    expected = 0 if duplicate_of is None else duplicate_of
    base_actions = np.where(actions >= n, expected, actions)
    seed = int(rng.integers(1 << 30))
    _assert_same(*_rollout_pair(wrapped, base, actions, base_actions, seed))


@pytest.mark.parametrize("mode", ["vector_entry_point", "sync"])
def test_vector_env_distractors_act_as_base_action(mode):
    rng = np.random.default_rng()
    num_envs, k = 3, 5
    wrapped = DistractorActions(
        gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode=mode), k=k
    )
    base = gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode=mode)
    assert wrapped.single_action_space == gym.spaces.Discrete(2 + k)
    assert wrapped.action_space == gym.spaces.MultiDiscrete([2 + k] * num_envs)
    actions = [rng.integers(0, 2 + k, size=num_envs) for _ in range(6)]
    actions[0][:] = 2 + k - 1
    base_actions = [np.where(a >= 2, 0, a) for a in actions]
    seed = int(rng.integers(1 << 30))
    _assert_same(*_rollout_pair(wrapped, base, actions, base_actions, seed))


def test_distractors_change_the_dynamics_relative_to_other_actions():
    # The equivalence test above could pass with a no-op mapping if every action were
    # the same; check that mapping a distractor to 0 differs from mapping it to 1.
    seed = int(np.random.default_rng().integers(1 << 30))
    to0 = DistractorActionsEnv(gym.make("CartPole-v1"), k=2, duplicate_of=0)
    to1 = DistractorActionsEnv(gym.make("CartPole-v1"), k=2, duplicate_of=1)
    obs0, _ = to0.reset(seed=seed)
    obs1, _ = to1.reset(seed=seed)
    np.testing.assert_array_equal(obs0, obs1)
    obs0 = to0.step(3)[0]
    obs1 = to1.step(3)[0]
    assert not np.array_equal(obs0, obs1)


def test_zero_distractors_is_identity():
    env = DistractorActions(gym.make_vec("CartPole-v1", num_envs=2), k=0)
    assert env.single_action_space == gym.spaces.Discrete(2)


def test_discrete_start_is_respected():
    class Shifted(gym.ActionWrapper):
        def __init__(self, env):
            super().__init__(env)
            self.action_space = gym.spaces.Discrete(2, start=5)

        def action(self, action):
            return action - 5

    env = DistractorActionsEnv(Shifted(gym.make("CartPole-v1")), k=3)
    assert env.action_space == gym.spaces.Discrete(5, start=5)
    assert env.action(9) == 5 and env.action(6) == 6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(k=-1), "k must be"),
        (dict(k=2.5), "k must be"),
        (dict(k=True), "k must be"),
        (dict(k=3, duplicate_of=2), "duplicate_of"),
        (dict(k=3, duplicate_of=-1), "duplicate_of"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistractorActionsEnv(gym.make("CartPole-v1"), **kwargs)
    with pytest.raises(ValueError, match=match):
        DistractorActions(gym.make_vec("CartPole-v1", num_envs=2), **kwargs)


def test_non_discrete_space_is_refused():
    with pytest.raises(ValueError, match="Discrete action space.*Box"):
        DistractorActionsEnv(gym.make("Pendulum-v1"), k=3)
    with pytest.raises(ValueError, match="VectorEnv"):
        DistractorActions(gym.make("CartPole-v1"), k=3)


def test_out_of_range_actions_are_refused():
    env = DistractorActions(gym.make_vec("CartPole-v1", num_envs=2), k=3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="actions must be"):
        env.step(np.array([0, 5]))
    with pytest.raises(ValueError, match="actions must be"):
        env.step(np.array([0, 1, 2]))
    single = DistractorActionsEnv(gym.make("CartPole-v1"), k=3)
    single.reset(seed=0)
    with pytest.raises(ValueError, match="action must"):
        single.step(5)


def test_make_envs_applies_distractors_from_the_config():
    from rl.envs import make_envs

    k = int(np.random.default_rng().integers(1, 50))
    vec = make_envs({"id": "CartPole-v1", "distractor_actions": k}, num_envs=2, seed=0)
    try:
        assert vec.single_action_space == gym.spaces.Discrete(2 + k)
        assert isinstance(vec, DistractorActions) and vec.k == k
    finally:
        vec.close()
