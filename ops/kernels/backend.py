"""The Triton backend: the interface of ``ops.reference`` (see ``ops.functions``) on kernels.

Inputs arrive flattened and validated: ``logits (N, V)`` contiguous raw logits, ``mask (N, V)``
bool or None, ``actions (N,)`` int64, per-row float tensors. Statistics are float32; the
gradient has the logits' dtype. float64 logits (and empty batches) go to the PyTorch reference:
the kernels accumulate in float32, which would silently lose the precision a float64 caller
asked for.

Rows whose max over allowed actions is NaN or +inf, or that allow nothing, raise ValueError via
``ops._validate.check_row_max`` after the launch (one O(N) check); with ``grad_out`` aliasing
the logits, the logits are then already partly overwritten.

``max_block_v`` (power of two) caps the tile width: tests force several tiles per row with it.
"""

from __future__ import annotations

import torch

from ops import reference
from ops._validate import check_row_max
from ops.kernels._rows import ENTMAX, ENTMAX15, SOFTMAX, SPARSEMAX
from ops.kernels.entropy import _entropy_backward, _entropy_forward
from ops.kernels.policy_loss import _policy_loss_forward, _policy_loss_forward_kernel


def _mapping(alpha):
    """The MAPPING constexpr and whether Newton steps converge (alpha <= 2, convex case)."""
    alpha = float(alpha)
    if alpha == 1.0:
        return SOFTMAX, False
    if alpha == 2.0:
        return SPARSEMAX, True
    if alpha == 1.5:
        return ENTMAX15, True
    return ENTMAX, alpha < 2.0


def _interpreted():
    """Whether triton decorated the kernels for its interpreter (TRITON_INTERPRET=1 at import)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - layout of other triton versions
        return False
    return isinstance(_policy_loss_forward_kernel, InterpretedFunction)


def _use_reference(logits):
    if logits.dtype == torch.float64 or logits.shape[0] == 0:
        return True
    if logits.device.type != "cuda" and not _interpreted():
        # without this, the launch fails with triton's "0 active drivers"
        raise RuntimeError(
            f"the Triton backend got logits on {logits.device}: it needs CUDA tensors, or "
            "TRITON_INTERPRET=1 set before triton is imported to run its kernels on CPU tensors "
            "(ENTROPY_RL_OPS_BACKEND=torch or auto picks the PyTorch path instead)")
    return False


def _loss(logits, mask, actions, advantages, old_log_prob, row_scale, beta, clip_eps, alpha,
          temperature, need_grad, grad_out, max_block_v):
    mapping, newton = _mapping(alpha)
    out = _policy_loss_forward(
        logits, mask, actions.contiguous(), advantages.float().contiguous(),
        None if old_log_prob is None else old_log_prob.float().contiguous(),
        row_scale.float().contiguous(), beta, clip_eps, alpha, temperature,
        need_grad, grad_out, mapping, newton, max_block_v=max_block_v)
    check_row_max(out.pop("row_max"))
    grad_sq = out.pop("grad_sq")
    if need_grad:
        # per-row partial sums from the kernel, reduced here: O(N)
        out["grad_policy_sq"] = grad_sq[:, 0].sum()
        out["grad_entropy_sq"] = grad_sq[:, 1].sum()
    else:
        zero = torch.zeros((), dtype=torch.float32, device=logits.device)
        out["grad_policy_sq"] = zero
        out["grad_entropy_sq"] = zero.clone()
    return out


def pg(logits, mask, actions, advantages, row_scale, beta, alpha, temperature, need_grad,
       grad_out=None, *, max_block_v=None):
    """Policy-gradient loss rows ``-A log p_a - beta H``, statistics and (need_grad) the gradient
    of ``sum_i row_scale_i l_i``, in one launch; see ``ops.reference.pg``."""
    if _use_reference(logits):
        return reference.pg(logits, mask, actions, advantages, row_scale, beta, alpha,
                            temperature, need_grad, grad_out=grad_out)
    return _loss(logits, mask, actions, advantages, None, row_scale, beta, None, alpha,
                 temperature, need_grad, grad_out, max_block_v)


def ppo(logits, mask, actions, advantages, old_log_prob, row_scale, beta, clip_eps, alpha,
        temperature, need_grad, grad_out=None, *, max_block_v=None):
    """PPO clipped-surrogate rows, ratio, clipped flags, statistics and (need_grad) the gradient,
    in one launch; see ``ops.reference.ppo``."""
    if _use_reference(logits):
        return reference.ppo(logits, mask, actions, advantages, old_log_prob, row_scale, beta,
                             clip_eps, alpha, temperature, need_grad, grad_out=grad_out)
    return _loss(logits, mask, actions, advantages, old_log_prob, row_scale, beta, clip_eps,
                 alpha, temperature, need_grad, grad_out, max_block_v)


def entropy_forward(logits, mask, alpha, temperature, *, max_block_v=None):
    """Per-row entropy (float32), support size (int32) and the tensors the backward needs."""
    if _use_reference(logits):
        return reference.entropy_forward(logits, mask, alpha, temperature)
    mapping, newton = _mapping(alpha)
    H, support, row_max, stats = _entropy_forward(logits, mask, alpha, temperature, mapping,
                                                  newton, max_block_v=max_block_v)
    check_row_max(row_max)
    saved = (logits, stats, H) if mask is None else (logits, stats, H, mask)
    return H, support, saved


def entropy_backward(saved, grad_H, alpha, temperature, *, max_block_v=None):
    """``grad_H * dH/dz`` in the logits' dtype: one read of the logits, one write."""
    if len(saved) == 2:  # the reference's (p, H): float64 or empty input went there
        return reference.entropy_backward(saved, grad_H, alpha, temperature)
    logits, stats, H = saved[:3]
    mask = saved[3] if len(saved) == 4 else None
    mapping, _ = _mapping(alpha)
    return _entropy_backward(logits, mask, stats, H, grad_H.float(), alpha, temperature,
                             mapping, max_block_v=max_block_v)
