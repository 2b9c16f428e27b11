"""SAC populations (rl/sac.py with members, rl/stacked.py's QNetwork stack, rl/replay.py's
member columns): members are independent runs trained as one batched computation.

* Member k's critic and actor losses and gradients on a batch equal those of the single run of
  its config (same seed, the same batch), and a float64 autograd reference of the textbook losses
  (independent mapping oracles), for members mixing softmax / entmax-1.5 / sparsemax, a
  temperature, a target entropy, learning rates, and two members sharing a mapping (per-row beta).
* A population of one is the single run; different seeds give different trajectories; every
  member writes an ordinary run directory; a diverging member stops alone; a killed population
  resumes every member exactly (replay buffers included).
* The replay buffer keeps members apart; the stacked critics are each network's own.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from rl_helpers import (
    RUNAWAY_MEMBERS,
    MaskedEnv,
    Returns,
    RunawayBeta,
    assert_runaway_stopped_alone,
    assert_same,
    entropy_oracle,
    probs_oracle,
    registered,
    scalars,
)
from test_sac import sac_cfg

from rl.callbacks import Callback
from rl.checkpoint import load_checkpoint
from rl.networks import QNetwork
from rl.population import Member, population_key, prepare_member, train_population
from rl.replay import ReplayBatch, ReplayBuffer
from rl.sac import SACTrainer, replay_path
from rl.trainer import CHECKPOINT_NAME, SUMMARY_NAME

MEMBERS = (  # members that differ in everything a SAC member may differ in
    ("seed=0", "policy=softmax", "beta=0.1"),
    ("seed=1", "policy=softmax", "beta=0.3", "algo.learning_rate=0.002", "algo.q_learning_rate=0.0005"),
    ("seed=2", "policy=entmax15", "beta=0.05", "policy.temperature=0.7"),
    ("seed=3", "policy=sparsemax", "beta=0.2", "beta_schedule.target_entropy=0.5"),
)
MASKED_ENV = "entropy-rl-test/MaskedSACPopulation-v0"


def _members(root, *common, members=MEMBERS):
    """Members of ``members``' own overrides after ``common``; beta is fixed unless a member
    sets a target entropy (the CartPole preset tunes it to 0.3)."""
    return [Member(sac_cfg("beta_schedule.target_entropy=null", *common, *own), root / f"m{i}")
            for i, own in enumerate(members)]


class Steps:
    """Records the (rows, P) gradients a stacked optimizer is given (after clipping)."""

    def __init__(self, optimizer):
        self.grads = []
        step = optimizer.step

        def capturing(lr, active=None):
            self.grads.append(optimizer.flat.grad.detach().clone())
            return step(lr, active)

        optimizer.step = capturing


def _member_rows(batch: ReplayBatch, k: int, B: int) -> ReplayBatch:
    rows = slice(k * B, (k + 1) * B)
    return ReplayBatch(**{name: None if v is None else v[rows] for name, v in vars(batch).items()})


def _flat_grad(module, names) -> torch.Tensor:
    params = dict(module.named_parameters())
    return torch.cat([params[n].grad.reshape(-1) for n in names])


def _reference(actor, q1, q2, q1t, q2t, q1_new, q2_new, batch, coefficients, gamma):
    """Float64 autograd of the textbook losses (module docstring of rl/sac.py) on one member's
    batch, row by row over the allowed actions, with the mapping oracles of rl_helpers: the
    critic loss and its gradient, the actor loss (-<p, q> part, entropy) and its gradient."""
    nets = [n.double() for n in (actor, q1, q2, q1t, q2t, q1_new, q2_new)]
    actor, q1, q2, q1t, q2t, q1_new, q2_new = nets
    beta, alpha, T = coefficients
    obs, nxt = batch.obs.double(), batch.next_obs.double()
    with torch.no_grad():
        z_next, qt = actor.logits(nxt), torch.minimum(q1t(nxt), q2t(nxt))
        y = []
        for i in range(len(obs)):
            ok = batch.next_masks[i].nonzero().squeeze(1)
            p = probs_oracle(z_next[i, ok], alpha, T)
            v = (p * qt[i, ok]).sum() + beta * entropy_oracle(p, alpha)
            discount = gamma if batch.discounts is None else float(batch.discounts[i])
            bonus = 0.0  # n-step: beta H at the chain's intermediate states, weighted gamma^j
            if batch.mid_obs is not None:
                z_mid = actor.logits(batch.mid_obs[i].double())
                for j, w in enumerate(batch.mid_weights[i].tolist()):
                    ok_j = batch.mid_masks[i, j].nonzero().squeeze(1)
                    bonus += w * beta * float(entropy_oracle(probs_oracle(z_mid[j, ok_j], alpha, T), alpha))
            y.append(float(batch.rewards[i]) + bonus
                     + discount * (0.0 if bool(batch.terminated[i]) else float(v)))
        y = torch.tensor(y, dtype=torch.float64)
    a = batch.actions.unsqueeze(1)
    q_loss = sum(((q(obs).gather(1, a).squeeze(1) - y) ** 2).mean() for q in (q1, q2))
    q_loss.backward()
    with torch.no_grad():
        q_pi = torch.minimum(q1_new(obs), q2_new(obs))
    z = actor.logits(obs)
    pol, ent = [], []
    for i in range(len(obs)):
        ok = batch.masks[i].nonzero().squeeze(1)
        p = probs_oracle(z[i, ok], alpha, T)
        pol.append(-(p * q_pi[i, ok]).sum())
        ent.append(entropy_oracle(p, alpha))
    pol, ent = torch.stack(pol).mean(), torch.stack(ent).mean()
    (pol - beta * ent).backward()
    return float(q_loss.detach()), float(pol.detach()), float(ent.detach())


@pytest.mark.parametrize("td_steps", [1, 3])
def test_each_members_losses_and_gradients_are_its_single_runs(tmp_path, td_steps):
    B = 16
    common = ("total_steps=400", "algo.max_grad_norm=0", f"env.id={MASKED_ENV}", "env.solved_return=null",
              "log_interval=1", f"algo.td_steps={td_steps}")
    with registered(MASKED_ENV, MaskedEnv, kwargs={"where": "obs", "allowed": (2, 4)}):
        pop = SACTrainer(members=_members(tmp_path / "pop", *common))
        singles = [SACTrainer(m.cfg, tmp_path / f"single{k}")
                   for k, m in enumerate(_members(tmp_path, *common))]
    try:
        pop.train(stop_at_step=60)  # the warm-up only: no gradient step yet
        assert pop.gradient_steps_done == 0 and pop.buffer.masks is not None
        batch = pop.buffer.sample(B, [m.perm_gen for m in pop.members], td_steps, pop.algo.gamma)
        assert not bool(batch.masks.all())
        if td_steps > 1:  # chains of every length, the bonus weights of the longer ones non-zero
            m = torch.log(batch.discounts.double()) / math.log(pop.algo.gamma)
            assert set(m.round().int().tolist()) == {1, 2, 3}
            assert bool((batch.mid_weights > 0).any()) and not bool(batch.mid_masks.all())
        pop.buffer.sample = lambda *args: batch
        q_steps, actor_steps = Steps(pop.q_optimizer), Steps(pop.actor_optimizer)
        got = pop._gradient_step(want_stats=True)
        (q_grad,), (actor_grad,) = q_steps.grads, actor_steps.grads
        K = pop.K
        for k, single in enumerate(singles):
            m = single.members[0]
            # the same initial networks as member k (the same seed)
            assert_same(single.net.member_state_dict(0), load_checkpoint(
                tmp_path / "pop" / f"m{k}" / CHECKPOINT_NAME)["model"])
            own = _member_rows(batch, k, B)
            single.buffer.sample = lambda *args, own=own: own
            before = [single.member_network(0)] + [
                copy.deepcopy(n) for n in (single.q1, single.q2, single.q1_target, single.q2_target)]
            coefficients = (m.beta_coef.value, m.alpha, m.temperature_coef.value)  # those of the step
            sq, sa = Steps(single.q_optimizer), Steps(single.actor_optimizer)
            want = single._gradient_step(want_stats=True)[0]
            (sq_grad,), (sa_grad,) = sq.grads, sa.grads
            for tag in ("losses/q", "losses/policy", "entropy/mean", "grad_norm/policy", "grad_norm/entropy",
                        "grad_norm/value", "grad_norm/actor", "q/mean", "q/target", "policy/support_size"):
                assert got[k][tag] == pytest.approx(want[tag], rel=2e-5, abs=1e-7), (k, tag)
            torch.testing.assert_close(q_grad[[k, K + k]], sq_grad, rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(actor_grad[k], sa_grad[0], rtol=1e-4, atol=1e-7)
            assert pop.members[k].beta_coef.value == pytest.approx(m.beta_coef.value, rel=1e-6)
            # and both are the float64 textbook losses' gradients
            q_loss, pol, ent = _reference(*before, single.q1, single.q2, own, coefficients, single.algo.gamma)
            assert got[k]["losses/q"] == pytest.approx(q_loss, rel=1e-4)
            assert got[k]["losses/policy"] == pytest.approx(pol, rel=1e-4, abs=1e-6)
            assert got[k]["entropy/mean"] == pytest.approx(ent, rel=1e-4)
            names = list(pop.q_net.layout)
            want_q = torch.stack([_flat_grad(before[1], names), _flat_grad(before[2], names)])
            scale = float(want_q.abs().max())
            torch.testing.assert_close(q_grad[[k, K + k]].double(), want_q, rtol=2e-4, atol=2e-6 * scale)
            want_a = _flat_grad(before[0], list(pop.net.layout))
            assert float(want_a.norm()) > 0
            torch.testing.assert_close(actor_grad[k].double(), want_a, rtol=2e-4,
                                       atol=2e-6 * float(want_a.abs().max()))
        # the target-entropy member's beta moved (one dual step), the fixed ones did not
        assert pop.members[3].beta_coef.value != 0.2 and pop.members[0].beta_coef.value == 0.1
        assert not torch.allclose(actor_grad[0], actor_grad[1])
    finally:
        pop.close()
        for s in singles:
            s.close()


def test_members_sharing_a_mapping_share_one_ops_call_whatever_their_beta(tmp_path, monkeypatch):
    import ops

    calls = []
    loss = ops.soft_policy_loss

    def spy(logits, q, beta, alpha, *args, **kwargs):
        betas = beta if isinstance(beta, float) else sorted(set(beta.tolist()))
        calls.append((alpha, betas, logits.shape[0]))
        return loss(logits, q, beta, alpha, *args, **kwargs)

    monkeypatch.setattr(ops, "soft_policy_loss", spy)
    members = _members(tmp_path, "total_steps=72", members=(
        ("seed=0", "beta=0.1"), ("seed=1", "beta=0.2"), ("seed=2", "beta=0.1", "policy=sparsemax"),
        ("seed=3", "beta=0.1", "policy=sparsemax")))
    train_population(members)
    # loop iterations at env steps 64, 68, 72 of two gradient steps: one call per mapping each
    assert len(calls) == 3 * 2 * 2 and all(c[2] == 2 * 16 for c in calls)
    assert [c[1] for c in calls if c[0] == 1.0] == [pytest.approx([0.1, 0.2])] * 6  # per-row beta
    assert [c[1] for c in calls if c[0] == 2.0] == [0.1] * 6  # one beta: ops' scalar path


def test_population_of_one_is_the_single_run(tmp_path):
    cfg = sac_cfg("total_steps=160", "beta=0.1", "policy=entmax15", "beta_schedule.target_entropy=0.5")
    single = SACTrainer(cfg, tmp_path / "single")
    try:
        summary = single.train()
        state = single.state_dict()
    finally:
        single.close()
    (pop_summary,) = train_population([Member(cfg, tmp_path / "pop")])
    saved = load_checkpoint(tmp_path / "pop" / CHECKPOINT_NAME)
    for key in ("config", "wall_time"):
        state.pop(key), saved.pop(key)
    saved.pop("format")  # what save_checkpoint adds
    assert_same(state, saved)
    for key in ("final_mean_return", "episodes", "steps", "updates", "status", "population_size"):
        assert pop_summary[key] == summary[key], key


def test_members_follow_their_own_trajectories_and_write_ordinary_runs(tmp_path):
    returns = Returns()
    members = [prepare_member(sac_cfg("total_steps=200", "log_interval=5", f"seed={s}"), tmp_path / f"m{i}")
               for i, s in enumerate((0, 1, 0))]
    assert len({population_key(m.cfg) for m in members}) == 1
    trainer = SACTrainer(members=members, callbacks=[returns])
    try:
        assert trainer.envs.num_envs == 3 * 2  # the K x N envs step as one vector env
        assert trainer.buffer.obs.shape[1] == 3 * 2
        summaries = trainer.train()
    finally:
        trainer.close()
    assert [s["status"] for s in summaries] == ["completed"] * 3
    assert returns.by_member[0] != returns.by_member[1]
    # the same seed in another slot still gets envs of its own (another part of the vector env)
    assert returns.by_member[0] != returns.by_member[2]
    for i, s in enumerate(summaries):
        run = tmp_path / f"m{i}"
        written = json.loads((run / SUMMARY_NAME).read_text())
        assert written == json.loads(json.dumps(s)) and written["population_size"] == 3
        assert written["algo"] == "sac" and written["steps"] == 200
        assert (run / "config.yaml").is_file() and (run / CHECKPOINT_NAME).is_file()
        assert replay_path(run / CHECKPOINT_NAME).is_file()
        tags = scalars(run)
        assert "losses/q" in tags and "charts/episodic_return" in tags
        # its replay buffer holds its own columns only
        replay = load_checkpoint(replay_path(run / CHECKPOINT_NAME))["buffer"]
        assert replay["obs"].shape[1] == 2
    # seeds 0 in slots 0 and 2: the same networks at the start, different ones after training
    a, b = (load_checkpoint(tmp_path / f"m{i}" / CHECKPOINT_NAME)["model"] for i in (0, 2))
    assert any(not torch.equal(a[n], b[n]) for n in a)


class PoisonTarget(Callback):
    """Writes NaN into member 1's first target critic at loop iteration ``at``."""

    def __init__(self, at: int):
        self.at = at

    def on_rollout_end(self, trainer):
        if trainer.members[1].update == self.at:
            trainer.q_target.flat.data[1] = float("nan")


def test_a_diverging_member_stops_alone(tmp_path):
    # members 0 and 1 share a mapping (one ops call): member 1's NaN must not stop member 0.
    # K vector envs (exact_env_resume): in one shared vector env the reset draws come from one RNG,
    # so the diverged member's (now random) episodes would move the others' start states.
    own = (("seed=0", "beta=0.1"), ("seed=1", "beta=0.2"), ("seed=2", "policy=sparsemax", "beta=0.1"))
    common = ("total_steps=160", "exact_env_resume=true")
    clean = train_population(_members(tmp_path / "clean", *common, members=own))
    summaries = train_population(_members(tmp_path / "poisoned", *common, members=own),
                                 callbacks=[PoisonTarget(at=24)])
    assert [s["status"] for s in summaries] == ["completed", "diverged", "completed"]
    assert "non-finite target Q values or logits" in summaries[1]["diverged"]
    assert summaries[1]["steps"] < 160 and summaries[0]["steps"] == summaries[2]["steps"] == 160
    assert json.loads((tmp_path / "poisoned" / "m1" / SUMMARY_NAME).read_text())["status"] == "diverged"
    # member 2 (a group of its own) trained as if nothing had happened
    assert summaries[2]["episodes"] == clean[2]["episodes"]
    a, b = (load_checkpoint(tmp_path / run / "m2" / CHECKPOINT_NAME) for run in ("clean", "poisoned"))
    for key in ("model", "q1", "q2"):
        assert_same(a[key], b[key], key)


def test_a_runaway_tuned_beta_stops_its_member_alone(tmp_path):
    # the benchmark's SAC population failed whole on it before
    summaries = train_population(_members(tmp_path, "total_steps=160", members=RUNAWAY_MEMBERS),
                                 callbacks=[RunawayBeta(1, at=24)])
    assert_runaway_stopped_alone(summaries, 160)


def test_a_diverged_member_is_evaluated_at_its_last_checkpoint(tmp_path):
    from rl.evaluate import evaluate
    from rl.evaluation import _EVAL_SEED_OFFSET

    common = ("total_steps=160", "eval.episodes=2", "checkpoint_interval=32")
    summaries = train_population(_members(tmp_path, *common, members=RUNAWAY_MEMBERS),
                                 callbacks=[RunawayBeta(1, at=24)])
    assert_runaway_stopped_alone(summaries, 160)
    s, ckpt = summaries[1], tmp_path / "m1" / CHECKPOINT_NAME
    step = load_checkpoint(ckpt)["global_step"]
    assert 0 < step <= s["steps"] and s["eval_step"] == step
    seed = 1 + _EVAL_SEED_OFFSET
    assert s["eval_return_greedy"] == evaluate(ckpt, episodes=2, greedy=True, seed=seed)["mean"]
    assert s["eval_return_sampled"] == evaluate(ckpt, episodes=2, greedy=False, seed=seed)["mean"]


KILLED = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_sac import sac_cfg
from rl.callbacks import Callback
from rl.population import Member, train_population

class KillMidUpdate(Callback):
    def on_rollout_end(self, trainer):  # after the checkpoint at env step 96
        if trainer.members[0].global_step == 112:
            os.kill(os.getpid(), signal.SIGKILL)

members = [Member(sac_cfg(*{common!r}, *own), {root!r} + "/m" + str(i)) for i, own in enumerate({own!r})]
train_population(members, callbacks=[KillMidUpdate()])
"""


def test_a_killed_population_resumes_every_member_exactly(tmp_path):
    common = ["total_steps=200", "exact_env_resume=true", "checkpoint_interval=32", "log_interval=2"]
    own = [list(m) for m in MEMBERS[1:]]
    full = [Member(sac_cfg(*common, *o), tmp_path / "full" / f"m{i}") for i, o in enumerate(own)]
    train_population(full)

    split_root = tmp_path / "split"
    script = KILLED.format(tests=str(Path(__file__).parent), common=common, own=own, root=str(split_root))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    for i in range(len(own)):
        assert load_checkpoint(split_root / f"m{i}" / CHECKPOINT_NAME)["global_step"] == 96
        assert replay_path(split_root / f"m{i}" / CHECKPOINT_NAME).is_file()
        assert not (split_root / f"m{i}" / SUMMARY_NAME).exists()

    resumed = [prepare_member(sac_cfg(*common, *o), split_root / f"m{i}") for i, o in enumerate(own)]
    assert all(m.resume is not None for m in resumed)
    summaries = train_population(resumed)
    assert [s["status"] for s in summaries] == ["completed"] * len(own)
    for i in range(len(own)):
        a = load_checkpoint(tmp_path / "full" / f"m{i}" / CHECKPOINT_NAME)
        b = load_checkpoint(split_root / f"m{i}" / CHECKPOINT_NAME)
        for key in ("config", "wall_time"):
            a.pop(key), b.pop(key)
        assert_same(a, b, f"member {i}")
        assert_same(load_checkpoint(replay_path(tmp_path / "full" / f"m{i}" / CHECKPOINT_NAME)),
                    load_checkpoint(replay_path(split_root / f"m{i}" / CHECKPOINT_NAME)))
        full_tb, split_tb = scalars(tmp_path / "full" / f"m{i}"), scalars(split_root / f"m{i}")
        for tag in ("losses/q", "losses/policy", "entropy/mean", "policy/beta", "charts/episodic_return"):
            assert full_tb[tag] == split_tb[tag], (i, tag)


def test_the_replay_buffer_keeps_members_apart_and_rotates_a_loaded_member():
    """Member k's samples come from its own columns, drawn by its own generator; a member's saved
    buffer loaded beside others at another head samples the same transitions."""
    K, N, L = 3, 2, 6
    buf = ReplayBuffer(N * (L - 1), N, (2,), torch.float32, 3, False, torch.device("cpu"), members=K)
    member = torch.arange(K).repeat_interleave(N).float()

    def obs(t):  # [member, step]
        return torch.stack([member, torch.full((K * N,), float(t))], 1)

    buf.start(obs(0), None)
    for t in range(1, 9):
        valid = np.ones(K * N, dtype=bool)
        valid[N] = t % 3 != 0  # member 1's first env: a reset-only step now and then
        buf.add(torch.zeros(K * N, dtype=torch.int64), member, torch.zeros(K * N, dtype=torch.bool), valid,
                obs(t), None)
    assert list(buf.size) == [L - 1] * K and buf.num_transitions[0] == N * (L - 1) > buf.num_transitions[1]
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    batch = buf.sample(50, gens)
    for k in range(K):
        rows = slice(50 * k, 50 * (k + 1))
        assert bool((batch.obs[rows, 0] == k).all()) and bool((batch.rewards[rows] == k).all())
        assert torch.equal(batch.next_obs[rows, 1], batch.obs[rows, 1] + 1)
    # a generator per member: member 1's draws do not depend on the others'
    alone = buf.sample(50, [None, torch.Generator().manual_seed(6), None])
    assert torch.equal(alone.obs[50:100], batch.obs[50:100])
    # n-step chains stay in the member's own env streams, members without a generator included
    chains = buf.sample(50, [None, torch.Generator().manual_seed(6), None], 3, 0.5)
    assert torch.equal(chains.obs[50:100], batch.obs[50:100])
    assert bool((chains.next_obs[50:100, 0] == 1).all()) and bool((chains.mid_obs[50:100, :, 0] == 1).all())
    steps = chains.next_obs[50:100, 1] - chains.obs[50:100, 1]
    assert set(steps.int().tolist()) <= {1, 2, 3} and bool((chains.discounts[50:100] == 0.5 ** steps).all())
    # member 1 saved, loaded into a two-member buffer whose head is elsewhere
    saved = buf.member_state_dict(1)
    other = ReplayBuffer(N * (L - 1), N, (2,), torch.float32, 3, False, torch.device("cpu"), members=2)
    other.start(torch.zeros(2 * N, 2), None)
    for _ in range(3):
        other.add(torch.zeros(2 * N, dtype=torch.int64), torch.zeros(2 * N),
                  torch.zeros(2 * N, dtype=torch.bool), np.ones(2 * N, dtype=bool),
                  torch.zeros(2 * N, 2), None)
    assert other.head != buf.head
    other.load_member_state_dict(0, saved)
    again = other.sample(50, [torch.Generator().manual_seed(6), None])
    assert torch.equal(again.obs[:50], batch.obs[50:100])
    assert torch.equal(again.next_obs[:50], batch.next_obs[50:100])


@pytest.mark.parametrize("network", ["mlp", "minatar_cnn"])
def test_the_stacked_critics_are_each_networks_own(network):
    import gymnasium as gym

    from rl.stacked import StackedNetwork

    space = (gym.spaces.Box(-1.0, 1.0, (6,), np.float32) if network == "mlp"
             else gym.spaces.Box(0, 1, (10, 10, 4), bool))
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(QNetwork(space, 5, hidden_sizes=(16,), network=network))
    copies = [QNetwork(space, 5, hidden_sizes=(16,), network=network) for _ in nets]
    for c, n in zip(copies, nets, strict=True):
        c.load_state_dict(n.state_dict())
    stacked = StackedNetwork(nets, views=True)
    assert stacked.batched and stacked.is_q
    obs = torch.stack([torch.as_tensor(np.stack([space.sample() for _ in range(7)])) for _ in range(3)])
    q = stacked(obs)
    q.square().sum().backward()
    for k, net in enumerate(copies):
        qk = net(obs[k])
        torch.testing.assert_close(q[k], qk, rtol=1e-5, atol=1e-6)
        qk.square().sum().backward()
        params = dict(net.named_parameters())
        for name, (a, b, shape) in stacked.layout.items():
            torch.testing.assert_close(stacked.flat.grad[k, a:b].view(shape), params[name].grad,
                                       rtol=1e-4, atol=1e-5)
        # the kept member modules are live views of the rows
        torch.testing.assert_close(stacked.members[k](obs[k]), qk.detach(), rtol=1e-5, atol=1e-6)
        assert set(stacked.member_state_dict(k)) == set(net.state_dict())
    target = StackedNetwork([QNetwork(space, 5, hidden_sizes=(16,), network=network) for _ in nets],
                            views=True, trainable=False)
    assert target.flat.grad is None and not target.flat.requires_grad
    target.flat.data.lerp_(stacked.flat.data, 1.0)
    torch.testing.assert_close(target(obs), q.detach())


def test_a_population_above_the_memory_limit_is_refused(tmp_path):
    # one run's buffer fits (0.03 GiB), three together do not
    members = _members(tmp_path, "algo.buffer_size=1000000", "algo.max_buffer_gb=0.05",
                       members=(("seed=0",), ("seed=1",), ("seed=2",)))
    with pytest.raises(ValueError, match=r"algo\.buffer_size=1000000 is not allowed: the replay buffers of "
                                         r"its 3 runs need 0\.\d+ GiB .*algo\.max_buffer_gb=0\.05"):
        SACTrainer(members=members)


def test_a_checkpoint_of_the_single_run_trainer_before_populations_resumes(tmp_path):
    """That trainer saved torch.optim.Adam state_dicts (actor: the policy path's parameters;
    critics: Q_1's, then Q_2's); a resume converts them to the member's optimizer rows."""
    from rl.checkpoint import save_checkpoint

    cfg = sac_cfg("total_steps=96")
    first = SACTrainer(cfg, tmp_path / "run")
    try:
        first.train()
        state = first.state_dict()
        gen = torch.Generator().manual_seed(0)
        adams = {}
        for key, params in (("actor_optimizer", first.actor_params),
                            ("q_optimizer", [*first.q1.parameters(), *first.q2.parameters()])):
            copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
            opt = torch.optim.Adam(copies, lr=1e-3, eps=1e-4)
            for _ in range(3):
                for c in copies:
                    c.grad = torch.randn(c.shape, generator=gen)
                opt.step()
            adams[key] = opt.state_dict()
    finally:
        first.close()
    state.update(adams)
    path = tmp_path / "run" / CHECKPOINT_NAME
    save_checkpoint(path, state)
    second = SACTrainer(sac_cfg("total_steps=128"), tmp_path / "run", resume=str(path))
    try:
        for key, opt, rows in (("actor_optimizer", second.actor_optimizer, [0]),
                               ("q_optimizer", second.q_optimizer, [0, 1])):
            per_param = adams[key]["state"]
            n = len(per_param) // len(rows)
            assert list(opt.steps) == [3.0] * len(rows)
            for r in rows:
                for moment in ("exp_avg", "exp_avg_sq"):
                    want = torch.cat([per_param[i][moment].reshape(-1) for i in range(r * n, (r + 1) * n)])
                    assert torch.equal(getattr(opt, moment)[r], want), (key, r, moment)
        assert second.train()["status"] == "completed"
    finally:
        second.close()
