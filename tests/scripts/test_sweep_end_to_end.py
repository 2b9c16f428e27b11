"""A tiny real sweep end to end: rl-train -m through joblib and through submitit's local
executor, then the aggregation and figures behind scripts/aggregate.py and scripts/plot.py
(rl.analysis) on its output.

2 x 2 runs (beta x mapping) of 512 CartPole steps each, two PPO updates per run. After
the joblib sweep one run is replaced by an interrupted one and the sweep re-run: the
re-run contract with the real trainer (finished runs skipped, the interrupted one resumed
from its checkpoint).
"""

import json
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rl.analysis.aggregate import aggregate, load_table, write_table
from rl.analysis.figures import make_all

REPO = Path(__file__).resolve().parents[2]

STEPS = 512  # two updates of 8 envs x 32 steps
UPDATE_STEPS = (256, 512)
BETAS = (0.0, 0.1)
POLICIES = {"softmax": 1.0, "sparsemax": 2.0}
# Scalars the trainer writes at every update (README: TensorBoard tags).
PER_UPDATE_TAGS = ("entropy/mean", "policy/support_size", "grad_norm/policy",
                   "grad_norm/entropy", "losses/policy", "charts/SPS")


def _sweep(sweep_dir: Path, launcher: list[str], seed: int):
    cmd = [sys.executable, "-m", "rl.train", "-m", "+experiment=entropy_ablation",
           "env=cartpole", f"total_steps={STEPS}", f"beta={','.join(f'{b:g}' for b in BETAS)}",
           f"policy={','.join(POLICIES)}", f"seed={seed}", f"hydra.sweep.dir={sweep_dir}",
           *launcher]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _run_dir(sweep_dir, beta, policy, seed):
    return sweep_dir / f"beta={beta:g},env=cartpole,policy={policy},seed={seed},total_steps={STEPS}"


def _check_table(table: pd.DataFrame, seed: int) -> None:
    assert table.run.nunique() == len(BETAS) * len(POLICIES)
    cells = table.groupby("run")[["env", "alpha", "beta", "seed", "mapping", "status"]].first()
    assert set(map(tuple, cells[["alpha", "beta"]].to_numpy())) == {
        (a, b) for a in POLICIES.values() for b in BETAS}
    assert (cells.env == "CartPole-v1").all() and (cells.seed == seed).all()
    assert (cells.status == "completed").all()
    assert (table.actions == 2).all()
    for tag in PER_UPDATE_TAGS:  # one row per run and update, at the update's env step
        rows = table[table.tag == tag]
        assert len(rows) == table.run.nunique() * len(UPDATE_STEPS), tag
        for _, steps in rows.groupby("run").step:
            assert tuple(sorted(steps)) == UPDATE_STEPS, tag
    # No (run, tag, step) twice, and the summary's final return is there once per run.
    assert not table.duplicated(["run", "tag", "step"]).any()
    final = table[table.tag == "summary/final_mean_return"]
    assert len(final) == table.run.nunique() and (final.step == STEPS).all()
    # beta = 0 means no entropy gradient at all; beta > 0 a nonzero one.
    ent = table[table.tag == "grad_norm/entropy"]
    assert (ent[ent.beta == 0].value == 0).all() and (ent[ent.beta > 0].value > 0).all()


def _check_plots(table: pd.DataFrame, out: Path) -> None:
    written = make_all(table, out, x_col="beta", reps=50, formats=("png",))
    names = {p.name for p in written}
    for name in ("returns", "final_vs_beta", "entropy_support", "grad_norms"):
        assert f"{name}.png" in names
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    summary = pd.read_csv(out / "final_return.csv")
    assert len(summary) == len(BETAS) * len(POLICIES)
    assert (summary.seeds == 1).all()
    assert set(summary.mapping) == {"softmax", "sparsemax"}


@pytest.mark.parametrize(
    "launcher",
    [["hydra/launcher=local", "hydra.launcher.n_jobs=2"],
     ["hydra/launcher=slurm_local", "hydra.sweeper.max_batch_size=2"]],
    ids=["joblib", "submitit_local"],
)
def test_tiny_sweep_aggregate_plot(tmp_path, launcher):
    seed = random.randrange(1000)
    sweep_dir = tmp_path / "sweep"
    _sweep(sweep_dir, launcher, seed)
    for beta in BETAS:
        for policy in POLICIES:
            summary = json.loads((_run_dir(sweep_dir, beta, policy, seed) / "summary.json")
                                 .read_text())
            assert summary["status"] == "completed" and summary["steps"] == STEPS
    if "slurm_local" in launcher[0]:  # submitit wrote its per-job folders
        assert any((sweep_dir / ".submitit").iterdir())

    table = aggregate(sweep_dir)
    _check_table(table, seed)
    path = write_table(table, tmp_path / "table.csv.gz")
    reread = load_table(path)
    assert len(reread) == len(table)
    _check_plots(reread, tmp_path / "figures")
    if "slurm_local" not in launcher[0]:
        _check_rerun(sweep_dir, launcher, seed)


def _interrupt_at_first_update(run_dir: Path) -> None:
    """Replace a finished run by one stopped after its first update, as a killed job leaves
    it: checkpoint at step 256, summary status "interrupted"."""
    from omegaconf import OmegaConf

    from rl.trainer import Trainer

    for name in ("tb", "checkpoints"):
        for p in sorted((run_dir / name).rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
    (run_dir / "summary.json").unlink()
    trainer = Trainer(OmegaConf.load(run_dir / "config.yaml"), run_dir)
    try:
        summary = trainer.train(stop_at_step=UPDATE_STEPS[0])
    finally:
        trainer.close()
    assert summary["status"] == "interrupted" and summary["steps"] == UPDATE_STEPS[0]


def _check_rerun(sweep_dir: Path, launcher: list[str], seed: int) -> None:
    """Re-running the sweep skips finished runs and resumes an interrupted one."""
    victim = _run_dir(sweep_dir, 0.1, "sparsemax", seed)
    _interrupt_at_first_update(victim)
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("summary.json")}
    assert len(before) == len(BETAS) * len(POLICIES)

    _sweep(sweep_dir, launcher, seed)
    for path, mtime in before.items():
        log = (path.parent / "train.log").read_text()
        if path.parent == victim:
            assert f"at env step {UPDATE_STEPS[0]}" in log and "resumed from" in log
            summary = json.loads(path.read_text())
            assert summary["status"] == "completed" and summary["steps"] == STEPS
        else:
            assert path.stat().st_mtime_ns == mtime  # not trained again
            assert "already holds a finished run" in log
    table = aggregate(sweep_dir)
    assert not table.duplicated(["run", "tag", "step"]).any()
    resumed = table[table.run == victim.name]
    assert (resumed.status == "completed").all()
    for tag in PER_UPDATE_TAGS:
        steps = set(resumed[resumed.tag == tag].step)
        # The first update's scalars are lost to the trainer's purge_step (tests/rl/
        # test_trainer.py xfail); the resumed update's are there once.
        assert STEPS in steps and steps <= set(UPDATE_STEPS), tag
