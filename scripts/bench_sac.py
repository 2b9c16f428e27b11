"""Discrete SAC (softmax, entmax-1.5, sparsemax) against Stable-Baselines3 DQN at
rl-baselines3-zoo's settings, the same env-step budget for both (issue 14).

    .venv/bin/python scripts/bench_sac.py                              # CartPole-v1, 100k steps, 5 seeds
    .venv/bin/python scripts/bench_sac.py --envs lunarlander           # LunarLander-v3, 500k steps
    .venv/bin/python scripts/bench_sac.py --envs minatar_breakout      # MinAtar Breakout, 2M steps
    .venv/bin/python scripts/bench_sac.py --envs lunarlander --steps 5000 --seeds 1 --out /tmp/smoke
    .venv/bin/python scripts/bench_sac.py --envs lunarlander --impl sac --first-seed 5   # seeds 5-9
    .venv/bin/python scripts/bench_sac.py --no-train                   # tables of what OUT holds
    .venv/bin/python scripts/bench_sac.py --dry-run                    # the commands only
    .venv/bin/python scripts/bench_sac.py --combine A.json B.json --results C.json  # one table

Cells (``--envs``): ``cartpole`` (CartPole-v1, 100k steps, solved: mean of 100 training
episodes >= 475), ``lunarlander`` (LunarLander-v3, 500k, >= 200), ``minatar_breakout``
(MinAtar/Breakout-v1, 2M, no bar: the return is reported). Per cell:

* ours: one ``rl-train -m +experiment=benchmark env=E algo=sac total_steps=T seed=0,..
  policy=softmax,entmax15,sparsemax hydra/launcher=population`` (the preset
  conf/preset/<env>_sac.yaml). The sweep's runs form one population, trained as one batched
  computation (rl/sac.py), each member writing its ``summary.json`` at the end. Re-running skips
  finished runs and resumes interrupted ones.
* SB3 DQN with the zoo's hyper-parameters for the env (``DQN`` below, each naming its source),
  one subprocess per seed with one torch thread, its result written to
  ``OUT/dqn/<env>_<steps>/seed<k>.json`` as it ends; a seed whose file exists is skipped.

The cells run one after another, ours first, then DQN, one process at a time (one core).
Reported per run: the mean of the last 100 training episodes at the end, the env step at which
that mean first reached the bar, wall seconds of training, and the greedy evaluation return (10
episodes at the end: ours from ``summary.json``, ``eval.episodes=10`` of the benchmark
experiment; DQN ``deterministic=True`` on a fresh env). Per (env, method): seeds that reached the
bar, median steps to reach it, IQM [95% bootstrap CI] over seeds of the final training and
greedy returns (rl/analysis/stats.py), median wall seconds. A run that stopped as diverged
counts among the seeds at the returns it had when it stopped (its ``status`` and ``steps`` in
the per-run CSV), and at the greedy return of its last checkpoint (rl/evaluation.py), as in
rl/analysis/benchmark.py.

Outputs: ``OUT/`` holds the runs (``OUT/runs``, ``OUT/dqn``, ``OUT/logs``); the results go to
``--results`` (default ``benchmarks/results/sac_<date>.json``, with the machine, the commands,
both hyper-parameter sets, the per-run rows and the table) and a per-run CSV next to it
(``sac_<date>_runs.csv``); the markdown table is printed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MAPPINGS = ("softmax", "entmax15", "sparsemax")
SAC = "entropy-rl SAC"  # the method column of our runs
MAPPING_NAMES = {"softmax": "softmax", "entmax15": "entmax-1.5", "sparsemax": "sparsemax"}
WINDOW = 100          # training episodes in the final and the solved mean
EVAL_EPISODES = 10    # greedy episodes at the end (ours: conf/experiment/benchmark.yaml)

# Per cell: Gymnasium id, budget (env steps, the same for both), the bar on the mean of the last
# 100 training episodes (None: report the return only).
CELLS = {
    "cartpole": dict(env_id="CartPole-v1", steps=100_000, solved=475.0),
    "lunarlander": dict(env_id="LunarLander-v3", steps=500_000, solved=200.0),
    "minatar_breakout": dict(env_id="MinAtar/Breakout-v1", steps=2_000_000, solved=None),
}

ZOO_DQN = ("rl-baselines3-zoo hyperparams/dqn.yml (github.com/DLR-RM/rl-baselines3-zoo, "
           "commit ce95481b041fe5314c1b2f1a53940d169b9253fc)")
# SB3 DQN keyword arguments, and the zoo's n_timesteps (its exploration schedule is a fraction
# of that: `exploration_steps` keeps the zoo's epsilon decay in env steps at any budget, so a
# longer budget does not stretch the random phase).
DQN = {
    # zoo entry CartPole-v1 ("Almost Tuned"), n_timesteps 5e4
    "cartpole": dict(source=f"{ZOO_DQN}, entry CartPole-v1", zoo_timesteps=50_000, kwargs=dict(
        learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
        target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
        exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]))),
    # zoo entry LunarLander-v2 ("Tuned"; v3 fixed bugs of the v2 physics, the same task), 1e5
    "lunarlander": dict(source=f"{ZOO_DQN}, entry LunarLander-v2", zoo_timesteps=100_000, kwargs=dict(
        learning_rate=6.3e-4, batch_size=128, buffer_size=50_000, learning_starts=0, gamma=0.99,
        target_update_interval=250, train_freq=4, gradient_steps=-1, exploration_fraction=0.12,
        exploration_final_eps=0.1, policy_kwargs=dict(net_arch=[256, 256]))),
    # zoo entry atari (n_timesteps 1e7) adapted to MinAtar: the MinAtar CNN of Young & Tian 2019
    # (this project's, rl/networks.py) in place of the Nature CNN, which needs >= 36x36 frames,
    # and no AtariWrapper or frame stack (MinAtar has neither). `optimize_memory_usage` dropped
    # (SB3 refuses it with the timeout handling it turns off; a 10x10 grid buffer is small).
    "minatar_breakout": dict(source=f"{ZOO_DQN}, entry atari, adapted", zoo_timesteps=10_000_000,
                             kwargs=dict(
        learning_rate=1e-4, batch_size=32, buffer_size=10_000, learning_starts=100_000, gamma=0.99,
        target_update_interval=1000, train_freq=4, gradient_steps=1, exploration_fraction=0.1,
        exploration_final_eps=0.01, policy_kwargs=dict(net_arch=[], minatar_cnn=True))),
}


# ------------------------------------------------------------------------------------- the grid
def budget(args, env: str) -> int:
    return args.steps if args.steps is not None else CELLS[env]["steps"]


def seeds(args) -> range:
    """The seeds of each method: ``--first-seed`` .. ``--first-seed + --seeds - 1``."""
    return range(args.first_seed, args.first_seed + args.seeds)


def sac_command(args, env: str) -> list[str]:
    """rl-train argv of our cell: seeds first, so a cut-short sweep holds whole seeds."""
    return [sys.executable, "-m", "rl.train", "-m", "+experiment=benchmark", f"env={env}", "algo=sac",
            f"total_steps={budget(args, env)}", f"seed={','.join(map(str, seeds(args)))}",
            f"policy={','.join(args.mappings)}", "hydra/launcher=population",
            "hydra.launcher.n_jobs=1", f"hydra.sweep.dir={args.out / 'runs'}", *args.overrides]


def dqn_path(args, env: str, seed: int) -> Path:
    return args.out / "dqn" / f"{env}_{budget(args, env)}" / f"seed{seed}.json"


def dqn_kwargs(env: str, steps: int, sb3_overrides: dict) -> dict:
    """SB3 DQN arguments for `steps`: the zoo's, epsilon decay kept at the zoo's env steps."""
    spec = DQN[env]
    kw = dict(spec["kwargs"], policy_kwargs=dict(spec["kwargs"]["policy_kwargs"]))
    decay_steps = kw["exploration_fraction"] * spec["zoo_timesteps"]
    kw["exploration_fraction"] = min(1.0, decay_steps / steps)
    kw.update(sb3_overrides)
    return kw


# ------------------------------------------------------------------------------ one DQN run
def _minatar_extractor():
    """SB3 features extractor around this project's MinAtar CNN body (rl/networks.py)."""
    import gymnasium as gym
    import torch.nn as nn
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    from rl.networks import _minatar_cnn, _Preprocess

    class MinAtarCNN(BaseFeaturesExtractor):
        def __init__(self, observation_space: gym.spaces.Box):
            pre = _Preprocess(observation_space, "minatar_cnn")
            layers, width = _minatar_cnn(observation_space, pre.channels_last)
            super().__init__(observation_space, width)
            self.pre, self.body = pre, nn.Sequential(*layers)

        def forward(self, obs):
            return self.body(self.pre(obs))

    return MinAtarCNN


def run_dqn(env: str, seed: int, steps: int, sb3_overrides: dict) -> dict:
    """One SB3 DQN run in this process: training episodes, solve step, greedy evaluation."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from stable_baselines3 import DQN as SB3DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    from rl.envs import _find_spec  # registers MinAtar ids as rl-train does

    cell = CELLS[env]
    env_id = _find_spec(cell["env_id"], atari=False).id
    solved = cell["solved"]

    class Episodes(BaseCallback):
        def __init__(self):
            super().__init__()
            self.returns: list[float] = []
            self.solved_at: int | None = None

        def _on_step(self) -> bool:
            if self.num_timesteps % progress_every == 0:  # a long run's log shows it going
                last = self.returns[-WINDOW:]
                print(f"[dqn] {env} seed {seed}: step {self.num_timesteps}/{steps}, {len(self.returns)} "
                      f"episodes, mean of the last {len(last)} "
                      f"{float(np.mean(last)) if last else float('nan'):.2f}, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(float(info["episode"]["r"]))
                    if (solved is not None and self.solved_at is None and len(self.returns) >= WINDOW
                            and np.mean(self.returns[-WINDOW:]) >= solved):
                        self.solved_at = int(self.num_timesteps)
            return True

    kw = dqn_kwargs(env, steps, sb3_overrides)
    policy_kwargs = dict(kw.pop("policy_kwargs"))
    if policy_kwargs.pop("minatar_cnn", False):
        policy_kwargs["features_extractor_class"] = _minatar_extractor()
    vec = make_vec_env(env_id, n_envs=1, seed=seed)
    model = SB3DQN("MlpPolicy", vec, policy_kwargs=policy_kwargs, seed=seed, device="cpu", **kw)
    cb = Episodes()
    progress_every = max(steps // 20, 1000)
    t0 = time.perf_counter()
    model.learn(steps, callback=cb)
    wall = time.perf_counter() - t0
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    greedy, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True,
                                return_episode_rewards=True)
    vec.close()
    eval_env.close()
    last = cb.returns[-WINDOW:]
    return {"env": cell["env_id"], "method": "SB3 DQN", "mapping": "-", "seed": seed, "budget": steps,
            "steps": int(model.num_timesteps), "episodes": len(cb.returns),
            "final_return": float(np.mean(last)) if last else None, "solved_at_step": cb.solved_at,
            "eval_greedy": float(np.mean(greedy)), "wall_time_s": wall,
            "hyperparameters": {k: v for k, v in dqn_kwargs(env, steps, sb3_overrides).items()}}


# ------------------------------------------------------------------------------------ running
def _log_run(cmd: list[str], log: Path, dry_run: bool) -> int:
    print(f"[bench_sac] {shlex.join(cmd)}  (log {log})", flush=True)
    if dry_run:
        return 0
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    t0 = time.time()
    with open(log, "a") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    print(f"[bench_sac] exit {rc} after {time.time() - t0:.0f} s", flush=True)
    return rc


def train(args) -> None:
    for env in args.envs:
        if args.impl in ("both", "sac"):
            rc = _log_run(sac_command(args, env), args.out / "logs" / f"{env}_sac.log", args.dry_run)
            if rc != 0:  # RecordFailures keeps failed runs from sinking a sweep: a broken command
                raise SystemExit(f"[bench_sac] the {env} SAC sweep exited with {rc}; see its log")
        if args.impl in ("both", "dqn"):
            for seed in seeds(args):
                path = dqn_path(args, env, seed)
                if path.is_file():
                    print(f"[bench_sac] {path} exists: skipped", flush=True)
                    continue
                cmd = [sys.executable, str(Path(__file__).resolve()), "--_dqn", env, str(seed),
                       str(budget(args, env)), "--_to", str(path),
                       *(f"--sb3={k}={json.dumps(v)}" for k, v in args.sb3.items())]
                rc = _log_run(cmd, args.out / "logs" / f"{env}_dqn.log", args.dry_run)
                if rc != 0:
                    raise SystemExit(f"[bench_sac] DQN {env} seed {seed} exited with {rc}; see its log")


# ------------------------------------------------------------------------------------ results
def collect(args):
    """One row per finished run of this grid (ours from OUT/runs, DQN from OUT/dqn)."""
    import pandas as pd

    from rl.analysis.benchmark import collect as collect_runs
    from rl.analysis.runs import is_result

    rows = []
    ids = {CELLS[e]["env_id"]: e for e in args.envs}
    if (args.out / "runs").is_dir():
        ours = collect_runs(args.out / "runs")
        for r in ours.itertuples():
            if (r.env in ids and r.budget == budget(args, ids[r.env]) and r.seed in seeds(args)
                    and r.policy in args.mappings and is_result(r.status)):
                rows.append({"env": r.env, "method": SAC, "mapping": r.mapping,
                             "seed": r.seed, "budget": r.budget, "status": r.status, "steps": r.steps,
                             "final_return": r.final_return, "solved_at_step": r.solved_at_step,
                             "eval_greedy": r.eval_greedy, "wall_time_s": r.wall_time_s,
                             "run": f"runs/{r.run}"})
    for env in args.envs:
        for seed in seeds(args):
            path = dqn_path(args, env, seed)
            if path.is_file():
                run = json.loads(path.read_text())
                run.pop("hyperparameters", None)
                rows.append({"status": "completed", **run, "run": str(path.relative_to(args.out))})
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(["env", "method", "mapping", "seed"]).reset_index(drop=True)
    return table


def summarize(table) -> list[dict]:
    """Per (env, method, mapping): seeds (diverged runs among them, at their returns when they
    stopped: rl/analysis/benchmark.py), solved, median steps to solve, IQM [CI] of the final
    training and greedy returns, median wall seconds."""
    import numpy as np

    cells = []
    for (env, method, mapping), g in table.groupby(["env", "method", "mapping"], sort=False):
        bar = next(c["solved"] for c in CELLS.values() if c["env_id"] == env)
        steps = [float(s) for s in g.solved_at_step if s is not None and not _isnan(s)]
        cells.append({
            "env": env, "method": method, "mapping": mapping, "budget": int(g.budget.iloc[0]),
            "seeds": len(g), "diverged": int((g.status == "diverged").sum()), "solved_return": bar,
            "solved": None if bar is None else len(steps),
            "median_steps_to_solve": float(np.median(steps)) if steps else None,
            "final_return": _stat(g.final_return),
            "eval_greedy": _stat(g.eval_greedy),
            "median_wall_time_s": float(np.median(g.wall_time_s.astype(float))),
        })
    return cells


def _stat(values) -> dict:
    """IQM and its 95% bootstrap CI over seeds (rl.analysis.benchmark's, from rl/analysis/stats.py)."""
    from rl.analysis.benchmark import _iqm_ci

    return dict(zip(("iqm", "low", "high"), _iqm_ci(values.astype(float)), strict=True))


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _ci(c: dict) -> str:
    if _isnan(c["iqm"]):
        return "-"
    if _isnan(c["low"]):
        return f"{c['iqm']:.1f} (1 run)"
    return f"{c['iqm']:.1f} [{c['low']:.1f}, {c['high']:.1f}]"


def markdown(cells: list[dict]) -> str:
    from rl.analysis.benchmark import fmt_seeds

    rows = ["| env | method | mapping | budget | seeds | solved | median steps to solve | "
            "training return IQM [95% CI] | greedy eval IQM [95% CI] | median wall s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        solved = "-" if c["solved"] is None else f"{c['solved']}/{c['seeds']}"
        med = "-" if c["median_steps_to_solve"] is None else f"{c['median_steps_to_solve'] / 1000:.1f}k"
        rows.append(f"| {c['env']} | {c['method']} | {MAPPING_NAMES.get(c['mapping'], c['mapping'])} | "
                    f"{c['budget'] / 1000:g}k | {fmt_seeds(c['seeds'], c['diverged'])} | "
                    f"{solved} | {med} | {_ci(c['final_return'])} | "
                    f"{_ci(c['eval_greedy'])} | {c['median_wall_time_s']:.0f} |")
    return "\n".join(rows)


# What may differ between the SAC runs of one cell: the seed, the mapping (conf/policy/*.yaml), and
# how a run is run (resumed, shown, checkpointed), which changes none of its numbers.
PER_RUN_KEYS = ("seed", "policy.name", "policy.alpha", "resume", "auto_resume", "progress",
                "checkpoint_interval")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _first_difference(a: dict, b: dict) -> str:
    key = sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))[0]
    return f"{key}: {a.get(key, '<absent>')!r} vs {b.get(key, '<absent>')!r}"


def run_settings(run_dir: Path) -> dict:
    """A SAC run's composed config as dotted keys, without those in PER_RUN_KEYS: what the runs of
    one cell share. It holds the preset's values as the run used them, so a part run before a
    preset changed does not combine with one run after (the command alone is the same for both)."""
    from rl.analysis.runs import read_config

    return {k: v for k, v in _flat(read_config(run_dir)).items() if k not in PER_RUN_KEYS}


def cell_settings(args, table, env: str):
    """The settings every SAC run of `env` in `table` shares (None when it holds none); exits
    when two of them differ past the seed and the mapping."""
    env_id, first = CELLS[env]["env_id"], None
    if table.empty:
        return None
    for r in table[(table.env == env_id) & (table.method == SAC)].itertuples():
        settings = run_settings(args.out / r.run)
        if first is None:
            first = (settings, r.run)
        elif settings != first[0]:
            raise SystemExit(f"{args.out}: the {env} SAC runs {first[1]} and {r.run} differ in "
                             f"{_first_difference(first[0], settings)}; one results file holds "
                             "runs of one setting (give the others their own --out)")
    return None if first is None else first[0]


def report(args) -> None:
    table = collect(args)
    if table.empty:
        raise SystemExit(f"{args.out} holds no finished run of this grid")
    write_results(args, table, {
        "seeds": args.seeds, "first_seed": args.first_seed, "mappings": args.mappings,
        "cells": {e: {**CELLS[e], "steps": budget(args, e),
                      "sac_command": shlex.join(sac_command(args, e)[1:]),
                      "sac_preset": f"conf/preset/{e}_sac.yaml",
                      "sac_settings": cell_settings(args, table, e), "dqn_source": DQN[e]["source"],
                      "dqn_hyperparameters": dqn_kwargs(e, budget(args, e), args.sb3)} for e in args.envs}})


def write_results(args, table, fields: dict) -> None:
    """``--results`` (the machine, ``fields``, the command, the table, the per-run rows) and the
    per-run CSV beside it; the markdown table printed."""
    from rl.analysis.machine import machine_info
    from rl.checkpoint import write_json

    cells = summarize(table)
    info = machine_info("cpu", ("gymnasium", "stable_baselines3", "minatar"))
    info["torch_threads"] = 1  # every run of both sets one thread
    results = args.results
    results.parent.mkdir(parents=True, exist_ok=True)
    csv = results.with_name(results.stem + "_runs.csv")
    table.to_csv(csv, index=False)
    write_json(results, {
        "benchmark": "sac", "written_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **info, "window": WINDOW, "eval_episodes": EVAL_EPISODES, **fields,
        "command": shlex.join(["scripts/bench_sac.py", *args.argv]),
        "table": cells, "runs": json.loads(table.to_json(orient="records")),
    }, indent=1)
    print(markdown(cells))
    print(f"\n[bench_sac] wrote {results} and {csv}", flush=True)


# ------------------------------------------------------------------- results of several sittings
def _comparable_command(command: str) -> list[str]:
    """A cell's SAC command without what may differ between parts of one benchmark: the seeds,
    the mappings and the runs directory."""
    return [t for t in shlex.split(command)
            if not t.startswith(("seed=", "policy=", "hydra.sweep.dir="))]


_UNRECORDED = object()


def _part_settings(cell: dict, data: dict):
    """A part's recorded SAC settings for one cell: a dict, None when the part holds no SAC run
    of it, or _UNRECORDED for a results file written before settings were recorded."""
    if "sac_settings" in cell:
        return cell["sac_settings"]
    has_sac = any(r["env"] == cell["env_id"] and r["method"] == SAC for r in data["runs"])
    return _UNRECORDED if has_sac else None


def combine(args) -> None:
    """``--combine A.json B.json ..``: one results file from the results of runs made apart (other
    seeds, other mappings, other sittings) with the same settings. Refuses parts whose cells
    differ in budget, SAC command (past seeds, mappings and runs directory) or DQN
    hyper-parameters or SAC run settings (each run's composed config past its seed and mapping:
    a preset changed between parts shows here), and runs that two parts both hold; the table is
    computed again from the union of the per-run rows."""
    import pandas as pd

    cells, rows, parts, seen = {}, [], [], {}
    for path in args.combine:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"--combine: cannot read {path}: {e}") from None
        if data.get("benchmark") != "sac" or "runs" not in data or "cells" not in data:
            raise SystemExit(f"--combine: {path} is not a results file of bench_sac.py "
                             "(it needs 'benchmark': 'sac', 'cells' and 'runs')")
        for env, cell in data["cells"].items():
            mine = _part_settings(cell, data)
            if env not in cells:
                cells[env] = (cell, path, mine)
                continue
            first, where, theirs = cells[env]
            for key, same in (("steps", lambda c: c["steps"]),
                              ("sac_command", lambda c: _comparable_command(c["sac_command"])),
                              ("dqn_hyperparameters", lambda c: c["dqn_hyperparameters"])):
                if same(cell) != same(first):
                    raise SystemExit(f"--combine: {path}'s {env} {key} differs from {where}'s: "
                                     f"{cell[key]!r} vs {first[key]!r}; only runs with the same "
                                     "settings combine")
            if mine is None or theirs is None:  # a part with DQN runs only: nothing to compare
                if theirs is None and mine is not None:  # this part's SAC settings go on
                    cells[env] = (cell, path, mine)
            elif (mine is _UNRECORDED) != (theirs is _UNRECORDED):
                old_one = path if mine is _UNRECORDED else where
                raise SystemExit(f"--combine: {old_one} does not record its {env} SAC runs' settings "
                                 "(sac_settings: results written before it existed), so they cannot "
                                 "be checked against the other part's; write it again with "
                                 "--no-train from its --out")
            elif mine is not _UNRECORDED and mine != theirs:
                raise SystemExit(f"--combine: {path}'s {env} SAC runs differ from {where}'s in "
                                 f"{_first_difference(theirs, mine)}; only runs with the same "
                                 "settings combine")
        for run in data["runs"]:
            key = (run["env"], run["method"], run["mapping"], run["seed"])
            if key in seen:
                raise SystemExit(f"--combine: {path} and {seen[key]} both hold {key[1]} {key[2]} "
                                 f"seed {key[3]} on {key[0]}; pass each run once")
            seen[key] = path
            rows.append({**run, "source": Path(path).name})
        parts.append({"file": Path(path).name, "written_utc": data.get("written_utc"),
                      "command": data.get("command"), "device_name": data.get("device_name")})
    table = pd.DataFrame(rows).sort_values(["env", "method", "mapping", "seed"]).reset_index(drop=True)
    write_results(args, table, {"cells": {env: cell for env, (cell, _, _) in cells.items()},
                                "combined_from": parts})


# -------------------------------------------------------------------------------- command line
def _sb3_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--sb3 takes key=value (a JSON value); got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="bench_sac.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--envs", nargs="+", default=["cartpole"], help=f"cells, of {', '.join(CELLS)}")
    ap.add_argument("--mappings", default="all",
                    help="comma-separated of softmax, entmax15, sparsemax, or all")
    ap.add_argument("--seeds", type=int, default=5, help="how many seeds of each method")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="the first seed (default 0: seeds 0..N-1; e.g. 5 for held-out seeds 5..)")
    ap.add_argument("--steps", type=int, default=None,
                    help="env steps of every run (default: the cell's budget)")
    ap.add_argument("--impl", default="both", choices=["both", "sac", "dqn"], help="which side to train")
    ap.add_argument("--sb3", action="append", type=_sb3_override, default=[],
                    help="DQN keyword override key=value (smoke runs: --sb3 learning_starts=1000)")
    ap.add_argument("--out", type=Path, default=ROOT / "multirun" / "bench_sac", help="runs directory")
    ap.add_argument("--results", type=Path, default=None,
                    help="results JSON (default benchmarks/results/sac_<date>.json)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--no-train", action="store_true", help="only tabulate what OUT holds")
    ap.add_argument("--combine", nargs="+", type=Path, default=None, metavar="RESULTS",
                    help="one results file (--results) from several, with the same settings")
    ap.add_argument("--_dqn", nargs=3, metavar=("ENV", "SEED", "STEPS"), help=argparse.SUPPRESS)
    ap.add_argument("--_to", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every rl-train call")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_intermixed_args(argv)
    args.argv = argv
    args.sb3 = dict(args.sb3)
    bad = [e for e in args.envs if e not in CELLS]
    if bad:
        raise ValueError(f"--envs must be of {list(CELLS)}; got {bad}")
    args.mappings = list(MAPPINGS) if args.mappings == "all" else args.mappings.split(",")
    if not args.mappings or any(m not in MAPPINGS for m in args.mappings):
        raise ValueError(f"--mappings must be 'all' or a comma-separated subset of {list(MAPPINGS)}; "
                         f"got {','.join(args.mappings)!r}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {args.seeds}")
    if args.first_seed < 0:
        raise ValueError(f"--first-seed must be >= 0; got {args.first_seed}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1; got {args.steps}")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be Hydra key=value pairs; got {bad}")
    args.out = args.out.resolve()
    if args.combine and args.results is None:
        raise ValueError("--combine needs --results: the file to write (not the dated default, "
                         "which a benchmark run of the day writes)")
    if args.results is None:
        args.results = ROOT / "benchmarks" / "results" / f"sac_{_dt.date.today():%Y-%m-%d}.json"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._dqn:  # one DQN run, in this subprocess
        env, seed, steps = args._dqn[0], int(args._dqn[1]), int(args._dqn[2])
        from rl.checkpoint import write_json

        run = run_dqn(env, seed, steps, args.sb3)
        write_json(args._to, run)
        print(json.dumps({k: v for k, v in run.items() if k != "hyperparameters"}), flush=True)
        return 0
    if args.combine:
        combine(args)
        return 0
    if not args.no_train:
        train(args)
    if args.dry_run:
        return 0
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
