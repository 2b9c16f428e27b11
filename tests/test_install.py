"""The package as users install it: the wheel holds the code and conf/, and runs from elsewhere.

.ci/run installs the wheel into a fresh virtual environment; here the wheel is built and unpacked
onto ``sys.path`` in front of the checkout (the same files an install puts in site-packages), and
``rl.train`` / ``rl.evaluate`` run from a directory outside the repository.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_and_config_folder_is_listed():
    """pyproject lists packages by hand (conf/ is mapped to rl/conf): a new folder must be added."""
    setup = _pyproject()["tool"]["setuptools"]
    listed = set(setup["packages"])
    # A folder that package-dir ships under another name (rl/hydra_plugin) is listed by that name.
    mapped = {ROOT / d for d in setup["package-dir"].values()}
    code = {".".join(p.parent.relative_to(ROOT).parts) for top in ("ops", "rl")
            for p in (ROOT / top).rglob("__init__.py") if p.parent not in mapped}
    conf = {".".join(("rl", "conf", *d.relative_to(ROOT / "conf").parts))
            for d in [ROOT / "conf", *(p for p in (ROOT / "conf").rglob("*") if p.is_dir())]
            if "__pycache__" not in d.parts}
    assert code | conf <= listed, f"add to [tool.setuptools] packages: {sorted((code | conf) - listed)}"
    assert setup["package-dir"] == {"rl.conf": "conf", "hydra_plugins.entropy_rl_launcher": "rl/hydra_plugin"}
    assert set(setup["package-dir"]) <= listed
    with_yaml = {name for name in conf
                 if list((ROOT / "conf" / Path(*name.split(".")[2:])).glob("*.yaml"))}
    assert {k for k, v in setup["package-data"].items() if "*.yaml" in v} == with_yaml


def test_license_is_an_spdx_expression():
    """The current form (PEP 639); the table form makes setuptools print a deprecation warning."""
    assert _pyproject()["project"]["license"] == "MIT"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built from a copy of the sources (no build/ folder in the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("ops", "rl", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "No module named" in proc.stderr and "setuptools" in proc.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "Deprecat" not in output and "is importable, but is absent" not in output, output[-3000:]
    (path,) = (tmp / "dist").glob("entropy_rl-*.whl")
    return path


def test_the_wheel_ships_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (ROOT / "conf").rglob("*.yaml"):
        assert f"rl/conf/{path.relative_to(ROOT / 'conf').as_posix()}" in names, path
    assert not any(n.startswith(("conf/", "tests/", "scripts/")) for n in names)
    # the population launcher in Hydra's plugin namespace, which other plugins share: no __init__
    assert "hydra_plugins/entropy_rl_launcher/__init__.py" in names
    assert "hydra_plugins/__init__.py" not in names
    assert not any(n.startswith("rl/hydra_plugin/") for n in names)


def test_installed_package_trains_and_evaluates_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    user = tmp_path / "user"
    user.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), HYDRA_FULL_ERROR="1")

    def run(*args):
        proc = subprocess.run([sys.executable, *args], cwd=user, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    where = run("-c", "import rl.train; print(rl.train.__file__); print(rl.train.CONF_DIR)").split()
    assert where == [str(site / "rl" / "train.py"), str(site / "rl" / "conf")]
    tiny = ["total_steps=32", "num_envs=2", "algo.n_steps=16", "algo.batch_size=16", "algo.update_epochs=1",
            "policy.hidden_sizes=[8]", "progress=false", "device=cpu"]
    run("-m", "rl.train", *tiny, "hydra.run.dir=run")
    assert json.loads((user / "run" / "summary.json").read_text())["steps"] == 32
    out = run("-m", "rl.evaluate", "checkpoint=run/checkpoints/last.pt", "episodes=1", "device=cpu")
    assert "1 greedy episodes: return" in out
    # every launcher preset composes from the shipped configs
    for launcher in sorted(p.stem for p in (site / "rl" / "conf" / "hydra" / "launcher").glob("*.yaml")):
        cfg = run("-m", "rl.train", f"hydra/launcher={launcher}", "--cfg", "hydra")
        assert "_target_: hydra_plugins." in cfg, launcher
    # the population launcher from the wheel: Hydra's scan finds it in site/hydra_plugins
    found = run("-c", "import sys, rl.train; from hydra.core.plugins import Plugins; "
                "c = Plugins.instance().class_name_to_class["
                "'hydra_plugins.entropy_rl_launcher.PopulationLauncher']; "
                "print(sys.modules[c.__module__].__file__)").strip()
    assert found == str(site / "hydra_plugins" / "entropy_rl_launcher" / "__init__.py")
    run("-m", "rl.train", "-m", *tiny, "seed=0,1", "hydra/launcher=population", "hydra.sweep.dir=pop")
    for seed in (0, 1):
        assert json.loads((user / "pop" / str(seed) / "summary.json").read_text())["steps"] == 32
