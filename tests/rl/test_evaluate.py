"""rl-eval end to end on checkpoints built in the test (no trainer involved); its Hydra command line."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import rl.evaluate as evaluate_mod
from rl.checkpoint import CheckpointError
from rl.envs import make_envs
from rl.evaluate import _restore_obs_rms, evaluate, main
from rl.networks import ActorCritic

N_ACTIONS = 4
MASKED_ID = "entropy-rl-test/EvalMasked-v0"


class EvalMaskedEnv(gym.Env):
    """Reward 1 per step; one allowed action per step (random); a forbidden action raises."""

    observation_space = gym.spaces.Dict(
        {
            "observation": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "action_mask": gym.spaces.Box(0, 1, (N_ACTIONS,), np.int8),
        }
    )
    action_space = gym.spaces.Discrete(N_ACTIONS)

    def _obs(self):
        self.mask = np.zeros(N_ACTIONS, np.int8)
        self.mask[self.np_random.integers(N_ACTIONS)] = 1
        return {"observation": self.np_random.normal(size=2).astype(np.float32), "action_mask": self.mask}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        if not self.mask[int(action)]:
            raise RuntimeError(f"forbidden action {action}, mask {self.mask}")
        self.t += 1
        return self._obs(), 1.0, False, self.t >= 6, {}


@pytest.fixture
def masked_id():
    gym.register(MASKED_ID, entry_point=EvalMaskedEnv)
    yield MASKED_ID
    del gym.registry[MASKED_ID]


def _config(env, alpha=1.0, temperature=1.0, hidden_sizes=(16, 16), shared=False):
    """A resolved config as rl-train stores it (plain dict), reduced to what rl-eval reads."""
    return {
        "env": {"id": "CartPole-v1", "vectorization": "auto", "kwargs": {}, "normalize_obs": False,
                "normalize_reward": False, "distractor_actions": 0, "atari": False, "frame_stack": 1,
                "max_episode_steps": None, "solved_return": 475.0, **env},
        "policy": {"name": "p", "alpha": alpha, "temperature": temperature,
                   "hidden_sizes": list(hidden_sizes), "activation": "tanh", "shared": shared},
        "seed": 0,
    }


def _checkpoint(tmp_path, cfg, obs_space, n_actions, bias=None, extra=None, name="ckpt.pt"):
    torch.manual_seed(0)
    model = ActorCritic(obs_space, n_actions, hidden_sizes=cfg["policy"]["hidden_sizes"],
                        shared=cfg["policy"]["shared"])
    if bias is not None:  # steer the policy head: logits = bias (+ tiny features)
        head = model.actor if cfg["policy"]["shared"] else model.actor[-1]
        with torch.no_grad():
            head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    path = tmp_path / name
    torch.save({"config": cfg, "model": model.state_dict(), "global_step": 123, **(extra or {})}, path)
    return path


CARTPOLE_OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)


def test_always_left_policy_drops_the_pole_quickly(tmp_path):
    """A greedy policy that always pushes left falls within a few steps; returns = lengths."""
    path = _checkpoint(tmp_path, _config({}), CARTPOLE_OBS, 2, bias=[5.0, -5.0])
    out = evaluate(path, episodes=3, greedy=True, seed=1)
    assert len(out["returns"]) == 3
    assert all(5 <= r <= 15 for r in out["returns"])
    np.testing.assert_array_equal(out["returns"], out["lengths"])
    assert out["mean"] == pytest.approx(np.mean(out["returns"]))
    assert out["std"] == pytest.approx(np.std(out["returns"]))


def _controller_checkpoint(tmp_path):
    """A linear network holding the controller 'push right iff 3 theta + theta_dot > 0', in a run
    with a 100-step limit."""
    cfg = _config({"max_episode_steps": 100}, hidden_sizes=(), shared=True)
    path = tmp_path / "controller.pt"
    model = ActorCritic(CARTPOLE_OBS, 2, hidden_sizes=(), shared=True)
    with torch.no_grad():
        model.actor.weight.zero_()
        model.actor.bias.zero_()
        model.actor.weight[1] = torch.tensor([0.0, 0.0, 3.0, 1.0])
    torch.save({"config": cfg, "model": model.state_dict()}, path)
    return path


def test_greedy_plays_the_network_policy(tmp_path):
    """A linear network holding the controller 'push right iff 3 theta + theta_dot > 0'
    balances the pole for the whole 100-step limit; the always-left policy above cannot."""
    path = _controller_checkpoint(tmp_path)
    out = evaluate(path, episodes=3, greedy=True, seed=4)
    assert out["returns"] == [100.0, 100.0, 100.0]


def test_sampling_is_seeded_and_uses_the_run_alpha(tmp_path):
    cfg = _config({"max_episode_steps": 40}, alpha=2.0)
    path = _checkpoint(tmp_path, cfg, CARTPOLE_OBS, 2, bias=[0.3, -0.1])
    a = evaluate(path, episodes=4, greedy=False, seed=5)
    b = evaluate(path, episodes=4, greedy=False, seed=5)
    assert a["returns"] == b["returns"]
    assert all(1 <= r <= 40 for r in a["returns"])


def test_sampling_respects_the_temperature(tmp_path, monkeypatch):
    import ops

    seen = []
    real = ops.sample
    def spy(*a, **k):
        seen.append((k["alpha"], k["temperature"]))
        return real(*a, **k)

    monkeypatch.setattr(ops, "sample", spy)
    cfg = _config({"max_episode_steps": 5}, alpha=1.5, temperature=0.7)
    path = _checkpoint(tmp_path, cfg, CARTPOLE_OBS, 2, extra={"temperature": 0.25})
    evaluate(path, episodes=1, greedy=False, seed=0)
    # a scheduled temperature saved in the checkpoint wins over the config's start value
    assert seen and set(seen) == {(1.5, 0.25)}


@pytest.mark.parametrize("greedy", [True, False])
def test_masked_actions_are_never_taken(tmp_path, masked_id, greedy):
    obs_space = EvalMaskedEnv.observation_space
    # the policy strongly prefers action 0, which is forbidden 3 steps in 4
    path = _checkpoint(tmp_path, _config({"id": masked_id}), obs_space, N_ACTIONS, bias=[8.0, 0.0, 0.0, 0.0])
    out = evaluate(path, episodes=3, greedy=greedy, seed=2)
    assert out["returns"] == [6.0, 6.0, 6.0]


def test_distractor_actions_are_rebuilt(tmp_path):
    cfg = _config({"distractor_actions": 3, "max_episode_steps": 10})
    path = _checkpoint(tmp_path, cfg, CARTPOLE_OBS, 5)
    out = evaluate(path, episodes=2, greedy=False, seed=0)
    assert len(out["returns"]) == 2


def test_normalization_statistics_are_restored_and_frozen(tmp_path):
    rng = np.random.default_rng(0)
    mean, var = rng.normal(size=4), rng.uniform(0.5, 2.0, size=4)
    state = {"obs_rms": {"mean": torch.tensor(mean), "var": torch.tensor(var), "count": 1000.0}}
    vec = make_envs({"id": "CartPole-v1", "normalize_obs": True}, 1, seed=0)
    _restore_obs_rms(vec, {"obs_normalization": state})
    raw = make_envs({"id": "CartPole-v1"}, 1, seed=0)
    obs, _ = vec.reset(seed=0)
    raw_obs, _ = raw.reset(seed=0)
    for _ in range(5):
        a = np.array([rng.integers(2)])
        obs, *_ = vec.step(a)
        raw_obs, *_ = raw.step(a)
    np.testing.assert_allclose(obs, (raw_obs - mean) / np.sqrt(var + 1e-8), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(vec.obs_rms.mean, mean)
    vec.close()
    raw.close()


def test_reads_the_trainer_checkpoint_layout(tmp_path, monkeypatch):
    """rl/checkpoint.py's file (format key, obs_normalization, temperature_schedule) loads."""
    import ops
    from rl.checkpoint import save_checkpoint

    seen = []
    real = ops.sample

    def spy(*a, **k):
        seen.append(k["temperature"])
        return real(*a, **k)

    monkeypatch.setattr(ops, "sample", spy)
    cfg = _config({"normalize_obs": True, "max_episode_steps": 8}, temperature=2.0)
    torch.manual_seed(0)
    model = ActorCritic(CARTPOLE_OBS, 2, hidden_sizes=(16, 16))
    rms = {"mean": torch.randn(4, dtype=torch.float64), "var": torch.rand(4, dtype=torch.float64) + 0.5,
           "count": torch.tensor(50.0, dtype=torch.float64)}
    path = save_checkpoint(tmp_path / "run.pt", {
        "config": cfg, "model": model.state_dict(),
        "temperature_schedule": {"name": "temperature", "kind": "linear", "value": 0.5},
        "obs_normalization": {"obs_rms": rms},
    })
    out = evaluate(path, episodes=2, greedy=False, seed=0)
    assert len(out["returns"]) == 2 and all(r <= 8 for r in out["returns"])
    assert set(seen) == {0.5}


def test_checkpoint_with_the_wrong_network_is_refused(tmp_path):
    path = _checkpoint(tmp_path, _config({}), CARTPOLE_OBS, 3)  # CartPole has 2 actions
    with pytest.raises(ValueError, match="does not match"):
        evaluate(path, episodes=1)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.randn(3)}, path)
    with pytest.raises(ValueError, match="lacks"):
        evaluate(path, episodes=1)
    with pytest.raises(ValueError, match="is not a file"):
        evaluate(tmp_path / "missing.pt", episodes=1)


def test_cli_prints_mean_and_std(tmp_path, capsys):
    path = _checkpoint(tmp_path, _config({"max_episode_steps": 20}), CARTPOLE_OBS, 2)
    assert main([f"checkpoint={path}", "episodes=2", "greedy=false", "seed=3", "device=cpu"]) == 0
    out = capsys.readouterr().out
    assert "2 sampled episodes: return" in out and "+-" in out


@pytest.mark.parametrize(
    "args,culprit",
    [
        (["episodes=3"], "rl-eval: error: checkpoint=PATH is required (a checkpoint file written by "
                         "rl-train)"),
        (["episodes=0"], "rl-eval: error: episodes=0 is not allowed; allowed: an integer >= 1"),
        (["seed=-1"], "rl-eval: error: seed=-1 is not allowed; allowed: an integer >= 0"),
        (["device=tpu"], "rl-eval: error: device='tpu' is not allowed; allowed: auto | cpu | cuda | cuda:N"),
    ],
)
def test_bad_values_print_one_line_and_exit_2(tmp_path, capsys, args, culprit):
    path = _checkpoint(tmp_path, _config({}), CARTPOLE_OBS, 2)
    argv = args if args[0].startswith("episodes=3") else [f"checkpoint={path}", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == culprit


@pytest.mark.parametrize(
    "arg,culprit",
    [("episode=3", "Key 'episode' not in 'EvalConfig'"), ("greedy=maybe", "'maybe' is not a valid bool"),
     ("seed=x", "could not be converted to Integer")],
)
def test_options_are_hydra_overrides_checked_by_the_schema(tmp_path, capsys, arg, culprit):
    """The same override syntax and type errors as rl-train (Hydra's, without a traceback)."""
    path = _checkpoint(tmp_path, _config({}), CARTPOLE_OBS, 2)
    assert main([f"checkpoint={path}", arg]) == 1
    err = capsys.readouterr().err
    assert culprit in err and "Traceback" not in err


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    assert main([f"checkpoint={tmp_path / 'missing.pt'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rl-eval: error: checkpoint={str(tmp_path / 'missing.pt')!r} is not a file")
    assert err.count("\n") == 1
    with pytest.raises(ValueError, match="device='tpu'"):
        evaluate(tmp_path / "missing.pt", device="tpu")


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_unreadable_checkpoint_names_the_file(tmp_path, capsys, damage):
    good = _checkpoint(tmp_path, _config({}), CARTPOLE_OBS, 2)
    path = tmp_path / f"{damage}.pt"
    if damage == "truncated":
        path.write_bytes(good.read_bytes()[:200])
    else:
        path.write_text("{}")
    with pytest.raises(CheckpointError, match="truncated, corrupt or another format"):
        evaluate(path, episodes=1)
    assert main([f"checkpoint={path}", "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rl-eval: error: checkpoint={str(path)!r} is not a readable entropy-rl checkpoint")
    assert "rl-train" in err and err.count("\n") == 1 and "Traceback" not in err


def test_help_lists_the_options(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for key in ("checkpoint: ???", "episodes: 10", "greedy: true", "seed: 0", "video: null", "device: auto"):
        assert key in out


def test_cli_writes_nothing(tmp_path, capsys, monkeypatch):
    path = _checkpoint(tmp_path, _config({"max_episode_steps": 5}), CARTPOLE_OBS, 2)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main([f"checkpoint={path}", "episodes=1", "device=cpu"]) == 0
    assert list(work.iterdir()) == []


def test_video_without_moviepy_names_the_extra(tmp_path, monkeypatch):
    path = _checkpoint(tmp_path, _config({}), CARTPOLE_OBS, 2)
    real = evaluate_mod.importlib.util.find_spec
    monkeypatch.setattr(
        evaluate_mod.importlib.util, "find_spec", lambda n, *a: None if n == "moviepy" else real(n, *a)
    )
    with pytest.raises(ValueError, match=r"entropy-rl\[video\]"):
        evaluate(path, episodes=1, video=tmp_path / "videos")


def test_max_episode_steps_replaces_the_run_time_limit(tmp_path):
    """The controller balances the pole through its run's 100-step limit; a 30-step limit ends
    (truncates) every episode at 30, and the run's limit is what plays without the option."""
    path = _controller_checkpoint(tmp_path)
    assert evaluate(path, episodes=2, seed=4, max_episode_steps=30)["lengths"] == [30, 30]
    assert evaluate(path, episodes=2, seed=4)["lengths"] == [100, 100]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"max_episode_steps={bad!r} is not allowed"):
            evaluate(path, episodes=1, max_episode_steps=bad)


def test_env_kwargs_reach_the_env_over_the_run_kwargs(tmp_path, capsys):
    """CartPole's Sutton-Barto reward (0 per step, -1 at the fall) turns the always-left
    policy's returns from its episode lengths into -1, through the API and the command line."""
    path = _checkpoint(tmp_path, _config({}), CARTPOLE_OBS, 2, bias=[5.0, -5.0])
    plain = evaluate(path, episodes=2, seed=1)
    assert plain["returns"] == [float(n) for n in plain["lengths"]] and plain["mean"] > 1
    sb = evaluate(path, episodes=2, seed=1, env_kwargs={"sutton_barto_reward": True})
    assert sb["returns"] == [-1.0, -1.0] and sb["lengths"] == plain["lengths"]
    assert main([f"checkpoint={path}", "episodes=2", "seed=1", "device=cpu",
                 "+env_kwargs.sutton_barto_reward=true"]) == 0
    assert "2 greedy episodes: return -1.00 +- 0.00" in capsys.readouterr().out
    with pytest.raises(ValueError, match="env_kwargs=3 is not allowed"):
        evaluate(path, episodes=1, env_kwargs=3)
    # a key the env does not take: one line, exit 2, no traceback
    assert main([f"checkpoint={path}", "episodes=1", "device=cpu", "+env_kwargs.sutton_barto=true"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rl-eval: error: env.kwargs={'sutton_barto': True} is not allowed for CartPole-v1")
    assert err.count("\n") == 1 and "Traceback" not in err
