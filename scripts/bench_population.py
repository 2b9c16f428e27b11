"""Population training against one process per run, on this machine, side by side.

Three measurements (each writes its part of one JSON, machine and library versions included):

``sweep``   the CartPole slice of the entropy ablation, beta {0, 0.001, 0.01, 0.1} x {softmax,
            entmax-1.5, sparsemax} x 5 seeds x 100k steps (60 runs), run twice by the very same
            command a user types, timed from process launch:
              rl-train -m +experiment=entropy_ablation env=cartpole hydra/launcher=population
              rl-train -m +experiment=entropy_ablation env=cartpole hydra/launcher=local  (joblib, 2 jobs)
            then the per-cell final-return IQM with its 95% bootstrap interval for both, and
            whether each population IQM lies inside the one-process-per-run interval. The per-run
            numbers go to a CSV next to the JSON.
``single``  a single default run (a population of one) against another source tree of this
            project (``--before SRC``, e.g. a ``git worktree`` of the commit before populations),
            seeds interleaved: env steps and seconds to solve, process wall time.
``phases``  where a population's time goes: a population of K CartPole members (default config)
            timed by a callback into rollout collection (env steps, sampling, episode hooks) and
            the update (epochs of stacked forward, backward and optimizer steps, with the update's
            logging hooks), for K = 1 and K = 30 (one of the two populations the ``sweep`` above
            forms); then the sweep's time on 2 cores extrapolated from the per-iteration costs,
            beside the 60 separate runs of K = 1 that joblib would run: the arithmetic floor of
            the 60-run sweep and the ratio it allows.
``sps``     env steps per second of populations of 1, 4, 16 and 64 members (every member its
            own seed) on CartPole and on MinAtar Breakout: where the gain saturates. Overrides
            after ``--`` pick the algo (``algo=sac``: the CartPole SAC preset). With ``--before
            SRC`` the same populations also run on another source tree (e.g. ``git archive`` of
            the commit before SAC populations, whose train_population trained SAC runs one after
            another), each measurement in a fresh process.

    .venv/bin/python scripts/bench_population.py sweep
    .venv/bin/python scripts/bench_population.py single --before /tmp/before --seeds 5
    .venv/bin/python scripts/bench_population.py phases --members 1 30
    .venv/bin/python scripts/bench_population.py sps --members 1 4 16 64
    .venv/bin/python scripts/bench_population.py sps --env minatar_breakout --steps 20000
    .venv/bin/python scripts/bench_population.py sps --members 1 4 16 --before /tmp/before -- algo=sac

Timings on a shared machine are noisy: compare numbers of one run of this script, not across
files. Results: benchmarks/results/population_<date>.json (and .csv for the sweep).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GRID = {"seed": "0,1,2,3,4", "policy": "softmax,entmax15,sparsemax", "beta": "0,0.001,0.01,0.1"}


def _rl_train() -> list[str]:
    exe = Path(sys.executable).with_name("rl-train")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "rl.train"]


def _load(out: Path) -> dict:
    return json.loads(out.read_text()) if out.is_file() else {}


def _save(out: Path, data: dict) -> None:
    from rl.analysis.machine import machine_info
    from rl.checkpoint import write_json

    data["machine"] = machine_info()
    write_json(out, data)


# ------------------------------------------------------------------------------------- sweep
def _sweep(launcher: str, sweep_dir: Path, steps: int, extra: list[str]) -> float:
    grid = [f"{k}={v}" for k, v in GRID.items()]
    cmd = [*_rl_train(), "-m", "+experiment=entropy_ablation", "env=cartpole", f"total_steps={steps}",
           f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}", *grid, *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{launcher} sweep failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def _finals(sweep_dir: Path) -> list[dict]:
    rows = []
    for summary in sorted(sweep_dir.glob("*/summary.json")):
        s = json.loads(summary.read_text())
        rows.append({"run": summary.parent.name, "seed": s["seed"], "policy": s["policy"],
                     "beta": s["beta"], "status": s["status"], "steps": s["steps"],
                     "final_mean_return": s["final_mean_return"], "wall_time_s": s["wall_time_s"],
                     "population_size": s.get("population_size", 1)})
    return rows


def _cells(rows: list[dict]) -> dict[str, dict]:
    from rl.analysis.stats import iqm, iqm_ci

    cells: dict[str, list[float]] = {}
    for r in rows:
        cells.setdefault(f"{r['policy']} beta={r['beta']:g}", []).append(r["final_mean_return"])
    out = {}
    for cell, values in sorted(cells.items()):
        lo, hi = iqm_ci(values)
        out[cell] = {"n": len(values), "iqm": iqm(values), "ci95": [lo, hi]}
    return out


def run_sweep(args) -> dict:
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-population-"))
    result = {"grid": GRID, "total_steps": args.steps, "launchers": {}}
    walls = {}
    for name, launcher, extra in (
        ("population", "population", [f"hydra.launcher.n_jobs={args.jobs}"]),
        ("joblib", "local", [f"hydra.launcher.n_jobs={args.jobs}"]),
    ):
        d = work / name
        if d.exists():
            shutil.rmtree(d)
        walls[name] = _sweep(launcher, d, args.steps, extra)
        rows = _finals(d)
        if len(rows) != 60 or any(r["status"] != "completed" for r in rows):
            raise SystemExit(f"{name}: {len(rows)} summaries, statuses {sorted({r['status'] for r in rows})}")
        result["launchers"][name] = {"wall_s": walls[name], "runs": len(rows), "cells": _cells(rows)}
        with open(args.csv, "a" if name != "population" else "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["launcher", *rows[0].keys()])
            if name == "population":
                w.writeheader()
            for r in rows:
                w.writerow({"launcher": name, **r})
        print(f"{name}: {walls[name]:.1f} s for {len(rows)} runs", flush=True)
    pop, job = result["launchers"]["population"]["cells"], result["launchers"]["joblib"]["cells"]
    inside = {c: job[c]["ci95"][0] <= pop[c]["iqm"] <= job[c]["ci95"][1] for c in job}
    result["speedup"] = walls["joblib"] / walls["population"]
    result["population_iqm_inside_joblib_ci"] = inside
    result["cells_inside"] = sum(inside.values())
    return result


# ------------------------------------------------------------------------------------ single
def _one_run(src: Path, seed: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "rl.train", "progress=false", f"seed={seed}",
               f"hydra.run.dir={tmp}/run", *overrides]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{src} seed {seed} failed:\n{proc.stderr[-2000:]}")
        s = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    return {"seed": seed, "process_wall_s": wall, "train_wall_s": s["wall_time_s"],
            "solved_at_step": s["solved_at_step"], "solved_at_seconds": s["solved_at_seconds"],
            "final_mean_return": s["final_mean_return"]}


def run_single(args) -> dict:
    import statistics

    trees = {"population_of_one": ROOT}
    if args.before:
        trees["before"] = Path(args.before).resolve()
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for seed in range(args.seeds):  # interleaved: both trees see the same machine load
        for name, src in trees.items():
            r = _one_run(src, seed, args.overrides)
            runs[name].append(r)
            print(name, r, flush=True)

    def med(rows, key):
        vals = [r[key] for r in rows if r[key] is not None]
        return None if not vals else {"median": statistics.median(vals), "min": min(vals),
                                      "max": max(vals), "n": len(vals)}

    return {"trees": {k: str(v) for k, v in trees.items()}, "overrides": args.overrides,
            "runs": runs,
            "summary": {name: {key: med(rows, key) for key in ("solved_at_step", "solved_at_seconds",
                                                                 "train_wall_s", "process_wall_s")}
                        for name, rows in runs.items()}}


# --------------------------------------------------------------------------------------- sps
_SPS_ONCE = """
import json, sys, tempfile, time
from pathlib import Path
import torch
from hydra import compose, initialize_config_dir
from rl.population import Member, train_population
from rl.train import CONF_DIR

env, k, steps, overrides = json.loads(sys.argv[1])
torch.set_num_threads(1)
with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(CONF_DIR, version_base=None):
    members = [Member(compose("config", [f"env={env}", f"seed={i}", f"total_steps={steps}", "progress=false",
                                         "checkpoint_interval=0", "histogram_interval=0", "eval.episodes=0",
                                         *overrides]), Path(tmp) / str(i)) for i in range(k)]
    t0 = time.perf_counter()
    summaries = train_population(members)
    wall = time.perf_counter() - t0
print(json.dumps({"wall_s": wall, "env_steps": sum(s["steps"] for s in summaries),
                  "population_size": [s["population_size"] for s in summaries]}))
"""


def _in_fresh_process(src: Path, code: str, args: list, what: str) -> dict:
    """Runs ``code`` with the source tree ``src`` in a new interpreter (``args`` as JSON in
    argv[1]); its last stdout line, parsed as JSON."""
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=src,
                          env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{src}: {what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sps_once(src: Path, env: str, k: int, steps: int, overrides: list[str]) -> dict:
    """One population of ``k`` members trained by the source tree ``src`` in a fresh process."""
    r = _in_fresh_process(src, _SPS_ONCE, [env, k, steps, overrides], f"K={k}")
    r.update(sps=r["env_steps"] / r["wall_s"], sps_per_member=r["env_steps"] / r["wall_s"] / k)
    return r


_PHASES_ONCE = """
import json, sys, tempfile, time
from pathlib import Path
import torch
from hydra import compose, initialize_config_dir
from rl.callbacks import Callback
from rl.population import Member, train_population
from rl.train import CONF_DIR

env, k, steps, overrides = json.loads(sys.argv[1])
torch.set_num_threads(1)

class Phases(Callback):  # last in the callback list: an interval includes the hooks before it
    def __init__(self):
        self.t = None; self.collect = []; self.update = []
    def on_train_start(self, trainer):
        self.t = time.perf_counter()
        self.rollout_steps = int(trainer.algo.n_steps) * trainer.N  # one member's rollout
        self.n_minibatch_steps = (int(trainer.algo.update_epochs)
                                  * -(-self.rollout_steps // int(trainer.algo.batch_size)))
    def on_rollout_end(self, trainer):
        now = time.perf_counter(); self.collect.append(now - self.t); self.t = now
    def on_update_end(self, trainer, metrics):
        now = time.perf_counter(); self.update.append(now - self.t); self.t = now

ph = Phases()
with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(CONF_DIR, version_base=None):
    members = [Member(compose("config", [f"env={env}", f"seed={i}", f"total_steps={steps}",
                                         "progress=false", "checkpoint_interval=0", "histogram_interval=0",
                                         "eval.episodes=0", *overrides]), Path(tmp) / str(i))
               for i in range(k)]
    t0 = time.perf_counter()
    summaries = train_population(members, callbacks=[ph])
    wall = time.perf_counter() - t0
print(json.dumps({"wall_s": wall, "iterations": len(ph.update), "collect_s": sum(ph.collect),
                  "update_s": sum(ph.update), "minibatch_steps_per_update": ph.n_minibatch_steps,
                  "rollout_steps_per_member": ph.rollout_steps,
                  "env_steps": sum(s["steps"] for s in summaries)}))
"""


def run_phases(args) -> dict:
    """Per-iteration collect and update seconds for each population size, and the 60-run sweep's
    time extrapolated from them (both launchers, ``jobs`` processes)."""
    out = {"env": args.env, "steps_per_member": args.steps, "overrides": args.overrides,
           "sweep_runs": args.sweep_runs, "sweep_steps": args.sweep_steps, "jobs": args.jobs,
           "by_members": {}}
    for k in args.members:
        r = _in_fresh_process(ROOT, _PHASES_ONCE, [args.env, k, args.steps, args.overrides], f"K={k}")
        n = max(r["iterations"], 1)
        r["collect_ms_per_iteration"] = 1e3 * r["collect_s"] / n
        r["update_ms_per_iteration"] = 1e3 * r["update_s"] / n
        r["ms_per_minibatch_step"] = r["update_ms_per_iteration"] / r["minibatch_steps_per_update"]
        # The sweep: sweep_runs runs of sweep_steps each, in populations of k (k = 1: one process
        # per run, as joblib runs them), `jobs` processes at once.
        iters = args.sweep_steps / r["rollout_steps_per_member"]
        populations = -(-args.sweep_runs // k)
        per_population = iters * (r["collect_s"] + r["update_s"]) / n
        r["sweep_estimate"] = {
            "populations": populations, "seconds_per_population": per_population,
            "update_seconds_per_population": iters * r["update_s"] / n,
            "wall_s": per_population * -(-populations // args.jobs)}
        out["by_members"][str(k)] = r
        e = r["sweep_estimate"]
        update_wall = e["update_seconds_per_population"] * -(-populations // args.jobs)
        print(f"K={k}: collect {r['collect_ms_per_iteration']:.1f} ms + update "
              f"{r['update_ms_per_iteration']:.1f} ms per iteration ({r['ms_per_minibatch_step']:.2f} ms "
              f"per minibatch step); sweep of {args.sweep_runs} on {args.jobs} processes: "
              f"{e['wall_s']:.0f} s, of which update {update_wall:.0f} s", flush=True)
    return out


def run_sps(args) -> dict:
    out = {"env": args.env, "steps_per_member": args.steps, "overrides": args.overrides, "by_members": {}}
    trees = {"this": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    if args.before:
        out["before"] = str(args.before)
        out["by_members_before"] = {}
    for k in args.members:
        for name, src in trees.items():  # interleaved, so a load change hits both alike
            if name == "before" and args.before_members and k not in args.before_members:
                continue
            r = _sps_once(src, args.env, k, args.steps, args.overrides)
            out["by_members" if name == "this" else "by_members_before"][str(k)] = r
            print(f"{args.env} {name} K={k}: {r['sps']:,.0f} SPS ({r['wall_s']:.1f} s; population sizes "
                  f"{sorted(set(r['population_size']))})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    date = _dt.date.today().isoformat()
    default_out = RESULTS / f"population_{date}.json"
    s = sub.add_parser("sweep", help="60-run CartPole ablation: population vs joblib launcher")
    s.add_argument("--steps", type=int, default=100_000)
    s.add_argument("--jobs", type=int, default=2, help="parallel processes of each launcher")
    s.add_argument("--work", type=Path, default=None, help="where the two sweeps write (default: a temp dir)")
    s.add_argument("--csv", type=Path, default=RESULTS / f"population_sweep_{date}.csv")
    g = sub.add_parser("single", help="one default run against another source tree")
    g.add_argument("--before", type=Path, default=None)
    g.add_argument("--seeds", type=int, default=5)
    g.add_argument("overrides", nargs="*")
    f = sub.add_parser("phases", help="collect vs update time per iteration; the sweep's floor")
    f.add_argument("--env", default="cartpole")
    f.add_argument("--members", type=int, nargs="+", default=[1, 30])
    f.add_argument("--steps", type=int, default=25_600, help="env steps per member")
    f.add_argument("--sweep-runs", type=int, default=60)
    f.add_argument("--sweep-steps", type=int, default=100_000)
    f.add_argument("--jobs", type=int, default=2)
    f.add_argument("overrides", nargs="*")
    p = sub.add_parser("sps", help="SPS of populations of growing size")
    p.add_argument("--env", default="cartpole")
    p.add_argument("--members", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--steps", type=int, default=20_000, help="env steps per member")
    p.add_argument("--before", type=Path, default=None, help="another source tree to run the same on")
    p.add_argument("--before-members", type=int, nargs="*", default=None,
                   help="population sizes to run on --before (default: all of --members)")
    p.add_argument("overrides", nargs="*")
    for q in (s, g, f, p):
        q.add_argument("--out", type=Path, default=default_out)
    args = ap.parse_args()
    if getattr(args, "overrides", None) and args.overrides[:1] == ["--"]:
        args.overrides = args.overrides[1:]
    data = _load(args.out)
    if args.what == "sweep":
        data["sweep"] = run_sweep(args)
    elif args.what == "single":
        data["single"] = run_single(args)
    elif args.what == "phases":
        data["phases"] = run_phases(args)
    else:
        key = args.env + "".join(f" {o}" for o in args.overrides if o.startswith("algo="))
        data.setdefault("sps", {})[key] = run_sps(args)
    _save(args.out, data)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
