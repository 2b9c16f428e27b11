"""``rl-eval``: play a trained checkpoint and report its mean episode return.

    rl-eval checkpoint=outputs/.../checkpoints/last.pt episodes=10
    rl-eval checkpoint=PATH episodes=5 greedy=false seed=3 video=videos/ device=cpu

A Hydra app like ``rl-train``: its options are the config ``conf/eval.yaml`` (schema `EvalConfig`,
shipped with the package), set with the same override syntax, checked by the same schema types,
listed by ``rl-eval --help`` / ``rl-eval --cfg job``. It writes no run directory. A bad value or an
unreadable checkpoint prints one line, ``rl-eval: error: ...``, and exits with status 2
(``HYDRA_FULL_ERROR=1``: the whole traceback).

- ``checkpoint`` (required): a file written by the trainer (rl/checkpoint.py).
- ``episodes`` (10): number of complete episodes to play.
- ``greedy`` (true): ``ops.greedy`` (the most probable action, the same under every
  mapping); ``false`` samples with ``ops.sample`` at the run's alpha and temperature.
- ``seed`` (0): seeds the env and the sampler.
- ``video`` (none): a folder; every episode is recorded there with
  ``gymnasium.wrappers.RecordVideo`` (needs moviepy: ``pip install "entropy-rl[video]"``).
- ``device`` (auto): auto | cpu | cuda | cuda:N.

The checkpoint is read by ``rl.checkpoint.load_checkpoint`` (``torch.load(weights_only=True)``);
this module reads

- ``config``: the run's resolved config as a plain dict (``OmegaConf.to_container``); the env
  is rebuilt from ``config["env"]`` and the network from ``config["policy"]`` (or
  ``config["network"]``) fields ``hidden_sizes``, ``activation``, ``shared``;
- ``model``: the ``ActorCritic`` state dict;
- ``obs_normalization["obs_rms"]`` (or a top-level ``obs_rms``; needed when
  ``env.normalize_obs``): ``{"mean", "var", "count"}`` tensors of the observation normalizer,
  which evaluation uses frozen;
- ``temperature_schedule["value"]`` (or a top-level ``temperature``; optional): the
  temperature a schedule had reached; default ``config["policy"]["temperature"]``.

Episode returns are the env's own (``RecordEpisodeStatistics`` sits inside any reward
clipping or normalization), so they compare with the training curves.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional  # noqa: UP035 -- OmegaConf reads the typing forms below

import numpy as np
from omegaconf import MISSING

from rl.checkpoint import load_checkpoint, resolve_device

if TYPE_CHECKING:
    import torch

__all__ = ["EvalConfig", "evaluate", "load_policy", "main"]


@dataclass
class EvalConfig:
    """The options of ``rl-eval`` (values and comments: conf/eval.yaml)."""

    checkpoint: str = MISSING
    episodes: int = 10
    greedy: bool = True
    seed: int = 0
    video: Optional[str] = None  # noqa: UP045 -- OmegaConf reads the typing form
    device: str = "auto"
    env_kwargs: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006 -- as above
    max_episode_steps: Optional[int] = None  # noqa: UP045 -- as above


def _register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_eval", node=EvalConfig)


def load_policy(state: Mapping[str, Any], vec_env, device: torch.device):
    """ActorCritic from the checkpoint's config and weights, sized by the rebuilt env."""
    from rl.envs import env_info
    from rl.networks import ActorCritic

    cfg = state["config"]
    net = cfg.get("network") or cfg.get("policy") or {}
    info = env_info(vec_env)
    model = ActorCritic(
        info.observation_space,
        info.n_actions,
        hidden_sizes=tuple(net.get("hidden_sizes", (64, 64))),
        activation=net.get("activation", "tanh"),
        shared=bool(net.get("shared", False)),
        network=str(net.get("network", "auto")),
    ).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(
            f"the checkpoint's model does not match the network rebuilt from its config "
            f"({info.n_actions} actions, observation {info.obs_shape}): {err}"
        ) from err
    model.eval()
    return model


def _restore_obs_rms(vec_env, state: Mapping[str, Any]) -> None:
    import torch
    from gymnasium.wrappers.vector import NormalizeObservation

    env = vec_env
    while env is not None and not isinstance(env, NormalizeObservation):
        env = getattr(env, "env", None)
    if env is None:
        return
    rms = (state.get("obs_normalization") or {}).get("obs_rms", state.get("obs_rms"))
    if rms is None:
        print(
            "warning: env.normalize_obs is set but the checkpoint has no obs_rms; the observation "
            "statistics restart from scratch",
            file=sys.stderr,
        )
    else:
        env.obs_rms.mean = np.asarray(torch.as_tensor(rms["mean"]).cpu(), dtype=np.float64)
        env.obs_rms.var = np.asarray(torch.as_tensor(rms["var"]).cpu(), dtype=np.float64)
        env.obs_rms.count = float(rms["count"])
    # evaluation must not move the statistics the policy was trained with
    env.update_running_mean = False


def _temperature(state: Mapping[str, Any], policy_cfg: Mapping[str, Any]) -> float:
    """The temperature the run ended with (a schedule's current value), else the config's."""
    schedule = state.get("temperature_schedule")
    if isinstance(schedule, Mapping) and schedule.get("value") is not None:
        return float(schedule["value"])
    return float(state.get("temperature", policy_cfg.get("temperature", 1.0)))


def evaluate(
    checkpoint: str | Path,
    episodes: int = 10,
    greedy: bool = True,
    seed: int = 0,
    video: str | Path | None = None,
    device: str = "auto",
    env_kwargs: Mapping[str, Any] | None = None,
    max_episode_steps: int | None = None,
) -> dict[str, Any]:
    """Play ``episodes`` episodes; returns ``{"returns", "lengths", "mean", "std"}``.

    ``env_kwargs`` (merged over the run's ``env.kwargs``) and ``max_episode_steps`` (replacing
    the run's time limit) evaluate the policy on a variant of the task it was trained on, e.g.
    MinAtar without sticky actions and with gymnax's 1000-step episodes.
    """
    import torch

    import ops
    from rl.envs import action_mask_from, make_envs, policy_obs

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes={episodes!r} is not allowed; allowed: an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is not allowed; allowed: an integer >= 0")
    if env_kwargs is not None and not isinstance(env_kwargs, Mapping):
        raise ValueError(f"env_kwargs={env_kwargs!r} is not allowed; allowed: a mapping of the env's "
                         "constructor arguments")
    if max_episode_steps is not None and (
        isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps < 1
    ):
        raise ValueError(f"max_episode_steps={max_episode_steps!r} is not allowed; allowed: null (the "
                         "run's limit) or an integer >= 1")
    dev = resolve_device(device)
    state = load_checkpoint(checkpoint, dev, require=("config", "model"))
    cfg = state["config"]
    env_cfg = dict(cfg["env"])
    if env_kwargs:
        env_cfg["kwargs"] = {**(env_cfg.get("kwargs") or {}), **env_kwargs}
    if max_episode_steps is not None:
        env_cfg["max_episode_steps"] = max_episode_steps
    # returns are read before reward normalization; the wrapper would only add state
    env_cfg["normalize_reward"] = False
    wrappers = None
    if video is not None:
        if importlib.util.find_spec("moviepy") is None:
            raise ValueError(
                f'video={str(video)!r} needs moviepy, which is not installed: pip install "entropy-rl[video]"'
            )
        from gymnasium.wrappers import RecordVideo

        env_cfg["kwargs"] = {**(env_cfg.get("kwargs") or {}), "render_mode": "rgb_array"}
        folder = str(video)
        wrappers = [
            lambda e: RecordVideo(e, folder, episode_trigger=lambda i: True, disable_logger=True)
        ]
    vec_env = make_envs(env_cfg, 1, seed, env_wrappers=wrappers)
    try:
        _restore_obs_rms(vec_env, state)
        model = load_policy(state, vec_env, dev)
        policy_cfg = cfg.get("policy") or {}
        alpha = float(policy_cfg.get("alpha", 1.0))
        temperature = _temperature(state, policy_cfg)
        generator = torch.Generator(device=dev).manual_seed(seed)
        returns: list[float] = []
        lengths: list[int] = []
        obs, infos = vec_env.reset(seed=seed)
        while len(returns) < episodes:
            x = torch.as_tensor(np.asarray(policy_obs(obs)), device=dev)
            mask = action_mask_from(obs, infos)
            mask_t = None if mask is None else torch.as_tensor(mask, device=dev)
            with torch.no_grad():
                logits = model.logits(x)
                if greedy:
                    actions = ops.greedy(logits, mask=mask_t)
                else:
                    actions = ops.sample(logits, alpha=alpha, temperature=temperature, mask=mask_t,
                                         generator=generator)
            obs, _, _, _, infos = vec_env.step(actions.cpu().numpy())
            if "episode" in infos and infos["_episode"][0]:
                returns.append(float(infos["episode"]["r"][0]))
                lengths.append(int(infos["episode"]["l"][0]))
    finally:
        vec_env.close()
    r = np.asarray(returns)
    return {"returns": returns, "lengths": lengths, "mean": float(r.mean()), "std": float(r.std())}


def _task(cfg) -> None:
    """Hydra's task: evaluate, print the result line; errors as ``rl-train`` prints them."""
    from omegaconf import OmegaConf

    try:
        if OmegaConf.is_missing(cfg, "checkpoint"):
            raise ValueError("checkpoint=PATH is required (a checkpoint file written by rl-train)")
        opts = OmegaConf.to_container(cfg, resolve=True)
        result = evaluate(**opts)
    except ValueError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"rl-eval: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    mode = "greedy" if opts["greedy"] else "sampled"
    lengths = np.asarray(result["lengths"])
    print(
        f"{opts['episodes']} {mode} episodes: return {result['mean']:.2f} +- {result['std']:.2f} "
        f"(min {min(result['returns']):.2f}, max {max(result['returns']):.2f}; "
        f"mean length {lengths.mean():.1f})"
    )
    if opts["video"] is not None:
        print(f"videos in {Path(opts['video']).resolve()}")
    if not all(math.isfinite(x) for x in result["returns"]):
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """``rl-eval`` (``argv``: the arguments, default ``sys.argv[1:]``); returns the exit status."""
    import hydra

    from rl.train import CONF_DIR, run_composing_once

    _register()
    app = hydra.main(version_base=None, config_path=CONF_DIR, config_name="eval")(_task)
    saved = sys.argv
    if argv is not None:
        sys.argv = [saved[0] if saved else "rl-eval", *argv]
    try:
        run_composing_once(app)
    except SystemExit as stop:
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
