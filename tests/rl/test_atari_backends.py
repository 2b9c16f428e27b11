"""The three Atari paths (ale-py's vector env, single ale-py envs with AtariPreprocessing, EnvPool)
share their semantics: agent-step time limits (issue 17), raw episode returns with rewards clipped
for training, and they train. EnvPool is an optional extra; scripts/setup.sh --test installs it."""

import importlib.util

import numpy as np
import pytest
from rl_helpers import tiny, train

from rl.envs import make_envs

pytest.importorskip("ale_py", reason="ale-py (extra envs) provides the Atari ids and ROMs")
pytest.importorskip("cv2", reason="opencv (extra envs) is needed by the sync Atari path")

HAS_ENVPOOL = importlib.util.find_spec("envpool") is not None
PATHS = ["vector_entry_point", "sync",
         pytest.param("envpool", marks=pytest.mark.skipif(
             not HAS_ENVPOOL, reason="envpool is not importable here (pip install 'entropy-rl[envpool]')"))]


def _wrapper_types(vec):
    out = []
    while hasattr(vec, "env"):
        out.append(type(vec).__name__)
        vec = vec.env
    return out


@pytest.mark.parametrize("mode", PATHS)
def test_max_episode_steps_counts_agent_steps_on_every_path(mode):
    # Issue 17: the sync path passed the limit to the frameskip=1 ROM env, so it counted raw frames
    # and (with up to 30 no-op frames at reset) ended Pong episodes after ~5-12 agent steps.
    vec = make_envs({"id": "ALE/Pong-v5", "atari": True, "vectorization": mode, "max_episode_steps": 40},
                    2, seed=0)
    try:
        vec.reset(seed=0)
        for step in range(1, 41):
            _, _, terminated, truncated, infos = vec.step(np.zeros(2, dtype=np.int64))
            if step < 40:
                assert not (terminated | truncated).any(), (mode, step)
        assert truncated.all() and not terminated.any()
        assert list(infos["episode"]["l"]) == [40, 40]
    finally:
        vec.close()


def test_per_env_wrappers_take_the_sync_path_with_the_same_time_limit():
    seen = []

    def record(env):
        seen.append(env)
        return env

    for mode in ("auto", "envpool") if HAS_ENVPOOL else ("auto",):
        vec = make_envs({"id": "ALE/Pong-v5", "atari": True, "vectorization": mode, "max_episode_steps": 12},
                        1, seed=0, env_wrappers=[record])
        try:
            vec.reset(seed=0)
            lengths = [vec.step(np.zeros(1, dtype=np.int64))[4].get("episode", {}).get("l")
                       for _ in range(12)]
            assert lengths[-1] is not None and list(lengths[-1]) == [12]
        finally:
            vec.close()
    assert seen  # the wrappers were applied to single envs


@pytest.mark.parametrize("mode", PATHS)
def test_statistics_see_raw_rewards_and_training_sees_clipped_ones(mode):
    vec = make_envs({"id": "ALE/Breakout-v5", "atari": True, "vectorization": mode}, 2, seed=0)
    try:
        assert _wrapper_types(vec)[:2] == ["ClipReward", "RecordEpisodeStatistics"]
        obs, _ = vec.reset(seed=0)
        assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
        assert vec.single_action_space.n == 4  # the minimal action set on every path
    finally:
        vec.close()
    raw = make_envs({"id": "ALE/Breakout-v5", "atari": True, "vectorization": mode,
                     "kwargs": {"reward_clipping": False}}, 1, seed=0)
    try:
        assert "ClipReward" not in _wrapper_types(raw)
    finally:
        raw.close()


NO_ENVPOOL = "envpool is not importable here (pip install 'entropy-rl[envpool]')"


@pytest.mark.skipif(not HAS_ENVPOOL, reason=NO_ENVPOOL)
def test_envpool_trains_a_few_hundred_steps_and_reset_seeds_repeat(tmp_path):
    cfg = tiny("env=atari", "env.vectorization=envpool", "total_steps=256", "algo.n_steps=32",
               "algo.batch_size=32", "algo.update_epochs=1")
    trainer, summary = train(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 256
    net = trainer.member_network(0)
    assert type(net.preprocess).__name__ == "_Preprocess" and net.network == "nature_cnn"

    vec = make_envs({"id": "ALE/Breakout-v5", "atari": True, "vectorization": "envpool"}, 2, seed=5)
    try:
        runs = []
        for seed in (5, 5, 6):
            vec.reset(seed=seed)
            runs.append([vec.step(np.array([1, 3]))[0] for _ in range(30)][-1])
        assert np.array_equal(runs[0], runs[1])  # reset(seed=s) starts the same episodes again
        assert not np.array_equal(runs[0], runs[2])  # another seed, other episodes
    finally:
        vec.close()


def test_envpool_is_refused_for_non_atari_ids():
    with pytest.raises(ValueError, match="env.vectorization='envpool'"):
        make_envs({"id": "CartPole-v1", "vectorization": "envpool"}, 2, seed=0)
