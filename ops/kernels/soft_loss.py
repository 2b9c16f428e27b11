"""The soft actor loss: rows ``l = -<p, q> - beta H``, statistics and the closed-form gradient.

``beta`` one float or (ROW_BETA) one value per row.

One launch computes, per row, the mapping's statistics, ``<p, q>`` (and ``<s_hat, q>`` for
alpha > 1) in one pass over the logits and the action values, the loss row (``-l`` is the soft
state value, ``ops.soft_value``) and, when asked, the gradient of ``sum_i row_scale_i l_i``
(README, "The soft actor loss")::

    softmax  dl/dz = [-p (q - <p, q>) + beta p (log p + H)] / T
    alpha>1  dl/dz = [-s (q - <s_hat, q>) + beta (p - s_hat) / (alpha - 1)] / T

with ``s = p^(2-alpha) = c s_hat`` on the support, ``c = Tq / S^(2-alpha)`` (``_row_statistics``'
sums). A masked action's q is read as 0 (its p and s are 0; 0 * NaN would be NaN). Bytes: the
statistics passes read the logits, the value pass the logits and q, the gradient pass both
again and writes the gradient.
"""

import torch
import triton
import triton.language as tl

from ops.kernels import _rows
from ops.kernels._rows import _load_x, _mapping_tile, _row_statistics, launch_config


@triton.jit
def _load_q(q_ptr, row_off, row_ok, cols, V, x):
    """Tile of action values in float32, 0 where the action is masked (``x = -inf``) or out of
    bounds: a masked action's value may be anything, NaN and -inf included."""
    in_bounds = row_ok[:, None] & (cols[None, :] < V)
    q = tl.load(q_ptr + row_off[:, None] + cols[None, :], mask=in_bounds, other=0.0)
    return tl.where(x > float("-inf"), q.to(tl.float32), 0.0)


@triton.jit
def _soft_loss_forward_kernel(
    logits_ptr, mask_ptr, q_ptr, row_scale_ptr, beta_ptr, grad_ptr, loss_ptr, entropy_ptr,
    support_ptr, row_max_ptr, grad_sq_ptr, iters_ptr,
    N, V, stride_row, beta, alpha, am1, y_scale, temperature,
    MAPPING: tl.constexpr, NEWTON: tl.constexpr, HAS_MASK: tl.constexpr,
    NEED_GRAD: tl.constexpr, ROW_BETA: tl.constexpr, SINGLE: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr, MAX_ITERS: tl.constexpr, DEBUG: tl.constexpr,
):
    """Loss rows, per-row statistics and (NEED_GRAD) the gradient for BLOCK_N rows.

    Pointers (row-major, ``stride_row`` elements between rows): logits_ptr (N, V)
      fp16/bf16/fp32 raw logits; mask_ptr (N, V) uint8 (1 = allowed) if HAS_MASK; q_ptr (N, V)
      action values (any float dtype, same layout); row_scale_ptr (N,) fp32; beta_ptr (N,) fp32
      per-row beta if ROW_BETA (else the scalar ``beta``; the pointer is unused); grad_ptr (N, V)
      logits' dtype. Outputs (N,): loss, entropy, row_max fp32; support int32; grad_sq_ptr
      (N, 2) fp32 per-row squared norms of the policy and entropy parts of the gradient;
      iters_ptr (N,) int32 if DEBUG.
    Constexprs as in ``_policy_loss_forward_kernel``.
    """
    # 1. rows of this program; int64 offsets because N * V overflows int32 at LLM sizes
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    row_off = rows.to(tl.int64) * stride_row
    cols = tl.arange(0, BLOCK_V)
    if SINGLE:
        x_row = _load_x(logits_ptr, mask_ptr, row_off, row_ok, cols, V, HAS_MASK)
    else:
        x_row = 0.0

    # 2. statistics: row max, log-sum-exp or tau, normalisers, entropy, support
    row_max, m, t0, S, Tq, H, support, iters = _row_statistics(
        logits_ptr, mask_ptr, row_off, row_ok, x_row, V, temperature, alpha, am1, y_scale,
        MAPPING, NEWTON, HAS_MASK, SINGLE, BLOCK_N, BLOCK_V, MAX_ITERS)
    if DEBUG:
        tl.store(iters_ptr + rows, iters, mask=row_ok)

    # 3. one pass: value = <p, q> and u = <s_hat, q> (= value for softmax)
    value = tl.zeros([BLOCK_N], tl.float32)
    u = tl.zeros([BLOCK_N], tl.float32)
    for start in range(0, V, BLOCK_V):
        cols_v = start + cols
        if SINGLE:
            x = x_row
        else:
            x = _load_x(logits_ptr, mask_ptr, row_off, row_ok, cols_v, V, HAS_MASK)
        p, w, neg_dH = _mapping_tile(x, m, t0, S, Tq, H, alpha, am1, y_scale, temperature,
                                     MAPPING)
        q = _load_q(q_ptr, row_off, row_ok, cols_v, V, x)
        value += tl.sum(p * q, axis=1)
        u += tl.sum(w * q, axis=1)

    # 4. loss rows: -(value + beta H)
    if ROW_BETA:
        b = tl.load(beta_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    else:
        b = beta
    tl.store(loss_ptr + rows, -(value + b * H), mask=row_ok)
    tl.store(entropy_ptr + rows, H, mask=row_ok)
    tl.store(support_ptr + rows, support, mask=row_ok)
    tl.store(row_max_ptr + rows, row_max, mask=row_ok)

    # 5. gradient pass: read a tile, then write its gradient; accumulate the norms
    if NEED_GRAD:
        scale = tl.load(row_scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32) / temperature
        # s = c s_hat with c = 1 (softmax), |S| (sparsemax), Tq / S^(2-alpha) (other alpha)
        if MAPPING == 0:
            c = tl.full([BLOCK_N], 1.0, tl.float32)
        elif MAPPING == 1:
            c = Tq
        elif MAPPING == 2:
            c = Tq / tl.sqrt(S)
        else:
            c = Tq / tl.exp2((2.0 - alpha) * tl.log2(S))
        pol_c = -c * scale
        ent_c = b * scale
        pol_sq = tl.zeros([BLOCK_N], tl.float32)
        ent_sq = tl.zeros([BLOCK_N], tl.float32)
        for start in range(0, V, BLOCK_V):
            cols_v = start + cols
            if SINGLE:
                x = x_row
            else:
                x = _load_x(logits_ptr, mask_ptr, row_off, row_ok, cols_v, V, HAS_MASK)
            p, w, neg_dH = _mapping_tile(x, m, t0, S, Tq, H, alpha, am1, y_scale, temperature,
                                         MAPPING)
            q = _load_q(q_ptr, row_off, row_ok, cols_v, V, x)
            # w = 0 off the support, where q - u may be anything finite
            g_pol = pol_c[:, None] * tl.where(w > 0, w * (q - u[:, None]), 0.0)
            g_ent = ent_c[:, None] * neg_dH
            pol_sq += tl.sum(g_pol * g_pol, axis=1)
            ent_sq += tl.sum(g_ent * g_ent, axis=1)
            in_bounds = row_ok[:, None] & (cols_v[None, :] < V)
            # cast back to the logits' dtype only at the store
            tl.store(grad_ptr + row_off[:, None] + cols_v[None, :],
                     (g_pol + g_ent).to(grad_ptr.dtype.element_ty), mask=in_bounds)
        tl.store(grad_sq_ptr + 2 * rows, pol_sq, mask=row_ok)
        tl.store(grad_sq_ptr + 2 * rows + 1, ent_sq, mask=row_ok)


def _soft_loss_forward(logits, mask, q_values, row_scale, beta, alpha, temperature, need_grad,
                       mapping, newton, max_block_v=None, max_iters=64):
    """Launches the kernel; returns ``(loss_rows, entropy, support, row_max, grad, grad_sq)``
    (grad and grad_sq None without need_grad). ``beta``: a float, or a contiguous (N,) fp32
    tensor (the ROW_BETA variant)."""
    N, V = logits.shape
    row_beta = isinstance(beta, torch.Tensor)
    dev = logits.device
    f32 = dict(dtype=torch.float32, device=dev)
    # uninitialised: the kernel writes every element (tests poison these buffers to check)
    loss = _rows.empty(N, **f32)
    H = _rows.empty(N, **f32)
    row_max = _rows.empty(N, **f32)
    support = _rows.empty(N, dtype=torch.int32, device=dev)
    grad_sq = _rows.empty((N, 2), **f32) if need_grad else loss
    grad = _rows.empty(logits.shape, dtype=logits.dtype, device=dev) if need_grad else None
    _rows.check_layout(logits, mask, q_values, grad, row_scale, beta if row_beta else None)
    iters = _rows.iteration_buffer(N, mapping, dev)
    cfg = launch_config(N, V, dev, max_block_v)
    _rows.launch(
        _soft_loss_forward_kernel, (triton.cdiv(N, cfg["BLOCK_N"]),),
        logits, mask.view(torch.uint8) if mask is not None else logits, q_values, row_scale,
        beta if row_beta else row_scale, grad if need_grad else logits, loss, H, support,
        row_max, grad_sq, loss if iters is None else iters,
        N, V, logits.stride(0), 0.0 if row_beta else float(beta), float(alpha),
        *_rows.frame_scalars(alpha, temperature), float(temperature),
        MAPPING=mapping, NEWTON=newton, HAS_MASK=mask is not None, NEED_GRAD=need_grad,
        ROW_BETA=row_beta, SINGLE=cfg["SINGLE"], BLOCK_N=cfg["BLOCK_N"], BLOCK_V=cfg["BLOCK_V"],
        MAX_ITERS=max_iters, DEBUG=iters is not None, num_warps=cfg["num_warps"],
    )
    _rows.record("soft", alpha, N, V, iters)
    return loss, H, support, row_max, grad, grad_sq if need_grad else None
