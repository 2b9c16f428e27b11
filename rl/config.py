"""Typed configuration schema, registered in Hydra's ConfigStore.

Every YAML under ``conf/`` names its schema in its ``defaults`` list (``base_env``,
``base_policy``, ``base_ppo``, ``base_a2c``, ``base_config``) with ``_self_`` last, so Hydra
rejects an unknown key or a value of the wrong type when it composes the config, before
anything is built. `validate` then checks the values (ranges, choices) and raises
``ValueError`` naming the field, its value and what is allowed.

Each field carries a one-line comment; the README (section Training) explains the groups.
"""

# OmegaConf 2.3 reads the schema's annotations and understands typing's Optional/List/Dict
# (not every PEP 585/604 spelling on Python 3.10), so keep them here.
# ruff: noqa: UP006, UP035, UP045
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

__all__ = [
    "base_schedule",
    "base_env",
    "base_policy",
    "base_algo",
    "base_ppo",
    "base_a2c",
    "base_config",
    "register_configs",
    "validate",
]


@dataclass
class base_schedule:
    """How a coefficient (beta, the temperature) moves during training; see rl/schedules.py."""

    kind: str = "constant"  # constant | linear | cosine | exponential | piecewise
    end: float = 0.0  # value reached at `horizon` (linear, cosine, exponential)
    horizon: Optional[int] = None  # env steps to reach `end`; null = total_steps
    boundaries: List[int] = field(default_factory=list)  # piecewise: env steps where the value changes
    values: List[float] = field(default_factory=list)  # piecewise: len(boundaries) + 1 values
    target_entropy: Optional[float] = None  # fraction of max entropy in (0, 1): adapt by dual ascent
    lr: float = 0.01  # dual-ascent step size for target_entropy
    min: Optional[float] = None  # with a target: floor of the adapted value (anti-windup); null = none
    max: Optional[float] = None  # with a target: ceiling of the adapted value; null = none


@dataclass
class base_env:
    id: str = MISSING  # any registered Gymnasium id
    vectorization: str = "auto"  # auto | vector_entry_point | sync | async
    kwargs: Dict[str, Any] = field(default_factory=dict)  # passed to gymnasium.make_vec
    normalize_obs: bool = False  # running mean/std observation normalization
    normalize_reward: bool = False  # scale rewards by the running std of the discounted return
    distractor_actions: int = 0  # k extra actions that act as action 0 (rl.wrappers)
    atari: bool = False  # Atari preprocessing (84x84 gray, frame skip, stack)
    frame_stack: int = 4  # Atari: frames stacked into one observation
    max_episode_steps: Optional[int] = None  # time limit override; null = the env's own
    solved_return: Optional[float] = None  # summary reports when the mean of 100 episodes first reaches it


@dataclass
class base_policy:
    name: str = MISSING  # label of the mapping (softmax, sparsemax, entmax15, entmax)
    alpha: float = 1.0  # 1 softmax, 1.5 entmax-1.5, 2 sparsemax, other > 1 entmax by bisection
    temperature: float = 1.0  # > 0; logits are divided by it (start value when scheduled)
    temperature_schedule: base_schedule = field(default_factory=base_schedule)
    hidden_sizes: List[int] = field(default_factory=lambda: [64, 64])  # MLP widths (vector obs)
    activation: str = "tanh"  # tanh | relu
    shared: bool = False  # one trunk for actor and critic (default: two separate networks)


@dataclass
class base_algo:
    name: str = MISSING  # ppo | a2c
    n_steps: int = 32  # env steps per env between updates (rollout length)
    learning_rate: float = 1e-3  # start value
    anneal_lr: bool = True  # linear decay of the learning rate to 0 at total_steps
    gamma: float = 0.98  # discount
    gae_lambda: float = 0.8  # GAE lambda (1.0 = n-step returns)
    norm_adv: bool = True  # normalize advantages per minibatch
    vf_coef: float = 0.5  # weight of the value loss mean((V - R)^2)
    max_grad_norm: float = 0.5  # global gradient-norm clip (<= 0 disables)
    optimizer: str = "adam"  # adam | rmsprop
    adam_eps: float = 1e-5
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 1e-5


@dataclass
class base_ppo(base_algo):
    name: str = "ppo"
    update_epochs: int = 20  # passes over each rollout
    batch_size: int = 256  # minibatch size (rollout size / batch_size minibatches per epoch)
    clip_eps: float = 0.2  # surrogate clip range (start value)
    anneal_clip: bool = True  # linear decay of clip_eps to 0 at total_steps
    clip_value: Optional[float] = None  # value-loss clip range around the old values; null = none
    target_kl: Optional[float] = None  # stop the epochs once approx KL exceeds it; null = never


@dataclass
class base_a2c(base_algo):
    name: str = "a2c"
    n_steps: int = 5
    learning_rate: float = 7e-4
    anneal_lr: bool = False
    gamma: float = 0.99
    gae_lambda: float = 1.0
    norm_adv: bool = False
    optimizer: str = "rmsprop"


@dataclass
class base_config:
    env: base_env = MISSING
    policy: base_policy = MISSING
    algo: base_algo = MISSING
    beta: float = 0.0  # entropy coefficient (start value when scheduled), >= 0
    beta_schedule: base_schedule = field(default_factory=base_schedule)
    seed: int = 0  # seeds torch, the envs and the sampler; CPU runs are reproducible
    total_steps: int = 100_000  # env steps (all envs together)
    num_envs: int = 8  # parallel envs
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 1  # torch CPU threads (small networks run fastest on one)
    progress: bool = True  # tqdm progress bar
    log_interval: int = 1  # updates between TensorBoard scalar writes
    histogram_interval: int = 25  # updates between entropy histograms (0 = never)
    checkpoint_interval: int = 50_000  # env steps between checkpoints (0 = only at exit)
    resume: Optional[str] = None  # checkpoint path to continue from
    auto_resume: bool = True  # continue from a checkpoint found in the run directory (sweeps)
    exact_env_resume: bool = False  # also pickle the envs next to checkpoints (trusted files only)


def register_configs() -> ConfigStore:
    """Registers every schema under its ``base_<name>`` (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=base_config)
    cs.store(group="env", name="base_env", node=base_env)
    cs.store(group="policy", name="base_policy", node=base_policy)
    cs.store(group="algo", name="base_ppo", node=base_ppo)
    cs.store(group="algo", name="base_a2c", node=base_a2c)
    return cs


_VECTORIZATION = ("auto", "vector_entry_point", "sync", "async")
_SCHEDULE_KINDS = ("constant", "linear", "cosine", "exponential", "piecewise")
_ALGOS = ("ppo", "a2c")
_OPTIMIZERS = ("adam", "rmsprop")
_ACTIVATIONS = ("tanh", "relu")


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name}={value!r} is not allowed; allowed: {allowed}")


def _number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, allowed: str = "") -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        _fail(name, value, allowed or "a number")
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        _fail(name, value, allowed)
    return v


def _integer(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(name, value, f"an integer >= {low}")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(name, value, " | ".join(choices))


def _check_keys(node: Any, path: str = "") -> None:
    """Refuses keys outside the schema that Hydra lets through.

    The schema makes Hydra reject ``algo.learning_rte=1e-3``, but an append override
    (``+algo.learning_rte=1e-3``) opens the struct flag and adds the key; nothing reads it, so
    the typo would silently leave the default in place.
    """
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return  # a free-form mapping such as env.kwargs
    allowed = [f.name for f in dataclasses.fields(schema)]
    for key in node.keys():
        name = f"{path}{key}"
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {path}{close[0]}?)" if close else ""
            raise ValueError(f"unknown config key {name!r}{hint}: schema {schema.__name__} has no such "
                             f"field; allowed: {', '.join(allowed)}")
        if not OmegaConf.is_missing(node, key):
            _check_keys(node[key], f"{name}.")


def validate(cfg: Any) -> None:
    """Checks the values of a composed config; raises ValueError naming the first bad field.

    Types are already enforced by the schema when Hydra composes the config; this refuses
    keys the schema lacks (an append override ``+key=value`` gets past Hydra) and checks
    ranges and choices, so that a bad alpha, beta or temperature fails before any env or
    network is built. The schedules' own fields are checked by rl.schedules when the trainer
    builds them.
    """
    _check_keys(cfg)
    _number("policy.alpha", cfg.policy.alpha, low=1.0,
            allowed="a finite float >= 1 (1 softmax, 1.5 entmax-1.5, 2 sparsemax)")
    _number("policy.temperature", cfg.policy.temperature, low=0.0, low_open=True,
            allowed="a finite float > 0")
    _number("beta", cfg.beta, low=0.0, allowed="a finite float >= 0")
    for name, sched in (("beta_schedule", cfg.beta_schedule),
                        ("policy.temperature_schedule", cfg.policy.temperature_schedule)):
        _choice(f"{name}.kind", sched.kind, _SCHEDULE_KINDS)
    if cfg.beta_schedule.target_entropy is not None and \
            cfg.policy.temperature_schedule.target_entropy is not None:
        # Two controllers on one measured entropy would fight each other.
        _fail("policy.temperature_schedule.target_entropy", cfg.policy.temperature_schedule.target_entropy,
              "null while beta_schedule.target_entropy is set (one entropy target per run)")
    _choice("policy.activation", cfg.policy.activation, _ACTIVATIONS)
    for i, h in enumerate(cfg.policy.hidden_sizes):
        _integer(f"policy.hidden_sizes[{i}]", h, 1)
    _choice("env.vectorization", cfg.env.vectorization, _VECTORIZATION)
    _integer("env.distractor_actions", cfg.env.distractor_actions, 0)
    _integer("env.frame_stack", cfg.env.frame_stack, 1)
    if cfg.env.max_episode_steps is not None:
        _integer("env.max_episode_steps", cfg.env.max_episode_steps, 1)

    algo = cfg.algo
    _choice("algo.name", algo.name, _ALGOS)
    _integer("algo.n_steps", algo.n_steps, 1)
    _number("algo.learning_rate", algo.learning_rate, low=0.0, low_open=True, allowed="a float > 0")
    _number("algo.gamma", algo.gamma, low=0.0, high=1.0, allowed="a float in [0, 1]")
    _number("algo.gae_lambda", algo.gae_lambda, low=0.0, high=1.0, allowed="a float in [0, 1]")
    _number("algo.vf_coef", algo.vf_coef, low=0.0, allowed="a finite float >= 0")
    _number("algo.max_grad_norm", algo.max_grad_norm, allowed="a finite float (<= 0 disables clipping)")
    _choice("algo.optimizer", algo.optimizer, _OPTIMIZERS)
    for name in ("adam_eps", "rmsprop_eps"):
        _number(f"algo.{name}", getattr(algo, name), low=0.0, low_open=True, allowed="a float > 0")
    _number("algo.rmsprop_alpha", algo.rmsprop_alpha, low=0.0, high=1.0, high_open=True,
            allowed="a float in [0, 1)")
    if algo.name == "ppo":
        for name in ("update_epochs", "batch_size", "clip_eps", "target_kl", "clip_value"):
            if name not in algo:
                _fail("algo", algo.name, "ppo configs compose with schema base_ppo")
        _integer("algo.update_epochs", algo.update_epochs, 1)
        _integer("algo.batch_size", algo.batch_size, 1)
        _number("algo.clip_eps", algo.clip_eps, low=0.0, low_open=True, allowed="a float > 0")
        if algo.clip_value is not None:
            _number("algo.clip_value", algo.clip_value, low=0.0, low_open=True,
                    allowed="a float > 0 or null")
        if algo.target_kl is not None:
            _number("algo.target_kl", algo.target_kl, low=0.0, low_open=True,
                    allowed="a float > 0 or null")

    _integer("seed", cfg.seed, 0)
    _integer("total_steps", cfg.total_steps, 1)
    _integer("num_envs", cfg.num_envs, 1)
    _integer("threads", cfg.threads, 1)
    _integer("log_interval", cfg.log_interval, 1)
    _integer("histogram_interval", cfg.histogram_interval, 0)
    _integer("checkpoint_interval", cfg.checkpoint_interval, 0)
    device = str(cfg.device)
    if not (device in ("auto", "cpu", "cuda") or
            (device.startswith("cuda:") and device[5:].isdigit())):
        _fail("device", cfg.device, "auto | cpu | cuda | cuda:N")
