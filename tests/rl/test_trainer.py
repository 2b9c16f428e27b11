"""rl/trainer.py end to end on CPU: learning, logging, summary, determinism, checkpoints and
resume, signals, masks, divergence and bad-input errors.

Runs are tiny (one-layer networks, 2 envs, a few hundred steps) except the two learning runs
(CartPole, PPO and A2C, a few thousand steps each), which also feed the TensorBoard and
summary tests.
"""

import json
import math
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from rl_helpers import MaskedEnv, assert_same, compose, registered, scalars, tiny

import ops
from rl.callbacks import Callback
from rl.checkpoint import env_snapshot_path, load_checkpoint
from rl.logging import TAGS
from rl.networks import ActorCritic
from rl.trainer import CHECKPOINT_NAME, SUMMARY_NAME, Trainer, TrainingDiverged


class Episodes(Callback):
    """Records every finished episode's return, in finishing order (the on_episode_end hook)."""

    def __init__(self):
        self.returns = []

    def on_episode_end(self, trainer, member, episode_return, length, step):
        self.returns.append(episode_return)


class AtUpdate(Callback):
    """Calls ``action(trainer)`` once, after update ``n`` (the on_update_end hook)."""

    def __init__(self, n, action):
        self.n, self.action = n, action

    def on_update_end(self, trainer, metrics):
        if trainer.members[0].update == self.n:
            self.action(trainer)


def _run(cfg, run_dir, **kwargs):
    """Trains to the end; returns (trainer, summary, per-episode returns in finishing order)."""
    episodes = Episodes()
    trainer = Trainer(cfg, run_dir, callbacks=[episodes, *kwargs.pop("callbacks", [])], **kwargs)
    returns = episodes.returns
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    return trainer, summary, returns


# ---------------------------------------------------------------- learning, logging, summary

LEARNING = {
    # algo: (total_steps, overrides); seed 0. Over seeds 0-7 at these budgets every run at least
    # doubled its return (first 10 episodes ~15-20, last 10 episodes 35-210).
    "ppo": (8000, ("beta=0.01", "histogram_interval=5")),
    "a2c": (10000, ("histogram_interval=50",)),
}
SUMMARY_KEYS = {
    "status", "env", "algo", "policy", "alpha", "beta", "seed", "steps", "updates", "episodes",
    "final_mean_return", "best_mean_return", "return_window", "solved_return", "solved_at_step",
    "solved_at_seconds", "wall_time_s", "sps", "device", "population_size", "eval_return_greedy",
    "eval_return_sampled", "eval_step",
}


@pytest.fixture(scope="module", params=sorted(LEARNING))
def learned(request, tmp_path_factory):
    algo = request.param
    steps, overrides = LEARNING[algo]
    cfg = compose(f"algo={algo}", f"total_steps={steps}", "seed=0", "device=cpu", "progress=false",
                   "policy.hidden_sizes=[32,32]", "checkpoint_interval=0", *overrides)
    run_dir = tmp_path_factory.mktemp(f"learn_{algo}")
    trainer, summary, returns = _run(cfg, run_dir)
    return algo, run_dir, summary, returns, trainer


def test_short_training_clearly_improves_the_return(learned):
    algo, _, summary, returns, _ = learned
    assert summary["status"] == "completed" and len(returns) >= 40
    first, last = float(np.mean(returns[:10])), float(np.mean(returns[-10:]))
    assert last >= 2.0 * first and last >= first + 30.0, (algo, first, last)


def test_summary_json(learned):
    algo, run_dir, summary, returns, trainer = learned
    written = json.loads((run_dir / SUMMARY_NAME).read_text())
    assert set(written) == SUMMARY_KEYS
    steps = LEARNING[algo][0]
    n_steps = trainer.cfg.algo.n_steps * trainer.cfg.num_envs
    assert written["status"] == "completed" and written["algo"] == algo and written["env"] == "CartPole-v1"
    assert written["steps"] == math.ceil(steps / n_steps) * n_steps and written["steps"] >= steps
    assert written["updates"] == written["steps"] // n_steps
    assert written["episodes"] == len(returns)
    assert written["final_mean_return"] == pytest.approx(np.mean(returns[-100:]))
    if len(returns) >= 100:  # best over full windows of 100 episodes
        best = max(np.mean(returns[i - 100:i]) for i in range(100, len(returns) + 1))
        assert written["best_mean_return"] == pytest.approx(best)
    else:
        assert written["best_mean_return"] is None
    assert written["return_window"] == 100 and written["solved_return"] == 475.0
    assert written["solved_at_step"] is None  # far from solved after a few thousand steps
    assert written["policy"] == "softmax" and written["alpha"] == 1.0 and written["seed"] == 0
    assert written["device"] == "cpu" and written["wall_time_s"] > 0 and written["sps"] > 0
    assert written == json.loads(json.dumps(summary))  # the file is the returned summary


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


ISSUE_TAGS = (
    "charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate",
    "losses/policy", "losses/value", "losses/total", "entropy/mean", "entropy/min", "entropy/max",
    "policy/support_size", "policy/beta", "grad_norm/policy", "grad_norm/entropy", "grad_norm/value",
    "grad_norm/total", "ppo/approx_kl", "ppo/clip_fraction", "value/explained_variance",
)


def test_tensorboard_tags(learned):
    algo, run_dir, summary, returns, trainer = learned
    acc = _events(run_dir)
    scalars = set(acc.Tags()["scalars"])
    expected = set(ISSUE_TAGS) if algo == "ppo" else {t for t in ISSUE_TAGS if not t.startswith("ppo/")}
    assert set(ISSUE_TAGS) <= set(TAGS)
    assert expected <= scalars, expected - scalars
    assert scalars <= set(TAGS)
    if algo == "a2c":
        assert not {t for t in scalars if t.startswith("ppo/")}
    assert "entropy/histogram" in acc.Tags()["histograms"]

    def values(tag):
        return [e.value for e in acc.Scalars(tag)], [e.step for e in acc.Scalars(tag)]

    updates = summary["updates"]
    v, steps = values("losses/total")
    assert len(v) == updates and steps[-1] == summary["steps"] and steps == sorted(steps)
    v, _ = values("charts/episodic_return")
    assert max(v) > 2 * min(v)  # the curve rises
    n_actions = 2
    h_mean, h_min, h_max = values("entropy/mean")[0], values("entropy/min")[0], values("entropy/max")[0]
    tol = 1e-6  # float32 rounding when every row sits at the maximum entropy
    assert all(lo - tol <= m <= hi + tol and hi <= math.log(n_actions) + tol
               for lo, m, hi in zip(h_min, h_mean, h_max, strict=True))
    assert all(s == n_actions for s in values("policy/support_size")[0])  # softmax: full support
    beta = float(trainer.cfg.beta)
    assert values("policy/beta")[0] == pytest.approx([beta] * updates)
    grad_entropy = values("grad_norm/entropy")[0]
    assert all(g > 0 for g in grad_entropy) if beta > 0 else all(g == 0 for g in grad_entropy)
    assert all(g > 0 for g in values("grad_norm/policy")[0] + values("grad_norm/value")[0])
    lr = values("charts/learning_rate")[0]
    if trainer.cfg.algo.anneal_lr:
        assert lr == sorted(lr, reverse=True) and lr[-1] < lr[0]
    else:
        assert lr == pytest.approx([trainer.cfg.algo.learning_rate] * updates)
    if algo == "ppo":
        assert all(k >= -1e-6 for k in values("ppo/approx_kl")[0])  # >= 0 up to float32 rounding
        assert all(0 <= c <= 1 for c in values("ppo/clip_fraction")[0])
        assert max(values("ppo/clip_fraction")[0]) > 0
    histograms = acc.Histograms("entropy/histogram")
    interval = trainer.cfg.histogram_interval
    assert len(histograms) == updates // interval
    assert all(0 <= h.histogram_value.min <= h.histogram_value.max <= math.log(2) + 1e-6 for h in histograms)


def test_same_config_and_seed_give_identical_runs(tmp_path):
    cfg = tiny("total_steps=320", "beta=0.02")
    a, summary_a, returns_a = _run(cfg, tmp_path / "a")
    b, summary_b, returns_b = _run(cfg, tmp_path / "b")
    assert len(returns_a) > 5 and returns_a == returns_b
    assert_same(a.net.member_state_dict(0), b.net.member_state_dict(0))
    for key in ("final_mean_return", "steps", "episodes", "updates"):
        assert summary_a[key] == summary_b[key]
    c, _, returns_c = _run(tiny("total_steps=320", "beta=0.02", "seed=1"), tmp_path / "c")
    assert returns_c != returns_a  # the seed matters


# ---------------------------------------------------------------- checkpoints and resume


def _resume_cfg(algo, *extra):
    return tiny("total_steps=320", "beta=0.05", "beta_schedule.kind=linear", "beta_schedule.end=0.0",
                 "algo.anneal_lr=true", "exact_env_resume=true", *extra, algo=algo)


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_resume_is_exact_with_exact_env_resume(tmp_path, algo):
    """train N + M == train N, checkpoint, resume, train M (CPU, bitwise)."""
    cfg = _resume_cfg(algo)
    full, summary_full, returns_full = _run(cfg, tmp_path / "full")

    first = Trainer(cfg, tmp_path / "split")
    try:
        summary = first.train(stop_at_step=160)
    finally:
        first.close()
    ckpt = tmp_path / "split" / CHECKPOINT_NAME
    assert summary["status"] == "interrupted" and summary["steps"] == 160
    assert ckpt.is_file() and env_snapshot_path(ckpt).is_file()
    saved = load_checkpoint(ckpt)
    assert saved["global_step"] == 160 and saved["update"] == 160 // (16 * 2)

    second, summary_split, returns_tail = _run(cfg, tmp_path / "split", resume=str(ckpt))
    assert summary_split["status"] == "completed"
    state_full, state_split = full.state_dict(), second.state_dict()
    for key in ("wall_time", "config"):
        state_full.pop(key), state_split.pop(key)
    assert_same(state_full, state_split)  # weights, optimizer, schedules, counters, rng, episodes
    assert returns_full[-len(returns_tail):] == returns_tail
    assert summary_full["episodes"] == summary_split["episodes"]
    # the schedules really moved: beta annealed, the learning rate decayed
    assert second.members[0].beta_coef.value < 0.05
    assert 0 < second.members[0].lr < cfg.algo.learning_rate


def test_resumed_tensorboard_curves_equal_the_uninterrupted_ones(tmp_path):
    cfg = _resume_cfg("ppo")
    _run(cfg, tmp_path / "full")
    first = Trainer(cfg, tmp_path / "split")
    try:
        first.train(stop_at_step=160)
    finally:
        first.close()
    _run(cfg, tmp_path / "split", resume=str(tmp_path / "split" / CHECKPOINT_NAME))
    full, split = _events(tmp_path / "full"), _events(tmp_path / "split")
    for tag in ("losses/total", "grad_norm/policy", "policy/beta"):
        series = [[(e.step, e.value) for e in acc.Scalars(tag)] for acc in (full, split)]
        assert series[1] == series[0], tag


def test_resume_restores_schedules_optimizer_and_counters(tmp_path):
    """Without exact_env_resume the envs are re-seeded, everything else continues exactly."""
    cfg = _resume_cfg("ppo", "exact_env_resume=false", "beta_schedule.kind=cosine", "env.normalize_obs=true",
                      "env.normalize_reward=true")
    first = Trainer(cfg, tmp_path)
    try:
        first.train(stop_at_step=96)
        saved = first.state_dict()
    finally:
        first.close()
    assert not env_snapshot_path(tmp_path / CHECKPOINT_NAME).exists()
    resumed = Trainer(cfg, tmp_path, resume=str(tmp_path / CHECKPOINT_NAME))
    try:
        state = resumed.state_dict()
        # the resumed envs' first reset folded its observations into the saved statistics
        assert set(state["obs_normalization"]) == {"obs_rms", "return_rms"}  # running statistics too
        assert float(state["obs_normalization"]["obs_rms"]["count"]) == pytest.approx(
            float(saved["obs_normalization"]["obs_rms"]["count"]) + 2)
        for key in ("env_state", "config", "obs_normalization"):
            saved.pop(key), state.pop(key)
        assert_same(saved, state)
        assert state["optimizer"]["step"] == 3 * 2 * 2  # Adam moments, not a fresh optimizer
        assert float(state["optimizer"]["exp_avg_sq"].abs().sum()) > 0
        assert resumed.members[0].global_step == 96 and resumed.members[0].update == 3
        summary = resumed.train()
    finally:
        resumed.close()
    assert summary["status"] == "completed" and summary["steps"] == 320 and summary["updates"] == 10


def test_resume_normalizes_the_first_observation_with_the_saved_statistics(tmp_path):
    """The statistics are loaded before the resumed envs' first reset (not after it): the first
    stored observation is the raw reset observation under the saved running mean and variance."""
    from gymnasium.wrappers.utils import RunningMeanStd

    from rl.envs import derived_seed, make_envs

    cfg = tiny("total_steps=4096", "env.normalize_obs=true", "num_envs=8")
    first = Trainer(cfg, tmp_path)
    try:
        first.train(stop_at_step=512)
        saved = first.state_dict()["obs_normalization"]["obs_rms"]
    finally:
        first.close()
    resumed = Trainer(cfg, tmp_path, resume=str(tmp_path / CHECKPOINT_NAME))
    try:
        stored = resumed.buffer.obs[0].double().numpy()
    finally:
        resumed.close()
    # the raw observations of the same re-seeded reset, without normalization
    seed = derived_seed(0, 512)
    raw_envs = make_envs(compose("env.normalize_obs=false").env, 8, 0)
    raw, _ = raw_envs.reset(seed=seed)
    raw_envs.close()
    rms = RunningMeanStd(shape=raw.shape[1:], dtype=np.float64)
    rms.mean, rms.var, rms.count = (saved[k].numpy().copy() for k in ("mean", "var", "count"))
    rms.update(raw.astype(np.float64))
    expected = (raw - rms.mean) / np.sqrt(rms.var + 1e-8)
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-4)
    # fresh statistics would have normalized the reset observations by themselves
    fresh = (raw - raw.mean(0)) / np.sqrt(raw.var(0) + 1e-8)
    assert np.abs(fresh - expected).max() > 0.1


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    cfg = tiny("total_steps=64")
    trainer = Trainer(cfg, tmp_path)
    try:
        trainer.train()
        path = tmp_path / CHECKPOINT_NAME
        before = path.read_bytes()
        trainer.members[0].global_step = 10**6  # a later state that must not half-replace the file

        def torn_save(obj, f, *args, **kwargs):
            f.write(b"partial checkpoint")
            raise OSError("disk full")

        monkeypatch.setattr(torch, "save", torn_save)
        with pytest.raises(OSError, match="disk full"):
            trainer.save()
    finally:
        trainer.close()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["global_step"] == 64
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_update_and_writes_a_checkpoint(tmp_path, sig):
    caught = []
    # A guard in case the trainer installs no handler: the signal must not kill pytest.
    def guard(signum, frame):
        caught.append(signum)

    previous = signal.signal(sig, guard)
    try:
        # as a user's Ctrl-C / a scheduler's SIGTERM would, after update 2
        kill = AtUpdate(2, lambda trainer: os.kill(os.getpid(), sig))
        trainer = Trainer(tiny("total_steps=100000"), tmp_path, callbacks=[kill])
        try:
            summary = trainer.train()
        finally:
            trainer.close()
        assert caught == []  # the trainer's own handler took the signal
        assert signal.getsignal(sig) is guard  # and put the previous handler back
    finally:
        signal.signal(sig, previous)
    assert summary["status"] == "interrupted" and summary["steps"] == 2 * 32
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["global_step"] == 64
    assert json.loads((tmp_path / SUMMARY_NAME).read_text())["status"] == "interrupted"


def test_request_stop_writes_a_checkpoint_and_resume_continues(tmp_path):
    cfg = tiny("total_steps=256")
    class StopAfterThree(Callback):
        def should_stop(self, trainer):
            return "test" if trainer.members[0].update == 3 else None

    trainer = Trainer(cfg, tmp_path, callbacks=[StopAfterThree()])
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    assert summary["status"] == "interrupted" and summary["steps"] == 96
    resumed = Trainer(cfg, tmp_path, resume=str(tmp_path / CHECKPOINT_NAME))
    try:
        assert resumed.members[0].global_step == 96
        assert resumed.train()["status"] == "completed"
    finally:
        resumed.close()


# ---------------------------------------------------------------- non-finite losses


class PoisonedNet(ActorCritic):
    """An ActorCritic whose training-time forward (grad enabled) turns non-finite from the
    ``poison_at``-th call on; the rollout (inference mode) stays finite."""

    poison_at = 13  # update 4, epoch 1, minibatch 1 with 2 epochs x 2 minibatches per update
    where = "value"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_calls = 0

    def forward(self, obs):
        logits, values = super().forward(obs)
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            self.train_calls += 1
            if self.train_calls >= self.poison_at:
                if self.where == "value":
                    values = values + float("inf")
                else:
                    logits = logits * float("nan")
        return logits, values


@pytest.mark.parametrize("where, term", [("value", "value loss"), ("logits", "logits")])
def test_non_finite_loss_stops_with_step_and_term_and_keeps_the_last_checkpoint(tmp_path, where, term):
    class Net(PoisonedNet):
        pass

    Net.where = where
    cfg = tiny("total_steps=640", "checkpoint_interval=32")
    trainer = Trainer(cfg, tmp_path, make_network=Net)
    try:
        with pytest.raises(TrainingDiverged) as info:
            trainer.train()
    finally:
        trainer.close()
    message = str(info.value)
    assert "env step 128" in message and "update 4, epoch 1, minibatch 1" in message, message
    assert term in message
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert saved["global_step"] == 96  # the last good one, written after update 3
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    if where == "value":
        assert str(tmp_path / CHECKPOINT_NAME) in message
    summary = json.loads((tmp_path / SUMMARY_NAME).read_text())
    assert summary["status"] == "diverged" and summary["steps"] == 128


class RewardBlowUpEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)
    total_steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        RewardBlowUpEnv.total_steps += 1
        reward = float("nan") if RewardBlowUpEnv.total_steps > 100 else 1.0
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), reward, False, self.t >= 5, {}


def test_non_finite_advantages_stop_with_the_step(tmp_path):
    RewardBlowUpEnv.total_steps = 0
    with registered("entropy-rl-test/RewardBlowUp-v0", RewardBlowUpEnv) as env_id:
        cfg = tiny(f"env.id={env_id}", "env.solved_return=null", "total_steps=640", "checkpoint_interval=32")
        trainer = Trainer(cfg, tmp_path)
        try:
            with pytest.raises(TrainingDiverged, match=r"env step \d+") as info:
                trainer.train()
        finally:
            trainer.close()
    assert "advantage" in str(info.value) or "reward" in str(info.value)
    assert json.loads((tmp_path / SUMMARY_NAME).read_text())["status"] == "diverged"


# ---------------------------------------------------------------- action masks

@pytest.fixture
def masked_env(request):
    """Two of five actions allowed per step, at random; a forbidden action raises. The mask
    comes in a Dict observation ("dict"), or in ``infos["action_mask"]`` ("info")."""
    kind = request.param
    where = "info" if kind == "info" else "obs"
    with registered(f"entropy-rl-test/Masked{kind.capitalize()}-v0", MaskedEnv,
                    kwargs={"where": where, "allowed": (2, 2)}) as env_id:
        yield env_id


@pytest.mark.parametrize("masked_env, algo, policy", [
    ("dict", "ppo", "sparsemax"), ("info", "a2c", "softmax"), ("info", "ppo", "entmax15"),
    ("dict", "a2c", "entmax"),
], indirect=["masked_env"])
def test_masked_env_never_gets_an_invalid_action_and_the_mask_reaches_ops(
        tmp_path, monkeypatch, masked_env, algo, policy):
    seen = {"sampling": 0, "loss": 0}
    loss_name = "ppo_loss" if algo == "ppo" else "pg_loss"
    loss_fn = getattr(ops, loss_name)

    def sampling_spy(fn, check):
        """The rollout samples through ops.probs or ops.sample: either must get the mask."""
        def spy(logits, *args, **kwargs):
            mask = kwargs.get("mask", args[2] if len(args) > 2 else None)
            assert mask is not None and mask.shape == logits.shape and mask.dtype == torch.bool
            seen["sampling"] += 1
            out = fn(logits, *args, **kwargs)
            check(out, mask)
            return out
        return spy

    def no_mass_off_mask(p, mask):
        assert torch.all(p[~mask] == 0)

    def allowed(actions, mask):
        assert bool(mask.gather(-1, actions.reshape(-1, 1)).all())

    def spy_loss(logits, actions, *args, **kwargs):
        mask = kwargs["mask"]
        assert mask is not None and mask.shape == logits.shape
        assert bool(mask.gather(1, actions[:, None]).all())  # every trained action was allowed
        assert not bool(mask.all())  # a real mask, not an all-True placeholder
        seen["loss"] += 1
        return loss_fn(logits, actions, *args, **kwargs)

    monkeypatch.setattr(ops, "probs", sampling_spy(ops.probs, no_mass_off_mask))
    monkeypatch.setattr(ops, "sample", sampling_spy(ops.sample, allowed))
    monkeypatch.setattr(ops, loss_name, spy_loss)
    cfg = tiny(f"env.id={masked_env}", "env.solved_return=null", f"policy={policy}", "total_steps=320",
                "beta=0.01", algo=algo)
    trainer, summary, returns = _run(cfg, tmp_path)  # MaskedEnv raises on an invalid action
    assert summary["status"] == "completed" and len(returns) > 10
    assert seen["sampling"] >= 320 // 2 and seen["loss"] > 0  # one masked call per rollout step at least
    assert trainer.buffer.masks is not None and not bool(trainer.buffer.masks.all())


# ---------------------------------------------------------------- bad input, before training


class MultiDiscreteEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.MultiDiscrete([3, 2])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


def _needs_box2d(**kwargs):
    raise gym.error.DependencyNotInstalled(
        "Box2D is not installed, you can install it by run `pip install swig` followed by "
        '`pip install "gymnasium[box2d]"`')


@pytest.fixture
def odd_envs():
    with registered("entropy-rl-test/MultiDiscrete-v0", MultiDiscreteEnv) as multi, \
            registered("entropy-rl-test/NeedsBox2D-v0", _needs_box2d) as box2d:
        yield {"multi": multi, "box2d": box2d}


@pytest.mark.parametrize("case", ["continuous", "multidiscrete", "unknown", "missing_dependency"])
def test_bad_env_fails_clearly_before_training(tmp_path, odd_envs, case):
    env_id, pattern = {
        "continuous": ("Pendulum-v1", r"env.id='Pendulum-v1' has action space Box\(.*only Discrete"),
        "multidiscrete": (odd_envs["multi"], r"MultiDiscrete\(\[3 2\]\).*only Discrete"),
        "unknown": ("CartPol-v1", r"env.id='CartPol-v1' is not a registered.*Did you mean 'CartPole-v1'"),
        "missing_dependency": (odd_envs["box2d"], r"entropy-rl\[envs\]"),
    }[case]
    cfg = tiny(f"env.id={env_id}", "total_steps=64")
    with pytest.raises(ValueError, match=pattern):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written: no events, checkpoint or summary


# ---------------------------------------------------------------- the TensorBoard logger


def test_tb_logger_refuses_unknown_tags_and_skips_non_finite_values(tmp_path):
    from rl.logging import TBLogger

    logger = TBLogger(tmp_path / "tb")
    try:
        with pytest.raises(KeyError, match="losses/polcy"):
            logger.scalars({"losses/polcy": 1.0}, 1)
        with pytest.raises(KeyError, match="entropy/hist"):
            logger.histogram("entropy/hist", np.ones(3), 1)
        logger.scalars({"losses/value": 0.25, "value/explained_variance": math.nan,
                        "losses/total": math.inf, "charts/SPS": None}, 7)
        logger.histogram("entropy/histogram", np.random.default_rng(0).random(10), 7)
        # a call with one unknown tag writes none of its values
        with pytest.raises(KeyError, match="ppo/kl"):
            logger.scalars({"entropy/mean": 9.0, "ppo/kl": 1.0}, 8)
        logger.scalars({"losses/value": 0.5, "entropy/mean": 0.125}, 9)
    finally:
        logger.close()
    acc = _events(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == ["entropy/mean", "losses/value"]
    assert [(e.step, e.value) for e in acc.Scalars("losses/value")] == [(7, 0.25), (9, 0.5)]
    assert [(e.step, e.value) for e in acc.Scalars("entropy/mean")] == [(9, 0.125)]
    assert acc.Tags()["histograms"] == ["entropy/histogram"]


def test_tb_logger_file_sorts_after_an_earlier_attempts_file(tmp_path):
    """TensorBoard reads event files in name order: a resumed writer's file must come last,
    even when opened in the same second by the same process (its counter may have more
    digits: ".10" < ".9")."""
    import time

    from rl.logging import TBLogger

    log_dir = tmp_path / "tb"
    log_dir.mkdir()
    earlier = log_dir / f"events.out.tfevents.{int(time.time())}.host.{os.getpid()}.9"
    earlier.write_bytes(b"")
    logger = TBLogger(log_dir, purge_step=5)
    logger.close()
    names = sorted(p.name for p in log_dir.glob("events.out.tfevents.*"))
    assert len(names) == 2 and names[0] == earlier.name
    assert int(names[1].split(".")[3]) > int(earlier.name.split(".")[3])


# ---------------------------------------------------------------- minibatches and annealing


def _trained_rows(monkeypatch):
    """Spies: the real (weight > 0) rows of every ops.ppo_loss call, and each rollout's valid
    transitions (an on_rollout_end callback)."""
    rows, valid = [], []
    loss = ops.ppo_loss

    def spy(logits, actions, *args, **kwargs):
        rows.append(int((kwargs["weights"] > 0).sum()))
        return loss(logits, actions, *args, **kwargs)

    class Valid(Callback):
        def on_rollout_end(self, trainer):
            valid.append(int(trainer.buffer.valid.sum()))

    monkeypatch.setattr(ops, "ppo_loss", spy)
    return rows, valid, Valid()


def test_minibatches_come_from_the_valid_rows_and_are_never_empty(tmp_path, monkeypatch):
    """batch_size=1 with reset-only rows dropped (2 envs x 8 steps, a 3-step time limit): every
    valid transition is trained on once per epoch, one per minibatch (this crashed with an empty
    minibatch when the split came from the nominal rollout size)."""
    rows, valid, counter = _trained_rows(monkeypatch)

    cfg = tiny("num_envs=2", "algo.n_steps=8", "algo.batch_size=1", "algo.update_epochs=1",
               "env.max_episode_steps=3", "total_steps=48")
    _, summary, _ = _run(cfg, tmp_path, callbacks=[counter])
    assert summary["status"] == "completed" and summary["updates"] == 3
    assert all(v < 16 for v in valid)  # reset-only rows were dropped
    assert rows == [1] * sum(valid)


def test_a_minibatch_larger_than_the_rollout_is_the_whole_rollout(tmp_path, monkeypatch):
    rows, valid, counter = _trained_rows(monkeypatch)

    _, summary, _ = _run(tiny("algo.batch_size=64", "total_steps=64"), tmp_path, callbacks=[counter])
    assert summary["status"] == "completed"
    # one minibatch of the rollout's valid rows per epoch (2 epochs), 2 updates
    assert rows == [valid[0]] * 2 + [valid[1]] * 2


def test_the_annealed_learning_rate_never_reaches_zero_in_an_update(tmp_path):
    """Learning rate (and clip range) of update k come from the steps before rollout k, as beta
    and the temperature do: the first update runs at the configured rate, the last above 0."""
    cfg = tiny("total_steps=128", "algo.anneal_lr=true", "algo.learning_rate=0.004")
    _run(cfg, tmp_path)
    steps, lr = scalars(tmp_path)["charts/learning_rate"]
    assert steps == [32, 64, 96, 128]
    assert lr == pytest.approx([0.004 * (1 - s / 128) for s in (0, 32, 64, 96)], rel=1e-6)
