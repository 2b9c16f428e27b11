"""``torch.autograd.Function`` per op, and the choice of backend.

Backends implement ``ops._contract.Backend`` (keyword-only typed inputs, typed results):
``ops.reference`` is plain PyTorch, ``ops.kernels.backend`` holds the Triton kernels. Each
Function keeps the backend it ran its forward with on ``ctx`` and hands that backend's own
``saved`` back to it. The environment variable ``ENTROPY_RL_OPS_BACKEND`` picks:

* ``auto`` (default): Triton for CUDA tensors when triton imports, PyTorch otherwise;
* ``torch``: always the PyTorch closed forms;
* ``triton``: the kernels (on CPU tensors this needs ``TRITON_INTERPRET=1`` set before triton
  is imported: how CI tests the kernels without a GPU).

Under ``auto`` and ``triton``, float64 logits and empty batches go to the PyTorch path: the
kernels accumulate in float32, which would silently lose the precision a float64 caller asked
for, and an empty batch has nothing to launch.

The fused losses compute their gradient in the forward pass (the closed form costs one more
pass over data already in hand) and save only that gradient: the backward is one multiply by
the incoming scalar, and no logits or probabilities are kept alive.
"""

from __future__ import annotations

import importlib
import os

import torch

from ops import reference
from ops._contract import Backend, LossInput, Rows, SoftInput

_BACKEND_ENV = "ENTROPY_RL_OPS_BACKEND"
_BACKEND_CHOICES = ("auto", "torch", "triton")
_triton_backend = None
_triton_error: Exception | None = None


def _load_triton_backend():
    global _triton_backend, _triton_error
    if _triton_backend is None and _triton_error is None:
        try:
            _triton_backend = importlib.import_module("ops.kernels.backend")
        except Exception as err:  # triton missing or broken: the PyTorch path still works
            _triton_error = err
    return _triton_backend


def backend_for(logits: torch.Tensor) -> Backend:
    """The backend module that will run an op on ``logits``."""
    raw = os.environ.get(_BACKEND_ENV)
    if raw is None and not logits.is_cuda:  # the common CPU case, read once per call: be quick
        return reference
    choice = (raw or "auto").strip().lower() or "auto"
    if choice not in _BACKEND_CHOICES:
        raise ValueError(
            f"{_BACKEND_ENV}={choice!r} is not allowed; allowed: {', '.join(_BACKEND_CHOICES)}"
        )
    if choice == "torch":
        return reference
    if choice == "triton" or logits.is_cuda:
        backend = _load_triton_backend()
        if backend is None and choice == "triton":
            raise RuntimeError(
                f"{_BACKEND_ENV}=triton but the Triton backend failed to import: {_triton_error!r}"
            )
        if backend is not None and logits.dtype != torch.float64 and logits.numel():
            return backend
    return reference


def _scale_grad(grad: torch.Tensor, grad_loss: torch.Tensor, in_place: bool) -> torch.Tensor:
    # The loss is usually the last node (grad_loss == 1): return the saved gradient as is.
    if grad_loss.numel() == 1 and bool(grad_loss == 1):
        return grad
    g = grad_loss.to(grad.dtype)
    return grad.mul_(g) if in_place else grad * g


def _save(ctx, backend, saved):
    """Keeps a backend's opaque ``saved`` (a NamedTuple of tensors or None) for its backward:
    tensors through ``save_for_backward`` (version checks, no reference cycles), its type on ctx."""
    ctx.backend, ctx.saved_type = backend, type(saved)
    ctx.save_for_backward(*saved)


def _saved(ctx):
    return ctx.saved_type(*ctx.saved_tensors)


class _LossFunction(torch.autograd.Function):
    """Mean fused loss (pg or ppo) with entropy bonus; the gradient from DESIGN.md's closed form
    is computed in the forward and scaled in the backward.

    ``apply(logits, inp, backend)``: ``inp.rows.logits`` is ``logits`` (the tensor autograd
    tracks). Returns the loss, then the detached statistics: entropy, log_prob, support, the
    two gradient norms (0 when not computed), the loss rows, the two terms' per-row squared
    gradient norms (None when not computed) and, for PPO, ratio and clipped.
    """

    @staticmethod
    def forward(ctx, logits, inp: LossInput, backend: Backend):
        out = backend.ppo(inp=inp) if inp.is_ppo else backend.pg(inp=inp)
        loss = torch.dot(out.loss_rows, inp.row_scale)
        ctx.in_place = inp.grad_out is not None
        ctx.set_materialize_grads(False)  # no zero tensors for the statistics' (absent) gradients
        ctx.save_for_backward(out.grad)
        pol_sq, ent_sq = out.grad_policy_sq, out.grad_entropy_sq
        if pol_sq is None:
            norms = [loss.new_zeros(()), loss.new_zeros(())]
        else:
            # the Frobenius norm of a term's gradient from its rows' squared norms
            norms = [pol_sq.sum().sqrt(), ent_sq.sum().sqrt()]
        stats = [out.entropy, out.log_prob, out.support, *norms, out.loss_rows]
        rows_sq = [pol_sq, ent_sq]
        ppo = [out.ratio, out.clipped] if inp.is_ppo else []
        ctx.mark_non_differentiable(*stats, *[t for t in rows_sq if t is not None], *ppo)
        return (loss, *stats, *rows_sq, *ppo)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        (grad,) = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None
        return _scale_grad(grad, grad_loss, ctx.in_place), None, None


class SoftLossFunction(torch.autograd.Function):
    """Mean soft actor loss ``mean_w(-<p, q> - beta H)``; the closed-form gradient (README, "The
    soft actor loss") is computed in the forward and scaled in the backward, as for
    ``_LossFunction``. ``q_values`` travel inside ``inp`` and get no gradient: the critic is held
    fixed.

    ``apply(logits, inp, backend)`` with ``inp.rows.logits`` the logits; returns the loss, then
    the detached entropy, support, the two gradient norms (0 when not computed), the loss rows
    and the two terms' per-row squared gradient norms (None when not computed).
    """

    @staticmethod
    def forward(ctx, logits, inp: SoftInput, backend: Backend):
        out = backend.soft(inp=inp)
        loss = torch.dot(out.loss_rows, inp.row_scale)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(out.grad)
        pol_sq, ent_sq = out.grad_policy_sq, out.grad_entropy_sq
        if pol_sq is None:
            norms = [loss.new_zeros(()), loss.new_zeros(())]
        else:
            norms = [pol_sq.sum().sqrt(), ent_sq.sum().sqrt()]
        stats = [out.entropy, out.support, *norms, out.loss_rows]
        rows_sq = [pol_sq, ent_sq]
        ctx.mark_non_differentiable(*stats, *[t for t in rows_sq if t is not None])
        return (loss, *stats, *rows_sq)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        (grad,) = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None
        return _scale_grad(grad, grad_loss, False), None, None


class EntropyFunction(torch.autograd.Function):
    """Per-row entropy of the mapping; backward is the closed-form ``dH/dz`` (DESIGN.md).

    ``apply(logits, rows, backend)`` with ``rows.logits is logits``; returns ``H, support``.
    """

    @staticmethod
    def forward(ctx, logits, rows: Rows, backend: Backend):
        out = backend.entropy_forward(rows=rows)
        _save(ctx, backend, out.saved)
        ctx.mapping, ctx.out_dtype = rows.mapping, logits.dtype
        ctx.mark_non_differentiable(out.support)
        return out.entropy, out.support

    @staticmethod
    def backward(ctx, grad_H, _):
        grad = ctx.backend.entropy_backward(saved=_saved(ctx), grad_entropy=grad_H,
                                            mapping=ctx.mapping)
        return grad.to(ctx.out_dtype), None, None


class ProbsFunction(torch.autograd.Function):
    """The mapping itself; backward is its closed-form vector-Jacobian product (DESIGN.md).

    ``apply(logits, rows, backend)`` with ``rows.logits is logits``; returns ``p`` in the
    logits' dtype.
    """

    @staticmethod
    def forward(ctx, logits, rows: Rows, backend: Backend):
        out = backend.probs_forward(rows=rows)
        _save(ctx, backend, out.saved)
        ctx.mapping, ctx.out_dtype = rows.mapping, logits.dtype
        return out.probs

    @staticmethod
    def backward(ctx, grad_p):
        grad = ctx.backend.probs_backward(saved=_saved(ctx), grad_probs=grad_p,
                                          mapping=ctx.mapping)
        return grad.to(ctx.out_dtype), None, None
