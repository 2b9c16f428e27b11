"""``rl-train`` and ``rl-eval`` as a user runs them: subprocesses through ``python -m``.

Each subprocess pays the imports (torch, Hydra, gymnasium: a few seconds), so the runs are
tiny and the tests few: a complete run with the issue's example overrides and its evaluation,
a SIGTERM mid-run, and a bad value refused before anything is written.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rl.checkpoint import load_checkpoint
from rl.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[2]
TINY = ["num_envs=2", "algo.n_steps=16", "algo.batch_size=16", "algo.update_epochs=1",
        "policy.hidden_sizes=[8]", "progress=false", "device=cpu"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["HYDRA_FULL_ERROR"] = "0"
    return env


def _train_cmd(run_dir, *overrides):
    return [sys.executable, "-m", "rl.train", *overrides, f"hydra.run.dir={run_dir}"]


def test_rl_train_writes_the_run_directory_and_rl_eval_reads_it(tmp_path):
    run_dir = tmp_path / "run"
    # the example, shrunk (short Acrobot episodes keep the evaluation cheap)
    overrides = ["env=acrobot", "policy=sparsemax", "beta=0.03", "seed=2", "total_steps=96",
                 "env.max_episode_steps=40", "checkpoint_interval=64", "histogram_interval=2", *TINY]
    proc = subprocess.run(_train_cmd(run_dir, *overrides), cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["env"]["id"] == "Acrobot-v1" and resolved["policy"]["alpha"] == 2.0
    assert resolved["beta"] == 0.03 and resolved["seed"] == 2 and resolved["total_steps"] == 96
    assert resolved["env"]["max_episode_steps"] == 40
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()  # Hydra's own record of the command
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["global_step"] == 96 and state["config"]["policy"]["name"] == "sparsemax"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 96
    assert (summary["env"], summary["policy"], summary["alpha"], summary["beta"], summary["seed"]) == (
        "Acrobot-v1", "sparsemax", 2.0, 0.03, 2)
    assert not list(tmp_path.glob("outputs"))  # everything went to the run directory

    ckpt = run_dir / "checkpoints" / "last.pt"
    proc = subprocess.run([sys.executable, "-m", "rl.evaluate", f"checkpoint={ckpt}", "episodes=2",
                           "greedy=false", "seed=4", "device=cpu"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"2 sampled episodes: return (-?[\d.]+) (?:\+-|±) ([\d.]+)", proc.stdout)
    assert match, proc.stdout
    expected = evaluate(ckpt, episodes=2, greedy=False, seed=4, device="cpu")
    assert float(match.group(1)) == pytest.approx(expected["mean"], abs=0.005)
    assert float(match.group(2)) == pytest.approx(expected["std"], abs=0.005)
    assert -40.0 <= expected["mean"] <= 0.0  # Acrobot: -1 per step, at most 40 steps here


def test_sigterm_writes_a_checkpoint_and_an_interrupted_summary(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(run_dir, "total_steps=100000000", "checkpoint_interval=64", *TINY),
                            cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    ckpt = run_dir / "checkpoints" / "last.pt"
    try:
        deadline = time.monotonic() + 240
        # a periodic checkpoint proves the loop (and its signal handlers) is running
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ckpt.exists(), "no periodic checkpoint appeared"
        first = load_checkpoint(ckpt)["global_step"]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGTERM: finishing this update" in (run_dir / "train.log").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    final = load_checkpoint(ckpt)
    assert final["global_step"] == summary["steps"] and first <= final["global_step"] < 100000000


def _console_script(name):
    path = Path(sys.executable).with_name(name)
    if not path.is_file():
        pytest.skip(f"{name} is not installed next to {sys.executable}")
    return str(path)


def test_bad_value_is_refused_before_anything_is_written(tmp_path):
    """Through the console script: one clean line on stderr, no traceback, exit status 2."""
    run_dir = tmp_path / "run"
    cmd = [_console_script("rl-train"), "policy.alpha=0.5", *TINY, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rl-train: error: policy.alpha=0.5 is not allowed; allowed: ")
    assert not (run_dir / "summary.json").exists() and not (run_dir / "tb").exists()
    assert not (run_dir / "checkpoints").exists()


def test_hydra_full_error_shows_the_traceback(tmp_path):
    env = dict(_env(), HYDRA_FULL_ERROR="1")
    proc = subprocess.run(_train_cmd(tmp_path / "run", "policy.alpha=0.5", *TINY), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ValueError: policy.alpha=0.5 is not allowed" in proc.stderr


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_unreadable_resume_checkpoint_names_the_file(tmp_path, damage):
    path = tmp_path / f"{damage}.pt"
    if damage == "truncated":  # the first bytes of a real torch archive
        import torch

        torch.save({"format": 1, "model": {"w": torch.zeros(64, 64)}}, path)
        path.write_bytes(path.read_bytes()[:5000])
    else:
        path.write_text("model: not a checkpoint\n")
    proc = subprocess.run(_train_cmd(tmp_path / "run", f"resume={path}", *TINY), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    expected = f"rl-train: error: resume={str(path)!r} is not a readable entropy-rl checkpoint"
    assert lines[0].startswith(expected)
    assert "truncated, corrupt or another format" in lines[0]
    assert "pass a checkpoint written by rl-train" in lines[0]  # what to do


def test_a_run_composes_once_and_imports_no_compiler(tmp_path, monkeypatch):
    """Start-up: Hydra composes the config once; torch._dynamo (1.8 s) and ale_py are never imported."""
    code = (
        "import sys\n"
        "from hydra._internal.hydra import Hydra\n"
        "calls = []\n"
        "real = Hydra.compose_config\n"
        "def spy(self, *a, **k):\n"
        "    calls.append(k.get('run_mode'))\n"
        "    return real(self, *a, **k)\n"
        "Hydra.compose_config = spy\n"
        "import rl.train\n"
        f"sys.argv = ['rl-train', 'total_steps=32', *{TINY!r}, 'hydra.run.dir={tmp_path / 'run'}']\n"
        "rl.train.main()\n"
        "print('COMPOSED', len(calls), sorted(m for m in ('torch._dynamo', 'ale_py') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "COMPOSED 1 []" in proc.stdout, proc.stdout[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 32


@pytest.mark.parametrize("argv,expected", [
    (["beta=0.1", "-m", "seed=0,1"], True),
    (["hydra.mode=MULTIRUN", "seed=0,1"], False),
    (["--config-dir", "/elsewhere", "beta=0.1"], False),
    (["-cd=/elsewhere"], False),
    (["hydra.searchpath=[file:///elsewhere]", "+experiment=mine"], False),
])
def test_the_mode_compose_is_skipped_only_when_the_flags_decide(argv, expected):
    from rl.train import _mode_comes_from_the_flags

    assert _mode_comes_from_the_flags(argv) is expected


def test_shipped_configs_never_set_hydra_mode():
    """rl.train skips Hydra's mode-reading compose on that premise."""
    for path in (ROOT / "conf").rglob("*.yaml"):
        cfg = yaml.safe_load(path.read_text()) or {}
        assert "mode" not in (cfg.get("hydra") or {}), path


def test_console_scripts_point_at_the_entry_points():
    """``rl-train`` / ``rl-eval`` (pyproject [project.scripts], installed) run the functions above."""
    from importlib.metadata import entry_points

    scripts = {e.name: e for e in entry_points(group="console_scripts") if e.name in ("rl-train", "rl-eval")}
    assert {name: e.value for name, e in scripts.items()} == {
        "rl-train": "rl.train:main", "rl-eval": "rl.evaluate:main"}
    import rl.evaluate
    import rl.train

    assert scripts["rl-train"].load() is rl.train.main and scripts["rl-eval"].load() is rl.evaluate.main
