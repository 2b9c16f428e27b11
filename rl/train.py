"""``rl-train``: the Hydra entry point (``python -m rl.train`` works too).

    rl-train                                        # CartPole-v1, PPO, softmax
    rl-train env=acrobot policy=sparsemax beta=0.03 seed=2
    rl-train resume=outputs/2026-11-23/01-00-00/checkpoints/last.pt

Everything a run writes lands in Hydra's run directory (README, section Training).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rl.config import register_configs, validate

log = logging.getLogger(__name__)
register_configs()


# An absolute path: the console script runs this module from an installed package, where a
# relative config_path would be looked up as a Python package.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    validate(cfg)  # bad alpha/beta/temperature etc. fail here, before any env is built
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    resume = cfg.resume
    if resume is None and cfg.auto_resume:
        from rl.sweep import check_previous_run

        status, checkpoint = check_previous_run(run_dir)
        if status == "done":
            log.info("%s already holds a finished run; nothing to do", run_dir)
            return None
        resume = None if checkpoint is None else str(checkpoint)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    from rl.trainer import Trainer

    trainer = Trainer(cfg, run_dir, resume=resume)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    log.info("%s: %d steps, mean return %.1f, %.1f s (%s)", summary["status"], summary["steps"],
             summary["final_mean_return"] or float("nan"), summary["wall_time_s"], run_dir)
    return summary["final_mean_return"]  # the value Hydra sweepers optimize


if __name__ == "__main__":
    main()
