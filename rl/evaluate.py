"""``rl-eval``: play a trained checkpoint and report its mean episode return.

    rl-eval checkpoint=outputs/.../checkpoint.pt episodes=10
    rl-eval checkpoint=PATH episodes=5 greedy=false seed=3 video=videos/ device=cpu

Options (``key=value``, as with ``rl-train``):

- ``checkpoint`` (required): a file written by the trainer (rl/checkpoint.py).
- ``episodes`` (10): number of complete episodes to play.
- ``greedy`` (true): ``ops.greedy`` (the most probable action, the same under every
  mapping); ``false`` samples with ``ops.sample`` at the run's alpha and temperature.
- ``seed`` (0): seeds the env and the sampler.
- ``video`` (none): a folder; every episode is recorded there with
  ``gymnasium.wrappers.RecordVideo`` (needs moviepy: ``pip install "entropy-rl[video]"``).
- ``device`` (auto): auto | cpu | cuda | cuda:N.

The checkpoint is a dict loaded with ``torch.load(weights_only=True)``; this module reads

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

import argparse
import difflib
import importlib.util
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["evaluate", "load_policy", "main", "parse_overrides"]

DEFAULTS: dict[str, Any] = {
    "checkpoint": None,
    "episodes": 10,
    "greedy": True,
    "seed": 0,
    "video": None,
    "device": "auto",
}


def _parse_bool(key: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{key}={text!r} is not allowed; allowed: true | false")


def _parse_int(key: str, text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise ValueError(f"{key}={text!r} is not allowed; allowed: an integer >= {low}")
    return value


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["checkpoint=PATH", "episodes=5", ...]`` -> options dict (defaults filled in)."""
    opts = dict(DEFAULTS)
    for arg in args:
        key, sep, text = arg.partition("=")
        key = key.lstrip("+")
        if not sep or key not in DEFAULTS:
            close = difflib.get_close_matches(key, list(DEFAULTS), n=1)
            hint = f" (did you mean {close[0]}=?)" if close and sep else ""
            raise ValueError(
                f"argument {arg!r} is not allowed{hint}; use key=value with key one of {sorted(DEFAULTS)}"
            )
        if key == "episodes":
            opts[key] = _parse_int(key, text, 1)
        elif key == "seed":
            opts[key] = _parse_int(key, text, 0)
        elif key == "greedy":
            opts[key] = _parse_bool(key, text)
        elif key == "video":
            opts[key] = None if text.lower() in ("", "null", "none") else text
        else:
            opts[key] = text
    if not opts["checkpoint"]:
        raise ValueError("checkpoint=PATH is required (a checkpoint file written by rl-train)")
    return opts


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available; use device=cpu or auto")
        return torch.device(name)
    raise ValueError(f"device={name!r} is not allowed; allowed: auto | cpu | cuda | cuda:N")


def _load(path: str | Path, device: torch.device) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint={str(path)!r} is not a file")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise ValueError(
            f"checkpoint={str(path)!r} could not be loaded ({type(err).__name__}: {err})"
        ) from err
    missing = [k for k in ("config", "model") if not isinstance(state, Mapping) or k not in state]
    if missing:
        raise ValueError(
            f"checkpoint={str(path)!r} lacks {missing}; expected a checkpoint written by rl-train"
        )
    return state


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
) -> dict[str, Any]:
    """Play ``episodes`` episodes; returns ``{"returns", "lengths", "mean", "std"}``."""
    import ops
    from rl.envs import action_mask_from, make_envs, policy_obs

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes={episodes!r} is not allowed; allowed: an integer >= 1")
    dev = _device(device)
    state = _load(checkpoint, dev)
    cfg = state["config"]
    env_cfg = dict(cfg["env"])
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rl-eval",
        description="Play a trained checkpoint and print its mean +- std episode return.",
        epilog="example: rl-eval checkpoint=outputs/run/checkpoint.pt episodes=10 greedy=false",
    )
    parser.add_argument("overrides", nargs="*", help="key=value: " + ", ".join(
        f"{k} (default {v})" for k, v in DEFAULTS.items()))
    args = parser.parse_args(argv)
    try:
        opts = parse_overrides(args.overrides)
        result = evaluate(**opts)
    except ValueError as err:
        print(f"rl-eval: error: {err}", file=sys.stderr)
        return 2
    mode = "greedy" if opts["greedy"] else "sampled"
    lengths = np.asarray(result["lengths"])
    print(
        f"{opts['episodes']} {mode} episodes: return {result['mean']:.2f} +- {result['std']:.2f} "
        f"(min {min(result['returns']):.2f}, max {max(result['returns']):.2f}; "
        f"mean length {lengths.mean():.1f})"
    )
    if opts["video"] is not None:
        print(f"videos in {Path(opts['video']).resolve()}")
    return 0 if all(math.isfinite(x) for x in result["returns"]) else 1


if __name__ == "__main__":
    sys.exit(main())
