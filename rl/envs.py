"""Vectorized Gymnasium environments for the trainer.

``make_envs`` builds a ``gymnasium.vector.VectorEnv`` from the ``env`` settings the schema
checked (rl/config.py) and refuses, before any training, what only the env itself shows: a
non-``Discrete`` action space, an unknown id, a missing optional dependency. Every env it returns

- autoresets on the *next* step (Gymnasium 1.x default, docs/DESIGN.md section 3): the step after
  a done returns the reset observation, and that transition must not be trained on;
- carries ``RecordEpisodeStatistics`` (vector version) innermost, so ``infos["episode"]``
  holds the raw, unnormalized and unclipped episode returns and lengths;
- optionally normalizes observations and rewards with Gymnasium's own vector wrappers.

Action masks come either in a ``Dict`` observation ``{"observation", "action_mask"}`` or in
``infos["action_mask"]``; ``action_mask_from`` returns them as a bool ``(num_envs, n)``
array and ``policy_obs`` strips the mask from the observation. The README (section Training)
lists the env presets in conf/env/; conf/env/atari.yaml describes the Atari preprocessing.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from rl.config import EnvSettings, env_settings

__all__ = ["EnvInfo", "MemberEnvs", "action_mask_from", "concat_infos", "concat_obs", "derived_seed",
           "env_info",
           "load_rms_state", "make_envs", "policy_obs", "rms_state"]

# The modes `_build` implements; rl.config's schema accepts exactly these.
VECTORIZATION_MODES = ("auto", "vector_entry_point", "sync", "async", "envpool")

# metadata key make_envs sets when the env reports its mask in infos (a Dict observation
# space shows it by itself; an info mask is only visible after a reset).
MASK_IN_INFO_KEY = "action_mask_in_info"

# Which extra of pyproject.toml provides a module gymnasium or we import lazily.
_EXTRAS = {
    "box2d": 'pip install "entropy-rl[envs]" (or pip install "gymnasium[box2d]")',
    "ale_py": 'pip install "entropy-rl[envs]" (or pip install ale-py)',
    "opencv": "pip install opencv-python (AtariPreprocessing of the sync Atari path needs it)",
    "cv2": "pip install opencv-python (AtariPreprocessing of the sync Atari path needs it)",
    "minatar": 'pip install "entropy-rl[minatar]" (or pip install minatar)',
    "envpool": 'pip install "entropy-rl[envpool]" (or pip install envpool)',
    "mujoco": 'pip install "gymnasium[mujoco]" (note: MuJoCo envs have continuous actions)',
    "pygame": 'pip install "gymnasium[classic-control]"',
}


@dataclass(frozen=True)
class EnvInfo:
    """What the trainer needs to size its network and storage.

    Attributes
    ----------
    obs_shape:
        Shape of one observation as the network sees it (``policy_obs``, mask removed).
    n_actions:
        Size of the ``Discrete`` action space (after any distractor actions).
    is_image:
        True for uint8 ``(C, H, W)`` / ``(H, W, C)`` observations (Nature-CNN encoder).
    has_action_mask:
        True when the env provides ``action_mask`` (observation dict or infos).
    observation_space:
        Single-env space of ``policy_obs(obs)``; pass it to ``rl.networks.ActorCritic``.
    """

    obs_shape: tuple[int, ...]
    n_actions: int
    is_image: bool
    has_action_mask: bool
    observation_space: gym.Space | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _missing_dependency(env_id: str, err: BaseException) -> ValueError:
    """A ValueError naming the env, the missing package and the extra that provides it."""
    text = f"{type(err).__name__}: {err}"
    lowered = text.lower()
    hint = next((h for key, h in _EXTRAS.items() if key in lowered), None)
    if hint is None and isinstance(err, ModuleNotFoundError) and err.name:
        hint = f"pip install {err.name.split('.')[0]}"
    return ValueError(
        f"env.id={env_id!r} needs an optional dependency that is not installed ({text}). "
        f"Install it with: {hint or 'the package named above'}"
    )


def _register_optional(env_id: str, atari: bool, quiet: bool = False) -> None:
    """Register ale-py / MinAtar ids when the id (or, ``quiet``, a suggestion lookup) needs them."""
    families = []
    if atari or env_id.startswith("ALE/") or quiet:
        families.append(("ale_py", "ALE/"))
    if env_id.startswith("MinAtar/") or quiet:
        families.append(("minatar", "MinAtar/"))
    for module, prefix in families:
        if any(key.startswith(prefix) for key in gym.registry):
            continue  # registered already; registering again only warns
        if importlib.util.find_spec(module) is None:
            if quiet:
                continue
            raise _missing_dependency(env_id, ModuleNotFoundError(f"No module named {module!r}", name=module))
        if module == "ale_py":
            import ale_py

            gym.register_envs(ale_py)
        else:
            import minatar.gym

            if not any(key.startswith(prefix) for key in gym.registry):
                minatar.gym.register_envs()


def _find_spec(env_id: str, atari: bool) -> gym.envs.registration.EnvSpec:
    """The id's EnvSpec, or a ValueError suggesting close matches from the registry."""
    _register_optional(env_id, atari)
    if env_id in gym.registry:
        return gym.registry[env_id]
    # Suggestions may live in optional families (a user typing "Pong-v5" wants ALE/Pong-v5).
    _register_optional(env_id, atari, quiet=True)
    by_lower: dict[str, str] = {}
    for key in gym.registry:
        by_lower.setdefault(key.lower(), key)
    close = difflib.get_close_matches(env_id.lower(), list(by_lower), n=3, cutoff=0.6)
    suggestion = f" Did you mean {' or '.join(repr(by_lower[c]) for c in close)}?" if close else ""
    raise ValueError(
        f"env.id={env_id!r} is not a registered Gymnasium environment.{suggestion} "
        "List the registered ids with gymnasium.pprint_registry()."
    )


def _atari_single(env_id: str, kwargs: dict, frame_stack: int, frame_skip: int,
                  max_episode_steps: int | None) -> Callable[[], gym.Env]:
    """Single-env Atari with the standard preprocessing (Machado et al. 2018 / Nature DQN).

    ``max_episode_steps`` counts agent steps (``frame_skip`` frames each), as on the vector
    path: the time limit wraps the preprocessed env, not the ROM env, which steps single frames.
    """

    def thunk() -> gym.Env:
        # AtariPreprocessing skips frames itself and requires the ROM env not to.
        env = gym.make(env_id, **{**kwargs, "frameskip": 1})
        env = gym.wrappers.AtariPreprocessing(
            env, noop_max=30, frame_skip=frame_skip, screen_size=84,
            terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False,
        )
        if max_episode_steps is not None:
            env = gym.wrappers.TimeLimit(env, max_episode_steps)
        return gym.wrappers.FrameStackObservation(env, frame_stack)

    return thunk


# ALE v5 semantics the EnvPool path reproduces (ale-py's defaults for ALE/<Game>-v5 ids):
# sticky actions with p = 0.25 (Machado et al. 2018), at most 108000 frames per episode.
_ALE_V5_STICKY = 0.25
_ALE_V5_MAX_FRAMES = 108_000


def _envpool_atari(s: EnvSettings, num_envs: int, seed: int, kwargs: dict, frame_skip: int) -> VectorEnv:
    """Atari through EnvPool (C++ threads), preprocessed as ale-py's vector env does.

    84x84 gray, ``frame_skip`` frames per step with max-pooling, ``frame_stack`` frames, up to 30
    no-op frames and FIRE at reset, sticky actions and the 108000-frame limit of the v5 ids, no
    episodic life; rewards come raw (clipping is `_wrap`'s, after the episode statistics).
    ``max_episode_steps`` counts agent steps, as EnvPool's own option does. Autoreset is EnvPool's
    next-step reset (``AutoresetMode.NEXT_STEP``).
    """
    import envpool

    task = s.id.split("/", 1)[-1]  # ALE/Pong-v5 -> Pong-v5
    if task not in envpool.list_all_envs():
        raise ValueError(
            f"env.vectorization='envpool' has no Atari task {task!r} for env.id={s.id!r}; use "
            "env.vectorization=auto (ale-py) or an id EnvPool lists (envpool.list_all_envs())"
        )
    max_steps = s.max_episode_steps if s.max_episode_steps is not None else _ALE_V5_MAX_FRAMES // frame_skip
    options = {
        "repeat_action_probability": float(kwargs.pop("repeat_action_probability", _ALE_V5_STICKY)),
        "full_action_space": bool(kwargs.pop("full_action_space", False)),
        **kwargs,  # anything else goes to EnvPool as given (it refuses unknown options)
    }

    def make(pool_seed: int) -> VectorEnv:
        return envpool.make(
            task, env_type="gymnasium", num_envs=num_envs, seed=pool_seed, stack_num=s.frame_stack,
            frame_skip=frame_skip, noop_max=30, img_height=84, img_width=84, gray_scale=True,
            episodic_life=False, reward_clip=False, use_fire_reset=True,
            max_episode_steps=int(max_steps), **options,
        )

    return _EnvPoolSeeded(make, int(seed))


class _EnvPoolSeeded(gym.vector.VectorWrapper):
    """An EnvPool env whose ``reset(seed=s)`` means what Gymnasium's does.

    EnvPool fixes its seeds when it is created and ignores (with a warning) a seed given to
    ``reset``; this builds the pool with the seed and builds it again when a reset asks for a
    different one, so ``reset(seed=s)`` starts the same episodes on every call.
    """

    def __init__(self, make: Callable[[int], VectorEnv], seed: int):
        self._make, self._seed, self._fresh = make, seed, True
        super().__init__(make(seed))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None and (int(seed) != self._seed or not self._fresh):
            # a new pool: the only way to restart EnvPool's random streams
            metadata = self.env.metadata
            self.env.close()
            self.env, self._seed = self._make(int(seed)), int(seed)
            self.env.metadata = metadata  # keeps what make_envs recorded (MASK_IN_INFO_KEY)
        self._fresh = False
        return self.env.reset(options=options) if options else self.env.reset()


def _build(
    s: EnvSettings,
    spec: gym.envs.registration.EnvSpec,
    num_envs: int,
    env_wrappers: Sequence[Callable[[gym.Env], gym.Env]] | None,
    atari: bool,
    seed: int = 0,
) -> VectorEnv:
    kwargs = dict(s.kwargs or {})
    mode = s.vectorization
    if mode == "envpool" and not atari:
        raise ValueError(
            f"env.vectorization='envpool' is not allowed for env.id={s.id!r}; allowed: Atari ids "
            "(ALE/<Game>-v5, env=atari); use auto, sync or async"
        )
    if mode == "auto":
        mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    if env_wrappers:
        # per-env wrappers (video recording) only exist for sync/async vectorization
        mode = "sync" if mode in ("vector_entry_point", "envpool") else mode
    if mode == "vector_entry_point" and spec.vector_entry_point is None:
        raise ValueError(
            f"env.vectorization='vector_entry_point' but env.id={s.id!r} registers no vector entry "
            "point; use 'auto', 'sync' or 'async'"
        )
    vector_kwargs = {"autoreset_mode": AutoresetMode.NEXT_STEP}
    if atari:
        frame_skip = int(kwargs.pop("frameskip", 4))
        # clipping is applied after RecordEpisodeStatistics (see _wrap), never inside the env
        kwargs.pop("reward_clipping", None)
        if mode == "envpool":
            return _envpool_atari(s, num_envs, seed, kwargs, frame_skip)
        if mode == "vector_entry_point":
            # ale-py's AtariVectorEnv does the preprocessing itself (84x84 gray, maxpool,
            # noop reset, fire reset); max_num_frames_per_episode counts emulator frames.
            kwargs.update(
                stack_num=s.frame_stack, frameskip=frame_skip, reward_clipping=False,
                autoreset_mode=AutoresetMode.NEXT_STEP,
            )
            if s.max_episode_steps is not None:
                kwargs["max_num_frames_per_episode"] = s.max_episode_steps * frame_skip
            return gym.make_vec(s.id, num_envs, vectorization_mode=mode, **kwargs)
        thunk = _atari_single(s.id, kwargs, s.frame_stack, frame_skip, s.max_episode_steps)
        fns = [_wrapped(thunk, env_wrappers) for _ in range(num_envs)]
        cls = gym.vector.SyncVectorEnv if mode == "sync" else gym.vector.AsyncVectorEnv
        return cls(fns, **vector_kwargs)
    if s.max_episode_steps is not None:
        kwargs["max_episode_steps"] = s.max_episode_steps
    if mode == "vector_entry_point":
        return gym.make_vec(s.id, num_envs, vectorization_mode=mode, **kwargs)
    return gym.make_vec(
        s.id, num_envs, vectorization_mode=mode, vector_kwargs=vector_kwargs,
        wrappers=list(env_wrappers or ()), **kwargs,
    )


def _wrapped(thunk: Callable[[], gym.Env], wrappers: Sequence[Callable] | None) -> Callable[[], gym.Env]:
    def make() -> gym.Env:
        env = thunk()
        for wrapper in wrappers or ():
            env = wrapper(env)
        return env

    return make


def _check_spaces(env_id: str, vec: VectorEnv) -> None:
    space = vec.single_action_space
    if not isinstance(space, gym.spaces.Discrete):
        raise ValueError(
            f"env.id={env_id!r} has action space {space}; only Discrete action spaces are supported "
            "(the policy mappings act on a finite set of actions)"
        )
    if int(space.start) != 0:
        raise ValueError(
            f"env.id={env_id!r} has action space {space} starting at {int(space.start)}; only "
            "Discrete spaces starting at 0 are supported"
        )
    obs_space = vec.single_observation_space
    if isinstance(obs_space, gym.spaces.Dict):
        keys = set(obs_space.spaces)
        if keys != {"observation", "action_mask"}:
            raise ValueError(
                f"env.id={env_id!r} has a Dict observation space with keys {sorted(keys)}; the only "
                "supported Dict observation is {'observation', 'action_mask'}"
            )
        mask_shape = obs_space["action_mask"].shape
        if tuple(mask_shape) != (int(space.n),):
            raise ValueError(
                f"env.id={env_id!r}: observation['action_mask'] has shape {mask_shape}, expected "
                f"({int(space.n)},) to match the action space {space}"
            )
        obs_space = obs_space["observation"]
    if not isinstance(obs_space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise ValueError(
            f"env.id={env_id!r} has observation space {obs_space}; supported: Box (vectors, images), "
            "Discrete (one-hot encoded), or a Dict {'observation', 'action_mask'} of those"
        )
    mode = vec.metadata.get("autoreset_mode")
    if mode != AutoresetMode.NEXT_STEP:
        raise ValueError(
            f"env.id={env_id!r} autoresets in mode {mode!r}; the trainer needs AutoresetMode.NEXT_STEP "
            "(try env.vectorization=sync)"
        )


def make_envs(
    env_cfg: EnvSettings | Any,
    num_envs: int,
    seed: int,
    *,
    env_wrappers: Sequence[Callable[[gym.Env], gym.Env]] | None = None,
    gamma: float = 0.99,
) -> VectorEnv:
    """Build the vectorized env the trainer steps.

    Parameters
    ----------
    env_cfg:
        The env's `rl.config.EnvSettings`, as ``rl.config.validate`` returns them (used as they
        are), or an ``env`` config node (omegaconf node, dataclass or dict: ``id``,
        ``vectorization``, ``kwargs``, ``normalize_obs``, ``normalize_reward``,
        ``distractor_actions``, ``atari``, ``frame_stack``, ``max_episode_steps``), which
        ``rl.config.env_settings`` checks first.
    num_envs:
        Number of sub-environments (>= 1).
    seed:
        Seeds the action space. The caller's first ``reset(seed=seed)`` seeds the
        sub-environments (seed, seed + 1, ...).
    env_wrappers:
        Wrappers applied to every single env (e.g. ``RecordVideo`` for ``rl-eval video=``);
        they force sync vectorization, since a vector entry point takes no per-env wrappers.
    gamma:
        Discount of the return whose running std ``normalize_reward`` divides by; pass the
        algorithm's gamma (``algo.gamma``, which the schema checks).

    Raises
    ------
    ValueError
        For a non-Discrete action space, an unknown id (with close matches), a missing optional
        dependency (naming the extra to install), or an invalid config value.

    Atari (``env.atari`` or an ``ALE/`` id) is built by ale-py's vector env (``auto``), EnvPool
    (``envpool``) or single ale-py envs with Gymnasium's AtariPreprocessing (``sync``/``async``,
    and whenever ``env_wrappers`` are given). Every path: 84x84 gray frames, ``frame_skip`` frames
    per agent step, ``frame_stack`` stacked, no-op reset, no episodic life (a lost life is not a
    terminal), raw rewards in ``infos["episode"]`` and rewards clipped to [-1, 1] for training
    (``env.kwargs.reward_clipping=false`` keeps them raw), and ``max_episode_steps`` counting agent
    steps. conf/env/atari.yaml lists what differs in detail between the paths.
    """
    s = env_settings(env_cfg)  # returns EnvSettings as they are
    # Arguments, not fields of the env node: cheap guards for callers other than the trainer.
    if not _is_int(num_envs) or num_envs < 1:
        raise ValueError(f"num_envs={num_envs!r} is not allowed; allowed: an integer >= 1")
    if not _is_int(seed):
        raise ValueError(f"seed={seed!r} is not allowed; allowed: an integer")
    atari = s.atari or s.id.startswith("ALE/")
    spec = _find_spec(s.id, atari)
    try:
        vec = _build(s, spec, int(num_envs), env_wrappers, atari, int(seed))
    except (gym.error.DependencyNotInstalled, ImportError) as err:
        raise _missing_dependency(s.id, err) from err
    except TypeError as err:  # a misspelt env.kwargs key reaches the env's constructor
        if not s.kwargs or "keyword argument" not in str(err):
            raise
        reason = str(err).split(" was raised from", 1)[0]
        raise ValueError(
            f"env.kwargs={dict(s.kwargs)!r} is not allowed for {s.id} ({reason}); allowed: "
            f"arguments its constructor takes"
        ) from err
    try:
        _check_spaces(s.id, vec)
        mask_in_info = False
        if not isinstance(vec.single_observation_space, gym.spaces.Dict) and not atari:
            # An info mask only shows after a reset; the caller's reset(seed=seed) re-seeds,
            # so this probe leaves runs reproducible.
            _, infos = vec.reset(seed=int(seed))
            mask_in_info = "action_mask" in infos
        vec.metadata = {**vec.metadata, MASK_IN_INFO_KEY: mask_in_info}
        vec = _wrap(s, vec, atari, mask_in_info, float(gamma))
    except BaseException:
        vec.close()
        raise
    vec.action_space.seed(int(seed))
    vec.single_action_space.seed(int(seed))
    return vec


def _wrap(s: EnvSettings, vec: VectorEnv, atari: bool, mask_in_info: bool, gamma: float) -> VectorEnv:
    from gymnasium.wrappers import vector as vw

    has_mask = mask_in_info or isinstance(vec.single_observation_space, gym.spaces.Dict)
    # Innermost, so episode returns are the game's own (before clipping and normalization).
    vec = vw.RecordEpisodeStatistics(vec)
    if atari and bool((s.kwargs or {}).get("reward_clipping", True)):
        vec = vw.ClipReward(vec, -1.0, 1.0)
    if s.normalize_obs:
        space = vec.single_observation_space
        if not isinstance(space, gym.spaces.Box) or _is_image(space):
            raise ValueError(
                f"env.normalize_obs=true needs a vector Box observation; env.id={s.id!r} has {space} "
                "(image observations are scaled by 1/255 in the network)"
            )
        vec = vw.NormalizeObservation(vec)
    if s.normalize_reward:
        vec = vw.NormalizeReward(vec, gamma=gamma)
    if s.distractor_actions > 0:
        if has_mask:
            raise ValueError(
                f"env.distractor_actions={s.distractor_actions} cannot be combined with the action mask "
                f"of env.id={s.id!r} (the mask would not cover the added actions)"
            )
        from rl.wrappers import DistractorActions

        vec = DistractorActions(vec, int(s.distractor_actions))
    return vec


def _is_image(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def env_info(vec_env: VectorEnv) -> EnvInfo:
    """Shapes and flags of a ``make_envs`` env (see ``EnvInfo``)."""
    obs_space = vec_env.single_observation_space
    has_mask = bool(vec_env.metadata.get(MASK_IN_INFO_KEY, False))
    if isinstance(obs_space, gym.spaces.Dict) and "action_mask" in obs_space.spaces:
        has_mask = True
        obs_space = obs_space["observation"]
    action_space = vec_env.single_action_space
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"vec_env must have a Discrete single_action_space; got {action_space}")
    return EnvInfo(
        obs_shape=tuple(obs_space.shape),
        n_actions=int(action_space.n),
        is_image=_is_image(obs_space),
        has_action_mask=has_mask,
        observation_space=obs_space,
    )


def policy_obs(obs: Any) -> Any:
    """The observation the network sees: ``obs["observation"]`` for a masked Dict obs, else obs."""
    if isinstance(obs, Mapping) and "action_mask" in obs:
        return obs["observation"]
    return obs


def action_mask_from(obs: Any, infos: Mapping[str, Any] | None) -> np.ndarray | None:
    """Bool ``(num_envs, n_actions)`` mask (True = allowed), or None when the env has none.

    Read from ``obs["action_mask"]`` first, else ``infos["action_mask"]``. Sub-envs whose
    info lacks the key this step (``infos["_action_mask"]`` False) get every action allowed.
    """
    if isinstance(obs, Mapping) and "action_mask" in obs:
        return np.asarray(obs["action_mask"]).astype(bool, copy=False)
    if not infos or "action_mask" not in infos:
        return None
    mask = np.asarray(infos["action_mask"]).astype(bool)
    present = infos.get("_action_mask")
    if present is not None:
        present = np.asarray(present, dtype=bool)
        if not present.all():
            mask[~present] = True
    return mask


def derived_seed(*values: int) -> int:
    """One seed drawn from several (NumPy's SeedSequence), below 2**31: ale-py's vector env hands
    seeds to C++ as a C int."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0] % 2**31)


# ---------------------------------------------------------------------------------------------
# A population's envs: K vector envs stepped as one (rl/trainer.py)
# ---------------------------------------------------------------------------------------------
def _wrapper_chain(env: Any):
    while env is not None:
        yield env
        env = getattr(env, "env", None)


def rms_state(envs: Any) -> dict[str, dict[str, Any]]:
    """Running statistics of the normalization wrappers (obs_rms, return_rms) as tensors."""
    import torch

    state = {}
    for env in _wrapper_chain(envs):
        for attr in ("obs_rms", "return_rms"):
            rms = getattr(env, attr, None)
            if rms is not None and attr not in state:
                state[attr] = {k: torch.as_tensor(np.asarray(getattr(rms, k), dtype=np.float64))
                               for k in ("mean", "var", "count")}
    return state


def load_rms_state(envs: Any, state: dict[str, dict[str, Any]]) -> None:
    for env in _wrapper_chain(envs):
        for attr, values in state.items():
            rms = getattr(env, attr, None)
            if rms is not None:
                for k, v in values.items():
                    old = getattr(rms, k)
                    setattr(rms, k, v.numpy().astype(np.asarray(old).dtype).reshape(np.shape(old)))


def concat_infos(parts: list[dict], sizes: list[int]) -> dict:
    """Vector-env ``infos`` of consecutive env blocks as one dict (arrays concatenated; a key a
    block lacks is zeros/False there, as gymnasium's own vector infos)."""
    keys = [k for p in parts for k in p]
    out: dict = {}
    for key in dict.fromkeys(keys):
        values = [p.get(key) for p in parts]
        ref = next(v for v in values if v is not None)
        if isinstance(ref, dict):
            out[key] = concat_infos([v if v is not None else {} for v in values], sizes)
        else:
            ref = np.asarray(ref)
            out[key] = np.concatenate([np.asarray(v) if v is not None else
                                       np.zeros((n, *ref.shape[1:]), dtype=ref.dtype)
                                       for v, n in zip(values, sizes, strict=True)])
    return out


class MemberEnvs:
    """K vector envs stepped as one: member k owns sub-envs ``k*N .. (k+1)*N - 1``.

    Used when a wrapper keeps statistics (normalization) or envs are pickled per member; otherwise
    the trainer steps one vector env of K x N sub-envs directly.
    """

    def __init__(self, envs: list[Any]):
        self.envs = envs
        self.sizes = [e.num_envs for e in envs]
        self.num_envs = sum(self.sizes)
        first = envs[0]
        self.single_observation_space = first.single_observation_space
        self.single_action_space = first.single_action_space
        self.metadata = first.metadata

    def reset_member(self, k: int, seed: int):
        return self.envs[k].reset(seed=seed)

    def step(self, actions: np.ndarray):
        parts, start = [], 0
        for env, n in zip(self.envs, self.sizes, strict=True):
            parts.append(env.step(actions[start:start + n]))
            start += n
        obs = concat_obs([p[0] for p in parts])
        rew, term, trunc = (np.concatenate([p[i] for p in parts]) for i in (1, 2, 3))
        return obs, rew, term, trunc, concat_infos([p[4] for p in parts], self.sizes)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def concat_obs(parts: list[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    return np.concatenate([np.asarray(p) for p in parts])
