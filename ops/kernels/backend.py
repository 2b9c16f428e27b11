"""The Triton backend: ``ops._contract.Backend`` on kernels (see ``ops.functions``).

Inputs are the contract's types: ``Rows`` (contiguous ``(N, V)`` raw logits, bool mask or None)
and ``LossInput`` (contiguous per-row operands of length N). Statistics are float32; the
gradient and the probabilities have the logits' dtype. The kernels accumulate in float32, so
``ops.functions.backend_for`` sends float64 logits (and empty batches, which launch nothing) to
``ops.reference``; handed them directly, this module raises.

Rows whose max over allowed actions is NaN or +inf, or that allow nothing, raise ValueError via
``ops._validate.check_row_max`` from the row maxima the kernel stores (one O(N) check), which
stay valid when ``grad_out`` aliases the logits and has overwritten them.

``max_block_v`` (power of two) caps the tile width: tests force several tiles per row with it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ops._contract import EntropyResult, LossInput, LossRows, Mapping, ProbsResult, Rows, SoftInput
from ops._validate import check_row_max
from ops.kernels._rows import _interpreted
from ops.kernels.entropy import _entropy_backward, _entropy_forward
from ops.kernels.policy_loss import _policy_loss_forward
from ops.kernels.probs import _probs_backward, _probs_forward
from ops.kernels.soft_loss import _soft_loss_forward


class KernelSaved(NamedTuple):
    """What the kernels' backward passes read: the logits, the mask and the per-row statistics
    ``(m, t0, S, Tq)`` of the forward; the entropy backward also reads ``H``."""

    logits: torch.Tensor
    mask: torch.Tensor | None
    stats: torch.Tensor
    H: torch.Tensor | None = None


def _check_launchable(logits):
    if logits.dtype == torch.float64 or logits.shape[0] == 0:
        raise ValueError(
            f"the Triton backend takes non-empty float32 / float16 / bfloat16 logits; got "
            f"{logits.dtype} {tuple(logits.shape)} (ops.backend_for routes these to ops.reference)")
    if logits.device.type != "cuda" and not _interpreted():
        # without this, the launch fails with triton's "0 active drivers"
        raise RuntimeError(
            f"the Triton backend got logits on {logits.device}: it needs CUDA tensors, or "
            "TRITON_INTERPRET=1 set before triton is imported to run its kernels on CPU tensors "
            "(ENTROPY_RL_OPS_BACKEND=torch or auto picks the PyTorch path instead)")


def _loss(inp: LossInput, max_block_v):
    rows = inp.rows
    _check_launchable(rows.logits)
    m = rows.mapping
    f32 = torch.float32
    # float32 per-row operands for the kernels (a no-op for fp32/bf16/fp16 logits: the contract
    # already holds them contiguous in the compute dtype, float32)
    out = _policy_loss_forward(
        rows.logits, rows.mask, inp.actions, inp.advantages.to(f32),
        None if inp.old_log_prob is None else inp.old_log_prob.to(f32), inp.row_scale.to(f32),
        inp.beta.to(f32) if isinstance(inp.beta, torch.Tensor) else inp.beta, inp.clip_eps,
        m.alpha, m.temperature, inp.need_grad, inp.grad_out, int(m.algorithm), m.newton,
        max_block_v=max_block_v)
    check_row_max(out.row_max)
    pol_sq = ent_sq = None
    if inp.need_grad and inp.need_norms:
        # the kernel's per-row squared norms (free); the columns as (N,) tensors of their own
        pol_sq, ent_sq = out.grad_sq.t().contiguous()
    return LossRows(out.loss_rows, out.entropy, out.log_prob, out.support, out.grad, pol_sq,
                    ent_sq, out.ratio, out.clipped)


def pg(*, inp: LossInput, max_block_v=None) -> LossRows:
    """Policy-gradient loss rows ``-A log p_a - beta H``, statistics and (need_grad) the gradient
    of ``sum_i row_scale_i l_i``, in one launch; see ``ops.reference.pg``."""
    return _loss(inp, max_block_v)


def ppo(*, inp: LossInput, max_block_v=None) -> LossRows:
    """PPO clipped-surrogate rows, ratio, clipped flags, statistics and (need_grad) the gradient,
    in one launch; see ``ops.reference.ppo``."""
    if not inp.is_ppo:
        raise ValueError("ppo needs a LossInput with old_log_prob and clip_eps")
    return _loss(inp, max_block_v)


def soft(*, inp: SoftInput, max_block_v=None) -> LossRows:
    """Soft actor loss rows ``-<p, q> - beta H``, statistics and (need_grad) the gradient of
    ``sum_i row_scale_i l_i``, in one launch; see ``ops.reference.soft``. ``log_prob`` is None."""
    rows = inp.rows
    _check_launchable(rows.logits)
    m = rows.mapping
    f32 = torch.float32
    loss, H, support, row_max, grad, grad_sq = _soft_loss_forward(
        rows.logits, rows.mask, inp.q_values, inp.row_scale.to(f32),
        inp.beta.to(f32) if isinstance(inp.beta, torch.Tensor) else inp.beta,
        m.alpha, m.temperature, inp.need_grad, int(m.algorithm), m.newton,
        max_block_v=max_block_v)
    check_row_max(row_max)
    pol_sq = ent_sq = None
    if inp.need_grad and inp.need_norms:
        # the kernel's per-row squared norms (free); the columns as (N,) tensors of their own
        pol_sq, ent_sq = grad_sq.t().contiguous()
    return LossRows(loss, H, None, support, grad, pol_sq, ent_sq)


def probs_forward(*, rows: Rows, max_block_v=None) -> ProbsResult:
    """The mapping's probabilities in the logits' dtype, and the statistics the backward reads."""
    _check_launchable(rows.logits)
    m = rows.mapping
    p, row_max, stats = _probs_forward(rows.logits, rows.mask, m.alpha, m.temperature,
                                       int(m.algorithm), m.newton, max_block_v=max_block_v)
    check_row_max(row_max)
    return ProbsResult(p, KernelSaved(rows.logits, rows.mask, stats))


def probs_backward(*, saved: KernelSaved, grad_probs, mapping: Mapping, max_block_v=None):
    """VJP of the mapping in the logits' dtype: two reads of the logits, one write."""
    return _probs_backward(saved.logits, saved.mask, saved.stats, grad_probs, mapping.alpha,
                           mapping.temperature, int(mapping.algorithm), max_block_v=max_block_v)


def entropy_forward(*, rows: Rows, max_block_v=None) -> EntropyResult:
    """Per-row entropy (float32), support size (int32) and what the backward reads."""
    _check_launchable(rows.logits)
    m = rows.mapping
    H, support, row_max, stats = _entropy_forward(
        rows.logits, rows.mask, m.alpha, m.temperature, int(m.algorithm), m.newton,
        max_block_v=max_block_v)
    check_row_max(row_max)
    return EntropyResult(H, support, KernelSaved(rows.logits, rows.mask, stats, H))


def entropy_backward(*, saved: KernelSaved, grad_entropy, mapping: Mapping, max_block_v=None):
    """``grad_H * dH/dz`` in the logits' dtype: one read of the logits, one write."""
    return _entropy_backward(saved.logits, saved.mask, saved.stats, saved.H, grad_entropy.float(),
                             mapping.alpha, mapping.temperature, int(mapping.algorithm),
                             max_block_v=max_block_v)
