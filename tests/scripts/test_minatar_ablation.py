"""``scripts/reproduce.py minatar_ablation`` (rl/analysis/minatar_ablation.py): the grid's command
lines, the per-run diagnostics, the tables' arithmetic on hand-made runs, and one tiny run end to end."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ops
from rl.analysis import minatar_ablation as ma
from rl.analysis import published
from rl.analysis.stats import iqm

REPO = Path(__file__).resolve().parents[2]
BREAKOUT, FREEWAY = "MinAtar/Breakout-v1", "MinAtar/Freeway-v1"


def test_commands_sweep_betas_and_targets_per_game(tmp_path):
    args = ma.parse_args(["--games", "breakout", "freeway", "--steps", "1000", "--seeds", "2",
                          "--out", str(tmp_path), "device=cpu"])
    cmds = dict(ma.sweep_commands(args))
    assert list(cmds) == ["breakout_beta", "breakout_target", "freeway_beta", "freeway_target"]
    beta = cmds["breakout_beta"]
    assert "env=minatar_breakout" in beta and "beta=0,0.001,0.01,0.1" in beta
    assert "policy=softmax,entmax15,sparsemax" in beta and "seed=0,1" in beta
    assert "total_steps=1000" in beta and "device=cpu" in beta and "hydra/launcher=population" in beta
    assert not any(a.startswith("beta_schedule") for a in beta)
    target = cmds["freeway_target"]
    assert "beta_schedule.target_entropy=0.1,0.3" in target and "beta=0.01" in target
    full = ma.parse_args(["--full", "--out", str(tmp_path)])
    assert (full.steps, full.seeds, full.games) == (10_000_000, 10, list(ma.DEFAULT_GAMES))


@pytest.mark.parametrize("argv, name", [
    (["--targets", "1.5"], "--targets"), (["--betas", "-1"], "--betas"),
    (["--mappings", "softmax,argmax"], "--mappings"), (["--full", "--steps", "5"], "--full"),
    (["--seeds", "0"], "--seeds"), (["--launcher", "mpi"], "--launcher"), (["oops"], "overrides"),
])
def test_bad_options_raise_one_error_naming_them(argv, name):
    with pytest.raises(ValueError, match=name):
        ma.parse_args(argv)


def _tidy(rows):
    cols = ["run", "env", "alpha", "beta", "seed", "step", "tag", "value", "mapping", "policy",
            "algo", "distractors", "actions", "status", "target_entropy"]
    return pd.DataFrame(rows, columns=cols)


def _run_rows(run, env, mapping, alpha, beta, target, seed, final, entropy, support, gpol, gent):
    """Scalars of a 10-update run: the entropy and support given by step, grad norms constant."""
    rows = []
    for i, step in enumerate(range(100, 1100, 100)):
        base = [run, env, alpha, beta, seed, step]
        meta = [mapping, mapping, "ppo", 0, 3, "completed", target]
        rows += [[*base, "entropy/mean", entropy(i), *meta],
                 [*base, "policy/support_size", support(i), *meta],
                 [*base, "grad_norm/policy", gpol, *meta],
                 [*base, "grad_norm/entropy", gent * (i + 1), *meta]]
    rows.append([run, env, alpha, beta, seed, 1000, "summary/final_mean_return", final,
                 mapping, mapping, "ppo", 0, 3, "completed", target])
    return rows


def test_per_run_diagnostics_and_normalized_score():
    rows = _run_rows("a", BREAKOUT, "softmax", 1.0, 0.01, np.nan, 0, 14.2, lambda i: 0.1 * i + 0.05,
                     lambda i: 3.0, 2.0, 0.1)
    rows += _run_rows("b", BREAKOUT, "sparsemax", 2.0, 0.01, 0.3, 1, 7.0, lambda i: 0.2,
                      lambda i: 3 - i / 5, 1.0, 0.0)
    summaries = pd.DataFrame({"run": ["a", "b"], "final_return": [14.2, 7.0], "budget": [1000, 1000],
                              "steps": [1000, 1000], "status": ["completed"] * 2})
    runs = ma.per_run(_tidy(rows), summaries).set_index("run")
    # the last 10% of steps (>= 900 of 1000): steps 900 and 1000, i = 8, 9
    assert runs.loc["a", "entropy_fraction"] == pytest.approx(np.mean([0.85, 0.95]) / math.log(3))
    assert runs.loc["b", "entropy_fraction"] == pytest.approx(0.2 / float(ops.max_entropy(2.0, 3)))
    assert runs.loc["b", "support_size"] == pytest.approx(np.mean([3 - 8 / 5, 3 - 9 / 5]))
    # median over training of entropy-term / policy-term norm: 0.1 * (i + 1) / 2 over i = 0..9
    assert runs.loc["a", "grad_ratio_median"] == pytest.approx(np.median([0.05 * (i + 1) for i in range(10)]))
    assert runs.loc["a", "cell"] == "beta=0.01" and runs.loc["b", "cell"] == "target=0.3"
    lo = published.RANDOM[BREAKOUT]
    assert runs.loc["a", "normalized"] == pytest.approx((14.2 - lo) / (28.0 - lo))


def _runs_table(values, statuses=None):
    """Hand-made per-run table: {(env, cell): [final returns over seeds]}, softmax only; statuses
    {(env, cell): [status over seeds]} where not all completed. A diverged run has no greedy eval."""
    rows = []
    for (env, cell), finals in values.items():
        kind, x = cell.split("=")
        beta, target = (float(x), np.nan) if kind == "beta" else (0.01, float(x))
        status = (statuses or {}).get((env, cell), ["completed"] * len(finals))
        for seed, (f, st) in enumerate(zip(finals, status, strict=True)):
            rows.append({"run": f"{env}/{cell}/{seed}", "env": env, "mapping": "softmax", "alpha": 1.0,
                         "beta": beta, "target_entropy": target, "cell": cell, "seed": seed,
                         "status": st, "budget": 1000, "steps": 1000, "wall_time_s": 1.0, "sps": 1.0,
                         "population_size": 1, "final_return": f,
                         "eval_greedy": f + 1 if st == "completed" else np.nan, "entropy_fraction": 0.5,
                         "support_size": 3.0, "grad_ratio_median": 0.1,
                         "normalized": float(published.normalized(f, env, "ppo"))})
    return pd.DataFrame(rows)


def test_tables_iqm_probability_of_improvement_and_target_against_best_fixed():
    runs = _runs_table({
        (BREAKOUT, "beta=0"): [10, 11, 12, 13], (BREAKOUT, "beta=0.01"): [20, 21, 22, 23],
        (BREAKOUT, "target=0.3"): [19, 20, 30, 31],
        (FREEWAY, "beta=0"): [30, 31, 32, 33], (FREEWAY, "beta=0.01"): [20, 21, 22, 23],
        (FREEWAY, "target=0.3"): [1, 2, 3, 4],
    })
    cells = ma.cells_table(runs)
    assert list(cells.cell[cells.env == BREAKOUT]) == ["beta=0", "beta=0.01", "target=0.3"]
    row = cells[(cells.env == BREAKOUT) & (cells.cell == "target=0.3")].iloc[0]
    assert row.iqm == pytest.approx(iqm([19, 20, 30, 31])) and row.seeds == 4
    assert row.greedy_iqm == pytest.approx(iqm([20, 21, 31, 32]))
    assert row.ci_low <= row.iqm <= row.ci_high
    agg, poi = ma.aggregate_table(runs)
    # beta=0.01 beats beta=0 on every pair in Breakout and loses every pair in Freeway
    p = poi[(poi.mapping == "softmax") & (poi.cell == "beta=0.01")].p_better_than_beta0.item()
    assert p == pytest.approx(0.5)
    assert set(agg.cell) == {"beta=0", "beta=0.01", "target=0.3"} and (agg.games == 2).all()
    tvf = ma.target_vs_fixed(cells).set_index("env")
    assert tvf.loc[BREAKOUT, "best_fixed"] == "beta=0.01" and bool(tvf.loc[BREAKOUT, "matches"])
    assert tvf.loc[FREEWAY, "best_fixed"] == "beta=0" and not bool(tvf.loc[FREEWAY, "matches"])


def test_select_keeps_diverged_runs_and_the_tables_count_them(tmp_path):
    """A diverged run is a result of its cell (at the return it had when it stopped); unfinished
    runs, and runs of another grid, wait. Leaving the diverged one out would raise the IQM."""
    runs = _runs_table({(BREAKOUT, "beta=0.1"): [20, 21, 22, 23, -5, 24, 25]},
                       {(BREAKOUT, "beta=0.1"): ["completed", "completed", "completed", "diverged",
                                                 "diverged", "interrupted", None]})
    args = ma.parse_args(["--games", "breakout", "--mappings", "softmax", "--betas", "0.1",
                          "--targets", "0.3", "--seeds", "7", "--steps", "1000"])
    kept = ma.select(runs, args)
    assert sorted(kept.seed) == [0, 1, 2, 3, 4]
    other = ma.select(runs.assign(budget=2000), args)
    assert other.empty
    cells = ma.cells_table(kept)
    row = cells.iloc[0]
    assert row.seeds == 5 and row.diverged == 2
    assert row.iqm == pytest.approx(iqm([20, 21, 22, 23, -5]))
    assert row.greedy_iqm == pytest.approx(iqm([21, 22, 23]))  # the runs with a final evaluation
    agg, poi = ma.aggregate_table(kept)
    ma.write_tables(kept, cells, agg, poi, ma.target_vs_fixed(cells), tmp_path)
    assert "| Breakout | softmax | beta=0.1 | 5 (2 diverged) |" in (tmp_path / "cells.md").read_text()
    written = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(written.status) == ["completed"] * 3 + ["diverged"] * 2


def test_a_tiny_grid_end_to_end(tmp_path):
    out = tmp_path / "ma"
    cmd = [sys.executable, str(REPO / "scripts" / "reproduce.py"), "minatar_ablation", "--games", "breakout",
           "--steps", "256", "--seeds", "1", "--betas", "0", "--targets", "0.3", "--mappings", "softmax",
           "--n-jobs", "1", "--out", str(out), "num_envs=4", "algo.n_steps=32", "algo.batch_size=64",
           "log_interval=1", "eval.episodes=1", "device=cpu"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs.cell) == ["beta=0", "target=0.3"] and (runs.budget == 256).all()
    assert runs.final_return.notna().all() and runs.entropy_fraction.between(0, 1).all()
    assert (runs.support_size > 0).all()
    for name in ("cells.md", "aggregate.md", "target_vs_fixed.md", "minatar_ablation.json"):
        assert (out / name).stat().st_size > 0, name
