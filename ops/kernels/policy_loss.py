"""Fused entropy-regularized policy-gradient and PPO losses: rows, statistics and gradient.

One launch computes, per row, the mapping's statistics, the loss row
``l = -A log p_a - beta H`` (pg) or ``l = -min(r A, clip(r, 1-eps, 1+eps) A) - beta H`` (ppo),
and, when asked, the gradient of ``sum_i row_scale_i l_i`` (DESIGN.md section 1)::

    softmax  dl/dz = [c (p - e_a) + beta p (log p + H)] / T
    alpha>1  dl/dz = [c p_a^(1-alpha) (q_hat - e_a) + beta (p - q_hat) / (alpha - 1)] / T

with ``c = A`` (pg) or ``c = A r`` where the unclipped branch is active, else 0 (ppo), and
``beta`` one float or (ROW_BETA) one value per row. Going
through ``p_a`` (``p_a^(1-alpha) = S^(alpha-1) / d_a``, 0 off the support) keeps the gradient of a
zero-probability action exactly 0. Bytes: the statistics passes read the row (once from memory
for single-tile rows; longer rows re-read it, mostly from L2), the gradient pass reads each tile
and then writes its gradient, so ``grad_out`` may alias the logits.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ops.kernels import _rows
from ops.kernels._rows import _load_x, _mapping_tile, _row_statistics, launch_config


class PolicyLossLaunch(NamedTuple):
    """The launch's outputs: per-row fp32 (``support`` int32, ``clipped`` bool; PPO only:
    ``ratio``, ``clipped``), the gradient or None, the per-row squared norms (N, 2) or None."""

    loss_rows: torch.Tensor
    entropy: torch.Tensor
    log_prob: torch.Tensor
    support: torch.Tensor
    ratio: torch.Tensor | None
    clipped: torch.Tensor | None
    row_max: torch.Tensor
    grad: torch.Tensor | None
    grad_sq: torch.Tensor | None


@triton.jit
def _policy_loss_forward_kernel(
    logits_ptr, mask_ptr, actions_ptr, advantages_ptr, old_log_prob_ptr, row_scale_ptr,
    beta_ptr, grad_ptr, loss_ptr, entropy_ptr, log_prob_ptr, support_ptr, ratio_ptr,
    clipped_ptr, row_max_ptr, grad_sq_ptr, iters_ptr,
    N, V, stride_row, beta, clip_eps, alpha, am1, y_scale, temperature,
    MAPPING: tl.constexpr, NEWTON: tl.constexpr, IS_PPO: tl.constexpr, HAS_MASK: tl.constexpr,
    NEED_GRAD: tl.constexpr, ROW_BETA: tl.constexpr, SINGLE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, MAX_ITERS: tl.constexpr, DEBUG: tl.constexpr,
):
    """Loss rows, per-row statistics and (NEED_GRAD) the gradient for BLOCK_N rows.

    Pointers (row-major, ``stride_row`` elements between rows):
      logits_ptr (N, V) fp16/bf16/fp32 raw logits; mask_ptr (N, V) uint8 (1 = allowed) if
      HAS_MASK; actions_ptr (N,) int64; advantages_ptr, old_log_prob_ptr (IS_PPO),
      row_scale_ptr (N,) fp32; beta_ptr (N,) fp32 per-row beta if ROW_BETA (else the scalar
      ``beta``); grad_ptr (N, V) logits' dtype, may alias logits_ptr.
      Outputs (N,): loss, entropy, log_prob, ratio (IS_PPO), row_max fp32; support int32;
      clipped int8 (IS_PPO); grad_sq_ptr (N, 2) fp32: per-row squared norms of the policy and
      entropy parts of the gradient (returned per row, summed for the norms); iters_ptr (N,)
      int32 if DEBUG: the passes of the threshold search per row.
    Constexprs: MAPPING 0 softmax / 1 sparsemax / 2 entmax-1.5 / 3 entmax-alpha; NEWTON: Newton
      steps on tau (alpha <= 2) else bisection; IS_PPO; HAS_MASK; NEED_GRAD; ROW_BETA: beta per
      row from beta_ptr (a variant of its own: the float path reads no extra operand); SINGLE:
      the row is one BLOCK_V tile kept in registers; BLOCK_N rows per program; MAX_ITERS caps the
      threshold search; DEBUG also stores the per-row iteration counts.
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
        logits_ptr, mask_ptr, row_off, row_ok, x_row, V, temperature, alpha, am1, y_scale, MAPPING, NEWTON,
        HAS_MASK, SINGLE, BLOCK_N, BLOCK_V, MAX_ITERS)
    if DEBUG:
        tl.store(iters_ptr + rows, iters, mask=row_ok)

    # 3. the taken action: log p_a and the policy coefficient's p_a^(1-alpha) factor
    a = tl.load(actions_ptr + rows, mask=row_ok, other=0)
    z_a = tl.load(logits_ptr + row_off + a, mask=row_ok, other=0.0).to(tl.float32)
    allowed_a = row_ok
    if HAS_MASK:
        allowed_a = allowed_a & (tl.load(mask_ptr + row_off + a, mask=row_ok, other=0) != 0)
    x_a = tl.where(allowed_a, z_a, float("-inf"))
    A = tl.load(advantages_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if MAPPING == 0:
        log_p_a = (x_a - m) * (1.0 / temperature) - t0
        in_support = x_a > float("-inf")
        w_a = tl.full([BLOCK_N], 1.0, tl.float32)
    else:
        d_a = y_scale * (x_a - m) - t0
        in_support = d_a > 0
        d_a = tl.where(in_support, d_a, 1.0)
        log_p_a = tl.where(in_support, tl.log(d_a) / am1 - tl.log(S), float("-inf"))
        # p_a^(1-alpha) with p_a = d_a^k / S
        w_a = tl.where(in_support, tl.exp2(am1 * tl.log2(S)) / d_a, 0.0)

    # 4. loss rows: policy term (0 off an alpha > 1 support: computed through p_a), entropy bonus
    if ROW_BETA:
        b = tl.load(beta_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    else:
        b = beta
    if IS_PPO:
        old = tl.load(old_log_prob_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        ratio = tl.exp(log_p_a - old)
        clipped_ratio = tl.minimum(tl.maximum(ratio, 1.0 - clip_eps), 1.0 + clip_eps)
        policy = -tl.minimum(ratio * A, clipped_ratio * A)
        clipped = ((A > 0) & (ratio > 1.0 + clip_eps)) | ((A < 0) & (ratio < 1.0 - clip_eps))
        coef = tl.where(clipped, 0.0, A * ratio) * w_a
        tl.store(ratio_ptr + rows, ratio, mask=row_ok)
        tl.store(clipped_ptr + rows, clipped.to(tl.int8), mask=row_ok)
    else:
        if MAPPING == 0:
            policy = -A * tl.where(row_ok, log_p_a, 0.0)
        else:
            policy = -A * tl.where(in_support, log_p_a, 0.0)
        coef = A * w_a
    tl.store(loss_ptr + rows, policy - b * H, mask=row_ok)
    tl.store(entropy_ptr + rows, H, mask=row_ok)
    tl.store(log_prob_ptr + rows, log_p_a, mask=row_ok)
    tl.store(support_ptr + rows, support, mask=row_ok)
    tl.store(row_max_ptr + rows, row_max, mask=row_ok)

    # 5. gradient pass: read a tile, then overwrite it (aliasing-safe), accumulate the norms
    if NEED_GRAD:
        scale = tl.load(row_scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32) / temperature
        pol_c = coef * scale
        ent_c = b * scale
        pol_sq = tl.zeros([BLOCK_N], tl.float32)
        ent_sq = tl.zeros([BLOCK_N], tl.float32)
        for start in range(0, V, BLOCK_V):
            cols_v = start + cols
            if SINGLE:
                x = x_row
            else:
                x = _load_x(logits_ptr, mask_ptr, row_off, row_ok, cols_v, V, HAS_MASK)
            p, w, neg_dH = _mapping_tile(x, m, t0, S, Tq, H, alpha, am1, y_scale, temperature, MAPPING)
            is_a = (cols_v[None, :] == a[:, None]).to(tl.float32)
            g_pol = pol_c[:, None] * (w - is_a)
            g_ent = ent_c[:, None] * neg_dH
            pol_sq += tl.sum(g_pol * g_pol, axis=1)
            ent_sq += tl.sum(g_ent * g_ent, axis=1)
            in_bounds = row_ok[:, None] & (cols_v[None, :] < V)
            # cast back to the logits' dtype only at the store
            tl.store(grad_ptr + row_off[:, None] + cols_v[None, :],
                     (g_pol + g_ent).to(grad_ptr.dtype.element_ty), mask=in_bounds)
        tl.store(grad_sq_ptr + 2 * rows, pol_sq, mask=row_ok)
        tl.store(grad_sq_ptr + 2 * rows + 1, ent_sq, mask=row_ok)


def _policy_loss_forward(logits, mask, actions, advantages, old_log_prob, row_scale, beta,
                         clip_eps, alpha, temperature, need_grad, grad_out, mapping, newton,
                         max_block_v=None, max_iters=64):
    """Launches the kernel; returns its outputs as a ``PolicyLossLaunch``. ``beta``: a float, or
    a contiguous (N,) fp32 tensor (the ROW_BETA variant)."""
    N, V = logits.shape
    row_beta = isinstance(beta, torch.Tensor)
    dev = logits.device
    f32 = dict(dtype=torch.float32, device=dev)
    # uninitialised: the kernel writes every element (tests poison these buffers to check)
    loss = _rows.empty(N, **f32)
    H = _rows.empty(N, **f32)
    log_p = _rows.empty(N, **f32)
    row_max = _rows.empty(N, **f32)
    support = _rows.empty(N, dtype=torch.int32, device=dev)
    is_ppo = old_log_prob is not None
    ratio = _rows.empty(N, **f32) if is_ppo else loss
    clipped = _rows.empty(N, dtype=torch.int8, device=dev) if is_ppo else support
    grad_sq = _rows.empty((N, 2), **f32) if need_grad else loss
    grad = None
    if need_grad:
        grad = grad_out if grad_out is not None else _rows.empty(logits.shape, dtype=logits.dtype,
                                                                 device=dev)
    _rows.check_layout(logits, mask, grad, actions, advantages, old_log_prob, row_scale,
                       beta if row_beta else None)
    iters = _rows.iteration_buffer(N, mapping, dev)
    cfg = launch_config(N, V, dev, max_block_v)
    _rows.launch(
        _policy_loss_forward_kernel, (triton.cdiv(N, cfg["BLOCK_N"]),),
        logits, mask.view(torch.uint8) if mask is not None else logits, actions, advantages,
        old_log_prob if is_ppo else advantages, row_scale, beta if row_beta else row_scale,
        grad if need_grad else logits,
        loss, H, log_p, support, ratio, clipped, row_max, grad_sq,
        loss if iters is None else iters,
        N, V, logits.stride(0), 0.0 if row_beta else float(beta), float(clip_eps or 0.0),
        float(alpha), *_rows.frame_scalars(alpha, temperature), float(temperature),
        MAPPING=mapping, NEWTON=newton, IS_PPO=is_ppo, HAS_MASK=mask is not None,
        NEED_GRAD=need_grad, ROW_BETA=row_beta, SINGLE=cfg["SINGLE"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_V=cfg["BLOCK_V"], MAX_ITERS=max_iters, DEBUG=iters is not None,
        num_warps=cfg["num_warps"],
    )
    _rows.record("ppo" if is_ppo else "pg", alpha, N, V, iters)
    return PolicyLossLaunch(loss, H, log_p, support, ratio if is_ppo else None,
                            clipped.bool() if is_ppo else None, row_max, grad,
                            grad_sq if need_grad else None)
