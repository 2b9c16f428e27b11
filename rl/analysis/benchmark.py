"""``reproduce.py benchmark``: train a suite with the per-env presets, compare with published numbers.

    .venv/bin/python scripts/reproduce.py benchmark                         # classic: zoo budgets, 5 seeds
    .venv/bin/python scripts/reproduce.py benchmark --suite minatar         # 1M steps, 3 seeds (~1 h)
    .venv/bin/python scripts/reproduce.py benchmark --suite minatar --full  # 10M steps, 3 seeds
    .venv/bin/python scripts/reproduce.py benchmark --suite atari --games Pong --full eval.episodes=0
    .venv/bin/python scripts/reproduce.py benchmark --mappings all --seeds 3 --scale 0.5
    .venv/bin/python scripts/reproduce.py benchmark --steps 2048 --seeds 2 --envs cartpole

Suites: ``classic`` (CartPole-v1, Acrobot-v1, MountainCar-v0, LunarLander-v3; PPO and A2C),
``minatar`` (the five MinAtar games; PPO), ``atari`` (``--games``; PPO and A2C). Each (env,
algo) is one ``rl-train -m +experiment=benchmark env=E algo=A policy=P1,P2 seed=0,..`` with
the env's preset (conf/preset/<env>_<algo>.yaml), so its seeds and mappings train as one
population (``--launcher population``, the default); the (env, algo) sweeps run ``--n-jobs`` at
a time. Runs land in ``OUT/runs/<override set>``; re-running the command skips finished runs and
resumes interrupted ones (rl/sweep.py). Extra ``key=value`` arguments go to every rl-train call.

Budget: ``--full`` trains each (env, algo) for the published budget (rl/analysis/published.py,
which is also the preset's ``total_steps``) with 5 seeds (3 on MinAtar and Atari). The default
(``--scale 1``) is ``DEFAULT_FRACTION`` of that budget with ``DEFAULT_SEEDS`` seeds, sized from
measured population SPS for about an hour on 2 CPU cores (arithmetic in
docs/experiments/benchmark.md): on ``classic`` that is the full setting (it fits), on ``minatar``
1M of the 10M steps. ``--scale S`` multiplies the default steps, ``--steps N`` sets every run's
steps, ``--seeds N`` the number of seeds; a run is at least one rollout of the preset
(num_envs x n_steps).

Outputs (OUT/): ``runs.csv`` (one row per run: final training return, greedy and sampled
evaluation return, normalized score); ``<suite>.md`` / ``<suite>.csv`` (per env, algo, mapping:
how many seeds solved (the trainer's ``solved_at_step``: the mean of 100 training episodes
reached the env's ``solved_return``), IQM [95% bootstrap CI] over seeds of the training and the
greedy-eval final return, beside the published value and its source); ``<suite>_aggregate.md``
/ ``.csv`` (normalized-score IQM over all tasks with a stratified-bootstrap CI, probability of
improvement between mappings); ``figures/<suite>_curves.png`` (training return per env, mean
over seeds with a 95% band, one line per mapping).

A run that stopped as diverged (its summary's ``status``; rl/trainer.py) is a finished run of
the method: it is tabulated at the returns it had when it stopped, counts as solved only if it
reached the bar before, and the seeds cell says how many diverged. Leaving it out would raise
the IQM of a mapping that fails. Its final evaluation is its last checkpoint's (rl/evaluation.py:
the checkpoint written before it diverged, at the summary's ``eval_step``); a run that diverged
before its first checkpoint has none, and the greedy IQM is over the runs that have one.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from rl.analysis import published
from rl.analysis import runs as _runs
from rl.analysis.machine import machine_info
from rl.analysis.stats import iqm, iqm_ci, probability_of_improvement

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"

SUITES = {
    "classic": ("cartpole", "acrobot", "mountaincar", "lunarlander"),
    "minatar": ("minatar_asterix", "minatar_breakout", "minatar_freeway", "minatar_seaquest",
                "minatar_spaceinvaders"),
    "atari": (),  # one run per --games entry: env=atari env.id=ALE/<Game>-v5
}
SUITE_ALGOS = {"classic": ("ppo", "a2c"), "minatar": ("ppo",), "atari": ("ppo", "a2c")}
FULL_SEEDS = {"classic": 5, "minatar": 3, "atari": 3}
DEFAULT_SEEDS = {"classic": 5, "minatar": 3, "atari": 3}
# Scale 1 trains this fraction of each published budget. docs/experiments/benchmark.md has the
# measured SPS and the arithmetic: all of classic at the zoo budgets, 5 seeds, softmax, is
# ~2,500 core-seconds of training (~25-40 min on 2 cores with start-up and evaluation); MinAtar
# at ~3.5k env steps/s per 5-run population makes 1M steps x 3 seeds x 5 games ~75 core-minutes.
# Atari's fraction is a placeholder (not measured: ALE on 2 cores is far from an hour at 10M).
DEFAULT_FRACTION = {"classic": 1.0, "minatar": 0.1, "atari": 0.01}
MAPPINGS = ("softmax", "entmax15", "sparsemax")
MAPPING_NAMES = {"softmax": "softmax", "entmax15": "entmax-1.5", "sparsemax": "sparsemax"}
LAUNCHERS = ("population", "local", "slurm", "population_slurm")
RETURN_TAG = "charts/episodic_return"
BOOT_REPS = 2000


# ---------------------------------------------------------------------------------------------
# the grid


def env_id(env: str, game: str | None = None) -> str:
    """The env id of a conf/env entry (``atari`` + game: ``ALE/<game>-v5``)."""
    if game is not None:
        return f"ALE/{game}-v5"
    with open(CONF / "env" / f"{env}.yaml") as f:
        return yaml.safe_load(f)["id"]


def _preset(env: str, algo: str) -> dict:
    path = CONF / "preset" / f"{env}_{algo}.yaml"
    if not path.is_file():
        raise ValueError(f"--algos: env {env!r} has no {algo} preset ({path.name}); "
                         f"presets: {sorted(p.stem for p in (CONF / 'preset').glob(f'{env}_*.yaml'))}")
    with open(path) as f:
        return yaml.safe_load(f) or {}


def rollout_steps(env: str, algo: str) -> int:
    """Env steps per update of the preset: num_envs x algo.n_steps (preset, else defaults)."""
    preset = _preset(env, algo)
    with open(CONF / "algo" / f"{algo}.yaml") as f:
        algo_n = yaml.safe_load(f).get("n_steps")
    with open(CONF / "config.yaml") as f:
        num_envs = yaml.safe_load(f)["num_envs"]
    return int(preset.get("num_envs", num_envs)) * int(preset.get("algo", {}).get("n_steps", algo_n))


def published_budget(env: str, algo: str, game: str | None = None) -> int:
    """The published budget for (env, algo): the reference's, else the preset's total_steps."""
    ref = published.reference(env_id(env, game), algo)
    if ref is not None:
        return ref.budget
    steps = _preset(env, algo).get("total_steps")
    if steps is None:
        raise ValueError(f"env {env!r} algo {algo!r}: no published budget and no preset total_steps")
    return int(steps)


def run_steps(args, env: str, algo: str, game: str | None = None) -> int:
    """Env steps of each run of (env, algo) under the options: at least one rollout of the preset
    (num_envs x n_steps); otherwise as given, so the full setting is the published budget itself."""
    if args.steps is not None:
        target = args.steps
    elif args.full:
        target = published_budget(env, algo, game)
    else:
        target = published_budget(env, algo, game) * DEFAULT_FRACTION[args.suite] * args.scale
    return max(rollout_steps(env, algo), round(target))


def n_seeds(args) -> int:
    if args.seeds is not None:
        return args.seeds
    return (FULL_SEEDS if args.full else DEFAULT_SEEDS)[args.suite]


def cells(args) -> list[tuple[str, str, str | None]]:
    """(conf env, algo, game or None) of every sweep of the benchmark."""
    if args.suite == "atari":
        return [("atari", a, g) for g in args.games for a in args.algos]
    return [(e, a, None) for e in args.envs for a in args.algos]


def launcher_overrides(launcher: str, n_jobs: int) -> list[str]:
    """Hydra overrides selecting the launcher (conf/hydra/launcher/)."""
    if launcher == "population":  # one population per sweep; the sweeps run side by side
        return ["hydra/launcher=population", "hydra.launcher.n_jobs=1"]
    if launcher == "local":
        return ["hydra/launcher=local", f"hydra.launcher.n_jobs={n_jobs}"]
    return [f"hydra/launcher={launcher}"]


def sweep_commands(args) -> list[tuple[str, list[str]]]:
    """(label, rl-train argv) per (env, algo): all its seeds and mappings in one sweep."""
    seeds = ",".join(str(s) for s in range(n_seeds(args)))
    cmds = []
    for env, algo, game in cells(args):
        label = f"{game or env}_{algo}"
        argv = ["-m", "+experiment=benchmark", f"env={env}", f"algo={algo}"]
        if game is not None:
            argv.append(f"env.id={env_id(env, game)}")
        argv += [f"total_steps={run_steps(args, env, algo, game)}",
                 f"policy={','.join(args.mappings)}", f"seed={seeds}",
                 *launcher_overrides(args.launcher, args.n_jobs),
                 f"hydra.sweep.dir={args.out / 'runs'}", *args.overrides]
        cmds.append((label, argv))
    return cmds


def run_sweeps(args) -> None:
    """Every sweep of the benchmark (`run_commands`)."""
    run_commands(sweep_commands(args), args.out, args.launcher, args.n_jobs, args.dry_run)


def run_commands(commands: list[tuple[str, list[str]]], out: Path, launcher: str, n_jobs: int,
                 dry_run: bool = False, tag: str = "benchmark") -> None:
    """Runs the rl-train sweeps ``(label, argv)``, `parallel` at a time, each logging to
    ``out/logs/<label>.log``; a non-zero exit stops the caller after the rest end."""
    cmds = [(label, [sys.executable, "-m", "rl.train", *argv]) for label, argv in commands]
    # Longest budgets first, so the last sweeps to start are short ones and the cores stay busy.
    cmds.sort(key=lambda c: -int(next(a for a in c[1] if a.startswith("total_steps="))[12:]))
    for label, cmd in cmds:
        print(f"[{tag}] {label}: {shlex.join(cmd)}", flush=True)
    if dry_run:
        return
    # population: each sweep is one process (its population); local: joblib runs n_jobs runs
    # of one sweep at once; SLURM: the sweeps only wait on their jobs.
    parallel = {"population": n_jobs, "local": 1}.get(launcher, len(cmds))
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(cmds), [], []
    while pending or running:
        while pending and len(running) < parallel:
            label, cmd = pending.pop(0)
            log = open(logs / f"{label.replace('/', '_')}.log", "a")
            running.append((label, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT),
                            log, time.time()))
        time.sleep(0.2)
        for item in list(running):
            label, proc, log, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            print(f"[{tag}] {label}: exit {proc.returncode} after {time.time() - t0:.0f} s "
                  f"(log {logs / (label.replace('/', '_') + '.log')})", flush=True)
            if proc.returncode != 0:
                failed.append(label)
    if failed:
        # RecordFailures keeps a failed run from sinking its sweep, so a non-zero exit is a
        # broken command (bad override, launcher or env missing).
        raise SystemExit(f"[{tag}] sweeps {failed} exited non-zero; see {logs}")


# ---------------------------------------------------------------------------------------------
# results


def collect(runs_dir: Path) -> pd.DataFrame:
    """One row per run under `runs_dir`: identity (config) and final numbers (summary.json)."""
    rows = []
    for run_dir in _runs.find_runs(runs_dir):
        cfg = _runs.read_config(run_dir)
        def get(key, default=None, cfg=cfg):
            return _runs.config_get(cfg, key, default)

        summary = _runs.read_summary(run_dir) or {}
        rows.append({
            "run": str(run_dir.relative_to(runs_dir)), "env": get("env.id"),
            "algo": get("algo.name"), "mapping": MAPPING_NAMES.get(get("policy.name"), get("policy.name")),
            "policy": get("policy.name"), "seed": int(get("seed", 0)),
            "budget": int(get("total_steps", 0)), "status": _runs.run_status(run_dir),
            "steps": summary.get("steps"), "final_return": summary.get("final_mean_return"),
            "eval_greedy": summary.get("eval_return_greedy"),
            "eval_sampled": summary.get("eval_return_sampled"),
            "solved_return": get("env.solved_return"), "solved_at_step": summary.get("solved_at_step"),
            "wall_time_s": summary.get("wall_time_s"),
        })
    return pd.DataFrame(rows)


def select(table: pd.DataFrame, args) -> pd.DataFrame:
    """This benchmark's finished runs (OUT/runs may hold other grids: more seeds, other budgets)."""
    if table.empty:
        return table
    want = {(env_id(e, g), a, run_steps(args, e, a, g)) for e, a, g in cells(args)}
    keep = [(r.env, r.algo, r.budget) in want for r in table.itertuples()]
    keep = np.array(keep, dtype=bool) & (table.seed < n_seeds(args)).to_numpy()
    keep &= table.policy.isin(args.mappings).to_numpy()
    # A diverged run is a result, not a missing one: it stays, at the return it had when it
    # stopped. Interrupted or running runs are resumable and wait.
    keep &= table.status.map(_runs.is_result).to_numpy(dtype=bool)
    return table[keep].reset_index(drop=True)


def with_normalized(table: pd.DataFrame, random_scores=None) -> pd.DataFrame:
    """Adds ``score`` (greedy eval return, else the final training return) and ``normalized``
    (random = 0, published = 1: `published.normalized`)."""
    table = table.copy()
    score = table.eval_greedy.astype(float).where(table.eval_greedy.notna(), table.final_return.astype(float))
    table["score"] = score
    table["normalized"] = [float(published.normalized(s, e, a, random_scores))
                           for s, e, a in zip(score, table.env, table.algo, strict=True)]
    return table


def _iqm_ci(values) -> tuple[float, float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    lo, hi = iqm_ci(v, reps=BOOT_REPS)
    return iqm(v), lo, hi


def suite_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per (env, algo, mapping): seeds, budget, IQM [95% CI] of training and greedy-eval final
    return, and the published reference."""
    rows = []
    order = {m: i for i, m in enumerate(MAPPING_NAMES.values())}
    for (env, algo, mapping, budget), g in table.groupby(["env", "algo", "mapping", "budget"]):
        tr = _iqm_ci(g.final_return.astype(float))
        ev = _iqm_ci(g.eval_greedy.astype(float))
        ref = published.reference(env, algo)
        # seeds whose mean of 100 training episodes reached the env's solved_return (none: no such bar)
        has_bar = "solved_return" in g and g.solved_return.notna().all()
        solved = int(g.solved_at_step.notna().sum()) if has_bar else None
        diverged = int((g.status == "diverged").sum()) if "status" in g else 0
        rows.append({"env": env, "algo": algo, "mapping": mapping, "budget": budget, "seeds": len(g),
                     "diverged": diverged, "solved": solved,
                     "train_iqm": tr[0], "train_ci_low": tr[1], "train_ci_high": tr[2],
                     "greedy_iqm": ev[0], "greedy_ci_low": ev[1], "greedy_ci_high": ev[2],
                     "published": None if ref is None else ref.value,
                     "published_std": None if ref is None else ref.std,
                     "published_budget": None if ref is None else ref.budget,
                     "published_eval": None if ref is None else ref.evaluation,
                     "source": "none" if ref is None else ref.source,
                     "note": "" if ref is None else ref.note, "_m": order.get(mapping, 99)})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values(["env", "algo", "_m"]).drop(columns="_m").reset_index(drop=True)


def _fmt_ci(m, lo, hi, digits: int = 1) -> str:
    if not np.isfinite(m):
        return "-"
    if not np.isfinite(lo):
        return f"{m:.{digits}f} (1 run)"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _fmt_steps(n) -> str:
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k"


def fmt_seeds(seeds: int, diverged: int) -> str:
    """The seeds cell: how many runs the row's numbers come from, and how many of them stopped
    as diverged (counted at the return they had then)."""
    return f"{seeds} ({diverged} diverged)" if diverged else f"{seeds}"


def write_suite_table(summary: pd.DataFrame, out: Path, suite: str) -> list[Path]:
    summary.to_csv(out / f"{suite}.csv", index=False)
    lines = ["| env | algo | mapping | budget | seeds | solved | training return IQM [95% CI] | "
             "greedy eval IQM [95% CI] | published (budget, evaluation) | source |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        if r.published is None or not np.isfinite(r.published):
            pub = "none" + (f" ({r.note})" if r.note else "")
        else:
            std = r.published_std
            std = "" if std is None or not np.isfinite(std) else f" ± {std:g}"
            pub = f"{r.published:g}{std} ({_fmt_steps(r.published_budget)}, {r.published_eval})"
        lines.append(f"| {r.env} | {r.algo} | {r.mapping} | {_fmt_steps(r.budget)} | "
                     f"{fmt_seeds(r.seeds, r.diverged)} | "
                     f"{'-' if pd.isna(r.solved) else f'{int(r.solved)}/{r.seeds}'} | "
                     f"{_fmt_ci(r.train_iqm, r.train_ci_low, r.train_ci_high)} | "
                     f"{_fmt_ci(r.greedy_iqm, r.greedy_ci_low, r.greedy_ci_high)} | {pub} | {r.source} |")
    (out / f"{suite}.md").write_text("\n".join(lines) + "\n")
    return [out / f"{suite}.md", out / f"{suite}.csv"]


def stratified_iqm_ci(groups, reps: int = BOOT_REPS, seed: int = 0) -> tuple[float, float, float]:
    """IQM of the runs of all tasks together and its stratified-bootstrap 95% CI (rliable's
    aggregate: each resample draws every task's runs with replacement within that task)."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    point = iqm(np.concatenate(groups))
    if sum(len(g) for g in groups) < 2 or all(len(g) < 2 for g in groups):
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    samples = np.concatenate([g[rng.integers(0, len(g), (reps, len(g)))] for g in groups], axis=1)
    from scipy.stats import trim_mean

    boots = trim_mean(samples, 0.25, axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return point, float(lo), float(hi)


def aggregate_table(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Normalized-score IQM per (algo, mapping) over tasks (envs with a normalization), and the
    probability of improvement of each mapping over each other (mean over tasks of the per-task
    P(X > Y), rliable's definition)."""
    t = table[np.isfinite(table.normalized.astype(float))]
    rows, poi = [], []
    for (algo, mapping), g in t.groupby(["algo", "mapping"]):
        groups = [h.normalized.to_numpy(float) for _, h in g.groupby("env")]
        m, lo, hi = stratified_iqm_ci(groups)
        rows.append({"algo": algo, "mapping": mapping, "tasks": len(groups), "runs": len(g),
                     "normalized_iqm": m, "ci_low": lo, "ci_high": hi})
    for algo, g in t.groupby("algo"):
        maps = list(dict.fromkeys(g.mapping))
        for x in maps:
            for y in maps:
                if x == y:
                    continue
                per_task = []
                for _, h in g.groupby("env"):
                    a, b = h[h.mapping == x].normalized, h[h.mapping == y].normalized
                    if len(a) and len(b):
                        per_task.append(probability_of_improvement(a, b))
                if per_task:
                    poi.append({"algo": algo, "x": x, "y": y, "tasks": len(per_task),
                                "p_x_better": float(np.mean(per_task))})
    return pd.DataFrame(rows), pd.DataFrame(poi)


def write_aggregate(agg: pd.DataFrame, poi: pd.DataFrame, out: Path, suite: str) -> list[Path]:
    agg.to_csv(out / f"{suite}_aggregate.csv", index=False)
    lines = ["Normalized score: (greedy eval return - random) / (published - random); "
             "IQM over all runs of all tasks, stratified-bootstrap 95% CI.", "",
             "| algo | mapping | tasks | runs | normalized IQM [95% CI] |", "|---|---|---|---|---|"]
    for r in agg.itertuples():
        lines.append(f"| {r.algo} | {r.mapping} | {r.tasks} | {r.runs} | "
                     f"{_fmt_ci(r.normalized_iqm, r.ci_low, r.ci_high, digits=2)} |")
    if not poi.empty:
        lines += ["", "Probability of improvement P(X > Y) (mean over tasks):", "",
                  "| algo | X | Y | tasks | P(X > Y) |", "|---|---|---|---|---|"]
        lines += [f"| {r.algo} | {r.x} | {r.y} | {r.tasks} | {r.p_x_better:.2f} |" for r in poi.itertuples()]
    (out / f"{suite}_aggregate.md").write_text("\n".join(lines) + "\n")
    return [out / f"{suite}_aggregate.md", out / f"{suite}_aggregate.csv"]


def plot_curves(table: pd.DataFrame, runs_dir: Path, out: Path, suite: str, formats,
                bins: int = 30) -> list[Path]:
    """Training return over env steps: rows env, columns algo, one line per mapping (mean over
    seeds, 95% bootstrap band)."""
    from rl.analysis.figures import _figure, binned_curves, save, suptitle
    from rl.analysis.stats import mean_band

    frames = []
    for r in table.itertuples():
        steps, values = _runs.scalar_series(runs_dir / r.run, [RETURN_TAG])[RETURN_TAG]
        frames.append(pd.DataFrame({"run": r.run, "step": steps, "value": values, "tag": RETURN_TAG}))
    if not frames:
        return []
    curves_df = pd.concat(frames, ignore_index=True)
    envs, algos = sorted(table.env.unique()), sorted(table.algo.unique())
    fig, axes = _figure(len(envs), len(algos), (4.8 * len(algos), 3.2 * len(envs)))
    for i, env in enumerate(envs):
        for j, algo in enumerate(algos):
            ax = axes[i, j]
            sub = table[(table.env == env) & (table.algo == algo)]
            centres, curves = binned_curves(curves_df[curves_df.run.isin(sub.run)], RETURN_TAG, bins)
            for k, mapping in enumerate(m for m in MAPPING_NAMES.values() if m in set(sub.mapping)):
                cs = [curves[r] for r in sub[sub.mapping == mapping].run if r in curves]
                if not cs:
                    continue
                mean, lo, hi = mean_band(cs, 1000)
                few = np.isfinite(mean).sum() < 3  # a run of one or two rollouts: show the points
                ax.plot(centres, mean, color=f"C{k}", marker="o" if few else None,
                        label=f"{mapping} (n={len(cs)})")
                ax.fill_between(centres, lo, hi, color=f"C{k}", alpha=0.2, lw=0)
            ref = published.reference(env, algo)
            if ref is not None and ref.value is not None:
                ax.axhline(ref.value, color="k", ls=":", lw=1,
                           label=f"published {ref.value:g} at {_fmt_steps(ref.budget)}")
            ax.set_title(f"{env} — {algo}", fontsize=10)
            ax.set_xlabel("env steps")
            ax.set_ylabel("training episodic return")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    suptitle(fig, f"{suite}: training return (mean over seeds, 95% bootstrap band)")
    fig.set_layout_engine("constrained")
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    return save(fig, figures, f"{suite}_curves", formats)


def report(args) -> list[Path]:
    """Tables, aggregate and figures of what OUT/runs holds for this grid."""
    runs_dir = args.out / "runs"
    if not runs_dir.is_dir():
        raise SystemExit(f"{runs_dir} does not exist: nothing trained yet")
    everything = collect(runs_dir)
    table = select(everything, args)
    if table.empty:
        raise SystemExit(f"{runs_dir} holds no finished run of this grid")
    table = with_normalized(table)
    written = []
    table.sort_values(["env", "algo", "mapping", "seed"]).to_csv(args.out / "runs.csv", index=False)
    written.append(args.out / "runs.csv")
    written += write_suite_table(suite_table(table), args.out, args.suite)
    agg, poi = aggregate_table(table)
    written += write_aggregate(agg, poi, args.out, args.suite)
    written += plot_curves(table, runs_dir, args.out, args.suite, args.formats)
    meta = {"suite": args.suite, "seeds": n_seeds(args), "mappings": args.mappings,
            "budgets": {f"{env_id(e, g)}/{a}": run_steps(args, e, a, g) for e, a, g in cells(args)},
            "runs": len(table), "unfinished_or_other_grid": int(len(everything) - len(table)),
            # where the report was written: the training machine unless tabulated elsewhere
            "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "report_machine": machine_info(packages=("gymnasium", "minatar", "ale-py"))}
    (args.out / "benchmark.json").write_text(json.dumps(meta, indent=2) + "\n")
    written.append(args.out / "benchmark.json")
    for p in written:
        print(f"[benchmark] wrote {p}", flush=True)
    return written


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="reproduce.py benchmark", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--suite", default="classic", help=f"one of {', '.join(SUITES)}")
    ap.add_argument("--envs", nargs="+", default=None, help="subset of the suite's envs (conf/env names)")
    ap.add_argument("--games", nargs="+", default=[], help="atari: games (ALE/<Game>-v5), e.g. Pong Breakout")
    ap.add_argument("--algos", default=None, help="comma-separated (default: the suite's, ppo,a2c or ppo)")
    ap.add_argument("--mappings", default="softmax",
                    help="comma-separated of softmax, entmax15, sparsemax, or 'all'")
    ap.add_argument("--seeds", type=int, default=None,
                    help=f"seeds per cell (default {DEFAULT_SEEDS}; --full: {FULL_SEEDS})")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the default steps")
    ap.add_argument("--steps", type=int, default=None, help="env steps of every run (overrides --scale)")
    ap.add_argument("--full", action="store_true", help="the published budgets and seeds")
    ap.add_argument("--launcher", default="population", help=f"one of {', '.join(LAUNCHERS)}")
    ap.add_argument("--n-jobs", type=int, default=2, help="sweeps (populations) or runs at once")
    ap.add_argument("--out", type=Path, default=None,
                    help="output directory (default multirun/benchmark_<suite>)")
    ap.add_argument("--formats", nargs="+", default=["png"], choices=["png", "pdf", "svg"])
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--no-train", action="store_true", help="only tabulate and plot what OUT/runs holds")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every rl-train call")
    args = ap.parse_intermixed_args(argv)
    if args.suite not in SUITES:
        raise ValueError(f"--suite must be one of {list(SUITES)}; got {args.suite!r}")
    if args.launcher not in LAUNCHERS:
        raise ValueError(f"--launcher must be one of {list(LAUNCHERS)}; got {args.launcher!r}")
    args.mappings = list(MAPPINGS) if args.mappings == "all" else args.mappings.split(",")
    bad = [m for m in args.mappings if m not in MAPPINGS]
    if bad or not args.mappings:
        raise ValueError(f"--mappings must be 'all' or a comma-separated subset of {list(MAPPINGS)}; "
                         f"got {','.join(args.mappings)!r}")
    allowed = SUITE_ALGOS[args.suite]
    args.algos = list(allowed) if args.algos is None else args.algos.split(",")
    if not args.algos or any(a not in allowed for a in args.algos):
        raise ValueError(f"--algos must be a comma-separated subset of {list(allowed)} for suite "
                         f"{args.suite!r}; got {','.join(args.algos)!r}")
    if args.envs is None:
        args.envs = list(SUITES[args.suite])
    elif any(e not in SUITES[args.suite] for e in args.envs):
        raise ValueError(f"--envs must be a subset of {list(SUITES[args.suite])} for suite "
                         f"{args.suite!r}; got {args.envs}")
    if args.suite == "atari" and not args.games:
        raise ValueError("--games must name at least one game for suite 'atari' (e.g. --games Pong); "
                         "got none")
    if args.suite != "atari" and args.games:
        raise ValueError(f"--games is for suite 'atari' only; got {args.games} with suite {args.suite!r}")
    if not args.scale > 0:
        raise ValueError(f"--scale must be > 0; got {args.scale}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1; got {args.steps}")
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {args.seeds}")
    if args.n_jobs < 1:
        raise ValueError(f"--n-jobs must be >= 1; got {args.n_jobs}")
    if args.full and (args.steps is not None or args.scale != 1.0):
        raise ValueError(f"--full sets the published budgets: it takes no --steps/--scale; got "
                         f"--steps {args.steps}, --scale {args.scale}")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be Hydra key=value pairs; got {bad}")
    for env, algo, _ in cells(args):
        _preset(env, algo)  # a missing preset is an error now, not after training
    if args.out is None:
        args.out = ROOT / "multirun" / f"benchmark_{args.suite}"
    args.out = args.out.resolve()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_train:
        run_sweeps(args)
    if args.dry_run:
        return 0
    report(args)
    return 0
