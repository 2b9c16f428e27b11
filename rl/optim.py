"""torch.optim's Adam and RMSprop without the ~1.8 s import of ``torch._dynamo``.

``torch.optim.Optimizer`` wraps ``step``, ``zero_grad``, ``state_dict``, ``load_state_dict`` and
``add_param_group`` (called by ``__init__``) for ``torch.compile``: the wrappers import
``torch._dynamo`` on their first call, which is a third of the start-up of a short run
(``rl-train total_steps=256``). The trainer never compiles its optimizer, so these subclasses call
the very same methods unwrapped (``inspect.unwrap`` strips the compile wrappers and nothing else):
the arithmetic, the hyper-parameters and the ``state_dict`` layout are torch's own, so
checkpoints written with ``torch.optim.Adam`` load unchanged, and ``step`` still runs under
``no_grad`` exactly as the wrapper it replaces (tests/rl/test_checkpoint.py compares parameters
after several steps against ``torch.optim.Adam``/``RMSprop`` bit for bit).
"""

from __future__ import annotations

import inspect

import torch

__all__ = ["Adam", "RMSprop", "make_optimizer"]


def _plain(method):
    return inspect.unwrap(method)


def _eager_step(cls: type[torch.optim.Optimizer]):
    step = _plain(cls.step)  # cls.step is torch's profile hook around the compile wrapper

    def eager_step(self, closure=None):
        # the compile wrapper's only eager effect: no autograd graph through the update
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable", False))):
            return step(self, closure)

    eager_step.__doc__ = step.__doc__
    return eager_step


class _Eager:
    zero_grad = _plain(torch.optim.Optimizer.zero_grad)
    state_dict = _plain(torch.optim.Optimizer.state_dict)
    load_state_dict = _plain(torch.optim.Optimizer.load_state_dict)
    add_param_group = _plain(torch.optim.Optimizer.add_param_group)


class Adam(_Eager, torch.optim.Adam):
    """``torch.optim.Adam``, eager only (see the module docstring)."""

    step = _eager_step(torch.optim.Adam)


class RMSprop(_Eager, torch.optim.RMSprop):
    """``torch.optim.RMSprop``, eager only (see the module docstring)."""

    step = _eager_step(torch.optim.RMSprop)


def make_optimizer(name: str, params, *, lr: float, adam_eps: float, rmsprop_alpha: float,
                   rmsprop_eps: float) -> torch.optim.Optimizer:
    """The trainer's optimizer: fused Adam or foreach RMSprop (one kernel per step on the flat
    parameter tensor; the per-tensor bookkeeping of torch.optim is most of a small network's step)."""
    if name == "adam":
        return Adam(params, lr=lr, eps=adam_eps, fused=True)
    if name == "rmsprop":
        return RMSprop(params, lr=lr, alpha=rmsprop_alpha, eps=rmsprop_eps, foreach=True)
    raise ValueError(f"algo.optimizer={name!r} is not allowed; allowed: adam | rmsprop")
