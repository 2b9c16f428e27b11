"""A sweep as one tidy table, one row per (run, tag, step), and its final-return summary.

Columns: run, env, alpha, beta, seed, step, tag, value, then mapping, policy, algo,
distractors, actions (size of the action space the policy saw, distractors included),
status, target_entropy (``beta_schedule.target_entropy``, the fraction of the maximum entropy
beta is tuned to; NaN for a fixed or scheduled beta, whose ``beta`` is then the start value).
From a run's config come the columns that identify its cell, from its TensorBoard event
files every scalar, from its summary.json the final numbers as tags ``summary/<key>`` at the
run's last step (`rl.analysis.runs`).

Final return of a run: ``summary/final_mean_return`` (mean of the trainer's last 100
training episodes) when present, else the mean of ``charts/episodic_return`` over the last
10% of the run's steps. The summary per cell (env, mapping, x) gives the number of seeds,
mean, median and IQM of the final return with the IQM's 95% bootstrap CI (`rl.analysis.stats`).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from rl.analysis import runs as _runs
from rl.analysis.stats import iqm, iqm_ci

COLUMNS = ["run", "env", "alpha", "beta", "seed", "step", "tag", "value",
           "mapping", "policy", "algo", "distractors", "actions", "status", "target_entropy"]
RETURN_TAG = "charts/episodic_return"
ENTROPY_TAG = "entropy/mean"
NORMALIZED_ENTROPY_TAG = "entropy/normalized"  # derived here: entropy/mean / max entropy
SUPPORT_TAG = "policy/support_size"
FINAL_TAG = "summary/final_mean_return"
MAPPING_ORDER = ["softmax", "entmax-1.5", "sparsemax"]
UNFINISHED = _runs.UNFINISHED


def mapping_name(alpha: float) -> str:
    """Readable name of the policy mapping selected by alpha (docs/DESIGN.md, section 1)."""
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

        from rl.envs import _register_optional

        _register_optional(env_id, atari=False)  # MinAtar/ and ALE/ ids need their package's registration
        env = gym.make(env_id)
        try:
            return int(env.action_space.n)
        finally:
            env.close()
    except Exception:  # a missing optional dependency must not stop the aggregation
        return None


def run_metadata(run_dir: Path, sweep_dir: Path) -> dict:
    """The columns that identify a run, from its .hydra/config.yaml and summary.json."""
    cfg = _runs.read_config(run_dir)
    get = functools.partial(_runs.config_get, cfg)
    env = get("env.id", get("env"))
    alpha = float(get("policy.alpha", 1.0))
    distractors = int(get("env.distractor_actions", 0) or 0)
    n = base_actions(str(env))
    return dict(
        run=str(run_dir.relative_to(sweep_dir)) if run_dir != sweep_dir else run_dir.name,
        env=str(env),
        alpha=alpha,
        beta=float(get("beta", 0.0)),
        seed=int(get("seed", 0)),
        mapping=mapping_name(alpha),
        policy=get("policy.name"),
        algo=get("algo.name"),
        distractors=distractors,
        actions=None if n is None else n + distractors,
        status=_runs.run_status(run_dir),
        target_entropy=float(get("beta_schedule.target_entropy", None) or np.nan),
    )


def aggregate(sweep_dir: str | Path) -> pd.DataFrame:
    """The tidy table of every run under `sweep_dir` (see the module docstring)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ValueError(f"sweep_dir must be a directory; got {str(sweep_dir)!r}")
    run_dirs = _runs.find_runs(sweep_dir)
    if not run_dirs:
        raise ValueError(f"sweep_dir {str(sweep_dir)!r} holds no run (no .hydra/config.yaml)")
    frames = []
    for run_dir in run_dirs:
        meta = run_metadata(run_dir, sweep_dir)
        scalars = _runs.read_scalars(run_dir)
        last_step = max((s for _, s, _ in scalars), default=0)
        rows = scalars + _runs.summary_scalars(run_dir, last_step)
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
    """CSV (gzip-compressed when the name ends in .gz), or Parquet for .parquet (pyarrow)."""
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


def load_table(path: str | Path) -> pd.DataFrame:
    """A table written by `write_table` (or one with at least its first eight columns)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"table must be a file written by scripts/aggregate.py; got {str(path)!r}")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = {"run", "env", "alpha", "beta", "seed", "step", "tag", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"table {str(path)!r} lacks columns {sorted(missing)}")
    if "mapping" not in df.columns:
        df["mapping"] = df.alpha.map(mapping_name)
    if "distractors" not in df.columns:
        df["distractors"] = 0
    return df


def finished_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Drop runs that did not finish (status interrupted, failed, running or unreadable).

    Their last return is not a final return, and a half run would pull a cell's curve down
    where it stops. A diverged run is a result and stays. Runs without a status column
    (tables from elsewhere) are kept.
    """
    if "status" not in table.columns:
        return table
    unfinished = table.status.isin(UNFINISHED)
    dropped = sorted(table[unfinished].run.unique())
    if dropped:
        print(f"plot: leaving out {len(dropped)} unfinished run(s): {', '.join(dropped)}",
              file=sys.stderr)
    return table[~unfinished]


def with_normalized_entropy(df: pd.DataFrame) -> pd.DataFrame:
    """Append rows ``entropy/normalized`` = ``entropy/mean`` / max entropy of the run's mapping.

    The maximum is that of the uniform policy over the run's actions (docs/DESIGN.md: Shannon
    log n, Tsallis (1 - n^(1-alpha)) / (alpha (alpha-1))), from ``ops.max_entropy``. Runs
    without an ``actions`` value (env not buildable when aggregating) get no such rows.
    """
    if "actions" not in df.columns:
        return df
    ent = df[(df.tag == ENTROPY_TAG) & df.actions.notna() & (df.actions > 1)]
    if ent.empty:
        return df
    import ops

    h_max = {(a, n): float(ops.max_entropy(float(a), int(n)))
             for a, n in ent[["alpha", "actions"]].drop_duplicates().itertuples(index=False)}
    scale = [h_max[(a, n)] for a, n in zip(ent.alpha, ent.actions, strict=True)]
    norm = ent.assign(tag=NORMALIZED_ENTROPY_TAG, value=ent.value.to_numpy() / np.array(scale))
    return pd.concat([df, norm], ignore_index=True)


def final_returns(df: pd.DataFrame, x_col: str) -> pd.DataFrame:
    """One row per run: run, env, mapping, x, seed, final_return (see the module docstring)."""
    keys = ["run", "env", "mapping", x_col, "seed"]
    final = df[df.tag == FINAL_TAG].groupby(keys, as_index=False).value.last()
    returns = df[df.tag == RETURN_TAG]
    have = set(final.run)
    fallback = []
    for run, g in returns.groupby("run"):
        if run in have:
            continue
        last = g[g.step >= 0.9 * g.step.max()]
        fallback.append({**{k: g[k].iloc[0] for k in keys}, "value": last.value.mean()})
    if fallback:
        final = pd.concat([final, pd.DataFrame(fallback)], ignore_index=True)
    return final.rename(columns={"value": "final_return"})


def summary_table(final: pd.DataFrame, x_col: str, reps: int) -> pd.DataFrame:
    """Per cell (env, mapping, x): seeds, mean, median, IQM and the IQM's 95% bootstrap CI
    (`reps` resamples, seed 0: the committed tables are reproducible)."""
    rows = []
    for (env, mapping, x), g in final.groupby(["env", "mapping", x_col]):
        v = g.final_return.to_numpy(dtype=float)
        lo, hi = iqm_ci(v, reps=reps)
        rows.append({"env": env, "mapping": mapping, x_col: x, "seeds": len(v),
                     "mean": v.mean(), "median": float(np.median(v)), "iqm": iqm(v),
                     "iqm_ci_low": lo, "iqm_ci_high": hi})
    out = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(MAPPING_ORDER)}
    out["_m"] = out.mapping.map(lambda m: order.get(m, len(order)))
    return out.sort_values(["env", "_m", x_col]).drop(columns="_m").reset_index(drop=True)


def write_summary(summary: pd.DataFrame, x_col: str, out: Path) -> list[Path]:
    """``final_return.csv`` and the markdown table ``final_return.md`` in `out`."""
    summary.to_csv(out / "final_return.csv", index=False)
    lines = [f"| env | mapping | {x_col} | seeds | IQM [95% CI] | mean | median |",
             "|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(f"| {r.env} | {r.mapping} | {r[x_col]:g} | {r.seeds} | "
                     f"{r.iqm:.1f} [{r.iqm_ci_low:.1f}, {r.iqm_ci_high:.1f}] | "
                     f"{r['mean']:.1f} | {r['median']:.1f} |")
    (out / "final_return.md").write_text("\n".join(lines) + "\n")
    return [out / "final_return.md", out / "final_return.csv"]
