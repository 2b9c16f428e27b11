"""scripts/aggregate.py and scripts/plot.py on hand-made run directories and tables."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from aggregate import aggregate, mapping_name  # noqa: E402
from plot import bootstrap_ci, final_returns, iqm, summary_table, with_normalized_entropy  # noqa: E402


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


def test_resumed_run_keeps_one_value_per_step_the_newest(tmp_path):
    """Two event files, the second opened with purge_step at the resume point (what the
    trainer does): the first file's points from the resume step on are superseded."""
    rng = _rng()
    first = [(s, float(v)) for s, v in zip(range(100, 1100, 100), rng.normal(size=10), strict=True)]
    second = [(s, float(v)) for s, v in zip(range(600, 1600, 100), rng.normal(size=10), strict=True)]
    cfg = _cfg(1.0, 0.01, 0)
    _make_run(tmp_path, "run", cfg, {"losses/total": first})
    _make_run(tmp_path, "run", cfg, {"losses/total": second}, purge_step=600)
    table = aggregate(tmp_path)
    got = table[table.tag == "losses/total"].sort_values("step")
    want = dict(first)
    want.update(dict(second))
    assert list(got.step) == sorted(want)
    np.testing.assert_allclose(got.value, [want[s] for s in sorted(want)], rtol=1e-6)


def test_failed_and_unfinished_runs_are_labelled(tmp_path):
    _make_run(tmp_path, "a", _cfg(1.0, 0.0, 0), {"charts/SPS": [(1, 1.0)]})
    (tmp_path / "a" / "failed.json").write_text(json.dumps({"status": "failed"}))
    _make_run(tmp_path, "b", _cfg(2.0, 0.0, 0), {"charts/SPS": [(1, 1.0)]},
              {"status": "interrupted", "steps": 1})
    status = aggregate(tmp_path).groupby("run").status.first()
    assert status.to_dict() == {"a": "failed", "b": "interrupted"}


def test_bad_sweep_dir_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sweep_dir"):
        aggregate(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no run"):
        aggregate(tmp_path)


def test_iqm_and_bootstrap_ci():
    rng = _rng()
    x = rng.normal(size=20)
    s = np.sort(x)
    assert iqm(x) == pytest.approx(s[5:15].mean())  # the middle 50% of 20 runs
    lo, hi = bootstrap_ci(x, reps=500, seed=int(rng.integers(1000)))
    assert lo < iqm(x) < hi
    lo_mean, hi_mean = bootstrap_ci(x, stat=np.mean, reps=500)
    half_width = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert (hi_mean - lo_mean) == pytest.approx(2 * half_width, rel=0.3)
    assert all(np.isnan(bootstrap_ci(x[:1])))


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
        assert r.iqm == pytest.approx(iqm(v)) and r["mean"] == pytest.approx(v.mean())
        assert r.iqm_ci_low <= r.iqm <= r.iqm_ci_high


def test_final_return_falls_back_to_the_last_tenth_of_the_curve():
    rng = _rng()
    values = rng.normal(size=100)
    df = pd.DataFrame({"run": "r", "env": "E", "mapping": "softmax", "beta": 0.0, "seed": 0,
                       "step": np.arange(1, 101) * 10, "tag": "charts/episodic_return",
                       "value": values})
    final = final_returns(df, "beta")
    assert final.final_return.iloc[0] == pytest.approx(values[-11:].mean())


def test_normalized_entropy_divides_by_the_uniform_policys_entropy():
    rng = _rng()
    h = rng.uniform(0.1, 0.5, size=3)
    df = pd.DataFrame({"run": ["a", "b", "c"], "alpha": [1.0, 1.5, 2.0], "actions": [4, 4, 12],
                       "tag": "entropy/mean", "value": h, "step": 1})
    norm = with_normalized_entropy(df)
    got = norm[norm.tag == "entropy/normalized"].set_index("run").value
    h_max = [np.log(4), (1 - 4 ** -0.5) / 0.75, 0.5 * (1 - 1 / 12)]  # DESIGN.md max entropies
    np.testing.assert_allclose(got[["a", "b", "c"]], h / np.array(h_max), rtol=1e-6)
