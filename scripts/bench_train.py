"""Training speed against Stable-Baselines3 on CartPole-v1 or LunarLander-v3: env steps and wall
seconds to solve.

``--env cartpole`` (default): ``rl-train``'s default configuration (CartPole-v1, PPO, softmax;
any overrides given) against Stable-Baselines3 PPO with the rl-baselines3-zoo CartPole-v1
hyper-parameters (8 envs, n_steps 32, batch 256, gae_lambda 0.8, gamma 0.98, 20 epochs, lr 1e-3
linear, clip 0.2 linear, ent_coef 0); solved at 475.
``--env lunarlander``: ``rl-train env=lunarlander`` (the preset conf/preset/lunarlander_ppo.yaml:
the zoo's settings with minibatch 256 and lr 2e-3) against SB3 PPO with the zoo's LunarLander-v2
settings (16 envs, n_steps 1024, batch 64,
gae_lambda 0.98, gamma 0.999, 4 epochs, ent_coef 0.01, lr 3e-4 and clip 0.2 constant, 1M
steps) on LunarLander-v3; solved at 200. Issue 13's target: ours at most 1/4 of SB3's
seconds from process launch to solve.
``--env lunarlander_a2c``: ``rl-train env=lunarlander algo=a2c`` (conf/preset/lunarlander_a2c.yaml)
against SB3 A2C with the zoo's LunarLander-v2 A2C settings (8 envs, n_steps 5, gamma 0.995,
lr 8.3e-4 linear, ent_coef 1e-5, the rest SB3's defaults), 200k steps; with ``--full`` both run
the whole budget and report the final training mean and a greedy (deterministic) evaluation
of 10 episodes, the statistic of the zoo's published 155.8 +- 80.4 (one agent).
Both run side by side on the same machine, one torch thread each, several seeds.
Each run is its own subprocess and the runs of the two are interleaved (ours seed 0, SB3 seed
0, ours seed 1, ...) so both see the same machine load. A run counts as solved when the mean
return of the last 100 finished training episodes first reaches 475; it stops there (or at
``total_steps``). Reported per run: env steps and wall seconds at that point (seconds from the
start of training, model and env construction excluded for both), seconds from the launch of
the run's process (interpreter start, imports and construction included: ``launch_solve_s``,
taken at the first check after the solve: SB3's next env step, our end of that rollout's
update) and SPS = steps / seconds.

    .venv/bin/python scripts/bench_train.py                     # default config vs SB3
    .venv/bin/python scripts/bench_train.py --policies          # + sparsemax and entmax-1.5
    .venv/bin/python scripts/bench_train.py --seeds 5 --sb3-seeds 3 --out benchmarks/results/x.json
    .venv/bin/python scripts/bench_train.py --ours-only -- algo.update_epochs=10   # overrides
    .venv/bin/python scripts/bench_train.py --env lunarlander --seeds 5 --sb3-seeds 5
    .venv/bin/python scripts/bench_train.py --env lunarlander --total-steps 32768 --seeds 1 --sb3-seeds 1
    .venv/bin/python scripts/bench_train.py --env lunarlander_a2c --full --seeds 5 --sb3-seeds 5

Writes JSON (machine, CPU, library versions, every run) and prints a markdown table with the
median and the range over seeds. Timings on a shared machine are noisy: compare runs taken
side by side, not across files.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
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
SOLVED_RETURN = 475.0
WINDOW = 100
# rl-baselines3-zoo hyperparams/ppo.yml, CartPole-v1 (n_timesteps 1e5).
SB3_ZOO = dict(n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
               ent_coef=0.0, learning_rate=1e-3, clip_range=0.2, total_steps=100_000, schedule="linear")
# rl-baselines3-zoo hyperparams/ppo.yml, LunarLander-v2 (n_timesteps 1e6; lr and clip are SB3's
# constant defaults); conf/preset/lunarlander_ppo.yaml has the same numbers except minibatch 256
# and lr 2e-3 (its comment says why).
SB3_ZOO_LUNAR = dict(n_envs=16, n_steps=1024, batch_size=64, gae_lambda=0.98, gamma=0.999, n_epochs=4,
                     ent_coef=0.01, learning_rate=3e-4, clip_range=0.2, total_steps=1_000_000,
                     schedule="constant")
# rl-baselines3-zoo hyperparams/a2c.yml, LunarLander-v2 (n_timesteps 2e5; lin_0.00083); the same
# numbers as conf/preset/lunarlander_a2c.yaml. Everything else is SB3's A2C default.
SB3_ZOO_LUNAR_A2C = dict(algo="a2c", n_envs=8, n_steps=5, gamma=0.995, ent_coef=1e-5,
                         learning_rate=8.3e-4, total_steps=200_000, schedule="linear")
EVAL_EPISODES = 10
# Per --env: Gymnasium id, solved return (mean of the last 100 training episodes), our base
# overrides (the env's preset comes with env=...), SB3's hyper-parameters.
ENVS = {
    "cartpole": dict(env_id="CartPole-v1", solved=SOLVED_RETURN, ours=[], sb3=SB3_ZOO),
    "lunarlander": dict(env_id="LunarLander-v3", solved=200.0, ours=["env=lunarlander"], sb3=SB3_ZOO_LUNAR),
    "lunarlander_a2c": dict(env_id="LunarLander-v3", solved=200.0, ours=["env=lunarlander", "algo=a2c"],
                            sb3=SB3_ZOO_LUNAR_A2C),
}


# --------------------------------------------------------------------------------- one run
def _run_ours(seed: int, overrides: list[str], stop_at_solve: bool, env: str = "cartpole") -> dict:
    import torch

    torch.set_num_threads(1)
    from hydra import compose, initialize_config_dir

    from rl.callbacks import Callback

    class StopWhenSolved(Callback):
        """Stops after the update of the rollout that solved it (the on_rollout_end hook)."""

        solve_unix: float | None = None

        def on_rollout_end(self, trainer):
            if trainer.members[0].solved_at is not None:
                if self.solve_unix is None:
                    self.solve_unix = time.time()
                if stop_at_solve:
                    trainer.request_stop("solved")

    from rl.config import register_configs
    from rl.train import CONF_DIR
    from rl.trainer import Trainer

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("config", overrides=["progress=false", f"seed={seed}", "threads=1",
                                           *ENVS[env]["ours"], *overrides])
    stopper = StopWhenSolved()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, callbacks=[stopper])
        try:
            summary = trainer.train()
        finally:
            trainer.close()
    return {"impl": "ours", "policy": cfg.policy.name, "seed": seed, "overrides": overrides,
            "solve_steps": summary["solved_at_step"], "solve_s": summary["solved_at_seconds"],
            "steps": summary["steps"], "wall_s": summary["wall_time_s"],
            "last100": summary["final_mean_return"], "solve_unix": stopper.solve_unix,
            "eval_greedy": summary.get("eval_return_greedy")}


def _run_sb3(seed: int, stop_at_solve: bool, env_name: str = "cartpole",
             total_steps: int | None = None) -> dict:
    import torch

    torch.set_num_threads(1)
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    class Solve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.returns: list[float] = []
            self.hit: tuple[int, float] | None = None
            self.solve_unix: float | None = None

        def _on_training_start(self):
            self.t0 = time.perf_counter()

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(float(info["episode"]["r"]))
                    if (self.hit is None and len(self.returns) >= WINDOW
                            and sum(self.returns[-WINDOW:]) / WINDOW >= solved):
                        self.hit = (self.num_timesteps, time.perf_counter() - self.t0)
                        self.solve_unix = time.time()
            return not (stop_at_solve and self.hit is not None)

    spec = ENVS[env_name]
    z, solved = spec["sb3"], spec["solved"]
    env = make_vec_env(spec["env_id"], n_envs=z["n_envs"], seed=seed)
    linear = z["schedule"] == "linear"  # SB3 schedules take the remaining progress f: 1 -> 0
    lr = (lambda f: f * z["learning_rate"]) if linear else z["learning_rate"]
    if z.get("algo") == "a2c":
        model = A2C("MlpPolicy", env, n_steps=z["n_steps"], gamma=z["gamma"], ent_coef=z["ent_coef"],
                    learning_rate=lr, seed=seed, device="cpu")
    else:
        model = PPO("MlpPolicy", env, n_steps=z["n_steps"], batch_size=z["batch_size"],
                    gae_lambda=z["gae_lambda"], gamma=z["gamma"], n_epochs=z["n_epochs"],
                    ent_coef=z["ent_coef"], learning_rate=lr,
                    clip_range=(lambda f: f * z["clip_range"]) if linear else z["clip_range"],
                    seed=seed, device="cpu")
    cb = Solve()
    t0 = time.perf_counter()
    model.learn(total_steps or z["total_steps"], callback=cb)
    wall = time.perf_counter() - t0
    last = cb.returns[-WINDOW:]
    greedy = None
    if not stop_at_solve:  # the zoo's statistic: deterministic actions on a fresh env
        eval_env = make_vec_env(spec["env_id"], n_envs=1, seed=seed + 10_000)
        greedy = float(evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)[0])
    return {"impl": "sb3", "policy": "softmax", "seed": seed, "overrides": [],
            "solve_steps": cb.hit and cb.hit[0], "solve_s": cb.hit and cb.hit[1],
            "steps": model.num_timesteps, "wall_s": wall,
            "last100": sum(last) / len(last) if last else None, "solve_unix": cb.solve_unix,
            "eval_greedy": greedy}


def _subprocess(args: list[str], timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    launched = time.time()
    proc = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"run {args} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    run = json.loads(lines[-1])
    # seconds from launching the process (interpreter, imports, construction) to the solve
    solve_unix = run.pop("solve_unix", None)
    run["launch_solve_s"] = None if solve_unix is None else solve_unix - launched
    run["process_s"] = time.time() - launched
    return run


# --------------------------------------------------------------------------------- report
def _machine() -> dict:
    info = machine_info("cpu", ("gymnasium", "stable_baselines3"))
    info["torch_threads"] = 1  # every run sets torch.set_num_threads(1)
    info["device_name"] = f"CPU ({info['cpu']}, 1 thread(s))"
    return info


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _iqm(values: list[float | None]) -> dict | None:
    """IQM with its 95% bootstrap interval over seeds (None when a run lacks the value)."""
    if not values or any(v is None for v in values):
        return None
    from rl.analysis.stats import iqm, iqm_ci

    low, high = iqm_ci(values)
    return {"iqm": iqm(values), "ci95": [low, high], "values": list(values)}


def summarize(runs: list[dict]) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(f"{r['impl']}/{r['policy']}", []).append(r)
    out = {}
    for name, rs in groups.items():
        solved = [r for r in rs if r["solve_steps"] is not None]
        out[name] = {
            "seeds": len(rs), "solved": len(solved),
            "solve_steps": _stats([r["solve_steps"] for r in solved]),
            "solve_s": _stats([r["solve_s"] for r in solved]),
            "launch_solve_s": _stats([r["launch_solve_s"] for r in solved
                                      if r.get("launch_solve_s") is not None]),
            "sps": _stats([r["sps"] for r in rs]),
            "last100": _iqm([r.get("last100") for r in rs]),
            "eval_greedy": _iqm([r.get("eval_greedy") for r in rs]),
        }
    # per-seed wall-time ratio SB3 / ours of the default config (runs taken side by side)
    ours = {r["seed"]: r for r in groups.get("ours/softmax", [])}
    ratios = [s["solve_s"] / ours[s["seed"]]["solve_s"] for s in groups.get("sb3/softmax", [])
              if s["solve_s"] and s["seed"] in ours and ours[s["seed"]]["solve_s"]]
    if ratios:
        out["speedup_sb3_over_ours_solve_s"] = _stats(ratios)
    ratios = [s["launch_solve_s"] / ours[s["seed"]]["launch_solve_s"] for s in groups.get("sb3/softmax", [])
              if s.get("launch_solve_s") and s["seed"] in ours and ours[s["seed"]].get("launch_solve_s")]
    if ratios:
        out["speedup_sb3_over_ours_launch_solve_s"] = _stats(ratios)
    return out


def _fmt(st: dict | None, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    if st is None:
        return "--"
    f = lambda v: f"{v / scale:.{digits}f}{unit}"  # noqa: E731
    return f"{f(st['median'])} [{f(st['min'])}, {f(st['max'])}]"


def table(summary: dict) -> str:
    rows = ["| run | solved | env steps to solve | seconds to solve | seconds from launch | SPS "
            "| last-100 mean, IQM [95% CI] | greedy eval, IQM [95% CI] |",
            "|---|---|---|---|---|---|---|---|"]
    algo = summary.get("algo", "PPO")
    labels = {"ours/softmax": f"entropy-rl {algo} softmax (preset)", "sb3/softmax": f"SB3 {algo} (zoo)",
              "ours/sparsemax": f"entropy-rl {algo} sparsemax",
              "ours/entmax15": f"entropy-rl {algo} entmax-1.5"}

    def iqm(st):
        return "--" if st is None else f"{st['iqm']:.1f} [{st['ci95'][0]:.1f}, {st['ci95'][1]:.1f}]"

    for name, s in summary.items():
        if not isinstance(s, dict) or not name.count("/"):
            continue
        rows.append(f"| {labels.get(name, name)} | {s['solved']}/{s['seeds']} | "
                    f"{_fmt(s['solve_steps'], 'k', 1000.0)} | {_fmt(s['solve_s'], ' s')} | "
                    f"{_fmt(s.get('launch_solve_s'), ' s')} | "
                    f"{_fmt(s['sps'], 'k', 1000.0)} | {iqm(s.get('last100'))} | "
                    f"{iqm(s.get('eval_greedy'))} |")
    if "speedup_sb3_over_ours_solve_s" in summary:
        rows.append("")
        rows.append("SB3 seconds / ours, same seed, side by side: "
                    + _fmt(summary["speedup_sb3_over_ours_solve_s"], "x", digits=2))
    if "speedup_sb3_over_ours_launch_solve_s" in summary:
        rows.append("SB3 / ours, seconds from process launch to solve, same seed: "
                    + _fmt(summary["speedup_sb3_over_ours_launch_solve_s"], "x", digits=2))
    return "\n".join(rows)


def plan_runs(args) -> list[list[str]]:
    """The ``--_run`` argv of every run, ours and SB3's interleaved by seed (ours first)."""
    flag = ["--full"] if args.full else []
    flag += ["--env", args.env]
    if args.total_steps is not None:
        flag += ["--total-steps", str(args.total_steps)]
    first = args.first_seed
    plan: list[list[str]] = []
    for i in range(max(args.seeds, 0 if args.ours_only else args.sb3_seeds)):
        seed = str(first + i)
        if i < args.seeds:
            plan.append(["--_run", "ours", seed, *flag, "--", *args.overrides])
        if not args.ours_only and i < args.sb3_seeds:
            plan.append(["--_run", "sb3", seed, *flag])
    if args.policies:
        for i in range(args.policy_seeds):
            for policy in ("sparsemax", "entmax15"):
                plan.append(["--_run", "ours", str(first + i), *flag, "--", f"policy={policy}",
                             *args.overrides])
    return plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="cartpole", help=f"one of {', '.join(ENVS)}")
    ap.add_argument("--total-steps", type=int, default=None,
                    help="env steps of every run (default: our config's, SB3's zoo n_timesteps)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds of our default config (F..F+n-1)")
    ap.add_argument("--sb3-seeds", type=int, default=3, help="seeds of SB3 (F..F+n-1)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="F, the first seed of both (to add seeds to an earlier comparison)")
    ap.add_argument("--policies", action="store_true", help="also run policy=sparsemax and entmax15")
    ap.add_argument("--policy-seeds", type=int, default=3, help="seeds of each extra policy")
    ap.add_argument("--ours-only", action="store_true", help="skip SB3")
    ap.add_argument("--full", action="store_true", help="run to total_steps instead of stopping at solve")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/train_<env>_<date>.json)")
    ap.add_argument("--_run", nargs=2, metavar=("IMPL", "SEED"), help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides for our runs (after --)")
    args = ap.parse_args()
    if args.env not in ENVS:
        raise ValueError(f"--env must be one of {list(ENVS)}; got {args.env!r}")
    if args.first_seed < 0:
        raise ValueError(f"--first-seed must be >= 0; got {args.first_seed}")
    if args.total_steps is not None and args.total_steps < 1:
        raise ValueError(f"--total-steps must be >= 1; got {args.total_steps}")

    stop = not args.full
    if args._run:  # a single run, in this subprocess
        impl, seed = args._run[0], int(args._run[1])
        steps = [] if args.total_steps is None else [f"total_steps={args.total_steps}"]
        r = (_run_sb3(seed, stop, args.env, args.total_steps) if impl == "sb3"
             else _run_ours(seed, [*steps, *args.overrides], stop, args.env))
        r["sps"] = (r["solve_steps"] / r["solve_s"]) if r["solve_s"] else r["steps"] / r["wall_s"]
        print(json.dumps(r))
        return

    plan = plan_runs(args)
    started = _dt.datetime.now(_dt.timezone.utc)
    load_before = os.getloadavg()
    runs = []
    for cmd in plan:
        r = _subprocess(cmd, args.timeout)
        runs.append(r)
        print(f"{r['impl']:4s} {r['policy']:9s} seed {r['seed']}: solved at "
              f"{r['solve_steps']} steps, {r['solve_s'] and round(r['solve_s'], 1)} s, "
              f"{r['sps']:.0f} SPS, last-100 mean {r['last100']}, greedy {r.get('eval_greedy')}",
              flush=True)
    summary = summarize(runs)
    summary["algo"] = "A2C" if ENVS[args.env]["sb3"].get("algo") == "a2c" else "PPO"
    result = {
        "benchmark": f"train_{args.env}", "env_id": ENVS[args.env]["env_id"],
        "started_utc": started.isoformat(timespec="seconds"),
        **_machine(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "solved_return": ENVS[args.env]["solved"], "window": WINDOW, "stop_at_solve": stop,
        "total_steps": args.total_steps, "ours_overrides": [*ENVS[args.env]["ours"], *args.overrides],
        "sb3_hyperparameters": ENVS[args.env]["sb3"],
        "command": " ".join([Path(sys.executable).name, "scripts/bench_train.py", *sys.argv[1:]]),
        "summary": summary, "runs": runs,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"train_{args.env}_{started:%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=1)
    print()
    print(table(summary))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
