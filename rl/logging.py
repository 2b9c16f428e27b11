"""TensorBoard logging with stable, prefix-grouped tags (listed in the README, section Training).

`TAGS` is the one list of scalar tags the trainer writes; `TBLogger` refuses any other, so a
typo cannot silently start a new curve.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

__all__ = ["TAGS", "HISTOGRAM_TAGS", "TBLogger"]

TAGS = (
    "charts/episodic_return",  # mean return of the episodes finished since the last write
    "charts/episodic_length",  # mean length of those episodes
    "charts/SPS",  # env steps per second since the last write
    "charts/learning_rate",  # the learning rate in use (SAC: the actor's)
    "charts/q_learning_rate",  # SAC: the critics' learning rate in use
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
    "ppo/clip_fraction",  # rows with |ratio - 1| > clip_eps (SB3's and CleanRL's definition)
    "ppo/clip_active_fraction",  # rows whose clipped surrogate branch is the active one (no gradient)
    "value/explained_variance",
    "losses/q",  # SAC: mean((Q_1(s, a) - y)^2) + mean((Q_2(s, a) - y)^2), the critic loss
    "grad_norm/actor",  # SAC: parameter-space norm of the actor's gradient, before clipping
    "q/mean",  # SAC: both critics' Q(s, a) at the batch's actions: mean, min, max
    "q/min",
    "q/max",
    "q/target",  # SAC: mean critic target r + gamma (1 - terminated) V(s')
    "eval/return_greedy",  # mean return of eval.episodes greedy episodes on separate envs
    "eval/return_sampled",  # the same with actions sampled from the policy
)
HISTOGRAM_TAGS = ("entropy/histogram",)


def _wait_for_a_later_name(log_dir: Path) -> None:
    """Waits (under a second) until a new event file's name sorts after the existing ones.

    TensorBoard reads a directory's event files in name order, and a name starts with its
    writer's creation second, then host, pid and an in-process counter. A writer opened in the
    same second as an earlier one in the same process (a resume in one process, as in tests and
    notebooks) can sort before it (counter ".10" < ".9"); its purge marker would then drop the
    earlier attempt's events instead of only the ones after the checkpoint.
    """
    stamps = [int(part) for p in log_dir.glob("events.out.tfevents.*")
              if len(parts := p.name.split(".")) > 3 and (part := parts[3]).isdigit()]
    if not stamps:
        return
    latest = max(stamps)
    if latest > time.time() + 1:  # a file from a clock ahead of ours: waiting would not help
        return
    while int(time.time()) <= latest:
        time.sleep(max(0.01, latest + 1 - time.time()))


class TBLogger:
    """A SummaryWriter restricted to `TAGS`; ``purge_step`` drops events at or after a resumed
    step, so a resumed run's curves continue without a zig-zag."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # heavy import: only when logging

        _wait_for_a_later_name(Path(log_dir))
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """All of an update's scalars as one event (one Summary with a value per tag).

        TensorBoard reads a multi-value Summary exactly as one event per tag; writing them
        together costs about a tenth of ``add_scalar`` per tag (~1.5 ms an update for ~20 tags
        on the CI machine, several percent of a CartPole run).
        """
        from tensorboard.compat.proto.summary_pb2 import Summary

        for tag in values:
            if tag not in TAGS:
                raise KeyError(f"unknown TensorBoard tag {tag!r}; add it to rl.logging.TAGS")
        kept = [Summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items()
                if value is not None and math.isfinite(value)]
        if kept:
            self.writer._get_file_writer().add_summary(Summary(value=kept), int(step))

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        if tag not in HISTOGRAM_TAGS:
            raise KeyError(f"unknown TensorBoard histogram tag {tag!r}")
        if len(values):
            self.writer.add_histogram(tag, values, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
