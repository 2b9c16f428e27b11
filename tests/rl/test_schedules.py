"""Schedules, dual tuning to a target entropy, and the maximum-entropy formulas they rely on."""

from __future__ import annotations

import io
import math
import random

import pytest
import torch
from rl_helpers import entropy_oracle

import ops
from rl.config import base_schedule as Sched  # the schema's schedule node, as a dataclass
from rl.config import schedule_settings
from rl.schedules import KINDS, Coefficient, build_coefficient

ALPHAS = [1.0, 1.25, 1.5, 2.0, 3.0]


# ---------------------------------------------------------------- schedule values


def test_constant_is_start_everywhere():
    start = random.uniform(0.01, 0.1)
    c = build_coefficient(start, Sched(), 1000, "beta")
    assert c.value == start
    for s in (0, 1, 499, 1000, 5000):
        assert c.step(s) == start


@pytest.mark.parametrize(
    "kind, expected",
    [
        # start 0.08, end 0.02, horizon 1000; values at steps 0, 250, 500, 1000, 3000.
        ("linear", [0.08, 0.065, 0.05, 0.02, 0.02]),
        ("cosine", [0.08, 0.02 + 0.06 * (1 + math.cos(math.pi / 4)) / 2, 0.05, 0.02, 0.02]),
        ("exponential", [0.08, 0.08 * 0.25 ** 0.25, 0.04, 0.02, 0.02]),
    ],
)
def test_schedule_values_at_chosen_steps(kind, expected):
    c = build_coefficient(0.08, Sched(kind=kind, end=0.02), 1000, "beta")
    got = [c.step(s) for s in (0, 250, 500, 1000, 3000)]
    assert got == pytest.approx(expected, rel=1e-12)


def test_horizon_overrides_total_steps():
    c = build_coefficient(0.1, Sched(kind="linear", end=0.0, horizon=200), 10_000, "beta")
    assert c.step(100) == pytest.approx(0.05)
    assert c.step(200) == 0.0
    assert c.step(9000) == 0.0


def test_linear_to_zero_reaches_zero_and_is_monotone():
    c = build_coefficient(0.05, Sched(kind="linear", end=0.0), 777, "beta")
    vals = [c.step(s) for s in range(0, 800, 7)]
    assert all(b <= a for a, b in zip(vals, vals[1:], strict=False))
    assert vals[0] == 0.05 and vals[-1] == 0.0


def test_piecewise_values_between_boundaries():
    c = build_coefficient(0.0, Sched(kind="piecewise", boundaries=[100, 300],
                                     values=[0.05, 0.01, 0.0]), 1000, "beta")
    assert c.value == 0.05
    steps = [0, 99, 100, 299, 300, 10_000]
    assert [c.step(s) for s in steps] == [0.05, 0.05, 0.01, 0.01, 0.0, 0.0]


def test_temperature_schedule():
    c = build_coefficient(2.0, Sched(kind="exponential", end=0.5), 400, "temperature")
    assert [c.step(s) for s in (0, 200, 400)] == pytest.approx([2.0, 1.0, 0.5])


def test_accepts_dict_and_none_and_omegaconf():
    import omegaconf
    assert build_coefficient(0.03, None, 100, "beta").step(50) == 0.03
    node = omegaconf.OmegaConf.structured(Sched(kind="piecewise", boundaries=[10], values=[0.02, 0.5]))
    c = build_coefficient(0.02, node, 100, "beta")
    assert (c.step(9), c.step(10)) == (0.02, 0.5)
    assert build_coefficient(0.02, {"kind": "linear"}, 100, "beta").step(50) == 0.01


# ---------------------------------------------------------------- validation
# The checks are the schema's (rl.config.schedule_settings); build_coefficient runs them on a
# node, and rl.config.validate on the composed config (tests/rl/test_config.py).


def test_checked_settings_are_used_as_they_are_and_nothing_else_is_taken():
    node = Sched(kind="cosine", end=0.01, horizon=600)
    settings = schedule_settings(0.05, node, 1000, "beta")
    a, b = build_coefficient(settings), build_coefficient(0.05, node, 1000, "beta")
    assert a.definition() == b.definition()
    assert [a.step(s) for s in (0, 300, 600, 900)] == [b.step(s) for s in (0, 300, 600, 900)]
    with pytest.raises(TypeError, match="ScheduleSettings"):
        Coefficient({"kind": "linear", "end": 0.01})


@pytest.mark.parametrize(
    "start, cfg, name, needle",
    [
        (0.01, Sched(kind="linear", end=-0.1), "beta", "beta_schedule.end=-0.1"),
        (0.01, Sched(end=-1.0), "beta", "beta_schedule.end=-1.0"),
        (0.01, Sched(kind="sawtooth"), "beta", "constant | linear | cosine | exponential | piecewise"),
        (0.01, Sched(target_entropy=0.0), "beta", "beta_schedule.target_entropy=0.0"),
        (0.01, Sched(target_entropy=1.0), "beta", "beta_schedule.target_entropy=1.0"),
        (0.01, Sched(target_entropy=-0.2), "beta", "(0, 1)"),
        (0.01, Sched(target_entropy=float("nan")), "beta", "beta_schedule.target_entropy"),
        (0.01, Sched(kind="piecewise", boundaries=[50, 20], values=[0.1, 0.2, 0.0]), "beta",
         "beta_schedule.boundaries=[50, 20]"),
        (0.01, Sched(kind="piecewise", boundaries=[20, 20], values=[0.1, 0.2, 0.0]), "beta",
         "strictly increasing"),
        (0.01, Sched(kind="piecewise", boundaries=[20, 50], values=[0.1, 0.0]), "beta",
         "beta_schedule.values=[0.1, 0.0]"),
        (0.01, Sched(kind="piecewise", boundaries=[], values=[]), "beta",
         "len(boundaries) + 1 = 1 values"),
        (0.01, Sched(kind="piecewise", boundaries=[0], values=[0.1, 0.0]), "beta",
         "beta_schedule.boundaries=[0]"),
        (0.01, Sched(kind="piecewise", boundaries=[20], values=[0.1, -0.1]), "beta",
         "beta_schedule.values[1]=-0.1"),
        (0.01, Sched(kind="exponential", end=0.0), "beta", "beta_schedule.end=0.0"),
        (0.0, Sched(kind="exponential", end=0.01), "beta", "beta=0.0"),
        (0.01, Sched(target_entropy=0.5, lr=0.0), "beta", "beta_schedule.lr=0.0"),
        (0.01, Sched(lr=-1.0), "beta", "beta_schedule.lr=-1.0"),
        (0.0, Sched(target_entropy=0.5), "beta", "beta=0.0"),
        (-0.01, Sched(), "beta", "beta=-0.01"),
        (0.0, Sched(), "temperature", "policy.temperature=0.0"),
        (1.0, Sched(kind="linear", end=0.0), "temperature", "temperature_schedule.end=0.0"),
        (1.0, Sched(kind="piecewise", boundaries=[5], values=[0.0, 1.0]), "temperature",
         "temperature_schedule.values[0]=0.0"),
        (0.01, Sched(kind="linear", horizon=0), "beta", "beta_schedule.horizon=0"),
        (0.01, Sched(kind="linear", end=0.0, target_entropy=0.5), "beta",
         "beta_schedule.kind='linear'"),
        (1.0, Sched(kind="cosine", end=-1.0), "temperature", "policy.temperature_schedule.end=-1.0"),
        (1.0, Sched(target_entropy=1.2), "temperature",
         "policy.temperature_schedule.target_entropy=1.2"),
    ],
)
def test_invalid_config_names_the_field(start, cfg, name, needle):
    with pytest.raises(ValueError) as err:
        build_coefficient(start, cfg, 1000, name)
    assert needle in str(err.value)


def test_constant_temperature_ignores_default_end():
    # end defaults to 0, which is not a valid temperature; a constant never reaches it.
    assert build_coefficient(1.5, Sched(), 100, "temperature").step(99) == 1.5


def test_every_kind_is_buildable():
    for kind in KINDS:
        cfg = Sched(kind=kind, end=0.01, boundaries=[10], values=[0.05, 0.02])
        assert build_coefficient(0.05, cfg, 100, "beta").step(0) == pytest.approx(0.05)


def test_target_step_requires_measurements():
    c = build_coefficient(0.01, Sched(target_entropy=0.5), 1000, "beta")
    with pytest.raises(ValueError, match="entropy_mean"):
        c.step(10)
    with pytest.raises(ValueError, match="entropy_mean=nan"):
        c.step(10, float("nan"), 0.7)
    with pytest.raises(ValueError, match="env_step=-1"):
        c.step(-1, 0.1, 0.7)


# ---------------------------------------------------------------- dual update


@pytest.mark.parametrize("name", ["beta", "temperature"])
def test_dual_step_direction_and_size(name):
    f = random.uniform(0.2, 0.8)
    lr = random.uniform(0.005, 0.1)
    h_max = random.uniform(0.1, 3.0)
    start = random.uniform(0.01, 2.0)
    c = build_coefficient(start, Sched(target_entropy=f, lr=lr), 1000, name)
    assert c.target is None and c.value == start
    # Entropy below the target: the multiplier grows, by exp(lr * (f - H / H_max)).
    h_low = random.uniform(0.0, f) * h_max
    up = c.step(8, h_low, h_max)
    assert up > start
    assert up == pytest.approx(start * math.exp(lr * (f - h_low / h_max)), rel=1e-12)
    assert c.target == pytest.approx(f * h_max)
    # Above the target: it shrinks.
    h_high = random.uniform(f, 1.0) * h_max
    down = c.step(16, h_high, h_max)
    assert down < up
    # On target: unchanged.
    assert c.step(24, f * h_max, h_max) == pytest.approx(down, rel=1e-12)


def test_dual_step_is_scale_free_across_mappings():
    # The same fraction of the maximum gives the same step whatever H_max is.
    a = build_coefficient(0.1, Sched(target_entropy=0.4), 100, "beta")
    b = build_coefficient(0.1, Sched(target_entropy=0.4), 100, "beta")
    a.step(1, 0.3 * math.log(6), math.log(6))
    b.step(1, 0.3 * ops.max_entropy(2.0, 6), ops.max_entropy(2.0, 6))
    assert a.value == pytest.approx(b.value, rel=1e-12)


def test_zero_max_entropy_leaves_value():
    c = build_coefficient(0.1, Sched(target_entropy=0.4), 100, "beta")
    assert c.step(5, 0.0, 0.0) == 0.1
    assert c.target == 0.0


@pytest.mark.parametrize("name", ["beta", "temperature"])
def test_bounds_project_the_dual_variable_and_stop_windup(name):
    f, lr, h_max = 0.5, random.uniform(0.2, 0.5), math.log(2)
    lo, hi = 0.004, 0.4
    cfg = {"target_entropy": f, "lr": lr, "min": lo, "max": hi}
    free = build_coefficient(0.02, {"target_entropy": f, "lr": lr}, 10**6, name)
    boxed = build_coefficient(0.02, cfg, 10**6, name)
    # A slack phase: the entropy sits at its maximum for 150 updates ...
    for k in range(150):
        free.step(k, h_max, h_max)
        boxed.step(k, h_max, h_max)
    assert boxed.value == pytest.approx(lo, rel=1e-12) and free.value < lo * 1e-3
    # ... then 0.2 H_max below the target: the bounded one is back at the start value long before.
    def updates_to_reach(coef, value):
        for k in range(10_000):
            if coef.value >= value:
                return k
            coef.step(150 + k, (f - 0.2) * h_max, h_max)
    boxed_k, free_k = updates_to_reach(boxed, 0.02), updates_to_reach(free, 0.02)
    assert boxed_k < 0.3 * free_k, (boxed_k, free_k)
    for k in range(1000):  # and never above the ceiling
        boxed.step(10**4 + k, 0.0, h_max)
    assert boxed.value == pytest.approx(hi, rel=1e-12)
    assert boxed.state_dict()["schedule"][f"{boxed.field}.min"] == lo


@pytest.mark.parametrize("cfg, start, needle", [
    ({"min": 0.001}, 0.01, "beta_schedule.min=0.001"),  # without a target
    ({"kind": "linear", "max": 1.0}, 0.01, "beta_schedule.max=1.0"),
    ({"target_entropy": 0.5, "min": 0.0}, 0.01, "beta_schedule.min=0.0"),
    ({"target_entropy": 0.5, "min": 0.1, "max": 0.05}, 0.07, "beta_schedule.max=0.05"),
    ({"target_entropy": 0.5, "min": 0.1}, 0.01, "beta=0.01"),
    ({"target_entropy": 0.5, "max": 0.005}, 0.01, "beta=0.01"),
])
def test_invalid_bounds_name_the_field(cfg, start, needle):
    with pytest.raises(ValueError) as err:
        build_coefficient(start, cfg, 1000, "beta")
    assert needle in str(err.value)


# ---------------------------------------------------------------- state dict


@pytest.mark.parametrize("cfg", [
    Sched(kind="cosine", end=0.001),
    Sched(kind="piecewise", boundaries=[300, 700], values=[0.04, 0.02, 0.005]),
    Sched(target_entropy=0.6, lr=0.05),
])
def test_state_dict_round_trip_continues_identically(cfg):
    gen = torch.Generator().manual_seed(random.randrange(2**31))
    entropies = torch.rand(40, generator=gen, dtype=torch.float64).tolist()
    h_max = math.log(4)

    def run(coef, idx):
        return [coef.step(25 * (i + 1), entropies[i] * h_max, h_max) for i in idx]

    full = build_coefficient(0.04, cfg, 1000, "beta")
    reference = run(full, range(40))

    first = build_coefficient(0.04, cfg, 1000, "beta")
    head = run(first, range(17))
    buf = io.BytesIO()
    torch.save({"beta": first.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["beta"]
    assert all(v is None or isinstance(v, (int, float, str, dict)) for v in state.values())

    resumed = build_coefficient(0.04, cfg, 1000, "beta")
    resumed.load_state_dict(state)
    assert resumed.value == first.value and resumed.target == first.target
    assert head + run(resumed, range(17, 40)) == reference


@pytest.mark.parametrize("saved_cfg, resumed_cfg, needle", [
    (Sched(kind="linear", end=0.0), Sched(kind="linear", end=0.01), "beta_schedule.end=0.01"),
    # horizon defaults to total_steps: extending the run would stretch the schedule
    (Sched(kind="cosine", end=0.0), Sched(kind="cosine", end=0.0, horizon=2000),
     "beta_schedule.horizon=2000"),
    (Sched(kind="piecewise", boundaries=[100], values=[0.04, 0.01]),
     Sched(kind="piecewise", boundaries=[200], values=[0.04, 0.01]), "beta_schedule.boundaries=[200]"),
    (Sched(target_entropy=0.5), Sched(target_entropy=0.4), "beta_schedule.target_entropy=0.4"),
    (Sched(target_entropy=0.5, lr=0.1), Sched(target_entropy=0.5), "beta_schedule.lr=0.01"),
    ({"target_entropy": 0.5, "min": 0.001}, {"target_entropy": 0.5}, "beta_schedule.min=None"),
])
def test_load_refuses_a_different_schedule_naming_the_field(saved_cfg, resumed_cfg, needle):
    saved = build_coefficient(0.04, saved_cfg, 1000, "beta")
    saved.step(100, 0.3, 0.7)
    state = saved.state_dict()
    with pytest.raises(ValueError) as err:
        build_coefficient(0.04, resumed_cfg, 1000, "beta").load_state_dict(state)
    assert needle in str(err.value) and "checkpoint" in str(err.value)
    build_coefficient(0.04, saved_cfg, 1000, "beta").load_state_dict(state)  # the same: accepted


def test_load_accepts_what_does_not_change_the_values():
    # A constant (and a target's start) do not depend on total_steps: a run can be extended.
    const = build_coefficient(0.03, Sched(), 1000, "beta")
    const.step(600)
    longer = build_coefficient(0.03, Sched(), 5000, "beta")
    longer.load_state_dict(const.state_dict())
    assert longer.step(4000) == 0.03
    with pytest.raises(ValueError, match="beta=0.05"):
        build_coefficient(0.05, Sched(), 1000, "beta").load_state_dict(const.state_dict())
    target = build_coefficient(0.03, Sched(target_entropy=0.5), 1000, "beta")
    target.step(64, 0.1, 0.7)
    other_start = build_coefficient(0.2, Sched(target_entropy=0.5), 5000, "beta")
    other_start.load_state_dict(target.state_dict())
    assert other_start.value == target.value and other_start.log_value == target.log_value
    # a state from before `schedule` was saved: its mode alone is checked
    old = {k: v for k, v in const.state_dict().items() if k != "schedule"}
    build_coefficient(0.05, Sched(), 1000, "beta").load_state_dict(old)


def test_target_resumed_before_any_dual_step_keeps_the_start_value_exactly():
    # exp(log(0.01)) == 0.010000000000000002: the value must come from the state, not its log
    for start in (0.01, random.uniform(0.001, 2.0)):
        c = build_coefficient(start, Sched(target_entropy=0.5), 1000, "beta")
        resumed = build_coefficient(start, Sched(target_entropy=0.5), 1000, "beta")
        resumed.load_state_dict(c.state_dict())
        assert resumed.value == start


def test_load_refuses_other_mode():
    target = build_coefficient(0.04, Sched(target_entropy=0.5), 1000, "beta")
    linear = build_coefficient(0.04, Sched(kind="linear"), 1000, "beta")
    with pytest.raises(ValueError, match="kind='target'"):
        linear.load_state_dict(target.state_dict())


# ---------------------------------------------------------------- maximum entropy (ops)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_max_entropy_closed_forms(alpha):
    for n in (1, 2, 3, 7, 100):
        want = math.log(n) if alpha == 1.0 else (1 - n ** (1 - alpha)) / (alpha * (alpha - 1))
        assert ops.max_entropy(alpha, n) == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_max_entropy_beats_every_random_simplex_point(alpha):
    gen = torch.Generator().manual_seed(random.randrange(2**31))
    for n in (2, 3, 5, 12):
        # Uniform points of the simplex (normalized exponentials = Dirichlet(1)), points near
        # the vertices (cubed), and points near the centre (exponents shrunk towards 1).
        e = -torch.rand(3, 4000, n, generator=gen, dtype=torch.float64).log()
        g = torch.cat([e[0], e[1] ** 3, 1 + 0.05 * (e[2] - 1)])
        p = g / g.sum(-1, keepdim=True)
        h = entropy_oracle(p, alpha)
        h_max = ops.max_entropy(alpha, n)
        assert float(h.max()) <= h_max + 1e-12
        # The uniform point attains it ...
        assert float(entropy_oracle(torch.full((n,), 1.0 / n, dtype=torch.float64), alpha)) == (
            pytest.approx(h_max, rel=1e-12))
        # ... and the supremum over the samples approaches it from below.
        assert float(h.max()) > h_max * 0.97


@pytest.mark.parametrize("alpha", ALPHAS)
def test_max_entropy_by_grid_search_on_small_simplices(alpha):
    # Exhaustive grid: n=2 on a 1e-4 grid, n=3 on a 1/300 grid; the argmax is the uniform point.
    p1 = torch.linspace(0, 1, 10_001, dtype=torch.float64)
    h2 = entropy_oracle(torch.stack([p1, 1 - p1], -1), alpha)
    assert float(h2.max()) == pytest.approx(ops.max_entropy(alpha, 2), rel=1e-7)
    assert float(p1[h2.argmax()]) == pytest.approx(0.5, abs=1e-4)
    k = 300
    i, j = torch.meshgrid(torch.arange(k + 1), torch.arange(k + 1), indexing="ij")
    keep = i + j <= k
    p = torch.stack([i[keep], j[keep], k - i[keep] - j[keep]], -1).to(torch.float64) / k
    h3 = entropy_oracle(p, alpha)
    assert float(h3.max()) == pytest.approx(ops.max_entropy(alpha, 3), rel=1e-9)
    assert p[h3.argmax()].tolist() == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_max_entropy_respects_masks(alpha):
    gen = torch.Generator().manual_seed(random.randrange(2**31))
    n_act = 9
    mask = torch.rand(64, n_act, generator=gen) < 0.6
    mask[torch.arange(64), torch.randint(n_act, (64,), generator=gen)] = True  # >= 1 allowed
    counts = mask.sum(-1)
    h_max = ops.max_entropy(alpha, counts)
    assert h_max.shape == (64,)
    assert h_max.tolist() == pytest.approx([ops.max_entropy(alpha, int(c)) for c in counts])
    # Equal logits on the allowed actions give the uniform policy over them: the maximum.
    logits = torch.full((64, n_act), float(torch.randn((), generator=gen)), dtype=torch.float64)
    h_uniform = ops.entropy(logits, alpha=alpha, mask=mask)
    assert h_uniform.tolist() == pytest.approx(h_max.tolist(), rel=1e-9, abs=1e-12)
    # Random logits under the same mask never exceed it.
    h_random = ops.entropy(torch.randn(64, n_act, generator=gen, dtype=torch.float64) * 3,
                           alpha=alpha, mask=mask)
    assert bool((h_random <= h_max + 1e-12).all())


@pytest.mark.parametrize("name", ["beta", "temperature"])
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
def test_dual_tuning_closed_loop_with_ops(alpha, name):
    # One state with rewards r: the best response to beta, argmax_p <p, r> + beta H_alpha(p),
    # is the mapping of r / beta (docs/DESIGN.md: p = argmax <p, z> + H(p)), i.e. ops with
    # temperature=beta; the same curve H(T) drives a scheduled temperature. Iterating the dual
    # update against it must settle the entropy at the target, for every mapping, with a mask.
    seed = random.randrange(2**31)
    gen = torch.Generator().manual_seed(seed)
    n_act = 6
    rewards = torch.rand(n_act, generator=gen, dtype=torch.float64) * 2
    mask = torch.ones(n_act, dtype=torch.bool)
    mask[int(torch.randint(n_act, (), generator=gen))] = False
    f = float(torch.empty(()).uniform_(0.3, 0.7, generator=gen))
    start = float(torch.empty(()).uniform_(0.01, 3.0, generator=gen))
    c = build_coefficient(start, Sched(target_entropy=f, lr=0.2), 10_000, name)
    h_max = float(ops.max_entropy(alpha, mask.sum()))
    history = []
    for step in range(1500):
        h = float(ops.entropy(rewards, alpha=alpha, temperature=c.value, mask=mask))
        history.append(h)
        c.step(step, h, h_max)
    where = f"seed {seed}: f={f}, start={start}, value={c.value}, last entropies {history[-3:]}"
    assert c.target == pytest.approx(f * h_max), where
    assert sum(history[-100:]) / 100 == pytest.approx(f * h_max, rel=0.01), where


def test_a_runaway_dual_at_zero_entropy_is_reported_once(caplog):
    # a sparse policy at a one-action support: entropy exactly 0, so the dual only grows
    c = build_coefficient(0.1, Sched(target_entropy=0.3, lr=1.0), 1000, "beta")
    with caplog.at_level("WARNING", logger="rl.schedules"):
        steps = 0
        while c.value < 0.1 * 1000:
            c.step(steps, 0.0, 1.386)
            steps += 1
            assert steps < 100
        assert len(caplog.records) == 1
        message = caplog.records[0].getMessage()
        assert "beta_schedule.target_entropy=0.3" in message and "beta_schedule.max" in message
        for _ in range(5):
            c.step(steps, 0.0, 1.386)
        assert len(caplog.records) == 1  # once


@pytest.mark.parametrize("entropy, bound", [(0.01, None), (0.0, 50.0)])
def test_no_runaway_report_with_entropy_left_or_a_bound(caplog, entropy, bound):
    c = build_coefficient(0.1, Sched(target_entropy=0.9, lr=1.0, max=bound), 1000, "beta")
    with caplog.at_level("WARNING", logger="rl.schedules"):
        for step in range(40):
            c.step(step, entropy, 1.386)
    assert c.value >= 49.9  # it did grow
    assert not caplog.records



def test_a_dual_beyond_exps_range_is_inf_not_an_exception():
    # the trainer stops such a run with a reason (tests/rl/test_population.py); the schedule
    # itself must not raise OverflowError from math.exp
    c = build_coefficient(0.1, Sched(target_entropy=0.5, lr=1.0), 1000, "beta")
    c.log_value = 709.0
    assert math.isfinite(c.step(0, 0.0, 1.0))  # exp(709.5) is still a float
    assert c.step(1, 0.0, 1.0) == math.inf  # exp(710) is not
