"""Atomic checkpoints: write a temp file, fsync it, rename it over the target.

A crash or a kill mid-write leaves the previous checkpoint intact: ``os.replace`` is atomic
on POSIX and on Windows, and the fsync makes sure the renamed file holds the data, not a
hole, after a power loss. Files load with ``torch.load(weights_only=True)``, so a checkpoint
holds tensors, numbers, strings, lists and dicts only (no pickled objects).

The optional env snapshot of ``exact_env_resume`` is a plain pickle in a separate file: it can
run code when loaded, so it is only read when the user asks for it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "save_pickle", "load_pickle", "env_snapshot_path"]

FORMAT_VERSION = 1


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically writes ``state`` (plus a format version) to ``path``."""
    return _atomic_write(Path(path), lambda f: torch.save({"format": FORMAT_VERSION, **state}, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint written by `save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint={str(path)!r} is not a file")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint={str(path)!r} is not an entropy-rl checkpoint of format {FORMAT_VERSION}"
        )
    return state


def env_snapshot_path(checkpoint: str | os.PathLike) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".envs.pkl")


def save_pickle(path: str | os.PathLike, obj: Any) -> Path:
    return _atomic_write(Path(path), lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def load_pickle(path: str | os.PathLike) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)  # noqa: S301 -- only for the user's own exact_env_resume files
