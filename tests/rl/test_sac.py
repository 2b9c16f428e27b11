"""algo=sac (rl/sac.py, rl/replay.py), single runs: the critic target against a hand computation,
where the gradients flow, the replay buffer's storage and sampling, masks, learning, exact
resume, config errors, and rl-train / rl-eval end to end (populations:
tests/rl/test_sac_population.py)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from rl_helpers import (
    N_MASKED,
    MaskedEnv,
    assert_same,
    compose,
    entropy_oracle,
    probs_oracle,
    registered,
    train,
)

from rl.checkpoint import env_snapshot_path, load_checkpoint
from rl.config import validate
from rl.replay import ReplayBatch, ReplayBuffer
from rl.sac import SACTrainer, replay_path
from rl.trainer import CHECKPOINT_NAME

TINY_SAC = ("algo=sac", "device=cpu", "progress=false", "policy.hidden_sizes=[16]", "num_envs=2",
            "histogram_interval=0", "checkpoint_interval=0", "eval.episodes=0", "algo.batch_size=16",
            "algo.learning_starts=64", "algo.buffer_size=1000", "algo.train_frequency=2",
            "algo.target_update_interval=32")


def sac_cfg(*overrides):
    return compose(*TINY_SAC, *overrides)


def run(cfg, run_dir, **kwargs):
    return train(cfg, run_dir, trainer_class=SACTrainer, **kwargs)


class CounterEnv(gym.Env):
    """Observation ``[episode, t]``; episodes of ``horizon`` steps, terminated for even episodes
    and truncated for odd ones; reward ``10 * episode + t``."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, horizon: int = 3):
        self.horizon, self.episode = horizon, -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        return np.array([self.episode, 0], np.float32), {}

    def step(self, action):
        reward = 10.0 * self.episode + self.t
        self.t += 1
        end = self.t >= self.horizon
        obs = np.array([self.episode, self.t], np.float32)
        return obs, reward, end and self.episode % 2 == 0, end and self.episode % 2 == 1, {}


# ---------------------------------------------------------------- replay buffer


@pytest.mark.parametrize(("dtype", "stored"), [
    (torch.uint8, torch.uint8), (torch.bool, torch.bool), (torch.float64, torch.float32),
    (torch.float32, torch.float32)])
def test_replay_buffer_keeps_compact_observations_compact(dtype, stored):
    buf = ReplayBuffer(100, 4, (10, 10, 3), dtype, 6, True, torch.device("cpu"))
    assert buf.obs.dtype == stored and buf.masks.dtype == torch.bool
    assert buf.obs.shape == (26, 4, 10, 10, 3)  # 100 / 4 transitions per env + the newest observation
    from rl.replay import replay_nbytes

    assert replay_nbytes(100, 4, (10, 10, 3), dtype, 6, True) == buf.nbytes


def test_replay_never_holds_a_transition_across_a_reset_and_keeps_terminated_apart(tmp_path):
    """Sampled transitions, after the ring wrapped several times: next_obs is the same episode's
    next step, terminated only at the end of even episodes (odd ones are truncated)."""
    with registered("CounterEnv-v0", CounterEnv):
        cfg = sac_cfg("env.id=CounterEnv-v0", "algo.buffer_size=14", "algo.learning_starts=100000",
                      "total_steps=200")
        trainer, _ = run(cfg, tmp_path / "run")
    buf = trainer.buffer
    assert buf.L == 8 and buf.size == 7
    batch = buf.sample(400, torch.Generator().manual_seed(0))
    ep, t = batch.obs[:, 0], batch.obs[:, 1]
    assert torch.equal(batch.next_obs[:, 0], ep) and torch.equal(batch.next_obs[:, 1], t + 1)
    assert torch.equal(batch.rewards, 10 * ep + t)
    last = (t + 1) == 3
    assert torch.equal(batch.terminated, last & (ep % 2 == 0))
    assert bool((last & (ep % 2 == 1)).any()) and bool((last & (ep % 2 == 0)).any())  # both kinds seen
    # every stored valid transition, not only the sampled ones
    for slot in range(buf.L):
        for e in range(buf.N):
            if buf.valid[slot, e]:
                nxt = buf.obs[(slot + 1) % buf.L, e]
                assert nxt[0] == buf.obs[slot, e, 0] and nxt[1] == buf.obs[slot, e, 1] + 1


@pytest.mark.parametrize("td_steps", [2, 3, 5])
def test_n_step_chains_follow_the_episode_and_stop_at_its_end_and_at_the_newest_step(tmp_path, td_steps):
    """CounterEnv episodes of 3 steps, ring wrapped: a chain from (episode, t) runs
    min(n, 3 - t) steps unless it reaches the newest observation; its rewards, discount,
    terminated flag, next and intermediate observations are those of that walk."""
    gamma = 0.9
    with registered("CounterEnv-v0", CounterEnv):
        cfg = sac_cfg("env.id=CounterEnv-v0", "algo.buffer_size=20", "algo.learning_starts=100000",
                      "total_steps=202")
        trainer, _ = run(cfg, tmp_path / "run")
    buf = trainer.buffer
    newest = {tuple(o.tolist()) for o in buf.current()[0]}
    one = buf.sample(600, torch.Generator().manual_seed(1))
    batch = buf.sample(600, torch.Generator().manual_seed(1), td_steps, gamma)
    # the same draws as one-step sampling
    assert torch.equal(batch.obs, one.obs) and torch.equal(batch.actions, one.actions)
    assert batch.mid_obs.shape == (600, td_steps - 1, 2) and batch.mid_weights.shape == (600, td_steps - 1)
    cut = 0
    for i in range(600):
        ep, t = int(batch.obs[i, 0]), int(batch.obs[i, 1])
        m = min(td_steps, 3 - t)
        if tuple(batch.next_obs[i].tolist()) != (ep, t + m):  # cut short at the newest observation
            m = int(batch.next_obs[i, 1]) - t
            assert 1 <= m < min(td_steps, 3 - t) and tuple(batch.next_obs[i].tolist()) in newest, i
            cut += 1
        assert int(batch.next_obs[i, 0]) == ep
        assert float(batch.discounts[i]) == pytest.approx(gamma ** m)
        assert float(batch.rewards[i]) == pytest.approx(sum(gamma ** j * (10 * ep + t + j) for j in range(m)))
        assert bool(batch.terminated[i]) == (t + m == 3 and ep % 2 == 0)  # odd episodes: truncated
        for j in range(1, td_steps):
            assert batch.mid_obs[i, j - 1].tolist() == [ep, t + min(j, m)]
            assert float(batch.mid_weights[i, j - 1]) == pytest.approx(gamma ** j if j < m else 0.0)
    assert 0 < cut < 600
    truncated_end = (batch.next_obs[:, 1] == 3) & (batch.next_obs[:, 0] % 2 == 1)
    assert bool(truncated_end.any()) and not bool(batch.terminated[truncated_end].any())


# ---------------------------------------------------------------- the critic target


@pytest.mark.parametrize("alpha_name", [("softmax", 1.0), ("sparsemax", 2.0)])
def test_critic_target_equals_a_hand_computation(tmp_path, alpha_name):
    name, alpha = alpha_name
    with registered("MaskedObs-v0", MaskedEnv):
        cfg = sac_cfg("env.id=MaskedObs-v0", f"policy={name}", "beta=0.3", "algo.gamma=0.9",
                      "policy.temperature=0.7", "total_steps=4", "algo.learning_starts=100000")
        trainer = SACTrainer(cfg, tmp_path / "run")
        trainer.close()
    torch.manual_seed(3)
    B = 4
    next_obs = torch.randn(B, 3)
    masks = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 0, 1, 1], [1, 0, 0, 0, 0], [0, 0, 1, 1, 0]],
                         dtype=torch.bool)
    assert masks.shape[1] == N_MASKED
    batch = ReplayBatch(obs=torch.randn(B, 3), actions=torch.zeros(B, dtype=torch.int64),
                        rewards=torch.tensor([1.0, -2.0, 0.5, 3.0]),
                        terminated=torch.tensor([False, True, False, False]), next_obs=next_obs,
                        masks=masks, next_masks=masks)
    got = trainer.critic_target(batch)

    with torch.no_grad():
        logits = trainer.actor.logits(next_obs).double()
        q = torch.minimum(trainer.q1_target(next_obs), trainer.q2_target(next_obs)).double()
    want = []
    for i in range(B):
        allowed = masks[i].nonzero().squeeze(1)
        p = probs_oracle(logits[i, allowed], alpha, 0.7)
        v = float((p * q[i, allowed]).sum() + 0.3 * entropy_oracle(p, alpha))
        done = bool(batch.terminated[i])  # row 1: terminated, no bootstrap
        want.append(float(batch.rewards[i]) + 0.9 * (0.0 if done else v))
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    # masked actions' Q values are ignored, even NaN
    trainer.q2_target.q[-1].bias.data[0] = float("nan")  # NaN Q(s', 0) everywhere; row 3 masks action 0
    sub = ReplayBatch(**{k: (v[3:] if v is not None else None) for k, v in batch.__dict__.items()})
    torch.testing.assert_close(trainer.critic_target(sub).double(),
                               torch.tensor(want[3:], dtype=torch.float64), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- gradients


def test_gradients_reach_the_critics_and_the_actor_only(tmp_path):
    cfg = sac_cfg("total_steps=80", "algo.target_update_interval=100000", "beta=0.1")
    trainer = SACTrainer(cfg, tmp_path / "run")
    try:
        trainer.train(stop_at_step=70)  # warm-up done, a few gradient steps taken
        before = {n: [p.detach().clone() for p in getattr(trainer, n).parameters()]
                  for n in ("q1", "q2", "q1_target", "q2_target")}
        critic_path = [p.detach().clone() for p in trainer.actor.critic.parameters()]
        actor_before = [p.detach().clone() for p in trainer.actor_params]
        trainer._gradient_step(want_stats=True)
    finally:
        trainer.close()
    changed = {n: any(not torch.equal(a, b) for a, b in zip(before[n], getattr(trainer, n).parameters(),
                                                           strict=True)) for n in before}
    assert changed == {"q1": True, "q2": True, "q1_target": False, "q2_target": False}
    assert all(p.grad is None for p in (*trainer.q1_target.parameters(), *trainer.q2_target.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, trainer.actor_params, strict=True))
    # the actor's unused value path gets nothing
    assert all(p.grad is None for p in trainer.actor.critic.parameters())
    assert all(torch.equal(a, b) for a, b in zip(critic_path, trainer.actor.critic.parameters(), strict=True))


def test_actor_loss_holds_the_critic_fixed():
    """ops.soft_policy_loss detaches q: the critic gets no gradient from the actor's step."""
    import ops

    logits = torch.randn(5, 4, requires_grad=True)
    q = torch.randn(5, 4, requires_grad=True)
    ops.soft_policy_loss(logits, q, 0.2).loss.backward()
    assert q.grad is None and logits.grad is not None and bool(logits.grad.abs().sum() > 0)


# ---------------------------------------------------------------- masks, learning, logging


@pytest.mark.parametrize("where", ["obs", "info"])
def test_masks_are_respected_in_the_random_phase_and_after(tmp_path, where):
    """MaskedEnv raises on a forbidden action; the policy learns to take the paying one."""
    with registered(f"Masked{where}-v0", MaskedEnv, kwargs={"where": where}):
        cfg = sac_cfg(f"env.id=Masked{where}-v0", "policy=sparsemax", "total_steps=400",
                      "algo.learning_starts=64", "beta=0.05", "log_interval=5")
        trainer, summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps"] == 400


def test_short_cartpole_run_improves_its_return(tmp_path):
    from rl_helpers import scalars

    cfg = compose("algo=sac", "device=cpu", "progress=false", "eval.episodes=0", "checkpoint_interval=0",
                  "total_steps=6000", "algo.learning_starts=500", "log_interval=25",
                  "beta_schedule.target_entropy=0.3", "beta=0.05", "algo.gradient_steps=1")
    trainer, summary = run(cfg, tmp_path / "run")
    returns = list(trainer.members[0].recent_returns)
    assert np.mean(returns[-10:]) > 2 * np.mean(returns[:10]), returns
    tags = scalars(tmp_path / "run")
    for tag in ("losses/q", "losses/policy", "entropy/mean", "policy/support_size", "grad_norm/policy",
                "grad_norm/entropy", "grad_norm/value", "grad_norm/actor", "q/mean", "q/min", "q/max",
                "q/target", "policy/beta", "policy/target_entropy", "charts/episodic_return"):
        assert tag in tags, tag
    target = tags["policy/target_entropy"][1][-1]
    assert target == pytest.approx(0.3 * math.log(2), rel=1e-5)  # the same fraction as on-policy


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("extra", [(), ("algo.td_steps=3",), ("algo.anneal_lr=true",)])
def test_resume_is_exact_with_exact_env_resume(tmp_path, extra):
    """train N + M == train N, checkpoint, resume, train M (CPU, bitwise), replay buffer included."""
    cfg = sac_cfg("total_steps=240", "exact_env_resume=true", "beta=0.1", "beta_schedule.target_entropy=0.5",
                  *extra)
    full, summary_full = run(cfg, tmp_path / "full")
    first = SACTrainer(cfg, tmp_path / "split")
    try:
        summary = first.train(stop_at_step=120)
    finally:
        first.close()
    ckpt = tmp_path / "split" / CHECKPOINT_NAME
    assert summary["status"] == "interrupted" and summary["steps"] == 120
    assert env_snapshot_path(ckpt).is_file() and replay_path(ckpt).is_file()
    second, summary_split = run(cfg, tmp_path / "split", resume=str(ckpt))
    a, b = full.state_dict(), second.state_dict()
    for key in ("wall_time", "config"):
        a.pop(key), b.pop(key)
    assert_same(a, b)
    assert_same(full.buffer.state_dict(), second.buffer.state_dict())
    assert summary_full["episodes"] == summary_split["episodes"]
    assert second.members[0].beta_coef.num_dual_updates > 0


def test_resume_without_the_replay_buffer_continues(tmp_path):
    cfg = sac_cfg("total_steps=160", "algo.checkpoint_buffer_gb=0")
    first = SACTrainer(cfg, tmp_path / "run")
    try:
        first.train(stop_at_step=96)
    finally:
        first.close()
    ckpt = tmp_path / "run" / CHECKPOINT_NAME
    assert not replay_path(ckpt).exists()
    second, summary = run(cfg, tmp_path / "run", resume=str(ckpt))
    assert summary["status"] == "completed" and summary["steps"] == 160
    assert second.buffer.num_transitions > 0


# ---------------------------------------------------------------- learning rates


@pytest.mark.parametrize("anneal", [True, False])
def test_anneal_lr_decays_both_learning_rates_of_each_member_to_zero_at_the_end(tmp_path, anneal):
    """algo.anneal_lr: every gradient step's actor and critic learning rates are the member's own
    times 1 - (env steps before the phase's collection) / total_steps; constant without it."""
    from rl.population import Member

    T, phase = 240, 2 * 2  # num_envs x train_frequency
    lrs = ((1e-3, 3e-3), (2e-3, 5e-4))
    members = [Member(sac_cfg(f"total_steps={T}", f"seed={k}", f"algo.anneal_lr={str(anneal).lower()}",
                              f"algo.learning_rate={a}", f"algo.q_learning_rate={q}"), tmp_path / f"m{k}")
               for k, (a, q) in enumerate(lrs)]
    trainer = SACTrainer(members=members)
    seen = []
    for name in ("actor_optimizer", "q_optimizer"):
        opt = getattr(trainer, name)

        def capturing(lr, active=None, step=opt.step, name=name):
            seen.append((name, trainer.members[0].global_step, lr.clone()))
            return step(lr, active)

        opt.step = capturing
    try:
        summaries = trainer.train()
    finally:
        trainer.close()
    assert [s["status"] for s in summaries] == ["completed"] * 2
    steps = sorted({g for _, g, _ in seen})
    assert steps[0] == 64 and steps[-1] == T  # from the end of the warm-up to the last phase
    for name, g, lr in seen:
        f = 1.0 - (g - phase) / T if anneal else 1.0
        col = 0 if name == "actor_optimizer" else 1
        want = [lr_k[col] * f for lr_k in lrs] * (1 if col == 0 else 2)  # Q_1 rows, then Q_2 rows
        assert lr.tolist() == pytest.approx(want, rel=1e-12), (name, g)
    assert (seen[-1][2][0] < 0.02 * lrs[0][1]) == anneal  # the last phase's rate is near 0


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(("override", "field"), [
    ("algo.tau=0", "algo.tau=0.0"),
    ("algo.tau=1.5", "algo.tau=1.5"),
    ("algo.buffer_size=0", "algo.buffer_size=0"),
    ("algo.batch_size=0", "algo.batch_size=0"),
    ("algo.train_frequency=0", "algo.train_frequency=0"),
    ("algo.gradient_steps=0", "algo.gradient_steps=0"),
    ("algo.td_steps=0", "algo.td_steps=0"),
    ("algo.learning_starts=-1", "algo.learning_starts=-1"),
    ("algo.target_update_interval=0", "algo.target_update_interval=0"),
    ("algo.q_learning_rate=0", "algo.q_learning_rate=0.0"),
    ("algo.optimizer=rmsprop", "algo.optimizer='rmsprop'"),
    ("env.normalize_obs=true", "env.normalize_obs=True"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ValueError, match="^" + re.escape(field) + " is not allowed"):
        validate(sac_cfg(override))


def test_a_buffer_above_the_memory_limit_is_refused(tmp_path):
    cfg = sac_cfg("algo.buffer_size=1000000", "algo.max_buffer_gb=0.001")
    with pytest.raises(ValueError, match=r"algo\.buffer_size=1000000 is not allowed: its replay buffer needs "
                                         r"0\.03 GiB .*algo\.max_buffer_gb=0\.001"):
        SACTrainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "tb").exists()


def test_population_of_sac_runs_trains_them_together(tmp_path):
    """(tests/rl/test_sac_population.py has the population's own tests.)"""
    from rl.population import Member, train_population

    members = [Member(sac_cfg("total_steps=96", f"seed={s}"), tmp_path / f"s{s}") for s in (0, 1)]
    summaries = train_population(members)
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert [s["seed"] for s in summaries] == [0, 1]
    for s in (0, 1):
        written = json.loads((tmp_path / f"s{s}" / "summary.json").read_text())
        assert written["algo"] == "sac" and written["population_size"] == 2


# ---------------------------------------------------------------- command line


def test_rl_train_algo_sac_and_rl_eval_reads_its_checkpoint(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HYDRA_FULL_ERROR": "0"}
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "rl.train", "algo=sac", "policy=entmax15", "total_steps=200", "num_envs=2",
           "algo.learning_starts=64", "algo.batch_size=16", "policy.hidden_sizes=[8]", "progress=false",
           "device=cpu", "eval.episodes=1", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["algo"] == "sac" and summary["steps"] == 200
    assert summary["eval_return_greedy"] is not None
    ckpt = run_dir / "checkpoints" / "last.pt"
    assert load_checkpoint(ckpt)["config"]["algo"]["name"] == "sac"
    proc = subprocess.run([sys.executable, "-m", "rl.evaluate", f"checkpoint={ckpt}", "episodes=2",
                           "greedy=false", "device=cpu"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 sampled episodes: return" in proc.stdout


def test_minatar_grids_stay_bool_and_the_critics_use_the_minatar_cnn(tmp_path):
    cfg = sac_cfg("env=minatar_breakout", "total_steps=96", "algo.learning_starts=32")
    trainer, summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    assert trainer.buffer.obs.dtype == torch.bool and trainer.buffer.obs.shape[2:] == (10, 10, 4)
    assert trainer.q1.network == "minatar_cnn" and trainer.actor.network == "minatar_cnn"
    assert trainer.gradient_steps_done > 0


def test_a_sac_member_stuck_at_one_action_is_told_the_remedy_measured_for_sac(tmp_path, caplog):
    """On SAC a slower actor kept the warm-up's support, and a temperature of 2 brought it back
    (LunarLander): the warning names both, not only the temperature measured on A2C."""
    from rl.trainer import _DEAD_SUPPORT_UPDATES

    trainer = SACTrainer(sac_cfg("policy=sparsemax", "beta=0.1"), tmp_path / "run")
    try:
        with caplog.at_level("WARNING", logger="rl.trainer"):
            for _ in range(_DEAD_SUPPORT_UPDATES):
                trainer._step_coefficients(0, 0.0, 1.0)
    finally:
        trainer.close()
    (message,) = [r.getMessage() for r in caplog.records if "one-action support" in r.getMessage()]
    assert "algo.learning_rate=3e-4" in message and "policy.temperature=2" in message
    assert str(tmp_path / "run") in message
