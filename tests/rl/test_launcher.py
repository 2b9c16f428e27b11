"""The population launcher (rl/launcher.py): grouping, the population process, and tiny sweeps
through ``hydra/launcher=population`` (local processes) and ``population_slurm_local``
(submitit's LocalExecutor), read back by rl.analysis."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import rl.population
from rl.analysis.aggregate import aggregate
from rl.analysis.runs import find_runs, read_config
from rl.launcher import Job, PopulationLauncher, group_jobs, run_population
from rl.population import population_key
from rl.train import CONF_DIR

REPO = Path(__file__).resolve().parents[2]
TINY = ("total_steps=64", "num_envs=2", "algo.n_steps=16", "algo.batch_size=16", "algo.update_epochs=1",
        "progress=false")


# ------------------------------------------------------------------------------------- grouping
def test_group_jobs_keeps_equal_keys_together_in_sweep_order():
    assert group_jobs(["a", "b", "a", "c", "b"], 64) == [[0, 2], [1, 4], [3]]
    assert group_jobs([], 4) == []


def test_group_jobs_splits_a_group_larger_than_max_population_evenly():
    assert group_jobs(["a"] * 5, 2) == [[0, 1], [2, 3], [4]]
    assert [len(p) for p in group_jobs(["a"] * 70, 64)] == [35, 35]
    assert group_jobs(["a", "b"] * 3, 2) == [[0, 2], [4], [1, 3], [5]]
    assert group_jobs(["a"] * 4, 1) == [[0], [1], [2], [3]]


def test_group_jobs_fills_every_local_process():
    """Fewer populations than processes: the largest is cut in two until each process has one."""
    assert [len(p) for p in group_jobs(["a"] * 60, 64, min_populations=2)] == [30, 30]
    assert group_jobs(["a"] * 3 + ["b"], 64, min_populations=3) == [[0, 1], [2], [3]]
    assert group_jobs(["a"], 64, min_populations=4) == [[0]]  # one job cannot be cut
    assert [len(p) for p in group_jobs(["a"] * 70, 64, min_populations=2)] == [35, 35]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8"])
def test_group_jobs_rejects_a_bad_max_population(bad):
    with pytest.raises(ValueError, match=r"hydra.launcher.max_population must be an integer >= 1; got"):
        group_jobs(["a"], bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_population": 0}, "hydra.launcher.max_population must be an integer >= 1; got 0"),
    ({"n_jobs": 0}, "hydra.launcher.n_jobs must be an integer >= 1, or -1"),
    ({"backend": "ray"}, "hydra.launcher.backend must be one of local, slurm, submitit_local; got 'ray'"),
    ({"partition": "cpu"}, "hydra.launcher.partition is a submitit parameter; it needs backend slurm"),
])
def test_launcher_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        PopulationLauncher(**kwargs)


def _compose(*overrides, hydra=False):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def test_configs_group_by_population_key():
    """Seed, beta and the mapping may differ inside a population; the env may not."""
    sweep = [(env, policy, seed) for env in ("cartpole", "acrobot") for policy in ("softmax", "sparsemax")
             for seed in (0, 1)]
    keys = [population_key(_compose(*TINY, "device=cpu", f"env={e}", f"policy={p}", f"seed={s}", "beta=0.01"))
            for e, p, s in sweep]
    assert group_jobs(keys, 64) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert group_jobs(keys, 3) == [[0, 1], [2, 3], [4, 5], [6, 7]]


# -------------------------------------------------------------------------- the population process
@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


def _job(tmp_path, idx, *overrides):
    config = _compose(*TINY, "device=cpu", *overrides, hydra=True)
    with open_dict(config):
        config.hydra.runtime.output_dir = str(tmp_path / str(idx))
        config.hydra.job.name = "train"
    return Job(idx, config, list(overrides))


def test_run_population_fails_the_members_of_a_failing_population_only(tmp_path, monkeypatch,
                                                                       restore_logging):
    """A config error fails its member alone; an error of train_population fails every member it
    trains; each member's log gets the records about it and the population's, not its peers'."""
    jobs = [_job(tmp_path, 0, "seed=0"), _job(tmp_path, 1, "seed=1", "algo.learning_rate=-1"),
            _job(tmp_path, 10, "seed=10")]
    trained = []

    def broken(members):
        trained.extend(m.run_dir for m in members)
        logging.getLogger("rl.trainer").info("starting %s", members[1].run_dir / "tb")
        raise RuntimeError("the batched update blew up")

    monkeypatch.setattr(rl.population, "train_population", broken)
    results = run_population(jobs)
    assert trained == [tmp_path / "0", tmp_path / "10"]
    assert results[1]["status"] == "failed" and "learning_rate" in results[1]["error"]
    for r in (results[0], results[2]):
        assert r["status"] == "failed" and r["error"] == "RuntimeError: the batched update blew up"
        assert "the batched update blew up" in r["traceback"]
    log0, log10 = ((tmp_path / d / "train.log").read_text() for d in ("0", "10"))
    assert "population of 2 run(s)" in log0 and "population of 2 run(s)" in log10
    # "/0" must not claim "/10"'s record (run directories that are prefixes of one another)
    assert f"starting {tmp_path / '10' / 'tb'}" in log10 and "starting" not in log0
    assert "cannot start" in (tmp_path / "1" / "train.log").read_text()


def test_a_dead_population_process_fails_its_members(tmp_path):
    results = PopulationLauncher._read_result(str(tmp_path / "missing.pkl"), -9, 3)
    assert [r["status"] for r in results] == ["failed"] * 3
    assert "exited with code -9 without a result" in results[0]["error"]


# ----------------------------------------------------------------------------------- tiny sweeps
def _sweep(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "rl.train", "-m", *TINY, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def _pid(run_dir: Path) -> int:
    """The population process that trained the run (its log's last "population of" line)."""
    return int(re.findall(r"population of \d+ run\(s\), pid (\d+)", (run_dir / "train.log").read_text())[-1])


def test_population_sweep_local(tmp_path):
    """env=cartpole,acrobot x seed=0,1,2 at max_population=2: 4 populations, 2 processes at a
    time; every run a complete run directory that rl.analysis reads; a re-run skips finished runs
    and resumes an interrupted one."""
    sweep_dir = tmp_path / "sweep"
    args = ("device=cpu", "env=cartpole,acrobot", "seed=0,1,2", "hydra/launcher=population",
            "hydra.launcher.max_population=2", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}")
    out = _sweep(*args)
    assert "6 job(s): 0 already finished, 6 in 4 population(s)" in out
    assert "population 2/4 started" in out and "2 process(es) running" in out

    runs = find_runs(sweep_dir)
    assert [r.name for r in runs] == [str(i) for i in range(6)]
    by_pid: dict[int, list[tuple[str, int]]] = {}
    for run in runs:
        for name in (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "config.yaml",
                     "summary.json", "checkpoints/last.pt", "train.log"):
            assert (run / name).is_file(), run / name
        assert list((run / "tb").glob("events.out.tfevents.*"))
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 64
        cfg = read_config(run)
        by_pid.setdefault(_pid(run), []).append((cfg["env"]["id"], cfg["seed"]))
    # grouped by env, cut at 2: {seed 0, 1} and {seed 2} per env, each population its own process
    assert sorted(by_pid.values()) == [[("Acrobot-v1", 0), ("Acrobot-v1", 1)], [("Acrobot-v1", 2)],
                                       [("CartPole-v1", 0), ("CartPole-v1", 1)], [("CartPole-v1", 2)]]
    table = aggregate(sweep_dir)
    assert table.run.nunique() == 6 and set(table.status) == {"completed"}
    assert set(table.env) == {"CartPole-v1", "Acrobot-v1"}

    # re-run: run 4 (acrobot, seed 1) interrupted (no summary, a checkpoint): only it trains
    victim = sweep_dir / "4"
    (victim / "summary.json").unlink()
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("summary.json")}
    out = _sweep(*args)
    assert "6 job(s): 5 already finished, 1 in 1 population(s)" in out
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert "resumed from" in (victim / "train.log").read_text()
    assert json.loads((victim / "summary.json").read_text())["status"] == "completed"
    assert "already holds a finished run" in (sweep_dir / "0" / "train.log").read_text()


def test_population_sweep_submitit_local_with_a_failing_population(tmp_path):
    """Through submitit's LocalExecutor, one job per population; the population that fails
    (device cuda:99 is not there) gets failed.json in each run, the other completes."""
    sweep_dir = tmp_path / "sweep"
    out = _sweep("device=cpu,cuda:99", "seed=0,1", "hydra/launcher=population_slurm_local",
                 "+hydra.callbacks.record_failures._target_=rl.sweep.RecordFailures",
                 f"hydra.sweep.dir={sweep_dir}")
    assert "4 job(s): 0 already finished, 4 in 2 population(s)" in out
    assert "2 of 4 run(s) failed" in out
    assert any((sweep_dir / ".submitit").iterdir())
    for n, cfg in ((n, read_config(sweep_dir / str(n))) for n in range(4)):
        run = sweep_dir / str(n)
        if cfg["device"] == "cpu":
            assert json.loads((run / "summary.json").read_text())["status"] == "completed"
            assert not (run / "failed.json").exists()
        else:
            failed = json.loads((run / "failed.json").read_text())
            assert failed["status"] == "failed" and "cuda:99" in failed["error"]
            assert "Traceback" in failed["traceback"]
            assert f"seed={cfg['seed']}" in failed["overrides"]  # as RecordFailures writes them
            assert not (run / "summary.json").exists()
    assert len({_pid(sweep_dir / str(n)) for n in range(4)}) == 2


def test_reproductions_can_run_their_sweeps_as_populations():
    from rl.analysis.reproduce import LAUNCHERS, launcher_overrides

    assert {"population", "population_slurm"} <= set(LAUNCHERS)
    assert launcher_overrides("population", 3) == ["hydra/launcher=population", "hydra.launcher.n_jobs=3"]
    assert launcher_overrides("population_slurm", 3) == ["hydra/launcher=population_slurm"]


def test_compose_once_hands_the_sweepers_config_to_the_launcher():
    """The sweeper's validation composes each job; the launcher takes that config instead of
    composing again, and composes what the sweeper did not."""
    from rl.launcher import ComposeOnce

    calls = []

    def load(master_config, sweep_overrides):
        calls.append(list(sweep_overrides))
        return {"overrides": list(sweep_overrides), "n": len(calls)}

    master = object()
    once = ComposeOnce(load)
    validated = [once(master_config=master, sweep_overrides=["seed=0"]), once(master, ["seed=1"])]
    assert once.take(master, ("seed=0",)) is validated[0]
    assert once.take(master, ["seed=1"]) is validated[1]
    assert len(calls) == 2
    fresh = once.take(master, ["seed=2"])  # never validated
    assert fresh["overrides"] == ["seed=2"] and len(calls) == 3
    again = once.take(master, ["seed=0"])  # taken once: the next take composes
    assert again is not validated[0] and len(calls) == 4
    assert once.take(object(), ["seed=1"]) is not validated[1]  # another master config
    assert once.kept == {} and once.reused == 2


def test_population_sweep_composes_each_job_once(tmp_path):
    """A population sweep's jobs are composed once each (by the sweeper's check), and every run
    directory gets its own job's config."""
    sweep_dir = tmp_path / "sweep"
    out = _sweep("device=cpu", "seed=0,1", "beta=0,0.1", "hydra/launcher=population",
                 "hydra.launcher.n_jobs=1", f"hydra.sweep.dir={sweep_dir}", "hydra.verbose=rl.launcher")
    assert "4 of 4 job config(s) composed once, by the sweeper's check" in out
    seen = sorted((read_config(r)["seed"], read_config(r)["beta"]) for r in find_runs(sweep_dir))
    assert seen == [(0, 0.0), (0, 0.1), (1, 0.0), (1, 0.1)]


# ------------------------------------------------------------- a population dies with its launcher
_CHILD = '''
import os, signal, threading, time

def sleeper(ready, parent_pid, follow):
    if follow:
        from rl.launcher import follow_parent
        follow_parent(parent_pid, interval_s=0.1)
    for _ in range(3):  # as torch's and TensorBoard's threads in a trainer
        threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
    got = []
    signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    with open(ready, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # a second signal, if one came, would land here
    with open(ready + ".signals", "w") as f:
        f.write(str(len(got)))
'''

_PARENT = '''
import multiprocessing, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import child

if __name__ == "__main__":
    ready, follow = sys.argv[2], sys.argv[3] == "1"
    proc = multiprocessing.get_context("spawn").Process(target=child.sleeper,
                                                        args=(ready, os.getpid(), follow))
    proc.start()
    while not os.path.exists(ready):
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9 <launcher pid>`: no clean-up of its own
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc")
@pytest.mark.parametrize("follow", [True, False])
def test_a_population_process_is_stopped_when_its_launcher_is_killed(tmp_path, follow):
    """The launcher spawns each population; killed, it must not leave one training unseen, and
    the population gets one SIGTERM (the trainer's "checkpoint and stop"). The control
    (follow=False) shows the orphan this prevents."""
    (tmp_path / "child.py").write_text(_CHILD)
    (tmp_path / "parent.py").write_text(_PARENT)
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(tmp_path / "parent.py"), str(tmp_path), str(ready),
                           "1" if follow else "0"], env=env, timeout=120)
    assert done.returncode == -signal.SIGKILL
    pid = int(ready.read_text())
    try:
        deadline = time.monotonic() + (60 if follow else 2)  # the control: still there 2 s on
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(pid) is not follow
        if follow:  # one SIGTERM: a second is the trainer's "stop now, without checkpoints"
            assert (tmp_path / "ready.signals").read_text() == "1"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
