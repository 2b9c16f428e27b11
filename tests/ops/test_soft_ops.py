"""``ops.soft_policy_loss`` and ``ops.soft_value``: the soft actor loss and the soft state value.

* The closed-form gradient (README, "The soft actor loss") against autograd through the plain
  formula ``mean_w(-<p, q> - beta H(p))`` in float64 (the ``entmax`` package's mappings), and
  ``gradcheck`` of the public op.
* The minimizer: at logits ``T q / beta`` (p = mapping(q / beta)) the gradient is 0, and the
  value there is the maximum (softmax: ``beta logsumexp(q / beta)``).
* Masked actions: their q is never read (NaN, -inf there change nothing).
* hypothesis properties; errors; the Triton kernel under ``TRITON_INTERPRET=1`` against the
  float64 reference with NaN-poisoned output buffers.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_helpers import ALPHAS, composite_probs, draw_logits, entropy_of_probs, gen, random_mask

import ops
from ops import reference
from ops._contract import Rows, SoftInput, mapping


def plain_loss(z, q, beta, alpha, temperature=1.0, mask=None, weights=None):
    """The textbook formula in float64, autograd through the mapping; q of masked actions 0."""
    p = composite_probs(z, alpha, temperature, mask)
    qq = q.double() if mask is None else q.double().masked_fill(~mask, 0.0)
    rows = -(p * qq).sum(-1) - beta * entropy_of_probs(p, alpha)
    if weights is None:
        return rows.mean()
    return (rows * weights).sum() / weights.sum()


def draw_case(key, shape, alpha, temperature=1.0, masked=False, q_scale=2.0):
    g = gen(*key)
    mask = random_mask(g, shape) if masked else None
    z = draw_logits(g, shape, alpha, temperature, mask)
    q = torch.randn(shape, generator=g, dtype=torch.float64) * q_scale
    w = torch.rand(shape[:-1], generator=g, dtype=torch.float64) + 0.1
    return z, q, mask, w


# ------------------------------------------------------------------------------------------
# The closed form against autograd through the plain formula
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_gradient_matches_autograd_of_the_formula(alpha, temperature, masked):
    z, q, mask, w = draw_case(("grad", alpha, temperature, masked), (3, 4, 9), alpha, temperature,
                              masked)
    beta = 0.37
    leaf = z.clone().requires_grad_()
    out = ops.soft_policy_loss(leaf, q, beta=beta, alpha=alpha, temperature=temperature,
                               mask=mask, weights=w)
    out.loss.backward()
    ref = z.clone().requires_grad_()
    want = plain_loss(ref, q, beta, alpha, temperature, mask, w)
    want.backward()
    torch.testing.assert_close(out.loss, want.detach(), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(leaf.grad, ref.grad, atol=1e-12, rtol=1e-10)
    assert out.log_prob is None and out.ratio is None and out.clipped is None
    p = composite_probs(z, alpha, temperature, mask)
    torch.testing.assert_close(out.entropy, entropy_of_probs(p, alpha), atol=1e-12, rtol=1e-12)
    assert torch.equal(out.support_size, (p > 0).sum(-1).to(torch.int32))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_gradient_norms_are_the_two_terms(alpha):
    """grad_norm_policy: the norm of -<p, q>'s gradient (beta = 0); grad_norm_entropy: of
    -beta H's (q = 0)."""
    z, q, mask, w = draw_case(("norms", alpha), (5, 8), alpha, 1.3, masked=True)
    beta = 0.2
    full = ops.soft_policy_loss(z.clone().requires_grad_(), q, beta=beta, alpha=alpha,
                                temperature=1.3, mask=mask, weights=w)
    for name, qq, b in (("grad_norm_policy", q, 0.0), ("grad_norm_entropy", torch.zeros_like(q), beta)):
        leaf = z.clone().requires_grad_()
        ops.soft_policy_loss(leaf, qq, beta=b, alpha=alpha, temperature=1.3, mask=mask,
                             weights=w).loss.backward()
        torch.testing.assert_close(getattr(full, name), leaf.grad.norm(), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_row_beta_is_the_formula_with_a_coefficient_per_row(alpha):
    """A per-row beta (a population's members in one call): loss, gradient, loss rows, soft
    values and the two terms' per-row squared gradient norms against autograd through the plain
    formula ``mean_w(-<p_i, q_i> - beta_i H_i)`` in float64; one member's own gradient norm is
    its rows' share (the LossOutput docstring)."""
    z, q, mask, w = draw_case(("row-beta", alpha), (2, 3, 7), alpha, 0.8, masked=True)
    beta = torch.tensor([[0.05], [0.6]], dtype=torch.float64).expand(2, 3).clone()
    beta[1, 2] = 0.0
    leaf = z.clone().requires_grad_()
    out = ops.soft_policy_loss(leaf, q, beta=beta, alpha=alpha, temperature=0.8, mask=mask, weights=w)
    out.loss.backward()
    ref = z.clone().requires_grad_()
    plain_loss(ref, q, beta, alpha, 0.8, mask, w).backward()
    torch.testing.assert_close(leaf.grad, ref.grad, atol=1e-12, rtol=1e-10)
    p = composite_probs(z, alpha, 0.8, mask)
    qq = q.masked_fill(~mask, 0.0)
    rows = -(p * qq).sum(-1) - beta * entropy_of_probs(p, alpha)
    torch.testing.assert_close(out.loss_rows, rows, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out.loss, (rows * w).sum() / w.sum(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ops.soft_value(z, q, beta=beta, alpha=alpha, temperature=0.8, mask=mask),
                               -rows, atol=1e-12, rtol=1e-10)
    for name, qq_, b in (("policy", q, 0.0), ("entropy", torch.zeros_like(q), beta)):
        term = z.clone().requires_grad_()
        plain_loss(term, qq_, b, alpha, 0.8, mask, w).backward()
        torch.testing.assert_close(getattr(out, f"grad_sq_{name}"), term.grad.square().sum(-1),
                                   atol=1e-14, rtol=1e-10)
        torch.testing.assert_close(getattr(out, f"grad_norm_{name}"), term.grad.norm(), atol=1e-12,
                                   rtol=1e-10)
    assert float(out.grad_sq_entropy[1, 2]) == 0.0 and float(out.grad_sq_entropy[1, :2].sum()) > 0
    for k in range(2):  # member k alone, its float beta
        alone = z[k].clone().requires_grad_()
        own = ops.soft_policy_loss(alone, q[k], beta=float(beta[k, 0]) if k == 0 else beta[k],
                                   alpha=alpha, temperature=0.8, mask=mask[k], weights=w[k])
        torch.testing.assert_close((out.loss_rows[k] * w[k]).sum() / w[k].sum(), own.loss.detach(),
                                   atol=1e-12, rtol=1e-10)
        rescale = w.sum() / w[k].sum()
        torch.testing.assert_close(out.grad_sq_policy[k].sum().sqrt() * rescale, own.grad_norm_policy,
                                   atol=1e-12, rtol=1e-10)
    # a float beta and a constant tensor are the same op
    a = ops.soft_policy_loss(z.clone().requires_grad_(), q, beta=0.3, alpha=alpha, mask=mask, weights=w)
    b = ops.soft_policy_loss(z.clone().requires_grad_(), q, beta=torch.full((2, 3), 0.3, dtype=torch.float64),
                             alpha=alpha, mask=mask, weights=w)
    for field in ("loss", "loss_rows", "grad_sq_policy", "grad_sq_entropy"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), atol=1e-14, rtol=1e-12)
    without = ops.soft_policy_loss(z.clone().requires_grad_(), q, beta=beta, alpha=alpha, mask=mask,
                                   grad_norms=False)
    assert without.grad_sq_policy is None and float(without.grad_norm_policy) == 0.0


@pytest.mark.parametrize("op", ["loss", "value"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_bad_row_beta_is_named(monkeypatch, op, backend):
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", backend)
    z, q = torch.randn(6, 5), torch.randn(6, 5)
    fn = ops.soft_policy_loss if op == "loss" else ops.soft_value
    cases = ((3, -0.1, "negative"), (4, float("nan"), "non-finite"), (0, float("inf"), "non-finite"))
    for i, bad, what in cases:
        beta = torch.full((6,), 0.2)
        beta[i] = bad
        with pytest.raises(ValueError, match=rf"beta has a {what} entry .* at row {i}"):
            fn(z.clone().requires_grad_(op == "loss"), q, beta=beta, alpha=1.5)
    with pytest.raises(ValueError, match=r"beta\.shape=\(5,\) does not match"):
        fn(z, q, beta=torch.full((5,), 0.2))


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.3])
def test_gradcheck(alpha):
    z, q, mask, w = draw_case(("gradcheck", alpha), (3, 6), alpha, 0.8, masked=True)
    q = q.masked_fill(~mask, float("nan"))  # never read

    def f(zz):
        return ops.soft_policy_loss(zz, q, beta=0.3, alpha=alpha, temperature=0.8, mask=mask,
                                    weights=w).loss

    assert torch.autograd.gradcheck(f, (z.clone().requires_grad_(),), eps=1e-6, atol=1e-7)


def test_q_values_get_no_gradient():
    z, q, _, _ = draw_case(("noq",), (4, 5), 1.0)
    q = q.clone().requires_grad_()
    leaf = z.clone().requires_grad_()
    ops.soft_policy_loss(leaf, q, beta=0.1).loss.backward()
    assert q.grad is None and leaf.grad is not None


# ------------------------------------------------------------------------------------------
# The minimizer and the soft value
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("alpha", ALPHAS + [2.5])
def test_gradient_vanishes_at_the_mapping_of_q_over_beta(alpha, temperature):
    """``p = mapping(q / beta)`` maximises ``<p, q> + beta H(p)`` (DESIGN.md section 1: the
    mapping is the regularized argmax), so the loss's gradient is 0 at logits ``T q / beta``;
    masked actions (q NaN / -inf there) change nothing."""
    beta = 0.7
    g = gen("minimizer", alpha, temperature)
    q = torch.randn(6, 11, generator=g, dtype=torch.float64) * 2
    mask = random_mask(g, (6, 11))
    q = q.masked_fill(~mask, float("nan"))
    q[0] = q[0].masked_fill(~mask[0], float("-inf"))
    z = (temperature * q / beta).masked_fill(~mask, 0.0).requires_grad_()
    out = ops.soft_policy_loss(z, q, beta=beta, alpha=alpha, temperature=temperature, mask=mask)
    out.loss.backward()
    assert float(z.grad.abs().max()) < 1e-12, z.grad
    # and it is a minimum: other logits give no smaller loss (equal where both policies put
    # all mass on the same action, as sparse mappings may)
    for scale in (0.5, 1.5):
        other = ops.soft_policy_loss(z.detach() * scale + 0.1 * torch.randn(6, 11, generator=g,
                                     dtype=torch.float64), q, beta=beta, alpha=alpha,
                                     temperature=temperature, mask=mask)
        assert float(other.loss) >= float(out.loss.detach()) - 1e-12


@pytest.mark.parametrize("beta", [0.05, 1.0, 7.0])
def test_soft_value_of_softmax_at_its_optimum_is_beta_logsumexp(beta):
    g = gen("lse", beta)
    q = torch.randn(4, 9, generator=g, dtype=torch.float64) * 3
    v = ops.soft_value(q / beta, q, beta=beta)
    torch.testing.assert_close(v, beta * torch.logsumexp(q / beta, -1), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("alpha", ALPHAS + [2.5])
def test_soft_value_is_p_dot_q_plus_beta_h(alpha, masked):
    z, q, mask, _ = draw_case(("value", alpha, masked), (2, 3, 7), alpha, 1.6, masked)
    v = ops.soft_value(z, q, beta=0.4, alpha=alpha, temperature=1.6, mask=mask)
    p = ops.probs(z, alpha=alpha, temperature=1.6, mask=mask)
    H = ops.entropy(z, alpha=alpha, temperature=1.6, mask=mask)
    qq = q if mask is None else q.masked_fill(~mask, 0.0)
    assert v.shape == (2, 3) and v.dtype == torch.float64 and not v.requires_grad
    torch.testing.assert_close(v, (p * qq).sum(-1) + 0.4 * H, atol=1e-12, rtol=1e-12)
    # the loss rows are its negation: one-hot weights pick a row
    w = torch.zeros(2, 3, dtype=torch.float64)
    w[1, 2] = 1.0
    loss = ops.soft_policy_loss(z, q, beta=0.4, alpha=alpha, temperature=1.6, mask=mask, weights=w)
    torch.testing.assert_close(loss.loss, -v[1, 2], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.3])
def test_masked_q_values_are_never_read(alpha):
    z, q, mask, w = draw_case(("masked-q", alpha), (5, 8), alpha, 1.0, masked=True)
    want_leaf = z.clone().requires_grad_()
    want = ops.soft_policy_loss(want_leaf, q.masked_fill(~mask, 0.0), beta=0.3, alpha=alpha,
                                mask=mask, weights=w)
    want.loss.backward()
    for garbage in (float("nan"), float("-inf"), float("inf"), 1e30):
        qq = q.masked_fill(~mask, garbage)
        leaf = z.clone().requires_grad_()
        out = ops.soft_policy_loss(leaf, qq, beta=0.3, alpha=alpha, mask=mask, weights=w)
        out.loss.backward()
        assert torch.equal(out.loss, want.loss) and torch.equal(leaf.grad, want_leaf.grad)
        assert bool((leaf.grad[~mask] == 0).all())
        # -inf logits mark the same actions
        v = ops.soft_value(z.masked_fill(~mask, float("-inf")), qq, beta=0.3, alpha=alpha)
        torch.testing.assert_close(v, ops.soft_value(z, q, beta=0.3, alpha=alpha, mask=mask),
                                   atol=1e-12, rtol=1e-12)


def test_empty_batch_and_float32():
    z = torch.zeros(0, 4, requires_grad=True)
    out = ops.soft_policy_loss(z, torch.zeros(0, 4), beta=0.1)
    out.loss.backward()
    assert float(out.loss) == 0.0 and z.grad.shape == (0, 4)
    assert ops.soft_value(torch.zeros(2, 0, 4), torch.zeros(2, 0, 4)).shape == (2, 0)
    zb = torch.randn(3, 5).bfloat16().requires_grad_()
    out = ops.soft_policy_loss(zb, torch.randn(3, 5), beta=0.1, alpha=1.5)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and zb.grad.dtype == torch.bfloat16
    assert ops.soft_value(zb, torch.randn(3, 5).half()).dtype == torch.float32


# ------------------------------------------------------------------------------------------
# hypothesis properties
# ------------------------------------------------------------------------------------------

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)


@SETTINGS
@given(alpha=st.one_of(st.sampled_from(ALPHAS), st.floats(1.05, 3.5)),
       temperature=st.floats(0.3, 3.0), beta=st.floats(0.0, 3.0),
       n_act=st.integers(1, 12), masked=st.booleans(), shift=st.floats(-50.0, 50.0),
       seed=st.integers(0, 2**31 - 1))
def test_properties(alpha, temperature, beta, n_act, masked, shift, seed):
    """Adding a constant to a row's q shifts its value by that constant and leaves the gradient
    alone; the gradient sums to 0 along V (shifting the logits changes nothing); the value
    lies between <p, q> and max_allowed q + beta H_max; a larger beta never lowers it."""
    g = torch.Generator().manual_seed(seed)
    shape = (3, n_act)
    z = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    q = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    mask = random_mask(g, shape) if masked else None
    kw = dict(alpha=alpha, temperature=temperature, mask=mask)
    grads, values = [], []
    for qq in (q, q + shift):
        leaf = z.clone().requires_grad_()
        ops.soft_policy_loss(leaf, qq, beta=beta, **kw).loss.backward()
        grads.append(leaf.grad)
        values.append(ops.soft_value(z, qq, beta=beta, **kw))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-9 * (1 + abs(shift)), rtol=1e-7)
    torch.testing.assert_close(values[1], values[0] + shift, atol=1e-9 * (1 + abs(shift)),
                               rtol=1e-9)
    assert float(grads[0].sum(-1).abs().max()) < 1e-9 * (1 + float(q.abs().max()))
    p = ops.probs(z, **kw)
    allowed = torch.ones(shape, dtype=torch.bool) if mask is None else mask
    qq = q.masked_fill(~allowed, 0.0)
    h_max = torch.tensor([ops.max_entropy(alpha, int(n)) for n in allowed.sum(-1)],
                         dtype=torch.float64)
    v = values[0]
    assert bool((v >= (p * qq).sum(-1) - 1e-9).all())
    assert bool((v <= q.masked_fill(~allowed, -math.inf).amax(-1) + beta * h_max + 1e-9).all())
    assert bool((ops.soft_value(z, q, beta=beta + 0.5, **kw) >= v - 1e-12).all())


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["loss", "value"])
def test_errors_name_the_culprit(op):
    z = torch.randn(3, 4)
    q = torch.randn(3, 4)

    def call(zz=z, qq=q, **kw):
        if op == "loss":
            return ops.soft_policy_loss(zz, qq, **kw)
        return ops.soft_value(zz, qq, **kw)

    with pytest.raises(ValueError, match=r"q_values.shape=\(3, 5\) is not allowed"):
        call(qq=torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"q_values.shape=\(4,\) is not allowed"):
        call(qq=torch.randn(4))
    with pytest.raises(ValueError, match="q_values.dtype=torch.int64 is not allowed"):
        call(qq=torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="q_values must be a torch.Tensor"):
        call(qq=[[0.0] * 4] * 3)
    for bad in (float("nan"), float("inf"), float("-inf")):
        qq = q.clone()
        qq[1, 2] = bad
        with pytest.raises(ValueError,
                           match=r"finite at allowed actions; q_values\[6\] \(flat index\) = "):
            call(qq=qq)
    with pytest.raises(ValueError, match="beta=-0.1 is not allowed"):
        call(beta=-0.1)
    with pytest.raises(ValueError, match="alpha=0.5 is not allowed"):
        call(alpha=0.5)
    with pytest.raises(ValueError, match="temperature=0 is not allowed"):
        call(temperature=0)
    zz = z.clone()
    zz[2, 1] = float("nan")
    with pytest.raises(ValueError, match="logits row 2 .* holds NaN"):
        call(zz=zz)
    with pytest.raises(ValueError, match="logits row 0 .* every action masked"):
        call(mask=torch.tensor([[False] * 4, [True] * 4, [True] * 4]))
    if op == "loss":
        with pytest.raises(ValueError, match="weights must be >= 0"):
            call(weights=torch.tensor([1.0, -1.0, 1.0]))
        with pytest.raises(ValueError, match=r"weights.shape=\(2,\) does not match"):
            call(weights=torch.ones(2))


# ------------------------------------------------------------------------------------------
# The Triton kernel (TRITON_INTERPRET=1 on the CPU) against the float64 reference
# ------------------------------------------------------------------------------------------

kb = pytest.importorskip("ops.kernels.backend")
from ops.kernels import _rows  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
EPS32 = 2.0**-23


@pytest.fixture
def seed():
    value = os.environ.get("ENTROPY_RL_TEST_SEED")
    return int(value) if value else int.from_bytes(os.urandom(4), "little")


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Every launcher buffer starts as NaN (floats) or -77 (integers)."""

    def empty(shape, dtype, device):
        fill = float("nan") if dtype.is_floating_point else -77
        return torch.full(shape if isinstance(shape, tuple) else (shape,), fill, dtype=dtype,
                          device=device)

    monkeypatch.setattr(_rows, "empty", empty)


def kernel_case(seed, N, V, dtype, masked, alpha, temperature):
    """Logits with row scales 0.3-4 and offsets (as tests/ops/test_kernels.py), q-values of
    scale 3 with NaN at masked actions, row weights (one row 0)."""
    g = torch.Generator().manual_seed(seed)
    scale = 0.3 + 3.7 * torch.rand(N, 1, generator=g)
    z = (torch.randn(N, V, generator=g) * scale + 100.0 * torch.randn(N, 1, generator=g)).to(dtype)
    q = torch.randn(N, V, generator=g) * 3.0
    mask = None
    if masked and V > 1:
        mask = torch.rand(N, V, generator=g) < 0.7
        mask[torch.arange(N), torch.randint(0, V, (N,), generator=g)] = True
        q = q.masked_fill(~mask, float("nan"))
    w = torch.rand(N, generator=g)
    w[N // 2] = 0.0
    mask = None if mask is None else mask.to(DEVICE)
    return z.to(DEVICE), q.to(DEVICE), mask, (w / w.sum()).to(DEVICE)


def soft_input(z, q, mask, w, alpha, temperature, beta, dtype=None, need_grad=True):
    zz = z if dtype is None else z.to(dtype)
    ww = w if dtype is None else w.to(dtype)
    return SoftInput(Rows(zz, mask, mapping(alpha, temperature)), q, ww, beta, need_grad=need_grad)


def _close(name, got, r64, r32, atol, seed, rtol=1e-5):
    got, r64, r32 = got.double().cpu(), r64.double().cpu(), r32.double().cpu()
    tol = rtol * r64.abs() + atol + 4 * (r32 - r64).abs() + 1e-12
    err = (got - r64).abs()
    worst = int((err - tol).argmax()) if err.numel() else 0
    assert bool((err <= tol).all()), (
        f"{name} (seed={seed}): flat index {worst}: got {got.reshape(-1)[worst].item()}, "
        f"float64 {r64.reshape(-1)[worst].item()}, tol {tol.reshape(-1)[worst].item()}")


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("config", ["fp32", "bf16-mask-T1.9-tiles", "fp32-mask-T0.7-tiles"])
@pytest.mark.parametrize("V", [1, 7, 300])
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.3])
def test_kernel_matches_reference(alpha, V, config, seed):
    dtype = torch.bfloat16 if config.startswith("bf16") else torch.float32
    masked, tiles = "mask" in config, config.endswith("tiles")
    temperature = 1.9 if "T1.9" in config else 0.7 if "T0.7" in config else 1.0
    beta, N = 0.37, 6
    z, q, mask, w = kernel_case(seed, N, V, dtype, masked, alpha, temperature)
    kw = dict(max_block_v=max(8, 1 << max(0, (V - 1).bit_length()) // 4)) if tiles else {}
    out = kb.soft(inp=soft_input(z, q, mask, w, alpha, temperature, beta), **kw)
    r64 = reference.soft(inp=soft_input(z, q, mask, w, alpha, temperature, beta, torch.float64))
    r32 = reference.soft(inp=soft_input(z, q, mask, w, alpha, temperature, beta, torch.float32))
    assert out.log_prob is None and out.loss_rows.dtype == torch.float32
    assert out.grad.dtype == dtype and out.grad.shape == z.shape
    assert torch.equal(out.support.cpu().long(), r64.support.cpu().long()) or torch.equal(
        out.support.cpu().long(), r32.support.cpu().long()), (seed, out.support, r64.support)
    # per row: <p, |q|> and beta H bound what the loss row's float32 rounding can be
    p64 = reference.probs_forward(rows=Rows(z.double(), mask, mapping(alpha, temperature))).probs
    qq = q.double().cpu().nan_to_num(0.0)
    row = (p64.cpu() * qq.abs()).sum(-1) + beta * r64.entropy.cpu().abs()
    _close("loss_rows", out.loss_rows, r64.loss_rows, r32.loss_rows, 4e-6 * row, seed)
    H_atol = 0.0 if alpha == 1.0 else 2.0**-20 / (alpha * (alpha - 1.0))
    _close("entropy", out.entropy, r64.entropy, r32.entropy,
           2e-6 * float(r64.entropy.abs().max()) + H_atol, seed)
    # the gradient: each element within float32 rounding of its row's largest terms, stored in
    # the logits' dtype (the interpreter truncates bf16: one ulp)
    g64, g32 = r64.grad.double().cpu(), r32.grad.double().cpu()
    # |q - u| <= 2 max |q|; the entropy part is beta p (log p + H) or beta (p - s_hat) / (alpha-1)
    ent_size = (1 + r64.entropy.cpu().abs()) if alpha == 1.0 else torch.full((N,), 1 / (alpha - 1))
    g_scale = (w.double().cpu() / temperature * (2 * qq.abs().amax(-1) + beta * ent_size))[:, None]
    rtol = 2.0**-7 if dtype == torch.bfloat16 else 1e-5
    _close("grad", out.grad, g64, g32, 16 * EPS32 * g_scale, seed, rtol=rtol)
    if mask is not None:
        assert bool((out.grad.cpu()[~mask.cpu()] == 0).all())
    for key in ("grad_policy_sq", "grad_entropy_sq"):  # per row
        ref = getattr(r64, key)
        assert getattr(out, key).shape == (N,)
        d2 = V * (16 * EPS32 * g_scale[:, 0]) ** 2
        _close(key, getattr(out, key), ref, getattr(r32, key),
               2 * (ref.cpu().abs() * d2).sqrt() + d2, seed)


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("alpha", [1.0, 1.3])
def test_kernel_without_grad_and_public_api(monkeypatch, alpha, seed):
    z, q, mask, w = kernel_case(seed, 5, 40, torch.float32, True, alpha, 1.0)
    out = kb.soft(inp=soft_input(z, q, mask, w, alpha, 1.0, 0.2, need_grad=False))
    assert out.grad is None and out.grad_policy_sq is None and out.grad_entropy_sq is None
    r64 = reference.soft(inp=soft_input(z, q, mask, w, alpha, 1.0, 0.2, torch.float64))
    torch.testing.assert_close(out.loss_rows.double().cpu(), r64.loss_rows.cpu(), atol=2e-5,
                               rtol=1e-5)
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", "triton")
    v = ops.soft_value(z, q, beta=0.2, alpha=alpha, mask=mask)
    torch.testing.assert_close(v.double().cpu(), -r64.loss_rows.cpu(), atol=2e-5, rtol=1e-5)
    leaf = z.clone().requires_grad_()
    loss = ops.soft_policy_loss(leaf, q, beta=0.2, alpha=alpha, mask=mask, weights=w)
    loss.loss.backward()
    torch.testing.assert_close(float(loss.loss), float((r64.loss_rows * w.double()).sum()),
                               atol=2e-5, rtol=1e-5)
    qq = q.clone()
    qq[1][mask[1]] = float("inf")
    with pytest.raises(ValueError, match=r"q_values\[\d+\] \(flat index\) = inf"):
        ops.soft_value(z, qq, beta=0.2, alpha=alpha, mask=mask)


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.3])
def test_kernel_row_beta_matches_reference(alpha, seed):
    """The kernel's ROW_BETA variant, several tiles per row, against the float64 reference: loss
    rows, gradient and per-row squared norms; one value everywhere is the float variant."""
    N, V = 6, 300
    z, q, mask, w = kernel_case(seed, N, V, torch.float32, True, alpha, 0.9)
    beta = torch.rand(N, generator=torch.Generator().manual_seed(seed)).to(DEVICE) * 0.5
    beta[3] = 0.0
    got = kb.soft(inp=soft_input(z, q, mask, w, alpha, 0.9, beta), max_block_v=64)
    want = reference.soft(inp=soft_input(z, q, mask, w, alpha, 0.9, beta.double(), torch.float64))
    for field in ("loss_rows", "entropy", "grad_policy_sq", "grad_entropy_sq", "grad"):
        g_, w_ = getattr(got, field).double().cpu(), getattr(want, field).double().cpu()
        assert g_.shape == w_.shape, field
        scale = float(w_.abs().max())
        torch.testing.assert_close(g_, w_, atol=2e-5 * max(scale, 1e-3), rtol=1e-4, msg=field)
    assert float(got.grad_entropy_sq[3]) == 0.0
    one = kb.soft(inp=soft_input(z, q, mask, w, alpha, 0.9, torch.full((N,), 0.25, device=DEVICE)),
                  max_block_v=64)
    scalar = kb.soft(inp=soft_input(z, q, mask, w, alpha, 0.9, 0.25), max_block_v=64)
    for field in ("loss_rows", "grad", "grad_policy_sq", "grad_entropy_sq"):
        torch.testing.assert_close(getattr(one, field), getattr(scalar, field), atol=1e-7, rtol=1e-6,
                                   msg=field)
