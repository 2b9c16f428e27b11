"""ops.sample, ops.greedy and ops.gumbel_softmax.

Sampling is checked by a chi-square goodness-of-fit test of 10^5 draws per row against
``ops.probs``. The generator seed is fixed, so a run is reproducible and never flaky; the
threshold p-value 1e-4 still fails a sampler off by a fraction of a percent: with 10^5 draws
the standard error of a frequency near 0.2 is 0.0013.
"""

from __future__ import annotations

import pytest
import torch
from ops_helpers import ALPHAS
from ops_helpers import gen as _gen

import ops

DRAWS = 100_000
P_MIN = 1e-4


def chi_square_p_value(counts, p):
    """P(X >= stat) for Pearson's statistic over the actions with p > 0 (df = |S| - 1)."""
    support = p > 0
    n = counts.sum()
    expected = n * p[support]
    stat = ((counts[support] - expected) ** 2 / expected).sum()
    df = int(support.sum()) - 1
    if df == 0:
        return 1.0
    # chi2 survival function: the regularized upper incomplete gamma Q(df/2, stat/2)
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64),
                                         stat.to(torch.float64) / 2.0))


def _rows(key, alpha, n_rows=4, V=7):
    """Logits with a mask and a -inf entry; rows sparse enough that alpha > 1 drops actions."""
    gen = _gen(*key)
    z = torch.randn(n_rows, V, generator=gen, dtype=torch.float64) * 1.2
    mask = torch.rand(n_rows, V, generator=gen) > 0.25
    mask[:, 0] = True
    z[0, 1] = float("-inf")
    # an allowed action far below the row's max: outside the support of every alpha > 1 at
    # these temperatures (still ~3e-4 probability under softmax)
    z[:, 2] = z.amax(-1) - 8.0
    mask[:, 2] = True
    return z, mask


def _counts(actions, V):
    """Per-row counts of (draws, rows) actions."""
    return torch.stack([torch.bincount(actions[:, i], minlength=V) for i in range(actions.shape[1])])


# Bisection alphas (1.25, 3) cost ~30 passes per draw on the CPU: one row each keeps the
# test fast; the sampler after the probabilities is the same code for every alpha > 1.
FREQ_CASES = [(1.0, 1.0, 4), (1.0, 0.6, 4), (1.5, 1.0, 4), (1.5, 0.6, 4), (2.0, 1.0, 4),
              (2.0, 0.6, 4), (1.25, 0.8, 1), (3.0, 0.8, 1)]


@pytest.mark.parametrize(("alpha", "temperature", "n_rows"), FREQ_CASES)
def test_sample_frequencies_match_probs(alpha, temperature, n_rows):
    z, mask = _rows(("freq", alpha, temperature), alpha, n_rows=n_rows)
    if alpha not in (1.0, 1.5, 2.0):
        z = z.float()
    V = z.shape[-1]
    p = ops.probs(z, alpha=alpha, temperature=temperature, mask=mask)
    # leading batch shape (DRAWS, rows): one call draws every sample
    actions = ops.sample(z.expand(DRAWS, *z.shape), alpha=alpha, temperature=temperature,
                         mask=mask, generator=_gen("freq-draw", alpha, temperature))
    assert actions.shape == (DRAWS, z.shape[0]) and actions.dtype == torch.int64
    counts = _counts(actions, V)
    # never a masked, -inf or zero-probability action
    assert bool((counts[p == 0] == 0).all())
    assert bool((counts[~mask] == 0).all()) and int(counts[0, 1]) == 0
    if alpha > 1.0:
        assert bool(((p == 0) & mask).any()), "the rows must have actions outside the support"
    for i in range(z.shape[0]):
        p_value = chi_square_p_value(counts[i].to(torch.float64), p[i])
        assert p_value > P_MIN, f"row {i}: p-value {p_value:.2e}, counts {counts[i].tolist()}"


def test_chi_square_detects_a_wrong_distribution():
    """The test above can fail: draws from softmax do not pass as sparsemax (or tempered) draws."""
    z, mask = _rows(("detect",), 2.0)
    draws = ops.sample(z.expand(DRAWS, *z.shape), alpha=1.0, mask=mask, generator=_gen("d"))
    counts = _counts(draws, z.shape[-1]).to(torch.float64)
    p_soft = ops.probs(z, alpha=1.0, mask=mask)
    p_tempered = ops.probs(z, alpha=1.0, temperature=1.05, mask=mask)
    for i in range(z.shape[0]):
        assert chi_square_p_value(counts[i], p_soft[i]) > P_MIN
        assert chi_square_p_value(counts[i], p_tempered[i]) < P_MIN
    # sparsemax gives 0 to actions softmax draws
    assert bool((counts[ops.probs(z, alpha=2.0, mask=mask) == 0] > 0).any())


@pytest.mark.parametrize("alpha", ALPHAS)
def test_sample_reproducible_and_shaped(alpha):
    gen = _gen("repro", alpha)
    z = torch.randn(2, 3, 5, generator=gen)
    a1 = ops.sample(z, alpha=alpha, generator=_gen("r", alpha))
    a2 = ops.sample(z, alpha=alpha, generator=_gen("r", alpha))
    assert a1.shape == (2, 3) and torch.equal(a1, a2)
    assert ops.sample(torch.randn(0, 5), alpha=alpha).shape == (0,)
    assert torch.equal(ops.sample(torch.randn(4, 1, generator=gen), alpha=alpha),
                       torch.zeros(4, dtype=torch.int64))
    # a single unmasked action is always drawn
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[torch.arange(3), torch.tensor([4, 0, 2])] = True
    assert torch.equal(ops.sample(z[0], alpha=alpha, mask=mask), torch.tensor([4, 0, 2]))


@pytest.mark.parametrize("alpha", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sample_half_precision_never_masked(alpha, dtype):
    gen = _gen("half", alpha, str(dtype))
    z = (torch.randn(5_000, 6, generator=gen) * 3).to(dtype)
    mask = torch.rand(5_000, 6, generator=gen) > 0.5
    mask[:, 3] = True
    a = ops.sample(z, alpha=alpha, mask=mask, generator=gen)
    assert bool(mask.gather(-1, a.unsqueeze(-1)).all())
    assert bool((ops.probs(z, alpha=alpha, mask=mask).gather(-1, a.unsqueeze(-1)) > 0).all())


# ------------------------------------------------------------------------------------------
# greedy
# ------------------------------------------------------------------------------------------


def test_greedy_is_argmax_of_allowed_actions():
    gen = _gen("greedy")
    z = torch.randn(3, 4, 9, generator=gen)
    mask = torch.rand(3, 4, 9, generator=gen) > 0.4
    mask[..., 5] = True
    # put the global maximum on a masked action in some rows
    z[0, 0, :] = z[0, 0, :] - 10
    z[0, 0, 2] = 50.0
    mask[0, 0, 2] = False
    a = ops.greedy(z, mask=mask)
    assert a.shape == (3, 4) and a.dtype == torch.int64
    want = z.masked_fill(~mask, float("-inf")).argmax(-1)
    assert torch.equal(a, want) and int(a[0, 0]) != 2
    assert torch.equal(ops.greedy(z), z.argmax(-1))
    # the most probable action under every mapping (no ties in random logits)
    for alpha in ALPHAS:
        p = ops.probs(z, alpha=alpha, temperature=0.7, mask=mask)
        assert torch.equal(p.argmax(-1), a)


def test_greedy_ties_first_and_extremes():
    z = torch.tensor([[0.5, 2.0, 2.0, -1.0], [1e4, -1e4, 1e4, 1e4], [-3.0, -3.0, -3.0, -3.0]])
    assert ops.greedy(z).tolist() == [1, 0, 0]
    mask = torch.tensor([[True, False, True, True]])
    assert ops.greedy(z, mask=mask).tolist() == [2, 0, 0]
    z_inf = z.clone()
    z_inf[0, 1] = float("-inf")
    assert ops.greedy(z_inf).tolist() == [2, 0, 0]
    assert ops.greedy(torch.randn(0, 4)).shape == (0,)
    assert ops.greedy(torch.randn(5, 1)).tolist() == [0] * 5


# ------------------------------------------------------------------------------------------
# gumbel_softmax
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("masked", [False, True])
def test_gumbel_softmax_relaxed(temperature, masked):
    gen = _gen("gs", temperature, masked)
    z = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64)
    mask = (torch.rand(2, 5, 8, generator=gen) > 0.3) if masked else None
    if masked:
        mask[..., 0] = True
    y = ops.gumbel_softmax(z, temperature=temperature, mask=mask, generator=_gen("g", 1))
    assert y.shape == z.shape and y.dtype == z.dtype
    assert bool((y >= 0).all())
    torch.testing.assert_close(y.sum(-1), torch.ones(2, 5, dtype=torch.float64))
    if masked:
        assert bool((y[~mask] == 0).all())
    # the relaxation is softmax((z + g) / T) for the Gumbel noise the generator draws
    y_again = ops.gumbel_softmax(z, temperature=temperature, mask=mask, generator=_gen("g", 1))
    assert torch.equal(y, y_again)
    y_other = ops.gumbel_softmax(z, temperature=temperature, mask=mask, generator=_gen("g", 2))
    assert not torch.equal(y, y_other)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_gumbel_softmax_hard_straight_through(temperature):
    gen = _gen("hard", temperature)
    z = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    mask = torch.rand(6, 7, generator=gen) > 0.3
    mask[:, 2] = True
    upstream = torch.randn(6, 7, generator=gen, dtype=torch.float64)

    z_soft = z.clone().requires_grad_()
    y_soft = ops.gumbel_softmax(z_soft, temperature=temperature, mask=mask,
                                generator=_gen("noise", temperature))
    (y_soft * upstream).sum().backward()

    z_hard = z.clone().requires_grad_()
    y_hard = ops.gumbel_softmax(z_hard, temperature=temperature, hard=True, mask=mask,
                                generator=_gen("noise", temperature))
    (y_hard * upstream).sum().backward()

    # forward: the one-hot of the relaxed sample's argmax, on an allowed action
    assert bool(((y_hard == 0) | (y_hard == 1)).all())
    assert torch.equal(y_hard.sum(-1), torch.ones(6, dtype=torch.float64))
    assert torch.equal(y_hard.argmax(-1), y_soft.argmax(-1))
    assert bool(mask.gather(-1, y_hard.argmax(-1, keepdim=True)).all())
    # backward: the relaxed gradient (straight-through), nonzero
    torch.testing.assert_close(z_hard.grad, z_soft.grad, atol=1e-15, rtol=1e-12)
    assert float(z_soft.grad.abs().max()) > 1e-3


def test_gumbel_max_of_hard_samples_follows_softmax():
    """argmax(z + g) is an exact softmax(z) sample at any temperature (Gumbel-max trick)."""
    z, mask = _rows(("gumbel-max",), 1.0, n_rows=3, V=6)
    p = ops.probs(z, alpha=1.0, mask=mask)
    y = ops.gumbel_softmax(z.expand(DRAWS, *z.shape), temperature=0.4, hard=True, mask=mask,
                           generator=_gen("gm-draw"))
    counts = y.sum(0)
    assert torch.equal(counts.sum(-1), torch.full((3,), float(DRAWS), dtype=torch.float64))
    assert bool((counts[~mask] == 0).all())
    for i in range(3):
        assert chi_square_p_value(counts[i], p[i]) > P_MIN
