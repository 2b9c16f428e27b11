"""Policy mappings, their entropies and fused entropy-regularized losses.

One knob selects the mapping: ``alpha``. ``alpha=1`` is softmax (Shannon entropy),
``alpha=2`` sparsemax (Gini entropy), ``alpha=1.5`` exact entmax-1.5, any other ``alpha > 1``
entmax-alpha by bisection (Tsallis-alpha entropy). ``temperature > 0`` divides the logits
first. Invalid actions are marked by ``mask`` (bool, True = allowed) or by ``-inf`` logits.
Every function acts on the last dim of ``(..., V)`` logits. The math, with every gradient,
is in DESIGN.md section 1.

Cross-entropy with a confidence penalty (Pereyra et al. 2017) is ``pg_loss`` with
advantages 1::

    loss = ops.pg_loss(logits, labels, advantages=1.0, beta=0.1).loss   # CE - 0.1 * H
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ops import _validate as V
from ops import reference
from ops._contract import Algorithm, LossInput, Rows, SoftInput, mapping
from ops.functions import (
    EntropyFunction,
    ProbsFunction,
    SoftLossFunction,
    _LossFunction,
    backend_for,
)

__all__ = [
    "LossOutput",
    "backend_for",
    "entropy",
    "greedy",
    "gumbel_softmax",
    "max_entropy",
    "pg_loss",
    "ppo_loss",
    "probs",
    "sample",
    "soft_policy_loss",
    "soft_value",
]

@dataclass(frozen=True)
class LossOutput:
    """What ``pg_loss``, ``ppo_loss`` and ``soft_policy_loss`` return.

    Attributes
    ----------
    loss:
        Scalar weighted mean of the per-row losses; differentiable w.r.t. the logits.
    entropy, log_prob, support_size:
        Detached per-row values (the logits' leading shape): the mapping's entropy, the log
        probability of the taken action (``-inf`` when an alpha > 1 policy gives it
        probability 0), and the number of actions with nonzero probability. ``soft_policy_loss``
        takes no action: its ``log_prob`` is None.
    grad_norm_policy, grad_norm_entropy:
        Detached scalars: Frobenius norms, at the logits, of the gradient of the policy term and
        of the entropy term (``-beta H``) of ``loss``. Both come from the fused op's closed-form
        terms at no extra pass; zero when the logits do not require grad.
    ratio, clipped:
        PPO only (``None`` for ``pg_loss``): per-row ``pi(a) / pi_old(a)`` and whether the
        clipped branch of the surrogate is the active one.
    loss_rows:
        Detached per-row losses ``l_i = policy_i - beta_i H_i`` whose weighted mean is ``loss``.
    grad_sq_policy, grad_sq_entropy:
        Detached per-row squared norms of the rows, at the logits, of the two terms' gradients
        of ``loss`` (the weighted mean), so ``grad_sq_policy.sum().sqrt()`` is
        ``grad_norm_policy`` (likewise for the entropy). The rows of one population member give
        its share; the gradient norm of that member's own weighted mean loss is
        ``sqrt(sum over its rows) * sum(w) / sum(w over its rows)``. ``None`` with
        ``grad_norms=False`` or when the logits do not require grad.
    """

    loss: torch.Tensor
    entropy: torch.Tensor
    log_prob: torch.Tensor | None
    support_size: torch.Tensor
    grad_norm_policy: torch.Tensor
    grad_norm_entropy: torch.Tensor
    ratio: torch.Tensor | None = None
    clipped: torch.Tensor | None = None
    loss_rows: torch.Tensor | None = None
    grad_sq_policy: torch.Tensor | None = None
    grad_sq_entropy: torch.Tensor | None = None


def _rows(logits, alpha, temperature, mask) -> Rows:
    """Validated arguments as the backends' ``Rows``: (N, V) logits and mask, and the mapping."""
    V.check_logits(logits)
    alpha = V.check_alpha(alpha)
    temperature = V.check_positive("temperature", temperature)
    mask = V.check_mask(mask, logits)
    n_act = logits.shape[-1]
    flat = logits if logits.dim() == 2 else logits.reshape(-1, n_act)
    flat_mask = None if mask is None else mask.reshape(-1, n_act)
    # Rows makes both contiguous (a no-op for the usual input)
    return Rows(flat, flat_mask, mapping(alpha, temperature))


def probs(logits, alpha=1.0, temperature=1.0, mask=None):
    """The mapping's probabilities, in the logits' dtype; differentiable (closed-form VJP).

    softmax: ``p = exp(z - logsumexp z)``; alpha > 1:
    ``p_i = [(alpha-1) z_i - tau]_+^{1/(alpha-1)}`` with ``z = logits / temperature``.
    Masked actions get exactly 0.
    """
    rows = _rows(logits, alpha, temperature, mask)
    backend = backend_for(rows.logits)
    if not (logits.requires_grad and torch.is_grad_enabled()):
        # No graph to record (a rollout step): the same forward without autograd.Function's
        # bookkeeping, which is most of the cost for a handful of rows.
        p = backend.probs_forward(rows=rows).probs
    else:
        p = ProbsFunction.apply(rows.logits, rows, backend)
    # a reshape costs more than the softmax at rollout sizes: only when there is one to do
    return p if logits.dim() == 2 else p.reshape(logits.shape)


def entropy(logits, alpha=1.0, temperature=1.0, mask=None):
    """Per-row entropy of the mapping's own regularizer; differentiable (closed form).

    Shannon ``-sum p log p`` for alpha = 1, Tsallis ``(1 - sum p^alpha) / (alpha (alpha-1))``
    for alpha > 1 (``(1 - sum p^2) / 2`` for sparsemax). float32 for half-precision inputs.
    """
    rows = _rows(logits, alpha, temperature, mask)
    H, _ = EntropyFunction.apply(rows.logits, rows, backend_for(rows.logits))
    return H if logits.dim() == 2 else H.reshape(logits.shape[:-1])


def _row_scale(weights, logits, cdt):
    lead = logits.shape[:-1]
    n = math.prod(lead)
    if weights is None:
        return torch.full((n,), 1.0 / max(n, 1), dtype=cdt, device=logits.device)
    w = V.check_rows("weights", weights, logits, dtype=cdt).reshape(-1)
    if n and bool((w < 0).any()):
        i = int((w < 0).nonzero()[0])
        raise ValueError(f"weights must be >= 0; weights[{i}] (flat index) = {w[i].item()}")
    total = w.sum()
    return w / total if n and bool(total > 0) else torch.zeros_like(w)


def _loss_input(logits, actions, advantages, alpha, temperature, mask, weights, grad_buffer,
                beta, grad_norms, old_log_prob=None, clip_eps=None) -> LossInput:
    """Validated arguments of ``pg_loss`` / ``ppo_loss`` as the backends' ``LossInput``."""
    per_row_beta = isinstance(beta, torch.Tensor)  # a float keeps the scalar path (and kernel)
    if not per_row_beta:
        beta = V.check_positive("beta", beta, allow_zero=True)
    if clip_eps is not None:
        clip_eps = V.check_positive("clip_eps", clip_eps)
    rows = _rows(logits, alpha, temperature, mask)
    cdt = V.compute_dtype(logits.dtype)
    if per_row_beta:
        # negative and non-finite entries are caught after the op by _verify (no extra sync)
        beta = V.check_rows("beta", beta, logits, dtype=cdt, finite=False)
    # masked actions and non-finite values are caught after the op by _verify
    actions = V.check_actions(actions, logits, None, check_masked=False)
    advantages = V.check_rows("advantages", advantages, logits, dtype=cdt, finite=False)
    if old_log_prob is not None:
        old_log_prob = V.check_rows("old_log_prob", old_log_prob, logits, dtype=cdt, finite=False)
    grad_out = None
    if grad_buffer is not None:
        if (not isinstance(grad_buffer, torch.Tensor) or grad_buffer.shape != logits.shape
                or grad_buffer.dtype != logits.dtype or not grad_buffer.is_contiguous()):
            raise ValueError(
                "grad_buffer must be a contiguous tensor with the logits' shape "
                f"{tuple(logits.shape)} and dtype {logits.dtype}"
            )
        grad_out = grad_buffer.detach().view(rows.logits.shape)
    # LossInput makes every per-row tensor a contiguous (N,) tensor (scalars and views included)
    return LossInput(rows, actions, advantages, _row_scale(weights, logits, cdt), beta,
                     need_grad=logits.requires_grad and torch.is_grad_enabled(),
                     grad_out=grad_out, need_norms=bool(grad_norms), old_log_prob=old_log_prob,
                     clip_eps=clip_eps)


def _chosen_logits(inp: LossInput):
    """The taken actions' logits; gathered before the op when its gradient may overwrite them."""
    if inp.actions.numel() == 0:
        return None
    return inp.rows.logits.detach().gather(-1, inp.actions.view(-1, 1)).view(-1)


def _run_loss(inp: LossInput):
    # A grad_buffer may be the logits themselves: what _verify reads of them is taken first.
    chosen = _chosen_logits(inp) if inp.grad_out is not None else None
    out = _LossFunction.apply(inp.rows.logits, inp, backend_for(inp.rows.logits))
    if chosen is None:
        chosen = _chosen_logits(inp)
    _verify(out[0], inp, chosen)
    return out


def _lead_shape(logits, *per_row):
    """The ops' (N,) per-row outputs in the logits' leading shape (None stays None)."""
    if logits.dim() == 2:
        return per_row
    lead = logits.shape[:-1]
    return [None if t is None else t.reshape(lead) for t in per_row]


def _verify(loss, inp: LossInput, chosen):
    """Raises the precise error for bad inputs the op ran on, with one synchronisation.

    NaN, +inf or all-masked logits rows and non-finite advantages make the loss NaN or inf; a
    masked taken action shows as a -inf chosen logit (``chosen``, read before a gradient could
    overwrite the logits) or a False chosen mask entry; a non-finite ``old_log_prob`` shows in
    its sum (it can hide in a clipped row of the loss); a negative or NaN per-row beta in its
    minimum and an infinite one in its sum. Only when one of these is off are the detailed
    (slower) checks run.
    """
    if chosen is None:
        return
    flat, flat_mask, actions = inp.rows.logits, inp.rows.mask, inp.actions
    chosen_min = chosen.amin()
    probes = [loss.detach(), chosen_min if chosen_min.dtype == loss.dtype else chosen_min.to(loss.dtype)]
    row_beta = isinstance(inp.beta, torch.Tensor)
    if row_beta:
        probes += [inp.beta.amin(), inp.beta.sum()]
    if inp.old_log_prob is not None:
        probes.append(inp.old_log_prob.sum())
    loss_value, chosen_value, *rest = torch.stack(probes).tolist()
    ok = math.isfinite(loss_value + sum(rest)) and chosen_value != float("-inf")
    if row_beta:
        ok = ok and rest[0] >= 0  # False for NaN
    if ok and flat_mask is not None:
        ok = bool(flat_mask.gather(-1, actions.view(-1, 1)).all())
    if ok:
        return
    masked = flat if flat_mask is None else flat.detach().masked_fill(~flat_mask, float("-inf"))
    V.check_row_max(masked.detach().amax(dim=-1))
    V.check_allowed(actions, flat, flat_mask, chosen=chosen)
    V.check_finite("advantages", inp.advantages)
    if inp.old_log_prob is not None:
        V.check_finite("old_log_prob", inp.old_log_prob)
    if row_beta:
        V.check_nonnegative_rows("beta", inp.beta)
    # none of the inputs is at fault: the loss overflowed; return it for the caller to see


def pg_loss(logits, actions, advantages, beta=0.0, alpha=1.0, temperature=1.0, mask=None,
            weights=None, grad_buffer=None, grad_norms=True) -> LossOutput:
    """Entropy-regularized policy-gradient loss, ``mean_w(-A log pi(a) - beta H(pi))``.

    The gradient is DESIGN.md's closed form, fused with the forward pass:
    softmax ``A (p - e_a) + beta p (log p + H)``; alpha > 1
    ``-A p_a^{1-alpha} (e_a - q_hat) + beta (p - q_hat) / (alpha - 1)``; divided by the
    temperature. An action outside an alpha > 1 policy's support contributes no policy term
    (its gradient through ``p_a`` is 0) and reports ``log_prob = -inf``.

    Cross-entropy with a confidence penalty (Pereyra et al. 2017) is the case advantages = 1:
    ``pg_loss(logits, labels, 1.0, beta).loss == F.cross_entropy(logits, labels) - beta * H``.

    Parameters
    ----------
    logits : (..., V) float tensor.
    actions : (...) integer tensor of taken actions, each allowed by the mask.
    advantages : (...) tensor or a float (1.0 gives cross-entropy).
    beta : entropy coefficient >= 0: a float, or a (...) tensor (any form ``advantages`` takes)
        with one coefficient per row, ``l_i = policy_i - beta_i H_i``, so that the members of a
        population that differ only in beta share one call. A constant: no gradient flows to it.
    alpha, temperature, mask : the mapping (see the module docstring).
    weights : optional (...) nonnegative row weights; the loss is ``sum w l / sum w``.
    grad_buffer : optional contiguous tensor (the logits' shape and dtype) that receives the
        gradient during the forward; it may be the logits themselves (then they are overwritten,
        which saves a logits-sized buffer; only do so when nothing else needs their values).
    grad_norms : compute ``grad_norm_policy`` / ``grad_norm_entropy`` and their per-row
        squares ``grad_sq_policy`` / ``grad_sq_entropy`` (a few ops on the PyTorch path; free in
        the kernels). When False the norms are reported as 0 and the per-row squares as None.

    Returns a ``LossOutput``; its per-row ``loss_rows``, ``entropy`` and ``grad_sq_*`` give
    the metrics of any subset of rows (one population member's) from this one call.
    """
    inp = _loss_input(logits, actions, advantages, alpha, temperature, mask, weights,
                      grad_buffer, beta, grad_norms)
    loss, H, log_p, support, gn_pol, gn_ent, *per_row = _run_loss(inp)
    H, log_p, support, loss_rows, sq_pol, sq_ent = _lead_shape(logits, H, log_p, support, *per_row)
    return LossOutput(loss, H, log_p, support, gn_pol, gn_ent, loss_rows=loss_rows,
                      grad_sq_policy=sq_pol, grad_sq_entropy=sq_ent)


def ppo_loss(logits, actions, advantages, old_log_prob, beta=0.0, clip_eps=0.2, alpha=1.0,
             temperature=1.0, mask=None, weights=None, grad_buffer=None, grad_norms=True) -> LossOutput:
    """PPO's clipped surrogate with entropy bonus, ``mean_w(-min(r A, clip(r) A) - beta H)``.

    ``r = pi(a) / pi_old(a) = exp(log pi(a) - old_log_prob)``. The gradient on rows whose
    unclipped branch is active is ``A r (p - e_a)`` (softmax) or
    ``-A r p_a^{1-alpha} (e_a - q_hat)`` (alpha > 1), computed through ``p_a`` so an action the
    new sparse policy gives probability 0 has gradient exactly 0 (DESIGN.md, PPO). The entropy
    term is as in ``pg_loss``. Parameters as in ``pg_loss`` (``beta`` a float or per row),
    plus ``old_log_prob`` (...) finite and ``clip_eps > 0``; returns a ``LossOutput`` with the
    per-row ``loss_rows`` (``l_i = -min(r_i A_i, clip(r_i) A_i) - beta_i H_i``) and
    ``grad_sq_*`` as in ``pg_loss``.
    """
    if clip_eps is None:
        V.check_positive("clip_eps", clip_eps)  # the error a None deserves, not PG's path
    inp = _loss_input(logits, actions, advantages, alpha, temperature, mask, weights,
                      grad_buffer, beta, grad_norms, old_log_prob=old_log_prob,
                      clip_eps=clip_eps)
    loss, H, log_p, support, gn_pol, gn_ent, *per_row = _run_loss(inp)
    H, log_p, support, loss_rows, sq_pol, sq_ent, ratio, clipped = _lead_shape(
        logits, H, log_p, support, *per_row)
    return LossOutput(loss, H, log_p, support, gn_pol, gn_ent, ratio, clipped, loss_rows=loss_rows,
                      grad_sq_policy=sq_pol, grad_sq_entropy=sq_ent)


def _soft_input(logits, q_values, beta, alpha, temperature, mask, weights, need_grad,
                need_norms=True):
    """Validated arguments of ``soft_policy_loss`` / ``soft_value`` as the backends' ``SoftInput``."""
    per_row_beta = isinstance(beta, torch.Tensor)  # a float keeps the scalar path (and kernel)
    if not per_row_beta:
        beta = V.check_positive("beta", beta, allow_zero=True)
    rows = _rows(logits, alpha, temperature, mask)
    q = V.check_q_values(q_values, logits).detach()
    cdt = V.compute_dtype(logits.dtype)
    if per_row_beta:
        # negative and non-finite entries are caught after the op by _verify_soft (no extra sync)
        beta = V.check_rows("beta", beta, logits, dtype=cdt, finite=False)
    return SoftInput(rows, q.reshape(rows.logits.shape), _row_scale(weights, logits, cdt), beta,
                     need_grad=need_grad, need_norms=need_norms)


def _verify_soft(result, inp: SoftInput):
    """Names the culprit when the soft loss / value came out non-finite, or a per-row beta has a
    negative entry (one synchronisation): a NaN, +inf or all-masked logits row, a non-finite
    value of an allowed action, a negative or non-finite beta."""
    if result.numel() == 0:
        return
    row_beta = isinstance(inp.beta, torch.Tensor)
    if row_beta:
        total, beta_min = torch.stack([result.detach().sum().to(inp.beta.dtype),
                                       inp.beta.amin()]).tolist()
        if math.isfinite(total) and beta_min >= 0:  # False for NaN
            return
    elif math.isfinite(float(result.detach().sum())):
        return
    flat, flat_mask = inp.rows.logits, inp.rows.mask
    if row_beta:
        V.check_nonnegative_rows("beta", inp.beta)
    masked = flat if flat_mask is None else flat.detach().masked_fill(~flat_mask, float("-inf"))
    V.check_row_max(masked.detach().amax(dim=-1))
    V.check_q_finite(inp.q_values, flat, flat_mask)
    # none of the inputs is at fault: the values overflowed; return them for the caller to see


def soft_policy_loss(logits, q_values, beta=0.0, alpha=1.0, temperature=1.0, mask=None,
                     weights=None, grad_norms=True) -> LossOutput:
    """Soft actor loss (SAC for discrete actions), ``mean_w(-<p, q> - beta H(p))``.

    ``p`` is the mapping of ``logits / temperature`` and ``H`` its own entropy (Shannon for
    alpha = 1, Tsallis otherwise). The critic is held fixed: ``q_values`` get no gradient (they
    are detached), only the logits do. The loss is minimal where ``p`` is the mapping applied
    to ``q / beta`` (softmax(q / beta), entmax-alpha(q / beta)); there its gradient is 0.

    The gradient is the closed form (README, "The soft actor loss"), computed in the forward::

        softmax  -p (q - <p, q>) + beta p (log p + H)
        alpha>1  -s (q - <s_hat, q>) + beta (p - s_hat) / (alpha - 1)

    with ``s = p^{2-alpha}`` on the support, ``s_hat = s / sum s``; divided by the temperature.
    ``grad_norm_policy`` is the norm of the first term, ``grad_norm_entropy`` of the second.

    Parameters
    ----------
    logits : (..., V) float tensor.
    q_values : (..., V) float tensor of action values, the logits' shape. Masked actions (mask
        False or logit -inf) are ignored and may hold anything, -inf and NaN included; every
        allowed action's value must be finite.
    beta : entropy coefficient >= 0: a float, or a (...) tensor with one coefficient per row,
        ``l_i = -<p_i, q_i> - beta_i H_i``, so that the members of a population of SAC runs
        that differ only in beta share one call (as ``pg_loss``'s).
    alpha, temperature, mask : the mapping (see the module docstring).
    weights : optional (...) nonnegative row weights; the loss is ``sum w l / sum w``.
    grad_norms : compute ``grad_norm_policy`` / ``grad_norm_entropy`` and their per-row squares
        ``grad_sq_policy`` / ``grad_sq_entropy`` (when False: 0 and None, as ``pg_loss``).

    Returns a ``LossOutput`` whose ``log_prob`` is None (no action is taken), ``ratio`` /
    ``clipped`` are None, and whose per-row ``loss_rows`` and ``grad_sq_*`` give the metrics of
    any subset of rows (one population member's), as ``pg_loss``'s.
    """
    inp = _soft_input(logits, q_values, beta, alpha, temperature, mask, weights,
                      need_grad=logits.requires_grad and torch.is_grad_enabled(),
                      need_norms=bool(grad_norms))
    loss, H, support, gn_pol, gn_ent, loss_rows, sq_pol, sq_ent = SoftLossFunction.apply(
        inp.rows.logits, inp, backend_for(inp.rows.logits))
    _verify_soft(loss, inp)
    H, support, loss_rows, sq_pol, sq_ent = _lead_shape(logits, H, support, loss_rows, sq_pol, sq_ent)
    return LossOutput(loss, H, None, support, gn_pol, gn_ent, loss_rows=loss_rows,
                      grad_sq_policy=sq_pol, grad_sq_entropy=sq_ent)


@torch.no_grad()
def soft_value(logits, q_values, beta=0.0, alpha=1.0, temperature=1.0, mask=None):
    """Per-row soft state value ``<p, q> + beta H(p)`` (detached; the logits' leading shape).

    The soft (Shannon, alpha = 1) or sparse (Tsallis, alpha > 1) value of the policy ``p`` (the
    mapping of ``logits / temperature``) under the action values ``q_values``: the bootstrap
    term of a soft critic's target. Equal to ``-l`` of ``soft_policy_loss``'s rows. At the
    policy that maximises it, ``p = mapping(q / beta)``, softmax's is ``beta logsumexp(q / beta)``.
    ``beta``: a float or one coefficient per row (as ``soft_policy_loss``).
    Masked actions (mask False or logit -inf) get p = 0 and their q is ignored (it may be -inf
    or NaN); allowed actions' q must be finite. Computed in the compute dtype (float32 for
    half-precision logits, float64 for float64).
    """
    inp = _soft_input(logits, q_values, beta, alpha, temperature, mask, None, need_grad=False)
    if inp.rows.n_rows == 0:
        return torch.empty(logits.shape[:-1], dtype=V.compute_dtype(logits.dtype),
                           device=logits.device)
    value = backend_for(inp.rows.logits).soft(inp=inp).loss_rows.neg()
    _verify_soft(value, inp)
    return value if logits.dim() == 2 else value.reshape(logits.shape[:-1])


@torch.no_grad()
def sample(logits, alpha=1.0, temperature=1.0, mask=None, generator=None):
    """Draws one action per row from the mapping's distribution (int64, leading shape).

    softmax: Gumbel-max, ``argmax(z - log E)`` with ``E ~ Exp(1)``, an exact sample of
    ``softmax(z)``; alpha > 1: inverse transform on the sparse probabilities
    (``torch.multinomial``), which never returns a zero-probability or masked action.
    """
    rows = _rows(logits, alpha, temperature, mask)
    if rows.n_rows == 0:
        return torch.empty(logits.shape[:-1], dtype=torch.int64, device=logits.device)
    if rows.mapping.algorithm == Algorithm.SOFTMAX:
        # Gumbel-max needs the shifted logits, not the probabilities
        x = reference._shifted_logits(rows.logits, rows.mask, rows.mapping.temperature)
        noise = torch.empty_like(x).exponential_(generator=generator)
        actions = x.sub_(noise.log_()).argmax(dim=-1)
    else:
        p = backend_for(rows.logits).probs_forward(rows=rows).probs
        actions = torch.multinomial(p.to(V.compute_dtype(p.dtype)), 1,
                                    generator=generator).squeeze(-1)
    return actions.reshape(logits.shape[:-1])


@torch.no_grad()
def greedy(logits, mask=None):
    """The most probable allowed action per row (the same under every mapping; ties: first)."""
    V.check_logits(logits)
    mask = V.check_mask(mask, logits)
    z = logits if mask is None else logits.masked_fill(~mask, float("-inf"))
    if z.numel():
        V.check_row_max(z.reshape(-1, z.shape[-1]).amax(dim=-1))
    return z.argmax(dim=-1)


def gumbel_softmax(logits, temperature=1.0, hard=False, mask=None, generator=None):
    """Gumbel-softmax ``softmax((z + g) / T)``, ``g ~ Gumbel(0, 1)`` (Jang et al. 2017).

    With ``hard=True`` the forward value is the one-hot of its argmax and the gradient is the
    relaxed one (straight-through).
    """
    V.check_logits(logits)
    temperature = V.check_positive("temperature", temperature)
    noise = torch.empty(logits.shape, dtype=V.compute_dtype(logits.dtype), device=logits.device)
    gumbel = noise.exponential_(generator=generator).log_().neg_().to(logits.dtype)
    y = probs(logits + gumbel, alpha=1.0, temperature=temperature, mask=mask)
    if not hard:
        return y
    one_hot = torch.zeros_like(y).scatter_(-1, y.argmax(dim=-1, keepdim=True), 1.0)
    return one_hot - y.detach() + y


def max_entropy(alpha, num_allowed):
    """Maximum of the mapping's entropy, reached by the uniform policy over ``n`` actions.

    Shannon: ``log n``; Tsallis-alpha: ``(1 - n^{1-alpha}) / (alpha (alpha-1))``. ``num_allowed``
    is an int or a tensor of counts (e.g. ``mask.sum(-1)``); the result has its type and shape.
    """
    alpha = V.check_alpha(alpha)
    if isinstance(num_allowed, torch.Tensor):
        n = num_allowed.to(torch.float64)
        if n.numel() and bool((n < 1).any()):
            raise ValueError(f"num_allowed must be >= 1; got a minimum of {n.min().item()}")
        if alpha == 1.0:
            return n.log()
        return (1.0 - n.pow(1.0 - alpha)) / (alpha * (alpha - 1.0))
    if int(num_allowed) != num_allowed or num_allowed < 1:
        raise ValueError(f"num_allowed={num_allowed!r} is not allowed; allowed: an integer >= 1")
    if alpha == 1.0:
        return math.log(num_allowed)
    return (1.0 - num_allowed ** (1.0 - alpha)) / (alpha * (alpha - 1.0))
