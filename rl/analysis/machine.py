"""The machine and device a benchmark ran on, for its results file.

Imports only the standard library at import time and torch when called, so that
``scripts/check_gpu.py`` can use it on a bare GPU machine.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    """Installed version of distribution `name` (None if absent), read without importing it."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: str = "cpu", packages: tuple[str, ...] = ()) -> dict:
    """Host, CPU, Python and torch versions, torch's thread count and the device's name.

    device   : ``"cpu"`` or ``"cuda"`` (the current CUDA device is named).
    packages : further distributions whose versions to record (``"triton"``, ``"gymnasium"``).
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda'; got {device!r}")
    import torch

    info = {"machine": platform.node(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch sees no CUDA device")
        info["device_name"] = torch.cuda.get_device_name()
    else:
        info["device_name"] = f"CPU ({info['cpu']}, {info['torch_threads']} thread(s))"
    for name in packages:
        info[name] = package_version(name)
    return info
