"""Is the useful action in the policy's support? At initialization and at the end of each run.

For every run of a distractor sweep (``scripts/reproduce.py distractors``: CartPole-v1 with K
extra actions that all act as action 0, ``rl.wrappers.DistractorActions``), rebuilds the
run's network exactly as the trainer initialized it (same config and seed) and loads its final
checkpoint, then evaluates both on a fixed set of CartPole states (500 from the reset
distribution, 500 spread over the states a balancing policy visits) and reports, for the
action that is not a copy of action 0 (``--action``, default 1: push right):

* ``in_support_init`` / ``in_support_final``: fraction of the states where it has p > 0;
* ``p_init`` / ``p_final``: its mean probability.

    .venv/bin/python scripts/distractor_support.py multirun/distractors/runs \\
        -o docs/experiments/distractors/useful_action.csv

Prints a markdown table; writes CSV with ``-o``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ops  # noqa: E402


def states(n: int = 500, seed: int = 0) -> torch.Tensor:
    """CartPole observations (x, x_dot, theta, theta_dot): reset-like and balancing-like."""
    rng = np.random.default_rng(seed)
    reset = rng.uniform(-0.05, 0.05, (n, 4))
    visited = rng.normal(0.0, [0.5, 0.5, 0.05, 0.5], (n, 4))
    return torch.tensor(np.concatenate([reset, visited]), dtype=torch.float32)


def run_overrides(run: Path) -> list[str]:
    """The overrides the sweep gave this run, minus Hydra's own (``.hydra/overrides.yaml``)."""
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    return [o for o in overrides if not o.startswith(("hydra", "+experiment"))]


def measure(run: Path, obs: torch.Tensor, action: int) -> dict:
    from hydra import compose, initialize_config_dir

    from rl.trainer import Trainer

    overrides = run_overrides(run)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["+experiment=distractors", *overrides, "progress=false"])
    alpha = float(cfg.policy.alpha)
    row = {"run": run.name, "policy": str(cfg.policy.name), "alpha": alpha,
           "distractors": int(cfg.env.distractor_actions), "seed": int(cfg.seed)}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp)  # the network as the run's trainer initialized it
        try:
            with torch.no_grad():
                for when in ("init", "final"):
                    if when == "final":
                        state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
                        trainer.net.load_state_dict(state["model"])
                    p = ops.probs(trainer.net.logits(obs), alpha)[:, action]
                    row[f"in_support_{when}"] = float((p > 0).float().mean())
                    row[f"p_{when}"] = float(p.mean())
        finally:
            trainer.close()
    row["final_mean_return"] = json.loads((run / "summary.json").read_text())["final_mean_return"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="the sweep's run directories' parent (OUT/runs)")
    ap.add_argument("--action", type=int, default=1, help="the action that is not a copy of 0")
    ap.add_argument("--min-distractors", type=int, default=1, help="skip runs with fewer")
    ap.add_argument("-o", "--out", type=Path, default=None, help="CSV path")
    args = ap.parse_args(argv)

    from rl.config import register_configs

    register_configs()
    torch.set_num_threads(1)
    obs = states()
    rows = []
    for run in sorted(p for p in args.runs.iterdir() if (p / "checkpoints" / "last.pt").is_file()):
        overrides = dict(o.split("=", 1) for o in run_overrides(run))
        if int(overrides.get("env.distractor_actions", 0)) < args.min_distractors:
            continue
        rows.append(measure(run, obs, args.action))
    if not rows:
        raise SystemExit(f"no finished distractor run under {args.runs}")
    rows.sort(key=lambda r: (r["alpha"], r["distractors"], r["seed"]))
    print("| policy | K | seed | action in support: init -> final | p(action): init -> final | "
          "final return |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['distractors']} | {r['seed']} | {r['in_support_init']:.0%} -> "
              f"{r['in_support_final']:.0%} | {r['p_init']:.4f} -> {r['p_final']:.4f} | "
              f"{r['final_mean_return']:.1f} |")
    if args.out:
        import csv

        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
