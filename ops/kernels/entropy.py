"""The mapping's entropy: forward (per-row H, O(N) bytes written) and its closed-form backward.

Forward reads the logits and writes per-row ``H``, the support size, the row max (for
validation) and four per-row statistics ``(m, t0, S, Tq)`` from which the backward rebuilds
``p`` without searching tau again. Backward reads the logits once and writes ``dH/dz`` once
(DESIGN.md section 1)::

    Shannon  dH/dz = -p (log p + H) / T
    Tsallis  dH/dz = (q_hat - p) / ((alpha - 1) T)
"""

import torch
import triton
import triton.language as tl

from ops.kernels import _rows
from ops.kernels._rows import _load_x, _mapping_tile, _row_statistics, launch_config


@triton.jit
def _entropy_forward_kernel(
    logits_ptr, mask_ptr, entropy_ptr, support_ptr, row_max_ptr, stats_ptr, iters_ptr,
    N, V, stride_row, alpha, am1, y_scale, temperature,
    MAPPING: tl.constexpr, NEWTON: tl.constexpr, HAS_MASK: tl.constexpr, SINGLE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, MAX_ITERS: tl.constexpr, DEBUG: tl.constexpr,
):
    """Per-row entropy and saved statistics for BLOCK_N rows.

    Pointers: logits_ptr (N, V) raw logits; mask_ptr (N, V) uint8 if HAS_MASK; outputs
    entropy_ptr, row_max_ptr (N,) fp32, support_ptr (N,) int32, stats_ptr (N, 4) fp32 holding
    ``m, t0, S, Tq`` (see ``_row_statistics``); iters_ptr (N,) int32 if DEBUG. Constexprs as in
    ``_policy_loss_forward_kernel``.
    """
    # 1. rows; int64 offsets (N * V overflows int32)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    row_off = rows.to(tl.int64) * stride_row
    if SINGLE:
        x_row = _load_x(logits_ptr, mask_ptr, row_off, row_ok, tl.arange(0, BLOCK_V), V,
                        HAS_MASK)
    else:
        x_row = 0.0
    # 2. statistics (the only pass over the logits, or the passes of the tau search)
    row_max, m, t0, S, Tq, H, support, iters = _row_statistics(
        logits_ptr, mask_ptr, row_off, row_ok, x_row, V, temperature, alpha, am1, y_scale, MAPPING, NEWTON,
        HAS_MASK, SINGLE, BLOCK_N, BLOCK_V, MAX_ITERS)
    # 3. O(N) writes
    if DEBUG:
        tl.store(iters_ptr + rows, iters, mask=row_ok)
    tl.store(entropy_ptr + rows, H, mask=row_ok)
    tl.store(support_ptr + rows, support, mask=row_ok)
    tl.store(row_max_ptr + rows, row_max, mask=row_ok)
    tl.store(stats_ptr + 4 * rows, m, mask=row_ok)
    tl.store(stats_ptr + 4 * rows + 1, t0, mask=row_ok)
    tl.store(stats_ptr + 4 * rows + 2, S, mask=row_ok)
    tl.store(stats_ptr + 4 * rows + 3, Tq, mask=row_ok)


@triton.jit
def _entropy_backward_kernel(
    logits_ptr, mask_ptr, stats_ptr, entropy_ptr, grad_H_ptr, grad_ptr,
    N, V, stride_row, alpha, am1, y_scale, temperature,
    MAPPING: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """``grad = grad_H * dH/dz`` for BLOCK_N rows: one read of the logits, one write.

    Pointers: logits_ptr (N, V), mask_ptr (N, V) uint8 if HAS_MASK, stats_ptr (N, 4) and
    entropy_ptr (N,) fp32 from the forward, grad_H_ptr (N,) upstream gradient, grad_ptr (N, V)
    output in the logits' dtype.
    """
    # 1. rows and their saved statistics
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    row_off = rows.to(tl.int64) * stride_row  # int64: N * V overflows int32
    m = tl.load(stats_ptr + 4 * rows, mask=row_ok, other=0.0)
    t0 = tl.load(stats_ptr + 4 * rows + 1, mask=row_ok, other=0.0)
    S = tl.load(stats_ptr + 4 * rows + 2, mask=row_ok, other=1.0)
    Tq = tl.load(stats_ptr + 4 * rows + 3, mask=row_ok, other=1.0)
    H = tl.load(entropy_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(grad_H_ptr + rows, mask=row_ok, other=0.0).to(tl.float32) / temperature
    # 2. one pass: rebuild p (and q_hat) per tile, write -g * neg_dH in the logits' dtype
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = _load_x(logits_ptr, mask_ptr, row_off, row_ok, cols, V, HAS_MASK)
        p, w, neg_dH = _mapping_tile(x, m, t0, S, Tq, H, alpha, am1, y_scale, temperature, MAPPING)
        in_bounds = row_ok[:, None] & (cols[None, :] < V)
        tl.store(grad_ptr + row_off[:, None] + cols[None, :],
                 (-g[:, None] * neg_dH).to(grad_ptr.dtype.element_ty), mask=in_bounds)


def _entropy_forward(logits, mask, alpha, temperature, mapping, newton, max_block_v=None,
                     max_iters=64):
    """Returns ``H, support, row_max, stats``."""
    _rows.check_layout(logits, mask)
    N, V = logits.shape
    dev = logits.device
    # uninitialised: the kernel writes every element (tests poison these buffers to check)
    H = _rows.empty(N, dtype=torch.float32, device=dev)
    row_max = _rows.empty(N, dtype=torch.float32, device=dev)
    support = _rows.empty(N, dtype=torch.int32, device=dev)
    stats = _rows.empty((N, 4), dtype=torch.float32, device=dev)
    iters = _rows.iteration_buffer(N, mapping, dev)
    cfg = launch_config(N, V, dev, max_block_v)
    _rows.launch(
        _entropy_forward_kernel, (triton.cdiv(N, cfg["BLOCK_N"]),),
        logits, mask.view(torch.uint8) if mask is not None else logits, H, support, row_max,
        stats, H if iters is None else iters, N, V, logits.stride(0), float(alpha),
        *_rows.frame_scalars(alpha, temperature), float(temperature),
        MAPPING=mapping, NEWTON=newton, HAS_MASK=mask is not None, SINGLE=cfg["SINGLE"],
        BLOCK_N=cfg["BLOCK_N"], BLOCK_V=cfg["BLOCK_V"], MAX_ITERS=max_iters,
        DEBUG=iters is not None, num_warps=cfg["num_warps"],
    )
    _rows.record("entropy", alpha, N, V, iters)
    return H, support, row_max, stats


def _entropy_backward(logits, mask, stats, H, grad_H, alpha, temperature, mapping,
                      max_block_v=None):
    """Returns ``grad_H * dH/dz`` (N, V) in the logits' dtype."""
    grad_H = grad_H.contiguous()
    grad = _rows.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    _rows.check_layout(logits, mask, grad, grad_H, H)
    N, V = logits.shape
    cfg = launch_config(N, V, logits.device, max_block_v)
    _rows.launch(
        _entropy_backward_kernel, (triton.cdiv(N, cfg["BLOCK_N"]),),
        logits, mask.view(torch.uint8) if mask is not None else logits, stats, H,
        grad_H, grad, N, V, logits.stride(0), float(alpha), *_rows.frame_scalars(alpha, temperature),
        float(temperature),
        MAPPING=mapping, HAS_MASK=mask is not None, BLOCK_N=cfg["BLOCK_N"],
        BLOCK_V=cfg["BLOCK_V"], num_warps=cfg["num_warps"],
    )
    return grad
