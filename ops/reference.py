"""Plain-PyTorch closed forms: the CPU path and the oracle every kernel must match.

A mapping is a pair (STYLE.md 13): a projection ``p = argmax_{p in simplex} <p, z> + H(p)``
and its regularizer ``H``. The alpha family covers them all (DESIGN.md section 1):

* alpha = 1: softmax, Shannon entropy ``-sum p log p``;
* alpha > 1: entmax-alpha ``p_i = [(alpha-1) z_i - tau]_+^{1/(alpha-1)}`` with Tsallis entropy
  ``(1 - sum p^alpha) / (alpha (alpha-1))``; alpha = 2 is sparsemax (Martins & Astudillo 2016),
  alpha = 1.5 has an exact sort-based threshold (Peters, Niculae & Martins 2019), any other
  alpha is solved by bisection.

Every function here takes flattened, validated ``(N, V)`` logits (raw: not yet divided by the
temperature) and follows the backend interface of ``ops.functions``. Gradients are the closed
forms of DESIGN.md section 1, never autograd through the mapping, and are divided by the
temperature T because the mapping sees ``z = logits / T``.
"""

from __future__ import annotations

import torch

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


def _shifted_logits(logits, mask, temperature, check=True, find_neg_inf=True):
    """``x = z - max z`` with ``z = logits / T``, in the compute dtype, masked entries at -inf.

    Returns ``x`` (a fresh tensor the caller may overwrite) and whether any entry may be -inf
    (always True with a mask; otherwise from the row minimum, or True without looking when
    ``find_neg_inf=False``). ``check=False`` skips the row checks for callers that detect bad
    rows from a NaN result instead.
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
    if mask is not None or not find_neg_inf:
        return x, True
    # amin is a vectorised reduction (torch.aminmax is several times slower on the CPU)
    has_neg_inf = bool(src.shape[0]) and bool(src.amin() == float("-inf"))
    return x, has_neg_inf


def _softmax(x, has_neg_inf):
    """Softmax of shifted logits ``x`` (max 0). Returns ``p, log_s, H``.

    ``log p = x - log_s`` and ``H = -sum p log p = log_s - sum p x``. -inf entries are floored
    to a huge finite negative (in place) so that ``p x`` is 0 for masked actions, not ``0 * -inf``.
    """
    if has_neg_inf:
        x.clamp_(min=torch.finfo(x.dtype).min / 4)
    p = torch.exp(x)
    s = p.sum(dim=-1)
    p.mul_((1.0 / s).unsqueeze(-1))
    log_s = s.log()
    H = log_s - _rowdot(p, x)
    return p, log_s, H


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


def _sort_threshold(x, alpha):
    """Exact tau for sparsemax (alpha=2) or entmax-1.5 on ``x = (alpha-1)(z - max)`` in [-2, 0].

    The sort finds the support size K (Martins & Astudillo 2016, alg. 1; Peters et al. 2019,
    alg. 2); tau is then recomputed from sums over the support, which torch reduces pairwise, so
    a long support does not accumulate the sequential rounding of a cumulative sum.
    """
    V = x.shape[-1]
    xs, _ = torch.sort(x, dim=-1, descending=True)
    rho = torch.arange(1, V + 1, device=x.device, dtype=x.dtype)
    csum = xs.cumsum(dim=-1)
    if alpha == 2.0:
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
    if alpha == 2.0:
        tau = (sum_x - 1.0) / n
    else:
        # sum_S (x - tau)^2 = 1  <=>  n tau^2 - 2 tau sum_x + sum_x2 - 1 = 0, smaller root.
        mean = sum_x / n
        mean_sq = _rowdot(xS, xS) / n
        tau = mean - (mean * mean - mean_sq + 1.0 / n).clamp(min=0).sqrt()
    return tau


def _bisect_threshold(x, alpha):
    """tau with ``sum [x - tau]_+^{1/(alpha-1)} = 1`` by bisection on [-1, 0] (x has max 0)."""
    inv = 1.0 / (alpha - 1.0)
    lo = torch.full(x.shape[:-1], -1.0, dtype=x.dtype, device=x.device)
    hi = torch.zeros_like(lo)
    # Halving [-1, 0] this many times reaches the dtype's resolution near |tau| <= 1.
    n_iter = 60 if x.dtype == torch.float64 else 30
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


def _entmax(x, alpha):
    """entmax-alpha of shifted logits ``x`` (max 0; overwritten). Returns ``p``, exactly normalised."""
    x = x.mul_(alpha - 1.0).clamp_(min=_ENTMAX_FLOOR)
    if alpha in (1.5, 2.0):
        tau = _sort_threshold(x, alpha)
    else:
        tau = _bisect_threshold(x, alpha)
    p = x.sub_(tau.unsqueeze(-1)).clamp_(min=0)
    if alpha != 2.0:
        p.pow_(1.0 / (alpha - 1.0))
    if alpha not in (1.5, 2.0):
        p.div_(p.sum(dim=-1, keepdim=True))  # bisection leaves sum p = 1 up to its last step
    return p


def _alpha_stats(p, alpha):
    """Tsallis entropy, ``q_hat = q / sum q`` with ``q = p^{2-alpha}`` on the support, and |S|."""
    support = p > 0
    n = support.sum(dim=-1, dtype=p.dtype)
    if alpha == 2.0:
        q = support.to(p.dtype)
        H = 0.5 * (1.0 - _rowdot(p, p))
    else:
        q = torch.where(support, p.pow(2.0 - alpha), 0.0)
        H = (1.0 - p.pow(alpha).sum(dim=-1)) / (alpha * (alpha - 1.0))
    q_hat = q.div_(q.sum(dim=-1, keepdim=True))
    return H, q_hat, n


def probs_forward(logits, mask, alpha, temperature):
    """Probabilities in the compute dtype (float32 for half inputs)."""
    # Neither mapping needs the -inf scan: torch.softmax takes -inf (masked) entries as they
    # are, and needs none of _softmax's entropy terms (at rollout sizes, 8 x 2, the number of
    # ops is the cost, not the flops); _entmax floors -inf itself.
    x, _ = _shifted_logits(logits, mask, temperature, find_neg_inf=False)
    if alpha == 1.0:
        return torch.softmax(x, dim=-1)
    return _entmax(x, alpha)


def probs_backward(p, grad_p, alpha, temperature):
    """VJP of the mapping (DESIGN.md, Jacobians), divided by T.

    softmax: ``g -> p * (g - <p, g>)``; alpha > 1: ``g -> q * (g - <q_hat, g>)``.
    """
    g = grad_p.to(p.dtype)
    if alpha == 1.0:
        w = p
    elif alpha == 2.0:
        w = (p > 0).to(p.dtype)
    else:
        w = torch.where(p > 0, p.pow(2.0 - alpha), 0.0)
    w_hat = w / w.sum(dim=-1, keepdim=True)
    out = w * (g - _rowdot(w_hat, g).unsqueeze(-1))
    if temperature != 1.0:
        out.div_(temperature)
    return out


# ---------------------------------------------------------------------------------------------
# Entropy
# ---------------------------------------------------------------------------------------------


def entropy_forward(logits, mask, alpha, temperature):
    """Per-row entropy of the mapping's own regularizer, support size, and what backward needs."""
    x, has_neg_inf = _shifted_logits(logits, mask, temperature)
    if alpha == 1.0:
        p, _, H = _softmax(x, has_neg_inf)
        support = _allowed_count(logits, mask)
    else:
        p = _entmax(x, alpha)
        H, _, n = _alpha_stats(p, alpha)
        support = n.to(torch.int32)
    return H, support, (p, H)


def entropy_backward(saved, grad_H, alpha, temperature):
    """``dH/dz``: Shannon ``-p (log p + H)``; Tsallis ``(q_hat - p) / (alpha-1)``; times grad_H / T."""
    p, H = saved
    g = grad_H.to(p.dtype).unsqueeze(-1)
    if alpha == 1.0:
        # xlogy keeps 0 log 0 = 0 where a probability underflowed or was masked.
        dH = torch.xlogy(p, p).add_(p * H.unsqueeze(-1)).neg_()
    else:
        _, q_hat, _ = _alpha_stats(p, alpha)
        dH = q_hat.sub_(p).div_(alpha - 1.0)
    dH.mul_(g)
    if temperature != 1.0:
        dH.div_(temperature)
    return dH


def _allowed_count(logits, mask, has_neg_inf=True):
    """Support size of softmax: every allowed action has p > 0 in exact arithmetic."""
    if mask is None and not has_neg_inf:
        return torch.full(logits.shape[:1], logits.shape[1], dtype=torch.int32, device=logits.device)
    allowed = logits.detach() != float("-inf")
    if mask is not None:
        allowed = allowed & mask
    return allowed.sum(dim=-1, dtype=torch.int32)


# ---------------------------------------------------------------------------------------------
# Fused policy-gradient and PPO losses
# ---------------------------------------------------------------------------------------------


_ROW_KEYS = ("loss_rows", "entropy", "log_prob", "support", "ratio", "clipped")


def _fused(logits, mask, actions, advantages, row_scale, beta, alpha, temperature, need_grad,
           grad_out, old_log_prob=None, clip_eps=None, need_norms=True):
    """``_fused_rows`` over blocks of rows on the CPU, writing one logits-sized gradient.

    Every per-row quantity depends on its own row only, so blocking changes no value; the batch
    sums (the two squared gradient norms) add the blocks' partial sums.
    """
    n, n_act = logits.shape
    rows = max(1, _CPU_BLOCK_ELEMS // max(n_act, 1))
    if logits.device.type != "cpu" or n <= rows:
        return _fused_rows(logits, mask, actions, advantages, row_scale, beta, alpha, temperature,
                           need_grad, grad_out, old_log_prob, clip_eps, need_norms)
    grad = None
    if need_grad:
        grad = grad_out if grad_out is not None else torch.empty_like(
            logits, memory_format=torch.contiguous_format)
    out = None
    for r0 in range(0, n, rows):
        b = slice(r0, r0 + rows)
        part = _fused_rows(
            logits[b], None if mask is None else mask[b], actions[b], advantages[b],
            row_scale[b], beta, alpha, temperature, need_grad,
            None if grad is None else grad[b],
            None if old_log_prob is None else old_log_prob[b], clip_eps, need_norms)
        if out is None:
            # outputs allocated once, before any block's temporaries: a block leaves nothing
            # behind on the heap, so the allocator reuses the same memory for every block
            # (small per-block results kept alive between them fragment it and grow the RSS)
            out = {k: part[k].new_empty((n,)) for k in _ROW_KEYS if k in part}
            for k in ("grad_policy_sq", "grad_entropy_sq"):
                out[k] = part[k].clone()
        else:
            for k in ("grad_policy_sq", "grad_entropy_sq"):
                out[k].add_(part[k])
        for k in _ROW_KEYS:
            if k in part:
                out[k][b] = part[k]
        del part
    out["grad"] = grad
    return out


def _fused_rows(logits, mask, actions, advantages, row_scale, beta, alpha, temperature,
                need_grad, grad_out, old_log_prob=None, clip_eps=None, need_norms=True):
    """Shared body of ``pg`` and ``ppo``: one pass of the mapping, then the closed-form gradient.

    Per row (DESIGN.md, fused loss and PPO): ``l = -A log p_a - beta H`` for pg, and
    ``l = -min(r A, clip(r, 1-eps, 1+eps) A) - beta H`` with ``r = p_a / p_a^old`` for ppo. The
    policy term's gradient is ``c * (p - e_a)`` (softmax) or ``c * w_a (q_hat - e_a)`` with
    ``w_a = p_a^{1-alpha}`` (alpha > 1), where ``c = A`` (pg) or ``c = A r`` on rows whose
    unclipped branch is active (ppo). Going through ``p_a`` makes a zero-probability action's
    gradient exactly 0 (``w_a = 0``).

    Bad rows are not checked here: NaN, +inf and all-masked rows make the loss NaN, which the
    public API turns into a precise error with one synchronisation per call. RL minibatches
    are small, so the op count here is kept low: each op costs microseconds of dispatch.
    """
    cdt = compute_dtype(logits.dtype)
    idx = actions.unsqueeze(-1)
    if alpha == 1.0:
        log_p, p, H = _log_softmax(logits, mask, temperature)
        log_p_a = log_p.gather(-1, idx).view(-1)
        # softmax's support is every allowed action: only floored (masked) entries drop out.
        # On the CPU (no sync cost) a row-min check skips the count when nothing is masked.
        floored = _LOG_FLOOR[cdt] / 2
        if logits.device.type == "cpu" and bool(log_p.amin(dim=-1).gt(floored).all()):
            support = torch.full_like(log_p_a, log_p.shape[-1], dtype=torch.int32)
        else:
            support = (log_p > floored).sum(dim=-1, dtype=torch.int32)
        w_a = None
    else:
        x, _ = _shifted_logits(logits, mask, temperature, check=False)
        p = _entmax(x, alpha)
        H, q_hat, n = _alpha_stats(p, alpha)
        support = n.to(torch.int32)
        p_a = p.gather(-1, idx).view(-1)
        log_p_a = p_a.log()
        in_support = p_a > 0
        w_a = torch.where(in_support, p_a.clamp(min=torch.finfo(cdt).tiny).pow(1.0 - alpha), 0.0)

    A = advantages
    out = {"entropy": H, "log_prob": log_p_a, "support": support}
    if old_log_prob is None:
        policy_rows = log_p_a * A
        if w_a is not None:  # an action outside the support contributes no policy term
            policy_rows = torch.where(in_support, policy_rows, 0.0)
        out["loss_rows"] = torch.add(policy_rows, H, alpha=beta).neg_()
        coef = A
    else:
        ratio = torch.exp(log_p_a - old_log_prob)
        surrogate = torch.minimum(ratio * A, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * A)
        clipped = torch.where(A > 0, ratio > 1.0 + clip_eps, ratio < 1.0 - clip_eps)
        coef = torch.where(clipped, 0.0, A * ratio)
        out["ratio"] = ratio
        out["clipped"] = clipped
        out["loss_rows"] = torch.add(surrogate, H, alpha=beta).neg_()

    zero = torch.zeros((), dtype=cdt, device=logits.device)
    out["grad_policy_sq"] = out["grad_entropy_sq"] = zero
    if not need_grad:
        out["grad"] = None
        return out

    scale = row_scale if temperature == 1.0 else row_scale / temperature
    pol_c = coef * scale  # d(sum_i c_i l_i)/d logits = c_i / T * dl_i/dz
    if alpha == 1.0:
        # entropy part  -beta dH/dz = beta p (log p + H), built in log_p's buffer
        ent = log_p.add_(H.unsqueeze(-1)).mul_(p).mul_((beta * scale).unsqueeze(-1))
        if need_norms:
            # ||c (p - e_a)||^2 = c^2 (sum p^2 - 2 p_a + 1): no policy vector is built
            pol_sq = _rowdot(p, p).sub_(p.gather(-1, idx).view(-1), alpha=2.0).add_(1.0)
            out["grad_policy_sq"] = torch.dot(pol_c * pol_c, pol_sq)
            out["grad_entropy_sq"] = torch.dot(ent.view(-1), ent.view(-1))
        grad = ent.addcmul_(p, pol_c.unsqueeze(-1))
    else:
        # entropy part  -beta dH/dz = beta (p - q_hat) / (alpha - 1)
        pol_c = pol_c * w_a
        ent = p.sub_(q_hat).mul_((beta / (alpha - 1.0) * scale).unsqueeze(-1))
        if need_norms:
            q_a = q_hat.gather(-1, idx).view(-1)
            pol_sq = _rowdot(q_hat, q_hat).sub_(q_a, alpha=2.0).add_(1.0)
            out["grad_policy_sq"] = torch.dot(pol_c * pol_c, pol_sq)
            out["grad_entropy_sq"] = torch.dot(ent.view(-1), ent.view(-1))
        grad = ent.addcmul_(q_hat, pol_c.unsqueeze(-1))
    grad.scatter_add_(-1, idx, pol_c.neg().unsqueeze(-1))
    if grad_out is not None:
        grad_out.copy_(grad)
        grad = grad_out
    elif grad.dtype != logits.dtype:
        grad = grad.to(logits.dtype)
    out["grad"] = grad
    return out


def pg(logits, mask, actions, advantages, row_scale, beta, alpha, temperature, need_grad,
       grad_out=None, need_norms=True):
    """Policy-gradient loss rows ``-A log p_a - beta H`` and the gradient of ``sum c_i l_i``."""
    return _fused(logits, mask, actions, advantages, row_scale, beta, alpha, temperature,
                  need_grad, grad_out, need_norms=need_norms)


def ppo(logits, mask, actions, advantages, old_log_prob, row_scale, beta, clip_eps, alpha,
        temperature, need_grad, grad_out=None, need_norms=True):
    """PPO clipped-surrogate rows, ratio, clipped flags and the gradient of ``sum c_i l_i``."""
    return _fused(logits, mask, actions, advantages, row_scale, beta, alpha, temperature,
                  need_grad, grad_out, old_log_prob=old_log_prob, clip_eps=clip_eps,
                  need_norms=need_norms)
