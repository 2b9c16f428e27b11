"""The Triton backend (``ops.kernels.backend``) against the PyTorch closed forms (``ops.reference``).

Without a GPU the kernels run under Triton's interpreter on CPU tensors (``tests/conftest.py``
sets ``TRITON_INTERPRET=1``), so shapes stay small; with CUDA the same tests run the compiled
kernels (``scripts/check_gpu.py``). Oracle: the reference in float64 on the same (rounded)
logits. A kernel value must be within its output dtype's rounding of that oracle, plus four
times the error of the float32 reference where the float32 problem itself is ill-conditioned
(``p_a^(1-alpha)`` of a tiny ``p_a``).

Every output buffer the launchers allocate is handed to the kernels filled with NaN (integers:
-77), so a value the kernel forgot to write fails the comparison. Seeds are fresh per run and
printed on failure; ``ENTROPY_RL_TEST_SEED=<int>`` replays one.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

from ops_helpers import rows, run_loss  # noqa: E402

import ops  # noqa: E402
from ops import reference  # noqa: E402
from ops._contract import mapping  # noqa: E402
from ops.kernels import _rows  # noqa: E402
from ops.kernels import backend as kb  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ALPHAS = [1.0, 1.5, 2.0, 1.3]
VS = [1, 2, 7, 128, 1000, 5000]
N_ROWS = 6  # not a power of two: the last program has padding rows
INTERPRETED = DEVICE.type == "cpu"
# per output dtype: relative rounding of a value stored in it. Triton's interpreter (3.9) casts
# fp32 to bf16 by truncation, one bf16 ulp (2^-7 relative), where GPUs round to nearest (2^-8).
OUT_RTOL = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7 if INTERPRETED else 2.0**-8,
            torch.float16: 2.0**-10}
# ... and absolute spacing of its smallest (subnormal) values
OUT_ATOL = {torch.float32: 0.0, torch.bfloat16: 0.0, torch.float16: 2.0**-24}
# (dtype, mask kind, temperature, weights, several tiles per row)
CONFIGS = {
    "fp32": (torch.float32, None, 1.0, False, False),
    "fp32-mask-T0.7-w-tiles": (torch.float32, "bool", 0.7, True, True),
    "bf16-neginf-T1.9-w-tiles": (torch.bfloat16, "neginf", 1.9, True, True),
}
ENTROPY_CONFIGS = {
    "fp32": (torch.float32, None, 1.0, False, False),
    "bf16-mask-T0.7-tiles": (torch.bfloat16, "bool", 0.7, False, True),
    "fp16-neginf-T1.9-tiles": (torch.float16, "neginf", 1.9, False, True),
}


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every launcher buffer starts as NaN (floats) or -77 (integers)."""

    def empty(shape, dtype, device):
        fill = float("nan") if dtype.is_floating_point else -77
        return torch.full(shape if isinstance(shape, tuple) else (shape,), fill, dtype=dtype,
                          device=device)

    monkeypatch.setattr(_rows, "empty", empty)


@pytest.fixture
def seed():
    value = os.environ.get("ENTROPY_RL_TEST_SEED")
    return int(value) if value else int.from_bytes(os.urandom(4), "little")


def _small_blocks(V):
    """A tile cap giving several tiles per row (the last one partial for V = 5000)."""
    return max(8, triton_next_pow2(V) // 4)


def triton_next_pow2(n):
    return 1 << max(0, (n - 1).bit_length())


# ------------------------------------------------------------------------------------------
# Inputs and oracle
# ------------------------------------------------------------------------------------------


def make_case(seed, N, V, dtype, mask_kind, alpha, temperature, weighted):
    """Random logits (row scales 0.3-4, so supports range from one action to most of V; random
    row offsets), a mask,
    actions (half sampled from the policy, half uniform over allowed actions: for alpha > 1
    many lie outside the support), advantages, old log-probabilities around the current ones
    (both PPO branches occur) and row_scale."""
    g = torch.Generator().manual_seed(seed)
    scale = 0.3 + 3.7 * torch.rand(N, 1, generator=g)
    # row offsets change no probability but make z / T round at the scale of z, not z - max z
    offset = 100.0 * torch.randn(N, 1, generator=g)
    z = (torch.randn(N, V, generator=g) * scale + offset).to(dtype)
    mask = None
    allowed = torch.ones(N, V, dtype=torch.bool)
    if mask_kind is not None and V > 1:
        allowed = torch.rand(N, V, generator=g) < 0.7
        allowed[torch.arange(N), torch.randint(0, V, (N,), generator=g)] = True
        allowed[0] = True  # one unmasked row
        if mask_kind == "bool":
            mask = allowed
            # masked entries hold garbage, NaN included: a mask must hide them all
            z = z.masked_fill(~allowed & (torch.rand(N, V, generator=g) < 0.3), float("nan"))
        else:
            z = z.masked_fill(~allowed, float("-inf"))
    p = reference.probs_forward(rows=rows(z.double(), mask, alpha, temperature)).probs
    sampled = torch.multinomial(p, 1, generator=g).squeeze(-1)
    uniform = torch.multinomial(allowed.double(), 1, generator=g).squeeze(-1)
    actions = torch.where(torch.arange(N) % 2 == 0, sampled, uniform)
    advantages = torch.randn(N, generator=g)
    p_a = p.gather(-1, actions[:, None]).squeeze(-1)
    old = torch.where(p_a > 0, p_a.clamp(min=1e-30).log(), -3.0 + torch.randn(N, generator=g))
    old_log_prob = (old + 0.3 * torch.randn(N, generator=g)).float()
    if weighted:
        w = torch.rand(N, generator=g)
        w[N // 2] = 0.0  # a row with weight zero contributes nothing
        row_scale = w / w.sum()
    else:
        row_scale = torch.full((N,), 1.0 / N)
    t = dict(logits=z, mask=mask, actions=actions, advantages=advantages,
             old_log_prob=old_log_prob, row_scale=row_scale)
    return {k: (v.to(DEVICE) if v is not None else None) for k, v in t.items()}


def loss_oracles(case, loss, beta, alpha, temperature, clip_eps=0.2):
    """The reference on float64 and on float32 copies of the same logits."""
    return [run_loss(reference, case, loss, beta, alpha, temperature, clip_eps=clip_eps, dtype=dt)
            for dt in (torch.float64, torch.float32)]


EPS32 = 2.0**-23


def grad_terms(out64, advantages, row_scale, temperature, beta, alpha):
    """Per-row magnitudes (N, 1) of the policy and entropy terms of the gradient, before they
    combine: fp32 rounds each term, and a row's terms may cancel (``p_a - 1`` when ``p_a`` is
    near 1), so the rounding allowed scales with them, not with the result."""
    c = advantages.double()
    if out64.ratio is not None:
        c = torch.where(out64.clipped, 0.0, c * out64.ratio)
    log_p_a = out64.log_prob
    if alpha != 1.0:  # p_a^(1-alpha), 0 off the support
        c = c * torch.where(torch.isfinite(log_p_a), ((1 - alpha) * log_p_a).exp(), 0.0)
    scale = row_scale.double() / temperature
    ent = 1.0 + out64.entropy if alpha == 1.0 else torch.full_like(c, 1.0 / (alpha - 1.0))
    return ((2 * c * scale).abs()[:, None].cpu(), (beta * scale * ent).abs()[:, None].cpu())


def sq_norm_atol(terms, V, extra=0.0, rows=False):
    """The rounding allowed on a squared norm sum_i ||g_i||^2 when each element of g_i may be off
    by 8 eps32 terms_i (+ ``extra``, (N, 1)): ``2 ||g|| ||d|| + ||d||^2`` (Cauchy-Schwarz) with
    ``||d||`` from ``terms``; ``rows``: the same bound per row, for the per-row squared norms."""
    err = 8 * EPS32 * terms + extra
    if rows:
        d2_rows = (V * err[:, 0] ** 2).double()
        return lambda ref: 2 * (ref.abs() * d2_rows).sqrt() + d2_rows
    d2 = float((V * err ** 2).sum())
    return lambda ref: 2 * math.sqrt(abs(float(ref)) * d2) + d2


def entropy_atol(alpha):
    """What float32 allows on a Tsallis entropy ``(1 - sum p^alpha) / (alpha (alpha-1))`` whatever
    its size: 16 units of 2^-24 on the sum ~ 1 (as ``assert_fp32_accurate``). A batch of
    near-deterministic rows (V = 2, H ~ 0.008) has a tiny ``scale`` in ``assert_close``, and the
    float32 reference's error there may be far below the few units of 2^-24 of the kernels'
    (measured: 2.9e-7 at alpha = 1.3, one unit of 2^-23 on the sum). 0 for Shannon."""
    return 0.0 if alpha == 1.0 else 2.0**-20 / (alpha * (alpha - 1.0))


def log_p_atol(out64, alpha):
    """Per row (N,), what float32 allows on ``log p_a`` of an action near the entmax threshold.

    ``d_a = y_a - tau`` (``|y_a|, |tau| <= 1``) is known only to a few units of 2^-24 absolutely:
    one rounding of ``y_a``, and tau from a float32 sum ``S ~ 1`` (``dtau = dS / (k Tq)``). So
    ``log p_a = k log d_a - log S`` is off by about ``k eps32 / d_a = k eps32 p_a^(1-alpha)``, for
    the kernels (``p = exp2(k log2 d)``) and the float32 reference alike. Measured on every
    supported p of 40 seeds x (V = 7, 128, 1000) x 6 rows, alpha in {1.1, 1.3, 1.5, 1.75, 2}:
    at most 1.08 of that for the kernels, 3.06 for the float32 reference (alpha = 1.5), whose
    error on one row may also be far smaller than the kernels' (so ``4 |ref32 - ref64|`` alone
    is no bound). Allowed: 2 of it. 0 for softmax and off the support (log p_a = -inf there,
    compared exactly).
    """
    log_p_a = out64.log_prob.double().cpu()
    if alpha == 1.0:
        return torch.zeros_like(log_p_a)
    fin = torch.isfinite(log_p_a)
    return torch.where(fin, 2 * EPS32 / (alpha - 1.0)
                       * ((1.0 - alpha) * log_p_a.masked_fill(~fin, 0.0)).exp(), 0.0)


def assert_close(name, got, ref64, ref32, out_dtype, seed, row_wise=False, atol=0.0):
    """|got - ref64| <= rtol(out_dtype) |ref64| + atol(out_dtype) + 2e-6 scale + 4 |ref32 - ref64|.

    ``scale``/the last term are per row for (N, V) tensors (``row_wise``; the scale at least a
    tenth of the tensor's, as a row whose terms cancel to 0 keeps their rounding), over
    the tensor for per-row statistics. ``atol``: extra allowance (a tensor broadcasting to the
    values, or a function of the oracle). Non-finite oracle entries (-inf log-probabilities)
    must match exactly.
    """
    msg = f"{name} (seed={seed})"
    got, ref64, ref32 = got.double().cpu(), ref64.double().cpu(), ref32.double().cpu()
    assert got.shape == ref64.shape, msg
    finite = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(got), finite), f"{msg}: finiteness differs\n{got}\n{ref64}"
    assert torch.equal(got[~finite], ref64[~finite]), msg
    got, ref64, ref32 = (torch.where(finite, t, 0.0) for t in (got, ref64, ref32))
    ref_err = (ref32 - ref64).abs().nan_to_num(0.0)
    if row_wise and got.dim() == 2:
        scale = ref64.abs().amax(-1, keepdim=True).clamp(min=0.1 * float(ref64.abs().max()))
        ref_err = ref_err.amax(-1, keepdim=True)
    else:
        scale = ref64.abs().max() if ref64.numel() else ref64.new_zeros(())
        ref_err = ref_err.max() if ref_err.numel() else ref_err.new_zeros(())
    if callable(atol):
        atol = atol(ref64)
    tol = OUT_RTOL[out_dtype] * ref64.abs() + OUT_ATOL[out_dtype] + 2e-6 * scale + 4 * ref_err
    tol = tol + atol + 1e-12
    err = (got - ref64).abs()
    worst = (err - tol).argmax() if err.numel() else None
    assert bool((err <= tol).all()), (
        f"{msg}: max excess at flat index {int(worst)}: got {got.reshape(-1)[worst].item()}, "
        f"oracle {ref64.reshape(-1)[worst].item()}, tol {tol.expand_as(err).reshape(-1)[worst].item()}")


def assert_support(got, ref64, ref32, seed):
    """Support sizes are integers: equal to the float64 or (an element on the threshold, within
    rounding) the float32 reference's, row by row."""
    got, s64, s32 = got.cpu().long(), ref64.cpu().long(), ref32.cpu().long()
    ok = (got == s64) | (got == s32)
    assert bool(ok.all()), f"support (seed={seed}): {got.tolist()} vs {s64.tolist()}"


# ------------------------------------------------------------------------------------------
# Fused losses: every alpha, V, dtype, mask kind, temperature, weights, tiling
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("V", VS)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("loss", ["pg", "ppo"])
def test_loss_matches_reference(loss, alpha, V, config, seed):
    dtype, mask_kind, temperature, weighted, tiles = CONFIGS[config]
    beta, clip_eps = 0.37, 0.2
    case = make_case(seed, N_ROWS, V, dtype, mask_kind, alpha, temperature, weighted)
    ref64, ref32 = loss_oracles(case, loss, beta, alpha, temperature, clip_eps)
    kw = dict(max_block_v=_small_blocks(V) if tiles else None)
    c = case
    out = run_loss(kb, c, loss, beta, alpha, temperature, clip_eps=clip_eps, **kw)

    f32 = torch.float32
    # log p_a near the threshold (log_p_atol) moves the ratio and the policy term with it
    lp = log_p_atol(ref64, alpha)
    r = ref64.ratio.double().cpu().abs() if loss == "ppo" else 1.0
    atols = {"loss_rows": c["advantages"].double().cpu().abs() * r * lp + beta * entropy_atol(alpha),
             "entropy": entropy_atol(alpha), "log_prob": lp}
    for key in ("loss_rows", "entropy", "log_prob"):
        assert getattr(out, key).dtype == f32
        assert_close(key, getattr(out, key), getattr(ref64, key), getattr(ref32, key), f32, seed,
                     atol=atols[key])
    assert out.support.dtype == torch.int32
    assert_support(out.support, ref64.support, ref32.support, seed)
    assert out.grad.dtype == dtype and out.grad.shape == c["logits"].shape
    pol, ent = grad_terms(ref64, c["advantages"], c["row_scale"], temperature, beta, alpha)
    # the policy term's p_a^(1-alpha) (and the ratio) carry log p_a's error: alpha lp relative
    pol_cond = alpha * lp[:, None] * pol
    assert_close("grad", out.grad, ref64.grad, ref32.grad, dtype, seed, row_wise=True,
                 atol=8 * EPS32 * (pol + ent) + pol_cond)
    if mask_kind is not None:  # a masked action's gradient is exactly 0
        allowed = c["logits"] > float("-inf") if c["mask"] is None else c["mask"]
        assert bool((out.grad[~allowed] == 0).all())
    for key, terms, extra in (("grad_policy_sq", pol, pol_cond), ("grad_entropy_sq", ent, 0.0)):
        got, r64, r32 = (getattr(o, key) for o in (out, ref64, ref32))
        assert got.shape == (c["logits"].shape[0],)  # per row; their sum is the squared norm
        assert_close(key, got.sum(), r64.sum(), r32.sum(), f32, seed, atol=sq_norm_atol(terms, V, extra))
        assert_close(key, got, r64, r32, f32, seed, atol=sq_norm_atol(terms, V, extra, rows=True))
    if loss == "ppo":
        assert_close("ratio", out.ratio, ref64.ratio, ref32.ratio, f32, seed, atol=r * lp)
        assert out.clipped.dtype == torch.bool
        # a ratio within rounding of a clip boundary may fall either way
        r = ref64.ratio.cpu()
        near = ((r - (1 + clip_eps)).abs() < 1e-5) | ((r - (1 - clip_eps)).abs() < 1e-5)
        differ = out.clipped.cpu() != ref64.clipped.cpu()
        assert not bool((differ & ~near).any()), f"clipped (seed={seed})"


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
@pytest.mark.parametrize("loss", ["pg", "ppo"])
def test_zero_probability_actions_get_zero_policy_gradient(loss, alpha, seed):
    """A sparse policy may give the taken action p = 0 (DESIGN.md, PPO): with beta = 0 that row's
    gradient is exactly 0, its log-probability -inf, its ratio 0, its loss row 0 (pg) or
    -min(0, (1 - eps) A) (ppo); every other row is still right."""
    case = make_case(seed, 8, 300, torch.float32, None, alpha, 1.0, False)
    c = case
    c["logits"] = c["logits"] * 4  # (alpha-1) x spans more than 1: the smallest is off the support
    p = reference.probs_forward(rows=rows(c["logits"].double(), None, alpha, 1.0)).probs
    out_of_support = p.argmin(-1)  # p = 0 there: row scales >= 0.3 over 300 actions
    assert bool((p.gather(-1, out_of_support[:, None]) == 0).all())
    c["actions"] = torch.where(torch.arange(8, device=DEVICE) < 5, out_of_support, p.argmax(-1))
    ref64, ref32 = loss_oracles(c, loss, 0.0, alpha, 1.0)
    out = run_loss(kb, c, loss, 0.0, alpha, 1.0, max_block_v=128)
    if loss == "ppo":
        assert bool((out.ratio[:5] == 0).all())
        A = c["advantages"][:5]
        assert torch.equal(out.loss_rows[:5], -torch.minimum(0.0 * A, 0.8 * A))
    assert bool((out.grad[:5] == 0).all())
    assert bool(torch.isfinite(out.grad).all())
    assert bool((out.log_prob[:5] == float("-inf")).all())
    if loss == "pg":
        assert bool((out.loss_rows[:5] == 0).all())
    pol, ent = grad_terms(ref64, c["advantages"], c["row_scale"], 1.0, 0.0, alpha)
    # the in-support rows carry log p_a's float32 error near the threshold, as in
    # test_loss_matches_reference (log_p_atol); the out-of-support rows are exact (checked above)
    lp = log_p_atol(ref64, alpha)
    r = ref64.ratio.double().cpu().abs() if loss == "ppo" else 1.0
    assert_close("grad", out.grad, ref64.grad, ref32.grad, torch.float32, seed,
                 row_wise=True, atol=8 * EPS32 * (pol + ent) + alpha * lp[:, None] * pol)
    assert_close("loss_rows", out.loss_rows, ref64.loss_rows, ref32.loss_rows,
                 torch.float32, seed, atol=c["advantages"].double().cpu().abs() * r * lp)


@pytest.mark.parametrize("loss", ["pg", "ppo"])
def test_without_grad_only_statistics(loss, seed):
    case = make_case(seed, 5, 40, torch.float32, "bool", 1.5, 1.0, False)
    c = case
    ref64, ref32 = loss_oracles(c, loss, 0.1, 1.5, 1.0)
    out = run_loss(kb, c, loss, 0.1, 1.5, 1.0, need_grad=False)
    assert out.grad is None
    assert out.grad_policy_sq is None and out.grad_entropy_sq is None
    assert_close("loss_rows", out.loss_rows, ref64.loss_rows, ref32.loss_rows,
                 torch.float32, seed)


# ------------------------------------------------------------------------------------------
# The memory-saving mode: the gradient written over the logits during the forward
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tiles", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("alpha", [1.0, 1.5, 1.3])
def test_grad_out_may_alias_logits(alpha, dtype, tiles, seed):
    V = 1000
    case = make_case(seed, N_ROWS, V, dtype, "bool", alpha, 0.8, True)
    c = case
    kw = dict(max_block_v=_small_blocks(V) if tiles else None)
    expected = run_loss(kb, c, "ppo", 0.2, alpha, 0.8, **kw)
    z = c["logits"].clone()
    out = run_loss(kb, dict(c, logits=z), "ppo", 0.2, alpha, 0.8, grad_out=z, **kw)
    assert out.grad.data_ptr() == z.data_ptr()
    assert torch.equal(out.grad, expected.grad)  # bit-identical: same arithmetic
    for key in ("loss_rows", "entropy", "log_prob", "support", "ratio", "clipped"):
        assert torch.equal(getattr(out, key), getattr(expected, key)), key


def test_grad_buffer_through_public_api(monkeypatch, seed):
    """``grad_buffer=logits``: the public API hands the logits to the kernel as its output."""
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", "triton")
    case = make_case(seed, N_ROWS, 300, torch.float32, "bool", 2.0, 1.0, False)
    c = case
    z = c["logits"].clone().requires_grad_()
    ops.pg_loss(z, c["actions"], c["advantages"], beta=0.1, alpha=2.0, mask=c["mask"]).loss.backward()
    expected = z.grad.clone()
    buffer = c["logits"].clone()
    z2 = buffer.clone().requires_grad_()
    out = ops.pg_loss(z2, c["actions"], c["advantages"], beta=0.1, alpha=2.0, mask=c["mask"],
                      grad_buffer=buffer)
    assert torch.equal(buffer, expected)  # written during the forward
    out.loss.backward()
    assert torch.equal(z2.grad, expected)


# ------------------------------------------------------------------------------------------
# Entropy forward / backward
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", list(ENTROPY_CONFIGS))
@pytest.mark.parametrize("V", VS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_entropy_matches_reference(alpha, V, config, seed):
    dtype, mask_kind, temperature, _, tiles = ENTROPY_CONFIGS[config]
    case = make_case(seed, N_ROWS, V, dtype, mask_kind, alpha, temperature, False)
    z, mask = case["logits"], case["mask"]
    kw = dict(max_block_v=_small_blocks(V) if tiles else None)
    H, support, saved = kb.entropy_forward(rows=rows(z, mask, alpha, temperature), **kw)
    grad_H = torch.randn(N_ROWS, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    m = mapping(alpha, temperature)
    grad = kb.entropy_backward(saved=saved, grad_entropy=grad_H, mapping=m, **kw)
    refs = []
    for dt in (torch.float64, torch.float32):
        H_r, s_r, saved_r = reference.entropy_forward(rows=rows(z.to(dt), mask, alpha, temperature))
        refs.append((H_r, s_r, reference.entropy_backward(saved=saved_r,
                                                          grad_entropy=grad_H.to(dt), mapping=m)))
    (H64, s64, g64), (H32, s32, g32) = refs
    assert H.dtype == torch.float32 and support.dtype == torch.int32
    assert_close("entropy", H, H64, H32, torch.float32, seed, atol=entropy_atol(alpha))
    assert_support(support, s64, s32, seed)
    assert grad.dtype == dtype and grad.shape == z.shape
    terms = grad_H.double().abs().cpu()[:, None] / temperature * (
        1.0 + H64.cpu()[:, None] if alpha == 1.0 else 1.0 / (alpha - 1.0))
    assert_close("entropy grad", grad, g64, g32, dtype, seed, row_wise=True,
                 atol=8 * EPS32 * terms)


# ------------------------------------------------------------------------------------------
# alpha > 2: the threshold search against float64, without the float32 reference's allowance
# ------------------------------------------------------------------------------------------

# (dtype the logits are rounded to, mask kind, temperature, several tiles per row). bf16 logits
# around 100 are multiples of 0.25-0.5: ties just inside the support, d = x - tau ~ 1e-7 and
# still p = d^(1/(alpha-1)) ~ 1e-2 at alpha = 4 (scripts/check_gpu.py's case that found it).
ABOVE_TWO_CONFIGS = {
    "fp32-T0.9": (torch.float32, None, 0.9, False),
    "fp32-mask-T0.7-tiles": (torch.float32, "bool", 0.7, True),
    "bf16-neginf-T0.9": (torch.bfloat16, "neginf", 0.9, False),
    "bf16-mask-T1.9-tiles": (torch.bfloat16, "bool", 1.9, True),
}


def assert_fp32_accurate(name, H, p, grad, H64, p64, g64, alpha, grad_terms, seed):
    """Float32 results against the float64 reference, with float32 tolerances (no allowance for
    the float32 reference's own error, unlike ``assert_close``):

    * ``H = (1 - sum p^alpha) / (alpha (alpha-1))``: 2^-20 / (alpha (alpha-1)), 16 units of
      2^-24 on the sum ~ 1;
    * ``p = d^k / S``: 2^-20 relative (a few roundings per entry) + 2^-22 absolute: near the
      support boundary tau is only as good as a float32 sum of p ~ 1 (a few units of 2^-24);
    * ``dH/dz = (q_hat - p) / ((alpha-1) T)``: 16 * 2^-23 of ``|grad_H| / ((alpha-1) T)``
      (q_hat and p are <= 1, each a few roundings), plus twice what the probabilities' own
      (checked) error makes of ``q_hat - p`` in float64: ``q = p^(2-alpha)`` of a small p in a
      support is only as precise, relatively, as that p is absolutely (e.g. alpha = 2.5,
      p = 6.6e-5 known to 4e-8 moves q_hat by 6e-6; the float32 reference alike).

    Before the fix these were off by up to 2e-3 (H, alpha = 4), 7% (p) and 3e-2 (grad).
    """
    msg = f"{name} alpha={alpha} (seed={seed})"
    H, p, grad = H.double().cpu(), p.double().cpu(), grad.double().cpu()
    H64, p64, g64 = H64.double().cpu(), p64.double().cpu(), g64.double().cpu()

    def qhat_minus_p(pp):
        q = torch.where(pp > 0, pp.clamp(min=1e-300) ** (2.0 - alpha), 0.0)
        return q / q.sum(-1, keepdim=True) - pp

    through_p = 2 * (qhat_minus_p(p) - qhat_minus_p(p64)).abs()
    checks = [("entropy", H, H64, torch.full_like(H64, 2.0**-20 / (alpha * (alpha - 1.0)))),
              ("probs", p, p64, 2.0**-20 * p64 + 2.0**-22),
              ("entropy grad", grad, g64, (16 * EPS32 + through_p) * grad_terms)]
    for what, got, ref, tol in checks:
        err = (got - ref).abs()
        worst = int((err - tol).argmax())
        assert bool((err <= tol).all()), (
            f"{msg} {what}: at flat index {worst} got {got.reshape(-1)[worst].item()}, float64 "
            f"{ref.reshape(-1)[worst].item()}, tol {tol.reshape(-1)[worst].item()}")


def _above_two_run(backend, z, mask, alpha, temperature, grad_H, kw):
    """(H, p, dH/dz) of one backend on float32 logits (bf16 values held in float32: the kernels
    compute in float32 either way, and the outputs keep float32 precision)."""
    m = mapping(alpha, temperature)
    H, _, saved = backend.entropy_forward(rows=rows(z, mask, alpha, temperature), **kw)
    grad = backend.entropy_backward(saved=saved, grad_entropy=grad_H.to(z.dtype), mapping=m, **kw)
    p = backend.probs_forward(rows=rows(z, mask, alpha, temperature), **kw).probs
    return H, p, grad


@pytest.mark.parametrize("config", list(ABOVE_TWO_CONFIGS))
@pytest.mark.parametrize("alpha", [2.5, 3.0, 4.0])
@pytest.mark.parametrize("which", ["kernels", "reference"])
def test_entmax_above_two_is_float32_accurate(which, alpha, config, seed):
    """Kernels and float32 reference within float32 rounding of the float64 reference, for
    alpha > 2 (bisection, then Newton on the support in a frame pivoted at the threshold)."""
    dtype, mask_kind, temperature, tiles = ABOVE_TWO_CONFIGS[config]
    V = 300
    case = make_case(seed, N_ROWS, V, dtype, mask_kind, alpha, temperature, False)
    z, mask = case["logits"].float(), case["mask"]
    grad_H = torch.randn(N_ROWS, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    if which == "kernels":
        out = _above_two_run(kb, z, mask, alpha, temperature, grad_H,
                             dict(max_block_v=_small_blocks(V) if tiles else None))
    else:
        out = _above_two_run(reference, z, mask, alpha, temperature, grad_H, {})
    ref = _above_two_run(reference, z.double(), mask, alpha, temperature, grad_H, {})
    terms = grad_H.double().abs().cpu()[:, None] / (temperature * (alpha - 1.0))
    assert_fp32_accurate(which, *out, *ref, alpha, terms, seed)


def test_entmax_above_two_check_gpu_case():
    """The case scripts/check_gpu.py reported (its make_case, seed 1023803554, on the CPU):
    alpha = 4, bf16 logits, -inf mask, T = 0.9; row 1 has nine tied actions at d ~ 3e-7 inside
    the support. Its entropy was 0.01400 (kernels) and 0.01715 (float32 reference); float64 and
    the entmax package give 0.017984."""
    N, V, alpha, temperature = 4, 300, 4.0, 0.9
    g = torch.Generator().manual_seed(1023803554)
    z = torch.randn(N, V, generator=g).mul_(0.3 + 3.7 * torch.rand(N, 1, generator=g))
    z = z.add_(100.0 * torch.randn(N, 1, generator=g)).to(torch.bfloat16)
    allowed = torch.rand(N, V, generator=g) < 0.7
    allowed[torch.arange(N), torch.randint(0, V, (N,), generator=g)] = True
    allowed[0] = True
    z = z.masked_fill(~allowed, float("-inf")).to(DEVICE)
    H64 = reference.entropy_forward(rows=rows(z.double(), None, alpha, temperature)).entropy
    assert abs(float(H64[1]) - 0.0179836) < 1e-6  # the case is the reported one
    tol = 2.0**-20 / (alpha * (alpha - 1.0))
    for name, backend in (("kernels", kb), ("reference", reference)):
        for zz in (z, z.float()):
            H = backend.entropy_forward(rows=rows(zz, None, alpha, temperature)).entropy
            err = (H.double().cpu() - H64.cpu()).abs()
            assert bool((err <= tol).all()), f"{name} {zz.dtype}: {H.tolist()} vs {H64.tolist()}"


@pytest.mark.parametrize("alpha", [2.5, 3.0, 4.0])
def test_entmax_above_two_iterations(alpha):
    """The search stays short: bisection until a Newton step keeps the support, then Newton
    (before: bisection to 2^-20 |tau|, 22-25 passes on these rows)."""
    g = torch.Generator().manual_seed(int(alpha * 10))
    z = torch.randn(16, 1024, generator=g) * (0.3 + 3.7 * torch.rand(16, 1, generator=g))
    with _rows.record_iterations() as records:
        kb.entropy_forward(rows=rows(z.to(DEVICE), None, alpha, 1.0))
    it = records[0]["iterations"]
    assert int(it.max()) <= 32, it.tolist()


# ------------------------------------------------------------------------------------------
# Extremes, fallbacks and errors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS + [3.0])
def test_extreme_rows(alpha, seed):
    """Huge logits, exact ties (uniform policies), a single allowed action, V = 2, and alpha = 3
    (bisection instead of Newton)."""
    g = torch.Generator().manual_seed(seed)
    V = 40
    z = torch.randn(6, V, generator=g)
    z[0] = z[0].sign() * 1e4  # two tied groups at +-1e4
    z[1] = 0.25  # all tied
    z[2, :20] = 3.0  # half tied at the top
    z[3] = float("-inf")
    z[3, 7] = -5.0  # a single allowed action
    z[4] *= 1e3
    actions = torch.tensor([int(z[0].argmax()), 5, 11, 7, 3, 9])
    case = dict(logits=z.to(DEVICE), mask=None, actions=actions.to(DEVICE),
                advantages=torch.randn(6, generator=g).to(DEVICE),
                row_scale=torch.full((6,), 1 / 6).to(DEVICE),
                old_log_prob=(-torch.rand(6, generator=g)).to(DEVICE))
    ref64, ref32 = loss_oracles(case, "ppo", 0.5, alpha, 1.0)
    out = run_loss(kb, case, "ppo", 0.5, alpha, 1.0, max_block_v=16)
    for key in ("loss_rows", "entropy", "log_prob", "ratio"):
        assert_close(key, getattr(out, key), getattr(ref64, key), getattr(ref32, key), torch.float32, seed)
    pol, ent = grad_terms(ref64, case["advantages"], case["row_scale"], 1.0, 0.5, alpha)
    assert_close("grad", out.grad, ref64.grad, ref32.grad, torch.float32, seed,
                 row_wise=True, atol=8 * EPS32 * (pol + ent))
    assert out.support.tolist()[1] == V and out.support.tolist()[3] == 1
    assert_support(out.support, ref64.support, ref32.support, seed)
    # V = 2
    z2 = case["logits"][:, :2].contiguous()
    c2 = dict(case, logits=z2, actions=case["actions"] % 2)
    ref64, ref32 = loss_oracles(dict(c2, logits=z2.nan_to_num(neginf=-1.0)), "pg", 0.5, alpha, 1.0)
    out = run_loss(kb, dict(c2, logits=z2.nan_to_num(neginf=-1.0)), "pg", 0.5, alpha, 1.0)
    pol, ent = grad_terms(ref64, c2["advantages"], c2["row_scale"], 1.0, 0.5, alpha)
    assert_close("grad V=2", out.grad, ref64.grad, ref32.grad, torch.float32, seed,
                 row_wise=True, atol=8 * EPS32 * (pol + ent))


def test_float64_and_empty_batches_use_the_reference(monkeypatch, seed):
    """float64 logits keep float64 (the kernels accumulate in float32) and N = 0 launches
    nothing: ``backend_for`` sends both to the reference, and the kernels refuse them."""
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", "triton")
    case = make_case(seed, 4, 9, torch.float64, None, 1.5, 1.0, False)
    c = dict(case, advantages=case["advantages"].double(), row_scale=case["row_scale"].double())
    assert ops.backend_for(c["logits"]) is reference
    assert ops.backend_for(torch.empty(0, 9, device=DEVICE)) is reference
    assert ops.backend_for(c["logits"].float()) is kb
    with pytest.raises(ValueError, match="float64"):
        run_loss(kb, c, "pg", 0.1, 1.5, 1.0)
    with pytest.raises(ValueError, match=r"\(0, 9\)"):
        kb.entropy_forward(rows=rows(torch.empty(0, 9, device=DEVICE), None, 1.5, 1.0))
    z = c["logits"].clone().requires_grad_()
    H = ops.entropy(z, alpha=1.5)
    H.sum().backward()
    assert H.dtype == torch.float64 and z.grad.dtype == torch.float64
    empty = torch.empty(0, 9, device=DEVICE, requires_grad=True)
    e = torch.empty(0, device=DEVICE)
    out = ops.ppo_loss(empty, e.long(), e, e, beta=0.1)
    out.loss.backward()
    assert empty.grad.shape == (0, 9) and out.entropy.shape == (0,)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 1.3])
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the +inf row itself
@pytest.mark.parametrize("bad", ["nan", "+inf", "all masked"])
def test_bad_rows_raise(alpha, bad):
    z = torch.randn(5, 33)
    mask = torch.ones(5, 33, dtype=torch.bool)
    if bad == "nan":
        z[3, 4] = float("nan")
    elif bad == "+inf":
        z[3, 30] = float("inf")
    else:
        mask[3] = False
    z, mask = z.to(DEVICE), mask.to(DEVICE)
    why = {"nan": "holds NaN", "+inf": "holds \\+inf", "all masked": "every action masked"}[bad]
    a = torch.zeros(5, dtype=torch.long, device=DEVICE)
    A = torch.ones(5, device=DEVICE)
    with pytest.raises(ValueError, match=f"row 3 .*{why}"):
        run_loss(kb, dict(logits=z, mask=mask, actions=a, advantages=A, row_scale=A / 5), "pg",
                 0.1, alpha, 1.0, max_block_v=16)
    with pytest.raises(ValueError, match=f"row 3 .*{why}"):
        kb.entropy_forward(rows=rows(z, mask, alpha, 1.0))


# ------------------------------------------------------------------------------------------
# The public API dispatching to the kernels (ENTROPY_RL_OPS_BACKEND=triton)
# ------------------------------------------------------------------------------------------


def _public_run(z, alpha, mask, actions, advantages, old, weights):
    """pg_loss, ppo_loss and entropy with their logits gradients (each from a fresh leaf)."""
    res = {}
    for name in ("pg", "ppo", "entropy"):
        leaf = z.detach().clone().requires_grad_()
        if name == "pg":
            out = ops.pg_loss(leaf, actions, advantages, beta=0.3, alpha=alpha, temperature=1.4,
                              mask=mask, weights=weights)
            loss = out.loss
        elif name == "ppo":
            out = ops.ppo_loss(leaf, actions, advantages, old, beta=0.3, clip_eps=0.15,
                               alpha=alpha, temperature=1.4, mask=mask, weights=weights)
            loss = out.loss
        else:
            out = ops.entropy(leaf, alpha=alpha, temperature=1.4, mask=mask)
            loss = (out * torch.linspace(-1, 2, out.numel(), device=z.device).view_as(out)).sum()
        loss.backward()
        res[name] = (out, loss.detach(), leaf.grad)
    return res


@pytest.mark.parametrize("V", [7, 1000])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_public_api_dispatches_to_kernels(monkeypatch, alpha, V, seed):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(2, 3, V, generator=g) * 2).to(DEVICE)
    mask = (torch.rand(2, 3, V, generator=g) < 0.8).to(DEVICE)
    mask[..., 0] = True
    with torch.no_grad():
        actions = ops.sample(z, alpha=alpha, temperature=1.4, mask=mask)
        old = ops.pg_loss(z, actions, 1.0, alpha=alpha, temperature=1.4, mask=mask).log_prob
    old = old + 0.2 * torch.randn(2, 3, generator=g).to(DEVICE)
    advantages = torch.randn(2, 3, generator=g).to(DEVICE)
    weights = torch.rand(2, 3, generator=g).to(DEVICE)

    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", "triton")
    assert ops.backend_for(z) is kb
    got = _public_run(z, alpha, mask, actions, advantages, old, weights)
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", "torch")
    assert ops.backend_for(z) is reference
    want = _public_run(z.double(), alpha, mask, actions, advantages.double(), old.double(),
                       weights.double())
    want32 = _public_run(z, alpha, mask, actions, advantages, old, weights)
    f32 = torch.float32
    for name in ("pg", "ppo"):
        out, loss, grad = got[name]
        ref, ref_loss, ref_grad = want[name]
        ref32, ref32_loss, ref32_grad = want32[name]
        stats64 = SimpleNamespace(log_prob=ref.log_prob.reshape(-1),
                                  entropy=ref.entropy.reshape(-1), ratio=None, clipped=None)
        if name == "ppo":
            stats64.ratio, stats64.clipped = ref.ratio.reshape(-1), ref.clipped.reshape(-1)
        w = weights.double().reshape(-1)
        pol, ent = grad_terms(stats64, advantages.reshape(-1), w / w.sum(), 1.4, 0.3, alpha)
        lp = log_p_atol(stats64, alpha)  # log p_a near the threshold, as in test_loss_matches_...
        r = stats64.ratio.double().cpu().abs() if name == "ppo" else 1.0
        pol_cond = alpha * lp[:, None] * pol
        loss_atol = float((w.cpu() / w.sum().cpu() * advantages.double().cpu().abs().reshape(-1)
                           * r * lp).sum()) + 0.3 * entropy_atol(alpha)
        assert_close(f"{name} loss", loss, ref_loss, ref32_loss, f32, seed, atol=loss_atol)
        assert_close(f"{name} grad", grad.view(-1, V), ref_grad.view(-1, V),
                     ref32_grad.view(-1, V), f32, seed, row_wise=True,
                     atol=8 * EPS32 * (pol + ent) + pol_cond)
        atols = {"entropy": entropy_atol(alpha), "log_prob": lp.view(2, 3),
                 "ratio": (r * lp).view(2, 3)}
        for field in ["entropy", "log_prob"] + (["ratio"] if name == "ppo" else []):
            assert_close(f"{name} {field}", getattr(out, field), getattr(ref, field),
                         getattr(ref32, field), f32, seed, atol=atols[field])
        for field, terms, extra in (("grad_norm_policy", pol, pol_cond),
                                    ("grad_norm_entropy", ent, 0.0)):
            # compared squared, as the kernels sum them
            assert_close(f"{name} {field}^2", getattr(out, field) ** 2, getattr(ref, field) ** 2,
                         getattr(ref32, field) ** 2, f32, seed, atol=sq_norm_atol(terms, V, extra))
        assert out.support_size.shape == (2, 3)
        assert_support(out.support_size, ref.support_size, ref32.support_size, seed)
    H, _, grad = got["entropy"]
    H64, _, g64 = want["entropy"]
    H32, _, g32 = want32["entropy"]
    assert_close("entropy", H, H64, H32, f32, seed, atol=entropy_atol(alpha))
    grad_H = torch.linspace(-1, 2, 6, dtype=torch.float64)[:, None]
    terms = grad_H.abs() / 1.4 * (1.0 + H64.reshape(-1, 1).cpu() if alpha == 1.0
                                  else 1.0 / (alpha - 1.0))
    assert_close("entropy grad", grad.view(-1, V), g64.view(-1, V), g32.view(-1, V), f32, seed,
                 row_wise=True, atol=8 * EPS32 * terms)
    assert math.isfinite(float(got["ppo"][1]))


def test_cpu_tensors_without_interpreter_get_a_clear_error(tmp_path):
    """Forcing the kernels on CPU tensors without TRITON_INTERPRET: an error that says what to
    do, not triton's '0 active drivers'. A fresh interpreter, as the variable is read at import."""
    code = (
        "import os, torch, ops\n"
        "os.environ['ENTROPY_RL_OPS_BACKEND'] = 'triton'\n"
        "z = torch.randn(3, 5)\n"
        "try:\n"
        "    ops.pg_loss(z, torch.zeros(3, dtype=torch.long), torch.ones(3))\n"
        "except RuntimeError as err:\n"
        "    print('ERR', err)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",)}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path, even on a GPU machine
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert res.returncode == 0, res.stderr
    assert "ERR" in res.stdout and "TRITON_INTERPRET=1" in res.stdout, res.stdout + res.stderr
