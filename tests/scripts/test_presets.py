"""conf/experiment and conf/hydra/launcher presets compose with the trainer's config, and
scripts/reproduce.py (rl.analysis.reproduce) builds the sweeps the pages describe."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from rl.analysis import reproduce
from rl.config import register_configs, validate

REPO = Path(__file__).resolve().parents[2]


def _compose(overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(
    "experiment, grid",
    [("entropy_ablation", {"beta": "0,0.001,0.01,0.1"}),
     ("distractors", {"env.distractor_actions": "0,10,100,1000"})],
)
@pytest.mark.parametrize(
    "launcher, target",
    [("local", "JoblibLauncher"), ("slurm", "SlurmLauncher"), ("slurm_local", "LocalLauncher")],
)
def test_experiment_and_launcher_presets_compose(experiment, grid, launcher, target):
    cfg = _compose([f"+experiment={experiment}", f"hydra/launcher={launcher}"])
    task = cfg.copy()
    with open_dict(task):
        del task["hydra"]  # the trainer sees the task config only
    validate(task)  # the preset's own keys pass the trainer's schema checks
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert list(params)[0] == "seed"  # seed-major job order
    assert params["seed"] == "0,1,2,3,4" and params["policy"] == "softmax,entmax15,sparsemax"
    assert {k: params[k] for k in grid} == grid
    assert cfg.hydra.callbacks.record_failures._target_ == "rl.sweep.RecordFailures"
    assert cfg.hydra.sweep.dir == f"multirun/{experiment}"
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.override_dirname}"
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.progress is False and cfg.auto_resume is True
    if experiment == "distractors":
        assert cfg.env.id == "CartPole-v1" and cfg.beta == 0.01


def test_slurm_preset_requeues_and_leaves_the_partition_to_the_user():
    launcher = _compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]).hydra.launcher
    assert launcher.partition == "gpu"
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0
    assert launcher.array_parallelism > 0 and launcher.timeout_min > 0


def test_reproduce_builds_one_sweep_per_env_with_scaled_steps_and_seeds(tmp_path):
    args = reproduce.parse_args(["ablation", "--scale", "0.4", "--envs", "cartpole",
                                 "lunarlander", "--out", str(tmp_path), "algo.gamma=0.99"])
    cmds = dict(reproduce.sweep_commands(args))
    assert set(cmds) == {"cartpole", "lunarlander"}
    lunar = cmds["lunarlander"]
    assert "+experiment=entropy_ablation" in lunar and "env=lunarlander" in lunar
    assert f"total_steps={round(100_000 * 0.4 / 256) * 256}" in lunar
    assert "seed=0,1" in lunar  # round(5 x 0.4) seeds
    assert "algo.gamma=0.99" in lunar and f"hydra.sweep.dir={tmp_path / 'runs'}" in lunar
    assert "hydra/launcher=local" in lunar and "hydra.launcher.n_jobs=2" in lunar

    args = reproduce.parse_args(["distractors", "--seeds", "3", "--ks", "0", "7",
                                 "--launcher", "slurm", "--out", str(tmp_path)])
    (label, argv), = reproduce.sweep_commands(args)
    assert "env.distractor_actions=0,7" in argv and "seed=0,1,2" in argv
    assert "hydra/launcher=slurm" in argv and "beta=0.01" in argv


@pytest.mark.parametrize(
    "argv, match",
    [(["ablation", "--scale", "0"], "--scale"),
     (["ablation", "--seeds", "0"], "--seeds"),
     (["distractors", "--ks", "-1"], "--ks"),
     (["ablation", "--betas", "-0.1"], "--betas"),
     (["ablation", "notanoverride"], "key=value")],
)
def test_reproduce_refuses_bad_arguments(argv, match):
    with pytest.raises(ValueError, match=match):
        reproduce.parse_args(argv)


@pytest.mark.parametrize("name", ["beta_target", "distractor_support"])
def test_reproductions_with_their_own_options_must_come_first(name):
    with pytest.raises(ValueError, match=f"{name} --help"):
        reproduce.parse_args(["--scale", "0.5", name])


def test_script_reproductions_scale_their_own_options(tmp_path):
    args = reproduce.parse_args(["confidence_penalty", "--scale", "0.2", "--out", str(tmp_path)])
    cmd = reproduce.script_command(args)
    assert cmd[1].endswith("scripts/confidence_penalty.py") and Path(cmd[1]).is_file()
    assert cmd[cmd.index("--seeds") + 1] == "1" and cmd[cmd.index("--epochs") + 1] == "20"
    args = reproduce.parse_args(["bandit", "--scale", "0.2", "--out", str(tmp_path)])
    cmd = reproduce.script_command(args)
    assert cmd[cmd.index("--draws") + 1] == "10" and cmd[cmd.index("--learn-steps") + 1] == "200"
    with pytest.raises(ValueError, match="no Hydra overrides"):
        reproduce.parse_args(["bandit", "algo.gamma=0.9"])
