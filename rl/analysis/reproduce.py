"""One command per reproduction: run the sweep, aggregate it, plot it.

    .venv/bin/python scripts/reproduce.py ablation                  # ~1 h on 2 CPU cores
    .venv/bin/python scripts/reproduce.py ablation --scale 0.1      # smoke test, minutes
    .venv/bin/python scripts/reproduce.py distractors --scale 2     # 10 seeds, 2x steps
    .venv/bin/python scripts/reproduce.py sac_distractors --launcher population   # SAC, 2 regimes
    .venv/bin/python scripts/reproduce.py bandit
    .venv/bin/python scripts/reproduce.py confidence_penalty
    .venv/bin/python scripts/reproduce.py beta_target --more-seeds 1 2
    .venv/bin/python scripts/reproduce.py distractor_support multirun/distractors/runs -o useful_action.csv
    .venv/bin/python scripts/reproduce.py ablation --launcher population     # runs as populations
    .venv/bin/python scripts/reproduce.py ablation --launcher slurm hydra.launcher.partition=cpu
    .venv/bin/python scripts/reproduce.py benchmark --suite classic   # presets vs published numbers

Reproductions (docs/experiments/ and docs/beta.md, one page each):

* ``ablation``    -- entropy bonus ablation (A3C's beta = 0.01, PPO practice): beta in
  {0, 0.001, 0.01, 0.1} x {softmax, entmax-1.5, sparsemax} x seeds, on CartPole-v1,
  Acrobot-v1 and LunarLander-v3 (preset conf/experiment/entropy_ablation.yaml). Figures
  against beta.
* ``distractors`` -- K in {0, 10, 100, 1000} distractor actions on CartPole-v1 at a fixed
  beta, x mappings x seeds (conf/experiment/distractors.yaml). Figures against K.
* ``sac_distractors`` -- the same K with discrete SAC (conf/preset/cartpole_sac.yaml), x mappings
  x 3 seeds, in two regimes of the entropy coefficient: ``fixed`` (``--beta``, default 0.1, no
  tuning) and ``target`` (beta tuned to ``--target-entropy``, default 0.1 as in the preset, of
  the mapping's maximum entropy); one sweep per regime, runs in ``OUT/<regime>/runs``, tables and figures in
  ``OUT/<regime>/`` (conf/experiment/sac_distractors.yaml). Figures against K.
* ``distractor_support`` -- on a finished distractor sweep: is the useful action in the
  policy's support at initialization and at the end (rl/analysis/support.py; its own options,
  ``reproduce.py distractor_support --help``).
* ``beta_target`` -- CartPole runs whose entropy tracks ``beta_schedule.target_entropy``
  against fixed-beta runs (rl/analysis/beta_target.py; its own options,
  ``reproduce.py beta_target --help``).
* ``benchmark``   -- the per-env presets (conf/preset/) on a suite (classic, minatar, atari)
  against published returns (rl/analysis/benchmark.py; its own options,
  ``reproduce.py benchmark --help``; docs/experiments/benchmark.md).
* ``minatar_ablation`` -- the entropy ablation at Atari-like scale: PPO on four MinAtar games,
  beta x mapping x seeds and two target entropies (rl/analysis/minatar_ablation.py; its own
  options, ``reproduce.py minatar_ablation --help``; docs/experiments/minatar_entropy.md).
* ``bandit``      -- exact regularized optimum on a bandit vs the number of actions,
  closed forms against policies learned through ops.pg_loss (scripts/bandit.py).
* ``confidence_penalty`` -- cross-entropy - beta H on scikit-learn's digits through
  ops.pg_loss (scripts/confidence_penalty.py).

``--scale S`` multiplies the env steps of every run and the number of seeds
(``max(1, round(5 S))``; ``--seeds N`` overrides it). The default scale 1 is what the
docs call the full reproduction; each RL sweep at scale 1 takes about an hour on 2 cores
with ``--n-jobs 2``. Runs land in ``OUT/runs/<override set>``; re-running the same command
skips finished runs and resumes interrupted ones (rl/sweep.py), so a sweep can be stopped
and continued, or grown by raising ``--seeds``. After the sweep the tidy table goes to
``OUT/table.csv.gz`` (rl/analysis/aggregate.py) and the figures and summary table to
``OUT/figures/`` (rl/analysis/figures.py). Extra ``key=value`` arguments go to every rl-train
call (Hydra overrides: ``algo.learning_rate=3e-4``, ``hydra.launcher.partition=cpu``, ...).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Env steps per run at scale 1. Chosen so that each RL reproduction fits 2 CPU cores in
# about an hour (~2k env steps/s per core for these small MLP policies); CartPole's
# default PPO solves at ~60k of 100k steps, so 50k shows learning speed, not just the end.
ABLATION_STEPS = {"cartpole": 50_000, "acrobot": 50_000, "lunarlander": 100_000}
ABLATION_BETAS = (0.0, 0.001, 0.01, 0.1)
MAPPINGS = ("softmax", "entmax15", "sparsemax")
ALPHAS = {"softmax": 1.0, "entmax15": 1.5, "sparsemax": 2.0}  # conf/policy/*.yaml
ENV_IDS = {"cartpole": "CartPole-v1", "acrobot": "Acrobot-v1", "lunarlander": "LunarLander-v3"}
DISTRACTOR_STEPS = 50_000
DISTRACTOR_KS = (0, 10, 100, 1000)
DISTRACTOR_BETA = 0.01
BASE_SEEDS = 5
# SAC with distractors: 3 seeds x 3 mappings x 4 K x 2 regimes = 72 runs of 50k steps. A SAC
# CartPole run trained 100k steps in 149-483 s on one shared core (K = 0, docs/experiments/
# sac_benchmark.md; K = 1000, with 1002 outputs per network, not measured): 2-3 core-hours. beta 0.1
# and the target 0.3 are the CartPole preset's start and target.
SAC_DISTRACTOR_SEEDS = 3
SAC_DISTRACTOR_BETA = 0.1
SAC_TARGET_ENTROPY = 0.1
SAC_REGIMES = ("fixed", "target")
LAUNCHERS = ("local", "population", "population_slurm", "slurm", "slurm_local", "basic")
# PPO collects num_envs x n_steps = 8 x 32 env steps per update (conf/algo/ppo.yaml).
STEP_QUANTUM = 256
SWEEPS = ("ablation", "distractors", "sac_distractors")
SCRIPTS = ("bandit", "confidence_penalty")  # ops-only experiments, run as their scripts
# reproductions with their own parser
OWN_OPTIONS = ("beta_target", "distractor_support", "benchmark", "minatar_ablation")
REPRODUCTIONS = (*SWEEPS, *SCRIPTS, *OWN_OPTIONS)


def scaled_steps(base: int, scale: float) -> int:
    """`base * scale` env steps, rounded to whole PPO rollouts (at least one)."""
    return max(STEP_QUANTUM, round(base * scale / STEP_QUANTUM) * STEP_QUANTUM)


def scaled_seeds(scale: float, seeds: int | None, base: int = BASE_SEEDS) -> int:
    return seeds if seeds is not None else max(1, round(base * scale))


def _base_seeds(reproduction: str) -> int:
    return SAC_DISTRACTOR_SEEDS if reproduction == "sac_distractors" else BASE_SEEDS


def regime_overrides(regime: str, beta: float, target_entropy: float) -> list[str]:
    """sac_distractors: the entropy coefficient of a regime (``fixed`` or ``target``)."""
    if regime == "fixed":
        return [f"beta={beta:g}", "beta_schedule.target_entropy=null"]
    return [f"beta={beta:g}", f"beta_schedule.target_entropy={target_entropy:g}"]


def _csv(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def launcher_overrides(launcher: str, n_jobs: int) -> list[str]:
    """Hydra overrides selecting the launcher preset (conf/hydra/launcher/)."""
    if launcher == "basic":  # Hydra's default: runs one after another in this process
        return []
    if launcher == "local":
        return ["hydra/launcher=local", f"hydra.launcher.n_jobs={n_jobs}"]
    if launcher == "population":  # a sweep's runs as populations, n_jobs processes (rl/launcher.py)
        return ["hydra/launcher=population", f"hydra.launcher.n_jobs={n_jobs}"]
    if launcher == "population_slurm":
        return ["hydra/launcher=population_slurm"]
    if launcher == "slurm_local":  # submitit's LocalExecutor starts a whole batch at once
        return ["hydra/launcher=slurm_local", f"hydra.sweeper.max_batch_size={n_jobs}"]
    return ["hydra/launcher=slurm"]


def sweep_commands(args) -> list[tuple[str, list[str]]]:
    """(label, rl-train argv) of each multirun the reproduction needs."""
    seeds = _csv(range(scaled_seeds(args.scale, args.seeds, _base_seeds(args.reproduction))))
    launch = launcher_overrides(args.launcher, args.n_jobs)
    common = [*launch, f"hydra.sweep.dir={args.out / 'runs'}", f"seed={seeds}"]
    policies = f"policy={','.join(args.mappings)}"
    cmds = []
    if args.reproduction == "sac_distractors":
        for regime in args.regimes:
            cmds.append((regime, ["-m", "+experiment=sac_distractors",
                                  f"total_steps={scaled_steps(DISTRACTOR_STEPS, args.scale)}",
                                  f"env.distractor_actions={_csv(args.ks)}",
                                  *regime_overrides(regime, args.beta, args.target_entropy), policies,
                                  *launch, f"hydra.sweep.dir={args.out / regime / 'runs'}",
                                  f"seed={seeds}", *args.overrides]))
    elif args.reproduction == "ablation":
        for env in args.envs:
            # ~preset: the page's runs use the group defaults (CartPole's PPO tuning) on every
            # env, as they did before the per-env presets (conf/preset/) existed
            cmds.append((env, ["-m", "+experiment=entropy_ablation", f"env={env}", "~preset",
                               f"total_steps={scaled_steps(ABLATION_STEPS[env], args.scale)}",
                               f"beta={_csv(args.betas)}", policies, *common, *args.overrides]))
    else:
        cmds.append(("cartpole", ["-m", "+experiment=distractors",
                                  f"total_steps={scaled_steps(DISTRACTOR_STEPS, args.scale)}",
                                  f"env.distractor_actions={_csv(args.ks)}",
                                  f"beta={args.beta:g}", policies, *common, *args.overrides]))
    return cmds


def script_command(args) -> list[str]:
    """The command of an ops-only reproduction (bandit, confidence_penalty) at this scale."""
    script = ROOT / "scripts" / f"{args.reproduction}.py"
    if args.reproduction == "bandit":
        return [sys.executable, str(script), "--out", str(args.out),
                "--draws", str(max(5, round(50 * args.scale))),
                "--learn-steps", str(max(100, round(1000 * args.scale)))]
    return [sys.executable, str(script), "--out", str(args.out),
            "--seeds", str(scaled_seeds(args.scale, args.seeds)),
            "--epochs", str(max(5, round(100 * args.scale)))]


def _run(label: str, cmd: list[str], dry_run: bool) -> None:
    print(f"[reproduce] {label}: {shlex.join(cmd)}", flush=True)
    if dry_run:
        return
    t0 = time.time()
    result = subprocess.run(cmd, cwd=ROOT)
    print(f"[reproduce] {label}: exit {result.returncode} after {time.time() - t0:.0f} s",
          flush=True)
    if result.returncode != 0:
        # RecordFailures keeps failed runs from sinking a sweep, so a non-zero exit is a
        # broken command (bad override, launcher missing): stop here.
        raise SystemExit(f"{shlex.join(cmd[:3])} exited with {result.returncode}; see its log above")


def run_sweeps(args) -> None:
    for label, argv in sweep_commands(args):
        _run(label, [sys.executable, "-m", "rl.train", *argv], args.dry_run)


def aggregate_and_plot(args, x_col: str, title: str, out: Path | None = None) -> None:
    """Tidy table and figures of ``out/runs`` (default OUT) into ``out``."""
    from rl.analysis.aggregate import aggregate, write_table
    from rl.analysis.figures import make_all

    out = args.out if out is None else out
    table = aggregate(out / "runs")
    # OUT/runs may hold runs of other grids (an earlier, larger --seeds): keep this one's.
    keep = table.seed < scaled_seeds(args.scale, args.seeds, _base_seeds(args.reproduction))
    keep &= table.alpha.isin([ALPHAS[m] for m in args.mappings])
    if args.reproduction == "ablation":
        keep &= table.env.isin([ENV_IDS[e] for e in args.envs]) & table.beta.isin(args.betas)
    else:
        keep &= table.distractors.isin(args.ks) & (table.beta == args.beta)
    table = table[keep].reset_index(drop=True)
    if table.empty:
        raise SystemExit(f"{out / 'runs'} holds no run of this grid")
    path = write_table(table, out / "table.csv.gz")
    print(f"[reproduce] {len(table)} rows, {table.run.nunique()} runs -> {path}", flush=True)
    for p in make_all(table, out / "figures", x_col=x_col, title=title,
                      formats=args.formats):
        print(f"[reproduce] wrote {p}")


def parse_args(argv=None):
    """Options of the sweep and script reproductions (beta_target and distractor_support
    parse their own: see `main`)."""
    ap = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("reproduction", choices=REPRODUCTIONS)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiplies env steps (epochs, draws) and seeds; 1 = full reproduction")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5 x scale)")
    ap.add_argument("--envs", nargs="+", default=list(ABLATION_STEPS),
                    choices=list(ABLATION_STEPS), help="ablation: envs to run")
    ap.add_argument("--mappings", nargs="+", default=list(MAPPINGS), choices=list(MAPPINGS))
    ap.add_argument("--betas", type=float, nargs="+", default=list(ABLATION_BETAS),
                    help="ablation: entropy coefficients")
    ap.add_argument("--ks", type=int, nargs="+", default=list(DISTRACTOR_KS),
                    help="distractors: numbers of distractor actions")
    ap.add_argument("--beta", type=float, default=None,
                    help=f"distractors: the fixed entropy coefficient (default {DISTRACTOR_BETA:g}); "
                         f"sac_distractors: the fixed one and the tuned one's start "
                         f"(default {SAC_DISTRACTOR_BETA:g})")
    ap.add_argument("--target-entropy", type=float, default=SAC_TARGET_ENTROPY,
                    help="sac_distractors: target fraction of the maximum entropy (regime target)")
    ap.add_argument("--regimes", nargs="+", default=list(SAC_REGIMES), choices=list(SAC_REGIMES),
                    help="sac_distractors: fixed beta, tuned to a target entropy, or both")
    ap.add_argument("--launcher", choices=LAUNCHERS, default="local",
                    help="local (joblib), slurm, slurm_local (submitit's local executor), "
                         "basic (sequential)")
    ap.add_argument("--n-jobs", type=int, default=2, help="runs at once (local, slurm_local)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output directory (default multirun/<reproduction>)")
    ap.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"])
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--no-train", action="store_true",
                    help="only aggregate and plot what OUT/runs already holds")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every rl-train call")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after options
    if args.beta is None:
        args.beta = SAC_DISTRACTOR_BETA if args.reproduction == "sac_distractors" else DISTRACTOR_BETA
    if args.reproduction in OWN_OPTIONS:
        raise ValueError(f"reproduction {args.reproduction!r} takes its own options and must come "
                         f"first: reproduce.py {args.reproduction} --help")
    if not args.scale > 0:
        raise ValueError(f"--scale must be > 0; got {args.scale}")
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {args.seeds}")
    if args.n_jobs < 1:
        raise ValueError(f"--n-jobs must be >= 1; got {args.n_jobs}")
    if any(b < 0 for b in args.betas) or args.beta < 0:
        raise ValueError(f"--betas/--beta must be >= 0; got {args.betas}, {args.beta}")
    if not 0 < args.target_entropy < 1:
        raise ValueError(f"--target-entropy must be in (0, 1); got {args.target_entropy}")
    if any(k < 0 for k in args.ks):
        raise ValueError(f"--ks must be >= 0; got {args.ks}")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be Hydra key=value pairs; got {bad}")
    if args.reproduction in SCRIPTS and (args.overrides or args.no_train):
        raise ValueError(f"reproduction {args.reproduction!r} runs no rl-train: it takes no "
                         f"Hydra overrides or --no-train; got {args.overrides or '--no-train'}")
    if args.out is None:
        args.out = ROOT / "multirun" / args.reproduction
    args.out = args.out.resolve()
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "beta_target":
        from rl.analysis import beta_target

        return beta_target.main(argv[1:])
    if argv and argv[0] == "benchmark":
        from rl.analysis import benchmark

        return benchmark.main(argv[1:])
    if argv and argv[0] == "minatar_ablation":
        from rl.analysis import minatar_ablation

        return minatar_ablation.main(argv[1:])
    if argv and argv[0] == "distractor_support":
        from rl.analysis import support

        return support.main(argv[1:])
    args = parse_args(argv)
    if args.reproduction in SCRIPTS:
        _run(args.reproduction, script_command(args), args.dry_run)
        return 0
    if not args.no_train:
        run_sweeps(args)
    if args.dry_run:
        return 0
    if args.reproduction == "ablation":
        aggregate_and_plot(args, "beta", "entropy bonus ablation")
    elif args.reproduction == "sac_distractors":
        for regime in args.regimes:
            what = (f"fixed beta={args.beta:g}" if regime == "fixed" else
                    f"beta tuned to {args.target_entropy:g} of max entropy")
            aggregate_and_plot(args, "distractors", f"SAC, distractor actions, {what}",
                               out=args.out / regime)
    else:
        aggregate_and_plot(args, "distractors", f"distractor actions, beta={args.beta:g}")
    return 0
