"""Is the useful action in the policy's support? At initialization and at the end of each run.

For every run of a distractor sweep (``reproduce.py distractors``: CartPole-v1 with K extra
actions that all act as action 0, ``rl.wrappers.DistractorActions``), rebuilds the run's
network exactly as the trainer initialized it (same config and seed) and loads its final
checkpoint, then evaluates both on a fixed set of CartPole states (500 from the reset
distribution, 500 spread over the states a balancing policy visits) and reports, for the
action that is not a copy of action 0 (``--action``, default 1: push right):

* ``in_support_init`` / ``in_support_final``: fraction of the states where it has p > 0;
* ``p_init`` / ``p_final``: its mean probability.

    .venv/bin/python scripts/reproduce.py distractor_support multirun/distractors/runs \\
        -o docs/experiments/distractors/useful_action.csv

Prints a markdown table; writes CSV with ``-o``.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
import torch

from rl.analysis.runs import read_overrides, read_summary
from rl.trainer import CHECKPOINT_NAME

CHECKPOINT = Path(CHECKPOINT_NAME)  # the trainer's last checkpoint, relative to the run


def states(n: int = 500, seed: int = 0) -> torch.Tensor:
    """CartPole observations (x, x_dot, theta, theta_dot): `n` reset-like, then `n`
    balancing-like."""
    rng = np.random.default_rng(seed)
    reset = rng.uniform(-0.05, 0.05, (n, 4))
    visited = rng.normal(0.0, [0.5, 0.5, 0.05, 0.5], (n, 4))
    return torch.tensor(np.concatenate([reset, visited]), dtype=torch.float32)


def sweep_overrides(run: Path) -> list[str]:
    """The overrides the sweep gave this run, minus Hydra's own and the experiment preset."""
    return [o for o in read_overrides(run) if not o.startswith(("hydra", "+experiment"))]


def support_stats(p: torch.Tensor) -> tuple[float, float]:
    """(fraction of rows with p > 0, mean p) of one action's probabilities `p`."""
    return float((p > 0).float().mean()), float(p.mean())


def measure(run: Path, obs: torch.Tensor, action: int) -> dict:
    """The row of `run`: its cell, the action's support fraction and mean probability at
    initialization and at the end, and its final mean return."""
    from hydra import compose, initialize_config_dir

    import ops
    from rl.checkpoint import load_checkpoint
    from rl.train import CONF_DIR
    from rl.trainer import Trainer

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("config", overrides=["+experiment=distractors", *sweep_overrides(run),
                                           "progress=false"])
    alpha = float(cfg.policy.alpha)
    row = {"run": run.name, "policy": str(cfg.policy.name), "alpha": alpha,
           "distractors": int(cfg.env.distractor_actions), "seed": int(cfg.seed)}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp)
        try:
            net = trainer.member_network(0)  # the network as the run's trainer initialized it
            with torch.no_grad():
                for when in ("init", "final"):
                    if when == "final":
                        state = load_checkpoint(run / CHECKPOINT, require=("format", "model"))
                        net.load_state_dict(state["model"])
                    logits = net.logits(obs)
                    n_actions = logits.shape[-1]
                    if not 0 <= action < n_actions:
                        raise ValueError(f"action={action} is not an action of run {run.name!r}; "
                                         f"allowed: 0 .. {n_actions - 1}")
                    row[f"in_support_{when}"], row[f"p_{when}"] = support_stats(
                        ops.probs(logits, alpha)[:, action])
        finally:
            trainer.close()
    summary = read_summary(run) or {}
    row["final_mean_return"] = summary.get("final_mean_return")
    return row


def finished_runs(runs_dir: Path, min_distractors: int) -> list[Path]:
    """Runs under `runs_dir` with a last checkpoint and at least `min_distractors` distractors."""
    if not runs_dir.is_dir():
        raise ValueError(f"runs={str(runs_dir)!r} is not a directory (give the sweep's OUT/runs)")
    out = []
    for run in sorted(p for p in runs_dir.iterdir() if (p / CHECKPOINT).is_file()):
        overrides = dict(o.split("=", 1) for o in sweep_overrides(run) if "=" in o)
        if int(overrides.get("env.distractor_actions", 0)) >= min_distractors:
            out.append(run)
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| policy | K | seed | action in support: init -> final | p(action): init -> final | "
             "final return |", "|---|---|---|---|---|---|"]
    for r in rows:
        ret = r["final_mean_return"]
        lines.append(f"| {r['policy']} | {r['distractors']} | {r['seed']} | "
                     f"{r['in_support_init']:.0%} -> {r['in_support_final']:.0%} | "
                     f"{r['p_init']:.4f} -> {r['p_final']:.4f} | "
                     f"{'n/a' if ret is None else f'{ret:.1f}'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="reproduce.py distractor_support",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="the sweep's run directories' parent (OUT/runs)")
    ap.add_argument("--action", type=int, default=1, help="the action that is not a copy of 0")
    ap.add_argument("--min-distractors", type=int, default=1, help="skip runs with fewer")
    ap.add_argument("-o", "--out", type=Path, default=None, help="CSV path")
    args = ap.parse_args(argv)
    if args.action < 0:
        raise ValueError(f"--action={args.action} is not allowed; allowed: an action index >= 0")

    from rl.config import register_configs

    register_configs()
    torch.set_num_threads(1)
    obs = states()
    runs = finished_runs(args.runs, args.min_distractors)
    if not runs:
        raise SystemExit(f"no finished distractor run under {args.runs}")
    rows = sorted((measure(run, obs, args.action) for run in runs),
                  key=lambda r: (r["alpha"], r["distractors"], r["seed"]))
    print(markdown(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out}")
    return 0
