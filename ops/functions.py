"""``torch.autograd.Function`` per fused op, and the choice of backend.

Backends share one interface (flattened ``(N, V)`` raw logits, see ``ops.reference``):
``ops.reference`` is plain PyTorch, ``ops.kernels.backend`` holds the Triton kernels. The
environment variable ``ENTROPY_RL_OPS_BACKEND`` picks:

* ``auto`` (default): Triton for CUDA tensors when triton imports, PyTorch otherwise;
* ``torch``: always the PyTorch closed forms;
* ``triton``: always the kernels (on CPU tensors this needs ``TRITON_INTERPRET=1`` set before
  triton is imported: how CI tests the kernels without a GPU).

The fused losses compute their gradient in the forward pass (the closed form costs one more
pass over data already in hand) and save only that gradient: the backward is one multiply by
the incoming scalar, and no logits or probabilities are kept alive.
"""

from __future__ import annotations

import importlib
import os

import torch

from ops import reference

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


def backend_for(logits: torch.Tensor):
    """The backend module that will run an op on ``logits``."""
    choice = os.environ.get(_BACKEND_ENV, "auto").strip().lower() or "auto"
    if choice not in _BACKEND_CHOICES:
        raise ValueError(
            f"{_BACKEND_ENV}={choice!r} is not allowed; allowed: {', '.join(_BACKEND_CHOICES)}"
        )
    if choice == "torch":
        return reference
    if choice == "triton" or logits.is_cuda:
        backend = _load_triton_backend()
        if backend is not None:
            return backend
        if choice == "triton":
            raise RuntimeError(
                f"{_BACKEND_ENV}=triton but the Triton backend failed to import: {_triton_error!r}"
            )
    return reference


def _scale_grad(grad: torch.Tensor, grad_loss: torch.Tensor, in_place: bool) -> torch.Tensor:
    # The loss is usually the last node (grad_loss == 1): return the saved gradient as is.
    if grad_loss.numel() == 1 and bool(grad_loss == 1):
        return grad
    g = grad_loss.to(grad.dtype)
    return grad.mul_(g) if in_place else grad * g


class PGLossFunction(torch.autograd.Function):
    """Mean policy-gradient loss with entropy bonus; gradient from DESIGN.md's closed form."""

    @staticmethod
    def forward(ctx, logits, mask, actions, advantages, row_scale, beta, alpha, temperature,
                grad_out, need_norms):
        backend = backend_for(logits)
        out = backend.pg(
            logits, mask, actions, advantages, row_scale, beta, alpha, temperature,
            ctx.needs_input_grad[0], grad_out=grad_out, **_norms_kwarg(backend, need_norms),
        )
        return _finish(ctx, out, row_scale, grad_out, ppo=False)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        (grad,) = ctx.saved_tensors
        if grad_loss is None:
            return (None,) * 10
        return (_scale_grad(grad, grad_loss, ctx.in_place),) + (None,) * 9


class PPOLossFunction(torch.autograd.Function):
    """Mean PPO clipped-surrogate loss with entropy bonus; closed-form gradient through p_a."""

    @staticmethod
    def forward(ctx, logits, mask, actions, advantages, old_log_prob, row_scale, beta, clip_eps,
                alpha, temperature, grad_out, need_norms):
        backend = backend_for(logits)
        out = backend.ppo(
            logits, mask, actions, advantages, old_log_prob, row_scale, beta, clip_eps, alpha,
            temperature, ctx.needs_input_grad[0], grad_out=grad_out,
            **_norms_kwarg(backend, need_norms),
        )
        return _finish(ctx, out, row_scale, grad_out, ppo=True)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        (grad,) = ctx.saved_tensors
        if grad_loss is None:
            return (None,) * 12
        return (_scale_grad(grad, grad_loss, ctx.in_place),) + (None,) * 11


def _norms_kwarg(backend, need_norms):
    # The kernels get the two gradient norms for free in-register; the PyTorch path saves a few
    # ops per call (which matter at RL batch sizes) when they are not asked for.
    return {"need_norms": need_norms} if backend is reference else {}


def _finish(ctx, out, row_scale, grad_out, *, ppo):
    loss = torch.dot(out["loss_rows"], row_scale)
    ctx.in_place = grad_out is not None
    ctx.set_materialize_grads(False)  # no zero tensors for the statistics' (absent) gradients
    ctx.save_for_backward(out["grad"])
    stats = [out["entropy"], out["log_prob"], out["support"],
             out["grad_policy_sq"].sqrt(), out["grad_entropy_sq"].sqrt()]
    if ppo:
        stats += [out["ratio"], out["clipped"]]
    ctx.mark_non_differentiable(*stats)
    return (loss, *stats)


class EntropyFunction(torch.autograd.Function):
    """Per-row entropy of the mapping; backward is the closed-form ``dH/dz`` (DESIGN.md)."""

    @staticmethod
    def forward(ctx, logits, mask, alpha, temperature):
        backend = backend_for(logits)
        H, support, saved = backend.entropy_forward(logits, mask, alpha, temperature)
        ctx.backend, ctx.alpha, ctx.temperature = backend, alpha, temperature
        ctx.out_dtype = logits.dtype
        ctx.save_for_backward(*saved)
        ctx.mark_non_differentiable(support)
        return H, support

    @staticmethod
    def backward(ctx, grad_H, _):
        grad = ctx.backend.entropy_backward(ctx.saved_tensors, grad_H, ctx.alpha, ctx.temperature)
        return grad.to(ctx.out_dtype), None, None, None


class ProbsFunction(torch.autograd.Function):
    """The mapping itself; backward is its closed-form vector-Jacobian product (DESIGN.md)."""

    @staticmethod
    def forward(ctx, logits, mask, alpha, temperature):
        p = reference.probs_forward(logits, mask, alpha, temperature)
        ctx.alpha, ctx.temperature, ctx.out_dtype = alpha, temperature, logits.dtype
        ctx.save_for_backward(p)
        return p.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_p):
        (p,) = ctx.saved_tensors
        grad = reference.probs_backward(p, grad_p, ctx.alpha, ctx.temperature)
        return grad.to(ctx.out_dtype), None, None, None
