"""Per-row beta and the per-row outputs of ``ops.pg_loss`` / ``ops.ppo_loss``.

A population of runs that differ in beta shares one call (DESIGN.md section 1 with the scalar
beta made a row value, ``l_i = policy_i - beta_i H_i``), and every member's metrics come from
its rows: ``loss_rows``, ``grad_sq_policy``, ``grad_sq_entropy``.

* float64: one call with a per-row beta equals the op called row by row with each row's float
  beta (loss rows, entropy, gradient rows scaled by the row's weight), pg and ppo, alpha 1, 1.5,
  2, 1.3, with a mask, weights and a temperature;
* the per-row squared norms are those of autograd's gradient rows of each term of the textbook
  composite (policy: the loss at beta = 0; entropy: ``-mean_w(beta H)``), and sum to the scalar
  norms;
* a float beta and a constant tensor give the same numbers in both backends; ``loss_rows``'
  weighted mean is ``loss``; the per-row squares are None without norms or without a gradient;
* CPU blocks and the Triton kernels (interpreter, several tiles per row) give the reference's
  values;
* a bad per-row beta raises one ValueError naming beta.

Every form of the argument (scalar, 0-d, stride-0 broadcast, strided, transposed; Triton against
torch) is in tests/ops/test_contract.py.
"""

from __future__ import annotations

import pytest
import torch
from ops_helpers import gen, rows
from test_losses import composite_terms, make_case

import ops
from ops import reference
from ops._contract import LossInput

kb = pytest.importorskip("ops.kernels.backend")

ALPHAS = [1.0, 1.5, 2.0, 1.3]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
LEAD, V = (2, 3), 6
F64 = dict(atol=1e-12, rtol=1e-10)


def _beta_rows(key, lead=LEAD):
    """Distinct per-row betas in [0, 0.5), one of them exactly 0."""
    beta = torch.rand(lead, generator=gen("beta", *key), dtype=torch.float64) * 0.5
    beta.view(-1)[1] = 0.0
    return beta


def _call(c, ppo, beta, alpha, temperature, sel=..., weighted=True, **kw):
    """The op on the rows ``sel`` of case ``c`` (a fresh leaf); returns its output and gradient."""
    z = c["z"][sel].detach().clone().requires_grad_()
    args = (z, c["actions"][sel], c["advantages"][sel])
    if ppo:
        args += (c["old_log_prob"][sel],)
    mask = None if c["mask"] is None else c["mask"][sel]
    fn = ops.ppo_loss if ppo else ops.pg_loss
    out = fn(*args, beta=beta, alpha=alpha, temperature=temperature, mask=mask,
             weights=c["weights"][sel] if weighted else None, **kw)
    if z.requires_grad and out.loss.requires_grad:
        out.loss.backward()
    return out, z.grad


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_row_beta_equals_row_by_row(ppo, alpha):
    temperature = 0.7
    c = make_case(("row-by-row", ppo, alpha), (*LEAD, V), alpha, temperature, True, ppo)
    beta = _beta_rows(("row-by-row", ppo, alpha))
    out, grad = _call(c, ppo, beta, alpha, temperature)
    w = c["weights"] / c["weights"].sum()
    torch.testing.assert_close(out.loss.detach(), (w * out.loss_rows).sum(), **F64)
    for i, j in [(i, j) for i in range(LEAD[0]) for j in range(LEAD[1])]:
        sel = (slice(i, i + 1), slice(j, j + 1))  # a (1, 1, V) batch: row (i, j) alone
        alone, g_alone = _call(c, ppo, float(beta[i, j]), alpha, temperature, sel, weighted=False)
        torch.testing.assert_close(out.loss_rows[i, j], alone.loss.detach(), **F64)
        torch.testing.assert_close(out.entropy[i, j], alone.entropy[0, 0], **F64)
        torch.testing.assert_close(out.log_prob[i, j], alone.log_prob[0, 0], **F64)
        # the batch's gradient row is the row's own gradient times its share of the weight
        torch.testing.assert_close(grad[i, j], w[i, j] * g_alone[0, 0], **F64)
        for term in ("policy", "entropy"):
            sq = getattr(out, f"grad_sq_{term}")[i, j]
            sq_alone = getattr(alone, f"grad_sq_{term}")[0, 0]
            torch.testing.assert_close(sq_alone, getattr(alone, f"grad_norm_{term}") ** 2, **F64)
            torch.testing.assert_close(sq, w[i, j] ** 2 * sq_alone, **F64)
        if ppo:
            torch.testing.assert_close(out.ratio[i, j], alone.ratio[0, 0], **F64)
            assert bool(out.clipped[i, j] == alone.clipped[0, 0])
    assert float(out.grad_sq_entropy[0, 1]) == 0.0  # beta = 0 there
    assert float(out.grad_sq_entropy.sum()) > 0 and float(out.grad_sq_policy.sum()) > 0


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_member_metrics_from_one_call(ppo, alpha):
    """Members (the leading index, 3 rows each, one beta each) in one call: each member's loss,
    mean entropy and gradient norms of its own weighted mean loss follow from the per-row
    outputs as the LossOutput docstring says, equal to calling the op on the member alone."""
    c = make_case(("members", ppo, alpha), (*LEAD, V), alpha, 0.9, True, ppo)
    member_beta = torch.tensor([0.05, 0.4], dtype=torch.float64)
    out, _ = _call(c, ppo, member_beta[:, None].expand(LEAD), alpha, 0.9)
    w = c["weights"]
    for k in range(LEAD[0]):
        alone, _ = _call(c, ppo, float(member_beta[k]), alpha, 0.9, sel=k)
        share = w[k] / w[k].sum()
        torch.testing.assert_close((share * out.loss_rows[k]).sum(), alone.loss.detach(), **F64)
        torch.testing.assert_close(out.entropy[k], alone.entropy, **F64)
        for term in ("policy", "entropy"):
            rescale = w.sum() / w[k].sum()
            norm = getattr(out, f"grad_sq_{term}")[k].sum().sqrt() * rescale
            torch.testing.assert_close(norm, getattr(alone, f"grad_norm_{term}"), **F64)


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_row_norms_are_autograd_row_norms(ppo, alpha):
    """grad_sq_* are the squared norms of the rows of autograd's gradient of each term of the
    composite (DESIGN.md section 1), and the total gradient is the composite's."""
    temperature = 1.3
    c = make_case(("row-norms", ppo, alpha), (*LEAD, V), alpha, temperature, True, ppo)
    beta = _beta_rows(("row-norms", ppo, alpha))
    out, grad = _call(c, ppo, beta, alpha, temperature)
    w = c["weights"] / c["weights"].sum()

    def term(which):
        z = c["z"].detach().clone().requires_grad_()
        t = composite_terms(z, c["actions"], c["advantages"], alpha, temperature, c["mask"],
                            c.get("old_log_prob") if ppo else None)
        rows_ = {"policy": t["policy"], "entropy": -beta * t["H"],
                 "total": t["policy"] - beta * t["H"]}[which]
        (g,) = torch.autograd.grad((w * rows_).sum(), z)
        return rows_.detach(), g

    _, g_pol = term("policy")
    _, g_ent = term("entropy")
    loss_rows, g_total = term("total")
    torch.testing.assert_close(out.loss_rows, loss_rows, **F64)
    torch.testing.assert_close(grad, g_total, **F64)
    for name, g in (("policy", g_pol), ("entropy", g_ent)):
        sq = getattr(out, f"grad_sq_{name}")
        assert sq.shape == LEAD and sq.dtype == torch.float64
        torch.testing.assert_close(sq, g.pow(2).sum(-1), **F64)
        torch.testing.assert_close(sq.sum().sqrt(), getattr(out, f"grad_norm_{name}"), **F64)
    # the policy term's rows are those of the whole gradient at beta = 0
    out0, grad0 = _call(c, ppo, torch.zeros(LEAD, dtype=torch.float64), alpha, temperature)
    torch.testing.assert_close(out.grad_sq_policy, grad0.pow(2).sum(-1), **F64)
    assert bool((out0.grad_sq_entropy == 0).all())


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", [1.0, 1.5])
def test_float_beta_and_constant_tensor_agree(monkeypatch, backend, ppo, alpha):
    """A float beta (the scalar path and kernel variant) and the same value in every row (the
    per-row path) give the same numbers, float32 logits; loss_rows come with a float beta too."""
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", backend)
    c = make_case(("float-vs-rows", ppo, alpha), (*LEAD, 40), alpha, 0.8, True, ppo)
    c = {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
         for k, v in c.items()}
    out_f, g_f = _call(c, ppo, 0.37, alpha, 0.8)
    out_t, g_t = _call(c, ppo, torch.full(LEAD, 0.37), alpha, 0.8)
    tol = dict(atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g_t, g_f, **tol)
    for field in ("loss", "entropy", "log_prob", "grad_norm_policy", "grad_norm_entropy",
                  "loss_rows", "grad_sq_policy", "grad_sq_entropy"):
        got, want = getattr(out_t, field), getattr(out_f, field)
        assert got.shape == want.shape and got.dtype == want.dtype, field
        torch.testing.assert_close(got.detach(), want.detach(), **tol, msg=field)
    w = c["weights"] / c["weights"].sum()
    torch.testing.assert_close(out_f.loss.detach(), (w * out_f.loss_rows).sum(), **tol)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
def test_per_row_squares_absent_without_norms_or_gradient(monkeypatch, backend, ppo):
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", backend)
    c = make_case(("absent", ppo), (*LEAD, 9), 1.5, 1.0, False, ppo)
    c = {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
         for k, v in c.items()}
    beta = _beta_rows(("absent", ppo)).float()
    full, _ = _call(c, ppo, beta, 1.5, 1.0)
    no_norms, _ = _call(c, ppo, beta, 1.5, 1.0, grad_norms=False)
    with torch.no_grad():
        no_grad, _ = _call(c, ppo, beta, 1.5, 1.0)
    for out in (no_norms, no_grad):
        assert out.grad_sq_policy is None and out.grad_sq_entropy is None
        assert float(out.grad_norm_policy) == 0 and float(out.grad_norm_entropy) == 0
        assert out.loss_rows.shape == LEAD and not out.loss_rows.requires_grad
        torch.testing.assert_close(out.loss_rows, full.loss_rows)
    assert full.grad_sq_policy.shape == LEAD and not full.grad_sq_policy.requires_grad


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", [1.0, 1.3])
def test_cpu_blocks_with_row_beta(monkeypatch, ppo, alpha):
    """Blocks of rows (large CPU batches) slice the per-row beta with the rows."""
    c = make_case(("blocks", ppo, alpha), (37, 11), alpha, 0.8, True, ppo)
    beta = _beta_rows(("blocks", ppo, alpha), lead=(37,))
    monkeypatch.setattr(reference, "_CPU_BLOCK_ELEMS", 10**9)
    out, grad = _call(c, ppo, beta, alpha, 0.8)
    monkeypatch.setattr(reference, "_CPU_BLOCK_ELEMS", 5 * 11)  # 8 blocks, the last of 2 rows
    out_b, grad_b = _call(c, ppo, beta, alpha, 0.8)
    torch.testing.assert_close(grad_b, grad, **F64)
    for field in ("loss", "loss_rows", "entropy", "grad_sq_policy", "grad_sq_entropy"):
        torch.testing.assert_close(getattr(out_b, field), getattr(out, field), **F64, msg=field)


@pytest.mark.parametrize("loss", ["pg", "ppo"])
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.3, 2.5])
def test_kernel_row_beta_matches_reference(loss, alpha):
    """The kernels' ROW_BETA variant, several tiles per row (V = 300 in tiles of 64), against the
    float64 reference on the same fp32 logits: loss rows, gradient and per-row squared norms."""
    n, n_act = 16, 300
    g = gen("kernel-row-beta", loss, alpha)
    z = torch.randn(n, n_act, generator=g) * 1.5
    mask = torch.rand(n, n_act, generator=g) < 0.8
    mask[:, 0] = True
    p = reference.probs_forward(rows=rows(z.double(), mask, alpha, 0.9)).probs
    actions = torch.multinomial(p, 1, generator=g).view(-1)
    beta = torch.rand(n, generator=g) * 0.5
    beta[3] = 0.0
    case = dict(actions=actions, advantages=torch.randn(n, generator=g),
                row_scale=torch.rand(n, generator=g) / n,
                old_log_prob=p.gather(-1, actions[:, None]).view(-1).log().float()
                + 0.2 * torch.randn(n, generator=g))
    # compiled kernels on a GPU (scripts/check_gpu.py's tests step), the interpreter on the CPU
    z, mask, beta = z.to(DEVICE), mask.to(DEVICE), beta.to(DEVICE)
    case = {k: v.to(DEVICE) for k, v in case.items()}

    def inp(dtype, b):
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in case.items()}
        ppo = loss == "ppo"
        return LossInput(rows(z.to(dtype), mask, alpha, 0.9), cast["actions"],
                         cast["advantages"], cast["row_scale"], b, need_grad=True,
                         old_log_prob=cast["old_log_prob"] if ppo else None,
                         clip_eps=0.2 if ppo else None)

    got = getattr(kb, loss)(inp=inp(torch.float32, beta), max_block_v=64)
    want = getattr(reference, loss)(inp=inp(torch.float64, beta.double()))
    scalar = getattr(kb, loss)(inp=inp(torch.float32, 0.25), max_block_v=64)
    for field in ("loss_rows", "entropy", "grad_policy_sq", "grad_entropy_sq", "grad"):
        g_, w_ = getattr(got, field).double(), getattr(want, field)
        assert g_.shape == w_.shape, field
        scale = float(w_.abs().max())
        torch.testing.assert_close(g_, w_, atol=2e-5 * max(scale, 1e-3), rtol=1e-4, msg=field)
    assert float(got.grad_entropy_sq[3]) == 0.0
    # the per-row variant with one value everywhere is the float variant
    one = getattr(kb, loss)(inp=inp(torch.float32, torch.full((n,), 0.25, device=DEVICE)),
                            max_block_v=64)
    for field in ("loss_rows", "grad", "grad_policy_sq", "grad_entropy_sq"):
        torch.testing.assert_close(getattr(one, field), getattr(scalar, field), atol=1e-7,
                                   rtol=1e-6, msg=field)


BAD = {
    "negative": (lambda b: b.index_fill(0, torch.tensor([3]), -0.1),
                 r"beta has a negative entry -0\.1\d* at row 3 \(flat index\); allowed: finite values >= 0"),
    "nan": (lambda b: b.index_fill(0, torch.tensor([4]), float("nan")),
            r"beta has a non-finite entry nan at row 4"),
    "inf": (lambda b: b.index_fill(0, torch.tensor([0]), float("inf")),
            r"beta has a non-finite entry inf at row 0"),
    "-inf": (lambda b: b.index_fill(0, torch.tensor([5]), float("-inf")),
             r"beta has a non-finite entry -inf at row 5"),
    "length": (lambda b: b[:5], r"beta\.shape=\(5,\) does not match the logits' leading shape \(6,\)"),
}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("bad", list(BAD))
def test_bad_row_beta_is_named(monkeypatch, backend, ppo, bad):
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", backend)
    make, message = BAD[bad]
    g = gen("bad-beta", bad, ppo)
    z = torch.randn(6, 5, generator=g)
    beta = make(torch.full((6,), 0.2))
    args = (z, torch.zeros(6, dtype=torch.long), torch.randn(6, generator=g))
    fn = ops.ppo_loss if ppo else ops.pg_loss
    if ppo:
        args += (torch.full((6,), -1.0),)
    for requires_grad in (True, False):
        with pytest.raises(ValueError, match=message):
            fn(args[0].clone().requires_grad_(requires_grad), *args[1:], beta=beta, alpha=1.5)
