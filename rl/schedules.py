"""Schedules for the entropy coefficient (and the softmax temperature), and dual tuning to a
target entropy.

A coefficient is a function of env steps, configured by a start value (top-level ``beta``, or
``policy.temperature``) and a ``<name>_schedule`` node (``base_schedule`` in ``rl/config.py``)::

    rl-train beta=0.05 beta_schedule.kind=linear beta_schedule.end=0
    rl-train beta_schedule.kind=piecewise beta_schedule.boundaries=[20000,60000] \\
        beta_schedule.values=[0.05,0.01,0.0]
    rl-train beta=0.01 beta_schedule.target_entropy=0.5       # dual tuning, any mapping

With progress ``t = min(env_step / horizon, 1)`` (``horizon`` defaults to ``total_steps``):

============  ================================================================
kind          value at ``env_step``
============  ================================================================
constant      ``start``
linear        ``start + (end - start) t``
cosine        ``end + (start - end) (1 + cos(pi t)) / 2``
exponential   ``start (end / start)^t`` (geometric; start and end > 0)
piecewise     ``values[0]`` before ``boundaries[0]``, ``values[i+1]`` from
              ``boundaries[i]`` on (``len(values) == len(boundaries) + 1``,
              as TensorFlow's PiecewiseConstantDecay; ``start`` is not used)
============  ================================================================

Target entropy (``target_entropy = f`` in (0, 1)): the coefficient becomes the Lagrange
multiplier of the constraint ``H(pi) >= f H_max`` (SAC's automatic temperature, Haarnoja et
al. 2018, "Soft Actor-Critic Algorithms and Applications", eq. 18, for any mapping here).
The dual objective ``J(beta) = beta (H - f H_max)`` is minimized over ``beta > 0`` by steps on
``log beta`` (the parametrization SAC's implementations use; it keeps beta positive and makes
the step multiplicative)::

    log beta  <-  log beta - lr * dJ/d(log beta) / H_max  =  log beta + lr * (f - H / H_max)

with ``H`` the policy's measured mean entropy and ``H_max`` the mean over rows of the
mapping's maximum entropy (``ops.max_entropy(alpha, n_allowed)``). Dividing by ``H_max``
makes the step a fraction of the range, so one ``lr`` works across mappings and action
counts; each update moves beta by a factor of at most ``exp(lr)``. Beta grows while the
entropy is below the target and shrinks above it. A higher softmax temperature also raises the
entropy, so the same update drives ``temperature``. See docs/beta.md.
"""

from __future__ import annotations

import bisect
import logging
import math
import sys
from typing import Any

from rl.config import ScheduleSettings, schedule_settings

log = logging.getLogger(__name__)
# A tuned coefficient this many times its start, with the entropy at exactly 0, is reported once
# (a sparse mapping at a one-action support: no gradient, so the dual only grows).
RUNAWAY_FACTOR = 1000.0
_LOG_FLOAT_MAX = math.log(sys.float_info.max)

__all__ = ["KINDS", "Coefficient", "build_coefficient"]

# The kinds `_scheduled` implements; rl.config's schema accepts exactly these.
KINDS = ("constant", "linear", "cosine", "exponential", "piecewise")


class Coefficient:
    """A scalar coefficient driven by a schedule over env steps or by dual updates.

    Build it from the `ScheduleSettings` that ``rl.config`` checked (`build_coefficient` also
    takes a config node and checks it first). ``value`` is the coefficient to use now;
    ``step(env_step, entropy_mean, max_entropy_mean)`` advances it after an update and returns
    the new value. ``state_dict`` holds plain python numbers, so a checkpoint read
    with ``torch.load(weights_only=True)`` restores it and a resumed run continues exactly.
    """

    def __init__(self, settings: ScheduleSettings):
        if not isinstance(settings, ScheduleSettings):
            raise TypeError(
                "Coefficient takes the ScheduleSettings that rl.config.schedule_settings returns "
                f"(it checks the values); got {type(settings).__name__}"
            )
        s = settings
        self.name = s.name
        self.field = "policy.temperature_schedule" if s.name == "temperature" else f"{s.name}_schedule"
        self.start = s.start
        self.kind = s.kind
        self.end = s.end
        self.horizon = s.horizon
        self.boundaries = list(s.boundaries)
        self.values = list(s.values)
        self.target_fraction = s.target_entropy
        self.lr = s.lr
        # Optional box for the dual variable (projected dual ascent); None = unbounded.
        self.min_value, self.max_value = s.min, s.max
        self.env_step = 0
        self.num_dual_updates = 0
        # The dual variable of the target-entropy constraint (only used with a target).
        self.log_value = math.log(s.start) if s.target_entropy is not None else None
        self._target_abs: float | None = None
        self._value = self._scheduled(0) if s.target_entropy is None else s.start
        self._warned_runaway = False

    @property
    def value(self) -> float:
        """The coefficient to use for the next update."""
        return self._value

    @property
    def target(self) -> float | None:
        """The absolute target entropy of the last dual step (``f * H_max``), or None."""
        return self._target_abs

    @property
    def adaptive(self) -> bool:
        """True when the coefficient tracks a target entropy."""
        return self.target_fraction is not None

    def _scheduled(self, env_step: int) -> float:
        if self.kind == "constant":
            return self.start
        if self.kind == "piecewise":
            return self.values[bisect.bisect_right(self.boundaries, env_step)]
        t = min(max(env_step, 0) / self.horizon, 1.0)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * t
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))
        # exponential: geometric interpolation, exact at both ends.
        return self.start * (self.end / self.start) ** t

    def step(self, env_step: int, entropy_mean: float | None = None,
             max_entropy_mean: float | None = None) -> float:
        """Advances to `env_step` and returns the new value.

        With a target, takes one dual step from the measured mean entropy `entropy_mean` and the
        mean maximum entropy `max_entropy_mean` of the same rows (both required then):
        ``log value += lr * (f - entropy_mean / max_entropy_mean)``. A batch whose maximum entropy
        is 0 (one allowed action everywhere) carries no information and leaves the value as is.
        """
        if isinstance(env_step, bool) or not isinstance(env_step, int) or env_step < 0:
            raise ValueError(f"env_step={env_step!r} is not allowed; allowed: an integer >= 0")
        self.env_step = env_step
        if not self.adaptive:
            self._value = self._scheduled(env_step)
            return self._value
        if entropy_mean is None or max_entropy_mean is None:
            raise ValueError(
                f"{self.field}.target_entropy is set, so step() needs entropy_mean and "
                f"max_entropy_mean; got entropy_mean={entropy_mean!r}, "
                f"max_entropy_mean={max_entropy_mean!r}"
            )
        entropy_mean = float(entropy_mean)
        max_entropy_mean = float(max_entropy_mean)
        if not math.isfinite(entropy_mean):
            raise ValueError(f"entropy_mean={entropy_mean!r} is not allowed; allowed: a finite number")
        if not math.isfinite(max_entropy_mean) or max_entropy_mean < 0:
            raise ValueError(
                f"max_entropy_mean={max_entropy_mean!r} is not allowed; allowed: a finite number >= 0")
        self._target_abs = self.target_fraction * max_entropy_mean
        if max_entropy_mean > 0:
            # Dual step on log(value); see the module docstring for the derivation.
            self.log_value += self.lr * (self.target_fraction - entropy_mean / max_entropy_mean)
            # Projection onto [min, max]: the anti-windup of the integrator. Without a floor, a
            # long slack phase (entropy above the target) drives log beta down without limit,
            # and climbing back takes as many updates as the descent, whatever lr is.
            if self.min_value is not None:
                self.log_value = max(self.log_value, math.log(self.min_value))
            if self.max_value is not None:
                self.log_value = min(self.log_value, math.log(self.max_value))
            self.num_dual_updates += 1
            # beyond exp's range the value is inf, for the trainer to stop the run with a reason
            self._value = math.exp(self.log_value) if self.log_value < _LOG_FLOAT_MAX else math.inf
            if (entropy_mean <= 0.0 and self.max_value is None and not self._warned_runaway
                    and self._value >= RUNAWAY_FACTOR * self.start):
                self._warned_runaway = True
                start = "policy.temperature" if self.name == "temperature" else self.name
                log.warning(
                    "%s.target_entropy=%g: the entropy is 0 and the tuned %s has grown from %s=%g "
                    "to %g at env step %d; a sparse mapping whose support is one action has no "
                    "gradient there, so raising it changes nothing (docs/experiments/"
                    "sac_distractors.md). Set %s.max to bound it; watch policy/support_size",
                    self.field, self.target_fraction, self.name, start, self.start, self._value,
                    env_step, self.field)
        return self._value

    def definition(self) -> dict[str, Any]:
        """The fields that determine this coefficient's future values, by config field name.

        Only the fields the mode uses: a constant is its ``start``; linear, cosine and
        exponential add ``end`` and the resolved ``horizon``; piecewise is its ``boundaries``
        and ``values``; a target is its fraction and dual ``lr`` (its start only sets the
        initial dual variable, which the checkpoint carries).
        """
        start = "policy.temperature" if self.name == "temperature" else self.name
        if self.adaptive:
            out = {f"{self.field}.target_entropy": float(self.target_fraction),
                   f"{self.field}.lr": float(self.lr)}
            for key, bound in (("min", self.min_value), ("max", self.max_value)):
                if bound is not None:
                    out[f"{self.field}.{key}"] = float(bound)
            return out
        if self.kind == "constant":
            return {start: float(self.start)}
        if self.kind == "piecewise":
            return {f"{self.field}.boundaries": [int(b) for b in self.boundaries],
                    f"{self.field}.values": [float(v) for v in self.values]}
        return {start: float(self.start), f"{self.field}.end": float(self.end),
                f"{self.field}.horizon": int(self.horizon)}

    def state_dict(self) -> dict[str, Any]:
        """Plain python numbers, lists and dicts (readable by ``torch.load(weights_only=True)``).

        ``schedule`` is the coefficient's definition (`definition`), so a checkpoint carries
        the schedule as well as its position and the dual variable.
        """
        return {
            "name": self.name,
            "kind": "target" if self.adaptive else self.kind,
            "schedule": self.definition(),
            "env_step": int(self.env_step),
            "value": float(self._value),
            "log_value": None if self.log_value is None else float(self.log_value),
            "target": None if self._target_abs is None else float(self._target_abs),
            "num_dual_updates": int(self.num_dual_updates),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the step counter, the value and the dual variable saved by `state_dict`.

        The schedule comes from the config and must be the one the checkpoint carries: a state
        saved under another mode (a schedule vs a target) or with a different definition
        (``end``, ``horizon``, piecewise values, the target's fraction or ``lr``...) is refused
        with the field named, since continuing it would not be the same run. A resume that
        extends ``total_steps`` therefore needs the old ``horizon`` set explicitly for linear,
        cosine and exponential schedules. States written before ``schedule`` was saved are
        accepted on their mode alone.
        """
        mode = "target" if self.adaptive else self.kind
        if state.get("kind") != mode:
            raise ValueError(
                f"checkpoint state of {self.name!r} was saved with kind={state.get('kind')!r} but "
                f"the config gives kind={mode!r}; resume with the checkpoint's schedule config"
            )
        saved = state.get("schedule")
        if saved is not None:
            mine = self.definition()
            for key in sorted(set(saved) | set(mine)):
                if saved.get(key) != mine.get(key):
                    raise ValueError(
                        f"{key}={mine.get(key)!r} is not allowed when resuming this checkpoint; "
                        f"allowed: the checkpoint's {key}={saved.get(key)!r} (its {self.name} "
                        "schedule continues exactly only under the same definition)"
                    )
        self.env_step = int(state["env_step"])
        self.num_dual_updates = int(state.get("num_dual_updates", 0))
        target = state.get("target")
        self._target_abs = None if target is None else float(target)
        if self.adaptive:
            self.log_value = float(state["log_value"])
            # The saved value itself: exp(log(start)) need not round back to start when no
            # dual step was taken yet.
            value = state.get("value")
            self._value = math.exp(self.log_value) if value is None else float(value)
        else:
            self._value = self._scheduled(self.env_step)

    def __repr__(self) -> str:
        mode = f"target_entropy={self.target_fraction}, lr={self.lr}" if self.adaptive else (
            f"kind={self.kind!r}")
        return f"Coefficient({self.name}={self._value:.6g}, {mode}, env_step={self.env_step})"


def build_coefficient(settings: ScheduleSettings | float, cfg: Any = None, total_steps: int | None = None,
                      name: str = "beta") -> Coefficient:
    """The `Coefficient` of checked settings, or of a start value and a schedule node.

    Parameters
    ----------
    settings : the `ScheduleSettings` that ``rl.config.validate`` returns (``.beta``,
        ``.temperature``), used as they are; or the start value (top-level ``beta``, or
        ``policy.temperature``; with a target entropy, the initial value of the dual variable),
        and then
    cfg : a ``base_schedule`` node (dataclass, omegaconf node, dict, or None for constant) with
        ``kind``, ``end``, ``horizon``, ``boundaries``, ``values``, ``target_entropy``, ``lr``,
        and optionally ``min`` / ``max``: bounds of the dual variable with a target;
    total_steps : the run's env steps; the default ``horizon``;
    name : ``"beta"`` (values >= 0) or ``"temperature"`` (values > 0 everywhere).

    Raises
    ------
    ValueError from ``rl.config.schedule_settings`` (the schema's checks), naming the config
    field (``beta_schedule.*``, ``policy.temperature_schedule.*``), its value and what is allowed.
    """
    if not isinstance(settings, ScheduleSettings):
        settings = schedule_settings(settings, cfg, total_steps, name)
    return Coefficient(settings)
