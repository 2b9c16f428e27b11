"""Start-up: ``rl-train total_steps=256`` against the same tiny run in Stable-Baselines3.

A 256-step CartPole run is almost all start-up (Python, torch, Hydra, gymnasium, the network, the
optimizer, the files a run writes), so its wall time from process launch to exit measures what
every short run and every sweep job pays before training. Each repetition launches, in a fresh
temporary directory and a fresh process,

* ours: the ``rl-train`` console script, ``total_steps=256 progress=false`` (everything else the
  defaults: CartPole-v1, PPO, 8 envs x 32 steps = one update of 20 epochs, TensorBoard events,
  a checkpoint and summary.json written);
* SB3: ``python -c`` with Stable-Baselines3 PPO on CartPole-v1 with the rl-baselines3-zoo
  settings (the ones scripts/bench_train.py uses: 8 envs, n_steps 32, batch 256, 20 epochs, lr 1e-3
  and clip 0.2 linear), ``learn(256)``, TensorBoard logging and ``model.save`` (the same files);
* SB3 bare: the same without TensorBoard and without ``model.save`` (SB3's smallest start-up: the
  strictest comparison, though ours still writes its files);
* with ``--eval``, also ``rl-eval checkpoint=<ours> episodes=1`` (start-up of the evaluator);
* with ``--before SRC``, also ``python -m rl.train`` of another source tree of this project (e.g. a
  ``git worktree`` of an older commit) with the same arguments: start-up before and after a change.

Both use one torch thread. The implementations alternate (ours, SB3, ours, ...), so both see the
same machine load; the report gives the median and the range over repetitions. Needs
Stable-Baselines3 (``bash scripts/setup.sh --bench``).

    .venv/bin/python scripts/bench_startup.py                 # 7 repetitions of each
    .venv/bin/python scripts/bench_startup.py --reps 11 --eval --out benchmarks/results/x.json

Writes JSON (machine, CPU, library versions, every timing) to benchmarks/results/ and prints a
markdown table. Timings on a shared machine are noisy: compare numbers taken side by side.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rl.analysis.machine import machine_info
from rl.checkpoint import write_json

ROOT = Path(__file__).resolve().parent.parent
STEPS = 256
SB3_RUN = """
import torch
torch.set_num_threads(1)
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
            ent_coef=0.0, learning_rate=lambda f: f * 1e-3, clip_range=lambda f: f * 0.2, seed=0,
            device="cpu", tensorboard_log={tb}, verbose=0)
model.learn({steps})
{save}
"""


def _bin(name: str) -> str:
    """The console script installed next to this interpreter (the project's .venv)."""
    path = Path(sys.executable).with_name(name)
    if not path.is_file():
        raise SystemExit(f"{name} is not installed next to {sys.executable}: bash scripts/setup.sh --bench")
    return str(path)


def _timed(cmd: list[str], cwd: Path, timeout: float, pythonpath: str | None = None) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    env.pop("PYTHONPATH", None)  # the installed packages, as a user runs them
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def run_ours(workdir: Path, timeout: float) -> float:
    return _timed([_bin("rl-train"), f"total_steps={STEPS}", "progress=false", "hydra.run.dir=run"],
                  workdir, timeout)


def run_before(src: Path, workdir: Path, timeout: float) -> float:
    return _timed([sys.executable, "-m", "rl.train", f"total_steps={STEPS}", "progress=false",
                   "hydra.run.dir=run"], workdir, timeout, pythonpath=str(src))


def run_sb3(workdir: Path, timeout: float) -> float:
    code = SB3_RUN.format(steps=STEPS, tb='"tb"', save='model.save("model")')
    return _timed([sys.executable, "-c", code], workdir, timeout)


def run_sb3_bare(workdir: Path, timeout: float) -> float:
    return _timed([sys.executable, "-c", SB3_RUN.format(steps=STEPS, tb="None", save="")], workdir, timeout)


def run_eval(workdir: Path, timeout: float) -> float:
    checkpoint = workdir / "run" / "checkpoints" / "last.pt"
    return _timed([_bin("rl-eval"), f"checkpoint={checkpoint}", "episodes=1", "device=cpu"], workdir, timeout)


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def table(summary: dict) -> str:
    rows = ["| command | median wall s | range |", "|---|---|---|"]
    names = {"ours": f"`rl-train total_steps={STEPS}`", "sb3": f"SB3 PPO `learn({STEPS})` (zoo settings)",
             "before": f"`python -m rl.train total_steps={STEPS}` of the --before tree",
             "sb3_bare": f"SB3 PPO `learn({STEPS})`, no TensorBoard, no save",
             "rl_eval": "`rl-eval checkpoint=... episodes=1`"}
    for key, label in names.items():
        if key in summary:
            s = summary[key]
            rows.append(f"| {label} | {s['median']:.2f} | {s['min']:.2f} - {s['max']:.2f} |")
    if "ratio_sb3_over_ours" in summary:
        r = summary["ratio_sb3_over_ours"]
        rows.append(f"| SB3 / ours, per pair | {r['median']:.2f}x | {r['min']:.2f} - {r['max']:.2f}x |")
    if "ratio_before_over_ours" in summary:
        r = summary["ratio_before_over_ours"]
        rows.append(f"| before / ours, per pair | {r['median']:.2f}x | {r['min']:.2f} - {r['max']:.2f}x |")
    if "ratio_sb3_bare_over_ours" in summary:
        r = summary["ratio_sb3_bare_over_ours"]
        rows.append(f"| SB3 bare / ours, per pair | {r['median']:.2f}x | {r['min']:.2f} - {r['max']:.2f}x |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7, help="repetitions of each command (default 7)")
    ap.add_argument("--eval", action="store_true", help="also time rl-eval on ours' checkpoint")
    ap.add_argument("--no-sb3", action="store_true", help="time ours only")
    ap.add_argument("--before", type=Path, default=None,
                    help="another source tree of this project to time as well (python -m rl.train)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per command")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/startup_<date>.json)")
    args = ap.parse_args()
    if args.reps < 1:
        ap.error(f"--reps={args.reps} is not allowed; allowed: an integer >= 1")
    if not args.no_sb3:
        try:
            import stable_baselines3  # noqa: F401 -- only its presence, before timing anything
        except ImportError:
            raise SystemExit("Stable-Baselines3 is not installed: bash scripts/setup.sh --bench "
                             "(or --no-sb3)") from None

    started = _dt.datetime.now(_dt.timezone.utc)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {"ours": [], "before": [], "sb3": [], "sb3_bare": [], "rl_eval": []}
    runners = {"ours": run_ours, "sb3": run_sb3, "sb3_bare": run_sb3_bare}
    if args.before is not None:
        if not (args.before / "rl" / "train.py").is_file():
            ap.error(f"--before={args.before} is not allowed; allowed: a source tree with rl/train.py")
        runners["before"] = lambda workdir, timeout: run_before(args.before.resolve(), workdir, timeout)
    for rep in range(args.reps):
        for impl, run in runners.items():
            if impl.startswith("sb3") and args.no_sb3:
                continue
            with tempfile.TemporaryDirectory(prefix=f"startup_{impl}_") as tmp:
                wall = run(Path(tmp), args.timeout)
                times[impl].append(wall)
                line = f"rep {rep}: {impl:8s} {wall:.2f} s"
                if impl == "ours" and args.eval:
                    times["rl_eval"].append(run_eval(Path(tmp), args.timeout))
                    line += f"  (rl-eval {times['rl_eval'][-1]:.2f} s)"
            print(line, flush=True)
    summary = {k: _stats(v) for k, v in times.items() if v}
    if times["sb3"]:
        pairs = zip(times["ours"], times["sb3"], strict=True)
        summary["ratio_sb3_over_ours"] = _stats([sb3 / ours for ours, sb3 in pairs])
        pairs = zip(times["ours"], times["sb3_bare"], strict=True)
        summary["ratio_sb3_bare_over_ours"] = _stats([sb3 / ours for ours, sb3 in pairs])
    if times["before"]:
        pairs = zip(times["ours"], times["before"], strict=True)
        summary["ratio_before_over_ours"] = _stats([before / ours for ours, before in pairs])
    info = machine_info("cpu", ("gymnasium", "hydra-core", "stable_baselines3"))
    info["torch_threads"] = 1  # every command runs with one torch thread
    info["device_name"] = f"CPU ({info['cpu']}, 1 thread(s))"
    result = {
        "benchmark": "startup", "started_utc": started.isoformat(timespec="seconds"), **info,
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "steps": STEPS,
        "command": " ".join([Path(sys.executable).name, "scripts/bench_startup.py", *sys.argv[1:]]),
        "before_tree": None if args.before is None else str(args.before),
        "summary": summary, "times_s": {k: v for k, v in times.items() if v},
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"startup_{started:%Y-%m-%d}.json"
    write_json(out, result, indent=1)
    print()
    print(table(summary))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
