"""Statistics over seeds: interquartile mean, bootstrap confidence intervals, probability
of improvement (the conventions of rliable, Agarwal et al. 2021, "Deep RL at the edge of
the statistical precipice").

Computed with SciPy, not with the rliable package: rliable's IQM is ``scipy.stats.trim_mean(x,
0.25)`` and its probability of improvement is ``scipy.stats.mannwhitneyu`` divided by the number
of pairs, so the numbers are the same; its stratified bootstrap (arch's, one Python call per
resample) draws from NumPy's global generator whatever ``random_state`` says, and rliable 1.2
(arch < 8) does not import under pandas 3. ``scipy.stats.bootstrap`` draws the resamples from the
given generator, vectorized. docs/experiments/README.md (statistics) has the measurements.

With one task per cell (one env, one mapping, one x), rliable's stratified bootstrap is the
plain bootstrap over that cell's runs, which is what `iqm_ci` and `mean_ci` compute.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats as _st

CONFIDENCE = 0.95


def _values(values, name: str = "values") -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError(f"{name} must hold at least one number; got none")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite; got {x[~np.isfinite(x)][:3].tolist()} among them")
    return x


def iqm(values) -> float:
    """Interquartile mean: the mean of the middle 50% of runs (25% trimmed from each end)."""
    return float(_st.trim_mean(_values(values), 0.25))


def _iqm_axis(x, axis=-1):
    return _st.trim_mean(x, 0.25, axis=axis)


def _mean_axis(x, axis=-1):
    return np.mean(x, axis=axis)


def percentile_bootstrap_ci(values, statistic, reps: int = 2000, seed: int = 0,
                            confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``statistic(x, axis)`` over runs resampled with replacement.

    Resample i is ``values[rng.integers(0, n, (reps, n))[i]]`` with ``rng =
    np.random.default_rng(seed)``; the bounds are the ``(1 -/+ confidence) / 2`` percentiles
    of the resampled statistics (linear interpolation). NaNs for fewer than two runs, whose
    resamples are all the same run.
    """
    x = _values(values)
    if reps < 1:
        raise ValueError(f"reps must be >= 1; got {reps}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    if len(x) < 2:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        # all-equal values: a degenerate but valid interval [v, v]
        warnings.simplefilter("ignore", _st.DegenerateDataWarning)
        res = _st.bootstrap((x,), statistic, n_resamples=reps, method="percentile",
                            confidence_level=confidence, rng=np.random.default_rng(seed),
                            vectorized=True, axis=-1)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def iqm_ci(values, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap CI of the IQM over runs (the tables' ``IQM [95% CI]``)."""
    return percentile_bootstrap_ci(values, _iqm_axis, reps, seed)


def mean_ci(values, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean over runs and its 95% percentile-bootstrap CI: ``(mean, low, high)``."""
    x = _values(values)
    low, high = percentile_bootstrap_ci(x, _mean_axis, reps, seed)
    return float(x.mean()), low, high


def probability_of_improvement(x, y) -> float:
    """P(X > Y) + P(X = Y) / 2 for a run X of one method and a run Y of another.

    The Mann-Whitney U statistic of x against y divided by ``len(x) * len(y)`` (rliable's
    definition for one task).
    """
    x, y = _values(x, "x"), _values(y, "y")
    u = _st.mannwhitneyu(x, y, alternative="greater").statistic
    return float(u / (len(x) * len(y)))


def mean_band(curves, reps: int = 1000, seed: int = 0):
    """Mean over runs of curves on shared bins and the 95% bootstrap band of that mean.

    curves : list of equal-length arrays, one per run; NaN where a run has no value (before
             its first log, after it ended).
    Returns (mean, low, high) per bin. Hand-written rather than ``scipy.stats.bootstrap``:
    a resample may hold only NaN at a bin, and the band skips those resamples
    (``nanpercentile``) where SciPy's percentiles would turn the whole bin NaN.
    """
    arr = np.stack([np.asarray(c, dtype=float) for c in curves])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins: before a run's 1st log
        mean = np.nanmean(arr, axis=0)
        if len(arr) < 2:
            return mean, mean, mean
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(arr), size=(reps, len(arr)))
        boots = np.nanmean(arr[idx], axis=1)
        low, high = np.nanpercentile(boots, [2.5, 97.5], axis=0)
    return mean, low, high
