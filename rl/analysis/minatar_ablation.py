"""``reproduce.py minatar_ablation``: does the entropy bonus matter at Atari-like scale (MinAtar)?

    .venv/bin/python scripts/reproduce.py minatar_ablation                   # 4 games, 3 seeds, 3M steps
    .venv/bin/python scripts/reproduce.py minatar_ablation --games breakout --steps 300000
    .venv/bin/python scripts/reproduce.py minatar_ablation --full --launcher population_slurm
    .venv/bin/python scripts/reproduce.py minatar_ablation --no-train        # tables and figures only

PPO with each game's preset (conf/preset/minatar_<game>_ppo.yaml: gymnax-blines' settings, the
MinAtar CNN), swept over beta in {0, 0.001, 0.01, 0.1} x {softmax, entmax-1.5, sparsemax} x
seeds, plus ``beta_schedule.target_entropy`` in {0.1, 0.3} (fractions of the mapping's maximum
entropy, beta starting at 0.01) in place of a fixed beta. Per game two sweeps (fixed beta,
target entropy) through the population launcher (conf/experiment/minatar_ablation.yaml), each one
population of all its runs (``hydra.launcher.max_population`` splits larger ones); ``--n-jobs``
sweeps at a time. Runs land in ``OUT/runs/<override set>``; re-running the command skips finished
runs and resumes interrupted ones from their last checkpoint (rl/sweep.py), so the reproduction
can span sittings.

Scale: the default is the issue's (3 seeds, 3M env steps per run, Breakout, SpaceInvaders,
Asterix, Freeway: 216 runs, 648M env steps); ``--full`` is 10 seeds x 10M steps (the published
budget of gymnax's PPO); ``--steps``/``--seeds`` set either. docs/experiments/minatar_entropy.md
gives the SPS measured here and what each scale costs on 2 CPU cores; on a cluster use
``--launcher population_slurm`` (conf/hydra/launcher/population_slurm.yaml; its fields as
overrides, e.g. ``hydra.launcher.partition=cpu``), on a GPU ``device=cuda``.

Outputs (OUT/): ``runs.csv`` (one row per run: game, mapping, cell, seed, final training return
(mean of the last 100 episodes), greedy evaluation return, normalized score (random = 0, gymnax's
published PPO = 1; rl/analysis/published.py), the last 10% of training's mean entropy as a
fraction of the maximum, support size, and the median ratio of the entropy-term to the
policy-term gradient norm at the logits); ``cells.md``/``.csv`` (per game, mapping and cell:
IQM [95% bootstrap CI] over seeds; a run that stopped as diverged counts at the return it had
then, the seeds cell says how many diverged, and the greedy IQM is over the runs with a final
evaluation); ``aggregate.md``/``.csv`` (normalized-score IQM over games
with a stratified-bootstrap CI, and the probability of improvement of each cell over beta = 0
per mapping, rliable's definition); ``target_vs_fixed.md`` (per game and mapping: the best fixed
beta against each target entropy); ``figures/fixed_beta/`` and ``figures/target/`` (return,
entropy, support and gradient-norm curves; rl/analysis/figures.py); ``minatar_ablation.json``
(grid, budgets, training wall time and SPS).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from rl.analysis import published
from rl.analysis.benchmark import (
    LAUNCHERS,
    MAPPING_NAMES,
    MAPPINGS,
    _fmt_ci,
    _iqm_ci,
    fmt_seeds,
    launcher_overrides,
    run_commands,
    stratified_iqm_ci,
)
from rl.analysis.stats import probability_of_improvement

ROOT = Path(__file__).resolve().parents[2]
GAMES = {"breakout": "Breakout", "spaceinvaders": "SpaceInvaders", "asterix": "Asterix",
         "freeway": "Freeway", "seaquest": "Seaquest"}
DEFAULT_GAMES = ("breakout", "spaceinvaders", "asterix", "freeway")
BETAS = (0.0, 0.001, 0.01, 0.1)
TARGETS = (0.1, 0.3)
TARGET_START_BETA = 0.01  # the dual variable's start for the target-entropy runs
DEFAULT_STEPS, DEFAULT_SEEDS = 3_000_000, 3
FULL_STEPS, FULL_SEEDS = 10_000_000, 10
TAIL = 0.1  # the last 10% of a run's steps give its final entropy and support
TAGS = ("entropy/mean", "policy/support_size", "grad_norm/entropy", "grad_norm/policy")


def env_id(game: str) -> str:
    return f"MinAtar/{GAMES[game]}-v1"


def _csv(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def sweep_commands(args) -> list[tuple[str, list[str]]]:
    """(label, rl-train argv): per game one fixed-beta and one target-entropy sweep."""
    seeds = ",".join(str(s) for s in range(args.seeds))
    common = [f"total_steps={args.steps}", f"policy={','.join(args.mappings)}", f"seed={seeds}",
              *launcher_overrides(args.launcher, args.n_jobs), f"hydra.sweep.dir={args.out / 'runs'}",
              *args.overrides]
    cmds = []
    for game in args.games:
        base = ["-m", "+experiment=minatar_ablation", f"env=minatar_{game}", "algo=ppo"]
        if args.betas:
            cmds.append((f"{game}_beta", [*base, f"beta={_csv(args.betas)}", *common]))
        if args.targets:
            cmds.append((f"{game}_target", [*base, f"beta={TARGET_START_BETA:g}",
                                            f"beta_schedule.target_entropy={_csv(args.targets)}",
                                            *common]))
    return cmds


# ---------------------------------------------------------------------------------------------
# results


def cell_name(beta: float, target: float) -> str:
    return f"target={target:g}" if np.isfinite(target) else f"beta={beta:g}"


def _tail_mean(g: pd.DataFrame, tag: str) -> float:
    s = g[g.tag == tag]
    if s.empty:
        return float("nan")
    return float(s[s.step >= (1 - TAIL) * s.step.max()].value.mean())


def per_run(tidy: pd.DataFrame, summaries: pd.DataFrame) -> pd.DataFrame:
    """One row per run: identity, final numbers, normalized score and the diagnostics."""
    from rl.analysis.aggregate import NORMALIZED_ENTROPY_TAG, with_normalized_entropy

    tidy = with_normalized_entropy(tidy[tidy.tag.isin((*TAGS, "summary/final_mean_return"))])
    rows = []
    for run, g in tidy.groupby("run"):
        first = g.iloc[0]
        wide = g[g.tag.isin(TAGS[2:])].pivot_table(index="step", columns="tag", values="value")
        ratio = float("nan")
        if set(TAGS[2:]) <= set(wide.columns):
            pol = wide["grad_norm/policy"].where(wide["grad_norm/policy"] > 0)
            ratio = float((wide["grad_norm/entropy"] / pol).median())
        rows.append({"run": run, "env": first.env, "mapping": first.mapping, "alpha": first.alpha,
                     "beta": first.beta, "target_entropy": first.target_entropy,
                     "cell": cell_name(first.beta, first.target_entropy), "seed": int(first.seed),
                     "entropy_fraction": _tail_mean(g, NORMALIZED_ENTROPY_TAG),
                     "support_size": _tail_mean(g, "policy/support_size"),
                     "grad_ratio_median": ratio})
    out = pd.DataFrame(rows).merge(summaries, on="run", how="left")
    out["normalized"] = [float(published.normalized(s, e, "ppo"))
                         for s, e in zip(out.final_return.astype(float), out.env, strict=True)]
    return out


def summaries_of(runs_dir: Path, run_names) -> pd.DataFrame:
    from rl.analysis import runs as _runs

    rows = []
    for name in run_names:
        s = _runs.read_summary(runs_dir / name) or {}
        budget = _runs.config_get(_runs.read_config(runs_dir / name), "total_steps")
        rows.append({"run": name, "budget": budget, "steps": s.get("steps"),
                     "final_return": s.get("final_mean_return"),
                     "eval_greedy": s.get("eval_return_greedy"), "wall_time_s": s.get("wall_time_s"),
                     "sps": s.get("sps"), "population_size": s.get("population_size"),
                     "status": s.get("status")})
    return pd.DataFrame(rows)


def select(table: pd.DataFrame, args) -> pd.DataFrame:
    """This grid's finished runs (OUT/runs may hold others: more seeds, other budgets). A diverged
    run is finished: it counts at the return it had when it stopped (rl/analysis/runs.py)."""
    from rl.analysis import runs as _runs

    keep = table.env.isin([env_id(g) for g in args.games]) & (table.seed < args.seeds)
    keep &= table.mapping.isin([MAPPING_NAMES[m] for m in args.mappings])
    keep &= table.budget.fillna(0).astype(int) == args.steps
    fixed = table.target_entropy.isna() & table.beta.isin(args.betas)
    target = table.target_entropy.isin(args.targets) & np.isclose(table.beta, TARGET_START_BETA)
    keep &= (fixed | target) & table.status.map(_runs.is_result).astype(bool)
    return table[keep].reset_index(drop=True)


def _order(df: pd.DataFrame) -> pd.DataFrame:
    m = {name: i for i, name in enumerate(MAPPING_NAMES.values())}
    cell = [(1, t) if np.isfinite(t) else (0, b) for b, t in zip(df.beta, df.target_entropy, strict=True)]
    key = df.assign(_m=df.mapping.map(m), _c=cell)
    return key.sort_values(["env", "_m", "_c"]).drop(columns=["_m", "_c"]).reset_index(drop=True)


def cells_table(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (env, mapping, cell), g in runs.groupby(["env", "mapping", "cell"]):
        tr, ev, nz = (_iqm_ci(g[c].astype(float)) for c in ("final_return", "eval_greedy", "normalized"))
        rows.append({"env": env, "mapping": mapping, "cell": cell, "beta": g.beta.iloc[0],
                     "target_entropy": g.target_entropy.iloc[0], "seeds": len(g),
                     "diverged": int((g.status == "diverged").sum()),
                     "iqm": tr[0], "ci_low": tr[1], "ci_high": tr[2],
                     "greedy_iqm": ev[0], "greedy_ci_low": ev[1], "greedy_ci_high": ev[2],
                     "normalized_iqm": nz[0],
                     "entropy_fraction": float(g.entropy_fraction.median()),
                     "support_size": float(g.support_size.median()),
                     "grad_ratio": float(g.grad_ratio_median.median())})
    return _order(pd.DataFrame(rows))


def aggregate_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Normalized-score IQM over games per (mapping, cell), stratified-bootstrap CI; probability
    of improvement of each cell over beta = 0 of the same mapping (mean over games of P(X > Y))."""
    t = runs[np.isfinite(runs.normalized.astype(float))]
    rows, poi = [], []
    for (mapping, cell), g in t.groupby(["mapping", "cell"]):
        groups = [h.normalized.to_numpy(float) for _, h in g.groupby("env")]
        m, lo, hi = stratified_iqm_ci(groups)
        rows.append({"mapping": mapping, "cell": cell, "beta": g.beta.iloc[0],
                     "target_entropy": g.target_entropy.iloc[0], "games": len(groups), "runs": len(g),
                     "normalized_iqm": m, "ci_low": lo, "ci_high": hi})
    for (mapping, cell), g in t.groupby(["mapping", "cell"]):
        if cell == "beta=0":
            continue
        base = t[(t.mapping == mapping) & (t.cell == "beta=0")]
        per_game = [probability_of_improvement(h.normalized, base[base.env == env].normalized)
                    for env, h in g.groupby("env") if (base.env == env).any()]
        if per_game:
            poi.append({"mapping": mapping, "cell": cell, "beta": g.beta.iloc[0],
                        "target_entropy": g.target_entropy.iloc[0], "games": len(per_game),
                        "p_better_than_beta0": float(np.mean(per_game))})
    agg = _order(pd.DataFrame(rows).assign(env="")) if rows else pd.DataFrame(rows)
    poi = _order(pd.DataFrame(poi).assign(env="")) if poi else pd.DataFrame(poi)
    return agg.drop(columns="env", errors="ignore"), poi.drop(columns="env", errors="ignore")


def target_vs_fixed(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (game, mapping): the fixed beta with the highest IQM, and each target entropy's IQM
    with whether it lies inside that best cell's 95% interval (or above it)."""
    rows = []
    for (env, mapping), g in cells.groupby(["env", "mapping"]):
        fixed, targets = g[g.target_entropy.isna()], g[g.target_entropy.notna()]
        if fixed.empty or targets.empty:
            continue
        best = fixed.loc[fixed.iqm.idxmax()]
        for t in targets.itertuples():
            rows.append({"env": env, "mapping": mapping, "best_fixed": best.cell, "best_iqm": best.iqm,
                         "best_ci_low": best.ci_low, "best_ci_high": best.ci_high, "target": t.cell,
                         "target_iqm": t.iqm, "target_ci_low": t.ci_low, "target_ci_high": t.ci_high,
                         "matches": bool(t.iqm >= best.ci_low) if np.isfinite(best.ci_low)
                         else bool(t.iqm >= best.iqm)})
    return pd.DataFrame(rows)


def _game(env: str) -> str:
    return env.removeprefix("MinAtar/").removesuffix("-v1")


def write_tables(runs: pd.DataFrame, cells: pd.DataFrame, agg: pd.DataFrame, poi: pd.DataFrame,
                 tvf: pd.DataFrame, out: Path) -> list[Path]:
    cols = ["run", "env", "mapping", "cell", "beta", "target_entropy", "seed", "budget", "steps",
            "status", "final_return", "eval_greedy", "normalized", "entropy_fraction", "support_size",
            "grad_ratio_median", "wall_time_s", "sps", "population_size"]
    _order(runs)[cols].to_csv(out / "runs.csv", index=False)
    cells.to_csv(out / "cells.csv", index=False)
    lines = ["| game | mapping | cell | seeds | final return IQM [95% CI] | greedy eval IQM [95% CI] | "
             "normalized IQM | entropy / max | support | grad ratio |", "|---" * 10 + "|"]
    for r in cells.itertuples():
        lines.append(f"| {_game(r.env)} | {r.mapping} | {r.cell} | {fmt_seeds(r.seeds, r.diverged)} | "
                     f"{_fmt_ci(r.iqm, r.ci_low, r.ci_high)} | "
                     f"{_fmt_ci(r.greedy_iqm, r.greedy_ci_low, r.greedy_ci_high)} | "
                     f"{r.normalized_iqm:.2f} | {r.entropy_fraction:.2f} | {r.support_size:.2f} | "
                     f"{r.grad_ratio:.3g} |")
    (out / "cells.md").write_text("\n".join(lines) + "\n")
    agg.to_csv(out / "aggregate.csv", index=False)
    lines = ["Normalized score: (final training return - random) / (gymnax PPO - random); IQM over "
             "all runs of all games, stratified-bootstrap 95% CI.", "",
             "| mapping | cell | games | runs | normalized IQM [95% CI] |", "|---|---|---|---|---|"]
    lines += [f"| {r.mapping} | {r.cell} | {r.games} | {r.runs} | "
              f"{_fmt_ci(r.normalized_iqm, r.ci_low, r.ci_high, digits=2)} |" for r in agg.itertuples()]
    if not poi.empty:
        lines += ["", "Probability of improvement over beta = 0 of the same mapping, P(cell > beta=0) "
                  "(mean over games):", "", "| mapping | cell | games | P(cell > beta=0) |",
                  "|---|---|---|---|"]
        lines += [f"| {r.mapping} | {r.cell} | {r.games} | {r.p_better_than_beta0:.2f} |"
                  for r in poi.itertuples()]
    (out / "aggregate.md").write_text("\n".join(lines) + "\n")
    lines = ["| game | mapping | best fixed beta: IQM [95% CI] | target: IQM [95% CI] | "
             "target >= best's lower bound |", "|---|---|---|---|---|"]
    lines += [f"| {_game(r.env)} | {r.mapping} | {r.best_fixed}: "
              f"{_fmt_ci(r.best_iqm, r.best_ci_low, r.best_ci_high)} | {r.target}: "
              f"{_fmt_ci(r.target_iqm, r.target_ci_low, r.target_ci_high)} | {'yes' if r.matches else 'no'} |"
              for r in tvf.itertuples()]
    (out / "target_vs_fixed.md").write_text("\n".join(lines) + "\n")
    return [out / n for n in ("runs.csv", "cells.md", "cells.csv", "aggregate.md", "aggregate.csv",
                              "target_vs_fixed.md")]


def report(args) -> list[Path]:
    from rl.analysis.aggregate import aggregate
    from rl.analysis.figures import make_all
    from rl.analysis.machine import machine_info

    runs_dir = args.out / "runs"
    if not runs_dir.is_dir():
        raise SystemExit(f"{runs_dir} does not exist: nothing trained yet")
    tidy = aggregate(runs_dir)
    everything = per_run(tidy, summaries_of(runs_dir, tidy.run.unique()))
    runs = select(everything, args)
    if runs.empty:
        raise SystemExit(f"{runs_dir} holds no finished run of this grid")
    cells = cells_table(runs)
    agg, poi = aggregate_table(runs)
    written = write_tables(runs, cells, agg, poi, target_vs_fixed(cells), args.out)
    keep = tidy.run.isin(runs.run)
    fixed = keep & tidy.target_entropy.isna()
    for name, rows, x_col in (("fixed_beta", fixed, "beta"), ("target", keep & ~fixed, "target_entropy")):
        if rows.any():
            written += make_all(tidy[rows], args.out / "figures" / name, x_col=x_col,
                                title=f"MinAtar, PPO: {x_col.replace('_', ' ')}", formats=args.formats)
    meta = {"games": [env_id(g) for g in args.games], "mappings": args.mappings, "betas": args.betas,
            "targets": args.targets, "target_start_beta": TARGET_START_BETA, "seeds": args.seeds,
            "steps": args.steps, "runs": len(runs), "other_or_unfinished": int(len(everything) - len(runs)),
            "training_wall_s_sum": float(runs.wall_time_s.sum()),
            "env_steps_sum": int(runs.steps.sum()),
            "sps_per_run_median": float(runs.sps.median()),
            "population_sizes": sorted({int(k) for k in runs.population_size.dropna()}),
            "machine": machine_info()}
    (args.out / "minatar_ablation.json").write_text(json.dumps(meta, indent=2) + "\n")
    written.append(args.out / "minatar_ablation.json")
    for p in written:
        print(f"[minatar_ablation] wrote {p}", flush=True)
    return written


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="reproduce.py minatar_ablation",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--games", nargs="+", default=list(DEFAULT_GAMES), choices=list(GAMES))
    ap.add_argument("--mappings", default="all",
                    help="comma-separated of softmax, entmax15, sparsemax, or 'all'")
    ap.add_argument("--betas", type=float, nargs="*", default=list(BETAS), help="fixed entropy coefficients")
    ap.add_argument("--targets", type=float, nargs="*", default=list(TARGETS),
                    help="target entropies, fractions of the mapping's maximum in (0, 1)")
    ap.add_argument("--seeds", type=int, default=None,
                    help=f"seeds per cell (default {DEFAULT_SEEDS}; --full {FULL_SEEDS})")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"env steps per run (default {DEFAULT_STEPS:,}; --full {FULL_STEPS:,})")
    ap.add_argument("--full", action="store_true", help=f"{FULL_SEEDS} seeds x {FULL_STEPS:,} steps")
    ap.add_argument("--launcher", default="population", help=f"one of {', '.join(LAUNCHERS)}")
    ap.add_argument("--n-jobs", type=int, default=2, help="sweeps (populations) at once")
    ap.add_argument("--out", type=Path, default=None,
                    help="output directory (default multirun/minatar_ablation)")
    ap.add_argument("--formats", nargs="+", default=["png"], choices=["png", "pdf", "svg"])
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--no-train", action="store_true", help="only tabulate and plot what OUT/runs holds")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every rl-train call")
    args = ap.parse_intermixed_args(argv)
    if args.launcher not in LAUNCHERS:
        raise ValueError(f"--launcher must be one of {list(LAUNCHERS)}; got {args.launcher!r}")
    args.mappings = list(MAPPINGS) if args.mappings == "all" else args.mappings.split(",")
    if not args.mappings or any(m not in MAPPINGS for m in args.mappings):
        raise ValueError(f"--mappings must be 'all' or a comma-separated subset of {list(MAPPINGS)}; "
                         f"got {','.join(args.mappings)!r}")
    if any(b < 0 for b in args.betas):
        raise ValueError(f"--betas must be >= 0; got {args.betas}")
    if any(not 0 < t < 1 for t in args.targets):
        raise ValueError(f"--targets must be fractions in (0, 1); got {args.targets}")
    if not args.betas and not args.targets:
        raise ValueError("--betas and --targets are both empty: nothing to run")
    if args.full and (args.steps is not None or args.seeds is not None):
        raise ValueError(f"--full sets seeds and steps: it takes no --steps/--seeds; got "
                         f"--steps {args.steps}, --seeds {args.seeds}")
    args.steps = FULL_STEPS if args.full else (DEFAULT_STEPS if args.steps is None else args.steps)
    args.seeds = FULL_SEEDS if args.full else (DEFAULT_SEEDS if args.seeds is None else args.seeds)
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1; got {args.steps}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {args.seeds}")
    if args.n_jobs < 1:
        raise ValueError(f"--n-jobs must be >= 1; got {args.n_jobs}")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be Hydra key=value pairs; got {bad}")
    args.out = (ROOT / "multirun" / "minatar_ablation" if args.out is None else args.out).resolve()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_train:
        run_commands(sweep_commands(args), args.out, args.launcher, args.n_jobs, args.dry_run,
                     tag="minatar_ablation")
    if args.dry_run:
        return 0
    report(args)
    return 0
