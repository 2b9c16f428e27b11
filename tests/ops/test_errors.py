"""Bad input to ops raises ValueError naming the parameter, its value and what is allowed.

STYLE.md 10: a bad argument must never turn into a silent NaN. Each case runs the same call
with the argument fixed first, so a test fails if the error came from something else.
"""

from __future__ import annotations

import re

import pytest
import torch
from ops_helpers import gen as _gen

import ops

N, V = 4, 6


def _inputs(*key):
    gen = _gen(*key)
    return {
        "logits": torch.randn(N, V, generator=gen, dtype=torch.float64),
        "actions": torch.randint(0, V, (N,), generator=gen),
        "advantages": torch.randn(N, generator=gen, dtype=torch.float64),
        "old_log_prob": -torch.rand(N, generator=gen, dtype=torch.float64) - 1.0,
    }


def _call(fn, x, **kw):
    """Calls one public function with the inputs it takes and keyword overrides."""
    if fn is ops.pg_loss:
        return fn(x["logits"], x["actions"], x["advantages"], **kw)
    if fn is ops.ppo_loss:
        return fn(x["logits"], x["actions"], x["advantages"], x["old_log_prob"], **kw)
    return fn(x["logits"], **kw)


def _raises(fn, x, *patterns, **kw):
    with pytest.raises(ValueError) as info:
        _call(fn, x, **kw)
    msg = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, msg), f"{pattern!r} not in {msg!r}"
    return msg


MAPPING_FNS = [ops.probs, ops.entropy, ops.pg_loss, ops.ppo_loss, ops.sample]
LOSS_FNS = [ops.pg_loss, ops.ppo_loss]
FN_IDS = lambda fn: fn.__name__  # noqa: E731


# ------------------------------------------------------------------------------------------
# Scalar knobs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", MAPPING_FNS, ids=FN_IDS)
@pytest.mark.parametrize("alpha", [0.5, 0.999, -2.0, float("nan"), float("inf"), "soft"])
def test_alpha_below_one(fn, alpha):
    x = _inputs("alpha", fn.__name__)
    _call(fn, x, alpha=1.25)  # the same call with an allowed alpha runs
    _raises(fn, x, "alpha", re.escape(repr(alpha)), "allowed", alpha=alpha)


def test_max_entropy_arguments():
    with pytest.raises(ValueError, match=r"alpha=0\.9.*allowed"):
        ops.max_entropy(0.9, 3)
    for n in (0, -2, 2.5):
        with pytest.raises(ValueError, match=rf"num_allowed={n!r}.*allowed"):
            ops.max_entropy(1.5, n)
    with pytest.raises(ValueError, match="num_allowed.*>= 1"):
        ops.max_entropy(2.0, torch.tensor([3, 0, 2]))
    assert ops.max_entropy(2.0, 4) == pytest.approx(0.375)


@pytest.mark.parametrize("fn", MAPPING_FNS + [ops.gumbel_softmax], ids=FN_IDS)
@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan"), float("inf")])
def test_temperature_not_positive(fn, temperature):
    x = _inputs("temperature", fn.__name__)
    _call(fn, x, temperature=0.3)
    _raises(fn, x, "temperature", re.escape(repr(temperature)), "allowed", "> 0",
            temperature=temperature)


@pytest.mark.parametrize("fn", LOSS_FNS, ids=FN_IDS)
@pytest.mark.parametrize("beta", [-0.01, -3.0, float("nan"), float("inf")])
def test_beta_negative(fn, beta):
    x = _inputs("beta", fn.__name__)
    _call(fn, x, beta=0.0)  # zero is allowed
    _raises(fn, x, "beta", re.escape(repr(beta)), "allowed", ">= 0", beta=beta)


@pytest.mark.parametrize("clip_eps", [0.0, -0.2, float("nan")])
def test_clip_eps_not_positive(clip_eps):
    x = _inputs("clip", clip_eps)
    _call(ops.ppo_loss, x, clip_eps=0.05)
    _raises(ops.ppo_loss, x, "clip_eps", re.escape(repr(clip_eps)), "allowed", "> 0",
            clip_eps=clip_eps)


@pytest.mark.parametrize("name", ["alpha", "temperature", "beta", "clip_eps"])
def test_non_numbers(name):
    x = _inputs("nan-number", name)
    _raises(ops.ppo_loss, x, name, "'x'", "allowed", **{name: "x"})


# ------------------------------------------------------------------------------------------
# Actions
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", LOSS_FNS, ids=FN_IDS)
@pytest.mark.parametrize("bad", [-1, V, V + 7])
def test_actions_out_of_range(fn, bad):
    x = _inputs("range", fn.__name__, bad)
    _call(fn, x)
    x["actions"][2] = bad
    _raises(fn, x, r"actions\[2\]", f"= {bad}\\b", "out of range", f"allowed: 0 <= action < V = {V}")


@pytest.mark.parametrize("fn", LOSS_FNS, ids=FN_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_actions_not_integer(fn, dtype):
    x = _inputs("int", fn.__name__, str(dtype))
    x["actions"] = x["actions"].to(dtype)
    _raises(fn, x, "actions", str(dtype), "allowed", "integer")


@pytest.mark.parametrize("fn", LOSS_FNS, ids=FN_IDS)
def test_integer_action_dtypes_and_lists_are_accepted(fn):
    x = _inputs("int-ok", fn.__name__)
    want = float(_call(fn, x).loss)
    for actions in (x["actions"].to(torch.int32), x["actions"].to(torch.uint8),
                    x["actions"].tolist()):
        x2 = dict(x, actions=actions)
        assert float(_call(fn, x2).loss) == want


@pytest.mark.parametrize("fn", LOSS_FNS, ids=FN_IDS)
@pytest.mark.parametrize("how", ["mask", "-inf"])
def test_masked_action_taken(fn, how):
    x = _inputs("masked-action", fn.__name__, how)
    mask = torch.ones(N, V, dtype=torch.bool)
    a = int(x["actions"][1])
    mask[1, a] = False
    if how == "mask":
        _raises(fn, x, r"actions\[1\]", f"= {a}", "masked", mask=mask)
    else:
        x["logits"][1, a] = float("-inf")
        _raises(fn, x, r"actions\[1\]", f"= {a}", "masked")


# ------------------------------------------------------------------------------------------
# Shapes and types
# ------------------------------------------------------------------------------------------


def _row_params(names):
    """(fn, name) pairs; pg_loss has no old_log_prob."""
    return [pytest.param(fn, name, id=f"{fn.__name__}-{name}") for fn in LOSS_FNS for name in names
            if not (fn is ops.pg_loss and name == "old_log_prob")]


@pytest.mark.parametrize(("fn", "name"),
                         _row_params(["actions", "advantages", "old_log_prob", "weights"]))
def test_row_shape_mismatch(fn, name):
    x = _inputs("shape", fn.__name__, name)
    gen = _gen("shape-bad", name)
    for bad_shape in ((N + 1,), (N, 1), (1, N)):
        bad = torch.randint(0, V, bad_shape, generator=gen) if name == "actions" else \
            torch.rand(bad_shape, generator=gen, dtype=torch.float64) + 0.1
        if name == "weights":
            _raises(fn, x, "weights", re.escape(str(bad_shape)), re.escape(str((N,))),
                    weights=bad)
        else:
            _raises(fn, dict(x, **{name: bad}), name, re.escape(str(bad_shape)),
                    re.escape(str((N,))))


@pytest.mark.parametrize("fn", MAPPING_FNS + [ops.greedy, ops.gumbel_softmax], ids=FN_IDS)
def test_mask_shape_and_dtype(fn):
    x = _inputs("mask", fn.__name__)
    _call(fn, x, mask=torch.ones(V, dtype=torch.bool))  # broadcasts
    _raises(fn, x, "mask", re.escape(str((N, V + 1))), re.escape(str((N, V))),
            mask=torch.ones(N, V + 1, dtype=torch.bool))
    _raises(fn, x, "mask", "bool", mask=torch.ones(N, V))


@pytest.mark.parametrize("fn", MAPPING_FNS + [ops.greedy, ops.gumbel_softmax], ids=FN_IDS)
def test_logits_type(fn):
    x = _inputs("logits-type", fn.__name__)
    gen = _gen("logits-int", fn.__name__)
    _raises(fn, dict(x, logits=torch.randint(-3, 3, (N, V), generator=gen)), "logits",
            "int64", "allowed")
    _raises(fn, dict(x, logits=x["logits"].tolist()), "logits", "Tensor")
    _raises(fn, dict(x, logits=torch.randn(N, 0, generator=gen)), "logits", re.escape(str((N, 0))))


# ------------------------------------------------------------------------------------------
# Non-finite values and rows with nothing allowed
# ------------------------------------------------------------------------------------------

ROW_FNS = MAPPING_FNS + [ops.greedy, ops.gumbel_softmax]


@pytest.mark.parametrize("fn", ROW_FNS, ids=FN_IDS)
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize(("value", "why"), [(float("nan"), "NaN"), (float("inf"), r"\+inf")])
def test_nan_or_pos_inf_logits(fn, alpha, value, why):
    x = _inputs("nonfinite", fn.__name__, alpha)
    kw = {} if fn in (ops.greedy, ops.gumbel_softmax) else {"alpha": alpha}
    # a position that is neither the taken action nor the row's max
    j = int((x["actions"][2] + 1) % V)
    x["logits"][2, j] = value
    _raises(fn, x, "logits row 2", why, "allowed", "finite", **kw)


@pytest.mark.parametrize("fn", ROW_FNS, ids=FN_IDS)
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("how", ["mask", "-inf"])
def test_row_with_every_action_masked(fn, alpha, how):
    x = _inputs("all-masked", fn.__name__, alpha, how)
    kw = {} if fn in (ops.greedy, ops.gumbel_softmax) else {"alpha": alpha}
    mask = torch.ones(N, V, dtype=torch.bool)
    mask[3] = False
    if how == "mask":
        kw["mask"] = mask
    else:
        x["logits"][3] = float("-inf")
    _raises(fn, x, "logits row 3", "every action masked", "at least one allowed", **kw)


@pytest.mark.parametrize(("fn", "name"), _row_params(["advantages", "old_log_prob", "weights"]))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rows(fn, name, value):
    x = _inputs("row-finite", fn.__name__, name)
    gen = _gen("row-finite-w", name)
    weights = torch.rand(N, generator=gen, dtype=torch.float64) + 0.1
    if name == "weights":
        weights[1] = value
        _raises(fn, x, "weights", r"\[1\]", re.escape(str(value)), "finite", weights=weights)
    else:
        x[name] = x[name].clone()
        x[name][1] = value
        _raises(fn, x, name, r"\[1\]", re.escape(str(value)), "finite", weights=weights)


@pytest.mark.parametrize("fn", LOSS_FNS, ids=FN_IDS)
def test_negative_weights(fn):
    x = _inputs("neg-w", fn.__name__)
    weights = torch.rand(N, generator=_gen("neg-w-w"), dtype=torch.float64)
    _call(fn, x, weights=weights)
    weights[2] = -0.25
    _raises(fn, x, "weights", r"\[2\]", "-0.25", ">= 0", weights=weights)


@pytest.mark.parametrize("fn", LOSS_FNS, ids=FN_IDS)
def test_grad_buffer_must_match(fn):
    x = _inputs("buffer", fn.__name__)
    z = x["logits"]
    for bad in (torch.empty(N, V + 1, dtype=z.dtype), torch.empty(N, V, dtype=torch.float32),
                torch.empty(V, N, dtype=z.dtype).t()):
        _raises(fn, x, "grad_buffer", re.escape(str((N, V))), grad_buffer=bad)
