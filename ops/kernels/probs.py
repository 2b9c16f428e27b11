"""The mapping itself on kernels: probabilities (forward) and their closed-form VJP (backward).

Forward finds the row statistics as the entropy forward does and writes ``p`` in the logits'
dtype, plus the per-row ``(m, t0, S, Tq)`` from which the backward rebuilds ``p`` and ``q_hat``
tile by tile without searching tau again. Backward (DESIGN.md section 1, Jacobians)::

    softmax  g -> p (g - <p, g>) / T
    alpha>1  g -> q (g - <q_hat, g>) / T,   q = p^(2-alpha) = q_hat Tq / S^(2-alpha)

in two passes over the row: the dot product, then the write.
"""

import torch
import triton
import triton.language as tl

from ops.kernels import _rows
from ops.kernels._rows import _load_x, _mapping_tile, _row_statistics, launch_config


@triton.jit
def _probs_forward_kernel(
    logits_ptr, mask_ptr, probs_ptr, row_max_ptr, stats_ptr, iters_ptr,
    N, V, stride_row, alpha, am1, y_scale, temperature,
    MAPPING: tl.constexpr, NEWTON: tl.constexpr, HAS_MASK: tl.constexpr, SINGLE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, MAX_ITERS: tl.constexpr, DEBUG: tl.constexpr,
):
    """Probabilities for BLOCK_N rows.

    Pointers: logits_ptr (N, V) raw logits; mask_ptr (N, V) uint8 if HAS_MASK; outputs
    probs_ptr (N, V) in the logits' dtype (same row stride), row_max_ptr (N,) fp32, stats_ptr
    (N, 4) fp32 ``m, t0, S, Tq``; iters_ptr (N,) int32 if DEBUG. Constexprs as in
    ``_policy_loss_forward_kernel``.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    row_off = rows.to(tl.int64) * stride_row  # int64: N * V overflows int32
    cols = tl.arange(0, BLOCK_V)
    if SINGLE:
        x_row = _load_x(logits_ptr, mask_ptr, row_off, row_ok, cols, V, HAS_MASK)
    else:
        x_row = 0.0
    row_max, m, t0, S, Tq, H, support, iters = _row_statistics(
        logits_ptr, mask_ptr, row_off, row_ok, x_row, V, temperature, alpha, am1, y_scale, MAPPING, NEWTON,
        HAS_MASK, SINGLE, BLOCK_N, BLOCK_V, MAX_ITERS)
    if DEBUG:
        tl.store(iters_ptr + rows, iters, mask=row_ok)
    tl.store(row_max_ptr + rows, row_max, mask=row_ok)
    tl.store(stats_ptr + 4 * rows, m, mask=row_ok)
    tl.store(stats_ptr + 4 * rows + 1, t0, mask=row_ok)
    tl.store(stats_ptr + 4 * rows + 2, S, mask=row_ok)
    tl.store(stats_ptr + 4 * rows + 3, Tq, mask=row_ok)
    for start in range(0, V, BLOCK_V):
        cols_v = start + cols
        if SINGLE:
            x = x_row
        else:
            x = _load_x(logits_ptr, mask_ptr, row_off, row_ok, cols_v, V, HAS_MASK)
        p, w, neg_dH = _mapping_tile(x, m, t0, S, Tq, H, alpha, am1, y_scale, temperature, MAPPING)
        in_bounds = row_ok[:, None] & (cols_v[None, :] < V)
        tl.store(probs_ptr + row_off[:, None] + cols_v[None, :],
                 p.to(probs_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit
def _probs_backward_kernel(
    logits_ptr, mask_ptr, stats_ptr, grad_p_ptr, grad_ptr,
    N, V, stride_row, alpha, am1, y_scale, temperature,
    MAPPING: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """``grad = VJP(grad_p)`` for BLOCK_N rows (module docstring): two reads, one write.

    Pointers: logits_ptr, grad_p_ptr (N, V) and grad_ptr (N, V) output in the logits' dtype,
    all with ``stride_row``; mask_ptr (N, V) uint8 if HAS_MASK; stats_ptr (N, 4) fp32.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    row_off = rows.to(tl.int64) * stride_row
    m = tl.load(stats_ptr + 4 * rows, mask=row_ok, other=0.0)
    t0 = tl.load(stats_ptr + 4 * rows + 1, mask=row_ok, other=0.0)
    S = tl.load(stats_ptr + 4 * rows + 2, mask=row_ok, other=1.0)
    Tq = tl.load(stats_ptr + 4 * rows + 3, mask=row_ok, other=1.0)
    H = tl.zeros([BLOCK_N], tl.float32)  # unused by p and w
    # 1. <w_hat, g> with w_hat = p (softmax) or q_hat
    dot = tl.zeros([BLOCK_N], tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        in_bounds = row_ok[:, None] & (cols[None, :] < V)
        x = _load_x(logits_ptr, mask_ptr, row_off, row_ok, cols, V, HAS_MASK)
        p, w, neg_dH = _mapping_tile(x, m, t0, S, Tq, H, alpha, am1, y_scale, temperature, MAPPING)
        g = tl.load(grad_p_ptr + row_off[:, None] + cols[None, :], mask=in_bounds,
                    other=0.0).to(tl.float32)
        dot += tl.sum(tl.where(w > 0, w * g, 0.0), axis=1)
    # 2. w (g - dot) / T, with w = w_hat * c: c = 1 (softmax) or Tq / S^(2-alpha)
    if MAPPING == 0:
        c = tl.full([BLOCK_N], 1.0, tl.float32)
    elif MAPPING == 1:
        c = Tq
    elif MAPPING == 2:
        c = Tq / tl.sqrt(S)
    else:
        c = Tq / tl.exp2((2.0 - alpha) * tl.log2(S))
    c = c / temperature
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        in_bounds = row_ok[:, None] & (cols[None, :] < V)
        x = _load_x(logits_ptr, mask_ptr, row_off, row_ok, cols, V, HAS_MASK)
        p, w, neg_dH = _mapping_tile(x, m, t0, S, Tq, H, alpha, am1, y_scale, temperature, MAPPING)
        g = tl.load(grad_p_ptr + row_off[:, None] + cols[None, :], mask=in_bounds,
                    other=0.0).to(tl.float32)
        out = tl.where(w > 0, c[:, None] * w * (g - dot[:, None]), 0.0)
        tl.store(grad_ptr + row_off[:, None] + cols[None, :],
                 out.to(grad_ptr.dtype.element_ty), mask=in_bounds)


def _probs_forward(logits, mask, alpha, temperature, mapping, newton, max_block_v=None,
                   max_iters=64):
    """Returns ``probs`` (logits' dtype), ``row_max`` and ``stats``."""
    _rows.check_layout(logits, mask)
    N, V = logits.shape
    dev = logits.device
    # uninitialised: the kernel writes every element (tests poison these buffers to check)
    probs = _rows.empty(logits.shape, dtype=logits.dtype, device=dev)
    row_max = _rows.empty(N, dtype=torch.float32, device=dev)
    stats = _rows.empty((N, 4), dtype=torch.float32, device=dev)
    iters = _rows.iteration_buffer(N, mapping, dev)
    cfg = launch_config(N, V, dev, max_block_v)
    _rows.launch(
        _probs_forward_kernel, (triton.cdiv(N, cfg["BLOCK_N"]),),
        logits, mask.view(torch.uint8) if mask is not None else logits, probs, row_max, stats,
        row_max if iters is None else iters, N, V, logits.stride(0), float(alpha),
        *_rows.frame_scalars(alpha, temperature), float(temperature),
        MAPPING=mapping, NEWTON=newton, HAS_MASK=mask is not None, SINGLE=cfg["SINGLE"],
        BLOCK_N=cfg["BLOCK_N"], BLOCK_V=cfg["BLOCK_V"], MAX_ITERS=max_iters,
        DEBUG=iters is not None, num_warps=cfg["num_warps"],
    )
    _rows.record("probs", alpha, N, V, iters)
    return probs, row_max, stats


def _probs_backward(logits, mask, stats, grad_p, alpha, temperature, mapping, max_block_v=None):
    """Returns the VJP of the mapping at ``grad_p`` (N, V) in the logits' dtype."""
    grad_p = grad_p.contiguous()
    grad = _rows.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    _rows.check_layout(logits, mask, grad_p, grad)
    N, V = logits.shape
    cfg = launch_config(N, V, logits.device, max_block_v)
    # the two passes re-read the row: a single register tile is not kept between them
    _rows.launch(
        _probs_backward_kernel, (triton.cdiv(N, cfg["BLOCK_N"]),),
        logits, mask.view(torch.uint8) if mask is not None else logits, stats, grad_p, grad,
        N, V, logits.stride(0), float(alpha), *_rows.frame_scalars(alpha, temperature),
        float(temperature),
        MAPPING=mapping, HAS_MASK=mask is not None, BLOCK_N=cfg["BLOCK_N"],
        BLOCK_V=cfg["BLOCK_V"], num_warps=cfg["num_warps"],
    )
    return grad
