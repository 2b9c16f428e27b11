"""Oracles and input builders shared by the tests in tests/ops (each exists once, here).

* ``composite_*``: the mappings and entropies written the textbook way in float64, with autograd
  through them (the ``entmax`` package for alpha > 1): the oracle of the public API.
* ``draw_logits`` / ``random_mask`` / ``sample_actions``: fresh random inputs.
* ``rows`` / ``loss_input`` / ``run_loss``: the backend contract's inputs for tests that call a
  backend (``ops.reference`` or ``ops.kernels.backend``) directly.
"""

from __future__ import annotations

import zlib

import entmax
import torch

from ops._contract import LossInput, Rows, mapping

ALPHAS = [1.0, 1.25, 1.5, 2.0, 3.0]


def gen(*key):
    """A generator seeded from the test's parameters: fresh inputs per case, reproducible runs."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


# ------------------------------------------------------------------------------------------
# Oracles: the composite written the textbook way
# ------------------------------------------------------------------------------------------


def composite_probs(z, alpha, temperature=1.0, mask=None):
    """p of the mapping applied to ``z / T`` with masked entries at -inf, float64, autograd."""
    z = z.to(torch.float64) / temperature
    if mask is not None:
        z = z.masked_fill(~mask, float("-inf"))
    if alpha == 1.0:
        return torch.softmax(z, dim=-1)
    if alpha == 2.0:
        return entmax.sparsemax(z, dim=-1)
    if alpha == 1.5:
        return entmax.entmax15(z, dim=-1)
    return entmax.entmax_bisect(z, alpha, dim=-1, n_iter=200)


def entropy_of_probs(p, alpha):
    """Shannon (alpha = 1) or Tsallis-alpha entropy of probabilities ``p``, autograd through p."""
    if alpha == 1.0:
        # 0 log 0 = 0; the clamp keeps the log finite where p = 0 (masked), and the softmax
        # Jacobian multiplies that entry's gradient by p = 0
        return -(p * p.clamp(min=1e-300).log()).sum(-1)
    return (1.0 - (p ** alpha).sum(-1)) / (alpha * (alpha - 1.0))


def composite_entropy(z, alpha, temperature=1.0, mask=None):
    """Entropy of the composite mapping of ``z``, float64; softmax's from log_softmax."""
    if alpha == 1.0:
        zz = z.to(torch.float64) / temperature
        if mask is not None:
            zz = zz.masked_fill(~mask, float("-inf"))
        log_p = torch.log_softmax(zz, dim=-1)
        p = log_p.exp()
        # 0 log 0 = 0: masked entries have log_p = -inf; zero them before the product
        return -(p * log_p.masked_fill(p == 0, 0.0)).sum(-1)
    return entropy_of_probs(composite_probs(z, alpha, temperature, mask), alpha)


def support_margin(z, alpha, temperature=1.0, mask=None):
    """Per row, min over allowed j of |(alpha-1) z_j / T - tau|: the distance to a support change.

    tau is recovered from the most probable action: ``p_i^{alpha-1} = (alpha-1) z_i - tau``.
    """
    with torch.no_grad():
        x = (alpha - 1.0) * z.to(torch.float64) / temperature
        p = composite_probs(z, alpha, temperature, mask)
        i = p.argmax(-1, keepdim=True)
        tau = x.gather(-1, i) - p.gather(-1, i) ** (alpha - 1.0)
        d = (x - tau).abs()
        if mask is not None:
            d = d.masked_fill(~mask, float("inf"))
        return d.amin(-1)


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------


def draw_logits(gen, shape, alpha, temperature=1.0, mask=None, scale=1.5, margin=0.02):
    """Random normal logits whose rows stay ``margin`` away from a support boundary (alpha > 1).

    gradcheck perturbs each logit by 1e-6; a sparse mapping is not differentiable where an
    action enters or leaves the support, so rows too close to that are redrawn.
    """
    z = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    if alpha == 1.0:
        return z
    for _ in range(200):
        bad = support_margin(z, alpha, temperature, mask) < margin
        if not bool(bad.any()):
            return z
        z[bad] = torch.randn(z[bad].shape, generator=gen, dtype=torch.float64) * scale
    raise RuntimeError("could not draw logits away from the support boundary")


def random_mask(gen, shape):
    """A bool mask with about a third of the actions masked and at least one allowed per row."""
    mask = torch.rand(shape, generator=gen) > 0.35
    first = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    mask.scatter_(-1, first.unsqueeze(-1), True)
    return mask


def sample_actions(gen, p):
    """Actions drawn from p (so p_a > 0 even for sparse mappings), leading shape of p."""
    flat = p.detach().reshape(-1, p.shape[-1]).to(torch.float64)
    return torch.multinomial(flat, 1, generator=gen).reshape(p.shape[:-1])


# ------------------------------------------------------------------------------------------
# The backend contract's inputs
# ------------------------------------------------------------------------------------------


def rows(z, mask, alpha, temperature):
    """``Rows`` of (N, V) logits ``z``."""
    return Rows(z, mask, mapping(alpha, temperature))


def loss_input(case, loss, beta, alpha, temperature, need_grad=True, clip_eps=0.2, dtype=None,
               grad_out=None, need_norms=True):
    """``LossInput`` from a case dict (logits, mask, actions, advantages, row_scale and, for
    ``loss == "ppo"``, old_log_prob); ``dtype`` casts the logits and the per-row floats."""
    z = case["logits"] if dtype is None else case["logits"].to(dtype)
    cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
    ppo = loss == "ppo"
    return LossInput(
        rows(z, case["mask"], alpha, temperature), case["actions"], cast(case["advantages"]),
        cast(case["row_scale"]), beta, need_grad=need_grad, grad_out=grad_out,
        need_norms=need_norms, old_log_prob=cast(case["old_log_prob"]) if ppo else None,
        clip_eps=clip_eps if ppo else None)


def run_loss(backend, case, loss, beta, alpha, temperature, need_grad=True, clip_eps=0.2,
             dtype=None, grad_out=None, **kw):
    """``backend.pg`` / ``backend.ppo`` on a case dict; returns its ``LossRows``."""
    inp = loss_input(case, loss, beta, alpha, temperature, need_grad, clip_eps, dtype, grad_out)
    return getattr(backend, loss)(inp=inp, **kw)
