"""``scripts/reproduce.py benchmark`` (rl/analysis/benchmark.py), its published numbers
(rl/analysis/published.py) and ``scripts/bench_train.py --env``'s report."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from rl.analysis import benchmark, published
from rl.analysis.stats import iqm

REPO = Path(__file__).resolve().parents[2]


def _reproduce(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), "benchmark",
                           *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_benchmark_command_writes_tables_and_figure_and_rerun_skips(tmp_path):
    out = tmp_path / "bench"
    cmd = ["--envs", "cartpole", "--algos", "ppo", "--steps", 512, "--seeds", 2,
           "--launcher", "population", "--out", out, "eval.episodes=2"]
    first = _reproduce(*cmd)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    for name in ("runs.csv", "classic.md", "classic.csv", "classic_aggregate.md",
                 "classic_aggregate.csv", "figures/classic_curves.png", "benchmark.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    meta = json.loads((out / "benchmark.json").read_text())
    assert meta["runs"] == 2 and meta["report_machine"]["cpu"] and meta["report_machine"]["device_name"]
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs.seed) == [0, 1]
    assert set(runs.env) == {"CartPole-v1"} and set(runs.algo) == {"ppo"}
    assert (runs.budget == 512).all() and (runs.status == "completed").all()
    assert runs.eval_greedy.notna().all() and runs.final_return.notna().all()
    # normalized = (greedy eval - random) / (published - random)
    expect = (runs.eval_greedy - published.RANDOM["CartPole-v1"]) / (500.0 - published.RANDOM["CartPole-v1"])
    np.testing.assert_allclose(runs.normalized, expect)
    table = pd.read_csv(out / "classic.csv")
    assert len(table) == 1
    row = table.iloc[0]
    assert row.seeds == 2 and row.published == 500.0 and row.published_budget == 100_000
    assert "rl-baselines3-zoo" in row.source
    assert row.greedy_ci_low <= row.greedy_iqm <= row.greedy_ci_high
    assert row.solved == 0  # 512 steps: no seed reaches CartPole's 475
    assert "| CartPole-v1 | ppo | softmax | 0.512k | 2 | 0/2 |" in (out / "classic.md").read_text()
    summaries = sorted((out / "runs").rglob("summary.json"))
    assert len(summaries) == 2
    stamps = [p.stat().st_mtime_ns for p in summaries]

    again = _reproduce(*cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (out / "logs" / "cartpole_ppo.log").read_text()
    assert "2 already finished" in log, log[-2000:]
    assert [p.stat().st_mtime_ns for p in summaries] == stamps  # not trained again
    pd.testing.assert_frame_equal(pd.read_csv(out / "runs.csv"), runs)


def test_published_entries_all_name_a_source():
    assert published.REFERENCES
    for ref in published.REFERENCES:
        assert ref.source and ("commit" in ref.source), ref
        assert ref.algo in ("ppo", "a2c") and ref.budget > 0
        if ref.value is None:
            assert ref.note, f"{ref.env}: a missing number needs a note"
        else:
            assert math.isfinite(ref.value)
    keys = [(r.env, r.algo) for r in published.REFERENCES]
    assert len(keys) == len(set(keys))
    # every classic and MinAtar env has a measured random return below its published one
    for env in ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3",
                "MinAtar/Asterix-v1", "MinAtar/Breakout-v1", "MinAtar/Freeway-v1",
                "MinAtar/SpaceInvaders-v1"):
        assert published.RANDOM[env] < published.reference(env, "ppo").value
    assert published.reference("LunarLander-v3", "ppo").value == pytest.approx(242.119)
    assert published.reference("MinAtar/Seaquest-v1", "ppo").value is None


def test_normalization_arithmetic_on_a_hand_made_table():
    rnd = {"A-v0": 0.0, "B-v0": -100.0}
    assert published.normalized(50.0, "LunarLander-v3", "ppo", {"LunarLander-v3": -10.0}) == \
        pytest.approx(60 / 252.119)
    refs = {("A-v0", "ppo"): 10.0, ("B-v0", "ppo"): 100.0}
    assert float(published.normalized(5.0, "A-v0", "ppo", rnd, refs)) == pytest.approx(0.5)
    assert float(published.normalized(0.0, "B-v0", "ppo", rnd, refs)) == pytest.approx(0.5)
    assert math.isnan(float(published.normalized(5.0, "C-v0", "ppo", rnd, refs)))
    # the table: greedy eval where present, else the final training return
    t = pd.DataFrame({"env": ["CartPole-v1"] * 3, "algo": ["ppo"] * 3,
                      "eval_greedy": [500.0, None, 23.68], "final_return": [1.0, 261.84, 2.0]})
    got = benchmark.with_normalized(t, {"CartPole-v1": 23.68})
    np.testing.assert_allclose(got.score, [500.0, 261.84, 23.68])
    np.testing.assert_allclose(got.normalized, [1.0, 0.5, 0.0])


def test_aggregate_over_tasks_iqm_and_probability_of_improvement():
    rows = []
    for env, base in (("A-v0", 0.2), ("B-v0", 0.6)):
        for seed in range(4):
            rows.append({"env": env, "algo": "ppo", "mapping": "softmax", "normalized": base + 0.01 * seed})
            rows.append({"env": env, "algo": "ppo", "mapping": "sparsemax", "normalized": base + 0.5})
    agg, poi = benchmark.aggregate_table(pd.DataFrame(rows))
    soft = agg[agg.mapping == "softmax"].iloc[0]
    values = [0.2, 0.21, 0.22, 0.23, 0.6, 0.61, 0.62, 0.63]
    assert soft.tasks == 2 and soft.runs == 8
    assert soft.normalized_iqm == pytest.approx(np.mean(sorted(values)[2:6]))
    assert soft.ci_low <= soft.normalized_iqm <= soft.ci_high
    sparse = agg[agg.mapping == "sparsemax"].iloc[0]
    # 0.7 x 4 and 1.1 x 4: the middle half is two of each; every stratified resample is the same
    assert sparse.normalized_iqm == pytest.approx(0.9)
    assert sparse.ci_low == pytest.approx(0.9) and sparse.ci_high == pytest.approx(0.9)
    p = {(r.x, r.y): r.p_x_better for r in poi.itertuples()}
    assert p[("sparsemax", "softmax")] == 1.0 and p[("softmax", "sparsemax")] == 0.0


def test_suite_table_counts_solved_seeds_and_keeps_the_reference(tmp_path):
    t = pd.DataFrame({
        "env": ["LunarLander-v3"] * 5 + ["MinAtar/Seaquest-v1"] * 2,
        "algo": ["ppo"] * 7, "mapping": ["softmax"] * 7, "budget": [1_000_000] * 5 + [10_000_000] * 2,
        "final_return": [210.0, 220.0, 230.0, 150.0, 240.0, 5.0, 7.0],
        "eval_greedy": [250.0, 260.0, 270.0, 100.0, 280.0, 6.0, 8.0],
        "solved_return": [200.0] * 5 + [None] * 2,
        "solved_at_step": [5e5, 6e5, 7e5, None, 8e5, None, None]})
    summary = benchmark.suite_table(t)
    ll = summary[summary.env == "LunarLander-v3"].iloc[0]
    assert ll.solved == 4 and ll.seeds == 5
    assert ll.greedy_iqm == pytest.approx(260.0)  # middle three of 100, 250, 260, 270, 280
    assert ll.published == pytest.approx(242.119) and ll.published_budget == 1_000_000
    sq = summary[summary.env == "MinAtar/Seaquest-v1"].iloc[0]
    assert pd.isna(sq.solved) and pd.isna(sq.published)
    benchmark.write_suite_table(summary, tmp_path, "x")
    md = (tmp_path / "x.md").read_text()
    assert "| LunarLander-v3 | ppo | softmax | 1M | 5 | 4/5 | 220.0 [" in md
    assert "| MinAtar/Seaquest-v1 | ppo | softmax | 10M | 2 | - |" in md
    assert "none (the gymnax README lists no checkpoint" in md


def test_suite_table_keeps_diverged_runs_at_their_returns_and_says_so(tmp_path):
    t = pd.DataFrame({
        "env": ["LunarLander-v3"] * 4, "algo": ["ppo"] * 4, "mapping": ["sparsemax"] * 4,
        "budget": [1_000_000] * 4, "status": ["completed", "diverged", "completed", "diverged"],
        "final_return": [210.0, -900.0, 100.0, -800.0], "eval_greedy": [250.0, -950.0, 90.0, np.nan],
        "solved_return": [200.0] * 4, "solved_at_step": [5e5, None, None, None]})
    row = benchmark.suite_table(t).iloc[0]
    assert (row.seeds, row.diverged, row.solved) == (4, 2, 1)
    assert row.train_iqm == pytest.approx(iqm([210.0, -900.0, 100.0, -800.0]))
    benchmark.write_suite_table(benchmark.suite_table(t), tmp_path, "x")
    md = (tmp_path / "x.md").read_text()
    assert "| LunarLander-v3 | ppo | sparsemax | 1M | 4 (2 diverged) | 1/4 |" in md


def test_select_keeps_finished_and_diverged_runs_only():
    args = benchmark.parse_args(["--envs", "lunarlander", "--algos", "ppo", "--seeds", "5"])
    steps = benchmark.run_steps(args, "lunarlander", "ppo")
    rows = [{"env": "LunarLander-v3", "algo": "ppo", "policy": "softmax", "seed": s, "budget": steps,
             "status": st}
            for s, st in enumerate(["completed", "diverged", "interrupted", "failed", None])]
    kept = benchmark.select(pd.DataFrame(rows), args)
    assert sorted(kept.status) == ["completed", "diverged"]


def test_stratified_bootstrap_keeps_tasks_apart():
    # each resample keeps 3 runs of each task, so the IQM of 0s and 1s stays at 0.5
    point, lo, hi = benchmark.stratified_iqm_ci([np.zeros(3), np.ones(3)])
    assert point == lo == hi == pytest.approx(0.5)
    point, lo, hi = benchmark.stratified_iqm_ci([np.array([1.0])])
    assert point == 1.0 and math.isnan(lo) and math.isnan(hi)


def test_command_lines_of_the_settings(tmp_path):
    full = benchmark.parse_args(["--full", "--mappings", "all", "--out", str(tmp_path)])
    cmds = dict(benchmark.sweep_commands(full))
    assert list(cmds) == [f"{e}_{a}" for e in ("cartpole", "acrobot", "mountaincar", "lunarlander")
                          for a in ("ppo", "a2c")]
    for label, argv in cmds.items():
        env, algo = label.split("_")
        ref = published.reference(benchmark.env_id(env), algo)
        assert f"total_steps={ref.budget}" in argv
        assert "policy=softmax,entmax15,sparsemax" in argv and "seed=0,1,2,3,4" in argv
        assert "hydra/launcher=population" in argv and f"env={env}" in argv
    minatar = benchmark.parse_args(["--suite", "minatar", "--full", "--out", str(tmp_path), "a.b=1"])
    argv = dict(benchmark.sweep_commands(minatar))["minatar_breakout_ppo"]
    assert "total_steps=10000000" in argv and "seed=0,1,2" in argv and argv[-1] == "a.b=1"
    default = benchmark.parse_args(["--suite", "minatar", "--out", str(tmp_path), "--scale", "0.5"])
    assert "total_steps=500000" in dict(benchmark.sweep_commands(default))["minatar_freeway_ppo"]
    atari = benchmark.parse_args(["--suite", "atari", "--games", "Pong", "--algos", "ppo",
                                  "--launcher", "local", "--out", str(tmp_path)])
    [(label, argv)] = benchmark.sweep_commands(atari)
    assert label == "Pong_ppo" and "env.id=ALE/Pong-v5" in argv and "hydra/launcher=local" in argv


@pytest.mark.parametrize("argv, name", [
    (["--suite", "mujoco"], "--suite"),
    (["--mappings", "softmax,gumbel"], "--mappings"),
    (["--suite", "minatar", "--algos", "a2c"], "--algos"),
    (["--envs", "pong"], "--envs"),
    (["--suite", "atari"], "--games"),
    (["--launcher", "ray"], "--launcher"),
    (["--full", "--steps", "100"], "--full"),
    (["--seeds", "0"], "--seeds"),
    (["not_an_override"], "overrides"),
])
def test_bad_options_raise_one_value_error_naming_them(argv, name):
    with pytest.raises(ValueError, match=name):
        benchmark.parse_args(argv)


def _bench_train():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "scripts" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_train_reports_seconds_from_launch_side_by_side():
    bench = _bench_train()
    assert bench.ENVS["lunarlander"]["env_id"] == "LunarLander-v3"
    assert bench.ENVS["lunarlander"]["solved"] == 200.0
    runs = [dict(impl="ours", policy="softmax", seed=0, solve_steps=300_000, solve_s=100.0,
                 launch_solve_s=110.0, sps=3000.0),
            dict(impl="sb3", policy="softmax", seed=0, solve_steps=400_000, solve_s=500.0,
                 launch_solve_s=520.0, sps=800.0)]
    summary = bench.summarize(runs)
    assert summary["speedup_sb3_over_ours_launch_solve_s"]["median"] == pytest.approx(520 / 110)
    assert summary["ours/softmax"]["launch_solve_s"]["median"] == 110.0
    assert "seconds from process launch" in bench.table(summary)
    json.dumps(summary)


def test_bench_train_a2c_compares_final_and_greedy_returns_with_intervals():
    bench = _bench_train()
    a2c = bench.ENVS["lunarlander_a2c"]
    assert a2c["ours"] == ["env=lunarlander", "algo=a2c"] and a2c["sb3"]["algo"] == "a2c"
    assert a2c["sb3"]["total_steps"] == 200_000 and a2c["sb3"]["n_steps"] == 5
    runs = [dict(impl=impl, policy="softmax", seed=s, solve_steps=None, solve_s=None, sps=1000.0,
                 last100=float(10 * s + (50 if impl == "sb3" else 0)), eval_greedy=float(s))
            for impl in ("ours", "sb3") for s in range(5)]
    summary = bench.summarize(runs)
    summary["algo"] = "A2C"
    assert summary["ours/softmax"]["last100"]["iqm"] == pytest.approx(20.0)  # IQM of 0..40
    assert summary["sb3/softmax"]["last100"]["iqm"] == pytest.approx(70.0)
    low, high = summary["sb3/softmax"]["last100"]["ci95"]
    assert 50.0 <= low <= 70.0 <= high <= 90.0
    text = bench.table(summary)
    assert "SB3 A2C (zoo)" in text and "70.0 [" in text
    # a run without an evaluation gives no greedy IQM rather than a wrong one
    runs[0]["eval_greedy"] = None
    assert bench.summarize(runs)["ours/softmax"]["eval_greedy"] is None
    json.dumps(summary)



def test_bench_train_plans_interleaved_runs_from_the_first_seed():
    bench = _bench_train()
    args = SimpleNamespace(full=False, env="lunarlander", total_steps=1_500_000, first_seed=3, seeds=2,
                           sb3_seeds=1, ours_only=False, policies=False, policy_seeds=0,
                           overrides=["algo.learning_rate=1e-3"])
    plan = bench.plan_runs(args)
    assert [(p[1], p[2]) for p in plan] == [("ours", "3"), ("sb3", "3"), ("ours", "4")]
    assert plan[0][-2:] == ["--", "algo.learning_rate=1e-3"] and "--" not in plan[1]
    assert plan[1][-4:] == ["--env", "lunarlander", "--total-steps", "1500000"]
    args.ours_only = True
    assert [(p[1], p[2]) for p in bench.plan_runs(args)] == [("ours", "3"), ("ours", "4")]
