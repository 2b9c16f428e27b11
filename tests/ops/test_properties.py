"""Properties every mapping and loss must have, checked with hypothesis on fresh inputs.

hypothesis draws the shape, alpha, temperature, scale and a seed; the logits, masks, actions
and advantages come from a torch generator with that seed (random normal values, never zeros).
DESIGN.md section 1: p lies on the simplex with masked actions at 0; the support shrinks as alpha
grows; every loss is invariant to adding a constant to a row of logits, so its gradient sums to
0 along V; the entropy lies in [0, H(uniform over the allowed actions)].
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_helpers import ALPHAS

import ops

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True, database=None)

alphas = st.one_of(st.sampled_from(ALPHAS), st.floats(1.05, 4.0))
temperatures = st.one_of(st.just(1.0), st.floats(0.2, 5.0))
shapes = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 12))


@st.composite
def cases(draw, masked=None):
    """Logits (float64), an optional mask with >= 1 allowed action per row, and the knobs."""
    shape = draw(shapes)
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.1, 1.0, 3.0, 30.0]))
    z = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    if masked is None:
        masked = draw(st.booleans())
    mask = None
    if masked:
        mask = torch.rand(shape, generator=gen) > 0.4
        keep = torch.randint(0, shape[-1], shape[:-1], generator=gen)
        mask.scatter_(-1, keep.unsqueeze(-1), True)
    return {"z": z, "mask": mask, "gen": gen, "alpha": draw(alphas),
            "temperature": draw(temperatures)}


def _allowed(c):
    shape = c["z"].shape
    return torch.ones(shape, dtype=torch.bool) if c["mask"] is None else c["mask"]


def _loss_inputs(c, p):
    """Actions drawn from p (p_a > 0), advantages, old log-probs near the current ones."""
    gen = c["gen"]
    lead = c["z"].shape[:-1]
    flat = p.detach().reshape(-1, p.shape[-1])
    actions = torch.multinomial(flat, 1, generator=gen).reshape(lead)
    advantages = torch.randn(lead, generator=gen, dtype=torch.float64)
    p_a = p.detach().gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    old_log_prob = p_a.log() + 0.5 * torch.randn(lead, generator=gen, dtype=torch.float64)
    return actions, advantages, old_log_prob


@SETTINGS
@given(cases())
def test_probs_on_simplex_and_masked_zero(c):
    p = ops.probs(c["z"], alpha=c["alpha"], temperature=c["temperature"], mask=c["mask"])
    assert p.shape == c["z"].shape
    assert bool((p >= 0).all())
    torch.testing.assert_close(p.sum(-1), torch.ones(c["z"].shape[:-1], dtype=torch.float64),
                               atol=1e-12, rtol=0)
    assert bool((p[~_allowed(c)] == 0).all())
    # the most probable allowed action always has p > 0 and greedy picks a maximum of p
    g = ops.greedy(c["z"], mask=c["mask"])
    assert bool((p.gather(-1, g.unsqueeze(-1)) == p.amax(-1, keepdim=True)).all())


@SETTINGS
@given(cases(), st.lists(st.floats(1.0, 4.0), min_size=2, max_size=4))
def test_support_shrinks_as_alpha_grows(c, more_alphas):
    """|S(alpha)| is nonincreasing in alpha; softmax's support is every allowed action."""
    alphas_sorted = sorted(set([1.0] + more_alphas))
    sizes = [(ops.probs(c["z"], alpha=a, temperature=c["temperature"], mask=c["mask"]) > 0)
             .sum(-1) for a in alphas_sorted]
    # softmax: every allowed action is in the support (the reported size), though a p far in
    # the tail may underflow to 0.0
    p = ops.probs(c["z"], alpha=1.0, temperature=c["temperature"], mask=c["mask"])
    actions, advantages, _ = _loss_inputs(c, p)
    out = ops.pg_loss(c["z"], actions, advantages, temperature=c["temperature"], mask=c["mask"])
    assert torch.equal(out.support_size.long(), _allowed(c).sum(-1))
    assert bool((sizes[0] <= out.support_size).all())
    for small, large in zip(sizes[:-1], sizes[1:], strict=True):
        assert bool((large <= small).all())
        assert bool((large >= 1).all())


@SETTINGS
@given(cases())
def test_entropy_between_zero_and_max(c):
    alpha = c["alpha"]
    H = ops.entropy(c["z"], alpha=alpha, temperature=c["temperature"], mask=c["mask"])
    H_max = ops.max_entropy(alpha, _allowed(c).sum(-1))
    assert H.shape == c["z"].shape[:-1]
    assert bool((H >= -1e-12).all())
    assert bool((H <= H_max + 1e-12).all())
    # the loss reports the same entropy per row
    p = ops.probs(c["z"], alpha=alpha, temperature=c["temperature"], mask=c["mask"])
    actions, advantages, _ = _loss_inputs(c, p)
    out = ops.pg_loss(c["z"], actions, advantages, alpha=alpha, temperature=c["temperature"],
                      mask=c["mask"])
    torch.testing.assert_close(out.entropy, H, atol=1e-12, rtol=1e-10)


@SETTINGS
@given(cases(), st.sampled_from(["probs", "entropy", "pg", "ppo"]),
       st.floats(0.0, 2.0), st.floats(0.05, 0.5))
def test_gradients_sum_to_zero_along_actions(c, kind, beta, clip_eps):
    """Adding a constant to a row changes no loss, so d loss / d z sums to 0 over V."""
    alpha, T, mask = c["alpha"], c["temperature"], c["mask"]
    z = c["z"].clone().requires_grad_()
    gen = c["gen"]
    if kind == "probs":
        p = ops.probs(z, alpha=alpha, temperature=T, mask=mask)
        loss = (p * torch.randn(p.shape, generator=gen, dtype=torch.float64)).sum()
    elif kind == "entropy":
        H = ops.entropy(z, alpha=alpha, temperature=T, mask=mask)
        loss = (H * torch.randn(H.shape, generator=gen, dtype=torch.float64)).sum()
    else:
        p = ops.probs(c["z"], alpha=alpha, temperature=T, mask=mask)
        actions, advantages, old = _loss_inputs(c, p)
        weights = torch.rand(advantages.shape, generator=gen, dtype=torch.float64) + 0.1
        kw = dict(beta=beta, alpha=alpha, temperature=T, mask=mask, weights=weights)
        if kind == "pg":
            out = ops.pg_loss(z, actions, advantages, **kw)
        else:
            out = ops.ppo_loss(z, actions, advantages, old, clip_eps=clip_eps, **kw)
        loss = out.loss
    loss.backward()
    g = z.grad
    assert bool(torch.isfinite(g).all())
    scale = float(g.abs().amax()) if g.numel() else 0.0
    assert bool((g.sum(-1).abs() <= 1e-12 * max(1.0, scale) * g.shape[-1]).all())
    assert bool((g[~_allowed(c)] == 0).all())


@pytest.mark.parametrize("alpha", ALPHAS)
def test_shift_invariance_of_values(alpha):
    """The property behind the zero-sum gradient, on the values: z + c gives the same loss."""
    gen = torch.Generator().manual_seed(int(alpha * 100))
    z = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    shift = torch.randn(5, 1, generator=gen, dtype=torch.float64) * 10
    p = ops.probs(z, alpha=alpha)
    actions = torch.multinomial(p, 1, generator=gen).squeeze(-1)
    A = torch.randn(5, generator=gen, dtype=torch.float64)
    a = ops.pg_loss(z, actions, A, beta=0.3, alpha=alpha, temperature=0.6)
    b = ops.pg_loss(z + shift, actions, A, beta=0.3, alpha=alpha, temperature=0.6)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(a.entropy, b.entropy, atol=1e-12, rtol=1e-10)
