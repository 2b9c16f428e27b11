"""The launcher presets and rl.sweep.RecordFailures, on a stand-in Hydra app.

The app mimics the trainer's contract (check_previous_run at start, summary.json at the
end) so these tests run without training anything; tests/scripts/test_sweep_end_to_end.py runs the
real trainer through the same launchers.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

APP = textwrap.dedent(
    """
    import json, os
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from rl.sweep import check_previous_run

    @hydra.main(version_base="1.3", config_path="conf", config_name="config")
    def main(cfg):
        run_dir = HydraConfig.get().runtime.output_dir
        status, _ = check_previous_run(run_dir)
        with open(os.path.join(run_dir, "attempts.txt"), "a") as f:
            f.write(status + "\\n")
        if status == "done":
            return  # never sys.exit in a sweep job: it kills the joblib sweep
        if cfg.fail:
            raise RuntimeError(f"planned failure x={cfg.x}")
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump({"final_mean_return": cfg.x}, f)

    if __name__ == "__main__":
        main()
    """
)

CONFIG = textwrap.dedent(
    """
    x: 0
    fail: false
    hydra:
      callbacks:
        record_failures:
          _target_: rl.sweep.RecordFailures
      sweep:
        dir: ${oc.env:SWEEP_DIR}
        subdir: ${hydra.job.override_dirname}
    """
)


def _run_sweep(app_dir: Path, sweep_dir: Path, launcher: str, overrides: list[str]):
    cmd = [
        sys.executable,
        str(app_dir / "app.py"),
        "-m",
        f"hydra/launcher={launcher}",
        f"hydra.searchpath=[file://{REPO / 'conf'}]",
        *overrides,
    ]
    env = {"SWEEP_DIR": str(sweep_dir), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=app_dir, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("launcher", ["local", "slurm_local"])
def test_failed_job_does_not_sink_the_sweep_and_rerun_skips_done(tmp_path, launcher):
    (tmp_path / "conf").mkdir()
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "conf" / "config.yaml").write_text(CONFIG)
    sweep_dir = tmp_path / "sweep"
    overrides = ["x=3,7", "fail=false,true"]

    first = _run_sweep(tmp_path, sweep_dir, launcher, overrides)
    assert first.returncode == 0, first.stderr[-3000:]
    for x in (3, 7):
        ok = sweep_dir / f"fail=False,x={x}"
        bad = sweep_dir / f"fail=True,x={x}"
        assert json.loads((ok / "summary.json").read_text()) == {"final_mean_return": x}
        failed = json.loads((bad / "failed.json").read_text())
        assert failed["status"] == "failed"
        assert f"planned failure x={x}" in failed["error"]
        assert "RuntimeError" in failed["traceback"]
        assert not (bad / "summary.json").exists()
    assert "2 run(s) failed" in first.stdout + first.stderr

    second = _run_sweep(tmp_path, sweep_dir, launcher, overrides)
    assert second.returncode == 0, second.stderr[-3000:]
    for x in (3, 7):
        ok = (sweep_dir / f"fail=False,x={x}" / "attempts.txt").read_text().split()
        bad = (sweep_dir / f"fail=True,x={x}" / "attempts.txt").read_text().split()
        assert ok == ["fresh", "done"]
        assert bad == ["fresh", "fresh"]  # a failed run is retried


def test_failures_are_fatal_when_asked(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "conf" / "config.yaml").write_text(CONFIG)
    result = _run_sweep(
        tmp_path,
        tmp_path / "sweep",
        "local",
        ["x=1,2", "fail=true", "+hydra.callbacks.record_failures.fatal=true"],
    )
    assert result.returncode != 0
    assert (tmp_path / "sweep" / "fail=True,x=1" / "failed.json").exists()
    assert (tmp_path / "sweep" / "fail=True,x=2" / "failed.json").exists()
