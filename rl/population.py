"""Population training: K runs of one sweep trained together in one process.

Public API (the population launcher, rl/launcher.py, and scripts use only these):

* `Member` -- one run of a population: its composed config, run directory and checkpoint to
  resume from.
* `prepare_member(cfg, run_dir)` -- what ``rl-train`` does before a single run: validates the
  config, skips a finished run (returns None), finds the checkpoint to auto-resume from and
  writes ``config.yaml``.
* `population_key(cfg)` -- runs whose keys are equal can share a population (same env, algo,
  network shapes, total steps, ...); they may differ in seed, beta and its schedule, the
  temperature and its schedule, the policy mapping (alpha) and the learning rates.
* `train_population(members)` -- trains them; returns one summary per member, in order. One
  member's divergence or failure never stops the others: its summary says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rl.config import validate

__all__ = ["Member", "MEMBER_FIELDS", "prepare_member", "population_key", "train_population"]

log = logging.getLogger(__name__)

# Config fields in which members of one population may differ (dotted paths). Everything else
# must be equal.
MEMBER_FIELDS = ("seed", "beta", "beta_schedule", "policy.name", "policy.alpha",
                 "policy.temperature", "policy.temperature_schedule", "algo.learning_rate",
                 "algo.q_learning_rate", "resume")  # q_learning_rate: SAC's critics


@dataclass
class Member:
    """One run of a population."""

    cfg: DictConfig
    run_dir: Path
    resume: str | None = None


def prepare_member(cfg: DictConfig, run_dir: str | Path) -> Member | None:
    """Validates ``cfg``, resolves auto-resume in ``run_dir`` and writes ``config.yaml``.

    Returns None when ``run_dir`` already holds a finished run (nothing to do).
    """
    validate(cfg)
    run_dir = Path(run_dir)
    resume = cfg.resume
    if resume is None and cfg.auto_resume:
        from rl.sweep import check_previous_run

        status, checkpoint = check_previous_run(run_dir)
        if status == "done":
            log.info("%s already holds a finished run; nothing to do", run_dir)
            return None
        resume = None if checkpoint is None else str(checkpoint)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return Member(cfg, run_dir, None if resume is None else str(resume))


def population_key(cfg: DictConfig) -> str:
    """A string equal for configs that can train in one population."""
    data: Any = OmegaConf.to_container(cfg, resolve=True)
    for dotted in MEMBER_FIELDS:
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    data.pop("hydra", None)
    return json.dumps(data, sort_keys=True, default=str)


def train_population(members: Sequence[Member], **trainer_kwargs: Any) -> list[dict[str, Any]]:
    """Trains ``members`` (equal `population_key`) together; one summary per member, in order.

    ``trainer_kwargs`` go to the trainer: `rl.trainer.Trainer` for PPO and A2C, `rl.sac.SACTrainer`
    for SAC (``algo.name == "sac"``; ``callbacks``, ``make_envs``), both one batched computation
    for the K members.
    """
    if any(str(m.cfg.algo.name) == "sac" for m in members):
        from rl.sac import SACTrainer as trainer_class
    else:
        from rl.trainer import Trainer as trainer_class

    trainer = trainer_class(members=list(members), **trainer_kwargs)
    try:
        return trainer.train()
    finally:
        trainer.close()
