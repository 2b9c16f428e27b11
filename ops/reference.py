"""Plain-PyTorch closed forms: the CPU path and the oracle every kernel must match.

A mapping is a pair (STYLE.md 13): a projection ``p = argmax_{p in simplex} <p, z> + H(p)``
and its regularizer ``H``. The alpha family covers them all (DESIGN.md section 1):

* alpha = 1: softmax, Shannon entropy ``-sum p log p``;
* alpha > 1: entmax-alpha ``p_i = [(alpha-1) z_i - tau]_+^{1/(alpha-1)}`` with Tsallis entropy
  ``(1 - sum p^alpha) / (alpha (alpha-1))``; alpha = 2 is sparsemax (Martins & Astudillo 2016),
  alpha = 1.5 has an exact sort-based threshold (Peters, Niculae & Martins 2019), any other
  alpha is solved by bisection.

The public functions implement ``ops._contract.Backend``: keyword-only ``Rows`` / ``LossInput``
in (flattened, validated ``(N, V)`` raw logits, not yet divided by the temperature), typed
results out. Gradients are the closed
forms of DESIGN.md section 1, never autograd through the mapping, and are divided by the
temperature T because the mapping sees ``z = logits / T``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch

from ops._contract import (
    Algorithm,
    EntropyResult,
    LossInput,
    LossRows,
    Mapping,
    ProbsResult,
    Rows,
    SoftInput,
)
from ops._validate import check_row_max, compute_dtype

# Below tau_min = -1 nothing is in the support (tau >= max - 1 after shifting the max to 0,
# DESIGN.md), so clamping the shifted logits here changes no probability while it turns -inf
# (masked) and huge negative logits into small finite numbers the sort-based sums handle exactly.
_ENTMAX_FLOOR = -2.0

# Rows per block on the CPU: about this many elements, so a block's temporaries (log p, p, the
# gradient before its copy out) stay in cache and are reused by the allocator. Fresh
# logits-sized buffers are what a whole-batch pass pays for most on the CPU (every page of a
# large allocation faults on first touch, several times the cost of the arithmetic).
_CPU_BLOCK_ELEMS = 1 << 18


def _rowdot(a, b):
    """Per-row dot product.

    On large CPU batches a batched GEMV, which allocates nothing logits-sized, runs about twice
    as fast as ``vecdot``; on cache-sized blocks (``_fused``) the product-and-sum is ~5x faster.
    """
    if a.numel() <= _CPU_BLOCK_ELEMS:
        return torch.linalg.vecdot(a, b)
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(a.shape[0])


# ---------------------------------------------------------------------------------------------
# The mapping
# ---------------------------------------------------------------------------------------------


def _shifted_logits(logits, mask, temperature, check=True):
    """``x = (z - max z) / T``, in the compute dtype, masked entries at -inf: a fresh tensor the
    caller may overwrite. ``check=False`` skips the row checks for callers that detect bad rows
    from a NaN result instead.

    Finite logits may still give ``x = -inf`` (``z - max z`` overflows, e.g. +-3e38 in fp32), so
    every consumer treats -inf in ``x``, not only in the logits, as "probability 0".
    """
    cdt = compute_dtype(logits.dtype)
    src = logits.detach()
    if mask is not None:
        src = src.masked_fill(~mask, float("-inf"))
    row_max = src.amax(dim=-1) if src.shape[0] else src.new_empty(0)
    if check:
        check_row_max(row_max)  # T > 0, so the raw row max tells NaN / +inf / all masked
    if src.dtype == cdt:
        x = torch.sub(src, row_max.unsqueeze(-1))
    else:
        x = src.to(cdt).sub_(row_max.to(cdt).unsqueeze(-1))
    if temperature != 1.0:
        x.mul_(1.0 / temperature)
    return x


# -inf (masked) log-probabilities are floored to a huge finite negative so that p log p is
# 0 * finite = 0 rather than 0 * -inf = NaN; anything below half the floor was masked.
_LOG_FLOOR = {torch.float32: torch.finfo(torch.float32).min / 4,
              torch.float64: torch.finfo(torch.float64).min / 4}


def _log_softmax(logits, mask, temperature):
    """``log p``, ``p`` and Shannon ``H`` in the compute dtype, from one fused log_softmax.

    ``torch.log_softmax`` does the max shift, exp, sum and log in one kernel: fewer passes than
    writing them out, and far fewer ops for the small batches of RL. Rows that are NaN, hold
    +inf or are fully masked come out NaN (the caller turns that into an error).
    """
    cdt = compute_dtype(logits.dtype)
    src = logits.detach()
    if mask is not None:
        src = src.masked_fill(~mask, float("-inf"))
    if temperature != 1.0:
        # (z - max z) / T in the compute dtype: z / T rounded at the logits' magnitude (or to
        # bf16 / fp16) would move every p; the shift keeps the differences exact
        src = src.to(cdt)
        src = torch.sub(src, src.amax(dim=-1, keepdim=True)).div_(temperature)
    log_p = torch.log_softmax(src, dim=-1, dtype=cdt).clamp_(min=_LOG_FLOOR[cdt])
    p = torch.exp(log_p)
    H = _rowdot(p, log_p).neg_()
    return log_p, p, H


def _sort_threshold(x, sparsemax):
    """Exact tau for sparsemax (``sparsemax``) or entmax-1.5 on ``x = (alpha-1)(z - max)`` in [-2, 0].

    The sort finds the support size K (Martins & Astudillo 2016, alg. 1; Peters et al. 2019,
    alg. 2); tau is then recomputed from sums over the support, which torch reduces pairwise, so
    a long support does not accumulate the sequential rounding of a cumulative sum.
    """
    V = x.shape[-1]
    xs, _ = torch.sort(x, dim=-1, descending=True)
    rho = torch.arange(1, V + 1, device=x.device, dtype=x.dtype)
    csum = xs.cumsum(dim=-1)
    if sparsemax:
        in_support = 1.0 + rho * xs > csum
    else:
        mean = csum / rho
        mean_sq = (xs * xs).cumsum(dim=-1) / rho
        delta = (1.0 - rho * (mean_sq - mean * mean)) / rho
        tau_k = mean - delta.clamp(min=0).sqrt()
        in_support = tau_k <= xs
    K = in_support.sum(dim=-1, keepdim=True).clamp(min=1)
    kth = xs.gather(-1, K - 1)
    # Ties at the boundary are all in or all out of the support, so ">= kth" selects exactly K.
    S = x >= kth
    xS = torch.where(S, x, 0.0)
    n = S.sum(dim=-1, dtype=x.dtype)
    sum_x = xS.sum(dim=-1)
    if sparsemax:
        tau = (sum_x - 1.0) / n
    else:
        # sum_S (x - tau)^2 = 1  <=>  n tau^2 - 2 tau sum_x + sum_x2 - 1 = 0, smaller root.
        mean = sum_x / n
        mean_sq = _rowdot(xS, xS) / n
        tau = mean - (mean * mean - mean_sq + 1.0 / n).clamp(min=0).sqrt()
    return tau


def _bisect_threshold(x, alpha, lo, hi, n_iter):
    """tau in ``[lo, hi]`` (per row) with ``sum [x - tau]_+^{1/(alpha-1)} = 1``, by ``n_iter``
    halvings of the bracket."""
    inv = 1.0 / (alpha - 1.0)
    # one scratch buffer for every step: a fresh x-sized tensor per step costs more than the
    # arithmetic on the CPU (page faults on first touch)
    buf = torch.empty_like(x)
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        f = torch.sub(x, mid.unsqueeze(-1), out=buf).clamp_(min=0).pow_(inv).sum(dim=-1)
        above = f >= 1.0
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


# Bisection steps (float32, float64) on [-1, 0] in the row-max frame (to a few units of the
# dtype's resolution near |tau| <= 1), then in the pivot frame (_pivot_threshold).
_MAX_FRAME_STEPS = {torch.float32: 22, torch.float64: 50}
_PIVOT_FRAME_STEPS = 24
# half-width of the pivot-frame bracket around the row-max-frame tau: the shifted logits carry
# one rounding each (|x| <= 2) and tau the bisection's resolution, a few units of 2^-24 / 2^-53
_PIVOT_BRACKET = {torch.float32: 2.0**-18, torch.float64: 2.0**-47}


def _pivot_threshold(x, tau, logits, mask, mapping):
    """Refines tau (row-max frame) in a frame centred on it: returns ``(u, t)`` with the mapping
    ``p = [u - t]_+^{1/(alpha-1)}`` (unnormalised), ``u = (alpha-1) (z - pivot) / T``.

    ``x = (alpha-1)(z - max z) / T`` rounds each entry at the scale of ``|x| ~ 1``, and tau is
    resolved to the same ~1e-7 (float32): an action just inside the support has ``d = x - tau``
    of that size or smaller, and ``p = d^{1/(alpha-1)}`` is steep there for alpha > 2 (alpha = 4:
    ``d = 3e-7`` is ``p = 0.0065``, entmax entropy 5% off). With the pivot ``z_r = max z + tau T
    / (alpha-1)`` (a logit-scale value at the threshold), ``z - z_r`` is exact near the threshold
    and ``t = tau - (alpha-1)(z_r - max z) / T`` is small, so ``d = u - t`` keeps its relative
    precision; ties stay exact. The bisection continues in that frame (x is overwritten).
    """
    cdt = x.dtype
    s = (mapping.alpha - 1.0) / mapping.temperature
    z = logits.detach().to(cdt)
    if mask is not None:
        z = z.masked_fill(~mask, float("-inf"))
    m = z.amax(dim=-1)
    pivot = m + tau / s
    t = tau - (pivot - m) * s
    u = torch.sub(z, pivot.unsqueeze(-1), out=x).mul_(s)
    w = _PIVOT_BRACKET[cdt]
    t = _bisect_threshold(u, mapping.alpha, t - w, t + w, _PIVOT_FRAME_STEPS)
    return u, t


def _entmax(x, mapping, logits, mask):
    """entmax-alpha of shifted logits ``x`` (max 0; overwritten). Returns ``p``, exactly normalised.

    ``logits`` / ``mask``: the raw rows ``x`` came from, which the bisection path (alpha other
    than 1.5 and 2) reads again (``_pivot_threshold``).
    """
    alpha = mapping.alpha
    x = x.mul_(alpha - 1.0).clamp_(min=_ENTMAX_FLOOR)
    exact = mapping.algorithm in (Algorithm.SPARSEMAX, Algorithm.ENTMAX15)
    sparsemax = mapping.algorithm == Algorithm.SPARSEMAX
    if exact:
        tau = _sort_threshold(x, sparsemax)
    else:
        lo = torch.full(x.shape[:-1], -1.0, dtype=x.dtype, device=x.device)
        tau = _bisect_threshold(x, alpha, lo, torch.zeros_like(lo), _MAX_FRAME_STEPS[x.dtype])
        x, tau = _pivot_threshold(x, tau, logits, mask, mapping)
    p = x.sub_(tau.unsqueeze(-1)).clamp_(min=0)
    if not sparsemax:
        p.pow_(1.0 / (alpha - 1.0))
    if not exact:
        p.div_(p.sum(dim=-1, keepdim=True))  # bisection leaves sum p = 1 up to its last step
    return p


def _alpha_stats(p, mapping):
    """Tsallis entropy, ``q_hat = q / sum q`` with ``q = p^{2-alpha}`` on the support, and |S|."""
    alpha = mapping.alpha
    support = p > 0
    n = support.sum(dim=-1, dtype=p.dtype)
    if mapping.algorithm == Algorithm.SPARSEMAX:
        q = support.to(p.dtype)
        H = 0.5 * (1.0 - _rowdot(p, p))
    else:
        q = torch.where(support, p.pow(2.0 - alpha), 0.0)
        H = (1.0 - p.pow(alpha).sum(dim=-1)) / (alpha * (alpha - 1.0))
    q_hat = q.div_(q.sum(dim=-1, keepdim=True))
    return H, q_hat, n


class ProbsSaved(NamedTuple):
    p: torch.Tensor  # probabilities in the compute dtype


class EntropySaved(NamedTuple):
    p: torch.Tensor  # probabilities in the compute dtype
    H: torch.Tensor  # per-row entropy


def probs_forward(*, rows: Rows) -> ProbsResult:
    """The mapping's probabilities (logits' dtype); saves them in the compute dtype."""
    m = rows.mapping
    # at rollout sizes (8 x 2) the number of ops is the cost, not the flops: torch.softmax
    # takes -inf (masked or overflowed) entries as they are; _entmax floors them itself
    x = _shifted_logits(rows.logits, rows.mask, m.temperature)
    p = (torch.softmax(x, dim=-1) if m.algorithm == Algorithm.SOFTMAX
         else _entmax(x, m, rows.logits, rows.mask))
    dtype = rows.logits.dtype
    return ProbsResult(p if p.dtype == dtype else p.to(dtype), ProbsSaved(p))


def probs_backward(*, saved: ProbsSaved, grad_probs, mapping: Mapping):
    """VJP of the mapping (DESIGN.md, Jacobians), divided by T.

    softmax: ``g -> p * (g - <p, g>)``; alpha > 1: ``g -> q * (g - <q_hat, g>)``.
    """
    p = saved.p
    g = grad_probs.to(p.dtype)
    if mapping.algorithm == Algorithm.SOFTMAX:
        w = p
    elif mapping.algorithm == Algorithm.SPARSEMAX:
        w = (p > 0).to(p.dtype)
    else:
        w = torch.where(p > 0, p.pow(2.0 - mapping.alpha), 0.0)
    w_hat = w / w.sum(dim=-1, keepdim=True)
    out = w * (g - _rowdot(w_hat, g).unsqueeze(-1))
    if mapping.temperature != 1.0:
        out.div_(mapping.temperature)
    return out


# ---------------------------------------------------------------------------------------------
# Entropy
# ---------------------------------------------------------------------------------------------


def entropy_forward(*, rows: Rows) -> EntropyResult:
    """Per-row entropy of the mapping's own regularizer, support size, and what backward needs."""
    m = rows.mapping
    if m.algorithm == Algorithm.SOFTMAX:
        _, p, H = _log_softmax(rows.logits, rows.mask, m.temperature)
        if H.numel() and not math.isfinite(H.sum(dtype=torch.float64).item()):
            # NaN, +inf or all-masked rows come out NaN: name the row (one more pass, only here)
            src = rows.logits.detach()
            if rows.mask is not None:
                src = src.masked_fill(~rows.mask, float("-inf"))
            check_row_max(src.amax(dim=-1))
        support = _allowed_count(rows.logits, rows.mask)
    else:
        p = _entmax(_shifted_logits(rows.logits, rows.mask, m.temperature), m, rows.logits,
                    rows.mask)
        H, _, n = _alpha_stats(p, m)
        support = n.to(torch.int32)
    return EntropyResult(H, support, EntropySaved(p, H))


def entropy_backward(*, saved: EntropySaved, grad_entropy, mapping: Mapping):
    """``dH/dz``: Shannon ``-p (log p + H)``; Tsallis ``(q_hat - p) / (alpha-1)``; times grad_H / T."""
    p, H = saved
    g = grad_entropy.to(p.dtype).unsqueeze(-1)
    if mapping.algorithm == Algorithm.SOFTMAX:
        # xlogy keeps 0 log 0 = 0 where a probability underflowed or was masked.
        dH = torch.xlogy(p, p).add_(p * H.unsqueeze(-1)).neg_()
    else:
        _, q_hat, _ = _alpha_stats(p, mapping)
        dH = q_hat.sub_(p).div_(mapping.alpha - 1.0)
    dH.mul_(g)
    if mapping.temperature != 1.0:
        dH.div_(mapping.temperature)
    return dH


def _allowed_count(logits, mask):
    """Support size of softmax: every allowed action has p > 0 in exact arithmetic."""
    allowed = logits.detach() != float("-inf")
    if mask is not None:
        allowed = allowed & mask
    return allowed.sum(dim=-1, dtype=torch.int32)


# ---------------------------------------------------------------------------------------------
# Fused policy-gradient and PPO losses
# ---------------------------------------------------------------------------------------------


def _block(inp: LossInput, b: slice) -> LossInput:
    """The rows ``b`` of a loss input (row slices of contiguous tensors stay contiguous)."""
    rows = inp.rows
    return dataclasses.replace(
        inp, rows=Rows(rows.logits[b], None if rows.mask is None else rows.mask[b], rows.mapping),
        actions=inp.actions[b], advantages=inp.advantages[b], row_scale=inp.row_scale[b],
        grad_out=None if inp.grad_out is None else inp.grad_out[b],
        beta=inp.beta[b] if isinstance(inp.beta, torch.Tensor) else inp.beta,
        old_log_prob=None if inp.old_log_prob is None else inp.old_log_prob[b])


def _fused(inp: LossInput) -> LossRows:
    """``_fused_rows`` over blocks of rows on the CPU, writing one logits-sized gradient.

    Every per-row quantity (the squared gradient norms included) depends on its own row only,
    so blocking changes no value.
    """
    logits = inp.rows.logits
    n, n_act = logits.shape
    rows = max(1, _CPU_BLOCK_ELEMS // max(n_act, 1))
    if logits.device.type != "cpu" or n <= rows:
        return _fused_rows(inp)
    if inp.need_grad and inp.grad_out is None:
        inp = dataclasses.replace(inp, grad_out=torch.empty_like(
            logits, memory_format=torch.contiguous_format))
    out = None
    for r0 in range(0, n, rows):
        b = slice(r0, r0 + rows)
        part = _fused_rows(_block(inp, b))
        if out is None:
            # outputs allocated once, before any block's temporaries: a block leaves nothing
            # behind on the heap, so the allocator reuses the same memory for every block
            # (small per-block results kept alive between them fragment it and grow the RSS)
            out = {k: (v.new_empty((n,)) if v.dim() == 1 else v.clone())
                   for k, v in part._asdict().items() if v is not None and k != "grad"}
        for k, v in part._asdict().items():
            if v is not None and v.dim() == 1:
                out[k][b] = v
        del part
    # absent (None) results stay None: ratio and clipped for pg, the norms when not computed
    return LossRows(**{k: out.get(k) for k in LossRows._fields if k != "grad"}, grad=inp.grad_out)


def _add_beta_H(policy_rows, H, beta):
    """``policy_rows + beta H`` for a float beta (as one op) or a per-row tensor."""
    if isinstance(beta, torch.Tensor):
        return torch.addcmul(policy_rows, beta, H)
    return torch.add(policy_rows, H, alpha=beta)


def _fused_rows(inp: LossInput) -> LossRows:
    """Shared body of ``pg`` and ``ppo``: one pass of the mapping, then the closed-form gradient.

    Per row (DESIGN.md, fused loss and PPO): ``l = -A log p_a - beta H`` for pg, and
    ``l = -min(r A, clip(r, 1-eps, 1+eps) A) - beta H`` with ``r = p_a / p_a^old`` for ppo, beta
    a float or a per-row tensor (one coefficient per population member's rows). The
    policy term's gradient is ``c * (p - e_a)`` (softmax) or ``c * w_a (q_hat - e_a)`` with
    ``w_a = p_a^{1-alpha}`` (alpha > 1), where ``c = A`` (pg) or ``c = A r`` on rows whose
    unclipped branch is active (ppo). Going through ``p_a`` makes a zero-probability action's
    gradient exactly 0 (``w_a = 0``). With ``need_norms``, the per-row squared norms of the two
    terms' gradient rows.

    Bad rows are not checked here: NaN, +inf and all-masked rows make the loss NaN, which the
    public API turns into a precise error with one synchronisation per call. RL minibatches
    are small, so the op count here is kept low: each op costs microseconds of dispatch.
    """
    logits, mask, m = inp.rows.logits, inp.rows.mask, inp.rows.mapping
    alpha, temperature, beta = m.alpha, m.temperature, inp.beta
    cdt = compute_dtype(logits.dtype)
    idx = inp.actions.unsqueeze(-1)
    if m.algorithm == Algorithm.SOFTMAX:
        log_p, p, H = _log_softmax(logits, mask, temperature)
        log_p_a = log_p.gather(-1, idx).view(-1)
        # softmax's support is every allowed action. On the CPU (no sync cost) a row-min check
        # skips the count when no log p is floored (nothing masked, nothing overflowed).
        if logits.device.type == "cpu" and bool(log_p.amin(dim=-1).gt(_LOG_FLOOR[cdt] / 2).all()):
            support = torch.full_like(log_p_a, log_p.shape[-1], dtype=torch.int32)
        else:
            support = _allowed_count(logits, mask)
        w_a = None
    else:
        p = _entmax(_shifted_logits(logits, mask, temperature, check=False), m, logits, mask)
        H, q_hat, n = _alpha_stats(p, m)
        support = n.to(torch.int32)
        p_a = p.gather(-1, idx).view(-1)
        log_p_a = p_a.log()
        in_support = p_a > 0
        w_a = torch.where(in_support, p_a.clamp(min=torch.finfo(cdt).tiny).pow(1.0 - alpha), 0.0)

    A = inp.advantages
    ratio = clipped = None
    if not inp.is_ppo:
        policy_rows = log_p_a * A
        if w_a is not None:  # an action outside the support contributes no policy term
            policy_rows = torch.where(in_support, policy_rows, 0.0)
        loss_rows = _add_beta_H(policy_rows, H, beta).neg_()
        coef = A
    else:
        clip_eps = inp.clip_eps
        ratio = torch.exp(log_p_a - inp.old_log_prob)
        surrogate = torch.minimum(ratio * A, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * A)
        clipped = torch.where(A > 0, ratio > 1.0 + clip_eps, ratio < 1.0 - clip_eps)
        coef = torch.where(clipped, 0.0, A * ratio)
        loss_rows = _add_beta_H(surrogate, H, beta).neg_()

    pol_sq = ent_sq = None
    if not inp.need_grad:
        return LossRows(loss_rows, H, log_p_a, support, None, None, None, ratio, clipped)

    scale = inp.row_scale if temperature == 1.0 else inp.row_scale / temperature
    pol_c = coef * scale  # d(sum_i c_i l_i)/d logits = c_i / T * dl_i/dz
    if m.algorithm == Algorithm.SOFTMAX:
        # entropy part  -beta dH/dz = beta p (log p + H), built in log_p's buffer
        ent = log_p.add_(H.unsqueeze(-1)).mul_(p).mul_((beta * scale).unsqueeze(-1))
        if inp.need_norms:
            # ||c (p - e_a)||^2 = c^2 (sum p^2 - 2 p_a + 1): no policy vector is built
            pol_sq = _rowdot(p, p).sub_(p.gather(-1, idx).view(-1), alpha=2.0).add_(1.0)
            pol_sq.mul_(pol_c).mul_(pol_c)
            ent_sq = _rowdot(ent, ent)
        grad = ent.addcmul_(p, pol_c.unsqueeze(-1))
    else:
        # entropy part  -beta dH/dz = beta (p - q_hat) / (alpha - 1)
        pol_c = pol_c * w_a
        ent = p.sub_(q_hat).mul_((beta / (alpha - 1.0) * scale).unsqueeze(-1))
        if inp.need_norms:
            q_a = q_hat.gather(-1, idx).view(-1)
            pol_sq = _rowdot(q_hat, q_hat).sub_(q_a, alpha=2.0).add_(1.0)
            pol_sq.mul_(pol_c).mul_(pol_c)
            ent_sq = _rowdot(ent, ent)
        grad = ent.addcmul_(q_hat, pol_c.unsqueeze(-1))
    grad.scatter_add_(-1, idx, pol_c.neg().unsqueeze(-1))
    if inp.grad_out is not None:
        inp.grad_out.copy_(grad)
        grad = inp.grad_out
    elif grad.dtype != logits.dtype:
        grad = grad.to(logits.dtype)
    return LossRows(loss_rows, H, log_p_a, support, grad, pol_sq, ent_sq, ratio, clipped)


def pg(*, inp: LossInput) -> LossRows:
    """Policy-gradient loss rows ``-A log p_a - beta H`` and the gradient of ``sum c_i l_i``."""
    return _fused(inp)


def ppo(*, inp: LossInput) -> LossRows:
    """PPO clipped-surrogate rows, ratio, clipped flags and the gradient of ``sum c_i l_i``."""
    if not inp.is_ppo:
        raise ValueError("ppo needs a LossInput with old_log_prob and clip_eps")
    return _fused(inp)


# ---------------------------------------------------------------------------------------------
# The soft actor loss (SAC-style, critic fixed)
# ---------------------------------------------------------------------------------------------


def soft(*, inp: SoftInput) -> LossRows:
    """Soft actor loss rows ``l = -<p, q> - beta H(p)`` and the gradient of ``sum_i c_i l_i``.

    ``-l`` is the soft (Shannon) or sparse (Tsallis) state value ``<p, q> + beta H(p)``. The
    gradient at ``z`` (README, "The soft actor loss"; DESIGN.md section 1's Jacobians), before
    the division by T, with ``s = p^{2-alpha}`` on the support and ``s_hat = s / sum s``
    (softmax: ``s = s_hat = p``)::

        softmax  -p (q - <p, q>) + beta p (log p + H)
        alpha>1  -s (q - <s_hat, q>) + beta (p - s_hat) / (alpha - 1)

    ``beta`` is a float or a per-row tensor (``l_i = -<p_i, q_i> - beta_i H_i``). ``q`` of a
    masked action (mask False or logit -inf) is read as 0: its p and s are 0, and 0 * (-inf or
    NaN) would be NaN. Non-finite q of an allowed action makes the row NaN (the public API then
    names it). q gets no gradient (the critic is held fixed). With ``need_norms``, the per-row
    squared norms of the two terms' gradient rows.
    """
    logits, mask, m = inp.rows.logits, inp.rows.mask, inp.rows.mapping
    alpha, temperature, beta = m.alpha, m.temperature, inp.beta
    cdt = compute_dtype(logits.dtype)
    allowed = logits.detach() != float("-inf")
    if mask is not None:
        allowed = allowed & mask
    q = torch.where(allowed, inp.q_values.to(cdt), 0.0)
    if m.algorithm == Algorithm.SOFTMAX:
        log_p, p, H = _log_softmax(logits, mask, temperature)
        s, s_sum = p, None
        support = _allowed_count(logits, mask)
    else:
        p = _entmax(_shifted_logits(logits, mask, temperature, check=False), m, logits, mask)
        H, _, n = _alpha_stats(p, m)
        support = n.to(torch.int32)
        s = (p > 0).to(cdt) if m.algorithm == Algorithm.SPARSEMAX else torch.where(
            p > 0, p.pow(2.0 - alpha), 0.0)
        s_sum = s.sum(dim=-1, keepdim=True)
    value = _rowdot(p, q)  # <p, q>
    loss_rows = _add_beta_H(value, H, beta).neg_()

    if not inp.need_grad:
        return LossRows(loss_rows, H, None, support, None, None, None)
    scale = (inp.row_scale if temperature == 1.0 else inp.row_scale / temperature).unsqueeze(-1)
    # a per-row beta as a column, so the float path's expressions serve both
    beta_c = beta.unsqueeze(-1) if isinstance(beta, torch.Tensor) else beta
    # policy part -s (q - <s_hat, q>): <s_hat, q> = <p, q> for softmax
    u = value if s_sum is None else _rowdot(s, q) / s_sum.squeeze(-1)
    pol = (q - u.unsqueeze(-1)).mul_(s).mul_(-scale)
    if m.algorithm == Algorithm.SOFTMAX:
        # entropy part -beta dH/dz = beta p (log p + H)
        ent = log_p.add_(H.unsqueeze(-1)).mul_(p).mul_(beta_c * scale)
    else:
        # entropy part -beta dH/dz = beta (p - s_hat) / (alpha - 1)
        ent = (p - s / s_sum).mul_(beta_c / (alpha - 1.0) * scale)
    pol_sq = _rowdot(pol, pol) if inp.need_norms else None
    ent_sq = _rowdot(ent, ent) if inp.need_norms else None
    grad = pol.add_(ent)
    if grad.dtype != logits.dtype:
        grad = grad.to(logits.dtype)
    return LossRows(loss_rows, H, None, support, grad, pol_sq, ent_sq)
