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
    assert "~preset" in lunar  # the page's runs: the group defaults, not LunarLander's preset
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


# ----------------------------------------------------------------- per-env presets (conf/preset)


def _task(overrides):
    cfg = _compose(overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    validate(cfg)
    return cfg


def test_lunarlander_gets_the_zoo_ppo_settings_with_its_own_minibatch_and_learning_rate():
    cfg = _task(["env=lunarlander"])
    assert (cfg.num_envs, cfg.total_steps, cfg.beta) == (16, 1_000_000, 0.01)
    a = cfg.algo
    # the zoo's minibatch 64 and lr 3e-4, changed (tuned) as the preset's comment says
    assert (a.name, a.n_steps, a.batch_size, a.update_epochs) == ("ppo", 1024, 256, 4)
    assert (a.learning_rate, a.anneal_lr, a.clip_eps, a.anneal_clip) == (2e-3, False, 0.2, False)
    assert (a.gamma, a.gae_lambda) == (0.999, 0.98)
    assert list(cfg.policy.hidden_sizes) == [64, 64] and cfg.policy.activation == "tanh"


def test_acrobot_a2c_gets_the_zoo_a2c_settings():
    cfg = _task(["algo=a2c", "env=acrobot"])
    assert (cfg.algo.name, cfg.num_envs, cfg.total_steps, cfg.beta) == ("a2c", 16, 500_000, 0.0)
    assert cfg.env.normalize_obs and cfg.env.normalize_reward  # the zoo's normalize: true
    assert (cfg.algo.n_steps, cfg.algo.learning_rate, cfg.algo.optimizer) == (5, 7e-4, "rmsprop")


def test_command_line_overrides_win_over_the_preset():
    cfg = _task(["env=lunarlander", "algo.learning_rate=1e-3", "num_envs=4", "beta=0",
                 "total_steps=5000", "policy=sparsemax"])
    assert (cfg.algo.learning_rate, cfg.num_envs, cfg.beta, cfg.total_steps) == (1e-3, 4, 0.0, 5000)
    assert cfg.algo.batch_size == 256  # the preset's, not the group default
    assert cfg.algo.n_steps == 1024 and cfg.policy.name == "sparsemax"  # the rest stays the preset's
    plain = _task(["env=lunarlander", "~preset"])  # no preset: the group defaults
    assert (plain.num_envs, plain.algo.n_steps) == (8, 32)


def test_cartpole_ppo_keeps_its_own_tuning():
    cfg = _task([])
    assert (cfg.num_envs, cfg.total_steps, cfg.beta) == (8, 100_000, 0.0)
    a = cfg.algo
    assert (a.n_steps, a.batch_size, a.update_epochs, a.learning_rate) == (32, 256, 8, 5e-3)
    assert (a.gamma, a.gae_lambda, a.anneal_lr, a.anneal_clip) == (0.98, 0.8, True, True)


def test_every_env_and_algo_composes_and_names_its_source():
    envs = sorted(p.stem for p in (REPO / "conf" / "env").glob("*.yaml"))
    presets = {p.stem: p.read_text() for p in (REPO / "conf" / "preset").glob("*.yaml")}
    for env in envs:
        for algo in ("ppo", "a2c"):
            cfg = _task([f"env={env}", f"algo={algo}"])
            assert cfg.algo.name == algo
            if f"{env}_{algo}" in presets:
                text = presets[f"{env}_{algo}"]
                assert text.startswith("# @package _global_")
                assert any(src in text for src in ("rl-baselines3-zoo", "gymnax-blines"))
    assert {f"{e}_ppo" for e in envs} <= set(presets)  # every env has a PPO preset
    for game in ("asterix", "breakout", "freeway", "seaquest", "spaceinvaders"):
        cfg = _task([f"env=minatar_{game}"])
        assert cfg.env.id.startswith("MinAtar/") and (cfg.num_envs, cfg.algo.batch_size) == (64, 1024)
        assert (cfg.total_steps, cfg.algo.gamma, cfg.beta) == (10_000_000, 0.999, 0.01)


@pytest.mark.parametrize("game, network", [("asterix", "minatar_cnn"), ("breakout", "mlp")])
def test_a_minatar_preset_trains_with_its_network(tmp_path, game, network):
    # Breakout's preset takes gymnax-blines' 256-256 ReLU MLPs; the others the MinAtar CNN.
    pytest.importorskip("minatar", reason="minatar (extra minatar) provides the MinAtar ids")
    from rl.trainer import Trainer

    cfg = _task([f"env=minatar_{game}", "num_envs=2", "algo.n_steps=16", "algo.batch_size=16",
                 "total_steps=64", "device=cpu", "progress=false", "checkpoint_interval=0",
                 "histogram_interval=0"])
    trainer = Trainer(cfg, tmp_path)
    try:
        assert trainer.member_network(0).network == network
        assert trainer.train()["steps"] == 64
    finally:
        trainer.close()


def test_the_breakout_preset_is_gymnax_blines_network_and_value_loss():
    cfg = _task(["env=minatar_breakout"])
    net = (cfg.policy.network, list(cfg.policy.hidden_sizes), cfg.policy.activation)
    assert net == ("mlp", [256, 256], "relu")
    assert (cfg.algo.clip_value, cfg.algo.vf_coef) == (0.2, 0.25)
    for game in ("asterix", "freeway", "seaquest", "spaceinvaders"):
        other = _task([f"env=minatar_{game}"])
        assert (list(other.policy.hidden_sizes), other.algo.clip_value, other.algo.vf_coef) == ([], None, 0.5)


# ------------------------------------------------------------- SAC presets and sac_distractors


@pytest.mark.parametrize(
    "env, expect",
    [("cartpole", dict(num_envs=4, total_steps=100_000, batch_size=128, gradient_steps=2, tau=0.01,
                       learning_starts=2_000, target=0.1, hidden=[64, 64], td_steps=5, gamma=0.99)),
     ("lunarlander", dict(num_envs=4, total_steps=500_000, batch_size=128, gradient_steps=2, tau=0.01,
                          learning_starts=10_000, target=0.1, hidden=[64, 64], td_steps=3,
                          gamma=0.999)),
     ("minatar_breakout", dict(num_envs=4, total_steps=2_000_000, batch_size=64, gradient_steps=1,
                               tau=1.0, learning_starts=20_000, target=0.3, hidden=[], td_steps=1,
                               gamma=0.99))],
)
def test_sac_presets_compose_and_name_their_source(env, expect):
    cfg = _task([f"env={env}", "algo=sac"])
    text = (REPO / "conf" / "preset" / f"{env}_sac.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert "rl-baselines3-zoo" in text or "CleanRL" in text
    got = dict(num_envs=cfg.num_envs, total_steps=cfg.total_steps, batch_size=cfg.algo.batch_size,
               gradient_steps=cfg.algo.gradient_steps, tau=cfg.algo.tau,
               learning_starts=cfg.algo.learning_starts, target=cfg.beta_schedule.target_entropy,
               hidden=list(cfg.policy.hidden_sizes), td_steps=cfg.algo.td_steps, gamma=cfg.algo.gamma)
    assert got == expect


@pytest.mark.parametrize("regime, target", [("fixed", None), ("target", 0.3)])
def test_sac_distractors_experiment_takes_the_cartpole_sac_preset(regime, target):
    overrides = reproduce.regime_overrides(regime, 0.1, 0.3)
    cfg = _compose(["+experiment=sac_distractors", "env.distractor_actions=10", *overrides])
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert list(params)[0] == "seed" and params["seed"] == "0,1,2"
    assert params["env.distractor_actions"] == "0,10,100,1000"
    task = cfg.copy()
    with open_dict(task):
        del task["hydra"]
    validate(task)
    assert task.algo.name == "sac" and task.env.id == "CartPole-v1" and task.env.distractor_actions == 10
    # the preset's, then the experiment's budget
    assert (task.num_envs, task.algo.gradient_steps, task.total_steps) == (4, 2, 50_000)
    assert task.algo.td_steps == 1  # the page's runs, not the preset's 3-step targets
    assert task.beta == 0.1 and task.beta_schedule.target_entropy == target


def test_reproduce_sac_distractors_runs_one_sweep_per_regime(tmp_path):
    args = reproduce.parse_args(["sac_distractors", "--scale", "0.1", "--ks", "0", "100",
                                 "--launcher", "population", "--out", str(tmp_path)])
    cmds = dict(reproduce.sweep_commands(args))
    assert set(cmds) == {"fixed", "target"}
    fixed, target = cmds["fixed"], cmds["target"]
    assert "+experiment=sac_distractors" in fixed and "seed=0" in fixed  # round(3 x 0.1) -> 1 seed
    assert "beta=0.1" in fixed and "beta_schedule.target_entropy=null" in fixed
    assert "beta_schedule.target_entropy=0.1" in target  # the preset's
    assert "env.distractor_actions=0,100" in target and "hydra/launcher=population" in target
    assert f"hydra.sweep.dir={tmp_path / 'fixed' / 'runs'}" in fixed
    assert f"hydra.sweep.dir={tmp_path / 'target' / 'runs'}" in target
    assert f"total_steps={round(50_000 * 0.1 / 256) * 256}" in fixed
    args = reproduce.parse_args(["distractors", "--out", str(tmp_path)])
    assert args.beta == 0.01  # the PPO reproduction keeps its own default
    with pytest.raises(ValueError, match="--target-entropy"):
        reproduce.parse_args(["sac_distractors", "--target-entropy", "1.5"])
