"""The trainer's hooks and the callbacks built on them: TensorBoard, checkpoints, progress bar.

A `Callback` sees the trainer at fixed points of the loop (rl/trainer.py, `Trainer.train`):

    on_train_start(trainer)
    loop:  collect a rollout            -> on_episode_end(trainer, member, return, length, step)
                                           for every finished episode, then on_rollout_end(trainer)
           update (epochs of minibatches) -> on_update_end(trainer, metrics)
           should_stop(trainer)           -> a reason (str) stops the whole population
    on_train_end(trainer, summaries)

    on_member_diverged(trainer, member)   when a member stops as diverged, before its summary is
                                          written (what a callback puts in the member's ``extra``
                                          lands in that summary)

``metrics`` is a list with one entry per member: the member's named scalars of this update (the
TensorBoard tags of rl.logging.TAGS), or None for a member that did not update (finished,
diverged). Members are ``trainer.members`` (`rl.trainer.MemberRun`), each an ordinary run with its
own run directory. The trainer's own callbacks below write what a single run always wrote; scripts
and tests add theirs through ``Trainer(..., callbacks=[...])`` instead of patching the loop.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from rl.trainer import Trainer

__all__ = ["Callback", "TensorBoardCallback", "CheckpointCallback", "ProgressCallback"]


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_episode_end(self, trainer: Trainer, member: int, episode_return: float, length: int,
                       step: int) -> None: ...

    def on_rollout_end(self, trainer: Trainer) -> None: ...

    def on_update_end(self, trainer: Trainer, metrics: list[dict[str, float] | None]) -> None: ...

    def should_stop(self, trainer: Trainer) -> str | None:
        return None

    def on_train_end(self, trainer: Trainer, summaries: list[dict[str, Any]]) -> None: ...

    def on_member_diverged(self, trainer: Trainer, member: int) -> None: ...


class TensorBoardCallback(Callback):
    """Each member's scalars (every ``log_interval`` updates) and entropy histograms (every
    ``histogram_interval``) in ``<run_dir>/tb``; episode returns/lengths since the last write."""

    def __init__(self) -> None:
        self.writers: dict[int, Any] = {}
        self.episodes: dict[int, list[tuple[float, int]]] = {}
        self.last: dict[int, tuple[float, int]] = {}

    def on_train_start(self, trainer):
        from rl.logging import TBLogger

        now = time.perf_counter()
        for k, m in enumerate(trainer.members):
            if m.running:
                # Events up to the checkpoint's step belong to the run: purge only later ones.
                self.writers[k] = TBLogger(m.run_dir / "tb",
                                           purge_step=m.global_step + 1 if m.global_step else None)
                self.episodes[k] = []
                self.last[k] = (now, m.global_step)

    def on_episode_end(self, trainer, member, episode_return, length, step):
        if member in self.episodes:
            self.episodes[member].append((episode_return, length))

    def on_update_end(self, trainer, metrics):
        now = time.perf_counter()
        for k, values in enumerate(metrics):
            m = trainer.members[k]
            writer = self.writers.get(k)
            if values is None or writer is None:
                continue
            evaluated = {t: v for t, v in values.items() if t.startswith("eval/")}
            if evaluated and m.update % m.log_interval != 0:
                writer.scalars(evaluated, m.global_step)  # evaluations are logged whenever they run
            if m.update % m.log_interval == 0:
                t0, s0 = self.last[k]
                values = dict(values)
                values["charts/SPS"] = (m.global_step - s0) / max(now - t0, 1e-9)
                eps = self.episodes[k]
                if eps:
                    values["charts/episodic_return"] = sum(r for r, _ in eps) / len(eps)
                    values["charts/episodic_length"] = sum(n for _, n in eps) / len(eps)
                    eps.clear()
                writer.scalars(values, m.global_step)
                self.last[k] = (now, m.global_step)
            if m.histogram_interval and m.update % m.histogram_interval == 0 and m.entropy_rows is not None:
                writer.histogram("entropy/histogram", m.entropy_rows.float().cpu().numpy(), m.global_step)

    def close_member(self, k: int) -> None:
        writer = self.writers.pop(k, None)
        if writer is not None:
            writer.close()

    def on_train_end(self, trainer, summaries):
        for k in list(self.writers):
            self.close_member(k)


class CheckpointCallback(Callback):
    """Every member's checkpoint each ``checkpoint_interval`` env steps (0: only at exit, which
    the trainer writes itself)."""

    def __init__(self) -> None:
        self.next: dict[int, int] = {}

    def on_train_start(self, trainer):
        for k, m in enumerate(trainer.members):
            if m.checkpoint_interval:
                self.next[k] = (m.global_step // m.checkpoint_interval + 1) * m.checkpoint_interval

    def on_update_end(self, trainer, metrics):
        for k, m in enumerate(trainer.members):
            due = self.next.get(k)
            if due is not None and m.running and m.global_step >= due:
                trainer.save_member(k)
                interval = m.checkpoint_interval
                self.next[k] = due + interval * max(1, math.ceil((m.global_step - due + 1) / interval))


class ProgressCallback(Callback):
    """One tqdm bar for the population: env steps of a member, SPS of the population, mean return
    and entropy averaged over the running members."""

    def __init__(self) -> None:
        self.bar = None
        self.t_post = 0.0

    def on_train_start(self, trainer):
        from tqdm import tqdm

        m = trainer.members[0]
        self.t0, self.s0 = time.perf_counter(), trainer.population_steps()
        self.bar = tqdm(total=m.total_steps, initial=min(x.global_step for x in trainer.members),
                        unit="step", mininterval=1.0, dynamic_ncols=True)
        self.shown = self.bar.n

    def on_update_end(self, trainer, metrics):
        step = min((m.global_step for m in trainer.members if m.running),
                   default=trainer.members[0].total_steps)
        self.bar.update(max(0, step - self.shown))
        self.shown = max(self.shown, step)
        now = time.perf_counter()
        if now - self.t_post > 1.0:
            self.t_post = now
            sps = (trainer.population_steps() - self.s0) / max(now - self.t0, 1e-9)
            rets = [m.mean_return() for m in trainer.members]
            rets = [r for r in rets if math.isfinite(r)]
            ents = [v.get("entropy/mean", math.nan) for v in metrics if v]
            post = {"SPS": f"{sps:.0f}", "ret": f"{sum(rets) / len(rets):.1f}" if rets else "nan",
                    "H": f"{sum(ents) / len(ents):.3f}" if ents else "nan"}
            if len(trainer.members) > 1:
                post["members"] = sum(m.running for m in trainer.members)
            self.bar.set_postfix(post, refresh=False)

    def on_train_end(self, trainer, summaries):
        if self.bar is not None:
            self.bar.close()
