"""Analysis of runs and sweeps: the library under ``scripts/``.

Modules (import the one you need; nothing is imported here, so that ``rl.analysis.machine``
stays cheap for ``scripts/check_gpu.py``):

* `runs`       -- finding run directories, reading their config, summary and TensorBoard scalars;
* `aggregate`  -- the tidy long table of a sweep (one row per run, tag and step) and the
  final-return summary per cell;
* `stats`      -- interquartile mean, bootstrap confidence intervals, probability of improvement;
* `figures`    -- the sweep figures (matplotlib);
* `machine`    -- the machine and device a benchmark ran on (stdlib + torch only);
* `reproduce`  -- the reproductions behind ``scripts/reproduce.py``;
* `beta_target`, `support` -- the target-entropy and useful-action-in-support reproductions.
"""
