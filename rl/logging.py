"""TensorBoard logging with stable, prefix-grouped tags (listed in the README, section Training).

`TAGS` is the one list of scalar tags the trainer writes; `TBLogger` refuses any other, so a
typo cannot silently start a new curve.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["TAGS", "HISTOGRAM_TAGS", "TBLogger"]

TAGS = (
    "charts/episodic_return",  # mean return of the episodes finished since the last write
    "charts/episodic_length",  # mean length of those episodes
    "charts/SPS",  # env steps per second since the last write
    "charts/learning_rate",
    "losses/policy",  # the policy term alone (PPO surrogate or -A log pi), without -beta H
    "losses/value",  # mean((V - R)^2), clipped form when algo.clip_value is set
    "losses/total",  # pg_loss - beta * H + vf_coef * v_loss
    "entropy/mean",  # the mapping's own entropy (Shannon for softmax, Tsallis-alpha otherwise)
    "entropy/min",
    "entropy/max",
    "policy/support_size",  # mean number of actions with nonzero probability
    "policy/beta",
    "policy/target_entropy",  # only with a target-entropy beta schedule
    "policy/temperature",  # only when the temperature is scheduled
    "grad_norm/policy",  # logit-space norm of the policy term's gradient
    "grad_norm/entropy",  # logit-space norm of the -beta H term's gradient
    "grad_norm/value",  # parameter-space norm of the value term's gradient
    "grad_norm/total",  # parameter-space norm of the whole gradient, before clipping
    "ppo/approx_kl",
    "ppo/clip_fraction",
    "value/explained_variance",
)
HISTOGRAM_TAGS = ("entropy/histogram",)


class TBLogger:
    """A SummaryWriter restricted to `TAGS`; ``purge_step`` drops events at or after a resumed
    step, so a resumed run's curves continue without a zig-zag."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # heavy import: only when logging

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            if tag not in TAGS:
                raise KeyError(f"unknown TensorBoard tag {tag!r}; add it to rl.logging.TAGS")
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        if tag not in HISTOGRAM_TAGS:
            raise KeyError(f"unknown TensorBoard histogram tag {tag!r}")
        if len(values):
            self.writer.add_histogram(tag, values, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
