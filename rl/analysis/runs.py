"""Run directories and what they hold: Hydra config, summary, TensorBoard scalars.

A run directory is one holding ``.hydra/config.yaml`` (what ``rl-train`` leaves); its
``summary.json`` (`rl.checkpoint.SUMMARY_FILE`) is written when the run ends, ``failed.json``
(`rl.sweep.FAILED_FILE`) when it raised, and its TensorBoard event files lie anywhere below it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

from rl.checkpoint import SUMMARY_FILE
from rl.sweep import FAILED_FILE

# Summary fields worth a row of the tidy table (numbers only; identifiers are columns).
SUMMARY_KEYS = ("final_mean_return", "best_mean_return", "solved_at_step", "solved_at_seconds",
                "wall_time_s", "sps", "steps", "episodes")


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Run directories under `sweep_dir`: those holding .hydra/config.yaml (sorted)."""
    return sorted(p.parent.parent for p in Path(sweep_dir).rglob(".hydra/config.yaml"))


def read_config(run_dir: str | Path) -> dict:
    """The run's composed config, ``.hydra/config.yaml``, as plain dicts."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"run config {str(path)!r} cannot be read: {e}") from e


def read_overrides(run_dir: str | Path) -> list[str]:
    """The command-line overrides Hydra recorded for the run, ``.hydra/overrides.yaml``."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    try:
        return list(yaml.safe_load(path.read_text()) or [])
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"run overrides {str(path)!r} cannot be read: {e}") from e


def config_get(cfg: dict, dotted: str, default=None):
    """``cfg["a"]["b"]`` for ``dotted="a.b"``, or `default` where a key is missing."""
    node = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def read_summary(run_dir: str | Path) -> dict | None:
    """The run's summary.json as a dict; None if absent; ``{"status": "unreadable"}`` if
    it is not a JSON object (a run killed while writing it)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except ValueError:
        return {"status": "unreadable"}
    return summary if isinstance(summary, dict) else {"status": "unreadable"}


# Statuses of runs that did not finish: their numbers are not final. "diverged" is not among
# them: a diverged run is a result of the method (rl/sweep.py does not rerun it either).
UNFINISHED = ("interrupted", "failed", "running", "unreadable")


def is_result(status: str | None) -> bool:
    """True for a finished run, completed or diverged; False for an unfinished one and for a run
    that left no status (still running, or killed; None, or NaN in a table)."""
    return isinstance(status, str) and status not in UNFINISHED


def run_status(run_dir: str | Path) -> str | None:
    """completed / interrupted / diverged / ... from summary.json, "failed" from failed.json,
    None for a run that left neither (still running, or killed)."""
    summary = read_summary(run_dir)
    if summary is not None:
        return summary.get("status", "completed")
    if (Path(run_dir) / FAILED_FILE).is_file():
        return "failed"
    return None


def summary_scalars(run_dir: str | Path, last_step: int) -> list[tuple[str, int, float]]:
    """``(summary/<key>, step, value)`` for the finite numbers of `SUMMARY_KEYS` in summary.json,
    at the run's final step (``steps``, else `last_step`)."""
    summary = read_summary(run_dir)
    if not summary or summary.get("status") == "unreadable":
        return []
    step = int(summary.get("steps") or last_step)
    rows = []
    for key in SUMMARY_KEYS:
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            rows.append((f"summary/{key}", step, float(value)))
    return rows


def read_scalars(run_dir: str | Path, tags=None) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in the event files below `run_dir` (only `tags`
    if given).

    Each directory of event files is read by TensorBoard's loader, which for a resumed run
    (several files, the later one opened with ``purge_step``) keeps per tag the newest
    file's events from the resume step on.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    wanted = None if tags is None else set(tags)
    rows = []
    for d in sorted({p.parent for p in Path(run_dir).rglob("events.out.tfevents.*")}):
        # size_guidance 0 = keep every event (the default samples 10k per tag).
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if wanted is None or tag in wanted:
                rows.extend((tag, int(e.step), float(e.value)) for e in acc.Scalars(tag))
    return rows


def scalar_series(run_dir: str | Path, tags) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tag: (steps, values)} sorted by step, one value per step (the last read wins), for
    each of `tags` (empty arrays for a tag the run never logged)."""
    run_dir = Path(run_dir)
    if not any(run_dir.rglob("events.out.tfevents.*")):
        raise ValueError(f"run_dir {str(run_dir)!r} holds no TensorBoard event file")
    series: dict[str, dict[int, float]] = {tag: {} for tag in tags}
    for tag, step, value in read_scalars(run_dir, tags):
        series[tag][step] = value
    return {tag: (np.array(sorted(d), dtype=np.int64), np.array([d[k] for k in sorted(d)], dtype=float))
            for tag, d in series.items()}
