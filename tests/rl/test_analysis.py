"""rl.analysis: reading runs, the tidy table, statistics, figures' helpers, the folded
reproductions' measurements and machine info, on hand-made run directories and tables."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.stats import trim_mean

from rl.analysis import beta_target, stats, support
from rl.analysis.aggregate import (
    aggregate,
    final_returns,
    load_table,
    mapping_name,
    summary_table,
    with_normalized_entropy,
    write_table,
)
from rl.analysis.figures import _figure, binned_curves, suptitle
from rl.analysis.machine import machine_info
from rl.analysis.runs import find_runs, read_scalars, run_status, scalar_series


def _rng():
    return np.random.default_rng(np.random.SeedSequence().entropy)


def _make_run(root: Path, name: str, cfg: dict, scalars: dict, summary=None, purge_step=None):
    """A run directory as Hydra and the trainer leave it; `scalars`: {tag: [(step, value)]}."""
    from torch.utils.tensorboard import SummaryWriter

    run = root / name
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    writer = SummaryWriter(str(run / "tb"), purge_step=purge_step)
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def _cfg(alpha, beta, seed, k=0, env="CartPole-v1"):
    return {"env": {"id": env, "distractor_actions": k},
            "policy": {"name": mapping_name(alpha), "alpha": alpha},
            "algo": {"name": "ppo"}, "beta": beta, "seed": seed}


def _bootstrap_by_hand(values, stat, reps, seed):
    """The percentile bootstrap written out: resample i = values[rng.integers(0, n, (reps, n))[i]]."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(reps, len(values)))
    boots = np.array([stat(values[i]) for i in idx])
    return np.percentile(boots, 2.5), np.percentile(boots, 97.5)


# ------------------------------------------------------------------------------- the table
def test_table_holds_every_scalar_once_with_the_run_columns(tmp_path):
    rng = _rng()
    expected = {}
    for i, (alpha, beta, k) in enumerate([(1.0, 0.0, 0), (2.0, 0.01, 10), (1.5, 0.1, 3)]):
        seed = int(rng.integers(100))
        steps = np.sort(rng.choice(np.arange(1, 5000), size=7, replace=False))
        scalars = {tag: [(int(s), float(v)) for s, v in zip(steps, rng.normal(size=7), strict=True)]
                   for tag in ("charts/episodic_return", "entropy/mean")}
        final = float(rng.normal())
        _make_run(tmp_path / "sweep", f"run{i}", _cfg(alpha, beta, seed, k), scalars,
                  {"status": "completed", "steps": int(steps[-1]), "final_mean_return": final})
        expected[f"run{i}"] = (alpha, beta, seed, k, scalars, final)
    (tmp_path / "sweep" / "multirun.yaml").write_text("x: 1\n")  # not a run

    assert [p.name for p in find_runs(tmp_path / "sweep")] == sorted(expected)
    table = aggregate(tmp_path / "sweep")
    assert list(table.columns[:8]) == ["run", "env", "alpha", "beta", "seed", "step", "tag", "value"]
    assert set(table.run) == set(expected)
    for run, (alpha, beta, seed, k, scalars, final) in expected.items():
        rows = table[table.run == run]
        assert (rows.alpha == alpha).all() and (rows.beta == beta).all()
        assert (rows.seed == seed).all() and (rows.distractors == k).all()
        assert (rows.actions == 2 + k).all() and (rows.mapping == mapping_name(alpha)).all()
        assert (rows.status == "completed").all()
        for tag, points in scalars.items():
            got = rows[rows.tag == tag].sort_values("step")
            assert list(got.step) == [s for s, _ in points]
            np.testing.assert_allclose(got.value, [v for _, v in points], rtol=1e-6)
        got_final = rows[rows.tag == "summary/final_mean_return"]
        assert len(got_final) == 1 and got_final.value.iloc[0] == pytest.approx(final)
    reread = load_table(write_table(table, tmp_path / "t.csv.gz"))
    assert len(reread) == len(table) and list(reread.columns) == list(table.columns)


def test_resumed_run_keeps_one_value_per_step_the_newest(tmp_path):
    """Two event files, the second opened with purge_step at the resume point (what the
    trainer does): the first file's points from the resume step on are superseded."""
    rng = _rng()
    first = [(s, float(v)) for s, v in zip(range(100, 1100, 100), rng.normal(size=10), strict=True)]
    second = [(s, float(v)) for s, v in zip(range(600, 1600, 100), rng.normal(size=10), strict=True)]
    cfg = _cfg(1.0, 0.01, 0)
    _make_run(tmp_path, "run", cfg, {"losses/total": first})
    _make_run(tmp_path, "run", cfg, {"losses/total": second}, purge_step=600)
    want = dict(first)
    want.update(dict(second))
    table = aggregate(tmp_path)
    got = table[table.tag == "losses/total"].sort_values("step")
    assert list(got.step) == sorted(want)
    np.testing.assert_allclose(got.value, [want[s] for s in sorted(want)], rtol=1e-6)
    # The series reader of the folded reproductions agrees.
    steps, values = scalar_series(tmp_path / "run", ["losses/total", "never/logged"])["losses/total"]
    assert list(steps) == sorted(want)
    np.testing.assert_allclose(values, [want[s] for s in sorted(want)], rtol=1e-6)
    assert len(scalar_series(tmp_path / "run", ["never/logged"])["never/logged"][0]) == 0


def test_read_scalars_filters_tags_and_a_run_without_events_is_refused(tmp_path):
    run = _make_run(tmp_path, "run", _cfg(1.0, 0.0, 0), {"a": [(1, 1.0)], "b": [(1, 2.0), (2, 3.0)]})
    assert sorted(read_scalars(run, ["b"])) == [("b", 1, 2.0), ("b", 2, 3.0)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no TensorBoard event file"):
        scalar_series(tmp_path / "empty", ["a"])


def test_failed_and_unfinished_runs_are_labelled(tmp_path):
    _make_run(tmp_path, "a", _cfg(1.0, 0.0, 0), {"charts/SPS": [(1, 1.0)]})
    (tmp_path / "a" / "failed.json").write_text(json.dumps({"status": "failed"}))
    _make_run(tmp_path, "b", _cfg(2.0, 0.0, 0), {"charts/SPS": [(1, 1.0)]},
              {"status": "interrupted", "steps": 1})
    _make_run(tmp_path, "c", _cfg(2.0, 0.0, 1), {"charts/SPS": [(1, 1.0)]})
    (tmp_path / "c" / "summary.json").write_text("{not json")
    status = aggregate(tmp_path).groupby("run").status.first()
    assert status.to_dict() == {"a": "failed", "b": "interrupted", "c": "unreadable"}
    _make_run(tmp_path, "d", _cfg(2.0, 0.0, 2), {})
    assert run_status(tmp_path / "d") is None


def test_bad_sweep_dir_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sweep_dir"):
        aggregate(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no run"):
        aggregate(tmp_path)
    with pytest.raises(ValueError, match="table must be a file"):
        load_table(tmp_path / "missing.csv")


# ------------------------------------------------------------------------------- statistics
def test_iqm_is_the_mean_of_the_middle_half():
    x = _rng().normal(size=20)
    assert stats.iqm(x) == pytest.approx(np.sort(x)[5:15].mean())  # the middle 50% of 20 runs
    with pytest.raises(ValueError, match="finite"):
        stats.iqm([1.0, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        stats.iqm([])


@pytest.mark.parametrize("n", [2, 5, 13])
def test_iqm_ci_is_the_percentile_bootstrap_written_out(n):
    """The library's interval equals the hand-written resampling (so the committed tables,
    made with it, are reproduced) and holds the IQM."""
    rng = _rng()
    x = rng.normal(size=n)
    seed, reps = int(rng.integers(1000)), int(rng.integers(100, 600))
    lo, hi = stats.iqm_ci(x, reps=reps, seed=seed)
    want = _bootstrap_by_hand(x, lambda v: trim_mean(v, 0.25), reps, seed)
    np.testing.assert_allclose((lo, hi), want, rtol=1e-12, atol=1e-12)
    assert lo <= stats.iqm(x) <= hi
    assert all(np.isnan(stats.iqm_ci(x[:1])))


def test_mean_ci_is_the_percentile_bootstrap_of_the_mean():
    rng = _rng()
    x = rng.normal(size=20)
    seed = int(rng.integers(1000))
    mean, lo, hi = stats.mean_ci(x, reps=500, seed=seed)
    assert mean == pytest.approx(x.mean())
    np.testing.assert_allclose((lo, hi), _bootstrap_by_hand(x, np.mean, 500, seed), rtol=1e-12)
    half_width = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert (hi - lo) == pytest.approx(2 * half_width, rel=0.3)
    with pytest.raises(ValueError, match="reps"):
        stats.mean_ci(x, reps=0)


def test_probability_of_improvement_counts_pairs():
    rng = _rng()
    x = rng.integers(0, 5, size=7).astype(float)  # ties on purpose
    y = rng.integers(0, 5, size=4).astype(float)
    wins = (x[:, None] > y[None, :]).mean() + 0.5 * (x[:, None] == y[None, :]).mean()
    assert stats.probability_of_improvement(x, y) == pytest.approx(wins)
    assert stats.probability_of_improvement(x, y) + stats.probability_of_improvement(y, x) == \
        pytest.approx(1.0)


def test_mean_band_holds_the_mean_and_skips_missing_bins():
    rng = _rng()
    curves = [rng.normal(size=12) for _ in range(6)]
    curves[0][-3:] = np.nan  # a run that ended earlier
    mean, lo, hi = stats.mean_band(curves, reps=300, seed=int(rng.integers(100)))
    np.testing.assert_allclose(mean, np.nanmean(np.stack(curves), axis=0))
    assert np.all(lo <= mean + 1e-12) and np.all(mean <= hi + 1e-12)
    one, lo1, hi1 = stats.mean_band(curves[:1])
    np.testing.assert_array_equal(one, lo1)


# ------------------------------------------------------------------------------- summaries
def test_summary_table_per_cell():
    rng = _rng()
    rows = []
    for mapping in ("softmax", "sparsemax"):
        for beta in (0.0, 0.01):
            for seed in range(6):
                rows.append({"run": f"{mapping}{beta}{seed}", "env": "E", "mapping": mapping,
                             "beta": beta, "seed": seed, "final_return": float(rng.normal())})
    final = pd.DataFrame(rows)
    summary = summary_table(final, "beta", reps=200)
    assert len(summary) == 4 and (summary.seeds == 6).all()
    for _, r in summary.iterrows():
        v = final[(final.mapping == r.mapping) & (final.beta == r.beta)].final_return
        assert r.iqm == pytest.approx(stats.iqm(v)) and r["mean"] == pytest.approx(v.mean())
        assert (r.iqm_ci_low, r.iqm_ci_high) == stats.iqm_ci(v, reps=200)
        assert r.iqm_ci_low <= r.iqm <= r.iqm_ci_high


def test_final_return_falls_back_to_the_last_tenth_of_the_curve():
    values = _rng().normal(size=100)
    df = pd.DataFrame({"run": "r", "env": "E", "mapping": "softmax", "beta": 0.0, "seed": 0,
                       "step": np.arange(1, 101) * 10, "tag": "charts/episodic_return",
                       "value": values})
    final = final_returns(df, "beta")
    assert final.final_return.iloc[0] == pytest.approx(values[-11:].mean())


def test_normalized_entropy_divides_by_the_uniform_policys_entropy():
    h = _rng().uniform(0.1, 0.5, size=3)
    df = pd.DataFrame({"run": ["a", "b", "c"], "alpha": [1.0, 1.5, 2.0], "actions": [4, 4, 12],
                       "tag": "entropy/mean", "value": h, "step": 1})
    norm = with_normalized_entropy(df)
    got = norm[norm.tag == "entropy/normalized"].set_index("run").value
    h_max = [np.log(4), (1 - 4 ** -0.5) / 0.75, 0.5 * (1 - 1 / 12)]  # docs/DESIGN.md max entropies
    np.testing.assert_allclose(got[["a", "b", "c"]], h / np.array(h_max), rtol=1e-6)


def test_binned_curves_average_within_bins():
    rng = _rng()
    values = rng.normal(size=40)
    df = pd.DataFrame({"run": "r", "tag": "t", "step": np.arange(1, 41) * 25, "value": values})
    centres, curves = binned_curves(df, "t", bins=4)
    np.testing.assert_allclose(centres, [125, 375, 625, 875])
    # bin i holds steps in [250 i, 250 (i + 1)); the last bin also holds the last step
    want = [values[:9].mean(), values[9:19].mean(), values[19:29].mean(), values[29:].mean()]
    np.testing.assert_allclose(curves["r"], want)


# ------------------------------------------------------------------------------- beta_target
def _series(steps, values):
    return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=float)


@pytest.mark.parametrize("width", [3.0, 4.8, 9.6])
def test_suptitle_stays_inside_the_figure_at_any_width(width):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    title = "minatar: training return (mean over seeds, 95% bootstrap band) of MinAtar/SpaceInvaders-v1"
    fig, _ = _figure(1, 1, (width, 3.2))
    text = suptitle(fig, title)
    fig.set_layout_engine("constrained")
    FigureCanvasAgg(fig).draw()
    box = text.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width, (width, box, fig.bbox.width)
    assert text.get_text().replace("\n", " ") == title  # wrapped, nothing dropped
    assert ("\n" in text.get_text()) == (width < 9)  # a wide figure keeps one line


def test_beta_target_settled_entropy_is_the_window_mean_against_the_target():
    rng = _rng()
    steps = np.arange(1, 101) * 100
    ent = rng.uniform(0.2, 0.4, 100)
    target = 0.3
    scalars = {"entropy/mean": _series(steps, ent),
               "charts/episodic_return": _series(steps, rng.normal(100, 5, 100)),
               "policy/beta": _series(steps, rng.uniform(0.001, 0.1, 100)),
               "policy/target_entropy": _series(steps, np.full(100, target))}
    out = beta_target.summarize(scalars, window=0.2, tolerance=0.1, total_steps=10_000)
    assert out["window_start_step"] == 8000 and out["updates_in_window"] == 21  # steps 8000..10000
    assert out["settled_entropy"] == pytest.approx(ent[79:].mean())
    assert out["relative_error"] == pytest.approx(abs(ent[79:].mean() - target) / target)
    assert out["within_tolerance"] == (out["relative_error"] <= 0.1)
    assert out["fraction_of_updates_within_tolerance"] == pytest.approx(
        np.mean(np.abs(ent[79:] - target) <= 0.1 * target))
    assert beta_target.window_mean(steps, ent, 20_000) is None
    fixed = dict(scalars, **{"policy/target_entropy": _series([], [])})
    assert "target_entropy" not in beta_target.summarize(fixed, 0.2, 0.1, 10_000)


def test_beta_target_options_and_run_bookkeeping(tmp_path):
    args = beta_target.parse_args(["--steps", "2048", "--beta-min", "0.002", "--run-root", str(tmp_path)])
    target = beta_target.run_overrides("sparsemax", "target", 3, args)
    assert "beta_schedule.target_entropy=0.5" in target and "beta_schedule.min=0.002" in target
    assert "policy=sparsemax" in target and "algo.anneal_lr=false" in target and "seed=3" in target
    fixed = beta_target.run_overrides("softmax", "fixed", 0, args)
    assert not any(o.startswith("beta_schedule") for o in fixed)
    run = tmp_path / beta_target.run_name("sparsemax", "target", 3, args)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*target, "progress=false"]))
    assert not beta_target.completed(run, target, 2048)  # no summary yet
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps": 2048}))
    assert beta_target.completed(run, target, 2048)
    assert not beta_target.completed(run, target, 4096)
    assert not beta_target.completed(run, [*target, "algo.gamma=0.9"], 2048)
    for bad, match in ((["--target", "1.5"], "--target"), (["--beta-min", "0.5"], "--beta-min"),
                       (["--window", "0"], "--window")):
        with pytest.raises(ValueError, match=match):
            beta_target.parse_args(bad)


# ------------------------------------------------------------------------------- support
def test_support_states_and_stats():
    obs = support.states(n=50, seed=3)
    assert obs.shape == (100, 4) and obs.dtype == torch.float32
    assert obs[:50].abs().max() <= 0.05  # reset-like half
    torch.testing.assert_close(obs, support.states(n=50, seed=3))
    p = torch.tensor([0.0, 0.2, 0.0, 0.6])
    assert support.support_stats(p) == (pytest.approx(0.5), pytest.approx(0.2))


def test_support_measures_a_real_run_at_init_and_from_its_checkpoint(tmp_path):
    """A distractor run trained for one update: the row names its cell, reads its checkpoint
    through rl.checkpoint and gives fractions and probabilities in [0, 1]."""
    from hydra import compose, initialize_config_dir

    from rl.config import register_configs
    from rl.train import CONF_DIR
    from rl.trainer import Trainer

    register_configs()
    overrides = ["env.distractor_actions=3", "policy=sparsemax", "seed=1", "total_steps=256"]
    run = tmp_path / "runs" / "k3"
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("config", overrides=["+experiment=distractors", *overrides, "progress=false"])
    trainer = Trainer(cfg, run)
    try:
        trainer.train()
    finally:
        trainer.close()
    (run / ".hydra").mkdir(exist_ok=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["+experiment=distractors", *overrides]))
    assert support.finished_runs(tmp_path / "runs", 1) == [run]
    assert support.finished_runs(tmp_path / "runs", 4) == []
    row = support.measure(run, support.states(n=20), action=1)
    assert (row["policy"], row["distractors"], row["seed"], row["alpha"]) == ("sparsemax", 3, 1, 2.0)
    for key in ("in_support_init", "in_support_final", "p_init", "p_final"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["p_init"] == pytest.approx(1 / 5, abs=0.05)  # near uniform over 2 + 3 actions
    with pytest.raises(ValueError, match="action=9"):
        support.measure(run, support.states(n=5), action=9)
    with pytest.raises(ValueError, match="runs="):
        support.finished_runs(tmp_path / "nowhere", 1)


# ------------------------------------------------------------------------------- machine
def test_machine_info_names_the_device_and_the_packages():
    info = machine_info("cpu", ("numpy", "no-such-distribution"))
    assert info["device_name"].startswith("CPU (") and info["cpu_count"] >= 1
    assert info["torch"] == torch.__version__ and info["numpy"] == np.__version__
    assert info["no-such-distribution"] is None
    with pytest.raises(ValueError, match="device"):
        machine_info("tpu")


def test_machine_module_imports_nothing_heavy():
    """scripts/check_gpu.py imports it on a bare GPU machine: stdlib at import time only."""
    code = ("import sys, rl.analysis, rl.analysis.machine; "
            "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'matplotlib', 'gymnasium', "
            "'hydra', 'yaml', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
