"""Edge cases of the fused losses not covered by test_losses.py / test_mappings.py.

Those files already cover dtypes (gradient in the input dtype), V = 1, empty (B, 0) batches,
logits of +-1e4, ties and the zero-probability PPO action. Here: leading shapes of any rank
(including none), non-contiguous logits, weights (zero, scaled, zero-weight rows), the
memory-saving ``grad_buffer`` aliasing the logits, the CPU path's blocking over rows, and
empty batches through every public function.
"""

from __future__ import annotations

import pytest
import torch
from ops_helpers import ALPHAS
from ops_helpers import gen as _gen

import ops
from ops import reference


def _case(key, shape, alpha, dtype=torch.float64, masked=True, scale=1.0):
    gen = _gen(*key)
    z = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    mask = None
    if masked:
        mask = torch.rand(shape, generator=gen) > 0.3
        mask[..., 0] = True
    p = ops.probs(z.double(), alpha=alpha, mask=mask)
    lead = shape[:-1]
    actions = torch.multinomial(p.reshape(-1, shape[-1]), 1, generator=gen).reshape(lead)
    p_a = p.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return {
        "z": z, "mask": mask, "actions": actions,
        "advantages": torch.randn(lead, generator=gen, dtype=torch.float64),
        "old_log_prob": p_a.log() + 0.3 * torch.randn(lead, generator=gen, dtype=torch.float64),
        "weights": torch.rand(lead, generator=gen, dtype=torch.float64) + 0.1,
    }


def _run(c, ppo, z=None, **kw):
    """Loss output and gradient of one call; ``z`` overrides the logits (a fresh leaf)."""
    z = (c["z"] if z is None else z).detach().clone().requires_grad_()
    kw = {"beta": 0.2, "alpha": 1.5, "mask": c["mask"], **kw}
    if ppo:
        out = ops.ppo_loss(z, c["actions"], c["advantages"], c["old_log_prob"], **kw)
    else:
        out = ops.pg_loss(z, c["actions"], c["advantages"], **kw)
    out.loss.backward()
    return out, z.grad


# ------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_any_leading_shape_equals_flat(ppo, alpha):
    """(2, 3, 2, V) and a single row (V,) give the loss and gradient of the flattened (N, V)."""
    c = _case(("lead", ppo, alpha), (2, 3, 2, 7), alpha)
    out, grad = _run(c, ppo, alpha=alpha, weights=c["weights"])
    flat = {k: (v.reshape(-1, 7) if k in ("z", "mask") else v.reshape(-1)) for k, v in c.items()}
    out_flat, grad_flat = _run(flat, ppo, alpha=alpha, weights=flat["weights"])
    torch.testing.assert_close(out.loss, out_flat.loss, atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(grad.reshape(-1, 7), grad_flat, atol=1e-14, rtol=1e-12)
    assert grad.shape == (2, 3, 2, 7)
    for stat in ("entropy", "log_prob", "support_size"):
        assert getattr(out, stat).shape == (2, 3, 2)
    if ppo:
        assert out.ratio.shape == (2, 3, 2) and out.clipped.shape == (2, 3, 2)

    # one row, no leading dims: scalar action and advantage
    row = {k: v[1, 2, 0] for k, v in c.items()}
    out_row, grad_row = _run(row, ppo, alpha=alpha)
    one = {k: v[1, 2, 0:1] for k, v in c.items()}
    out_one, grad_one = _run(one, ppo, alpha=alpha)
    assert out_row.entropy.shape == () and grad_row.shape == (7,)
    torch.testing.assert_close(out_row.loss, out_one.loss, atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(grad_row, grad_one[0], atol=1e-14, rtol=1e-12)
    assert bool((grad_row != 0).any())


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
def test_non_contiguous_logits(ppo):
    c = _case(("noncontig", ppo), (6, 9), 1.5)
    # the same values laid out transposed in memory
    z_t = c["z"].t().contiguous().t()
    assert not z_t.is_contiguous()
    out_t, grad_t = _run(c, ppo, z=z_t)
    out, grad = _run(c, ppo)
    torch.testing.assert_close(out_t.loss, out.loss, atol=0, rtol=0)
    torch.testing.assert_close(grad_t, grad, atol=0, rtol=0)
    # every other column of a wider tensor (a strided view; its gradient lands in the view)
    wide = torch.randn(6, 18, generator=_gen("wide"), dtype=torch.float64)
    wide[:, ::2] = c["z"]
    wide.requires_grad_()
    args = (wide[:, ::2], c["actions"], c["advantages"]) + ((c["old_log_prob"],) if ppo else ())
    fn = ops.ppo_loss if ppo else ops.pg_loss
    out_s = fn(*args, beta=0.2, alpha=1.5, mask=c["mask"])
    out_s.loss.backward()
    torch.testing.assert_close(out_s.loss, out.loss, atol=0, rtol=0)
    torch.testing.assert_close(wide.grad[:, ::2], grad, atol=0, rtol=0)
    assert bool((wide.grad[:, 1::2] == 0).all())


@pytest.mark.parametrize("alpha", ALPHAS)
def test_empty_batch_every_function(alpha):
    """An empty batch is not an error: zero loss, empty samples, any leading shape."""
    for shape in ((0, 5), (3, 0, 5)):
        lead = shape[:-1]
        z = torch.randn(shape)
        assert ops.sample(z, alpha=alpha).shape == lead
        assert ops.greedy(z).shape == lead
        assert ops.gumbel_softmax(z, hard=True).shape == shape
        zg = z.clone().requires_grad_()
        out = ops.ppo_loss(zg, torch.zeros(lead, dtype=torch.int64), torch.randn(lead),
                           torch.randn(lead), beta=0.1, alpha=alpha, weights=torch.rand(lead),
                           mask=torch.ones(5, dtype=torch.bool))
        assert float(out.loss.detach()) == 0.0
        assert float(out.grad_norm_policy) == 0.0 and float(out.grad_norm_entropy) == 0.0
        out.loss.backward()
        assert zg.grad.shape == shape


# ------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", [1.0, 1.5, 3.0])
def test_weights_zero_rows_and_scale(ppo, alpha):
    """sum w l / sum w: scaling w changes nothing; a zero-weight row contributes nothing."""
    c = _case(("weights", ppo, alpha), (8, 6), alpha, scale=0.4)
    w = c["weights"].clone()
    w[[1, 4, 5]] = 0.0
    out, grad = _run(c, ppo, alpha=alpha, weights=w)
    out_scaled, grad_scaled = _run(c, ppo, alpha=alpha, weights=w * 7.5)
    torch.testing.assert_close(out_scaled.loss, out.loss, atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(grad_scaled, grad, atol=1e-14, rtol=1e-12)
    keep = torch.tensor([0, 2, 3, 6, 7])
    assert bool((grad[[1, 4, 5]] == 0).all()) and bool((grad[keep] != 0).any())
    sub = {k: (v[keep] if v is not None else None) for k, v in c.items()}
    out_sub, grad_sub = _run(sub, ppo, alpha=alpha, weights=w[keep])
    torch.testing.assert_close(out.loss, out_sub.loss, atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(grad[keep], grad_sub, atol=1e-14, rtol=1e-12)
    # integer weights are counts: the same as repeating rows
    counts = torch.tensor([2, 1, 3, 1, 1, 2, 1, 1])
    rep = {k: (v.repeat_interleave(counts, dim=0) if v is not None else None)
           for k, v in c.items()}
    out_rep, _ = _run(rep, ppo, alpha=alpha)
    out_cnt, _ = _run(c, ppo, alpha=alpha, weights=counts)
    torch.testing.assert_close(out_cnt.loss, out_rep.loss, atol=1e-14, rtol=1e-12)


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
def test_all_zero_weights_give_zero_loss(ppo):
    c = _case(("zero-w", ppo), (5, 4), 2.0)
    out, grad = _run(c, ppo, alpha=2.0, weights=torch.zeros(5, dtype=torch.float64))
    assert float(out.loss.detach()) == 0.0 and bool((grad == 0).all())
    assert bool(torch.isfinite(out.entropy).all())


# ------------------------------------------------------------------------------------------
# grad_buffer: the memory-saving mode
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_grad_buffer_aliasing_logits(ppo, alpha, dtype):
    """grad_buffer=logits (a network's output): the gradient overwrites the logits in place and
    still reaches the network's weights exactly as without the buffer."""
    gen = _gen("alias", ppo, alpha, str(dtype))
    h = torch.randn(12, 5, generator=gen, dtype=dtype)
    W = torch.randn(5, 9, generator=gen, dtype=dtype)
    c = _case(("alias-case", ppo, alpha, str(dtype)), (12, 9), alpha)
    c["z"] = (h @ W).detach()
    mask = c["mask"]
    p = ops.probs(c["z"].double(), alpha=alpha, mask=mask)
    c["actions"] = torch.multinomial(p, 1, generator=gen).squeeze(-1)
    c["old_log_prob"] = p.gather(-1, c["actions"].unsqueeze(-1)).squeeze(-1).log() + 0.1

    def run(alias):
        W_leaf = W.clone().requires_grad_()
        logits = h @ W_leaf
        args = (logits, c["actions"], c["advantages"]) + ((c["old_log_prob"],) if ppo else ())
        fn = ops.ppo_loss if ppo else ops.pg_loss
        out = fn(*args, beta=0.3, alpha=alpha, mask=mask, weights=c["weights"],
                 grad_buffer=logits if alias else None)
        values = logits.detach().clone()
        out.loss.backward()
        return out, W_leaf.grad, values

    out, grad_W, overwritten = run(alias=True)
    out_ref, grad_W_ref, logits_ref = run(alias=False)
    # the same arithmetic on the same values: equal, not merely close
    torch.testing.assert_close(out.loss, out_ref.loss, atol=0, rtol=0)
    torch.testing.assert_close(grad_W, grad_W_ref, atol=0, rtol=0)
    # the logits now hold d loss / d logits
    z = logits_ref.clone().requires_grad_()
    args = (z, c["actions"], c["advantages"]) + ((c["old_log_prob"],) if ppo else ())
    fn = ops.ppo_loss if ppo else ops.pg_loss
    fn(*args, beta=0.3, alpha=alpha, mask=mask, weights=c["weights"]).loss.backward()
    torch.testing.assert_close(overwritten, z.grad, atol=0, rtol=0)
    assert not torch.equal(overwritten, logits_ref)


# ------------------------------------------------------------------------------------------
# The CPU path's blocking over rows
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_cpu_blocks_equal_one_pass(monkeypatch, ppo, alpha, dtype):
    """Blocks of rows (large batches on the CPU) give the values of one pass over the batch."""
    c = _case(("blocks", ppo, alpha, str(dtype)), (37, 11), alpha, dtype=dtype)
    kw = dict(alpha=alpha, temperature=0.8, weights=c["weights"])
    monkeypatch.setattr(reference, "_CPU_BLOCK_ELEMS", 10**9)
    out, grad = _run(c, ppo, **kw)
    buffer = torch.randn(37, 11, generator=_gen("blocks-buf")).to(dtype)
    monkeypatch.setattr(reference, "_CPU_BLOCK_ELEMS", 5 * 11)  # 8 blocks, the last of 2 rows
    out_b, grad_b = _run(c, ppo, grad_buffer=buffer, **kw)
    # the same formulas row by row; only the order of a few reductions may differ
    tol = 1e-13 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(out_b.loss, out.loss, atol=tol, rtol=tol)
    torch.testing.assert_close(grad_b, grad, atol=tol, rtol=tol)
    assert torch.equal(buffer, grad_b)
    for stat in ("entropy", "log_prob", "grad_norm_policy", "grad_norm_entropy") + (
            ("ratio",) if ppo else ()):
        torch.testing.assert_close(getattr(out_b, stat), getattr(out, stat), atol=tol, rtol=tol)
    assert torch.equal(out_b.support_size, out.support_size)
    if ppo:
        assert torch.equal(out_b.clipped, out.clipped)
    # and without a gradient
    args = (c["z"], c["actions"], c["advantages"]) + ((c["old_log_prob"],) if ppo else ())
    fn = ops.ppo_loss if ppo else ops.pg_loss
    torch.testing.assert_close(fn(*args, mask=c["mask"], beta=0.2, **kw).loss, out.loss.detach(),
                               atol=tol, rtol=tol)
