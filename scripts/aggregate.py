"""Collect a sweep into one tidy table: one row per (run, tag, step).

    .venv/bin/python scripts/aggregate.py multirun/entropy_ablation -o table.csv

Every directory under SWEEP_DIR holding ``.hydra/config.yaml`` is a run. From its config
come the columns that identify the cell (env id, policy mapping and alpha, beta, seed,
number of distractor actions, algorithm); from its TensorBoard event files (any
``events.out.tfevents.*`` below the run directory) every scalar; from its
``summary.json`` the final numbers as tags ``summary/<key>`` at the run's last step.

Columns: run, env, alpha, beta, seed, step, tag, value, then mapping, policy, algo,
distractors, actions (size of the action space the policy saw, distractors included),
status. Written as CSV (gzip-compressed when the name ends in ``.gz``), or Parquet when it
ends in ``.parquet`` (needs pyarrow).

A resumed run has several event files; TensorBoard's loader keeps, per tag, the events
of the newest file from the resume step on (the trainer also opens its writer with
``purge_step``), so each (run, tag, step) appears once.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path

import pandas as pd
import yaml

COLUMNS = ["run", "env", "alpha", "beta", "seed", "step", "tag", "value",
           "mapping", "policy", "algo", "distractors", "actions", "status"]
# Summary fields worth a row (numbers only; identifiers are already columns).
SUMMARY_KEYS = ("final_mean_return", "best_mean_return", "solved_at_step", "solved_at_seconds",
                "wall_time_s", "sps", "steps", "episodes")


def mapping_name(alpha: float) -> str:
    """Readable name of the policy mapping selected by alpha (DESIGN.md table)."""
    if alpha == 1.0:
        return "softmax"
    if alpha == 2.0:
        return "sparsemax"
    return f"entmax-{alpha:g}"


@functools.cache
def base_actions(env_id: str) -> int | None:
    """Number of actions of the Gymnasium env `env_id` (None if it cannot be built here)."""
    try:
        import gymnasium as gym

        env = gym.make(env_id)
        try:
            return int(env.action_space.n)
        finally:
            env.close()
    except Exception:  # a missing optional dependency must not stop the aggregation
        return None


def find_runs(sweep_dir: Path) -> list[Path]:
    """Run directories: those holding .hydra/config.yaml (sorted, for a stable table)."""
    return sorted(p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml"))


def _get(cfg: dict, dotted: str, default=None):
    node = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def run_metadata(run_dir: Path, sweep_dir: Path) -> dict:
    """The columns that identify a run, from its .hydra/config.yaml and summary.json."""
    with open(run_dir / ".hydra" / "config.yaml") as f:
        cfg = yaml.safe_load(f) or {}
    env = _get(cfg, "env.id", _get(cfg, "env"))
    alpha = float(_get(cfg, "policy.alpha", 1.0))
    distractors = int(_get(cfg, "env.distractor_actions", 0) or 0)
    n = base_actions(str(env))
    status = None
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            status = json.loads(summary_path.read_text()).get("status", "completed")
        except (ValueError, AttributeError):
            status = "unreadable"
    elif (run_dir / "failed.json").is_file():
        status = "failed"
    return dict(
        run=str(run_dir.relative_to(sweep_dir)) if run_dir != sweep_dir else run_dir.name,
        env=str(env),
        alpha=alpha,
        beta=float(_get(cfg, "beta", 0.0)),
        seed=int(_get(cfg, "seed", 0)),
        mapping=mapping_name(alpha),
        policy=_get(cfg, "policy.name"),
        algo=_get(cfg, "algo.name"),
        distractors=distractors,
        actions=None if n is None else n + distractors,
        status=status,
    )


def read_scalars(run_dir: Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = []
    dirs = sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")})
    for d in dirs:
        # size_guidance 0 = keep every event (the default samples 10k per tag).
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            rows.extend((tag, int(e.step), float(e.value)) for e in acc.Scalars(tag))
    return rows


def read_summary(run_dir: Path, last_step: int) -> list[tuple[str, int, float]]:
    path = run_dir / "summary.json"
    if not path.is_file():
        return []
    try:
        summary = json.loads(path.read_text())
    except ValueError:
        return []
    step = int(summary.get("steps") or last_step)
    rows = []
    for key in SUMMARY_KEYS:
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            rows.append((f"summary/{key}", step, float(value)))
    return rows


def aggregate(sweep_dir: str | Path) -> pd.DataFrame:
    """The tidy table of every run under `sweep_dir` (see the module docstring)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ValueError(f"sweep_dir must be a directory; got {str(sweep_dir)!r}")
    runs = find_runs(sweep_dir)
    if not runs:
        raise ValueError(f"sweep_dir {str(sweep_dir)!r} holds no run (no .hydra/config.yaml)")
    frames = []
    for run_dir in runs:
        meta = run_metadata(run_dir, sweep_dir)
        scalars = read_scalars(run_dir)
        last_step = max((s for _, s, _ in scalars), default=0)
        rows = scalars + read_summary(run_dir, last_step)
        if not rows:
            continue
        df = pd.DataFrame(rows, columns=["tag", "step", "value"])
        # One value per (tag, step): a later duplicate (written after a resume) wins.
        df = df.drop_duplicates(["tag", "step"], keep="last")
        for key, value in meta.items():
            df[key] = value
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    table = pd.concat(frames, ignore_index=True)[COLUMNS]
    return table.sort_values(["run", "tag", "step"], kind="stable").reset_index(drop=True)


def write_table(table: pd.DataFrame, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        try:
            table.to_parquet(out, index=False)
        except ImportError as e:
            raise ValueError(f"writing {out} needs pyarrow (pip install pyarrow); "
                             "or give a .csv output") from e
    else:
        table.to_csv(out, index=False)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="output file (.csv or .parquet); default SWEEP_DIR/table.csv")
    args = parser.parse_args(argv)
    table = aggregate(args.sweep_dir)
    out = write_table(table, args.out or args.sweep_dir / "table.csv")
    runs = table.run.nunique()
    print(f"{len(table)} rows, {runs} runs, {table.tag.nunique()} tags -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
