"""Population training (rl/trainer.py, rl/stacked.py, rl/population.py): members are independent runs.

* Member k's gradient equals, in float64, the autograd gradient of the single-run loss
  (rl.algos, on member k's own network and rollout) for each algo, mapping, masks, temperatures,
  schedules and target entropy.
* A population of one is the single run; different seeds give different trajectories.
* A diverging member stops alone; a killed population resumes every member exactly.
* Members sharing (alpha, temperature, beta) share one ops call per minibatch.
"""

import json
import math
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch
from rl_helpers import (
    RUNAWAY_MEMBERS,
    MaskedEnv,
    Returns,
    RunawayBeta,
    assert_runaway_stopped_alone,
    compose,
    registered,
    scalars,
    tiny,
)

import ops
from rl import algos
from rl.checkpoint import load_checkpoint
from rl.networks import ActorCritic
from rl.population import Member, population_key, train_population
from rl.trainer import CHECKPOINT_NAME, SUMMARY_NAME, Trainer

MEMBERS = (  # (overrides) of three members that differ in everything a member may differ in
    ("seed=0", "policy=softmax", "beta=0.0", "algo.learning_rate=0.003"),
    ("seed=1", "policy=sparsemax", "beta=0.1", "policy.temperature=0.7", "algo.learning_rate=0.001",
     "beta_schedule.target_entropy=0.5"),
    ("seed=2", "policy=entmax15", "beta=0.05", "policy.temperature=1.3", "algo.learning_rate=0.002",
     "policy.temperature_schedule.kind=linear", "policy.temperature_schedule.end=0.5"),
)


def _members(tmp_path, *common, algo="ppo", members=MEMBERS):
    return [Member(tiny(*common, *own, algo=algo), tmp_path / f"m{i}") for i, own in enumerate(members)]


class CaptureGradients:
    """Wraps the optimizer's step: records the (K, P) gradient it is given (after clipping)."""

    def __init__(self, trainer):
        self.grads = []
        step = trainer.optimizer.step

        def capturing(lr, active=None):
            self.grads.append(trainer.net.flat.grad.detach().clone())
            return step(lr, active)

        trainer.optimizer.step = capturing


def _expected_gradient(trainer, k, algo):
    """Autograd gradient (float64) of member k's single-run loss on its whole rollout, in the
    stacked layout (rl.algos: loss = pg_loss - beta H + vf_coef v_loss)."""
    m, a = trainer.members[k], trainer.algo
    net = trainer.member_network(k).double()
    batch = trainer.batch(k)
    batch = algos.Batch(*(None if x is None else (x.double() if x.is_floating_point() else x)
                          for x in vars(batch).values()))
    logits, values = net(batch.obs)
    kw = dict(beta=m.beta_coef.value, alpha=m.alpha, temperature=m.temperature_coef.value,
              vf_coef=a.vf_coef, norm_adv=a.norm_adv)
    if algo == "ppo":
        losses = algos.ppo_losses(logits, values, batch, clip_eps=a.clip_eps, clip_value=a.clip_value, **kw)
    else:
        losses = algos.a2c_losses(logits, values, batch, **kw)
    params = dict(net.named_parameters())
    grads = torch.autograd.grad(losses.loss, [params[n] for n in trainer.net.layout])
    metrics = {"losses/total": float(losses.loss.detach()),
               "grad_norm/policy": float(losses.out.grad_norm_policy),
               "grad_norm/entropy": float(losses.out.grad_norm_entropy),
               "entropy/mean": float(losses.out.entropy.mean())}
    return torch.cat([g.reshape(-1) for g in grads]), metrics


GROUPED = (  # two members share (alpha, temperature, beta): on updates that do not log, one ops call
    ("seed=0", "policy=entmax15", "beta=0.1"), ("seed=1", "policy=entmax15", "beta=0.1",
                                                "algo.learning_rate=0.001"),
    ("seed=2", "policy=sparsemax", "beta=0.1"),
)


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
@pytest.mark.parametrize("grouped", [False, True], ids=["per-member", "grouped"])
def test_each_members_gradient_is_its_single_run_gradient(tmp_path, algo, masked, grouped):
    common = ["algo.max_grad_norm=0", "total_steps=640", "algo.norm_adv=true"]
    if grouped:
        common += ["log_interval=1000", "histogram_interval=0"]
    if algo == "ppo":  # one epoch of one minibatch: the step sees the whole rollout
        common += ["algo.update_epochs=1", "algo.batch_size=32", "algo.clip_value=0.2"]
    ctx = registered("entropy-rl-test/MaskedPopulation-v0", MaskedEnv,
                     kwargs={"where": "obs", "allowed": (2, 4)}) if masked else None
    env_id = ctx.__enter__() if ctx else None
    try:
        extra = [f"env.id={env_id}", "env.solved_return=null"] if masked else []
        trainer = Trainer(members=_members(tmp_path, *common, *extra, algo=algo,
                                           members=GROUPED if grouped else MEMBERS))
        try:
            capture = CaptureGradients(trainer)
            trainer.collect_rollout()
            if masked:
                assert trainer.buffer.masks is not None and not bool(trainer.buffer.masks.all())
            expected = [_expected_gradient(trainer, k, algo) for k in range(trainer.K)]
            metrics = trainer.update()
        finally:
            trainer.close()
    finally:
        if ctx:
            ctx.__exit__(None, None, None)
    (got,) = capture.grads
    for k in range(3):
        want, want_metrics = expected[k]
        assert float(want.norm()) > 0
        torch.testing.assert_close(got[k].double(), want, rtol=2e-4, atol=2e-6 * float(want.abs().max()))
        if not grouped:  # an update that logs: each member's own losses and per-term norms
            assert metrics[k]["grad_norm/total"] == pytest.approx(float(want.norm()), rel=1e-4)
            for tag, value in want_metrics.items():
                assert metrics[k][tag] == pytest.approx(value, rel=1e-4, abs=1e-7), (k, tag)
    # members' rows differ: nothing was shared
    assert not torch.allclose(got[0], got[1])


def test_population_of_one_is_the_single_run(tmp_path):
    cfg = tiny("total_steps=320", "beta=0.02", "policy=sparsemax")
    single = Trainer(cfg, tmp_path / "single")
    try:
        summary = single.train()
        params = single.net.member_state_dict(0)
    finally:
        single.close()
    (pop_summary,) = train_population([Member(cfg, tmp_path / "pop")])
    saved = load_checkpoint(tmp_path / "pop" / CHECKPOINT_NAME)
    for name, value in params.items():
        assert torch.equal(saved["model"][name], value), name
    for key in ("final_mean_return", "episodes", "steps", "updates", "status"):
        assert pop_summary[key] == summary[key], key


def test_members_with_different_seeds_follow_different_trajectories(tmp_path):
    returns = Returns()
    members = _members(tmp_path, "total_steps=320", members=(("seed=0",), ("seed=1",), ("seed=0",)))
    trainer = Trainer(members=members, callbacks=[returns])
    try:
        assert trainer.envs.num_envs == 3 * 2  # the K x N envs step as one vector env
        summaries = trainer.train()
    finally:
        trainer.close()
    assert [s["status"] for s in summaries] == ["completed"] * 3
    assert returns.by_member[0] != returns.by_member[1]
    # the same seed in another slot still gets envs of its own (another part of the vector env)
    assert returns.by_member[0] != returns.by_member[2]
    for i, s in enumerate(summaries):  # each member writes an ordinary run directory
        written = json.loads((tmp_path / f"m{i}" / SUMMARY_NAME).read_text())
        assert written == json.loads(json.dumps(s)) and written["population_size"] == 3
        assert (tmp_path / f"m{i}" / CHECKPOINT_NAME).is_file()
        assert "losses/total" in scalars(tmp_path / f"m{i}")


def test_members_must_share_everything_but_member_fields(tmp_path):
    a = Member(tiny("seed=0"), tmp_path / "a")
    b = Member(tiny("seed=1", "num_envs=4"), tmp_path / "b")
    assert population_key(a.cfg) != population_key(b.cfg)
    with pytest.raises(ValueError, match="cannot share a population.*seed"):
        Trainer(members=[a, b])


def test_a_diverging_member_stops_alone(tmp_path):
    made = []

    class Poisoned(ActorCritic):
        """The second member's network returns NaN logits from its 5th training forward on."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls = 0
            self.poisoned = len(made) == 1
            made.append(self)

        def forward(self, obs):
            logits, values = super().forward(obs)
            if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
                self.calls += 1
                if self.poisoned and self.calls >= 5:
                    logits = logits * float("nan")
            return logits, values

    members = _members(tmp_path, "total_steps=320", members=(("seed=0",), ("seed=1",), ("seed=2",)))
    summaries = train_population(members, make_network=Poisoned)
    assert [s["status"] for s in summaries] == ["completed", "diverged", "completed"]
    assert "non-finite logits" in summaries[1]["diverged"] and summaries[1]["steps"] < 320
    assert summaries[0]["steps"] == summaries[2]["steps"] == 320
    assert json.loads((tmp_path / "m1" / SUMMARY_NAME).read_text())["status"] == "diverged"


def test_a_runaway_tuned_beta_stops_its_member_alone(tmp_path):
    summaries = train_population(_members(tmp_path, "total_steps=320", members=RUNAWAY_MEMBERS),
                                 callbacks=[RunawayBeta(1, at=3)])
    assert_runaway_stopped_alone(summaries, 320)


@pytest.mark.parametrize("checkpoints", [True, False])
def test_a_diverged_member_is_evaluated_at_its_last_checkpoint(tmp_path, checkpoints):
    """Its final greedy and sampled returns are its last checkpoint's, as rl-eval plays them with
    the evaluation seed; with no checkpoint written it has none. The others run on."""
    from rl.evaluate import evaluate
    from rl.evaluation import _EVAL_SEED_OFFSET

    common = ("total_steps=320", "eval.episodes=2", f"checkpoint_interval={64 if checkpoints else 0}")
    summaries = train_population(_members(tmp_path, *common, members=RUNAWAY_MEMBERS),
                                 callbacks=[RunawayBeta(1, at=5)])
    assert_runaway_stopped_alone(summaries, 320)
    for k in (0, 2):
        assert summaries[k]["eval_step"] == 320 and math.isfinite(summaries[k]["eval_return_greedy"])
    s = summaries[1]
    assert json.loads((tmp_path / "m1" / SUMMARY_NAME).read_text()) == json.loads(json.dumps(s))
    if not checkpoints:
        assert s["eval_return_greedy"] is None and s["eval_step"] is None and "eval_error" not in s
        return
    ckpt = tmp_path / "m1" / CHECKPOINT_NAME
    step = load_checkpoint(ckpt)["global_step"]
    assert 0 < step <= s["steps"] < 320 and s["eval_step"] == step
    assert s["eval_checkpoint"] == str(ckpt)
    seed = 1 + _EVAL_SEED_OFFSET
    assert s["eval_return_greedy"] == evaluate(ckpt, episodes=2, greedy=True, seed=seed)["mean"]
    assert s["eval_return_sampled"] == evaluate(ckpt, episodes=2, greedy=False, seed=seed)["mean"]


def test_a_checkpoint_that_cannot_be_evaluated_stops_nothing_else(tmp_path, monkeypatch):
    import rl.evaluate

    def broken(*args, **kwargs):
        raise ValueError("unreadable weights")

    monkeypatch.setattr(rl.evaluate, "evaluate", broken)
    common = ("total_steps=320", "eval.episodes=1", "checkpoint_interval=64")
    summaries = train_population(_members(tmp_path, *common, members=RUNAWAY_MEMBERS),
                                 callbacks=[RunawayBeta(1, at=5)])
    assert_runaway_stopped_alone(summaries, 320)
    assert summaries[1]["eval_error"] == "ValueError: unreadable weights"
    assert summaries[1]["eval_return_greedy"] is None


@pytest.mark.parametrize("policy", ["sparsemax", "softmax"])
def test_a_sparse_member_stuck_at_one_action_is_warned_about_once(tmp_path, caplog, policy):
    """Ten updates in a row at entropy 0 (fixed beta: no dual step says anything) give one
    warning naming the run and the way out; an update with entropy resets the count. Softmax
    never has entropy 0 with finite logits and is never warned about."""
    from rl.trainer import _DEAD_SUPPORT_UPDATES

    trainer = Trainer(tiny(f"policy={policy}", "beta=0.0"), tmp_path)
    try:
        zeros = [0.0] * _DEAD_SUPPORT_UPDATES
        # one short of the count, a reset, then twice past it (a wider state between the two:
        # the run was warned already)
        entropies = zeros[1:] + [0.1] + zeros + [0.1] + zeros
        warned_at = []
        with caplog.at_level("WARNING", logger="rl.trainer"):
            for i, entropy in enumerate(entropies):
                before = len(caplog.records)
                assert trainer._step_coefficients(0, entropy, 1.0) is True
                warned_at += [i for r in caplog.records[before:] if "one-action support" in r.getMessage()]
        if policy == "softmax":
            assert warned_at == []
            return
        assert warned_at == [2 * _DEAD_SUPPORT_UPDATES - 1]
        message = next(r.getMessage() for r in caplog.records if "one-action support" in r.getMessage())
        assert str(tmp_path) in message and "policy.temperature" in message
        assert trainer.members[0].status == "running"
    finally:
        trainer.close()


@pytest.mark.parametrize("entropy, says_dead", [(0.0, True), (0.2, False)])
def test_a_runaway_at_entropy_zero_says_a_bound_does_not_revive_the_policy(tmp_path, entropy, says_dead):
    # A sparse policy at entropy 0 has a one-action support and no actor gradient: the reason
    # must not suggest that bounding beta fixes it.
    trainer = Trainer(tiny("policy=sparsemax", "beta=0.1", "beta_schedule.target_entropy=0.5"), tmp_path)
    try:
        m = trainer.members[0]
        m.beta_coef.log_value = math.log(float(torch.finfo(torch.float32).max)) + 1.0
        assert trainer._step_coefficients(0, entropy, 1.0) is False
        assert m.status == "diverged" and "beta_schedule.max" in m.diverged_reason
        assert ("no actor gradient" in m.diverged_reason) is says_dead
    finally:
        trainer.close()


def test_members_sharing_a_mapping_share_one_ops_call_whatever_their_beta(tmp_path, monkeypatch):
    calls = []
    loss = ops.ppo_loss

    def spy(logits, *args, **kwargs):
        beta = kwargs["beta"]
        calls.append((kwargs["alpha"], beta if isinstance(beta, float) else sorted(set(beta.tolist())),
                      logits.shape[0]))
        return loss(logits, *args, **kwargs)

    monkeypatch.setattr(ops, "ppo_loss", spy)
    members = _members(tmp_path, "total_steps=64", "log_interval=1", members=(
        ("seed=0", "beta=0.1"), ("seed=1", "beta=0.2"), ("seed=2", "beta=0.1", "policy=sparsemax"),
        ("seed=3", "beta=0.1", "policy=sparsemax")))
    train_population(members)
    # 2 updates x 2 epochs x 2 minibatches, one call per mapping, logging updates included
    assert len(calls) == 2 * 2 * 2 * 2
    softmax = [c for c in calls if c[0] == 1.0]
    sparsemax = [c for c in calls if c[0] == 2.0]
    assert len(softmax) == len(sparsemax) == 8 and all(c[2] == 2 * 16 for c in calls)
    assert all(c[1] == pytest.approx([0.1, 0.2]) for c in softmax)  # per-row beta
    assert all(c[1] == 0.1 for c in sparsemax)  # one beta: ops' scalar path


KILLED = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from rl_helpers import tiny
from rl.callbacks import Callback
from rl.population import Member, train_population

class KillMidUpdate(Callback):
    def on_rollout_end(self, trainer):  # after update 3's checkpoint, during update 4
        if trainer.members[0].update == 3:
            os.kill(os.getpid(), signal.SIGKILL)

members = [Member(tiny(*{common!r}, *own), {root!r} + "/m" + str(i)) for i, own in enumerate({own!r})]
train_population(members, callbacks=[KillMidUpdate()])
"""


def test_a_killed_population_resumes_every_member_exactly(tmp_path):
    from pathlib import Path

    common = ["total_steps=256", "exact_env_resume=true", "checkpoint_interval=32"]
    own = [list(m) for m in MEMBERS]
    full = [Member(tiny(*common, *o), tmp_path / "full" / f"m{i}") for i, o in enumerate(own)]
    train_population(full)

    split_root = tmp_path / "split"
    script = KILLED.format(tests=str(Path(__file__).parent), common=common, own=own, root=str(split_root))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    for i in range(3):
        assert load_checkpoint(split_root / f"m{i}" / CHECKPOINT_NAME)["global_step"] == 96
        assert not (split_root / f"m{i}" / SUMMARY_NAME).exists()

    from rl.population import prepare_member

    resumed = [prepare_member(tiny(*common, *o), split_root / f"m{i}") for i, o in enumerate(own)]
    assert all(m.resume is not None for m in resumed)
    summaries = train_population(resumed)
    assert [s["status"] for s in summaries] == ["completed"] * 3
    for i in range(3):
        a = load_checkpoint(tmp_path / "full" / f"m{i}" / CHECKPOINT_NAME)
        b = load_checkpoint(split_root / f"m{i}" / CHECKPOINT_NAME)
        for name in a["model"]:
            assert torch.equal(a["model"][name], b["model"][name]), (i, name)
        full_tb, split_tb = scalars(tmp_path / "full" / f"m{i}"), scalars(split_root / f"m{i}")
        for tag in ("losses/total", "entropy/mean", "policy/beta", "charts/episodic_return"):
            assert full_tb[tag] == split_tb[tag], (i, tag)
    np.testing.assert_equal(summaries[1]["episodes"], json.loads(
        (tmp_path / "full" / "m1" / SUMMARY_NAME).read_text())["episodes"])


def test_population_cli_config_is_a_single_runs(tmp_path):
    """A member's config.yaml is the resolved config of the same single run."""
    from rl.population import prepare_member

    cfg = compose("seed=3", "beta=0.01")
    member = prepare_member(cfg, tmp_path / "run")
    assert member is not None and member.resume is None
    assert (tmp_path / "run" / "config.yaml").read_text().count("seed: 3") == 1


@pytest.mark.parametrize("space, kwargs", [
    (gym.spaces.Box(-1.0, 1.0, (6,), np.float32), {"hidden_sizes": (16, 8), "activation": "relu"}),
    (gym.spaces.Box(-1.0, 1.0, (6,), np.float32), {"hidden_sizes": (16,), "shared": True}),
    (gym.spaces.Discrete(5), {"hidden_sizes": (8,)}),
    (gym.spaces.Box(0, 1, (10, 10, 4), bool), {"network": "minatar_cnn", "hidden_sizes": ()}),
    (gym.spaces.Box(0, 255, (4, 36, 36), np.uint8), {"network": "nature_cnn", "hidden_sizes": (),
                                                      "shared": True}),
], ids=["mlp", "shared", "one-hot", "minatar", "nature"])
def test_the_stacked_forward_and_gradient_are_each_members_own(space, kwargs):
    """rl.stacked runs K networks as one batched computation (batched matmuls, convolutions per
    member on the CPU): logits, values and parameter gradients equal each network's own."""
    from rl.stacked import StackedNetwork

    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(ActorCritic(space, 4, **kwargs))
    stacked = StackedNetwork(nets)
    assert stacked.batched
    obs = torch.stack([torch.as_tensor(np.stack([space.sample() for _ in range(7)])) for _ in range(3)])
    logits, values = stacked(obs)
    (logits.square().sum() + values.sum()).backward()
    for k, net in enumerate(nets):
        lk, vk = net(obs[k])
        torch.testing.assert_close(logits[k], lk, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(values[k], vk, rtol=1e-5, atol=1e-6)
        (lk.square().sum() + vk.sum()).backward()
        params = dict(net.named_parameters())
        for name, (a, b, shape) in stacked.layout.items():
            torch.testing.assert_close(stacked.flat.grad[k, a:b].view(shape), params[name].grad,
                                       rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        state = stacked.member_state_dict(k)
        assert set(state) == set(net.state_dict())


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "per-member"])
@pytest.mark.parametrize("stride, padding, dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2)])
def test_stacked_conv2d_is_each_members_convolution_in_both_forms(grouped, stride, padding, dilation):
    """rl.stacked.stacked_conv2d: the grouped form (CUDA's) and the per-member form (the CPU's)
    give each member's own convolution and its input, weight and bias gradients (float64)."""
    from rl.stacked import stacked_conv2d

    gen = torch.Generator().manual_seed(11)
    K, B, C, out = 3, 5, 4, 6
    x = torch.randn(K, B, C, 9, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(K, out, C, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(K, out, generator=gen, dtype=torch.float64, requires_grad=True)
    y = stacked_conv2d(x, w, b, (stride, stride), (padding, padding), (dilation, dilation), grouped=grouped)
    upstream = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    gx, gw, gb = torch.autograd.grad((y * upstream).sum(), (x, w, b))
    for k in range(K):
        xk, wk, bk = (t.detach()[k].clone().requires_grad_() for t in (x, w, b))
        yk = torch.nn.functional.conv2d(xk, wk, bk, stride=stride, padding=padding, dilation=dilation)
        torch.testing.assert_close(y[k], yk)
        rk = torch.autograd.grad((yk * upstream[k]).sum(), (xk, wk, bk))
        for got, want in zip((gx[k], gw[k], gb[k]), rk, strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_the_stacked_optimizer_steps_each_row_as_torch_does_with_its_own_rate(name):
    """rl.stacked.StackedOptimizer: row k follows torch.optim.Adam / RMSprop at its own learning
    rate; an inactive row (a member stopped by its target KL, finished or diverged) is untouched,
    moments and step count included."""
    from rl.stacked import StackedOptimizer

    gen = torch.Generator().manual_seed(4)
    flat = torch.nn.Parameter(torch.randn(3, 50, generator=gen, dtype=torch.float64))
    flat.grad = torch.zeros_like(flat)
    rows = [torch.nn.Parameter(flat.detach()[k].clone()) for k in range(3)]
    lrs = [1e-2, 3e-3, 5e-2]
    make = (lambda p, lr: torch.optim.Adam([p], lr=lr, eps=1e-5)) if name == "adam" else (
        lambda p, lr: torch.optim.RMSprop([p], lr=lr, alpha=0.99, eps=1e-5))
    refs = [make(p, lr) for p, lr in zip(rows, lrs, strict=True)]
    opt = StackedOptimizer(name, flat, adam_eps=1e-5, rmsprop_eps=1e-5)
    for step in range(6):
        grad = torch.randn(3, 50, generator=gen, dtype=torch.float64)
        active = torch.tensor([True, step % 2 == 0, True])
        flat.grad.copy_(grad)
        opt.step(torch.tensor(lrs, dtype=torch.float64), active)
        for k in range(3):
            if bool(active[k]):
                rows[k].grad = grad[k].clone()
                refs[k].step()
    for k in range(3):
        torch.testing.assert_close(flat.detach()[k], rows[k].detach(), rtol=1e-12, atol=1e-12)
    assert opt.member_state(1)["step"] == 3 and opt.member_state(0)["step"] == 6
