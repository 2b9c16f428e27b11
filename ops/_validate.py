"""Argument checks shared by the public API and every backend.

Each check raises ``ValueError`` naming the parameter, its value and what is
allowed (STYLE.md 10): a bad argument must never turn into a silent NaN.
"""

from __future__ import annotations

import math

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float type accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_alpha(alpha) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha={alpha!r} is not a number; allowed: a float >= 1") from None
    if not math.isfinite(value) or value < 1.0:
        raise ValueError(
            f"alpha={alpha!r} is not allowed; allowed: a finite float >= 1 "
            "(1 = softmax, 1.5 = entmax-1.5, 2 = sparsemax, other > 1 = entmax-alpha)"
        )
    return value


def check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    allowed = "a finite float >= 0" if allow_zero else "a finite float > 0"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a number; allowed: {allowed}") from None
    bad = not math.isfinite(v) or (v < 0 if allow_zero else v <= 0)
    if bad:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {allowed}")
    return v


def check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"logits.dtype={logits.dtype} is not allowed; allowed: float16, bfloat16, float32, float64"
        )
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(
            f"logits.shape={tuple(logits.shape)} is not allowed; the last dim holds the V >= 1 actions"
        )


def check_mask(mask, logits: torch.Tensor) -> torch.Tensor | None:
    """Returns the mask broadcast to the logits' shape (True = allowed)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor (True = allowed), got {got}")
    try:
        return mask.to(logits.device).expand(logits.shape)
    except RuntimeError:
        raise ValueError(
            f"mask.shape={tuple(mask.shape)} does not broadcast to logits.shape={tuple(logits.shape)}"
        ) from None


def check_rows(name: str, value, logits: torch.Tensor, *, dtype: torch.dtype,
               finite: bool = True) -> torch.Tensor:
    """A per-row tensor (advantages, old_log_prob, weights): leading shape of logits, finite.

    ``finite=False`` defers the finiteness check to a caller that detects it from its result.
    """
    lead = tuple(logits.shape[:-1])
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value, dtype=dtype, device=logits.device)
    if value.is_floating_point() is False and value.dtype != torch.bool:
        value = value.to(dtype)
    if value.dim() == 0 and lead != ():
        value = value.expand(lead)
    if tuple(value.shape) != lead:
        raise ValueError(
            f"{name}.shape={tuple(value.shape)} does not match the logits' leading shape {lead} "
            f"(logits.shape={tuple(logits.shape)})"
        )
    if value.dtype != dtype or value.device != logits.device:
        value = value.to(device=logits.device, dtype=dtype)
    if finite:
        check_finite(name, value)
    return value


def check_finite(name: str, value: torch.Tensor) -> None:
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        i = int((~finite).reshape(-1).nonzero()[0])
        raise ValueError(f"{name} must be finite; {name}[{i}] (flat index) = {value.reshape(-1)[i].item()}")


def check_nonnegative_rows(name: str, value: torch.Tensor) -> None:
    """Every entry of a per-row coefficient (a per-row ``beta``) is finite and >= 0."""
    flat = value.reshape(-1)
    bad = ~torch.isfinite(flat) | (flat < 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        v = flat[i].item()
        what = "negative" if math.isfinite(v) else "non-finite"
        raise ValueError(f"{name} has a {what} entry {v} at row {i} (flat index); "
                         "allowed: finite values >= 0")


def check_actions(actions, logits: torch.Tensor, mask: torch.Tensor | None,
                  check_masked: bool = True) -> torch.Tensor:
    """Integer actions of the logits' leading shape, in range and (``check_masked``) allowed."""
    lead = tuple(logits.shape[:-1])
    V = logits.shape[-1]
    if not isinstance(actions, torch.Tensor):
        actions = torch.as_tensor(actions, device=logits.device)
    if actions.is_floating_point() or actions.is_complex() or actions.dtype == torch.bool:
        raise ValueError(f"actions.dtype={actions.dtype} is not allowed; allowed: an integer dtype")
    if tuple(actions.shape) != lead:
        raise ValueError(
            f"actions.shape={tuple(actions.shape)} does not match the logits' leading shape {lead} "
            f"(logits.shape={tuple(logits.shape)})"
        )
    if actions.dtype != torch.int64 or actions.device != logits.device:
        actions = actions.to(device=logits.device, dtype=torch.int64)
    if actions.numel() == 0:
        return actions
    lo, hi = torch.stack([actions.min(), actions.max()]).tolist()
    if lo < 0 or hi >= V:
        i = int(((actions < 0) | (actions >= V)).reshape(-1).nonzero()[0])
        raise ValueError(
            f"actions[{i}] (flat index) = {int(actions.reshape(-1)[i])} is out of range; "
            f"allowed: 0 <= action < V = {V}"
        )
    if check_masked:
        check_allowed(actions, logits, mask)
    return actions


def check_allowed(actions: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None,
                  chosen: torch.Tensor | None = None) -> None:
    """Every taken action is allowed: its mask entry is True and its logit is not -inf.

    ``chosen``: the taken actions' logits if already gathered (before a gradient written over
    the logits could hide a -inf).
    """
    idx = actions.unsqueeze(-1)
    if chosen is None:
        chosen = logits.detach().gather(-1, idx).squeeze(-1)
    invalid = chosen.reshape(actions.shape) == float("-inf")
    if mask is not None:
        invalid = invalid | ~mask.gather(-1, idx).squeeze(-1)
    if bool(invalid.any()):
        i = int(invalid.reshape(-1).nonzero()[0])
        raise ValueError(
            f"actions[{i}] (flat index) = {int(actions.reshape(-1)[i])} is a masked action "
            "(mask False or logit -inf); its probability is 0 under every mapping"
        )


def check_row_max(row_max: torch.Tensor) -> None:
    """Rejects rows whose maximum over allowed actions is NaN, +inf or -inf.

    The row maximum is computed anyway to stabilise the mapping, so this check
    costs O(B): NaN propagates through max, +inf is the max of a row that holds
    one, and -inf is the max of a row whose every action is masked.
    """
    if row_max.numel() == 0:
        return
    # The sum is finite when every entry is (torch.isfinite costs several times more on the
    # CPU for a rollout's handful of rows); only a non-finite sum -- or an overflow of huge
    # finite maxima -- takes the entry-wise look below.
    if math.isfinite(row_max.sum(dtype=torch.float64).item()):
        return
    finite = torch.isfinite(row_max)
    if bool(finite.all()):
        return
    i = int((~finite).nonzero()[0])
    v = float(row_max[i])
    if math.isnan(v):
        why = "holds NaN"
    elif v > 0:
        why = "holds +inf"
    else:
        why = "has every action masked (mask False or logit -inf)"
    raise ValueError(
        f"logits row {i} (flat row index) {why}; allowed: finite logits, -inf only for masked "
        "actions, and at least one allowed action per row"
    )


def check_q_values(q_values, logits: torch.Tensor) -> torch.Tensor:
    """Action values of the logits' shape, a float tensor (moved to the logits' device)."""
    if not isinstance(q_values, torch.Tensor):
        raise ValueError(f"q_values must be a torch.Tensor, got {type(q_values).__name__}")
    if not q_values.is_floating_point():
        raise ValueError(f"q_values.dtype={q_values.dtype} is not allowed; allowed: a float dtype")
    if q_values.shape != logits.shape:
        raise ValueError(
            f"q_values.shape={tuple(q_values.shape)} is not allowed; allowed: the logits' shape "
            f"{tuple(logits.shape)} (one value per action)"
        )
    return q_values if q_values.device == logits.device else q_values.to(logits.device)


def check_q_finite(q_values: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Every allowed action's value is finite (masked actions' values are never read)."""
    bad = ~torch.isfinite(q_values) & (logits.detach() != float("-inf"))
    if mask is not None:
        bad = bad & mask
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0])
        raise ValueError(
            f"q_values must be finite at allowed actions; q_values[{i}] (flat index) = "
            f"{q_values.reshape(-1)[i].item()} (masked actions may hold anything)"
        )
