"""rl.sweep.check_previous_run: what a previous attempt left in a run directory."""

import json
import os
import uuid

import pytest

from rl.sweep import check_previous_run, find_checkpoint, summary_is_complete


def _write(path, content: bytes | str):
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode) as f:
        f.write(content)
    return path


def _summary(**extra):
    return json.dumps({"final_mean_return": float(os.urandom(1)[0]), "steps": 1000, **extra})


def test_missing_and_empty_dirs_are_fresh(tmp_path):
    assert check_previous_run(tmp_path / uuid.uuid4().hex) == ("fresh", None)
    assert check_previous_run(tmp_path) == ("fresh", None)
    _write(tmp_path / ".hydra" / "config.yaml", "seed: 0\n")  # Hydra writes this first
    assert check_previous_run(tmp_path) == ("fresh", None)


@pytest.mark.parametrize("status", [None, "completed", "diverged", "solved"])
def test_complete_summary_is_done(tmp_path, status):
    extra = {} if status is None else {"status": status}
    _write(tmp_path / "summary.json", _summary(**extra))
    _write(tmp_path / "checkpoints" / "last.pt", os.urandom(64))
    assert check_previous_run(tmp_path) == ("done", None)


@pytest.mark.parametrize(
    "content",
    [
        _summary(status="failed"),
        _summary(status="Interrupted"),
        _summary(status="running"),
        _summary()[:-7],  # truncated: a writer crashed mid-file
        "{}",
        "[1, 2]",
        "",
    ],
)
def test_incomplete_summary_resumes_from_checkpoint(tmp_path, content):
    _write(tmp_path / "summary.json", content)
    assert not summary_is_complete(tmp_path / "summary.json")
    assert check_previous_run(tmp_path) == ("fresh", None)
    ckpt = _write(tmp_path / "checkpoints" / f"step_{os.urandom(2).hex()}.pt", os.urandom(64))
    assert check_previous_run(tmp_path) == ("resume", ckpt)


def test_checkpoint_choice(tmp_path):
    old = _write(tmp_path / "ckpt" / "step_1000.pt", os.urandom(32))
    new = _write(tmp_path / "ckpt" / "step_2000.pt", os.urandom(32))
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))
    os.utime(new, ns=(2_000_000_000, 2_000_000_000))
    assert find_checkpoint(tmp_path) == new
    # Leftovers of an atomic write (temp names, dot-files) and empty files are not checkpoints.
    _write(tmp_path / "ckpt" / ".step_3000.pt", os.urandom(32))
    _write(tmp_path / "ckpt" / "step_3000.pt.tmp", os.urandom(32))
    _write(tmp_path / "ckpt" / "step_4000.pt", b"")
    assert find_checkpoint(tmp_path) == new
    # A file named last.pt wins over a newer numbered one.
    last = _write(tmp_path / "last.pt", os.urandom(32))
    os.utime(last, ns=(500_000_000, 500_000_000))
    assert check_previous_run(tmp_path) == ("resume", last)


def test_run_dir_that_is_a_file_is_an_error(tmp_path):
    path = _write(tmp_path / "not_a_dir", "x")
    with pytest.raises(ValueError, match="run_dir"):
        check_previous_run(path)
