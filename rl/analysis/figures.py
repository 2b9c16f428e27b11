"""Figures of a sweep, from the tidy table of `rl.analysis.aggregate`.

* ``returns``        -- episodic return over env steps per (env, mapping), one line per
  value of x (beta by default): mean over seeds with a 95% bootstrap band;
* ``final_vs_<x>``   -- final return against x per mapping: IQM over seeds with its 95%
  bootstrap CI, seeds as dots;
* ``entropy_support``-- the policy entropy (``entropy/mean``, the mapping's own: Shannon
  for softmax, Tsallis-alpha otherwise), the same divided by its maximum over the action
  space (1 = uniform, comparable across mappings) and the support size over training;
* ``grad_norms``     -- ``grad_norm/entropy`` against ``grad_norm/policy`` (per-run median
  over training), and their ratio over training.

Figures are built on `matplotlib.figure.Figure` (no pyplot): no GUI backend, no global state.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from rl.analysis.aggregate import (
    ENTROPY_TAG,
    MAPPING_ORDER,
    NORMALIZED_ENTROPY_TAG,
    RETURN_TAG,
    SUPPORT_TAG,
    final_returns,
    finished_runs,
    summary_table,
    with_normalized_entropy,
    write_summary,
)
from rl.analysis.stats import mean_band

MARKERS = {"softmax": "o", "entmax-1.5": "s", "sparsemax": "^"}
X_LABELS = {"beta": "entropy coefficient beta", "distractors": "distractor actions K"}
X_SYMBOL = {"beta": "beta", "distractors": "K"}
FORMATS = ("png", "pdf", "svg")


def _mappings(df):
    present = list(dict.fromkeys(df.mapping))
    return [m for m in MAPPING_ORDER if m in present] + sorted(set(present) - set(MAPPING_ORDER))


def _hue_colors(values):
    cmap = colormaps["viridis"]
    n = max(len(values) - 1, 1)
    return {v: cmap(0.9 * i / n) for i, v in enumerate(values)}


def _fmt(x_col, v):
    return f"{X_SYMBOL.get(x_col, x_col)}={v:g}"


def _figure(nrows, ncols, figsize, **kw):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def suptitle(fig: Figure, text: str, fontsize: float = 11):
    """``fig.suptitle(text)`` wrapped onto as many lines as the figure's width needs: a long
    title on a one-panel figure would otherwise run off both edges (the layout engine centres
    it, it does not shrink it)."""
    # about 0.6 em per character for matplotlib's default sans-serif font; 90% of the width
    per_line = max(20, int(0.9 * fig.get_figwidth() * 72 / (0.6 * fontsize)))
    return fig.suptitle(textwrap.fill(text, per_line, break_long_words=False), fontsize=fontsize)


def save(fig: Figure, out: Path, name: str, formats=("png", "pdf"), dpi: int = 110) -> list[Path]:
    """Writes `fig` as ``out/name.<ext>`` for each format; returns the paths."""
    paths = []
    for ext in formats:
        path = Path(out) / f"{name}.{ext}"
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


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


def curve_grid(df, tags, x_col, bins, reps, ylabels, title, out, name, formats, log_y=None):
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
    fig, axes = _figure(len(rows), len(mappings), (4.6 * len(mappings), 3.3 * len(rows)),
                        sharex="row", sharey="row")
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
                mean, lo, hi = mean_band(cs, reps)
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
    suptitle(fig, title)
    fig.set_layout_engine("constrained")  # unlike tight_layout, keeps the suptitle off row 1
    return save(fig, out, name, formats)


def plot_final(final, summary, x_col, out, formats):
    """Final return against x per env: IQM with its CI per mapping, seeds as dots."""
    envs = sorted(final.env.unique())
    mappings = _mappings(final)
    xs = sorted(final[x_col].unique())
    pos = {x: i for i, x in enumerate(xs)}  # categorical axis: beta=0 and K=0 stay visible
    fig, axes = _figure(1, len(envs), (5.2 * len(envs), 4))
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
    suptitle(fig, f"Final return vs {X_LABELS.get(x_col, x_col)} (dots: seeds)")
    fig.set_layout_engine("constrained")
    return save(fig, out, f"final_vs_{x_col}", formats)


def plot_grad_norms(df, x_col, bins, reps, out, formats):
    """Entropy-term against policy-term gradient norms: per-run medians and their ratio."""
    need = {"grad_norm/policy", "grad_norm/entropy"}
    sub = df[df.tag.isin(need)]
    if not need <= set(sub.tag):
        return None
    envs = sorted(sub.env.unique())
    mappings = _mappings(sub)
    xs = sorted(sub[x_col].unique())
    colors = _hue_colors(xs)
    fig, axes = _figure(2, len(envs), (5.4 * len(envs), 8.2))
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
                        mean, lo_b, hi_b = mean_band(cs, reps)
                        ax.plot(centres, mean, color=colors[x], ls=["-", "--", ":"][k % 3],
                                label=f"{mapping}, {_fmt(x_col, x)}")
                        ax.fill_between(centres, lo_b, hi_b, color=colors[x], alpha=0.12, lw=0)
            ax.set_yscale("log")
        ax.set_xlabel("env steps")
        ax.set_ylabel("grad_norm/entropy / grad_norm/policy")
        ax.set_title(f"{env}: ratio over training (mean, 95% band)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, ncol=2)
    suptitle(fig, "Gradient norms at the logits: entropy term (-beta H) vs policy term")
    fig.set_layout_engine("constrained")
    return save(fig, out, "grad_norms", formats)


def make_all(table: pd.DataFrame, out: str | Path, x_col: str = "beta", bins: int = 40,
             reps: int = 1000, title: str = "", formats=("png", "pdf"),
             include_unfinished: bool = False) -> list[Path]:
    """Every figure and the summary table (``final_return.md`` / ``.csv``); returns the files."""
    if bins < 2:
        raise ValueError(f"bins must be >= 2; got {bins}")
    if reps < 10:
        raise ValueError(f"reps must be >= 10; got {reps}")
    if not include_unfinished:
        table = finished_runs(table)
    if table.empty:
        raise ValueError("table holds no finished run to plot")
    if x_col not in table.columns:
        raise ValueError(f"x must be a column of the table (beta, distractors); got {x_col!r}")
    bad = set(formats) - set(FORMATS)
    if not formats or bad:
        raise ValueError(f"formats must be a non-empty subset of png, pdf, svg; got {formats!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    prefix = f"{title}: " if title else ""
    written += curve_grid(table, [RETURN_TAG], x_col, bins, reps, {RETURN_TAG: "episodic return"},
                          f"{prefix}training return (mean over seeds, 95% bootstrap band)", out,
                          "returns", formats) or []
    final = final_returns(table, x_col)
    if not final.empty:
        summary = summary_table(final, x_col, reps)
        written += write_summary(summary, x_col, out)
        written += plot_final(final, summary, x_col, out, formats)
    support = table[table.tag == SUPPORT_TAG].value
    wide_support = len(support) > 0 and support.max() > 20 * max(support.min(), 1.0)
    written += curve_grid(with_normalized_entropy(table),
                          [ENTROPY_TAG, NORMALIZED_ENTROPY_TAG, SUPPORT_TAG], x_col, bins, reps,
                          {ENTROPY_TAG: "entropy (mapping's own)",
                           NORMALIZED_ENTROPY_TAG: "entropy / max entropy",
                           SUPPORT_TAG: "support size (actions with p > 0)"},
                          f"{prefix}entropy and support over training (mean over seeds, 95% band)",
                          out, "entropy_support", formats,
                          log_y={SUPPORT_TAG: wide_support}) or []
    written += plot_grad_norms(table, x_col, bins, reps, out, formats) or []
    return written
