"""The population launcher: a Hydra sweep's runs trained as populations (rl.population).

    rl-train -m beta=0,0.01,0.1 policy=softmax,sparsemax seed=0,1,2,3,4 hydra/launcher=population

Hydra's sweeper hands the launcher a batch of jobs (override lists). The launcher composes each
job's config here, in the sweep process, and gives each job its run directory as Hydra's own
launchers do (``hydra.sweep.dir/hydra.sweep.subdir``, the ``.hydra/`` files). Jobs whose
`rl.population.population_key` is equal are grouped into populations of at most
``max_population`` members (`group_jobs`); each population trains in one process, through
`rl.population.train_population`, and the populations run side by side: ``n_jobs`` local
processes (``backend: local``), or one submitit job each (``backend: slurm``, or
``submitit_local`` for submitit's LocalExecutor).

Each member stays an ordinary run to the outside: its run directory holds what ``rl-train``
writes for a single run (``.hydra/``, ``config.yaml``, ``train.log``, ``tb/``, checkpoints,
``summary.json``), so rl.analysis, ``rl-eval`` and re-running the sweep work unchanged. A
finished run is skipped before any population is formed; an interrupted one resumes inside
its population (`rl.population.prepare_member`, in the population's process, so a population
requeued after a SLURM timeout resumes from the checkpoints it wrote). A population that fails
(its process raises or dies) gives each of its members a ``failed.json`` as
`rl.sweep.RecordFailures` writes it for a failed job; the other populations go on, and the
sweep ends by listing the failed runs.

The launcher serves ``rl-train`` only: it does not call Hydra's task function (rl.train.task)
but does what that does for one run, for a population (`rl.population.prepare_member`, then
`rl.population.train_population`). Populations form within one batch of the sweeper
(``hydra.sweeper.max_batch_size``; by default the whole sweep is one batch).

Hydra instantiates only launcher classes found in its ``hydra_plugins`` namespace. The class
Hydra sees is `hydra_plugins.entropy_rl_launcher.PopulationLauncher`, a subclass of
`PopulationLauncher` here, shipped by the wheel from ``rl/hydra_plugin/`` (pyproject's
package-dir). In a checkout (or an editable install, whose finder Hydra's scan does not walk)
`register_hydra_plugin`, called by rl.train before Hydra starts, loads that file under its
``hydra_plugins`` name and registers the class with Hydra. Everything a population process
runs lives in this module, importable wherever ``rl`` is, so no process but the sweep's needs
the ``hydra_plugins`` name.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import logging
import os
import pickle
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

__all__ = ["BACKENDS", "PLUGIN_MODULE", "PopulationLauncher", "PopulationTask", "group_jobs",
           "register_hydra_plugin", "run_population"]

log = logging.getLogger(__name__)

PLUGIN_MODULE = "hydra_plugins.entropy_rl_launcher"
BACKENDS = ("local", "slurm", "submitit_local")
# submitit parameters common to every executor; the others are SLURM's (submitit's slurm_ prefix).
_SUBMITIT_COMMON = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes",
                    "name", "stderr_to_stdout"}


# ---------------------------------------------------------------------------------------- grouping
def group_jobs(keys: Sequence[Hashable], max_population: int,
               min_populations: int = 1) -> list[list[int]]:
    """Populations as lists of job indices: jobs with equal ``keys`` together, at most
    ``max_population`` per population, and at least ``min_populations`` populations when there
    are that many jobs.

    Groups come in the order of their first job, jobs in sweep order. A group larger than
    ``max_population`` is cut into ``ceil(n / max_population)`` populations of near-equal size
    (70 jobs at 64 give 35 + 35, not 64 + 6): populations run side by side, and the largest one
    sets the sweep's wall time. With fewer populations than ``min_populations`` (the local
    processes that can run at once: a population trains on one core), the largest population is
    cut in two until there are enough, so no core idles (60 jobs, 2 processes: 30 + 30).
    """
    if isinstance(max_population, bool) or not isinstance(max_population, int) or max_population < 1:
        raise ValueError(f"hydra.launcher.max_population must be an integer >= 1; got {max_population!r}")
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    populations = []
    for jobs in groups.values():
        parts = -(-len(jobs) // max_population)
        size, extra = divmod(len(jobs), parts)
        start = 0
        for p in range(parts):
            end = start + size + (p < extra)
            populations.append(jobs[start:end])
            start = end
    while len(populations) < min_populations and max(map(len, populations), default=0) > 1:
        i = max(range(len(populations)), key=lambda j: len(populations[j]))
        jobs = populations[i]
        populations[i:i + 1] = [jobs[:(len(jobs) + 1) // 2], jobs[(len(jobs) + 1) // 2:]]
    return populations


# ------------------------------------------------------------------------- the population process
@dataclass
class Job:
    """One job of the sweep as a population process gets it: its composed config (with the
    ``hydra`` node, ``hydra.runtime.output_dir`` set), Hydra's job number and its overrides."""

    idx: int
    config: DictConfig
    overrides: list[str]

    @property
    def run_dir(self) -> Path:
        return Path(str(self.config.hydra.runtime.output_dir))


def _task_config(config: DictConfig) -> DictConfig:
    """The config the task sees (Hydra's run_job: the composed config without ``hydra``)."""
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


def _failure(err: BaseException) -> dict[str, Any]:
    return {"status": "failed", "error": f"{type(err).__name__}: {err}",
            "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__))}


class _MemberFilter(logging.Filter):
    """Lets through to one member's log file the records about it and the population's own:
    a record naming another member's run directory (and not this one's) stays out."""

    def __init__(self, run_dir: str, patterns: dict[str, re.Pattern]):
        super().__init__()
        self.run_dir, self.patterns = run_dir, patterns

    def filter(self, record: logging.LogRecord) -> bool:
        named = getattr(record, "_population_dirs", None)
        if named is None:
            message = record.getMessage()
            named = frozenset(d for d, p in self.patterns.items() if p.search(message))
            record._population_dirs = named
        return not named or self.run_dir in named


class _MemberLogs:
    """Each member's log file (Hydra's job log, ``<run dir>/<job name>.log``) for the records of
    one process that serves several runs; the console as the first job's ``hydra.job_logging``
    says. Files are opened once, appended to as Hydra does."""

    def __init__(self, jobs: Sequence[Job]):
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import configure_log

        self.handlers: list[logging.Handler] = []
        if not jobs:
            return
        for job in jobs:
            job.run_dir.mkdir(parents=True, exist_ok=True)
        first = jobs[0]
        HydraConfig.instance().set_config(first.config)
        configure_log(first.config.hydra.job_logging, first.config.hydra.verbose)
        root = logging.getLogger()
        files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
        for h in files:  # replaced below by one handler per member
            root.removeHandler(h)
            h.close()
        first_dir = str(first.run_dir)
        # A run directory followed by the end of a path component: ".../seed=1" must not match
        # ".../seed=10" (override_dirname puts commas inside directory names).
        patterns = {str(j.run_dir): re.compile(re.escape(str(j.run_dir)) + r"(?=$|[\s/'\":;)\]])")
                    for j in jobs}
        for job in jobs:
            for template in files:
                name = template.baseFilename
                if name.startswith(first_dir):
                    name = str(job.run_dir) + name[len(first_dir):]
                elif job is not first:
                    continue  # a log file outside the run directory: one for the process
                handler = logging.FileHandler(name, mode=template.mode, encoding=template.encoding,
                                              delay=True)
                handler.setLevel(template.level)
                handler.setFormatter(template.formatter)
                handler.addFilter(_MemberFilter(str(job.run_dir), patterns))
                root.addHandler(handler)
                self.handlers.append(handler)

    def close(self) -> None:
        root = logging.getLogger()
        for h in self.handlers:
            root.removeHandler(h)
            h.close()


def run_population(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """Trains one population: what a population process runs. One result per job, in order:
    ``{"status": "completed"|"skipped", "value": final mean return or None}`` or
    ``{"status": "failed", "error": ..., "traceback": ...}``.

    Each member is prepared (validated, skipped if finished, auto-resumed) by
    `rl.population.prepare_member` here, at the start of this process, so a requeued population
    resumes where its checkpoints are. An error preparing one member fails that member; an error
    from `rl.population.train_population` fails every member it was training.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import env_override, setup_globals

    from rl.population import prepare_member, train_population

    setup_globals()  # Hydra's resolvers (${hydra:...}, ${now:...}) as in a job process
    logs = _MemberLogs(jobs)
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    members, slots = [], []
    try:
        for i, job in enumerate(jobs):
            HydraConfig.instance().set_config(job.config)
            try:
                task_cfg = _task_config(job.config)
                # Resolved under this job's Hydra config: the population shares one process, and
                # one HydraConfig, while it trains.
                OmegaConf.resolve(task_cfg)
                member = prepare_member(task_cfg, job.run_dir)
            except Exception as err:  # this member only
                log.error("run %s cannot start: %s: %s", job.run_dir, type(err).__name__, err)
                results[i] = _failure(err)
                continue
            if member is None:
                results[i] = {"status": "skipped", "value": None}
            else:
                members.append(member)
                slots.append(i)
        if members:
            import torch

            # Members share `threads` (it is part of population_key).
            torch.set_num_threads(int(members[0].cfg.threads))
            log.info("population of %d run(s), pid %d:\n  %s", len(members), os.getpid(),
                     "\n  ".join(str(m.run_dir) for m in members))
            try:
                with env_override(jobs[slots[0]].config.hydra.job.env_set):
                    summaries = train_population(members)
                if len(summaries) != len(members):
                    raise RuntimeError(f"train_population returned {len(summaries)} summaries for "
                                       f"{len(members)} members")
            except Exception as err:
                log.error("population of %d run(s) failed: %s: %s", len(members), type(err).__name__, err)
                failure = _failure(err)
                for i in slots:
                    results[i] = dict(failure)
            else:
                for i, member, summary in zip(slots, members, summaries, strict=True):
                    # rl.train's line for a single run
                    log.info("%s: %d steps, mean return %.1f, %.1f s (%s)", summary["status"],
                             summary["steps"], summary["final_mean_return"] or float("nan"),
                             summary["wall_time_s"], member.run_dir)
                    results[i] = {"status": "completed", "value": summary["final_mean_return"],
                                  "summary_status": summary["status"]}
    finally:
        logs.close()
    return [r if r is not None else {"status": "failed", "error": "no result"} for r in results]


class PopulationTask:
    """`run_population` as a submitit job: a callable with ``checkpoint``, so that submitit
    requeues it after a SLURM timeout (it then resumes from the members' checkpoints)."""

    def __call__(self, jobs: Sequence[Job]) -> list[dict[str, Any]]:
        return run_population(jobs)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def follow_parent(parent_pid: int, interval_s: float = 1.0) -> threading.Thread:
    """Sends this process one SIGTERM when its parent, the launcher, is gone.

    A population process is the launcher's child. Without this, ``kill <launcher pid>`` leaves
    it training as an orphan, its command line naming no run directory to find it by. SIGTERM is
    what the trainer already treats as "finish this update, write checkpoints, stop", so the
    runs stay resumable. A daemon thread watches the parent pid. Linux's PR_SET_PDEATHSIG would
    be the kernel's way, but it sends the signal once per thread that inherited it (torch's and
    TensorBoard's), and a second SIGTERM is the trainer's "stop now, without checkpoints".
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        log.warning("the launcher (pid %d) is gone: stopping this population", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="follow-launcher", daemon=True)
    thread.start()
    return thread


def _local_entry(jobs: Sequence[Job], result_path: str, parent_pid: int) -> None:
    """A local population process: runs the population, leaves its results in a file."""
    follow_parent(parent_pid)
    results = run_population(jobs)
    tmp = result_path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(results, f)
    os.replace(tmp, result_path)


# ------------------------------------------------------------------------------------ the launcher
class ComposeOnce:
    """The config loader's ``load_sweep_config``, keeping what it composes for the launcher.

    Hydra's sweeper composes every job of a batch to check that it can be composed
    (``Sweeper.validate_batch_is_legal``) and throws the configs away; the launcher then composes
    each job again. Composition is most of a population sweep's start-up (about 0.2 s a job on
    this project's config tree: 60 jobs took 15 s before any population started), so the launcher
    takes the sweeper's config for the same master config and overrides instead of composing it
    a second time. A job the sweeper did not compose (another sweeper) is composed as before.
    """

    def __init__(self, load: Callable[..., DictConfig]):
        self.load = load
        self.kept: dict[tuple[int, tuple[str, ...]], DictConfig] = {}
        self.reused = 0

    def __call__(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        config = self.load(master_config, list(sweep_overrides))
        self.kept[(id(master_config), tuple(sweep_overrides))] = config
        return config

    def take(self, master_config: DictConfig, overrides: Sequence[str]) -> DictConfig:
        """The kept config of this job (then forgotten), or a freshly composed one."""
        config = self.kept.pop((id(master_config), tuple(overrides)), None)
        if config is None:
            return self.load(master_config, list(overrides))
        self.reused += 1
        return config


class PopulationLauncher(Launcher):
    """Hydra launcher: groups a sweep's jobs into populations and runs them (module docstring).

    Parameters (``hydra.launcher.*``, conf/hydra/launcher/population*.yaml)
    ----------
    max_population : most runs trained in one population (one process).
    n_jobs : population processes at once with ``backend: local`` (-1: one per CPU core).
    backend : ``local`` (processes on this machine), ``slurm`` (one submitit SLURM job per
        population) or ``submitit_local`` (submitit's LocalExecutor: the SLURM path without a
        cluster).
    **submitit : the submitit executor's parameters for the submitit backends, named as in
        hydra-submitit-launcher (``submitit_folder``, ``timeout_min``, ``partition``, ...).
    """

    def __init__(self, max_population: int = 64, n_jobs: int = 2, backend: str = "local",
                 **submitit: Any) -> None:
        super().__init__()
        if isinstance(max_population, bool) or not isinstance(max_population, int) or max_population < 1:
            raise ValueError(f"hydra.launcher.max_population must be an integer >= 1; got {max_population!r}")
        if (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or not (n_jobs >= 1 or n_jobs == -1)):
            raise ValueError(f"hydra.launcher.n_jobs must be an integer >= 1, or -1 for one per CPU core; "
                             f"got {n_jobs!r}")
        if backend not in BACKENDS:
            raise ValueError(f"hydra.launcher.backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if backend == "local" and submitit:
            raise ValueError(f"hydra.launcher.{sorted(submitit)[0]} is a submitit parameter; it needs "
                             f"backend slurm or submitit_local (hydra/launcher=population_slurm), not local")
        self.max_population = max_population
        self.n_jobs = n_jobs if n_jobs >= 1 else (os.cpu_count() or 1)
        self.backend = backend
        self.submitit = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                         for k, v in submitit.items()}
        self.config: DictConfig | None = None
        self.hydra_context: Any = None
        self.task_function: Any = None
        self._configs: ComposeOnce | None = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        loader = hydra_context.config_loader
        if not isinstance(loader.load_sweep_config, ComposeOnce):
            loader.load_sweep_config = ComposeOnce(loader.load_sweep_config)
        self._configs = loader.load_sweep_config

    # -- composing the jobs, here in the sweep process
    def _compose(self, overrides: Sequence[str], idx: int) -> DictConfig:
        from hydra.core.hydra_config import HydraConfig

        config = self._configs.take(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = f"{config.hydra.job.name}_{idx}"
            config.hydra.job.num = idx
        HydraConfig.instance().set_config(config)  # ${hydra:...} and the subdir resolve against it
        run_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(run_dir)
        HydraConfig.instance().set_config(config)
        return config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import (
            JobReturn,
            JobRuntime,
            JobStatus,
            _save_config,
            configure_log,
            filter_overrides,
            setup_globals,
        )

        from rl.population import population_key, prepare_member

        assert self.config is not None and self.hydra_context is not None and self._configs is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        callbacks = self.hydra_context.callbacks
        original_hydra_cfg = HydraConfig.instance().cfg

        jobs: list[Job] = []
        returns: list[Any] = []
        results: list[dict[str, Any] | None] = []
        keys: dict[int, str] = {}
        try:
            for offset, overrides in enumerate(job_overrides):
                idx = initial_job_idx + offset
                config = self._compose(overrides, idx)
                job = Job(idx, config, list(overrides))
                task_cfg = _task_config(config)
                ret = JobReturn(overrides=list(OmegaConf.to_container(config.hydra.overrides.task)),
                                cfg=task_cfg, hydra_cfg=copy.deepcopy(HydraConfig.instance().cfg),
                                working_dir=os.getcwd(), task_name=JobRuntime.instance().get("name"))
                job.run_dir.mkdir(parents=True, exist_ok=True)
                if config.hydra.output_subdir is not None:  # what Hydra's run_job saves
                    out = job.run_dir / str(config.hydra.output_subdir)
                    _save_config(task_cfg, "config.yaml", out)
                    _save_config(ret.hydra_cfg, "hydra.yaml", out)
                    _save_config(config.hydra.overrides.task, "overrides.yaml", out)
                callbacks.on_job_start(config=config, task_function=self.task_function)
                # Finished runs are skipped (and bad configs fail) here, before any population is
                # formed: a re-run sweep starts no process for them.
                logs = _MemberLogs([job])
                try:
                    resolved = copy.deepcopy(task_cfg)
                    OmegaConf.resolve(resolved)
                    member = prepare_member(resolved, job.run_dir)
                    result = {"status": "skipped", "value": None} if member is None else None
                    if member is not None:
                        keys[len(jobs)] = population_key(member.cfg)
                except Exception as err:
                    log.error("run %s cannot start: %s: %s", job.run_dir, type(err).__name__, err)
                    result = _failure(err)
                finally:
                    logs.close()
                    configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
                jobs.append(job)
                returns.append(ret)
                results.append(result)

            log.debug("%d of %d job config(s) composed once, by the sweeper's check",
                      self._configs.reused, len(jobs))
            self._configs.kept.clear()
            todo = sorted(keys)
            populations = [[todo[i] for i in p]
                           for p in group_jobs([keys[j] for j in todo], self.max_population,
                                               self.n_jobs if self.backend == "local" else 1)]
            skipped = sum(r is not None and r["status"] == "skipped" for r in results)
            log.info("%d job(s): %d already finished, %d in %d population(s) (max_population %d, backend %s)",
                     len(jobs), skipped, len(todo), len(populations), self.max_population, self.backend)
            for n, population in enumerate(populations):
                log.info("\tpopulation %d/%d: %d run(s): %s", n + 1, len(populations), len(population),
                         " | ".join(f"#{jobs[j].idx} " + " ".join(filter_overrides(jobs[j].overrides))
                                    for j in population))
            if populations:
                run = self._run_local if self.backend == "local" else self._run_submitit
                outcome = run([[jobs[j] for j in p] for p in populations])
                for population, population_results in zip(populations, outcome, strict=True):
                    for j, result in zip(population, population_results, strict=True):
                        results[j] = result

            failed = []
            for job, ret, result in zip(jobs, returns, results, strict=True):
                assert result is not None
                HydraConfig.instance().set_config(job.config)
                if result["status"] == "failed":
                    failed.append(job.run_dir)
                    ret.status = JobStatus.FAILED
                    ret.return_value = PopulationRunFailed(result.get("error", "failed"))
                else:
                    ret.status = JobStatus.COMPLETED
                    ret.return_value = result["value"]
                callbacks.on_job_end(config=job.config, job_return=ret)
                if result["status"] == "failed":
                    # After the callbacks: rl.sweep.RecordFailures, if configured, writes the same
                    # file from the job's return, which holds the error's text but not its traceback.
                    self._record_failure(job, ret, result)
            if failed:
                log.error("%d of %d run(s) failed (failed.json in each); re-run the same command to retry "
                          "them:\n  %s", len(failed), len(jobs), "\n  ".join(map(str, failed)))
            return returns
        finally:
            HydraConfig.instance().cfg = original_hydra_cfg

    @staticmethod
    def _record_failure(job: Job, ret: Any, result: dict[str, Any]) -> None:
        """``failed.json`` in the run directory, the record rl.sweep.RecordFailures writes."""
        from rl.checkpoint import write_json
        from rl.sweep import FAILED_FILE

        record = {"status": "failed", "error": result.get("error", "failed"),
                  "traceback": result.get("traceback", ""), "overrides": list(ret.overrides or [])}
        try:
            write_json(job.run_dir / FAILED_FILE, record)
        except OSError as e:  # recording must never be what sinks the sweep
            log.error("could not write %s: %s", job.run_dir / FAILED_FILE, e)

    # -- running the populations
    def _run_local(self, populations: list[list[Job]]) -> list[list[dict[str, Any]]]:
        """Each population in its own process (spawned: a fresh interpreter, the sweep's sys.path),
        ``n_jobs`` at once. A process that dies fails only its own members."""
        import multiprocessing
        from multiprocessing.connection import wait

        ctx = multiprocessing.get_context("spawn")
        results: list[list[dict[str, Any]] | None] = [None] * len(populations)
        pending = list(range(len(populations)))
        running: dict[int, Any] = {}
        with tempfile.TemporaryDirectory(prefix="population-") as tmp:
            try:
                while pending or running:
                    while pending and len(running) < self.n_jobs:
                        n = pending.pop(0)
                        path = os.path.join(tmp, f"{n}.pkl")
                        proc = ctx.Process(target=_local_entry, args=(populations[n], path, os.getpid()),
                                           name=f"population-{n + 1}")
                        proc.start()
                        running[n] = proc
                        log.info("population %d/%d started (pid %d, %d process(es) running)", n + 1,
                                 len(populations), proc.pid, len(running))
                    wait([p.sentinel for p in running.values()])
                    for n, proc in list(running.items()):
                        if proc.is_alive():
                            continue
                        proc.join()
                        del running[n]
                        results[n] = self._read_result(os.path.join(tmp, f"{n}.pkl"), proc.exitcode,
                                                       len(populations[n]))
                        log.info("population %d/%d finished (exit code %s)", n + 1, len(populations),
                                 proc.exitcode)
            except BaseException as err:
                # Ctrl-C reaches the whole process group: each population's trainer finishes its
                # update, writes a checkpoint and exits; wait for that. Any other error of this
                # process sends them SIGTERM, which the trainers treat the same way. A second
                # Ctrl-C while waiting sends SIGTERM again, which stops them at once.
                try:
                    if not isinstance(err, KeyboardInterrupt):
                        for proc in running.values():
                            proc.terminate()
                    for proc in running.values():
                        proc.join()
                except BaseException:
                    for proc in running.values():
                        proc.terminate()
                raise
        return [r for r in results if r is not None]

    @staticmethod
    def _read_result(path: str, exitcode: int | None, size: int) -> list[dict[str, Any]]:
        try:
            with open(path, "rb") as f:
                results = pickle.load(f)
            if isinstance(results, list) and len(results) == size:
                return results
        except (OSError, pickle.UnpicklingError, EOFError):
            pass
        failure = {"status": "failed", "error": f"the population process exited with code {exitcode} "
                                                f"without a result"}
        return [dict(failure) for _ in range(size)]

    def _run_submitit(self, populations: list[list[Job]]) -> list[list[dict[str, Any]]]:
        """One submitit job per population (a SLURM array job), through submitit's API."""
        try:
            import submitit
        except ImportError as err:
            raise ValueError(f"hydra.launcher.backend={self.backend} needs submitit: "
                             f"pip install 'entropy-rl[sweep]'") from err
        cluster = "slurm" if self.backend == "slurm" else "local"
        params = dict(self.submitit)
        folder = params.pop("submitit_folder",
                            str(Path(str(self.config.hydra.sweep.dir)) / ".submitit" / "%j"))
        init = {}
        if "max_num_timeout" in params:
            init[f"{cluster}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **init)
        executor.update_parameters(**{k if k in _SUBMITIT_COMMON else f"{cluster}_{k}": v
                                      for k, v in params.items()})
        jobs = executor.map_array(PopulationTask(), populations)
        log.info("submitted %d population job(s) (%s): %s", len(jobs), cluster,
                 ", ".join(str(j.job_id) for j in jobs))
        results = []
        for n, (job, population) in enumerate(zip(jobs, populations, strict=True)):
            try:
                result = job.result()
                if not isinstance(result, list) or len(result) != len(population):
                    raise RuntimeError(f"job {job.job_id} returned {result!r}")
            except Exception as err:  # this population only
                log.error("population %d/%d (job %s) failed: %s", n + 1, len(populations), job.job_id, err)
                result = [_failure(err) for _ in population]
            results.append(result)
        return results


class PopulationRunFailed(RuntimeError):
    """A run of a population sweep failed (its ``failed.json`` holds the error and traceback)."""


# --------------------------------------------------------------------- registration with Hydra
def register_hydra_plugin() -> None:
    """Makes ``hydra/launcher=population`` instantiable where Hydra's plugin scan cannot see it.

    An installed wheel ships `PLUGIN_MODULE` in the ``hydra_plugins`` namespace, where Hydra's
    scan finds it: nothing to do. In a checkout (or an editable install) the module is
    ``rl/hydra_plugin/__init__.py``: loaded under its ``hydra_plugins`` name and registered
    with Hydra's plugin registry (`hydra.core.plugins.Plugins.register`).
    """
    scanned = _found_by_hydra_scan()
    if scanned:
        return
    module = sys.modules.get(PLUGIN_MODULE)
    if module is None:
        try:
            module = importlib.import_module(PLUGIN_MODULE)  # an editable install's finder
        except ImportError:
            path = Path(__file__).resolve().parent / "hydra_plugin" / "__init__.py"
            spec = importlib.util.spec_from_file_location(PLUGIN_MODULE, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[PLUGIN_MODULE] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[PLUGIN_MODULE]
                raise
    from hydra.core.plugins import Plugins

    Plugins.instance().register(module.PopulationLauncher)


def _found_by_hydra_scan() -> bool:
    """True when `PLUGIN_MODULE` lies in a folder of the ``hydra_plugins`` namespace, where
    Hydra's scan (pkgutil over ``hydra_plugins.__path__``) imports and registers it."""
    try:
        namespace = importlib.import_module("hydra_plugins")
    except ImportError:
        return False
    name = PLUGIN_MODULE.rsplit(".", 1)[1]
    return any((Path(p) / name / "__init__.py").is_file() for p in list(getattr(namespace, "__path__", [])))
