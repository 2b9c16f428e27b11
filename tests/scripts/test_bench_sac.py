"""scripts/bench_sac.py: the commands it runs, the zoo's DQN settings at another budget, and its
report of finished runs (no training here)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sac", REPO / "scripts" / "bench_sac.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_builds_one_population_sweep_and_one_dqn_run_per_seed(bench, tmp_path, capsys):
    assert bench.main(["--dry-run", "--envs", "cartpole", "--seeds", "2", "--out", str(tmp_path)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[bench_sac]")]
    assert len(lines) == 3
    sac = lines[0]
    for part in ("+experiment=benchmark", "env=cartpole", "algo=sac", "total_steps=100000", "seed=0,1",
                 "policy=softmax,entmax15,sparsemax", "hydra/launcher=population",
                 f"hydra.sweep.dir={tmp_path / 'runs'}"):
        assert part in sac
    assert "--_dqn cartpole 0 100000" in lines[1] and "--_dqn cartpole 1 100000" in lines[2]
    assert not (tmp_path / "dqn").exists()  # a dry run trains nothing


def test_first_seed_shifts_the_seeds_of_both_sides_and_of_the_report(bench, tmp_path, capsys):
    assert bench.main(["--dry-run", "--envs", "cartpole", "--seeds", "2", "--first-seed", "5",
                       "--out", str(tmp_path)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[bench_sac]")]
    assert "seed=5,6 " in lines[0]
    assert "--_dqn cartpole 5 100000" in lines[1] and "--_dqn cartpole 6 100000" in lines[2]
    out = tmp_path / "out"
    for seed in range(8):  # seeds 0-7 finished; the report takes 5 and 6 only
        run = {"env": "CartPole-v1", "method": "SB3 DQN", "mapping": "-", "seed": seed, "budget": 100_000,
               "steps": 100_000, "final_return": 100.0 * seed, "solved_at_step": None,
               "eval_greedy": 10.0, "wall_time_s": 1.0}
        path = out / "dqn" / "cartpole_100000" / f"seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run))
    results = tmp_path / "sac.json"
    assert bench.main(["--no-train", "--seeds", "2", "--first-seed", "5", "--out", str(out),
                       "--results", str(results)]) == 0
    data = json.loads(results.read_text())
    assert sorted(r["seed"] for r in data["runs"]) == [5, 6]
    assert data["first_seed"] == 5 and data["table"][0]["seeds"] == 2
    with pytest.raises(ValueError, match="--first-seed must be >= 0; got -1"):
        bench.parse_args(["--first-seed", "-1"])


def test_dqn_keeps_the_zoo_epsilon_decay_in_env_steps(bench):
    zoo = bench.DQN["cartpole"]
    kw = bench.dqn_kwargs("cartpole", 100_000, {})
    assert kw["exploration_fraction"] * 100_000 == pytest.approx(0.16 * 50_000)  # 8k steps as in the zoo
    assert kw["learning_rate"] == 2.3e-3 and kw["policy_kwargs"] == {"net_arch": [256, 256]}
    assert zoo["kwargs"]["exploration_fraction"] == 0.16  # the table itself is not changed
    assert bench.dqn_kwargs("cartpole", 1000, {"learning_starts": 10})["exploration_fraction"] == 1.0
    assert bench.dqn_kwargs("cartpole", 1000, {"learning_starts": 10})["learning_starts"] == 10


def test_report_tabulates_finished_runs_with_iqm_and_solved(bench, tmp_path, capsys):
    out = tmp_path / "out"
    finals = [480.0, 490.0, 300.0, 500.0, 495.0]
    for seed, final in enumerate(finals):
        run = {"env": "CartPole-v1", "method": "SB3 DQN", "mapping": "-", "seed": seed, "budget": 100_000,
               "steps": 100_000, "final_return": final,
               "solved_at_step": None if final < 475 else 50_000 + 1000 * seed,
               "eval_greedy": 500.0, "wall_time_s": 100.0 + seed}
        path = out / "dqn" / "cartpole_100000" / f"seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run))
    results = tmp_path / "sac.json"
    assert bench.main(["--no-train", "--out", str(out), "--results", str(results)]) == 0
    data = json.loads(results.read_text())
    (cell,) = data["table"]
    assert (cell["method"], cell["seeds"], cell["solved"]) == ("SB3 DQN", 5, 4)
    assert cell["median_steps_to_solve"] == 52_000  # seeds 0, 1, 3, 4: 50k, 51k, 53k, 54k
    # IQM of 5 runs: trim 25% at each end -> mean of the middle values, as rl.analysis.stats.iqm
    from rl.analysis.stats import iqm

    assert cell["final_return"]["iqm"] == pytest.approx(iqm(finals))
    assert cell["final_return"]["low"] <= cell["final_return"]["iqm"] <= cell["final_return"]["high"]
    assert cell["median_wall_time_s"] == 102.0
    assert "cpu" in data and data["cells"]["cartpole"]["dqn_source"].startswith("rl-baselines3-zoo")
    assert results.with_name("sac_runs.csv").is_file()
    assert "| CartPole-v1 | SB3 DQN | - | 100k | 5 | 4/5 | 52.0k |" in capsys.readouterr().out
    sys.modules.pop("bench_sac", None)


def _fake_sac_run(runs, seed, status, final, steps, solved_at=None, target=0.1):
    """A run directory as rl-train leaves it: the composed config and the summary."""
    import yaml

    run = runs / f"algo=sac,env=lunarlander,policy=sparsemax,seed={seed}"
    (run / ".hydra").mkdir(parents=True)
    cfg = {"env": {"id": "LunarLander-v3", "solved_return": 200.0}, "algo": {"name": "sac"},
           "policy": {"name": "sparsemax", "alpha": 2.0, "temperature": 1.0}, "seed": seed,
           "total_steps": 500_000, "beta_schedule": {"target_entropy": target}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    summary = {"status": status, "steps": steps, "final_mean_return": final, "solved_at_step": solved_at,
               "eval_return_greedy": final + 1.0, "wall_time_s": 10.0}
    (run / "summary.json").write_text(json.dumps(summary))


def test_report_counts_a_diverged_run_at_its_returns_and_waits_for_an_interrupted_one(bench, tmp_path,
                                                                                    capsys):
    out = tmp_path / "out"
    _fake_sac_run(out / "runs", 0, "completed", 238.0, 500_000, solved_at=369_000)
    _fake_sac_run(out / "runs", 1, "diverged", -900.0, 192_000)
    _fake_sac_run(out / "runs", 2, "completed", -20.0, 500_000)
    _fake_sac_run(out / "runs", 3, "interrupted", 50.0, 100_000)  # resumable: not a result yet
    results = tmp_path / "sac.json"
    assert bench.main(["--no-train", "--envs", "lunarlander", "--mappings", "sparsemax", "--out", str(out),
                       "--results", str(results)]) == 0
    data = json.loads(results.read_text())
    (cell,) = data["table"]
    assert (cell["seeds"], cell["diverged"], cell["solved"]) == (3, 1, 1)
    from rl.analysis.stats import iqm

    assert cell["final_return"]["iqm"] == pytest.approx(iqm([238.0, -900.0, -20.0]))
    statuses = {r["seed"]: (r["status"], r["steps"]) for r in data["runs"]}
    assert statuses == {0: ("completed", 500_000), 1: ("diverged", 192_000), 2: ("completed", 500_000)}
    row = "| LunarLander-v3 | entropy-rl SAC | sparsemax | 500k | 3 (1 diverged) | 1/3 |"
    assert row in capsys.readouterr().out
    sys.modules.pop("bench_sac", None)


def test_combine_tabulates_the_union_of_parts_and_refuses_other_settings_or_a_run_twice(bench, tmp_path,
                                                                                         capsys):
    out = tmp_path / "out"
    finals = [100.0, 480.0, 300.0, 500.0, 20.0, 490.0]
    for seed, final in enumerate(finals):
        run = {"env": "CartPole-v1", "method": "SB3 DQN", "mapping": "-", "seed": seed, "budget": 100_000,
               "steps": 100_000, "final_return": final, "solved_at_step": None,
               "eval_greedy": 10.0 * seed, "wall_time_s": 1.0}
        path = out / "dqn" / "cartpole_100000" / f"seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run))
    a, b = tmp_path / "a.json", tmp_path / "b.json"  # seeds 0-2, then 3-5: two sittings' results
    assert bench.main(["--no-train", "--seeds", "3", "--out", str(out), "--results", str(a)]) == 0
    assert bench.main(["--no-train", "--seeds", "3", "--first-seed", "3", "--out", str(out),
                       "--results", str(b)]) == 0
    both = tmp_path / "both.json"
    assert bench.main(["--combine", str(a), str(b), "--results", str(both)]) == 0
    data = json.loads(both.read_text())
    (cell,) = data["table"]
    from rl.analysis.stats import iqm

    assert cell["seeds"] == 6 and cell["final_return"]["iqm"] == pytest.approx(iqm(finals))
    assert [r["seed"] for r in data["runs"]] == list(range(6))
    assert [r["source"] for r in data["runs"]] == ["a.json"] * 3 + ["b.json"] * 3
    assert [p["file"] for p in data["combined_from"]] == ["a.json", "b.json"]
    assert both.with_name("both_runs.csv").read_text().count("\n") == 7  # header and 6 runs
    assert "| CartPole-v1 | SB3 DQN | - | 100k | 6 |" in capsys.readouterr().out

    with pytest.raises(SystemExit, match=r"a\.json and .*a\.json both hold SB3 DQN - seed 0 on CartPole"):
        bench.main(["--combine", str(a), str(b), str(a), "--results", str(tmp_path / "x.json")])
    other = json.loads(b.read_text())
    other["cells"]["cartpole"]["dqn_hyperparameters"]["learning_rate"] = 1e-3
    c = tmp_path / "c.json"
    c.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match=r"c\.json's cartpole dqn_hyperparameters differs from .*a\.json's"):
        bench.main(["--combine", str(a), str(c), "--results", str(tmp_path / "x.json")])
    other = json.loads(b.read_text())
    other["cells"]["cartpole"]["sac_command"] += " algo.gamma=0.999"
    c.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="cartpole sac_command differs"):
        bench.main(["--combine", str(a), str(c), "--results", str(tmp_path / "x.json")])
    (tmp_path / "d.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"d\.json is not a results file of bench_sac\.py"):
        bench.main(["--combine", str(a), str(tmp_path / "d.json"), "--results", str(tmp_path / "x.json")])
    with pytest.raises(ValueError, match="--combine needs --results"):
        bench.parse_args(["--combine", str(a), str(b)])
    assert not (tmp_path / "x.json").exists()
    sys.modules.pop("bench_sac", None)


def test_sac_settings_are_recorded_and_a_part_run_at_other_settings_does_not_combine(bench, tmp_path):
    """The command of a part run before a preset changed is the same as one run after it: the
    runs' own composed configs tell them apart."""
    common = ["--no-train", "--envs", "lunarlander", "--mappings", "sparsemax", "--seeds", "2"]
    parts = {}
    for name, first, target in (("a", 0, 0.1), ("b", 2, 0.1), ("c", 2, 0.89)):
        out = tmp_path / name
        for seed in (first, first + 1):
            _fake_sac_run(out / "runs", seed, "completed", 100.0 + seed, 500_000, target=target)
        parts[name] = tmp_path / f"{name}.json"
        assert bench.main([*common, "--first-seed", str(first), "--out", str(out),
                           "--results", str(parts[name])]) == 0
    settings = json.loads(parts["a"].read_text())["cells"]["lunarlander"]["sac_settings"]
    assert settings["beta_schedule.target_entropy"] == 0.1 and settings["policy.temperature"] == 1.0
    assert not {"seed", "policy.name", "policy.alpha"} & set(settings)  # per run
    both = tmp_path / "ab.json"
    assert bench.main(["--combine", str(parts["a"]), str(parts["b"]), "--results", str(both)]) == 0
    assert json.loads(both.read_text())["table"][0]["seeds"] == 4
    with pytest.raises(SystemExit, match=r"c\.json's lunarlander SAC runs differ from .*a\.json's in "
                                         r"beta_schedule\.target_entropy: 0\.1 vs 0\.89"):
        bench.main(["--combine", str(parts["a"]), str(parts["c"]), "--results", str(tmp_path / "x.json")])
    old = json.loads(parts["b"].read_text())  # as written before settings were recorded
    del old["cells"]["lunarlander"]["sac_settings"]
    unrecorded = tmp_path / "old.json"
    unrecorded.write_text(json.dumps(old))
    with pytest.raises(SystemExit, match=r"old\.json does not record its lunarlander SAC runs' settings"):
        bench.main(["--combine", str(parts["a"]), str(unrecorded), "--results", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
    # one --out holding runs of two settings is refused at the report
    _fake_sac_run(tmp_path / "a" / "runs", 4, "completed", 50.0, 500_000, target=0.3)
    with pytest.raises(SystemExit, match=r"lunarlander SAC runs .*seed=0 and .*seed=4 differ in "
                                         r"beta_schedule\.target_entropy: 0\.1 vs 0\.3"):
        bench.main([*common, "--seeds", "5", "--out", str(tmp_path / "a"), "--results", str(tmp_path / "x.json")])
    sys.modules.pop("bench_sac", None)
