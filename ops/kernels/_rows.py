"""Row-level Triton building blocks shared by the loss and entropy kernels.

A program owns ``BLOCK_N`` rows and walks their ``V`` columns in tiles of ``BLOCK_V``
(``SINGLE``: the whole row fits one tile, is loaded once and stays in registers for every pass).
Everything is computed in float32 on the raw logits ``z`` with masked actions at ``-inf``;
the temperature enters as ``(z - max z) / T``, as in the reference: dividing first would round
``z / T`` at the scale of ``z``, not of ``z - max z``, and entries near the entmax threshold
(``d = y - tau`` small) would lose their relative precision.

The threshold ``tau`` of entmax-alpha (DESIGN.md section 1) lives on the shifted scale
``y = (alpha - 1)(z - max z) / T``, whose maximum is 0, so ``tau`` lies in
``[-1, -(1/n)^(alpha-1)]`` (``n`` allowed actions): at ``-1`` the largest entry alone has
``p = 1``, at the upper end every ``p_i <= 1/n``. With ``d = y - tau`` and ``k = 1/(alpha-1)``::

    p = d^k,   q = p^(2-alpha) = d^(k-1),   p^alpha = d^(k+1)   (on d > 0, else 0)

so one pass gives ``S = sum p``, ``Tq = sum q`` and ``P = sum p^alpha`` with a single power per
element. ``tau`` is found by Newton's method on ``h(tau) = S(tau)^(1/k) - 1`` (a k-norm of
``[y - tau]_+`` minus 1): its step is ``(S - S^(2-alpha)) / Tq``. For alpha <= 2 (k >= 1) h is
convex and decreasing, so Newton started at the lower end ``tau = -1`` increases monotonically to
the root; for alpha = 2 the step is Michelot's closed form ``tau = (sum_S y - 1) / |S|`` on the
current support, exact as soon as the support stops changing; h is exact in one step for any
alpha when the supported entries are equal. Measured: 1-12 passes for alpha in [1.1, 2] at V up
to 32768. Other alpha than 1.5 and 2 search in the pivot frame and finish with the last Newton
step, the sums carried to first order, as alpha > 2 does (below): the stopping test leaves tau up
to 2^-20 |tau| short of the root, and in the row-max frame ``d = y - tau`` of an action near the
threshold keeps only the absolute precision of ``|y| ~ 1`` (relative errors ``k delta / d`` and
``k eps / d`` in ``p``).

alpha > 2 (k < 1, NEWTON off): h is not convex and ``p = d^k`` is steep at small d (alpha = 4:
``d = 3e-7`` is ``p = 0.0065``), so tau must be known to a fraction of the smallest d on the
support, not of ``|tau|``, and below the resolution of ``tau`` itself on the ``y`` scale
(bf16 logits tie just inside the support). The search therefore works in a frame pivoted at
the threshold: ``d = y_scale (x - pivot) - tau`` with ``pivot`` a logit-scale value that is
moved to each new ``tau`` (``pivot += tau / y_scale``, tau and the bracket shifted by the same
rounded ``y_scale * (new - old)``), so tau stays small and ``x - pivot`` is exact near the
threshold. It bisects while a Newton step would change the support (it reduces the smallest d
on it, ``d_min``, by half or more, or reaches the largest d off it), takes Newton steps once it
would not, stops when that step is below 2^-12 ``d_min`` (or the bracket below 2^-20 of the
smallest ``|d|`` on either side of the threshold, or ``|sum p - 1|`` below 2^-20), and finishes
with that last Newton step, the sums carried to first order (O((step / d_min)^2) remains). The
saved statistic ``m`` is then the pivot.
Measured at 16 x 4096 fp32: 1-26 passes, median ~5 (before: bisection to 2^-20 |tau|, 22-25).

Every launch goes through ``launch`` (below), and ``record_iterations`` turns on a DEBUG variant
of the threshold search that also writes its per-row iteration counts.
"""

import contextlib

import torch
import triton
import triton.language as tl

# MAPPING constexpr codes (the launcher maps alpha to one of them)
SOFTMAX = 0
SPARSEMAX = 1
ENTMAX15 = 2
ENTMAX = 3

# Stop once a Newton step or the bracket is below this many units of |tau| (alpha > 2: of the
# smallest d on the support), or sum p is this close to 1.
# Compiled, tl.exp / tl.log2 / tl.sqrt are the approximate hardware instructions
# (ex2.approx.ftz, sqrt.approx: a few ulps), so a test at fp32's epsilon (2^-23) sits at their
# noise and may never pass before MAX_ITERS; 2^-20 (8 ulps) is reached. The residual is removed
# afterwards: sparsemax and entmax-1.5 finish with their closed form on the support found, other
# alpha after a last Newton step (sums carried to first order) by normalising p = d^k / S
# (DESIGN.md section 1).
_TAU_RTOL = tl.constexpr(2.0**-20)
_SUM_ATOL = tl.constexpr(2.0**-20)
# alpha > 2: the search stops once a Newton step that keeps the support is below this fraction
# of the smallest d on it; the finishing step then leaves O(2^-24) (module docstring).
_NEWTON_RTOL = tl.constexpr(2.0**-12)
_NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _load_x(logits_ptr, mask_ptr, row_off, row_ok, cols, V, HAS_MASK: tl.constexpr):
    """Tile of raw logits ``x = z`` in float32, -inf where masked or out of bounds.

    row_off: (BLOCK_N,) int64 element offsets of the rows; row_ok: (BLOCK_N,) rows < N;
    cols: (BLOCK_V,) absolute column indices of the tile.
    """
    in_bounds = row_ok[:, None] & (cols[None, :] < V)
    offs = row_off[:, None] + cols[None, :]
    # fp32 accumulation whatever the input dtype (bf16/fp16 are cast here, once per element)
    z = tl.load(logits_ptr + offs, mask=in_bounds, other=float("-inf")).to(tl.float32)
    allowed = in_bounds
    if HAS_MASK:
        allowed = allowed & (tl.load(mask_ptr + offs, mask=in_bounds, other=0) != 0)
    return tl.where(allowed, z, float("-inf"))


@triton.jit
def _entmax_tile(x, m, tau, am1, y_scale, MAPPING: tl.constexpr):
    """For a tile: ``on = d > 0`` and ``p = d^k``, ``q = d^(k-1)``, ``p^alpha = d^(k+1)`` on it,
    with ``d = y - tau``, ``y = y_scale (x - m)``, ``y_scale = (alpha - 1) / T``."""
    d = y_scale * (x - m[:, None]) - tau[:, None]
    on = d > 0
    d = tl.where(on, d, 1.0)  # keeps log2 / division finite off the support
    if MAPPING == 1:  # sparsemax, k = 1
        pk = d
        q = tl.full(d.shape, 1.0, tl.float32)
        pa = d * d
    elif MAPPING == 2:  # entmax-1.5, k = 2
        pk = d * d
        q = d
        pa = pk * d
    else:
        pk = tl.exp2(tl.log2(d) / am1)
        q = pk / d
        pa = pk * d
    return on, tl.where(on, pk, 0.0), tl.where(on, q, 0.0), tl.where(on, pa, 0.0)


@triton.jit
def _row_statistics(logits_ptr, mask_ptr, row_off, row_ok, x_row, V, temperature, alpha, am1,
                    y_scale, MAPPING: tl.constexpr, NEWTON: tl.constexpr, HAS_MASK: tl.constexpr,
                    SINGLE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                    MAX_ITERS: tl.constexpr):
    """Per-row statistics of the mapping of ``z / T`` (x: raw logit tiles).

    Returns ``(row_max, m, t0, S, Tq, H, support, iters)``: row_max is the max of z over allowed
    actions (NaN if the row holds NaN, -inf if nothing is allowed) for validation; m the same
    made finite (alpha other than 1.5 and 2: the threshold search's pivot, the frame of t0);
    t0 = log s = log-sum-exp - m (softmax) or tau (alpha > 1); S = sum p and Tq = sum q before
    normalisation (1 for softmax); H the entropy; support = #{p > 0} (int32); iters the passes
    of the threshold search each row took part in (int32, 0 for softmax; only stored by DEBUG
    launches, otherwise compiled away).
    x_row: the row tile when SINGLE (else unused).
    """
    # 1. one pass: max, allowed count, NaN count; softmax also the online sums
    #    s = sum exp(u) and t = sum exp(u) u with u = (x - m) / T, rescaled when m grows, so
    #    that log-sum-exp(x / T) = m / T + log s and H = log s - t / s (DESIGN.md, Shannon).
    inv_t = 1.0 / temperature
    m = tl.full([BLOCK_N], _NEG_INF, tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    t = tl.zeros([BLOCK_N], tl.float32)
    n = tl.zeros([BLOCK_N], tl.int32)
    n_nan = tl.zeros([BLOCK_N], tl.int32)
    for start in range(0, V, BLOCK_V):
        if SINGLE:
            x = x_row
        else:
            x = _load_x(logits_ptr, mask_ptr, row_off, row_ok, start + tl.arange(0, BLOCK_V), V,
                        HAS_MASK)
        n += tl.sum((x > _NEG_INF).to(tl.int32), axis=1)
        n_nan += tl.sum((x != x).to(tl.int32), axis=1)
        x_max = tl.max(x, axis=1)
        if MAPPING == 0:
            m_new = tl.maximum(m, x_max)
            # subtract the row max: exp never overflows; a row masked so far keeps ref 0
            ref = tl.where(m_new == _NEG_INF, 0.0, m_new)
            shift = (m - ref) * inv_t
            rescale = tl.exp(shift)
            # the old sums vanish when the rescale underflows; testing it (not the raw logits)
            # also covers finite logits whose difference overflows fp32 (shift = -inf)
            t = tl.where(rescale > 0, rescale * (t + tl.where(s > 0, shift, 0.0) * s), 0.0)
            s = rescale * s
            xm = (x - ref[:, None]) * inv_t
            e = tl.exp(xm)
            s += tl.sum(e, axis=1)
            # e u is 0 wherever e is: u may be -inf there, also for a finite x (x - ref overflows)
            t += tl.sum(tl.where(e > 0, e * xm, 0.0), axis=1)
            m = m_new
        else:
            m = tl.maximum(m, x_max)
    row_max = tl.where(n_nan > 0, float("nan"), tl.where(n > 0, m, _NEG_INF))
    ok = row_ok & (n_nan == 0) & (n > 0) & (m < float("inf"))
    m = tl.where(ok, m, 0.0)
    one = tl.full([BLOCK_N], 1.0, tl.float32)
    if MAPPING == 0:
        s = tl.where(ok, s, 1.0)
        log_s = tl.log(s)
        # log p = (x - m) / T - log s: adding m first would round log s away at large logits
        t0 = log_s
        S = one
        Tq = one
        H = log_s - t / s
        c = n
        iters = tl.zeros([BLOCK_N], tl.int32)
    else:
        # alpha other than 1.5 and 2: m comes back as the search's pivot (the frame of t0,
        # module docstring)
        m, t0, S, Tq, H, c, iters = _entmax_threshold(logits_ptr, mask_ptr, row_off, row_ok,
                                                      x_row, V, temperature, alpha, am1, y_scale,
                                                      m, n, ok, MAPPING, NEWTON, HAS_MASK, SINGLE,
                                                      BLOCK_N, BLOCK_V, MAX_ITERS)
    return row_max, m, t0, S, Tq, H, c, iters


@triton.jit
def _entmax_threshold(logits_ptr, mask_ptr, row_off, row_ok, x_row, V, temperature, alpha, am1,
                      y_scale, m, n, ok, MAPPING: tl.constexpr, NEWTON: tl.constexpr,
                      HAS_MASK: tl.constexpr, SINGLE: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_V: tl.constexpr, MAX_ITERS: tl.constexpr):
    """tau of entmax-alpha (module docstring) and ``(pivot, S, Tq, H, support)`` at that tau.

    The threshold is ``tau`` in the frame ``d = y_scale (x - pivot) - tau``: the pivot is the
    row max (tau in ``[-1, 0)``) for sparsemax and entmax-1.5; for other alpha it follows the
    threshold (module docstring, "alpha > 2"). ``am1 = alpha - 1`` and ``y_scale = am1 / T``
    come from the host (``frame_scalars``).
    """
    one = tl.full([BLOCK_N], 1.0, tl.float32)
    # 2. alpha > 1: safeguarded Newton (or bisection) on tau; each iteration is one pass at the
    #    current tau, whose sums are kept, so the final sums belong to the final tau.
    tau = tl.full([BLOCK_N], -1.0, tl.float32)
    lo = tau
    hi = -tl.exp2(-am1 * tl.log2(tl.maximum(n, 1).to(tl.float32)))
    done = (n <= 1) | (~ok)  # n == 1: tau = -1 gives the single action p = 1 exactly
    pivot = m
    S = one
    Tq = one
    P = one
    R = one
    c = n
    c_prev = tl.full([BLOCK_N], -1, tl.int32)
    d_min = one
    d_off = tl.full([BLOCK_N], _NEG_INF, tl.float32)
    delta = tl.zeros([BLOCK_N], tl.float32)
    iters = tl.zeros([BLOCK_N], tl.int32)
    it = 0
    todo = tl.sum(tl.full([BLOCK_N], 1, tl.int32), axis=0)  # always run one pass
    while todo > 0:
        S = tl.zeros([BLOCK_N], tl.float32)
        Tq = tl.zeros([BLOCK_N], tl.float32)
        P = tl.zeros([BLOCK_N], tl.float32)
        c = tl.zeros([BLOCK_N], tl.int32)
        if MAPPING == 3:
            R = tl.zeros([BLOCK_N], tl.float32)
            d_min = tl.full([BLOCK_N], float("inf"), tl.float32)
            d_off = tl.full([BLOCK_N], _NEG_INF, tl.float32)
        for start in range(0, V, BLOCK_V):
            if SINGLE:
                x = x_row
            else:
                x = _load_x(logits_ptr, mask_ptr, row_off, row_ok, start + tl.arange(0, BLOCK_V),
                            V, HAS_MASK)
            on, pk, q, pa = _entmax_tile(x, pivot, tau, am1, y_scale, MAPPING)
            S += tl.sum(pk, axis=1)
            Tq += tl.sum(q, axis=1)
            P += tl.sum(pa, axis=1)
            c += tl.sum(on.to(tl.int32), axis=1)
            if MAPPING == 3:
                # for the Newton finish: R = sum d^(k-2), the smallest d on the support and the
                # largest (closest to entering) off it (-inf: masked / out of bounds)
                d = y_scale * (x - pivot[:, None]) - tau[:, None]
                R += tl.sum(tl.where(on, q / tl.where(on, d, 1.0), 0.0), axis=1)
                d_min = tl.minimum(d_min, tl.min(tl.where(on, d, float("inf")), axis=1))
                d_off = tl.maximum(d_off, tl.max(tl.where(on, _NEG_INF, d), axis=1))
        S = tl.where(ok, S, 1.0)
        Tq = tl.where(ok, Tq, 1.0)
        f = S - 1.0
        active = ~done
        lo = tl.where(active & (f >= 0), tau, lo)
        hi = tl.where(active & (f < 0), tau, hi)
        # Newton step on h = S^(1/k) - 1: (S - S^(2-alpha)) / Tq
        if MAPPING == 1:
            delta = f / Tq
        elif MAPPING == 2:
            delta = (S - tl.sqrt(S)) / Tq
        else:
            delta = (S - tl.exp2((2.0 - alpha) * tl.log2(S))) / Tq
        if NEWTON:
            if MAPPING == 3:
                # |tau| in the row-max frame (tau itself is small in the pivot frame)
                tol = _TAU_RTOL * tl.abs(tau + y_scale * (pivot - m))
            else:
                tol = _TAU_RTOL * tl.abs(tau)
            conv = (hi - lo <= tol) | (tl.abs(f) <= _SUM_ATOL) | (it + 1 >= MAX_ITERS)
            if MAPPING == 1:
                conv = conv | (c == c_prev)  # support unchanged: Michelot's tau is exact
            conv = conv | (tl.abs(delta) <= tol)
            step = tau + delta
            step = tl.where((step >= lo) & (step <= hi), step, 0.5 * (lo + hi))
        else:
            # alpha > 2: bisection while a Newton step would change the support (h is not
            # convex, and d^k is steep where an action enters); Newton once it keeps it. The
            # tolerances are relative to the smallest d on the support, whose p = d^k is the
            # most sensitive to tau, not to |tau|.
            local = (delta < 0.5 * d_min) & (delta >= d_off)
            step = tau + delta
            step = tl.where(local & (step > lo) & (step < hi), step, 0.5 * (lo + hi))
            # the bracket is small enough only relative to the action nearest the threshold on
            # either side: the largest d off the support too, or a bracket still holding an
            # action just inside the support (d = 1.7e-8, p = 0.0026 at alpha = 4) stopped on
            # its far side, where d_min is that of the other actions, and lost it
            conv = ((local & (tl.abs(delta) <= _NEWTON_RTOL * d_min))
                    | (hi - lo <= _TAU_RTOL * tl.minimum(d_min, -d_off))
                    | (tl.abs(f) <= _SUM_ATOL) | (it + 1 >= MAX_ITERS))
        iters += active.to(tl.int32)
        tau_next = tl.where(done | conv, tau, step)
        done = done | conv
        if MAPPING == 3:
            # move the pivot to the next tau (raw logit scale): tau and the bracket shift by the
            # same rounded amount, and tau stays small, so d = y_scale (x - pivot) - tau keeps
            # its relative precision however close an action lies to the threshold
            new_pivot = tl.where(done, pivot, pivot + tau_next / y_scale)
            shift = y_scale * (new_pivot - pivot)
            tau_next = tau_next - shift
            lo = lo - shift
            hi = hi - shift
            pivot = new_pivot
        tau = tau_next
        c_prev = c
        it += 1
        todo = tl.sum((~done).to(tl.int32), axis=0)
    # 3. sparsemax and entmax-1.5: on the support found, tau has a closed form (Martins &
    #    Astudillo 2016; Peters et al. 2019), the one the sort-based reference uses: the last
    #    correction delta solves sum_S (d - delta)^k = 1 exactly (k = 1, 2), and the sums follow
    #    it in O(1) per row (delta is at rounding level here: no element changes side).
    if MAPPING == 1:
        cf = tl.maximum(c, 1).to(tl.float32)
        delta = tl.where(ok, (S - 1.0) / cf, 0.0)
        tau += delta
        P = P - 2.0 * delta * S + cf * delta * delta
        S = S - cf * delta
    elif MAPPING == 2:
        cf = tl.maximum(c, 1).to(tl.float32)
        # smaller root of c delta^2 - 2 Tq delta + S - 1 = 0, in the form without cancellation
        delta = (S - 1.0) / (Tq + tl.sqrt(tl.maximum(Tq * Tq - cf * (S - 1.0), 0.0)))
        delta = tl.where(ok, delta, 0.0)
        tau += delta
        P = P - delta * (3.0 * S - delta * (3.0 * Tq - cf * delta))
        S = S - delta * (2.0 * Tq - cf * delta)
        Tq = Tq - cf * delta
    else:
        # other alpha: the last Newton step, taken when it keeps the support, with the sums
        # carried to first order (dS = -k Tq delta, dTq = -(k-1) R delta, dP = -(k+1) S delta;
        # the remainder is O((delta / d_min)^2), below fp32 rounding after the search's test).
        # Without it, 1 < alpha < 2 kept a tau up to 2^-20 |tau| short of the root, and
        # normalising p = d^k / S leaves a relative error of about k delta / d_a on an action
        # near the threshold (seen: log p_a off by 4e-5 and 8e-5 at alpha = 1.3, bf16, T = 1.9).
        k = 1.0 / am1
        fin = ok & (n > 1) & (delta < 0.5 * d_min) & (delta >= d_off)
        delta = tl.where(fin, delta, 0.0)
        tau += delta
        P = tl.where(fin, P - (k + 1.0) * S * delta, P)
        S = tl.where(fin, S - k * Tq * delta, S)
        Tq = tl.where(fin, Tq - (k - 1.0) * R * delta, Tq)
    # 4. Tsallis entropy of the normalised p = d^k / S: (1 - P / S^alpha) / (alpha (alpha-1))
    if MAPPING == 1:
        S_alpha = S * S
    elif MAPPING == 2:
        S_alpha = S * tl.sqrt(S)
    else:
        S_alpha = tl.exp2(alpha * tl.log2(S))
    H = (1.0 - P / S_alpha) / (alpha * am1)
    return pivot, tau, S, Tq, H, c, iters


@triton.jit
def _mapping_tile(x, m, t0, S, Tq, H, alpha, am1, y_scale, temperature,
                  MAPPING: tl.constexpr):
    """``(p, w, neg_dH)`` on a tile: p the probabilities; w = p (softmax) or q_hat (alpha > 1),
    so that ``d log p_a / dz = p_a^(1-alpha) (e_a - w)``; ``neg_dH = -dH/dz`` before dividing by T:
    Shannon ``p (log p + H)``, Tsallis ``(p - q_hat) / (alpha - 1)`` (DESIGN.md section 1)."""
    if MAPPING == 0:
        log_p = (x - m[:, None]) * (1.0 / temperature) - t0[:, None]
        p = tl.exp(log_p)
        # 0 log 0 = 0 for masked / underflowed actions (log p = -inf there: never multiply it)
        neg_dH = p * (tl.where(p > 0, log_p, 0.0) + H[:, None])
        return p, p, neg_dH
    else:
        on, pk, q, pa = _entmax_tile(x, m, t0, am1, y_scale, MAPPING)
        p = pk / S[:, None]
        w = q / Tq[:, None]
        return p, w, (p - w) / am1


# Lists that ``record_iterations`` blocks are filling; a launch of the threshold search runs its
# DEBUG variant while any is open.
_recorders: list[list[dict]] = []


@contextlib.contextmanager
def record_iterations():
    """Records the threshold search's per-row iteration counts of every launch inside the block.

    Yields a list; each launch of the entropy forward, probs forward, pg or ppo kernel with
    alpha != 1 appends ``{"op": "entropy" | "probs" | "pg" | "ppo", "alpha", "N", "V",
    "iterations"}``, the last an int32 tensor (N,) on the logits' device: the passes each row's
    Newton / bisection search took (0 for a row with one allowed action). Those launches use the
    ``DEBUG=True`` kernel variant; outside the block every launch compiles without it.
    """
    records: list[dict] = []
    _recorders.append(records)
    try:
        yield records
    finally:
        _recorders.remove(records)


def iteration_buffer(N, mapping, device):
    """The per-row iteration-count buffer of a launch with MAPPING code ``mapping``, or None
    (nothing recording, or softmax: no threshold search)."""
    if not _recorders or mapping == SOFTMAX:
        return None
    return torch.zeros(N, dtype=torch.int32, device=device)


def record(op, alpha, N, V, iterations):
    """Hands a DEBUG launch's iteration counts to every open ``record_iterations`` block."""
    if iterations is None:
        return
    for records in _recorders:
        records.append(dict(op=op, alpha=float(alpha), N=int(N), V=int(V), iterations=iterations))


def launch(kernel, grid, *args, **kwargs):
    """Runs ``kernel[grid](*args, **kwargs)``: the one place every kernel of ``ops.kernels`` is
    launched from.

    On CUDA tensors the launch happens under ``torch.cuda.device`` of the first tensor argument
    (the logits), not on whatever device is current. Launchers call it as ``_rows.launch(...)``
    (a module attribute, never a from-import) so that patching ``ops.kernels._rows.launch``
    intercepts every real launch with its real arguments: ``scripts/check_gpu.py`` records them
    to compile exactly the variants the ops use.
    """
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    if device is not None and device.type == "cuda":
        with torch.cuda.device(device):
            return kernel[grid](*args, **kwargs)
    return kernel[grid](*args, **kwargs)


def check_layout(logits, *others):
    """The kernels address (N, V) operands as ``row * stride_row + col``: unit column stride and
    one row stride shared by the logits, the mask and the gradient. Per-row operands are read as
    ``ptr + row``: contiguous and of length N. ``ops._contract`` builds its inputs that way; this
    states the assumption where the pointers are formed."""
    N, V = logits.shape
    assert logits.stride(1) == 1 or V == 1, f"logits column stride {logits.stride()}"
    for t in others:
        if t is None:
            continue
        if t.dim() == 2:
            assert t.shape == logits.shape and (t.stride(0) == logits.stride(0) or N == 1) \
                and (t.stride(1) == 1 or V == 1), \
                f"(N, V) operand {tuple(t.shape)} strides {t.stride()} vs logits {logits.stride()}"
        else:
            assert t.shape[0] == N and t.is_contiguous(), \
                f"per-row operand {tuple(t.shape)} strides {t.stride()} (need contiguous, N = {N})"


def _interpreted():
    """Whether triton decorated the kernels for its interpreter (TRITON_INTERPRET=1 at import)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - layout of other triton versions
        return False
    return isinstance(_interpreted_probe, InterpretedFunction)


@triton.jit
def _interpreted_probe(x_ptr):
    """Never launched: its type tells whether ``@triton.jit`` ran under the interpreter."""
    pass


def frame_scalars(alpha, temperature):
    """``(am1, y_scale) = (alpha - 1, (alpha - 1) / T)``, each computed in double and rounded to
    fp32 once, as the reference's scalars are. Compiled kernels take float arguments as fp32, and
    ``alpha - 1`` of the fp32 alpha (1.3 -> 1.2999999523) is 1.6e-7 relative off; an action near
    the threshold (``d = y - tau``, ``|y| <= 1``) has ``d`` off by that times ``|y| / d`` (at
    ``d = 1e-3``: 1e-4 relative, times k in ``p = d^k``)."""
    return float(alpha) - 1.0, (float(alpha) - 1.0) / float(temperature)


def empty(shape, dtype, device):
    """Every output buffer of the launchers; a seam so that tests and ``scripts/check_gpu.py``
    can hand the kernels NaN-filled buffers and prove that every element gets written."""
    return torch.empty(shape, dtype=dtype, device=device)


def launch_config(N, V, device, max_block_v=None):
    """Block sizes and warps, chosen here (not autotuned: the interpreter allows one config).

    A row of up to ``max_block_v`` entries is one register-resident tile (read from memory
    once however many passes the threshold needs); longer rows loop over 4096-wide tiles.
    Several short rows share a program so every program holds ~2-8k elements.
    """
    on_gpu = device.type == "cuda"
    if max_block_v is None:
        max_block_v = 8192 if on_gpu else 16384
    np2 = triton.next_power_of_2(max(V, 1))
    if np2 <= max_block_v:
        block_v, single = max(np2, 8), True
    else:
        block_v, single = min(4096, max_block_v), False
    if on_gpu:
        # ~2048 elements per program for short rows, but keep >= ~1024 programs when N allows
        block_n = max(1, min(2048 // block_v, 256))
        while block_n > 1 and triton.cdiv(N, block_n) < 1024:
            block_n //= 2
        elems = block_n * block_v
        num_warps = 16 if elems >= 8192 else 8 if elems >= 4096 else 4 if elems >= 1024 else 2
        if block_n > 1:
            # each row carries a dozen per-row vectors through the tau search: at most 8
            # elements per thread (ptxas -v, sm_90: 16 per thread spilled registers)
            num_warps = max(num_warps, min(16, elems // 256))
    else:
        # the interpreter's cost is per program: as many rows per program as fit ~16k elements
        block_n = max(1, min(16384 // block_v, triton.next_power_of_2(max(N, 1))))
        num_warps = 1
    return dict(BLOCK_N=block_n, BLOCK_V=block_v, SINGLE=single, num_warps=num_warps)
