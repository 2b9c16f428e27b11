"""``rl-train``: the Hydra entry point (``python -m rl.train`` works too).

    rl-train                                        # CartPole-v1, PPO, softmax
    rl-train env=acrobot policy=sparsemax beta=0.03 seed=2
    rl-train resume=outputs/2026-11-23/01-00-00/checkpoints/last.pt

Everything a run writes lands in Hydra's run directory (README, section Training).

Start-up (README, section Start-up): this module imports Hydra and the config schema only; torch,
gymnasium and the trainer are imported when the task runs, TensorBoard and tqdm when training
starts. Errors: a bad value or an unreadable checkpoint (a ValueError, the project's error for
bad input) prints one line, ``rl-train: error: ...``, and exits with status 2; set
``HYDRA_FULL_ERROR=1`` for the whole traceback (Hydra's documented switch). In a multirun the
error stays the job's (rl.sweep.RecordFailures records it) so the other jobs go on.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rl.config import register_configs
from rl.launcher import register_hydra_plugin

log = logging.getLogger(__name__)
register_configs()
register_hydra_plugin()  # hydra/launcher=population in a checkout too (rl/launcher.py)


def _conf_dir() -> str:
    """The config folder: ``rl/conf`` inside an installed wheel (pyproject maps the repository's
    top-level ``conf/`` there), else ``conf/`` next to the package in a checkout (editable install,
    ``python -m rl.train`` from the repository). An absolute path: a relative config_path would be
    looked up as a Python package."""
    here = Path(__file__).resolve().parent
    shipped = here / "conf"
    return str(shipped if (shipped / "config.yaml").is_file() else here.parent / "conf")


CONF_DIR = _conf_dir()


def task(cfg: DictConfig) -> float | None:
    """One run: what Hydra calls with the composed config (once per job in a multirun)."""
    try:
        return _train(cfg)
    except ValueError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or _is_multirun():
            raise
        print(f"rl-train: error: {err}", file=sys.stderr)
        # SystemExit passes Hydra's job runner and its traceback printer; its cleanup still runs.
        raise SystemExit(2) from None


def _is_multirun() -> bool:
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _train(cfg: DictConfig) -> float | None:
    from rl.population import prepare_member, train_population

    # validates (a bad alpha/beta/temperature fails here, before any env is built), skips a
    # finished run, finds the checkpoint to auto-resume from, writes config.yaml
    member = prepare_member(cfg, Path(HydraConfig.get().runtime.output_dir))
    if member is None:
        return None
    (summary,) = train_population([member])  # a single run is a population of one
    if summary["status"] == "diverged":
        from rl.trainer import TrainingDiverged

        raise TrainingDiverged(summary.get("diverged", "the run diverged"))
    log.info("%s: %d steps, mean return %.1f, %.1f s (%s)", summary["status"], summary["steps"],
             summary["final_mean_return"] or float("nan"), summary["wall_time_s"], member.run_dir)
    return summary["final_mean_return"]  # the value Hydra sweepers optimize


_hydra_main = hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")(task)

# Command-line options that can bring in a config setting hydra.mode (a user's config folder;
# hydra.searchpath does the same from an override).
_OTHER_CONFIG_OPTIONS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def _mode_comes_from_the_flags(argv: list[str]) -> bool:
    """True when only ``-m``/``--multirun`` decides run vs multirun: no override of ``hydra.mode``
    and no other config folder. The shipped configs never set it (tests/rl/test_train_cli.py)."""
    return not any("hydra.mode" in arg or "hydra.searchpath" in arg
                   or arg.split("=", 1)[0] in _OTHER_CONFIG_OPTIONS for arg in argv)


def run_composing_once(app) -> None:
    """Runs a ``hydra.main`` app (``rl-train``, ``rl-eval``) so that Hydra composes the config once.

    Before running, Hydra composes the whole config an extra time only to read ``hydra.mode``
    (``Hydra.get_mode``), a third of Hydra's start-up. When the command line alone decides the
    mode (see `_mode_comes_from_the_flags`) that answer is "not set", and Hydra then takes the mode
    from ``-m`` exactly as it would after composing.
    """
    from hydra._internal.hydra import Hydra

    original = getattr(Hydra, "get_mode", None)
    if original is None or not _mode_comes_from_the_flags(sys.argv[1:]):
        app()
        return
    Hydra.get_mode = lambda self, config_name, overrides: None
    try:
        app()
    finally:
        Hydra.get_mode = original


def main() -> None:
    """``rl-train``."""
    run_composing_once(_hydra_main)


if __name__ == "__main__":
    main()
