"""ops.probs and ops.entropy against gradcheck and independent composites.

The composites are the textbook forms (DESIGN.md section 1): ``torch.softmax`` for alpha = 1 and
the ``entmax`` package (sparsemax, entmax15, entmax_bisect) for alpha > 1, with autograd through
them. The closed-form backward of ops must match autograd through those composites.
"""

from __future__ import annotations

import entmax
import pytest
import torch
from ops_helpers import (
    ALPHAS,
    composite_entropy,
    composite_probs,
    draw_logits,
    random_mask,
    rows,
)
from ops_helpers import gen as _gen

import ops
from ops import reference

DTYPE_TOL = {  # (atol, rtol) against the float64 composite on the same rounded logits
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-6, 1e-5),
    torch.float16: (2e-3, 5e-3),
    torch.bfloat16: (1.5e-2, 2e-2),
}


# ------------------------------------------------------------------------------------------
# Oracles: the composite written the textbook way
# ------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------
# gradcheck (float64) for the two mapping Functions
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_probs_gradcheck(alpha, masked, temperature):
    gen = _gen("probs", alpha, masked, temperature)
    mask = random_mask(gen, (4, 6)) if masked else None
    z = draw_logits(gen, (4, 6), alpha, temperature, mask).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: ops.probs(t, alpha=alpha, temperature=temperature, mask=mask), (z,))


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_gradcheck(alpha, masked, temperature):
    gen = _gen("entropy", alpha, masked, temperature)
    mask = random_mask(gen, (4, 6)) if masked else None
    z = draw_logits(gen, (4, 6), alpha, temperature, mask).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: ops.entropy(t, alpha=alpha, temperature=temperature, mask=mask), (z,))


# ------------------------------------------------------------------------------------------
# Values and closed-form backward against the composites
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_probs_and_vjp_match_composite(alpha, masked, temperature):
    gen = _gen("probs-vs", alpha, masked, temperature)
    shape = (3, 4, 9)
    mask = random_mask(gen, shape) if masked else None
    z = draw_logits(gen, shape, alpha, temperature, mask, scale=2.0)
    upstream = torch.randn(shape, generator=gen, dtype=torch.float64)

    z1 = z.clone().requires_grad_()
    p = ops.probs(z1, alpha=alpha, temperature=temperature, mask=mask)
    (p * upstream).sum().backward()

    z2 = z.clone().requires_grad_()
    p_ref = composite_probs(z2, alpha, temperature, mask)
    (p_ref * upstream).sum().backward()

    assert p.shape == shape and p.dtype == torch.float64
    torch.testing.assert_close(p, p_ref.detach(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(z1.grad, z2.grad, atol=1e-11, rtol=1e-9)
    if mask is not None:
        assert bool((p[~mask] == 0).all()) and bool((z1.grad[~mask] == 0).all())
    if alpha > 1.0 and temperature <= 1.0:
        # the sparse mappings must really be sparse on these logits, or the test shows little
        assert bool((p_ref == 0).sum() > (0 if mask is None else (~mask).sum()))


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_and_grad_match_composite(alpha, masked, temperature):
    gen = _gen("entropy-vs", alpha, masked, temperature)
    shape = (2, 5, 7)
    mask = random_mask(gen, shape) if masked else None
    z = draw_logits(gen, shape, alpha, temperature, mask, scale=2.0)
    weight = torch.randn(shape[:-1], generator=gen, dtype=torch.float64)

    z1 = z.clone().requires_grad_()
    H = ops.entropy(z1, alpha=alpha, temperature=temperature, mask=mask)
    (H * weight).sum().backward()

    z2 = z.clone().requires_grad_()
    H_ref = composite_entropy(z2, alpha, temperature, mask)
    (H_ref * weight).sum().backward()

    assert H.shape == shape[:-1] and H.dtype == torch.float64
    torch.testing.assert_close(H, H_ref.detach(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(z1.grad, z2.grad, atol=1e-11, rtol=1e-9)
    if mask is not None:
        assert bool((z1.grad[~mask] == 0).all())


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0, 3.0])
def test_probs_equal_entmax_package(alpha):
    """alpha > 1 against the entmax package directly (no temperature, no mask), wide rows."""
    gen = _gen("entmax-pkg", alpha)
    z = torch.randn(16, 40, generator=gen, dtype=torch.float64) * 3
    if alpha == 2.0:
        want = entmax.sparsemax(z, dim=-1)
    elif alpha == 1.5:
        want = entmax.entmax15(z, dim=-1)
    else:
        want = entmax.entmax_bisect(z, alpha, dim=-1, n_iter=200)
    torch.testing.assert_close(ops.probs(z, alpha=alpha), want, atol=1e-12, rtol=1e-10)


def test_entropy_matches_its_formula_on_probs():
    """H computed from ops.probs by the definitions of DESIGN.md (Shannon, Gini, Tsallis)."""
    gen = _gen("formula")
    z = torch.randn(8, 11, generator=gen, dtype=torch.float64) * 2
    p = ops.probs(z, alpha=1.0)
    torch.testing.assert_close(ops.entropy(z, alpha=1.0), -(p * p.log()).sum(-1))
    p = ops.probs(z, alpha=2.0)
    torch.testing.assert_close(ops.entropy(z, alpha=2.0), 0.5 * (1 - (p * p).sum(-1)))
    p = ops.probs(z, alpha=1.7)
    torch.testing.assert_close(ops.entropy(z, alpha=1.7),
                               (1 - (p ** 1.7).sum(-1)) / (1.7 * 0.7))


def test_tsallis_tends_to_shannon_as_alpha_to_one():
    gen = _gen("limit")
    z = torch.randn(5, 6, generator=gen, dtype=torch.float64) * 0.3
    torch.testing.assert_close(ops.entropy(z, alpha=1.0 + 1e-5), ops.entropy(z, alpha=1.0),
                               atol=1e-4, rtol=1e-4)


def test_temperature_divides_logits():
    gen = _gen("temperature")
    z = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    for alpha in ALPHAS:
        torch.testing.assert_close(ops.probs(z, alpha=alpha, temperature=0.4),
                                   ops.probs(z / 0.4, alpha=alpha), atol=1e-13, rtol=1e-11)
        torch.testing.assert_close(ops.entropy(z, alpha=alpha, temperature=3.0),
                                   ops.entropy(z / 3.0, alpha=alpha), atol=1e-13, rtol=1e-11)


def test_neg_inf_logits_equal_mask():
    gen = _gen("neginf")
    z = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    mask = random_mask(gen, (5, 8))
    for alpha in ALPHAS:
        z1 = z.clone().requires_grad_()
        z2 = z.masked_fill(~mask, float("-inf")).requires_grad_()
        H1 = ops.entropy(z1, alpha=alpha, mask=mask)
        H2 = ops.entropy(z2, alpha=alpha)
        torch.testing.assert_close(H1, H2)
        torch.testing.assert_close(ops.probs(z1, alpha=alpha, mask=mask), ops.probs(z2, alpha=alpha))
        H1.sum().backward()
        H2.sum().backward()
        assert bool(torch.isfinite(z2.grad).all())
        torch.testing.assert_close(z1.grad, z2.grad)
        assert bool((z2.grad[~mask] == 0).all())


def test_mask_broadcasts_over_leading_dims():
    gen = _gen("broadcast")
    z = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)
    mask = random_mask(gen, (6,))
    for alpha in (1.0, 2.0):
        torch.testing.assert_close(ops.probs(z, alpha=alpha, mask=mask),
                                   composite_probs(z, alpha, 1.0, mask.expand(3, 4, 6)))


def test_support_size_through_entropy_function():
    """The Function's support output (used by the losses) counts p > 0 (allowed actions for softmax)."""
    gen = _gen("support")
    z = torch.randn(6, 9, generator=gen, dtype=torch.float64) * 2
    mask = random_mask(gen, (6, 9))
    for alpha in ALPHAS:
        H, support, _ = reference.entropy_forward(rows=rows(z, mask, alpha, 1.0))
        p = composite_probs(z, alpha, 1.0, mask)
        assert torch.equal(support.long(), (p > 0).sum(-1))


# ------------------------------------------------------------------------------------------
# dtypes, shapes and extremes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(alpha, dtype):
    gen = _gen("dtype", alpha, str(dtype))
    shape = (3, 5, 10)
    mask = random_mask(gen, shape)
    z = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(dtype)
    upstream = torch.randn(shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(shape[:-1], generator=gen, dtype=torch.float64)
    atol, rtol = DTYPE_TOL[dtype]

    z1 = z.clone().requires_grad_()
    p = ops.probs(z1, alpha=alpha, temperature=0.8, mask=mask)
    assert p.dtype == dtype and p.shape == shape
    (p.double() * upstream).sum().backward()
    assert z1.grad.dtype == dtype

    z2 = z.detach().double().clone().requires_grad_()
    p_ref = composite_probs(z2, alpha, 0.8, mask)
    (p_ref * upstream).sum().backward()
    torch.testing.assert_close(p.double(), p_ref.detach(), atol=atol, rtol=rtol)
    torch.testing.assert_close(z1.grad.double(), z2.grad, atol=4 * atol, rtol=4 * rtol)
    assert bool((p[~mask] == 0).all())

    z1 = z.clone().requires_grad_()
    H = ops.entropy(z1, alpha=alpha, temperature=0.8, mask=mask)
    # accumulation in float32 for half inputs, float64 stays float64
    assert H.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    (H.double() * weight).sum().backward()
    assert z1.grad.dtype == dtype
    z2 = z.detach().double().clone().requires_grad_()
    H_ref = composite_entropy(z2, alpha, 0.8, mask)
    (H_ref * weight).sum().backward()
    # H itself is accumulated in float32, so only its rounding (not the input's) counts
    h_atol = 1e-10 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(H.double(), H_ref.detach(), atol=h_atol, rtol=h_atol)
    torch.testing.assert_close(z1.grad.double(), z2.grad, atol=4 * atol, rtol=4 * rtol)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_probs_without_grad_equal_the_autograd_path(alpha, dtype, masked):
    """A rollout's probs (no graph recorded) are the same numbers as the differentiable ones."""
    gen = _gen("nograd", alpha, str(dtype), masked)
    shape = (6, 4, 9)
    mask = random_mask(gen, shape) if masked else None
    z = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 50).to(dtype)
    p_graph = ops.probs(z.clone().requires_grad_(), alpha=alpha, temperature=0.6, mask=mask)
    assert p_graph.grad_fn is not None
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            p = ops.probs(z.clone().requires_grad_(), alpha=alpha, temperature=0.6, mask=mask)
        assert p.grad_fn is None and p.dtype == dtype and p.shape == shape
        torch.testing.assert_close(p, p_graph.detach(), atol=0, rtol=0)
    p = ops.probs(z, alpha=alpha, temperature=0.6, mask=mask)  # plain tensor, grad mode on
    torch.testing.assert_close(p, p_graph.detach(), atol=0, rtol=0)
    atol, rtol = DTYPE_TOL[dtype]
    torch.testing.assert_close(p.double(), composite_probs(z.double(), alpha, 0.6, mask),
                               atol=atol, rtol=rtol)
    if masked:
        assert bool((p[~mask] == 0).all())


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_single_action(alpha, dtype):
    """V = 1: probability 1, entropy 0, gradients 0."""
    gen = _gen("V1", alpha, str(dtype))
    z = (torch.randn(4, 1, generator=gen) * 3).to(dtype).requires_grad_()
    p = ops.probs(z, alpha=alpha, temperature=0.6)
    assert bool((p == 1).all())
    H = ops.entropy(z, alpha=alpha, temperature=0.6)
    assert bool((H == 0).all())
    (H.sum() + (p.float() * torch.randn(4, 1, generator=gen)).sum()).backward()
    assert z.grad.dtype == dtype and bool((z.grad == 0).all())


@pytest.mark.parametrize("alpha", ALPHAS)
def test_empty_batch(alpha):
    z = torch.randn(0, 5, dtype=torch.float32, requires_grad=True)
    p = ops.probs(z, alpha=alpha)
    H = ops.entropy(z, alpha=alpha)
    assert p.shape == (0, 5) and H.shape == (0,)
    (p.sum() + H.sum()).backward()
    assert z.grad.shape == (0, 5)
    z3 = torch.randn(2, 0, 5, dtype=torch.float64, requires_grad=True)
    assert ops.entropy(z3, alpha=alpha, mask=torch.ones(5, dtype=torch.bool)).shape == (2, 0)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_huge_logits(alpha, dtype):
    """Logits of +-1e4 (a shift of 1e4 and a spread of 1e4): finite and equal to float64 composites."""
    gen = _gen("huge", alpha, str(dtype))
    base = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    for z in (base + 1e4, base - 1e4, base * 1e4, torch.where(base > 0, 1e4, -1e4) + base):
        z = z.to(dtype).requires_grad_()
        p = ops.probs(z, alpha=alpha)
        H = ops.entropy(z, alpha=alpha)
        H.sum().backward()
        assert bool(torch.isfinite(p).all()) and bool(torch.isfinite(H).all())
        assert bool(torch.isfinite(z.grad).all())
        z_ref = z.detach().double().requires_grad_()
        H_ref = composite_entropy(z_ref, alpha)
        H_ref.sum().backward()
        tol = 1e-9 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(p.double(), composite_probs(z_ref, alpha).detach(),
                                   atol=tol, rtol=tol)
        torch.testing.assert_close(H.double(), H_ref.detach(), atol=tol, rtol=tol)
        torch.testing.assert_close(z.grad.double(), z_ref.grad, atol=tol, rtol=tol)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_shift_invariance_of_huge_offset(alpha):
    """probs(z + 1e4) == probs(z) in float64 (1e4 * eps ~ 2e-12 of rounding in the shift)."""
    gen = _gen("offset", alpha)
    z = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(ops.probs(z + 1e4, alpha=alpha), ops.probs(z, alpha=alpha),
                               atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_ties(alpha, dtype):
    """Exact ties: tied actions get equal probability; all-equal rows are uniform, H = max."""
    V = 7
    z = torch.tensor([[2.0, 2.0, 2.0, -1.0, 0.5, 0.5, -3.0],
                      [0.25] * V,
                      [-40.0] * V], dtype=dtype).requires_grad_()
    p = ops.probs(z, alpha=alpha)
    assert p[0, 0] == p[0, 1] == p[0, 2] and p[0, 4] == p[0, 5]
    torch.testing.assert_close(p[1:].double(), torch.full((2, V), 1.0 / V, dtype=torch.float64),
                               atol=DTYPE_TOL[dtype][0], rtol=DTYPE_TOL[dtype][1])
    H = ops.entropy(z, alpha=alpha)
    h_tol = 1e-12 if dtype == torch.float64 else 1e-6  # H accumulates in float32 for those
    torch.testing.assert_close(H[1:].double(), torch.full((2,), ops.max_entropy(alpha, V),
                                                          dtype=torch.float64),
                               atol=h_tol, rtol=h_tol)
    H.sum().backward()
    assert bool(torch.isfinite(z.grad).all())
    # uniform is the maximum of H: the gradient vanishes there
    torch.testing.assert_close(z.grad[1:].double(), torch.zeros(2, V, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    z_ref = z.detach().double().requires_grad_()
    composite_entropy(z_ref, alpha).sum().backward()
    torch.testing.assert_close(z.grad.double(), z_ref.grad,
                               atol=4 * DTYPE_TOL[dtype][0], rtol=4 * DTYPE_TOL[dtype][1])


@pytest.mark.parametrize("alpha", ALPHAS)
def test_max_entropy_is_entropy_of_uniform(alpha):
    for n in (1, 2, 5, 33):
        H = ops.entropy(torch.full((1, n), 0.3, dtype=torch.float64), alpha=alpha)
        assert ops.max_entropy(alpha, n) == pytest.approx(float(H), abs=1e-12)
    # tensor of counts, e.g. mask.sum(-1)
    gen = _gen("maxent", alpha)
    mask = random_mask(gen, (6, 9))
    z = torch.zeros(6, 9, dtype=torch.float64).add_(1.7)
    torch.testing.assert_close(ops.max_entropy(alpha, mask.sum(-1)),
                               ops.entropy(z, alpha=alpha, mask=mask))


# ------------------------------------------------------------------------------------------
# Backend selection
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_backend_torch_selects_reference(monkeypatch, dtype):
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", "torch")
    assert ops.backend_for(torch.randn(3, 4).to(dtype)) is reference
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", " Torch ")
    assert ops.backend_for(torch.randn(2, 7).to(dtype)) is reference


def test_backend_auto_on_cpu_is_reference(monkeypatch):
    monkeypatch.delenv("ENTROPY_RL_OPS_BACKEND", raising=False)
    assert ops.backend_for(torch.randn(3, 4)) is reference
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", "auto")
    assert ops.backend_for(torch.randn(3, 4)) is reference


def test_backend_torch_is_what_runs(monkeypatch):
    """With the torch backend forced, the public API returns exactly the reference's numbers."""
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", "torch")
    gen = _gen("backend-run")
    z = torch.randn(5, 6, generator=gen)
    for alpha in ALPHAS:
        H, _, _ = reference.entropy_forward(rows=rows(z, None, alpha, 1.3))
        assert torch.equal(ops.entropy(z, alpha=alpha, temperature=1.3), H)
