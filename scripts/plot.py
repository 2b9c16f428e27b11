"""Figures and the summary table of a sweep, from the tidy table of scripts/aggregate.py.

    .venv/bin/python scripts/plot.py multirun/entropy_ablation/table.csv -o figures/
    .venv/bin/python scripts/plot.py table.csv -o figures/ --x distractors   # K-sweep

Writes, as PNG and PDF:

* ``returns``        -- episodic return over env steps per (env, mapping), one line per
  value of ``--x`` (beta by default): mean over seeds with a 95% bootstrap band;
* ``final_vs_<x>``   -- final return against ``--x`` per mapping: interquartile mean (IQM)
  over seeds with its 95% bootstrap CI, seeds as dots;
* ``entropy_support``-- the policy entropy (``entropy/mean``, the mapping's own: Shannon
  for softmax, Tsallis-alpha otherwise), the same divided by its maximum over the action
  space (``ops.max_entropy(alpha, actions)``: 1 = uniform, comparable across mappings) and
  the support size (``policy/support_size``) over training;
* ``grad_norms``     -- ``grad_norm/entropy`` against ``grad_norm/policy`` (per-run median
  over training), and their ratio over training;

and ``final_return.md`` / ``final_return.csv``: per cell (env, mapping, x) the number of
seeds, mean, median and IQM of the final return with the IQM's 95% CI. Conventions of
rliable (Agarwal et al. 2021): IQM = mean of the middle 50% of runs
(``scipy.stats.trim_mean(x, 0.25)``); CIs are percentile bootstraps that resample seeds
within each cell (the stratified bootstrap with one task per cell).

Final return of a run: ``summary/final_mean_return`` (mean of the trainer's last 100
training episodes) when present, else the mean of ``charts/episodic_return`` over the last
10% of the run's steps.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from scipy.stats import trim_mean

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aggregate import mapping_name  # noqa: E402

RETURN_TAG = "charts/episodic_return"
ENTROPY_TAG = "entropy/mean"
NORMALIZED_ENTROPY_TAG = "entropy/normalized"  # derived here: entropy/mean / max entropy
SUPPORT_TAG = "policy/support_size"
FINAL_TAG = "summary/final_mean_return"
MAPPING_ORDER = ["softmax", "entmax-1.5", "sparsemax"]
MARKERS = {"softmax": "o", "entmax-1.5": "s", "sparsemax": "^"}
X_LABELS = {"beta": "entropy coefficient beta", "distractors": "distractor actions K"}
X_SYMBOL = {"beta": "beta", "distractors": "K"}


def load_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"table must be a file written by scripts/aggregate.py; got {str(path)!r}")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = {"run", "env", "alpha", "beta", "seed", "step", "tag", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"table {str(path)!r} lacks columns {sorted(missing)}")
    if "mapping" not in df.columns:
        df["mapping"] = df.alpha.map(mapping_name)
    if "distractors" not in df.columns:
        df["distractors"] = 0
    return df


def with_normalized_entropy(df: pd.DataFrame) -> pd.DataFrame:
    """Append rows ``entropy/normalized`` = ``entropy/mean`` / max entropy of the run's mapping.

    The maximum is that of the uniform policy over the run's actions (DESIGN.md: Shannon
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


def iqm(values) -> float:
    """Interquartile mean: the mean of the middle 50% (rliable's IQM)."""
    return float(trim_mean(np.asarray(values, dtype=float), 0.25))


def bootstrap_ci(values, stat=iqm, reps=2000, seed=0) -> tuple[float, float]:
    """95% percentile-bootstrap CI of `stat` over resampled runs."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(reps, len(values)))
    stats = np.array([stat(values[i]) for i in idx])
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def _mappings(df):
    present = list(dict.fromkeys(df.mapping))
    return [m for m in MAPPING_ORDER if m in present] + sorted(set(present) - set(MAPPING_ORDER))


def _hue_colors(values):
    cmap = plt.get_cmap("viridis")
    n = max(len(values) - 1, 1)
    return {v: cmap(0.9 * i / n) for i, v in enumerate(values)}


def _fmt(x_col, v):
    return f"{X_SYMBOL.get(x_col, x_col)}={v:g}"


def final_returns(df: pd.DataFrame, x_col: str) -> pd.DataFrame:
    """One row per run: env, mapping, x, seed, final return."""
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
    rows = []
    for (env, mapping, x), g in final.groupby(["env", "mapping", x_col]):
        v = g.final_return.to_numpy(dtype=float)
        lo, hi = bootstrap_ci(v, reps=reps)
        rows.append({"env": env, "mapping": mapping, x_col: x, "seeds": len(v),
                     "mean": v.mean(), "median": float(np.median(v)), "iqm": iqm(v),
                     "iqm_ci_low": lo, "iqm_ci_high": hi})
    out = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(MAPPING_ORDER)}
    out["_m"] = out.mapping.map(lambda m: order.get(m, len(order)))
    return out.sort_values(["env", "_m", x_col]).drop(columns="_m").reset_index(drop=True)


def write_summary(summary: pd.DataFrame, x_col: str, out: Path) -> None:
    summary.to_csv(out / "final_return.csv", index=False)
    lines = [f"| env | mapping | {x_col} | seeds | IQM [95% CI] | mean | median |",
             "|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(f"| {r.env} | {r.mapping} | {r[x_col]:g} | {r.seeds} | "
                     f"{r.iqm:.1f} [{r.iqm_ci_low:.1f}, {r.iqm_ci_high:.1f}] | "
                     f"{r['mean']:.1f} | {r['median']:.1f} |")
    (out / "final_return.md").write_text("\n".join(lines) + "\n")


def binned_curves(df: pd.DataFrame, tag: str, bins: int) -> tuple[np.ndarray, dict]:
    """Per run, the mean of `tag` in `bins` equal step bins (forward-filled).

    Returns bin centres and {run: values}; runs of one env share the bins.
    """
    sub = df[df.tag == tag]
    if sub.empty:
        return np.array([]), {}
    edges = np.linspace(0, sub.step.max(), bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    curves = {}
    for run, g in sub.groupby("run"):
        which = np.clip(np.searchsorted(edges, g.step.to_numpy(), side="right") - 1, 0, bins - 1)
        sums = np.bincount(which, weights=g.value.to_numpy(dtype=float), minlength=bins)
        counts = np.bincount(which, minlength=bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = pd.Series(np.where(counts > 0, sums / counts, np.nan)).ffill().to_numpy(copy=True)
        values[centres > g.step.max() + (edges[1] - edges[0])] = np.nan  # run ended earlier
        curves[run] = values
    return centres, curves


def mean_and_band(curves: list[np.ndarray], reps: int, seed: int = 0):
    """Mean over runs and the 95% bootstrap band of that mean (resampling runs)."""
    arr = np.stack(curves)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins: before a run's 1st log
        mean = np.nanmean(arr, axis=0)
        if len(arr) < 2:
            return mean, mean, mean
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(arr), size=(reps, len(arr)))
        boots = np.nanmean(arr[idx], axis=1)
        lo, hi = np.nanpercentile(boots, [2.5, 97.5], axis=0)
    return mean, lo, hi


def _curve_grid(df, tags, x_col, bins, reps, ylabels, title, out, name, formats,
                log_y=None):
    """Rows: env x tag; columns: mapping; one line per x value with its band."""
    log_y = log_y or {}
    envs = sorted(df.env.unique())
    mappings = _mappings(df)
    xs = sorted(df[x_col].unique())
    colors = _hue_colors(xs)
    rows = [(env, tag) for env in envs for tag in tags
            if not df[(df.env == env) & (df.tag == tag)].empty]
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), len(mappings),
                             figsize=(4.6 * len(mappings), 3.3 * len(rows)),
                             squeeze=False, sharex="row", sharey="row")
    for i, (env, tag) in enumerate(rows):
        env_df = df[df.env == env]
        centres, curves = binned_curves(env_df, tag, bins)
        for j, mapping in enumerate(mappings):
            ax = axes[i, j]
            cell = env_df[env_df.mapping == mapping]
            for x in xs:
                runs = cell[cell[x_col] == x].run.unique()
                cs = [curves[r] for r in runs if r in curves]
                if not cs:
                    continue
                mean, lo, hi = mean_and_band(cs, reps)
                ax.plot(centres, mean, color=colors[x], lw=1.6,
                        label=f"{_fmt(x_col, x)} (n={len(cs)})")
                ax.fill_between(centres, lo, hi, color=colors[x], alpha=0.2, lw=0)
            ax.set_title(f"{env} — {mapping}", fontsize=10)
            ax.set_xlabel("env steps")
            if j == 0:
                ax.set_ylabel(ylabels[tag])
            ax.grid(alpha=0.3)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
            if log_y.get(tag):
                ax.set_yscale("log")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.set_layout_engine("constrained")  # unlike tight_layout, keeps the suptitle off row 1
    return _save(fig, out, name, formats)


def plot_final(final, summary, x_col, out, formats):
    envs = sorted(final.env.unique())
    mappings = _mappings(final)
    xs = sorted(final[x_col].unique())
    pos = {x: i for i, x in enumerate(xs)}  # categorical axis: beta=0 and K=0 stay visible
    fig, axes = plt.subplots(1, len(envs), figsize=(5.2 * len(envs), 4), squeeze=False)
    width = 0.22
    for ax, env in zip(axes[0], envs, strict=True):
        for k, mapping in enumerate(mappings):
            offset = (k - (len(mappings) - 1) / 2) * width
            s = summary[(summary.env == env) & (summary.mapping == mapping)]
            if s.empty:
                continue
            px = np.array([pos[x] for x in s[x_col]]) + offset
            err = np.vstack([s.iqm - s.iqm_ci_low, s.iqm_ci_high - s.iqm]).clip(min=0)
            err = np.nan_to_num(err)
            ax.errorbar(px, s.iqm, yerr=err, fmt="-" + MARKERS.get(mapping, "o"), capsize=3,
                        label=f"{mapping}: IQM, 95% CI", color=f"C{k}")
            f = final[(final.env == env) & (final.mapping == mapping)]
            jitter = np.random.default_rng(k).uniform(-0.04, 0.04, len(f))
            ax.scatter(np.array([pos[x] for x in f[x_col]]) + offset + jitter, f.final_return,
                       s=9, alpha=0.35, color=f"C{k}")
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
        ax.set_xlabel(X_LABELS.get(x_col, x_col))
        ax.set_ylabel("final return (mean of last 100 episodes)")
        ax.set_title(env, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Final return vs {X_LABELS.get(x_col, x_col)} (dots: seeds)", fontsize=11)
    fig.set_layout_engine("constrained")  # unlike tight_layout, keeps the suptitle off row 1
    return _save(fig, out, f"final_vs_{x_col}", formats)


def plot_grad_norms(df, x_col, bins, reps, out, formats):
    need = {"grad_norm/policy", "grad_norm/entropy"}
    sub = df[df.tag.isin(need)]
    if not need <= set(sub.tag):
        return None
    envs = sorted(sub.env.unique())
    mappings = _mappings(sub)
    xs = sorted(sub[x_col].unique())
    colors = _hue_colors(xs)
    fig, axes = plt.subplots(2, len(envs), figsize=(5.4 * len(envs), 8.2), squeeze=False)
    wide = sub.pivot_table(index=["run", "env", "mapping", x_col, "step"], columns="tag",
                           values="value").reset_index().dropna(subset=list(need))
    per_run = wide.groupby(["run", "env", "mapping", x_col], as_index=False)[list(need)].median()
    wide["ratio"] = wide["grad_norm/entropy"] / wide["grad_norm/policy"].where(
        wide["grad_norm/policy"] > 0)
    for j, env in enumerate(envs):
        ax = axes[0, j]
        p = per_run[(per_run.env == env) & (per_run["grad_norm/entropy"] > 0)
                    & (per_run["grad_norm/policy"] > 0)]
        for mapping in mappings:
            for x in xs:
                q = p[(p.mapping == mapping) & (p[x_col] == x)]
                if len(q):
                    ax.scatter(q["grad_norm/policy"], q["grad_norm/entropy"], color=colors[x],
                               marker=MARKERS.get(mapping, "o"), s=28, alpha=0.8,
                               label=f"{mapping}, {_fmt(x_col, x)}")
        if len(p):
            lo = min(p["grad_norm/policy"].min(), p["grad_norm/entropy"].min())
            hi = max(p["grad_norm/policy"].max(), p["grad_norm/entropy"].max())
            ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="equal norms")
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel("grad_norm/policy (median over training)")
        ax.set_ylabel("grad_norm/entropy (median over training)")
        ax.set_title(f"{env}: one point per run (beta=0 runs have no entropy gradient)",
                     fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, ncol=2)
        ax = axes[1, j]
        w = wide[(wide.env == env) & (wide.ratio > 0)]
        if not w.empty:
            tidy = w.rename(columns={"ratio": "value"}).assign(tag="ratio")
            centres, curves = binned_curves(tidy, "ratio", bins)
            for k, mapping in enumerate(mappings):
                for x in xs:
                    runs = tidy[(tidy.mapping == mapping) & (tidy[x_col] == x)].run.unique()
                    cs = [curves[r] for r in runs if r in curves]
                    if cs:
                        mean, lo_b, hi_b = mean_and_band(cs, reps)
                        ax.plot(centres, mean, color=colors[x], ls=["-", "--", ":"][k % 3],
                                label=f"{mapping}, {_fmt(x_col, x)}")
                        ax.fill_between(centres, lo_b, hi_b, color=colors[x], alpha=0.12, lw=0)
            ax.set_yscale("log")
        ax.set_xlabel("env steps")
        ax.set_ylabel("grad_norm/entropy / grad_norm/policy")
        ax.set_title(f"{env}: ratio over training (mean, 95% band)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("Gradient norms at the logits: entropy term (-beta H) vs policy term", fontsize=11)
    fig.set_layout_engine("constrained")  # unlike tight_layout, keeps the suptitle off row 1
    return _save(fig, out, "grad_norms", formats)


def _save(fig, out: Path, name: str, formats=("png", "pdf")) -> list[Path]:
    paths = []
    for ext in formats:
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=110)
        paths.append(path)
    plt.close(fig)
    return paths


def finished_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Drop runs that did not finish (status interrupted, failed or running).

    Their last return is not a final return, and a half run would pull a cell's curve down
    where it stops. A diverged run is a result and stays. Runs without a status column
    (tables from elsewhere) are kept.
    """
    if "status" not in table.columns:
        return table
    unfinished = table.status.isin(["interrupted", "failed", "running", "unreadable"])
    dropped = sorted(table[unfinished].run.unique())
    if dropped:
        print(f"plot: leaving out {len(dropped)} unfinished run(s): {', '.join(dropped)}",
              file=sys.stderr)
    return table[~unfinished]


def make_all(table: pd.DataFrame, out: str | Path, x_col: str = "beta", bins: int = 40,
             reps: int = 1000, title: str = "", formats=("png", "pdf"),
             include_unfinished: bool = False) -> list[Path]:
    """Every figure and the summary table; returns the files written."""
    if not include_unfinished:
        table = finished_runs(table)
    if table.empty:
        raise ValueError("table holds no finished run to plot")
    if x_col not in table.columns:
        raise ValueError(f"x must be a column of the table (beta, distractors); got {x_col!r}")
    bad = set(formats) - {"png", "pdf", "svg"}
    if not formats or bad:
        raise ValueError(f"formats must be a non-empty subset of png, pdf, svg; got {formats!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    prefix = f"{title}: " if title else ""
    r = _curve_grid(table, [RETURN_TAG], x_col, bins, reps,
                    {RETURN_TAG: "episodic return"},
                    f"{prefix}training return (mean over seeds, 95% bootstrap band)", out,
                    "returns", formats)
    written += r or []
    final = final_returns(table, x_col)
    if not final.empty:
        summary = summary_table(final, x_col, reps)
        write_summary(summary, x_col, out)
        written += [out / "final_return.md", out / "final_return.csv"]
        written += plot_final(final, summary, x_col, out, formats)
    support = table[table.tag == SUPPORT_TAG].value
    wide_support = len(support) > 0 and support.max() > 20 * max(support.min(), 1.0)
    r = _curve_grid(with_normalized_entropy(table),
                    [ENTROPY_TAG, NORMALIZED_ENTROPY_TAG, SUPPORT_TAG], x_col, bins, reps,
                    {ENTROPY_TAG: "entropy (mapping's own)",
                     NORMALIZED_ENTROPY_TAG: "entropy / max entropy",
                     SUPPORT_TAG: "support size (actions with p > 0)"},
                    f"{prefix}entropy and support over training (mean over seeds, 95% band)",
                    out, "entropy_support", formats, log_y={SUPPORT_TAG: wide_support})
    written += r or []
    written += plot_grad_norms(table, x_col, bins, reps, out, formats) or []
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", type=Path, help="CSV/Parquet from scripts/aggregate.py")
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="output directory (default: TABLE's directory / figures)")
    parser.add_argument("--x", default="beta", help="the swept column within a mapping: "
                        "beta (default) or distractors")
    parser.add_argument("--bins", type=int, default=40, help="step bins of the curves")
    parser.add_argument("--reps", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--title", default="")
    parser.add_argument("--formats", nargs="+", default=["png", "pdf"],
                        help="figure formats: png, pdf, svg")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="also plot interrupted/failed runs (left out by default)")
    args = parser.parse_args(argv)
    if args.bins < 2 or args.reps < 10:
        raise ValueError(f"--bins must be >= 2 and --reps >= 10; got {args.bins}, {args.reps}")
    table = load_table(args.table)
    written = make_all(table, args.out or args.table.parent / "figures", args.x, args.bins,
                       args.reps, args.title, args.formats, args.include_unfinished)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
