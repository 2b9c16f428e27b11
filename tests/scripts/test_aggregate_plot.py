"""scripts/aggregate.py, scripts/plot.py and scripts/reproduce.py as command lines: run as
subprocesses with the installed package, on hand-made run directories. The functions under
them are tested in tests/rl/test_analysis.py."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"


def _script(name, *args, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=300)


def _make_run(root: Path, name: str, cfg: dict, scalars: dict, summary=None):
    """A run directory as Hydra and the trainer leave it; `scalars`: {tag: [(step, value)]}."""
    from torch.utils.tensorboard import SummaryWriter

    run = root / name
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    writer = SummaryWriter(str(run / "tb"))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_no_script_manipulates_the_import_path():
    # check_gpu.py is tested in test_check_gpu.py.
    for path in sorted(set(SCRIPTS.glob("*.py")) - {SCRIPTS / "check_gpu.py"}):
        assert "sys.path" not in path.read_text(), path.name


def test_aggregate_then_plot_command_lines(tmp_path):
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    sweep = tmp_path / "sweep"
    finals = {}
    for alpha, name in ((1.0, "softmax"), (2.0, "sparsemax")):
        for beta in (0.0, 0.1):
            for seed in range(3):
                steps = np.arange(1, 11) * 100
                returns = rng.normal(100, 10, size=10)
                scalars = {"charts/episodic_return": list(zip(steps.tolist(), returns.tolist(),
                                                              strict=True)),
                           "entropy/mean": [(int(s), float(v)) for s, v in
                                            zip(steps, rng.uniform(0.1, 0.6, 10), strict=True)]}
                final = float(rng.normal(100, 10))
                run = f"{name}_b{beta}_s{seed}"
                _make_run(sweep, run, {"env": {"id": "CartPole-v1", "distractor_actions": 0},
                                       "policy": {"name": name, "alpha": alpha},
                                       "algo": {"name": "ppo"}, "beta": beta, "seed": seed},
                          scalars, {"status": "completed", "steps": 1000, "final_mean_return": final})
                finals[run] = (name, beta, final)

    result = _script("aggregate.py", sweep, "-o", tmp_path / "table.csv.gz")
    assert result.returncode == 0, result.stderr
    assert "12 runs" in result.stdout
    table = pd.read_csv(tmp_path / "table.csv.gz")
    assert set(table.run) == set(finals)

    result = _script("plot.py", tmp_path / "table.csv.gz", "-o", tmp_path / "fig", "--reps", 200,
                     "--formats", "png")
    assert result.returncode == 0, result.stderr
    for name in ("returns", "final_vs_beta", "entropy_support"):
        assert (tmp_path / "fig" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    summary = pd.read_csv(tmp_path / "fig" / "final_return.csv")
    assert len(summary) == 4 and (summary.seeds == 3).all()
    for _, r in summary.iterrows():
        v = np.sort([f for m, b, f in finals.values() if m == r.mapping and b == r.beta])
        assert r["mean"] == pytest.approx(v.mean()) and r["median"] == pytest.approx(v[1])
    md = (tmp_path / "fig" / "final_return.md").read_text().splitlines()
    assert md[0].startswith("| env | mapping | beta | seeds | IQM [95% CI]") and len(md) == 6


@pytest.mark.parametrize(
    "args, match",
    [(["plot.py", "missing.csv"], "table must be a file"),
     (["aggregate.py", "missing_dir"], "sweep_dir must be a directory"),
     (["reproduce.py", "ablation", "--scale", "0"], "--scale must be > 0")],
)
def test_bad_input_is_one_clear_error(tmp_path, args, match):
    result = _script(*args, cwd=tmp_path)
    assert result.returncode != 0 and match in result.stderr


def test_reproduce_dry_run_prints_the_commands(tmp_path):
    result = _script("reproduce.py", "distractors", "--dry-run", "--scale", "0.1", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "+experiment=distractors" in result.stdout and " seed=0\n" in result.stdout
    result = _script("reproduce.py", "bandit", "--dry-run", "--out", tmp_path)
    assert result.returncode == 0 and "scripts/bandit.py" in result.stdout


@pytest.mark.parametrize("name, option", [("beta_target", "--more-seeds"),
                                          ("distractor_support", "--min-distractors")])
def test_folded_reproductions_keep_their_options(name, option):
    result = _script("reproduce.py", name, "--help")
    assert result.returncode == 0 and option in result.stdout and f"reproduce.py {name}" in result.stdout
