"""Typed configuration schema, registered in Hydra's ConfigStore.

Every YAML under ``conf/`` names its schema in its ``defaults`` list (``base_env``,
``base_policy``, ``base_ppo``, ``base_a2c``, ``base_config``) with ``_self_`` last, so Hydra
rejects an unknown key or a value of the wrong type when it composes the config, before
anything is built. `validate` then checks the values (ranges, choices) and raises
``ValueError`` naming the field, its value and what is allowed. This module is the one place
config values are checked: `validate` returns them as plain `Settings` (`EnvSettings`,
`NetworkSettings`, `ScheduleSettings`), which rl.envs, rl.networks and rl.schedules trust.
Called from Python with a dict or raw arguments instead, those modules run the same checks
(`env_settings`, `network_settings`, `schedule_settings`) from here.

Each field carries a one-line comment; the README (section Training) explains the groups.
"""

# OmegaConf 2.3 reads the schema's annotations and understands typing's Optional/List/Dict
# (not every PEP 585/604 spelling on Python 3.10), so keep them here.
# ruff: noqa: UP006, UP035, UP045
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Dict, List, NoReturn, Optional, Tuple

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

__all__ = [
    "base_schedule",
    "base_env",
    "base_policy",
    "base_algo",
    "base_ppo",
    "base_a2c",
    "base_sac",
    "base_config",
    "EnvSettings",
    "NetworkSettings",
    "POLICY_ALPHAS",
    "ScheduleSettings",
    "Settings",
    "env_settings",
    "network_settings",
    "register_configs",
    "schedule_settings",
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
    id: str = MISSING  # any registered Gymnasium id with a Discrete action space
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
    name: str = MISSING  # softmax | entmax15 | sparsemax (alpha 1, 1.5, 2) | entmax (any alpha > 1)
    alpha: float = 1.0  # 1 softmax, 1.5 entmax-1.5, 2 sparsemax, other > 1 entmax by bisection
    temperature: float = 1.0  # > 0; logits are divided by it (start value when scheduled)
    temperature_schedule: base_schedule = field(default_factory=base_schedule)
    hidden_sizes: List[int] = field(default_factory=lambda: [64, 64])  # MLP widths (vector obs)
    activation: str = "tanh"  # tanh | relu | elu | gelu | silu (rl.networks.ACTIVATIONS)
    shared: bool = False  # one trunk for actor and critic (default: two separate networks)
    network: str = "auto"  # auto | mlp | minatar_cnn | nature_cnn (auto: from the observation)


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
class base_sac(base_algo):
    """Discrete soft actor-critic (rl/sac.py). Of the fields it shares with ``base_algo`` it
    reads ``learning_rate`` (the actor's), ``gamma``, ``max_grad_norm``, ``optimizer`` (adam
    only), ``adam_eps`` and ``anneal_lr`` (both learning rates); ``n_steps``, ``gae_lambda``,
    ``norm_adv``, ``vf_coef`` and the rmsprop fields are not used."""

    name: str = "sac"
    learning_rate: float = 3e-4  # actor learning rate (CleanRL sac_atari policy_lr)
    q_learning_rate: float = 3e-4  # critic learning rate (CleanRL q_lr)
    anneal_lr: bool = False  # linear decay of both learning rates to 0 at total_steps
    gamma: float = 0.99
    max_grad_norm: float = 0.0  # <= 0: no clipping (CleanRL clips nothing)
    adam_eps: float = 1e-4  # CleanRL sac_atari's Adam eps
    buffer_size: int = 1_000_000  # replay capacity in transitions (all envs together)
    learning_starts: int = 20_000  # env steps of uniformly random actions before the first update
    batch_size: int = 64  # transitions per gradient step
    train_frequency: int = 4  # env steps per env between gradient phases
    gradient_steps: int = 1  # gradient steps per phase
    td_steps: int = 1  # steps of the soft n-step critic target (1: the one-step target)
    tau: float = 1.0  # target <- tau * online + (1 - tau) * target (1: hard copy)
    target_update_interval: int = 8000  # env steps between target updates
    max_buffer_gb: float = 32.0  # refuse replay buffers above this (GiB on the device; all members')
    checkpoint_buffer_gb: float = 4.0  # save the replay buffer with checkpoints up to this size (GiB)


@dataclass
class base_eval:
    """Evaluation during training (rl/evaluation.py)."""

    interval: int = 0  # env steps between evaluations (0: only at the end of the run)
    episodes: int = 10  # greedy and as many sampled episodes per evaluation (0: no evaluation)


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
    eval: base_eval = field(default_factory=base_eval)


def register_configs() -> ConfigStore:
    """Registers every schema under its ``base_<name>`` (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=base_config)
    cs.store(group="env", name="base_env", node=base_env)
    cs.store(group="policy", name="base_policy", node=base_policy)
    cs.store(group="algo", name="base_ppo", node=base_ppo)
    cs.store(group="algo", name="base_a2c", node=base_a2c)
    cs.store(group="algo", name="base_sac", node=base_sac)
    return cs


_ALGOS = ("ppo", "a2c", "sac")
_OPTIMIZERS = ("adam", "rmsprop")
# policy.name labels the mapping in summaries and tables; the fixed-alpha mappings must carry
# their own alpha (None: any alpha > 1, computed by bisection).
POLICY_ALPHAS: Dict[str, Optional[float]] = {
    "softmax": 1.0, "entmax15": 1.5, "sparsemax": 2.0, "entmax": None,
}


def _fail(name: str, value: Any, allowed: str) -> NoReturn:
    raise ValueError(f"{name}={value!r} is not allowed; allowed: {allowed}")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, allowed: str = "a finite number") -> float:
    ok = _is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        _fail(name, value, allowed)
    return float(value)


def _integer(name: str, value: Any, low: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        _fail(name, value, f"an integer >= {low}")
    return int(value)


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(name, value, "true or false")
    return value


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        _fail(name, value, " | ".join(choices))
    return value


def _read(node: Any, key: str, default: Any) -> Any:
    """``key`` of an omegaconf node, a mapping, a dataclass or None, as plain Python.

    Mappings are read by key: on a DictConfig ``node.values`` is the ``values()`` method.
    """
    if node is None:
        return default
    value = node.get(key, default) if isinstance(node, Mapping) else getattr(node, key, default)
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


# ---------------------------------------------------------------- checked settings
# What the library functions take: the values `validate` checked, as plain Python. rl.envs,
# rl.networks and rl.schedules trust these and check nothing again; given anything else (a
# dict, an omegaconf node, raw arguments from a script) they build these first.


@dataclass(frozen=True)
class EnvSettings:
    """The ``env`` node, checked (fields as in `base_env`)."""

    id: str
    vectorization: str = "auto"
    kwargs: Dict[str, Any] = field(default_factory=dict)
    normalize_obs: bool = False
    normalize_reward: bool = False
    distractor_actions: int = 0
    atari: bool = False
    frame_stack: int = 4
    max_episode_steps: Optional[int] = None


@dataclass(frozen=True)
class NetworkSettings:
    """The network fields of the ``policy`` node, checked."""

    hidden_sizes: Tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    shared: bool = False
    network: str = "auto"


@dataclass(frozen=True)
class ScheduleSettings:
    """A coefficient's start value and ``<name>_schedule`` node, checked; ``horizon`` resolved."""

    name: str  # beta | temperature
    start: float
    kind: str = "constant"
    end: float = 0.0
    horizon: int = 1
    boundaries: Tuple[int, ...] = ()
    values: Tuple[float, ...] = ()
    target_entropy: Optional[float] = None
    lr: float = 0.01
    min: Optional[float] = None
    max: Optional[float] = None


@dataclass(frozen=True)
class Settings:
    """What `validate` returns: the checked values the trainer builds its parts from."""

    env: EnvSettings
    network: NetworkSettings
    beta: ScheduleSettings
    temperature: ScheduleSettings


def env_settings(node: Any) -> EnvSettings:
    """Checks an ``env`` node (omegaconf node, dict or dataclass) and returns its values.

    Whether the id is registered, and what its spaces are, is checked by ``rl.envs.make_envs``
    when it looks the id up: the registry (optional families included) lives there.
    """
    if isinstance(node, EnvSettings):
        return node
    from rl.envs import VECTORIZATION_MODES

    env_id = _read(node, "id", None)
    if not isinstance(env_id, str) or not env_id:
        _fail("env.id", env_id, "a registered Gymnasium id, e.g. CartPole-v1")
    kwargs = _read(node, "kwargs", None)
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        _fail("env.kwargs", kwargs, "a mapping of constructor arguments")
    max_steps = _read(node, "max_episode_steps", None)
    return EnvSettings(
        id=env_id,
        vectorization=_choice("env.vectorization", _read(node, "vectorization", "auto"), VECTORIZATION_MODES),
        kwargs=dict(kwargs),
        normalize_obs=_boolean("env.normalize_obs", _read(node, "normalize_obs", False)),
        normalize_reward=_boolean("env.normalize_reward", _read(node, "normalize_reward", False)),
        distractor_actions=_integer("env.distractor_actions", _read(node, "distractor_actions", 0), 0),
        atari=_boolean("env.atari", _read(node, "atari", False)),
        frame_stack=_integer("env.frame_stack", _read(node, "frame_stack", 4), 1),
        max_episode_steps=None if max_steps is None else _integer("env.max_episode_steps", max_steps, 1),
    )


def network_settings(hidden_sizes: Any = (64, 64), activation: Any = "tanh",
                     shared: Any = False, network: Any = "auto") -> NetworkSettings:
    """Checks the network fields of the ``policy`` node (or ``rl.networks.ActorCritic``'s arguments).

    Whether ``network`` fits the observation space is checked where the space is known
    (``rl.networks.resolve_network``).
    """
    from rl.networks import ACTIVATIONS, NETWORKS

    if isinstance(hidden_sizes, (str, bytes)) or not isinstance(hidden_sizes, Sequence):
        _fail("policy.hidden_sizes", hidden_sizes, "a list of integers >= 1 (MLP widths)")
    sizes = tuple(_integer(f"policy.hidden_sizes[{i}]", h, 1) for i, h in enumerate(hidden_sizes))
    activation = _choice("policy.activation", activation, list(ACTIVATIONS))
    shared = _boolean("policy.shared", shared)
    network = _choice("policy.network", network, NETWORKS)
    return NetworkSettings(hidden_sizes=sizes, activation=activation, shared=shared, network=network)


def schedule_settings(start: Any, node: Any, total_steps: Any, name: str) -> ScheduleSettings:
    """Checks a coefficient's start value and schedule node; the formulas are in rl/schedules.py.

    ``name`` is ``"beta"`` (values >= 0) or ``"temperature"`` (values > 0 everywhere); errors
    name the config fields (``beta``, ``beta_schedule.*``, ``policy.temperature``,
    ``policy.temperature_schedule.*``). ``node`` may be None (constant).
    """
    from rl.schedules import KINDS

    _choice("name", name, ("beta", "temperature"))
    positive = name == "temperature"
    sched = "policy.temperature_schedule" if positive else f"{name}_schedule"
    start_field = "policy.temperature" if positive else name

    def coefficient(fname: str, v: Any) -> float:
        v = _number(fname, v)
        if (v <= 0) if positive else (v < 0):
            _fail(fname, v, "a number > 0" if positive else "a number >= 0")
        return v

    start = coefficient(start_field, start)
    kind = _choice(f"{sched}.kind", _read(node, "kind", "constant"), KINDS)
    end = _number(f"{sched}.end", _read(node, "end", 0.0))
    if end < 0:
        _fail(f"{sched}.end", end, "a number >= 0")
    if kind in ("linear", "cosine", "exponential"):
        # The schedule reaches `end`, so it must be a valid value (temperature: > 0).
        end = coefficient(f"{sched}.end", end)

    total_steps = _integer("total_steps", total_steps, 1)
    horizon = _read(node, "horizon", None)
    if horizon is None:
        horizon = total_steps
    elif not isinstance(horizon, numbers.Integral) or isinstance(horizon, bool) or horizon <= 0:
        _fail(f"{sched}.horizon", horizon, "an integer > 0 (env steps), or null for total_steps")

    boundaries = list(_read(node, "boundaries", None) or [])
    values = list(_read(node, "values", None) or [])
    if kind == "piecewise":
        for b in boundaries:
            if not isinstance(b, numbers.Integral) or isinstance(b, bool) or b <= 0:
                _fail(f"{sched}.boundaries", boundaries, "increasing integers > 0 (env steps)")
        if any(b1 <= b0 for b0, b1 in zip(boundaries, boundaries[1:], strict=False)):
            _fail(f"{sched}.boundaries", boundaries, "strictly increasing env steps")
        if len(values) != len(boundaries) + 1:
            _fail(f"{sched}.values", values,
                  f"len(boundaries) + 1 = {len(boundaries) + 1} values: values[0] before "
                  "boundaries[0], values[i+1] from boundaries[i] on")
        values = [coefficient(f"{sched}.values[{i}]", v) for i, v in enumerate(values)]
    if kind == "exponential":
        if start <= 0:
            _fail(start_field, start, "a number > 0 for kind=exponential (geometric decay)")
        if end <= 0:
            _fail(f"{sched}.end", end,
                  "a number > 0 for kind=exponential (a geometric decay never reaches 0)")

    target = _read(node, "target_entropy", None)
    if target is not None:
        target = _number(f"{sched}.target_entropy", target)
        if not 0.0 < target < 1.0:
            _fail(f"{sched}.target_entropy", target,
                  "a fraction of the maximum entropy in (0, 1), or null for no target")
        if kind != "constant":
            # The dual variable replaces the schedule; silently dropping a configured shape
            # would run something other than what was asked for.
            _fail(f"{sched}.kind", kind,
                  f"constant when {sched}.target_entropy is set (the target replaces the schedule); "
                  "drop one of the two")
        if start <= 0:
            _fail(start_field, start,
                  f"a number > 0 when {sched}.target_entropy is set (the initial value of the "
                  "dual variable, which is updated on its log)")
    lr = _number(f"{sched}.lr", _read(node, "lr", 0.01))
    if lr <= 0:
        _fail(f"{sched}.lr", lr, "a number > 0 (the dual step size)")
    bounds = []
    for key in ("min", "max"):
        bound = _read(node, key, None)
        if bound is not None:
            if target is None:
                _fail(f"{sched}.{key}", bound,
                      f"null unless {sched}.target_entropy is set (it bounds the dual variable)")
            bound = _number(f"{sched}.{key}", bound)
            if bound <= 0:
                _fail(f"{sched}.{key}", bound, "a number > 0 (the dual variable is a log), or null")
        bounds.append(bound)
    lo, hi = bounds
    if lo is not None and hi is not None and not lo < hi:
        _fail(f"{sched}.max", hi, f"a number > {sched}.min={lo}")
    if (lo is not None and start < lo) or (hi is not None and start > hi):
        _fail(start_field, start, f"a start within [{sched}.min, {sched}.max] = [{lo}, {hi}]")
    return ScheduleSettings(name=name, start=start, kind=kind, end=end, horizon=int(horizon),
                            boundaries=tuple(int(b) for b in boundaries), values=tuple(values),
                            target_entropy=target, lr=lr, min=lo, max=hi)


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


def _check_sac(cfg: Any, env: EnvSettings) -> None:
    """The fields of ``base_sac`` (rl/sac.py) and what SAC does not support."""
    algo = cfg.algo
    for name in ("q_learning_rate", "buffer_size", "learning_starts", "train_frequency",
                 "gradient_steps", "td_steps", "tau", "target_update_interval", "max_buffer_gb",
                 "checkpoint_buffer_gb", "batch_size"):
        if name not in algo:
            _fail("algo", algo.name, "sac configs compose with schema base_sac (conf/algo/sac.yaml)")
    _number("algo.q_learning_rate", algo.q_learning_rate, low=0.0, low_open=True, allowed="a float > 0")
    _integer("algo.buffer_size", algo.buffer_size, 1)
    _integer("algo.learning_starts", algo.learning_starts, 0)
    _integer("algo.batch_size", algo.batch_size, 1)
    _integer("algo.train_frequency", algo.train_frequency, 1)
    _integer("algo.gradient_steps", algo.gradient_steps, 1)
    _integer("algo.td_steps", algo.td_steps, 1)
    _number("algo.tau", algo.tau, low=0.0, high=1.0, low_open=True, allowed="a float in (0, 1]")
    _integer("algo.target_update_interval", algo.target_update_interval, 1)
    _number("algo.max_buffer_gb", algo.max_buffer_gb, low=0.0, low_open=True, allowed="a float > 0 (GiB)")
    _number("algo.checkpoint_buffer_gb", algo.checkpoint_buffer_gb, low=0.0,
            allowed="a float >= 0 (GiB; 0 never saves the replay buffer)")
    if algo.optimizer != "adam":
        _fail("algo.optimizer", algo.optimizer, "adam with algo=sac")
    for name in ("normalize_obs", "normalize_reward"):
        if getattr(env, name):
            # Stored transitions would mix observations (rewards) scaled by different statistics.
            _fail(f"env.{name}", True, "false with algo=sac (the replay buffer keeps raw observations "
                  "and rewards)")


def validate(cfg: Any) -> Settings:
    """Checks a composed config and returns its checked `Settings`; the one place values are checked.

    Types are already enforced by the schema when Hydra composes the config; this refuses
    keys the schema lacks (an append override ``+key=value`` gets past Hydra) and checks
    ranges and choices, so that a bad alpha, beta, temperature or schedule fails before any env
    or network is built. The first bad field raises ValueError naming the field, its value
    and what is allowed. The choices (activations, vectorization modes, schedule kinds) are
    read from the modules that implement them.
    """
    _check_keys(cfg)
    policy = cfg.policy
    alpha = _number("policy.alpha", policy.alpha, low=1.0,
                    allowed="a finite float >= 1 (1 softmax, 1.5 entmax-1.5, 2 sparsemax)")
    _choice("policy.name", policy.name, list(POLICY_ALPHAS))
    expected = POLICY_ALPHAS[policy.name]
    if expected is not None and alpha != expected:
        _fail("policy.alpha", policy.alpha,
              f"{expected} with policy.name={policy.name!r} (any alpha > 1: policy=entmax)")
    if expected is None and alpha == 1.0:
        _fail("policy.alpha", policy.alpha, "a float > 1 with policy.name='entmax' (alpha 1: policy=softmax)")
    beta = schedule_settings(cfg.beta, cfg.beta_schedule, cfg.total_steps, "beta")
    temperature = schedule_settings(policy.temperature, policy.temperature_schedule, cfg.total_steps,
                                    "temperature")
    if beta.target_entropy is not None and temperature.target_entropy is not None:
        # Two controllers on one measured entropy would fight each other.
        _fail("policy.temperature_schedule.target_entropy", temperature.target_entropy,
              "null while beta_schedule.target_entropy is set (one entropy target per run)")
    network = network_settings(policy.hidden_sizes, policy.activation, policy.shared, policy.network)
    env = env_settings(cfg.env)

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
    if algo.name == "sac":
        _check_sac(cfg, env)

    _integer("seed", cfg.seed, 0)
    _integer("total_steps", cfg.total_steps, 1)
    _integer("num_envs", cfg.num_envs, 1)
    _integer("threads", cfg.threads, 1)
    _integer("log_interval", cfg.log_interval, 1)
    _integer("histogram_interval", cfg.histogram_interval, 0)
    _integer("checkpoint_interval", cfg.checkpoint_interval, 0)
    evaluation = cfg.get("eval") if hasattr(cfg, "get") else None
    if evaluation is not None:
        _integer("eval.interval", evaluation.interval, 0)
        _integer("eval.episodes", evaluation.episodes, 0)
    device = str(cfg.device)
    if not (device in ("auto", "cpu", "cuda") or
            (device.startswith("cuda:") and device[5:].isdigit())):
        _fail("device", cfg.device, "auto | cpu | cuda | cuda:N")
    return Settings(env=env, network=network, beta=beta, temperature=temperature)
