"""Sweep bookkeeping: skip finished runs, resume interrupted ones, survive failed ones.

A sweep's run directories are deterministic per override set (the experiment presets
set ``hydra.sweep.subdir=${hydra.job.override_dirname}``), so re-running the same
``rl-train -m ...`` command lands every job in the directory of its previous attempt.
At start the trainer asks `check_previous_run` what that directory holds:

* ``"done"``   -- ``summary.json`` is complete: nothing to do, exit 0.
* ``"resume"`` -- no complete summary but a checkpoint: continue from it.
* ``"fresh"``  -- neither: start from scratch.

`RecordFailures` is a Hydra callback for multirun: a job that raises gets a
``failed.json`` (error, traceback, overrides) in its run directory, and its
``JobReturn`` is marked completed so Hydra's sweeper does not re-raise the error after
the batch (``BasicSweeper.sweep`` reads every ``JobReturn.return_value``, which raises
for a failed job and gives the whole ``-m`` command a non-zero exit). At the end of the
sweep the callback logs which runs failed; re-running the sweep retries them.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from pathlib import Path
from typing import Any, Literal

from rl.checkpoint import SUMMARY_FILE, write_json

__all__ = [
    "SUMMARY_FILE",
    "FAILED_FILE",
    "check_previous_run",
    "find_checkpoint",
    "summary_is_complete",
    "RecordFailures",
]

log = logging.getLogger(__name__)

FAILED_FILE = "failed.json"
# A summary with one of these statuses describes a run that did not finish. "diverged" is
# not among them: it is a result (re-running from the last good checkpoint, with the same
# seed, would diverge again), reported by the summary and by failed.json.
_UNFINISHED = {"failed", "running", "interrupted"}
# Checkpoint files the trainer may write: torch files, newest wins. Temporary files of an
# atomic write (``*.tmp``, dot-files) are never a checkpoint.
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
_PREFERRED_NAMES = ("last.pt", "latest.pt", "checkpoint.pt")

Status = Literal["done", "resume", "fresh"]


def summary_is_complete(path: str | os.PathLike) -> bool:
    """True when `path` is a readable JSON object describing a finished run.

    Finished means: it parses (an atomic write never leaves half a file, but a crash of a
    non-atomic writer might) and its optional ``status`` field is not one of
    ``failed/running/interrupted`` (rl.trainer writes completed, interrupted, diverged or
    failed).
    """
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(summary, dict) or not summary:
        return False
    return str(summary.get("status", "completed")).lower() not in _UNFINISHED


def find_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from in `run_dir` (searched recursively), or None.

    Prefers a file named ``last.pt``/``latest.pt``/``checkpoint.pt``; otherwise the most
    recently modified ``*.pt``/``*.pth``/``*.ckpt``. Empty files are ignored.
    """
    run_dir = Path(run_dir)
    candidates = [
        p
        for p in run_dir.rglob("*")
        if p.suffix in _CHECKPOINT_SUFFIXES
        and not p.name.startswith(".")
        and p.is_file()
        and p.stat().st_size > 0
    ]
    if not candidates:
        return None
    preferred = [p for p in candidates if p.name in _PREFERRED_NAMES]
    pool = preferred or candidates
    return max(pool, key=lambda p: (p.stat().st_mtime_ns, str(p)))


def check_previous_run(run_dir: str | os.PathLike) -> tuple[Status, Path | None]:
    """What a previous attempt left in `run_dir`: ``(status, checkpoint_path)``.

    Returns ``("done", None)`` when ``run_dir/summary.json`` is complete (see
    `summary_is_complete`), ``("resume", path)`` when a checkpoint exists (see
    `find_checkpoint`), else ``("fresh", None)``. A missing `run_dir` is ``"fresh"``.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run_dir must be a directory; got the file {str(run_dir)!r}")
    if not run_dir.is_dir():
        return "fresh", None
    if summary_is_complete(run_dir / SUMMARY_FILE):
        return "done", None
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is not None:
        return "resume", checkpoint
    return "fresh", None


try:  # Hydra is a core dependency, but keep the helpers above importable without it.
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object


class RecordFailures(_Callback):
    """Hydra callback: in multirun, record a failed job and keep the sweep going.

    Enable it in a config (the experiment presets do)::

        hydra:
          callbacks:
            record_failures:
              _target_: rl.sweep.RecordFailures

    Parameters
    ----------
    fatal : bool
        If True only write ``failed.json`` and let Hydra re-raise after the batch (the
        ``-m`` command then exits non-zero). Default False: the sweep exits 0 and logs the
        failed runs. Single runs (no ``-m``) are never touched: their errors propagate.
    """

    def __init__(self, fatal: bool = False) -> None:
        self.fatal = bool(fatal)

    @staticmethod
    def _is_multirun(config: Any) -> bool:
        from hydra.types import RunMode

        mode = config.hydra.get("mode", None) if "hydra" in config else None
        return mode == RunMode.MULTIRUN

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status != JobStatus.FAILED or not self._is_multirun(config):
            return
        error = job_return._return_value  # reading .return_value would re-raise it
        run_dir = Path(str(config.hydra.runtime.output_dir))
        record = {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": "".join(
                traceback.format_exception(type(error), error, error.__traceback__)
            ),
            "overrides": list(job_return.overrides or []),
        }
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / FAILED_FILE, record)
        except OSError as e:  # recording must never be what sinks the sweep
            log.error("could not write %s: %s", run_dir / FAILED_FILE, e)
        log.error("run %s failed: %s (see %s)", run_dir, record["error"], FAILED_FILE)
        if not self.fatal:
            job_return.status = JobStatus.COMPLETED
            job_return.return_value = {"status": "failed", "error": record["error"]}

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        failed = sorted(p.parent for p in sweep_dir.rglob(FAILED_FILE))
        # A run that failed once and then completed on a re-run is not a failure.
        failed = [d for d in failed if not summary_is_complete(d / SUMMARY_FILE)]
        if failed:
            log.error(
                "%d run(s) failed; re-run the same command to retry them:\n  %s",
                len(failed),
                "\n  ".join(str(d) for d in failed),
            )
