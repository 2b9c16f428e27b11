"""ops.pg_loss and ops.ppo_loss against gradcheck and autograd through the textbook composite.

Composite (DESIGN.md section 1): p from ``torch.softmax`` or the ``entmax`` package, per row
``-A log p_a - beta H`` (pg) or ``-min(r A, clip(r, 1-eps, 1+eps) A) - beta H`` with
``r = p_a / exp(old_log_prob)`` (ppo), batch loss ``sum w l / sum w``; autograd gives the
gradient the fused closed form must reproduce.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ops_helpers import (
    ALPHAS,
    composite_probs,
    draw_logits,
    entropy_of_probs,
    random_mask,
    sample_actions,
)
from ops_helpers import gen as _gen

import ops

MASK_TEMPERATURE = [(False, 1.0), (True, 0.7), (False, 0.7), (True, 1.0)]
DTYPE_TOL = {  # (atol, rtol) against the float64 composite on the same rounded logits
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (3e-3, 1e-2),
    torch.bfloat16: (2e-2, 4e-2),
}


# ------------------------------------------------------------------------------------------
# Oracles
# ------------------------------------------------------------------------------------------


def composite_terms(z, actions, advantages, alpha, temperature=1.0, mask=None,
                    old_log_prob=None, clip_eps=0.2):
    """Per-row (policy term, H, p, p_a[, ratio, clipped]) with autograd through the composite."""
    p = composite_probs(z, alpha, temperature, mask)
    H = entropy_of_probs(p, alpha)
    p_a = p.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    A = advantages
    out = {"p": p, "H": H, "p_a": p_a}
    if old_log_prob is None:
        out["policy"] = -A * p_a.log()
    else:
        r = p_a / old_log_prob.exp()
        out["policy"] = -torch.minimum(r * A, r.clamp(1 - clip_eps, 1 + clip_eps) * A)
        out["ratio"] = r
        out["clipped"] = ((A > 0) & (r > 1 + clip_eps)) | ((A < 0) & (r < 1 - clip_eps))
    return out


def _wmean(rows, weights):
    return rows.mean() if weights is None else (weights * rows).sum() / weights.sum()


def make_case(key, shape, alpha, temperature, masked, ppo, clipped_rows=True):
    """Logits, mask, actions, advantages, weights (and old_log_prob for PPO) for one test."""
    gen = _gen(*key)
    mask = random_mask(gen, shape) if masked else None
    # the support depends on (alpha - 1) z: shrink the spread for alpha > 2 so that rows keep
    # several actions in the support (a one-hot row has no policy gradient to check)
    z = draw_logits(gen, shape, alpha, temperature, mask, scale=1.5 / max(1.0, alpha - 1.0))
    p = composite_probs(z, alpha, temperature, mask)
    case = {
        "z": z, "mask": mask, "gen": gen,
        "actions": sample_actions(gen, p),
        "advantages": torch.randn(shape[:-1], generator=gen, dtype=torch.float64),
        "weights": torch.rand(shape[:-1], generator=gen, dtype=torch.float64) + 0.1,
    }
    if ppo:
        log_p_a = p.gather(-1, case["actions"].unsqueeze(-1)).squeeze(-1).log()
        # noise of +-0.05 keeps r within [0.95, 1.05], far from 1 +- eps; rows with +-0.6
        # (r ~ 1.8 or 0.55) exercise both the clipped branch and the active unclipped one
        # outside the clip range, depending on the sign of A.
        noise = (torch.rand(shape[:-1], generator=gen, dtype=torch.float64) - 0.5) * 0.1
        if clipped_rows:
            big = torch.rand(shape[:-1], generator=gen) < 0.6
            # sign(noise) = sign(A) clips the row; the opposite sign keeps r A active
            alternate = torch.arange(big.numel()).reshape(big.shape) % 2 * 2 - 1
            sign = case["advantages"].sign() * alternate
            noise = torch.where(big, 0.6 * sign, noise)
        case["old_log_prob"] = log_p_a - noise
    return case


def run_ops(case, dtype, alpha, temperature, beta, ppo, weighted=True, upstream=1.0,
            clip_eps=0.2):
    # a fresh leaf: .to() returns case["z"] itself when the dtype already matches, and
    # marking that as requiring grad would turn the composite's clones into non-leaves
    z = case["z"].detach().to(dtype).clone().requires_grad_()
    kwargs = dict(beta=beta, alpha=alpha, temperature=temperature, mask=case["mask"],
                  weights=case["weights"] if weighted else None)
    if ppo:
        out = ops.ppo_loss(z, case["actions"], case["advantages"], case["old_log_prob"],
                           clip_eps=clip_eps, **kwargs)
    else:
        out = ops.pg_loss(z, case["actions"], case["advantages"], **kwargs)
    (out.loss * upstream).backward()
    return out, z.grad


def run_composite(case, dtype, alpha, temperature, beta, ppo, weighted=True, upstream=1.0,
                  clip_eps=0.2):
    """Loss, gradient, per-row stats, and the norms of the policy / entropy gradients apart."""
    w = case["weights"] if weighted else None
    z = case["z"].detach().to(dtype).double()

    def terms(zz):
        return composite_terms(zz, case["actions"], case["advantages"], alpha, temperature,
                               case["mask"], case.get("old_log_prob") if ppo else None, clip_eps)

    z_full = z.clone().requires_grad_()
    t = terms(z_full)
    loss = _wmean(t["policy"] - beta * t["H"], w)
    (loss * upstream).backward()

    z_pol = z.clone().requires_grad_()
    (g_pol,) = torch.autograd.grad(_wmean(terms(z_pol)["policy"], w), z_pol)
    z_ent = z.clone().requires_grad_()
    (g_ent,) = torch.autograd.grad(_wmean(-beta * terms(z_ent)["H"], w), z_ent)
    return {"loss": loss.detach(), "grad": z_full.grad, "t": t,
            "norm_policy": g_pol.norm(), "norm_entropy": g_ent.norm(), "grad_policy": g_pol}


# ------------------------------------------------------------------------------------------
# gradcheck (float64)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize(("masked", "temperature"), MASK_TEMPERATURE)
def test_pg_loss_gradcheck(alpha, masked, temperature):
    c = make_case(("gc-pg", alpha, masked, temperature), (4, 6), alpha, temperature, masked,
                  ppo=False)
    assert torch.autograd.gradcheck(
        lambda t: ops.pg_loss(t, c["actions"], c["advantages"], beta=0.3, alpha=alpha,
                              temperature=temperature, mask=c["mask"], weights=c["weights"]).loss,
        (c["z"].requires_grad_(),))


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize(("masked", "temperature"), MASK_TEMPERATURE)
def test_ppo_loss_gradcheck(alpha, masked, temperature):
    c = make_case(("gc-ppo", alpha, masked, temperature), (6, 6), alpha, temperature, masked,
                  ppo=True)
    out = ops.ppo_loss(c["z"], c["actions"], c["advantages"], c["old_log_prob"], alpha=alpha,
                       temperature=temperature, mask=c["mask"])
    ratio = out.ratio
    assert bool(((ratio - 0.8).abs() > 0.02).all() and ((ratio - 1.2).abs() > 0.02).all())
    assert torch.autograd.gradcheck(
        lambda t: ops.ppo_loss(t, c["actions"], c["advantages"], c["old_log_prob"], beta=0.3,
                               alpha=alpha, temperature=temperature, mask=c["mask"],
                               weights=c["weights"]).loss,
        (c["z"].requires_grad_(),))


# ------------------------------------------------------------------------------------------
# Closed form against autograd through the composite (float64)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize(("masked", "temperature"), MASK_TEMPERATURE)
def test_loss_matches_composite(ppo, alpha, masked, temperature):
    shape = (3, 4, 9)
    c = make_case(("vs", ppo, alpha, masked, temperature), shape, alpha, temperature, masked, ppo)
    beta = 0.25
    out, grad = run_ops(c, torch.float64, alpha, temperature, beta, ppo, upstream=3.7)
    ref = run_composite(c, torch.float64, alpha, temperature, beta, ppo, upstream=3.7)
    t = ref["t"]

    torch.testing.assert_close(out.loss, ref["loss"], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad, ref["grad"], atol=1e-12, rtol=1e-9)
    assert out.entropy.shape == shape[:-1]
    torch.testing.assert_close(out.entropy, t["H"].detach(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out.log_prob, t["p_a"].detach().log(), atol=1e-11, rtol=1e-10)
    assert out.support_size.shape == shape[:-1]
    assert torch.equal(out.support_size.long(), (t["p"] > 0).sum(-1))
    for stat in (out.entropy, out.log_prob, out.support_size, out.grad_norm_policy,
                 out.grad_norm_entropy):
        assert not stat.requires_grad
    torch.testing.assert_close(out.grad_norm_policy.double(), ref["norm_policy"],
                               atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(out.grad_norm_entropy.double(), ref["norm_entropy"],
                               atol=1e-12, rtol=1e-9)
    assert float(ref["norm_policy"]) > 1e-3 and float(ref["norm_entropy"]) > 1e-3
    if ppo:
        torch.testing.assert_close(out.ratio, t["ratio"].detach(), atol=1e-12, rtol=1e-10)
        assert torch.equal(out.clipped, t["clipped"])
        # the case must hold clipped and unclipped rows, or half the branches go untested
        assert bool(out.clipped.any()) and bool((~out.clipped).any())
    else:
        assert out.ratio is None and out.clipped is None
    if masked:
        assert bool((grad[~c["mask"].expand(shape)] == 0).all())


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
def test_unweighted_loss_is_plain_mean(ppo, alpha):
    c = make_case(("mean", ppo, alpha), (7, 5), alpha, 1.0, False, ppo)
    out, grad = run_ops(c, torch.float64, alpha, 1.0, 0.1, ppo, weighted=False)
    ref = run_composite(c, torch.float64, alpha, 1.0, 0.1, ppo, weighted=False)
    torch.testing.assert_close(out.loss, ref["loss"], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad, ref["grad"], atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
def test_no_grad_gives_same_loss_and_zero_norms(ppo):
    c = make_case(("nograd", ppo), (5, 6), 1.5, 1.0, True, ppo)
    out_grad, _ = run_ops(c, torch.float64, 1.5, 1.0, 0.2, ppo)
    args = (c["z"], c["actions"], c["advantages"]) + ((c["old_log_prob"],) if ppo else ())
    fn = ops.ppo_loss if ppo else ops.pg_loss
    out = fn(*args, beta=0.2, alpha=1.5, mask=c["mask"], weights=c["weights"])
    torch.testing.assert_close(out.loss, out_grad.loss.detach())
    assert float(out.grad_norm_policy) == 0 and float(out.grad_norm_entropy) == 0
    assert float(out_grad.grad_norm_policy) > 0 and float(out_grad.grad_norm_entropy) > 0
    with torch.no_grad():
        out = fn(*args, beta=0.2, alpha=1.5, mask=c["mask"], weights=c["weights"])
    torch.testing.assert_close(out.loss, out_grad.loss.detach())


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
def test_grad_buffer_receives_gradient(ppo):
    c = make_case(("buffer", ppo), (4, 7), 2.0, 0.9, True, ppo)
    out_ref, grad_ref = run_ops(c, torch.float32, 2.0, 0.9, 0.3, ppo)
    z = c["z"].float().requires_grad_()
    buffer = torch.randn(4, 7, generator=c["gen"])
    args = (z, c["actions"], c["advantages"]) + ((c["old_log_prob"],) if ppo else ())
    fn = ops.ppo_loss if ppo else ops.pg_loss
    out = fn(*args, beta=0.3, alpha=2.0, temperature=0.9, mask=c["mask"], weights=c["weights"],
             grad_buffer=buffer)
    out.loss.backward()
    torch.testing.assert_close(buffer, grad_ref)
    torch.testing.assert_close(z.grad, grad_ref)


# ------------------------------------------------------------------------------------------
# Cross-entropy and the sparse-PPO zero-probability case
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pg_loss_is_cross_entropy(dtype):
    gen = _gen("ce", str(dtype))
    N, V = 12, 10
    z = (torch.randn(N, V, generator=gen, dtype=torch.float64) * 2).to(dtype)
    labels = torch.randint(0, V, (N,), generator=gen)
    z1 = z.clone().requires_grad_()
    out = ops.pg_loss(z1, labels.to(torch.int32), advantages=1.0)
    out.loss.backward()
    z2 = z.clone().requires_grad_()
    ce = F.cross_entropy(z2, labels)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(out.loss.to(dtype), ce.detach(), atol=tol, rtol=tol)
    want = (torch.softmax(z.double(), -1) - F.one_hot(labels, V).double()) / N
    torch.testing.assert_close(z1.grad.double(), want, atol=tol, rtol=tol)
    torch.testing.assert_close(out.log_prob.double(), torch.log_softmax(z.double(), -1)
                               .gather(-1, labels.unsqueeze(-1)).squeeze(-1), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_pg_loss_is_confidence_penalty(dtype, temperature):
    """Pereyra et al. 2017: CE - beta H(p) is pg_loss with advantages 1 (ops/__init__ docstring)."""
    gen = _gen("confidence", str(dtype), temperature)
    N, V, beta = 9, 8, 0.35
    z = (torch.randn(3, N, V, generator=gen, dtype=torch.float64) * 2).to(dtype)
    labels = torch.randint(0, V, (3, N), generator=gen)
    z1 = z.clone().requires_grad_()
    out = ops.pg_loss(z1, labels, advantages=1.0, beta=beta, temperature=temperature)
    out.loss.backward()
    z2 = z.clone().requires_grad_()
    zt = z2 / temperature
    H = -(torch.softmax(zt, -1) * torch.log_softmax(zt, -1)).sum(-1)
    want = F.cross_entropy(zt.reshape(-1, V), labels.reshape(-1)) - beta * H.mean()
    want.backward()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(out.loss.to(dtype), want.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(z1.grad, z2.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(out.entropy.to(dtype), H.detach(), atol=tol, rtol=tol)
    # the penalty matters: without it the loss and gradient differ
    assert float((H.detach().mean() * beta).abs()) > 0.1


@pytest.mark.parametrize("alpha", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_sparse_zero_probability_action(alpha, beta):
    """The new sparse policy gives the taken action p = 0: policy gradient exactly 0, all finite.

    Row 0 and 1 take action 2, whose logit is 8 below the max (outside the support of every
    alpha > 1 mapping: tau >= max - 1/(alpha-1)); row 2 is an ordinary row. A > 0 on row 0
    (unclipped branch, r = 0) and A < 0 on row 1 (clipped branch).
    """
    gen = _gen("zero-p", alpha, beta)
    base = torch.randn(3, 5, generator=gen, dtype=torch.float64) * 0.3
    base[:2, 0] += 2.0
    base[:2, 2] = base[:2, 0] - 8.0
    base[2] *= 0.3  # close logits: several actions in the support for every alpha
    # row 2 takes its most probable action in a support of several (one-hot has no gradient)
    actions = torch.tensor([2, 2, int(base[2].argmax())])
    A = torch.tensor([1.3, -0.7, 0.9], dtype=torch.float64)
    old = torch.tensor([-1.2, -0.4, -0.5], dtype=torch.float64)
    p = composite_probs(base, alpha)
    assert float(p[0, 2]) == 0 and float(p[1, 2]) == 0 and int((p[2] > 0).sum()) >= 2

    for kind in ("ppo", "pg"):
        z = base.clone().requires_grad_()
        if kind == "ppo":
            out = ops.ppo_loss(z, actions, A, old, beta=beta, alpha=alpha)
            assert float(out.ratio[0]) == 0 and float(out.ratio[1]) == 0
            assert not bool(out.clipped[0]) and bool(out.clipped[1])
        else:
            out = ops.pg_loss(z, actions, A, beta=beta, alpha=alpha)
        out.loss.backward()
        assert bool(torch.isfinite(out.loss)) and bool(torch.isfinite(z.grad).all())
        assert float(out.log_prob[0]) == float("-inf") and float(out.log_prob[1]) == float("-inf")
        assert bool(torch.isfinite(out.entropy).all())
        # only -beta H remains on the zero-probability rows
        z_ent = base.clone().requires_grad_()
        (-beta * entropy_of_probs(composite_probs(z_ent, alpha), alpha)).mean().backward()
        torch.testing.assert_close(z.grad[:2], z_ent.grad[:2], atol=1e-14, rtol=1e-12)
        if beta == 0.0:
            assert bool((z.grad[:2] == 0).all())
            assert bool((z.grad[2] != 0).any())
        # the loss: the composite's, with pg's policy term 0 on the zero-probability rows
        t = composite_terms(base, actions, A, alpha, old_log_prob=old if kind == "ppo" else None)
        policy = t["policy"].detach()
        if kind == "pg":
            policy = torch.cat([torch.zeros(2, dtype=torch.float64), policy[2:]])
        else:  # autograd through r = p_a / p_old is finite too: compare the whole gradient
            z_ref = base.clone().requires_grad_()
            t_ref = composite_terms(z_ref, actions, A, alpha, old_log_prob=old)
            (t_ref["policy"] - beta * t_ref["H"]).mean().backward()
            torch.testing.assert_close(z.grad, z_ref.grad, atol=1e-14, rtol=1e-12)
        want = (policy - beta * t["H"].detach()).mean()
        torch.testing.assert_close(out.loss, want, atol=1e-14, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# dtypes, shapes and extremes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(ppo, alpha, dtype):
    shape = (4, 3, 11)
    c = make_case(("dtype", ppo, alpha, str(dtype)), shape, alpha, 0.8, True, ppo,
                  clipped_rows=False)
    # rounding the logits to half precision moves p_a: recompute old_log_prob from the rounded
    # logits so the ratios stay clear of the clip boundary
    if ppo:
        p = composite_probs(c["z"].to(dtype).double(), alpha, 0.8, c["mask"])
        c["old_log_prob"] = p.gather(-1, c["actions"].unsqueeze(-1)).squeeze(-1).log() + 0.03
    out, grad = run_ops(c, dtype, alpha, 0.8, 0.2, ppo, upstream=2.0)
    ref = run_composite(c, dtype, alpha, 0.8, 0.2, ppo, upstream=2.0)
    assert grad.dtype == dtype and grad.shape == shape
    assert bool(torch.isfinite(grad).all())
    # the loss and the statistics accumulate in float32: only their own rounding counts
    torch.testing.assert_close(out.loss.double(), ref["loss"], atol=2e-6, rtol=2e-5)
    torch.testing.assert_close(out.entropy.double(), ref["t"]["H"].detach(), atol=2e-6, rtol=2e-5)
    atol, rtol = DTYPE_TOL[dtype]
    scale = float(ref["grad"].abs().max())
    torch.testing.assert_close(grad.double(), ref["grad"], atol=atol * scale, rtol=rtol)
    torch.testing.assert_close(out.grad_norm_policy.double(), ref["norm_policy"], atol=1e-6,
                               rtol=1e-4)
    torch.testing.assert_close(out.grad_norm_entropy.double(), ref["norm_entropy"], atol=1e-6,
                               rtol=1e-4)


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_single_action(ppo, alpha, dtype):
    """V = 1: p = 1, H = 0, log pi(a) = 0, gradient 0 (pg loss 0; ppo loss -min(rA, clip(r)A))."""
    gen = _gen("V1", ppo, alpha, str(dtype))
    z = (torch.randn(5, 1, generator=gen) * 4).to(dtype).requires_grad_()
    actions = torch.zeros(5, dtype=torch.int64)
    A = torch.randn(5, generator=gen)
    if ppo:
        old = torch.randn(5, generator=gen) * 0.3 - 0.1
        out = ops.ppo_loss(z, actions, A, old, beta=0.3, alpha=alpha)
        r = (-old).exp()
        want = -torch.minimum(r * A, r.clamp(0.8, 1.2) * A).mean()
        torch.testing.assert_close(out.ratio.float(), r)
    else:
        out = ops.pg_loss(z, actions, A, beta=0.3, alpha=alpha)
        want = torch.zeros(())
    torch.testing.assert_close(out.loss.float(), want)
    assert bool((out.entropy == 0).all()) and bool((out.log_prob == 0).all())
    assert bool((out.support_size == 1).all())
    (out.loss * 1.7).backward()
    assert z.grad.dtype == dtype and bool((z.grad == 0).all())


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_empty_batch(ppo, alpha):
    for shape in ((0, 6), (2, 0, 6)):
        lead = shape[:-1]
        z = torch.randn(shape, requires_grad=True)
        actions = torch.zeros(lead, dtype=torch.int64)
        A = torch.randn(lead)
        if ppo:
            out = ops.ppo_loss(z, actions, A, torch.randn(lead), beta=0.1, alpha=alpha,
                               weights=torch.rand(lead))
            assert out.ratio.shape == lead and out.clipped.shape == lead
        else:
            out = ops.pg_loss(z, actions, A, beta=0.1, alpha=alpha)
        assert out.loss.dim() == 0 and float(out.loss.detach()) == 0.0
        assert out.entropy.shape == lead and out.log_prob.shape == lead
        out.loss.backward()
        assert z.grad.shape == shape


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_huge_logits(ppo, alpha, dtype):
    """Logits around +-1e4: finite, and equal to the float64 composite on the same values."""
    gen = _gen("huge", ppo, alpha, str(dtype))
    base = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    for z in (base + 1e4, torch.where(base > 0.3, 1e4, -1e4) + base):
        c = {"z": z.to(dtype).double(), "mask": None,
             "weights": torch.rand(6, generator=gen, dtype=torch.float64) + 0.1,
             "advantages": torch.randn(6, generator=gen, dtype=torch.float64)}
        c["actions"] = sample_actions(gen, composite_probs(c["z"], alpha))
        if ppo:
            p_a = composite_probs(c["z"], alpha).gather(-1, c["actions"].unsqueeze(-1)).squeeze(-1)
            c["old_log_prob"] = p_a.log() + 0.05
        out, grad = run_ops(c, dtype, alpha, 1.0, 0.2, ppo)
        ref = run_composite(c, dtype, alpha, 1.0, 0.2, ppo)
        assert bool(torch.isfinite(grad).all()) and bool(torch.isfinite(out.loss))
        tol = 1e-9 if dtype == torch.float64 else 2e-5
        torch.testing.assert_close(out.loss.double(), ref["loss"], atol=tol, rtol=tol)
        torch.testing.assert_close(grad.double(), ref["grad"], atol=tol, rtol=tol)


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_ties(ppo, alpha):
    """Exact ties, including all-equal rows (uniform policy: the entropy gradient vanishes)."""
    z = torch.tensor([[1.0, 1.0, 1.0, -0.5, 0.0],
                      [0.7, 0.7, 0.7, 0.7, 0.7],
                      [3.0, 3.0, -2.0, -2.0, 3.0]], dtype=torch.float64)
    gen = _gen("ties", ppo, alpha)
    c = {"z": z, "mask": None, "weights": None, "actions": torch.tensor([1, 3, 4]),
         "advantages": torch.randn(3, generator=gen, dtype=torch.float64)}
    if ppo:
        p_a = composite_probs(z, alpha).gather(-1, c["actions"].unsqueeze(-1)).squeeze(-1)
        c["old_log_prob"] = p_a.log() - 0.05
    out, grad = run_ops(c, torch.float64, alpha, 1.0, 0.4, ppo, weighted=False)
    ref = run_composite(c, torch.float64, alpha, 1.0, 0.4, ppo, weighted=False)
    torch.testing.assert_close(out.loss, ref["loss"], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad, ref["grad"], atol=1e-12, rtol=1e-10)
    assert float(out.log_prob[1]) == pytest.approx(-torch.log(torch.tensor(5.0)).item())
    assert float(out.entropy[1]) == pytest.approx(ops.max_entropy(alpha, 5), abs=1e-12)
