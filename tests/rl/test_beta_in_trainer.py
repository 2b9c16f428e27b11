"""Beta and temperature schedules and target-entropy tuning through the real trainer.

Tiny CPU runs (one 16-unit layer, 2 envs x 16 steps = 32 env steps per update, a few hundred
steps) of ``Trainer`` and of the ``rl-train`` Hydra app: what TensorBoard shows is the scalar
ops received, schedules follow their formulas over env steps, the dual update runs on the
logged entropy, invalid schedules stop the run before training with the field named, and a
resumed run continues the schedules and the dual variable exactly.

Every expected value is computed here from the formulas of docs/beta.md, not by rl.schedules.
The coefficient of an update is the schedule's value at the env step where its rollout began:
TensorBoard logs the update at the env step after the rollout, ``s``, with the value at
``s - ROLLOUT``.
"""

from __future__ import annotations

import math
import random
import sys

import pytest
from rl_helpers import (
    MINIBATCHES_PER_UPDATE,
    N_STEPS,
    ROLLOUT,
    TINY,
    TINY_PPO,
    MaskedEnv,
    registered,
    scalars,
    tiny,
    train,
)

import ops
from rl.checkpoint import load_checkpoint
from rl.trainer import CHECKPOINT_NAME, Trainer


@pytest.fixture
def spy_ops(monkeypatch):
    """Records the beta and temperature every fused loss call and every rollout ops.probs call
    received (the scalars that really reach ops)."""
    seen = {"loss": [], "probs": []}
    ppo_loss, probs = ops.ppo_loss, ops.probs

    def spy_ppo_loss(*args, **kwargs):
        seen["loss"].append((float(kwargs["beta"]), float(kwargs["temperature"])))
        return ppo_loss(*args, **kwargs)

    def spy_probs(logits, alpha=1.0, temperature=1.0, mask=None):
        seen["probs"].append(float(temperature))
        return probs(logits, alpha, temperature, mask)

    monkeypatch.setattr(ops, "ppo_loss", spy_ppo_loss)
    monkeypatch.setattr(ops, "probs", spy_probs)
    return seen


def _per_update(calls: list, per_update: int) -> list:
    """One value per update from a list of per-call values that must agree within an update."""
    assert len(calls) % per_update == 0, len(calls)
    groups = [calls[i:i + per_update] for i in range(0, len(calls), per_update)]
    assert all(len(set(g)) == 1 for g in groups), groups
    return [g[0] for g in groups]


# ---------------------------------------------------------------- scheduled beta, logged at every update

TOTAL = 320  # 10 updates
SCHEDULES = {
    # name: (overrides, value at env step s, written out from docs/beta.md)
    "constant": (("beta=0.037",), lambda s: 0.037),
    "linear": (("beta=0.05", "beta_schedule.kind=linear", "beta_schedule.end=0.01",
                "beta_schedule.horizon=256"),
               lambda s: 0.05 + (0.01 - 0.05) * min(s / 256, 1.0)),
    "cosine": (("beta=0.08", "beta_schedule.kind=cosine", "beta_schedule.end=0.0"),
               lambda s: 0.08 * 0.5 * (1 + math.cos(math.pi * s / TOTAL))),
    "exponential": (("beta=0.1", "beta_schedule.kind=exponential", "beta_schedule.end=0.001"),
                    lambda s: 0.1 * (0.001 / 0.1) ** (s / TOTAL)),
    "piecewise": (("beta_schedule.kind=piecewise", "beta_schedule.boundaries=[64,200]",
                   "beta_schedule.values=[0.03,0.2,0.0]"),
                  lambda s: 0.03 if s < 64 else (0.2 if s < 200 else 0.0)),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_scheduled_beta_is_logged_at_every_update_and_reaches_ops(tmp_path, spy_ops, name):
    overrides, expected = SCHEDULES[name]
    trainer, summary = train(tiny(f"total_steps={TOTAL}", *overrides), tmp_path)
    steps, logged = scalars(tmp_path)["policy/beta"]
    updates = TOTAL // ROLLOUT
    assert summary["updates"] == updates
    assert steps == [ROLLOUT * (k + 1) for k in range(updates)]  # every update
    want = [expected(s - ROLLOUT) for s in steps]
    assert logged == pytest.approx(want, rel=1e-6, abs=1e-9)  # TensorBoard stores float32
    used = [beta for beta, _ in _per_update(spy_ops["loss"], MINIBATCHES_PER_UPDATE)]
    assert used == pytest.approx(want, rel=1e-12, abs=1e-15)  # what ops computed with
    if name != "constant":
        assert len(set(used)) > 1  # the schedule moved within the run
    tags = scalars(tmp_path)
    assert "policy/target_entropy" not in tags and "policy/temperature" not in tags


# ---------------------------------------------------------------- target entropy

# Maximum entropy of two actions: Shannon log 2; Gini (Tsallis-2) (1 - 1/2) / 2.
H_MAX_2 = {"softmax": math.log(2), "sparsemax": 0.25}


def _dual_path(start: float, lr: float, f: float, entropies: list[float], h_max: float) -> list[float]:
    """The beta of each update: log beta <- log beta + lr (f - H / H_max) after each update."""
    log_beta, out = math.log(start), []
    for h in entropies:
        out.append(math.exp(log_beta))
        log_beta += lr * (f - h / h_max)
    return out


@pytest.mark.parametrize("policy", ["softmax", "sparsemax"])
def test_target_entropy_logs_target_and_entropy_and_steps_beta_on_them(tmp_path, spy_ops, policy):
    f, lr, start = random.uniform(0.3, 0.7), 0.3, 0.02
    cfg = tiny("total_steps=320", f"policy={policy}", f"beta={start}",
                f"beta_schedule.target_entropy={f}", f"beta_schedule.lr={lr}")
    trainer, summary = train(cfg, tmp_path)
    sc = scalars(tmp_path)
    h_steps, entropy = sc["entropy/mean"]
    t_steps, target = sc["policy/target_entropy"]
    b_steps, beta = sc["policy/beta"]
    updates = summary["updates"]
    assert h_steps == b_steps == [ROLLOUT * (k + 1) for k in range(updates)]
    assert set(t_steps) <= set(h_steps) and len(t_steps) >= updates - 1
    # the absolute target is the fraction of the mapping's own maximum entropy
    assert target == pytest.approx([f * H_MAX_2[policy]] * len(t_steps), rel=1e-6)
    # beta follows the dual update on the logged entropies (float32 in TensorBoard)
    want = _dual_path(start, lr, f, entropy, H_MAX_2[policy])
    assert beta == pytest.approx(want, rel=1e-5)
    used = [b for b, _ in _per_update(spy_ops["loss"], MINIBATCHES_PER_UPDATE)]
    assert used == pytest.approx(want, rel=1e-5)
    assert max(used) / min(used) > 1.05  # the dual variable moved
    # the checkpoint carries the dual variable and the schedule
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)["beta_schedule"]
    assert state["kind"] == "target" and state["num_dual_updates"] == updates
    assert state["log_value"] == pytest.approx(
        math.log(start) + lr * sum(f - h / H_MAX_2[policy] for h in entropy), rel=1e-5)
    assert state["schedule"] == {"beta_schedule.target_entropy": f, "beta_schedule.lr": lr}


@pytest.fixture
def variable_mask_env():
    """2 to 4 of 5 actions allowed at random each step (a Dict observation with the mask)."""
    with registered("entropy-rl-test/VariableMask-v0", MaskedEnv, kwargs={"allowed": (2, 4)}) as env_id:
        yield env_id


def test_target_is_logged_at_every_update_from_the_same_batch_as_the_entropy(
        tmp_path, monkeypatch, variable_mask_env):
    h_max_of_batch = []
    max_entropy = ops.max_entropy

    def spy_max_entropy(alpha, n):
        h = max_entropy(alpha, n)
        h_max_of_batch.append(float(h.float().mean()) if hasattr(h, "mean") else float(h))
        return h

    monkeypatch.setattr(ops, "max_entropy", spy_max_entropy)
    f = 0.5
    cfg = tiny(f"env.id={variable_mask_env}", "env.solved_return=null", "total_steps=192", "beta=0.02",
               f"beta_schedule.target_entropy={f}", "beta_schedule.lr=0.3")
    trainer, summary = train(cfg, tmp_path)
    sc = scalars(tmp_path)
    assert len(h_max_of_batch) == summary["updates"]
    assert len(set(h_max_of_batch)) > 1  # masks vary, so does the batch's H_max
    assert sc["policy/target_entropy"][0] == sc["entropy/mean"][0]  # every update
    assert sc["policy/target_entropy"][1] == pytest.approx([f * h for h in h_max_of_batch], rel=1e-6)


def test_target_under_masks_is_a_fraction_of_the_allowed_actions_maximum(tmp_path, variable_mask_env):
    """With 2-4 of 5 actions allowed, H_max is the mean of log n_allowed over the batch, well
    below log 5; the target and the dual step use it."""
    f, lr, start = 0.6, 0.3, 0.02
    cfg = tiny(f"env.id={variable_mask_env}", "env.solved_return=null", "total_steps=192", f"beta={start}",
               f"beta_schedule.target_entropy={f}", f"beta_schedule.lr={lr}")
    trainer, summary = train(cfg, tmp_path)
    sc = scalars(tmp_path)
    _, target = sc["policy/target_entropy"]
    _, entropy = sc["entropy/mean"]
    # E[log n] for n uniform on {2, 3, 4}, per row; a batch of ~60 rows scatters around it
    expected = f * (math.log(2) + math.log(3) + math.log(4)) / 3
    assert all(abs(t - expected) < 0.12 * expected for t in target), (target, expected)
    assert all(t < f * math.log(5) * 0.9 for t in target)
    assert all(0 < h <= math.log(4) for h in entropy)


# ---------------------------------------------------------------- temperature (softmax)


def test_temperature_schedule_reaches_ops_and_moves_the_entropy(tmp_path, spy_ops):
    # Piecewise temperature: very cold, then very hot. The entropy of softmax(z / T) follows it,
    # whatever the network's logits are: near 0 when cold, near log 2 when hot.
    cfg = tiny("total_steps=320", "beta=0.0", "policy.temperature=1.0",
                "policy.temperature_schedule.kind=piecewise", "policy.temperature_schedule.boundaries=[160]",
                "policy.temperature_schedule.values=[0.001,1000.0]")
    trainer, summary = train(cfg, tmp_path)
    sc = scalars(tmp_path)
    steps, temperature = sc["policy/temperature"]
    want = [0.001 if s - ROLLOUT < 160 else 1000.0 for s in steps]
    assert steps == [ROLLOUT * (k + 1) for k in range(summary["updates"])]
    assert temperature == pytest.approx(want, rel=1e-6)
    used = [t for _, t in _per_update(spy_ops["loss"], MINIBATCHES_PER_UPDATE)]
    assert used == pytest.approx(want, rel=1e-12)
    sampled = _per_update(spy_ops["probs"], N_STEPS)  # one ops.probs call per rollout step
    assert sampled == pytest.approx(want, rel=1e-12)  # the rollout samples at the same temperature
    h_steps, entropy = sc["entropy/mean"]
    cold = [h for s, h in zip(h_steps, entropy, strict=True) if s - ROLLOUT < 160]
    hot = [h for s, h in zip(h_steps, entropy, strict=True) if s - ROLLOUT >= 160]
    assert max(cold) < 0.5 * math.log(2) and min(hot) > 0.999 * math.log(2), (cold, hot)


def test_temperature_target_steps_the_temperature_on_the_entropy(tmp_path, spy_ops):
    f, lr, start = 0.3, 0.5, 1.0
    cfg = tiny("total_steps=320", "beta=0.0", f"policy.temperature={start}",
                f"policy.temperature_schedule.target_entropy={f}", f"policy.temperature_schedule.lr={lr}")
    trainer, summary = train(cfg, tmp_path)
    sc = scalars(tmp_path)
    _, entropy = sc["entropy/mean"]
    steps, temperature = sc["policy/temperature"]
    assert len(steps) == summary["updates"]
    want = _dual_path(start, lr, f, entropy, math.log(2))
    assert temperature == pytest.approx(want, rel=1e-5)
    used = [t for _, t in _per_update(spy_ops["loss"], MINIBATCHES_PER_UPDATE)]
    assert used == pytest.approx(want, rel=1e-5)
    # the initial policy is near uniform (entropy near log 2 > f log 2): the temperature falls
    assert used[-1] < 0.5 * start
    assert all(b == 0.0 for b, _ in spy_ops["loss"])  # beta untouched


def test_temperature_target_logs_its_target(tmp_path):
    cfg = tiny("total_steps=128", "policy.temperature_schedule.target_entropy=0.3",
                "policy.temperature_schedule.lr=0.5")
    train(cfg, tmp_path)
    sc = scalars(tmp_path)
    assert "policy/target_entropy" in sc
    assert sc["policy/target_entropy"][1] == pytest.approx([0.3 * math.log(2)] * 4, rel=1e-6)


# ---------------------------------------------------------------- invalid schedules, before training

INVALID = [
    ("beta_schedule.kind=linear", "beta_schedule.end=-0.5", "beta_schedule.end=-0.5"),
    ("beta_schedule.kind=sawtooth", "beta=0.01", "beta_schedule.kind='sawtooth'"),
    ("beta_schedule.target_entropy=1.5", "beta=0.01", "beta_schedule.target_entropy=1.5"),
    ("beta_schedule.target_entropy=0.0", "beta=0.01", "beta_schedule.target_entropy=0.0"),
    ("policy.temperature_schedule.kind=linear", "policy.temperature_schedule.end=-1.0",
     "policy.temperature_schedule.end=-1.0"),
    ("policy.temperature_schedule.target_entropy=1.0", "beta=0.0",
     "policy.temperature_schedule.target_entropy=1.0"),
]


def _no_envs(*args, **kwargs):
    raise AssertionError("an env was built for an invalid schedule")


@pytest.mark.parametrize("a, b, needle", INVALID)
def test_invalid_schedule_is_refused_by_the_trainer_before_any_env(tmp_path, a, b, needle):
    cfg = tiny("total_steps=64", a, b)
    with pytest.raises(ValueError) as err:
        Trainer(cfg, tmp_path, make_envs=_no_envs, make_network=_no_envs)
    assert needle in str(err.value), str(err.value)
    assert "allowed" in str(err.value)


@pytest.mark.parametrize("a, b, needle", INVALID[:4])
def test_invalid_schedule_is_refused_by_rl_train_before_training(tmp_path, monkeypatch, capsys, a, b, needle):
    """The Hydra app as the command line runs it: non-zero exit, the field in the message, no
    TensorBoard events or checkpoint."""
    from hydra.core.global_hydra import GlobalHydra

    from rl import train

    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv",
                        ["rl-train", *TINY, *TINY_PPO, "total_steps=64", a, b, f"hydra.run.dir={run_dir}"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    GlobalHydra.instance().clear()
    assert exit_info.value.code not in (0, None)
    assert needle in capsys.readouterr().err
    assert not (run_dir / "tb").exists() and not (run_dir / "checkpoints").exists()


# ---------------------------------------------------------------- resume

RESUMES = {
    "beta target softmax": ("beta=0.02", "beta_schedule.target_entropy=0.4", "beta_schedule.lr=0.3"),
    "beta target sparsemax": ("policy=sparsemax", "beta=0.02", "beta_schedule.target_entropy=0.6",
                              "beta_schedule.lr=0.3"),
    "piecewise beta, temperature target": (
        "beta_schedule.kind=piecewise", "beta_schedule.boundaries=[96,224]",
        "beta_schedule.values=[0.05,0.01,0.1]", "policy.temperature=1.5",
        "policy.temperature_schedule.target_entropy=0.5", "policy.temperature_schedule.lr=0.3"),
}


@pytest.mark.parametrize("name", sorted(RESUMES))
def test_resume_continues_schedule_and_dual_variable_exactly(tmp_path, name):
    """train 320 == train 160, checkpoint, resume, train 160: same betas, temperatures and dual
    state (CartPole, exact_env_resume)."""
    cfg = tiny("total_steps=320", "exact_env_resume=true", *RESUMES[name])
    full, _ = train(cfg, tmp_path / "full")
    first = Trainer(cfg, tmp_path / "split")
    try:
        assert first.train(stop_at_step=160)["status"] == "interrupted"
    finally:
        first.close()
    ckpt = tmp_path / "split" / CHECKPOINT_NAME
    saved = load_checkpoint(ckpt)
    assert saved["global_step"] == 160
    resumed, summary = train(cfg, tmp_path / "split", resume=str(ckpt))
    assert summary["status"] == "completed" and summary["steps"] == 320
    for coef in ("beta_coef", "temperature_coef"):
        assert getattr(resumed.members[0], coef).state_dict() == getattr(full.members[0], coef).state_dict()
    a, b = scalars(tmp_path / "full"), scalars(tmp_path / "split")
    for tag in ("policy/beta", "policy/temperature", "policy/target_entropy", "entropy/mean"):
        # the resumed curve continues with the same values (the checkpoint step's own event is
        # another matter: see test_resume_keeps_the_event_logged_at_the_checkpoint_step)
        assert _without(a.get(tag), 160) == _without(b.get(tag), 160), tag
    # something really moved on both sides of the checkpoint
    tag = "policy/temperature" if "policy/temperature" in b else "policy/beta"
    steps, values = b[tag]
    assert len({v for s, v in zip(steps, values, strict=True) if s <= 160}) > 1, tag
    assert len({v for s, v in zip(steps, values, strict=True) if s > 160}) > 1, tag


def _without(series, step):
    if series is None:
        return None
    return [(s, v) for s, v in zip(*series, strict=True) if s != step]


def test_resume_keeps_the_event_logged_at_the_checkpoint_step(tmp_path):
    cfg = tiny("total_steps=128", "beta=0.05", "beta_schedule.kind=linear", "beta_schedule.end=0.0")
    first = Trainer(cfg, tmp_path)
    try:
        first.train(stop_at_step=64)
    finally:
        first.close()
    assert scalars(tmp_path)["policy/beta"][0] == [32, 64]
    train(cfg, tmp_path, resume=str(tmp_path / CHECKPOINT_NAME))
    steps, beta = scalars(tmp_path)["policy/beta"]
    assert steps == [32, 64, 96, 128]
    assert beta == pytest.approx([0.05 * (1 - s / 128) for s in (0, 32, 64, 96)], rel=1e-6)


def test_resume_under_a_different_schedule_is_refused_naming_the_field(tmp_path):
    cfg = tiny("total_steps=128", "beta=0.05", "beta_schedule.kind=linear", "beta_schedule.end=0.0")
    first = Trainer(cfg, tmp_path)
    try:
        first.train(stop_at_step=64)
    finally:
        first.close()
    ckpt = str(tmp_path / CHECKPOINT_NAME)
    changed = tiny("total_steps=128", "beta=0.05", "beta_schedule.kind=linear", "beta_schedule.end=0.01")
    with pytest.raises(ValueError, match=r"beta_schedule.end=0.01.*checkpoint's beta_schedule.end=0.0"):
        Trainer(changed, tmp_path, resume=ckpt)
    # extending the run stretches a schedule whose horizon is total_steps: refused too
    longer = tiny("total_steps=256", "beta=0.05", "beta_schedule.kind=linear", "beta_schedule.end=0.0")
    with pytest.raises(ValueError, match="beta_schedule.horizon=256"):
        Trainer(longer, tmp_path, resume=ckpt)
    # with the old horizon written out, the same extension resumes
    pinned = tiny("total_steps=256", "beta=0.05", "beta_schedule.kind=linear", "beta_schedule.end=0.0",
                   "beta_schedule.horizon=128")
    trainer = Trainer(pinned, tmp_path, resume=ckpt)
    try:
        assert trainer.members[0].beta_coef.value == pytest.approx(0.05 * (1 - 64 / 128))
    finally:
        trainer.close()
