"""The run's files: one atomic writer, one checkpoint reader, one device resolver, one summary name.

Every file a run writes (checkpoints, ``summary.json``, ``failed.json``, env snapshots) goes
through `atomic_write`: write a temp file, fsync it, rename it over the target. A crash or a kill
mid-write leaves the previous file intact: ``os.replace`` is atomic on POSIX and on Windows, and
the fsync makes sure the renamed file holds the data, not a hole, after a power loss.

Checkpoints load with ``torch.load(weights_only=True)``, so a checkpoint holds tensors, numbers,
strings, lists and dicts only (no pickled objects). `load_checkpoint` is the only reader (the
trainer's resume, ``rl-eval`` and the scripts use it): a file that is missing, truncated, corrupt
or of another format is refused with a `CheckpointError` naming the file and what to do.

The optional env snapshot of ``exact_env_resume`` is a plain pickle in a separate file: it can
run code when loaded, so it is only read when the user asks for it.

This module imports torch only inside the functions that need it: ``rl.sweep`` and the
scripts read the summary name and write JSON without paying for it.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMAT_VERSION",
    "SUMMARY_FILE",
    "CheckpointError",
    "atomic_write",
    "write_json",
    "resolve_device",
    "save_checkpoint",
    "load_checkpoint",
    "save_pickle",
    "load_pickle",
    "env_snapshot_path",
]

FORMAT_VERSION = 1
# The run's final numbers, written by rl.trainer and read by rl.sweep and scripts/.
SUMMARY_FILE = "summary.json"


class CheckpointError(ValueError):
    """A checkpoint path that is not a readable checkpoint of this project."""


# ------------------------------------------------------------------------------ atomic files
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


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Calls ``write(f)`` on a binary temp file next to `path`, then renames it over `path`.

    The temp name carries the pid, so two processes writing the same target never share one;
    the last rename wins and the target is always one complete file.
    """
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


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Atomically writes `obj` as JSON plus a newline (values JSON lacks are written with ``str``).

    The writer of every JSON file of the project: run summaries, failure records, benchmark
    results."""
    text = json.dumps(obj, indent=indent, default=str) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


# ------------------------------------------------------------------------------ device
def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a torch.device; ``auto`` picks CUDA when present.

    Raises ValueError naming the value when it is not one of those or CUDA is absent.
    """
    import torch

    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (name in ("cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ValueError(f"device={name!r} is not allowed; allowed: auto | cpu | cuda | cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} is not available: torch sees no CUDA device; "
                         "use device=cpu or auto")
    return torch.device(name)


# ------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically writes ``state`` (plus a format version) to ``path``."""
    import torch

    return atomic_write(path, lambda f: torch.save({"format": FORMAT_VERSION, **state}, f))


_WHAT_TO_DO = ("pass a checkpoint written by rl-train (a run's checkpoints/last.pt); if this one is "
               "damaged, delete it (a run then starts afresh) or use an earlier copy")


def _what_the_file_is(path: Path) -> str:
    """A few words on a file torch.load refused, from its size and first bytes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"it cannot be read: {err}"
    if size == 0:
        return "the file is empty"
    if head == b"PK\x03\x04":  # torch.save writes a zip archive
        return f"a damaged or cut-off torch archive of {size} bytes"
    return f"{size} bytes that are not a torch archive"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    require: Iterable[str] = ("format",), name: str = "checkpoint") -> dict[str, Any]:
    """Reads a checkpoint written by `save_checkpoint` (``torch.load(weights_only=True)``).

    Parameters
    ----------
    path : the file.
    map_location : where its tensors go (``torch.load``'s argument).
    require : keys the caller reads. ``"format"`` (the default, the trainer's resume) also
        demands `FORMAT_VERSION`; ``rl-eval`` asks for ``("config", "model")`` and so also plays
        files saved by hand with those two keys.
    name : the parameter the path came from, for the messages (``checkpoint``, ``resume``).

    Raises `CheckpointError` (a ValueError) naming the file when it is missing, cannot be read
    by ``torch.load`` (truncated, corrupt, or another format such as a pickled model), or lacks
    a required key; the message says what to do.
    """
    import torch

    path = Path(path)
    shown = f"{name}={str(path)!r}"
    if not path.is_file():
        raise CheckpointError(f"{shown} is not a file; {_WHAT_TO_DO}")
    try:
        with warnings.catch_warnings():  # e.g. a foreign pickle's protocol warning: the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises OSError, RuntimeError, EOFError, UnpicklingError...
        # torch's own text (kept as the cause: HYDRA_FULL_ERROR=1 shows it) speaks of weights_only
        # and miniz; what the user needs is what the file is.
        raise CheckpointError(
            f"{shown} is not a readable entropy-rl checkpoint (truncated, corrupt or another format: "
            f"{_what_the_file_is(path)}; torch.load raised {type(err).__name__}); {_WHAT_TO_DO}"
        ) from err
    require = tuple(require)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{shown} holds a {type(state).__name__}, not an entropy-rl checkpoint "
                              f"(a dict); {_WHAT_TO_DO}")
    missing = [k for k in require if k not in state]
    if missing:
        raise CheckpointError(f"{shown} lacks {missing}: not an entropy-rl checkpoint; {_WHAT_TO_DO}")
    if ("format" in require or "format" in state) and state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{shown} is an entropy-rl checkpoint of format {state.get('format')!r}; this version reads "
            f"format {FORMAT_VERSION}"
        )
    return dict(state)


def env_snapshot_path(checkpoint: str | os.PathLike) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".envs.pkl")


def save_pickle(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def load_pickle(path: str | os.PathLike) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)  # noqa: S301 -- only for the user's own exact_env_resume files
