"""Evidence for automatic beta tuning: CartPole runs whose entropy tracks a target.

For each mapping (softmax, sparsemax), ``rl-train`` runs twice on CartPole-v1 -- a fixed beta,
and ``beta_schedule.target_entropy=<f>`` starting from the same beta -- the TensorBoard scalars
are read back, and the target runs' entropy must settle within 10% of the target.

"Settles" is the mean of ``entropy/mean`` over the updates in the last 20% of the env steps
(``--window``), against the mean of ``policy/target_entropy`` over the same updates (the
absolute target ``f * H_max``; CartPole has no masks, so it is constant):
``|settled - target| / target <= 0.1``.

Every run, fixed or target, uses a constant PPO learning rate and clip range
(``algo.anneal_lr=false algo.anneal_clip=false``; ``--anneal`` keeps the config's decay to 0):
a policy whose learning rate has decayed to nearly 0 no longer responds to beta, so no
controller can steer its entropy over the last part of the run.

Writes a JSON result (docs/beta_target.json) and a figure (docs/figures/beta_target.png:
return, entropy and beta vs env steps, fixed beta vs target). Runs are sequential and short
(CartPole, 100k steps each by default)::

    .venv/bin/python scripts/reproduce.py beta_target
    .venv/bin/python scripts/reproduce.py beta_target --steps 50000 --target 0.3 --seed 1
    .venv/bin/python scripts/reproduce.py beta_target --reuse     # re-read finished runs only
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rl.analysis.machine import machine_info
from rl.analysis.runs import read_overrides, read_summary, scalar_series
from rl.checkpoint import write_json

ROOT = Path(__file__).resolve().parents[2]
TAGS = ("charts/episodic_return", "entropy/mean", "policy/target_entropy", "policy/beta")
MAPPINGS = {"softmax": "policy=softmax", "sparsemax": "policy=sparsemax"}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="reproduce.py beta_target",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100_000, help="env steps per run")
    ap.add_argument("--target", type=float, default=0.5,
                    help="beta_schedule.target_entropy, a fraction of the maximum entropy")
    ap.add_argument("--beta", type=float, default=0.01,
                    help="the fixed beta, and the target runs' initial beta")
    ap.add_argument("--lr", type=float, default=0.3,
                    help="beta_schedule.lr (dual step size per update); the config's default 0.01 "
                         "is too slow for ~400 updates")
    ap.add_argument("--beta-min", type=float, default=0.001,
                    help="beta_schedule.min of the target runs: a floor on the dual variable "
                         "(anti-windup, docs/beta.md); 0 = none")
    ap.add_argument("--anneal", action="store_true",
                    help="keep the config's learning-rate and clip decay to 0 (off by default)")
    ap.add_argument("--seed", type=int, default=0, help="the seed of the four runs in the figure")
    ap.add_argument("--more-seeds", type=int, nargs="*", default=[],
                    help="further seeds of the target runs only (numbers in the JSON, not plotted)")
    ap.add_argument("--window", type=float, default=0.2,
                    help="fraction of the env steps, at the end, over which 'settled' is measured")
    ap.add_argument("--tolerance", type=float, default=0.1, help="allowed relative error")
    ap.add_argument("--mappings", nargs="+", default=list(MAPPINGS), choices=list(MAPPINGS))
    ap.add_argument("--run-root", type=Path, default=ROOT / "runs" / "beta_target")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "beta_target.json")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "beta_target.png")
    ap.add_argument("--reuse", action="store_true",
                    help="do not train; read the runs already under --run-root")
    ap.add_argument("--skip-existing", action="store_true",
                    help="train only the runs whose directory holds no completed summary.json")
    ap.add_argument("--extra", nargs="*", default=[], help="more rl-train overrides for every run")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if not 0.0 < args.target < 1.0:
        raise ValueError(f"--target={args.target} is not allowed; allowed: a fraction in (0, 1)")
    if args.beta_min < 0 or (args.beta_min and args.beta_min > args.beta):
        raise ValueError(f"--beta-min={args.beta_min} is not allowed; allowed: 0 (no floor) or a "
                         f"number in (0, --beta={args.beta}]")
    if not 0.0 < args.window <= 1.0:
        raise ValueError(f"--window={args.window} is not allowed; allowed: a fraction in (0, 1]")
    if args.steps < 1:
        raise ValueError(f"--steps={args.steps} is not allowed; allowed: >= 1")
    return args


def run_name(mapping: str, mode: str, seed: int, args) -> str:
    tag = f"beta{args.beta:g}"
    if mode == "target":
        tag += f"_target{args.target:g}_lr{args.lr:g}" + (f"_min{args.beta_min:g}" if args.beta_min else "")
    anneal = "_anneal" if args.anneal else ""
    return f"{mapping}_{tag}{anneal}_s{seed}_{args.steps // 1000}k"


def run_overrides(mapping: str, mode: str, seed: int, args) -> list[str]:
    """The rl-train overrides of one run (``mode``: "fixed" or "target")."""
    overrides = ["env=cartpole", f"total_steps={args.steps}", f"seed={seed}"]
    if not args.anneal:
        overrides += ["algo.anneal_lr=false", "algo.anneal_clip=false"]
    overrides += [*args.extra, MAPPINGS[mapping], f"beta={args.beta}"]
    if mode == "target":
        overrides += [f"beta_schedule.target_entropy={args.target}", f"beta_schedule.lr={args.lr}"]
        if args.beta_min:
            overrides.append(f"beta_schedule.min={args.beta_min}")
    return overrides


def train(run_dir: Path, overrides: list[str]) -> float:
    """Runs rl-train into `run_dir` (a fresh Hydra run directory); returns wall seconds."""
    # rl-train would resume (or skip) a run it finds there; this reproduction wants a fresh one.
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "rl.train", *overrides, "progress=false",
           f"hydra.run.dir={run_dir}"]
    print("+", " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def completed(run_dir: Path, overrides: list[str], steps: int) -> bool:
    """True when `run_dir` holds a finished run of at least `steps` env steps, made with exactly
    `overrides` (Hydra's record of the command line, .hydra/overrides.yaml)."""
    summary = read_summary(run_dir)
    try:
        made_with = read_overrides(run_dir)
    except ValueError:
        return False
    return (summary is not None and summary.get("status") == "completed"
            and summary.get("steps", 0) >= steps
            and sorted(made_with) == sorted([*overrides, "progress=false"]))


def window_mean(steps: np.ndarray, values: np.ndarray, start: float) -> float | None:
    """Mean of the values logged at steps >= `start` (None if there are none)."""
    sel = steps >= start
    return float(values[sel].mean()) if sel.any() else None


def summarize(scalars: dict, window: float, tolerance: float, total_steps: int) -> dict:
    """Settled entropy against the target over the last `window` of `total_steps`."""
    start = (1.0 - window) * total_steps
    ent_steps, ent = scalars["entropy/mean"]
    ret_steps, ret = scalars["charts/episodic_return"]
    _, beta = scalars["policy/beta"]
    tgt_steps, tgt = scalars["policy/target_entropy"]
    out = {
        "updates_logged": int(len(ent_steps)),
        "window_start_step": int(start),
        "settled_entropy": window_mean(ent_steps, ent, start),
        "settled_entropy_std": float(ent[ent_steps >= start].std()) if len(ent) else None,
        "final_return_mean": window_mean(ret_steps, ret, start),
        "beta_first": float(beta[0]) if len(beta) else None,
        "beta_last": float(beta[-1]) if len(beta) else None,
        "beta_min": float(beta.min()) if len(beta) else None,
        "beta_max": float(beta.max()) if len(beta) else None,
    }
    target = window_mean(tgt_steps, tgt, start) if len(tgt) else None
    if target is not None and out["settled_entropy"] is not None:
        out["target_entropy"] = target
        rel = abs(out["settled_entropy"] - target) / target
        out["relative_error"] = rel
        out["within_tolerance"] = bool(rel <= tolerance)
        # how noisy the per-update measurements are around the target, in the same window
        in_window = ent[ent_steps >= start]
        out["updates_in_window"] = int(len(in_window))
        out["fraction_of_updates_within_tolerance"] = float(
            np.mean(np.abs(in_window - target) <= tolerance * target))
    return out


def plot(results: dict, runs: dict, args) -> Path:
    """Return, entropy and beta vs env steps per mapping, fixed beta against target."""
    from matplotlib.figure import Figure

    from rl.analysis.figures import save

    mappings = list(results)
    fig = Figure(figsize=(5.2 * len(mappings), 9.5))
    axes = fig.subplots(3, len(mappings), sharex=True, squeeze=False)
    colors = {"fixed": "tab:gray", "target": "tab:blue"}
    for j, mapping in enumerate(mappings):
        for mode in ("fixed", "target"):
            sc = runs[mapping][mode]
            label = (f"fixed beta={args.beta:g}" if mode == "fixed"
                     else f"target_entropy={args.target:g}")
            for i, tag in enumerate(("charts/episodic_return", "entropy/mean", "policy/beta")):
                axes[i, j].plot(*sc[tag], color=colors[mode], lw=1, label=label)
        s, v = runs[mapping]["target"]["policy/target_entropy"]
        r = results[mapping]["target"]
        axes[1, j].plot(s, v, "k--", lw=1, label="target (f * H_max)")
        if r.get("target_entropy") is not None:
            t = r["target_entropy"]
            axes[1, j].axhspan(t * (1 - args.tolerance), t * (1 + args.tolerance), color="k",
                               alpha=0.08, label=f"target +-{args.tolerance:.0%}")
        axes[1, j].axvline(r["window_start_step"], color="k", lw=0.5, ls=":")
        axes[0, j].set_title(f"CartPole-v1, {mapping} (seed {args.seed})")
        axes[0, j].set_ylabel("episodic return")
        axes[1, j].set_ylabel("entropy/mean" + (" (Shannon, nats)" if mapping == "softmax"
                                                 else " (Gini = Tsallis-2)"))
        axes[2, j].set_ylabel("policy/beta")
        axes[2, j].set_yscale("log")
        axes[2, j].set_xlabel("env steps")
        for i in range(3):
            axes[i, j].grid(alpha=0.3)
        axes[1, j].legend(fontsize=8)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    fmt = args.figure.suffix.lstrip(".") or "png"
    save(fig, args.figure.parent, args.figure.stem, (fmt,), dpi=80)
    print(f"wrote {args.figure}")
    return args.figure


def main(argv=None) -> int:
    """Trains (unless reused), measures, writes the JSON and the figure; 0 if every target run
    settled within the tolerance."""
    args = parse_args(argv)

    def one_run(mapping: str, mode: str, seed: int) -> tuple[dict, dict]:
        overrides = run_overrides(mapping, mode, seed, args)
        run_dir = args.run_root / run_name(mapping, mode, seed, args)
        wall = None
        if not (args.reuse or (args.skip_existing and completed(run_dir, overrides, args.steps))):
            wall = train(run_dir, overrides)
        summary = read_summary(run_dir)
        if summary is None:
            raise ValueError(f"run {str(run_dir)!r} holds no summary.json; train it first "
                             "(drop --reuse)")
        scalars = scalar_series(run_dir, TAGS)
        result = summarize(scalars, args.window, args.tolerance, args.steps)
        result.update(overrides=overrides, wall_s=wall)
        for key in ("final_mean_return", "solved_at_step", "wall_time_s"):
            result[key] = summary.get(key)
        print(mapping, mode, f"seed {seed}", json.dumps(result), flush=True)
        return scalars, result

    results: dict = {}
    runs: dict = {}
    more_seeds: dict = {}
    for mapping in args.mappings:
        results[mapping], runs[mapping], more_seeds[mapping] = {}, {}, {}
        for mode in ("fixed", "target"):
            runs[mapping][mode], results[mapping][mode] = one_run(mapping, mode, args.seed)
        for seed in args.more_seeds:
            more_seeds[mapping][str(seed)] = one_run(mapping, "target", seed)[1]

    for m in results:  # the fixed-beta baseline against the same target, for comparison
        target = results[m]["target"].get("target_entropy")
        fixed = results[m]["fixed"]
        if target and fixed["settled_entropy"] is not None:
            fixed["relative_error_vs_target"] = abs(fixed["settled_entropy"] - target) / target
    ok = all(results[m]["target"].get("within_tolerance") for m in results)
    machine = machine_info("cpu")
    doc = {
        "what": "CartPole-v1 PPO; entropy/mean settled (mean over the last window of env steps) "
                "vs policy/target_entropy, fixed beta vs beta_schedule.target_entropy",
        "target_fraction": args.target,
        "initial_beta": args.beta,
        "dual_lr": args.lr,
        "beta_min": args.beta_min or None,
        "anneal_lr_and_clip": args.anneal,
        "steps": args.steps,
        "seed": args.seed,
        "window_fraction": args.window,
        "tolerance": args.tolerance,
        "all_within_tolerance": ok,
        "more_seeds_within_tolerance": {m: {seed: r.get("within_tolerance") for seed, r in d.items()}
                                        for m, d in more_seeds.items()},
        "results": results,
        "more_seeds_target_runs": more_seeds,
        "machine": {k: machine[k] for k in ("platform", "processor", "python")},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, doc)
    print(f"wrote {args.json}")
    plot(results, runs, args)
    for m in results:
        r = results[m]["target"]
        print(f"{m}: target {r.get('target_entropy')}, settled {r['settled_entropy']} "
              f"(rel. error {r.get('relative_error')}), beta {r['beta_first']} -> {r['beta_last']}")
        for seed, r in more_seeds[m].items():
            print(f"{m} seed {seed}: settled {r['settled_entropy']} (rel. error {r.get('relative_error')})")
    return 0 if ok else 1
