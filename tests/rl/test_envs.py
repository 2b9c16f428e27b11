"""make_envs: vectorization choice, next-step autoreset, episode statistics, errors, masks."""

import sys

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from rl_helpers import N_MASKED, MaskedEnv, registered

import rl.envs as envs
from rl.config import EnvSettings, env_settings
from rl.envs import action_mask_from, env_info, make_envs, policy_obs


@pytest.fixture
def masked_ids():
    """Ids of a `MaskedEnv` with the mask in the observation ("obs") and in the infos ("info");
    episodes of 7 steps that terminate."""
    with registered("entropy-rl-test/MaskedObs-v0", MaskedEnv,
                    kwargs={"where": "obs", "horizon": 7, "terminate": True}) as obs, \
            registered("entropy-rl-test/MaskedInfo-v0", MaskedEnv,
                       kwargs={"where": "info", "horizon": 7, "terminate": True}) as info:
        yield {"obs": obs, "info": info}


def _unwrapped_type(vec):
    while hasattr(vec, "env"):
        vec = vec.env
    return type(vec)


def _wrapper_types(vec):
    out = []
    while hasattr(vec, "env"):
        out.append(type(vec).__name__)
        vec = vec.env
    return out


def test_cartpole_uses_its_vector_entry_point():
    vec = make_envs({"id": "CartPole-v1"}, 4, seed=0)
    assert _unwrapped_type(vec).__name__ == "CartPoleVectorEnv"
    assert vec.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    info = env_info(vec)
    assert (info.obs_shape, info.n_actions, info.is_image, info.has_action_mask) == ((4,), 2, False, False)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (4, 4)
    vec.close()


@pytest.mark.parametrize(
    "cfg,cls",
    [
        ({"id": "Acrobot-v1"}, "SyncVectorEnv"),  # no vector entry point: auto falls back to sync
        ({"id": "CartPole-v1", "vectorization": "sync"}, "SyncVectorEnv"),
    ],
)
def test_sync_vectorization(cfg, cls):
    vec = make_envs(cfg, 3, seed=1)
    assert _unwrapped_type(vec).__name__ == cls
    assert vec.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, _ = vec.reset(seed=1)
    assert obs.shape == (3, *env_info(vec).obs_shape)
    vec.close()


@pytest.mark.parametrize("vectorization", ["vector_entry_point", "sync"])
def test_next_step_autoreset_and_episode_statistics(vectorization):
    """A time limit of 5: step 5 truncates, step 6 is the reset step (reward 0, not done)."""
    horizon = 5
    vec = make_envs(
        {"id": "CartPole-v1", "vectorization": vectorization, "max_episode_steps": horizon}, 2, seed=3
    )
    vec.reset(seed=3)
    # alternate pushes so the pole cannot fall within 5 steps
    actions = [np.array([t % 2, (t + 1) % 2]) for t in range(2 * horizon + 1)]
    dones, rewards, stats = [], [], []
    for a in actions:
        _, r, term, trunc, infos = vec.step(a)
        dones.append(term | trunc)
        rewards.append(r)
        stats.append(infos.get("_episode", np.zeros(2, bool)))
        if infos.get("_episode", np.zeros(2, bool)).any():
            np.testing.assert_array_equal(infos["episode"]["l"], [horizon, horizon])
            np.testing.assert_array_equal(infos["episode"]["r"], [horizon, horizon])
    dones = np.array(dones)
    assert dones[horizon - 1].all() and not dones[:horizon - 1].any()
    # the step after a done is the autoreset step: no reward, not done, a fresh episode
    assert not dones[horizon].any()
    np.testing.assert_array_equal(rewards[horizon], [0.0, 0.0])
    assert dones[2 * horizon].all()  # the next episode also has exactly `horizon` steps
    assert np.array(stats)[[horizon - 1, 2 * horizon]].all()
    vec.close()


def test_same_seed_same_trajectory():
    def run():
        vec = make_envs({"id": "Acrobot-v1"}, 2, seed=7)
        obs, _ = vec.reset(seed=7)
        traj = [obs]
        for _ in range(20):
            obs, *_ = vec.step(vec.action_space.sample())
            traj.append(obs)
        vec.close()
        return np.stack(traj)

    np.testing.assert_array_equal(run(), run())


def test_normalization_wrappers_and_distractors():
    vec = make_envs(
        {"id": "CartPole-v1", "normalize_obs": True, "normalize_reward": True, "distractor_actions": 3},
        2, seed=0, gamma=0.9,
    )
    names = _wrapper_types(vec)
    # statistics innermost (raw returns), distractors outermost
    assert names == [
        "DistractorActions", "NormalizeReward", "NormalizeObservation", "RecordEpisodeStatistics"
    ]
    assert env_info(vec).n_actions == 5
    assert vec.env.gamma == 0.9
    vec.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        obs, reward, *_ = vec.step(rng.integers(0, 5, size=2))
    assert np.isfinite(obs).all() and np.isfinite(reward).all()
    vec.close()


@pytest.mark.parametrize(
    "env_id,space",
    [
        ("Pendulum-v1", "Box(-2.0, 2.0, (1,), float32)"),
        ("MountainCarContinuous-v0", "Box(-1.0, 1.0, (1,), float32)"),
    ],
)
def test_continuous_action_space_is_refused(env_id, space):
    with pytest.raises(ValueError, match="Discrete") as err:
        make_envs({"id": env_id}, 2, seed=0)
    assert space in str(err.value) and env_id in str(err.value)


def test_unknown_id_suggests_close_matches():
    with pytest.raises(ValueError, match="not a registered") as err:
        make_envs({"id": "CartPol-v1"}, 2, seed=0)
    assert "'CartPole-v1'" in str(err.value)


def test_a_constructor_argument_the_env_lacks_is_one_value_error():
    """A misspelt env.kwargs key (CartPole takes sutton_barto_reward) names the key and the env."""
    with pytest.raises(ValueError, match=r"^env.kwargs=\{'sutton_barto_rewrd': True\} is not allowed for "
                                         r"CartPole-v1 \(.*'sutton_barto_rewrd'\); allowed: ") as err:
        make_envs({"id": "CartPole-v1", "kwargs": {"sutton_barto_rewrd": True}}, 2, seed=0)
    assert "\n" not in str(err.value)
    make_envs({"id": "CartPole-v1", "kwargs": {"sutton_barto_reward": True}}, 2, seed=0).close()


def test_missing_box2d_names_the_extra(monkeypatch):
    pytest.importorskip("Box2D")
    # make `import Box2D` fail and force gymnasium to re-import its box2d envs
    monkeypatch.setitem(sys.modules, "Box2D", None)
    for name in [m for m in sys.modules if m.startswith("gymnasium.envs.box2d")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ValueError, match=r"entropy-rl\[envs\]") as err:
        make_envs({"id": "LunarLander-v3"}, 1, seed=0)
    assert "LunarLander-v3" in str(err.value)


def test_missing_ale_py_names_the_extra(monkeypatch):
    real = envs.importlib.util.find_spec
    monkeypatch.setattr(
        envs.importlib.util, "find_spec", lambda name, *a: None if name == "ale_py" else real(name, *a)
    )
    # An earlier test may have registered the ALE ids already: hide them, as in a fresh process.
    registry = {k: v for k, v in envs.gym.registry.items() if not k.startswith("ALE/")}
    monkeypatch.setattr(envs.gym.envs.registration, "registry", registry)
    monkeypatch.setattr(envs.gym, "registry", registry)
    with pytest.raises(ValueError, match=r"entropy-rl\[envs\]"):
        make_envs({"id": "ALE/Pong-v5"}, 1, seed=0)


@pytest.mark.parametrize(
    "cfg,num_envs,culprit",
    [
        ({"id": "CartPole-v1", "vectorization": "threads"}, 2, "env.vectorization"),
        ({"id": "CartPole-v1", "distractor_actions": -1}, 2, "env.distractor_actions"),
        ({"id": "CartPole-v1", "max_episode_steps": 0}, 2, "env.max_episode_steps"),
        ({"id": ""}, 2, "env.id"),
        ({"id": "CartPole-v1", "normalize_obs": "yes"}, 2, "env.normalize_obs='yes'"),
        ({"id": "CartPole-v1", "kwargs": [1]}, 2, "env.kwargs"),
        ({"id": "CartPole-v1"}, 0, "num_envs"),
        ({"id": "Acrobot-v1", "vectorization": "vector_entry_point"}, 2, "vector entry"),
    ],
)
def test_bad_config_values(cfg, num_envs, culprit):
    """A node or dict from Python goes through the schema's checks (rl.config.env_settings)."""
    with pytest.raises(ValueError, match=culprit):
        make_envs(cfg, num_envs, seed=0)


def test_checked_settings_are_used_as_they_are():
    settings = env_settings({"id": "CartPole-v1", "max_episode_steps": 9, "solved_return": 475})
    assert settings == EnvSettings(id="CartPole-v1", max_episode_steps=9)
    assert env_settings(settings) is settings
    vec = make_envs(settings, 1, seed=0)
    vec.reset(seed=0)
    for t in range(9):
        _, _, term, trunc, _ = vec.step(np.array([t % 2]))
    assert trunc[0] and not term[0]
    vec.close()


@pytest.mark.parametrize("where", ["obs", "info"])
def test_action_mask_extraction(masked_ids, where):
    num_envs = 3
    vec = make_envs({"id": masked_ids[where]}, num_envs, seed=11)
    info = env_info(vec)
    assert info.has_action_mask and info.n_actions == N_MASKED and info.obs_shape == (3,)
    assert info.observation_space.shape == (3,)
    rng = np.random.default_rng(0)
    obs, infos = vec.reset(seed=11)
    for _ in range(20):  # crosses several autoresets (horizon 7)
        mask = action_mask_from(obs, infos)
        assert mask.dtype == bool and mask.shape == (num_envs, N_MASKED) and mask.any(axis=1).all()
        assert policy_obs(obs).shape == (num_envs, 3)
        # the env raises if any forbidden action is taken
        actions = np.array([rng.choice(np.flatnonzero(row)) for row in mask])
        obs, _, _, _, infos = vec.step(actions)
    vec.close()


def test_no_mask_means_none():
    vec = make_envs({"id": "CartPole-v1"}, 2, seed=0)
    obs, infos = vec.reset(seed=0)
    assert action_mask_from(obs, infos) is None
    assert policy_obs(obs) is obs
    vec.close()


def test_info_mask_rows_without_mask_allow_everything():
    mask = np.array([[True, False], [False, False]])
    out = action_mask_from(np.zeros((2, 3)), {"action_mask": mask, "_action_mask": np.array([True, False])})
    np.testing.assert_array_equal(out, [[True, False], [True, True]])


def test_distractors_with_a_mask_are_refused(masked_ids):
    with pytest.raises(ValueError, match="distractor_actions"):
        make_envs({"id": masked_ids["obs"], "distractor_actions": 2}, 2, seed=0)


def test_lunarlander_constructs():
    pytest.importorskip("Box2D")
    vec = make_envs({"id": "LunarLander-v3"}, 2, seed=0)
    info = env_info(vec)
    assert (info.obs_shape, info.n_actions) == ((8,), 4)
    vec.close()


def test_atari_pong_native_vector_env():
    pytest.importorskip("ale_py")
    vec = make_envs({"id": "ALE/Pong-v5", "atari": True, "frame_stack": 4}, 2, seed=0)
    assert _unwrapped_type(vec).__name__ == "AtariVectorEnv"
    # clipping sits outside the statistics, so logged returns are game scores
    assert _wrapper_types(vec) == ["ClipReward", "RecordEpisodeStatistics"]
    info = env_info(vec)
    assert info.is_image and info.obs_shape == (4, 84, 84) and info.n_actions == 6
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    obs, *_ = vec.step(vec.action_space.sample())
    assert obs.shape == (2, 4, 84, 84)
    with pytest.raises(ValueError, match="normalize_obs"):
        make_envs({"id": "ALE/Pong-v5", "atari": True, "normalize_obs": True}, 1, seed=0)
    vec.close()


def test_omegaconf_node_is_accepted():
    from omegaconf import OmegaConf

    node = OmegaConf.create({"id": "CartPole-v1", "kwargs": {}, "max_episode_steps": 9, "solved_return": 475})
    vec = make_envs(node, 1, seed=0)
    vec.reset(seed=0)
    for t in range(9):
        _, _, term, trunc, _ = vec.step(np.array([t % 2]))
    assert trunc[0] and not term[0]
    vec.close()


@pytest.mark.parametrize("game, n_actions", [("Asterix", 5), ("Breakout", 3), ("Freeway", 3),
                                             ("Seaquest", 6), ("SpaceInvaders", 4)])
def test_minatar_games_build_with_bool_grids(game, n_actions):
    pytest.importorskip("minatar", reason="minatar (extra minatar) provides the MinAtar ids")
    vec = make_envs({"id": f"MinAtar/{game}-v1"}, 2, seed=0)
    try:
        info = env_info(vec)
        assert info.n_actions == n_actions and not info.is_image
        assert info.obs_shape[:2] == (10, 10) and info.observation_space.dtype == np.bool_
        obs, _ = vec.reset(seed=0)
        assert obs.dtype == np.bool_ and obs.shape == (2, *info.obs_shape)
        vec.step(np.zeros(2, dtype=np.int64))
    finally:
        vec.close()


def test_missing_minatar_names_the_extra(monkeypatch):
    real = envs.importlib.util.find_spec
    monkeypatch.setattr(envs.importlib.util, "find_spec",
                        lambda name: None if name == "minatar" else real(name))
    monkeypatch.setattr(envs.gym, "registry", {k: v for k, v in envs.gym.registry.items()
                                                if not k.startswith("MinAtar/")})
    with pytest.raises(ValueError, match=r"entropy-rl\[minatar\]"):
        make_envs({"id": "MinAtar/Breakout-v1"}, 1, seed=0)
