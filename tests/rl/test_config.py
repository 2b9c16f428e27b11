"""Config composition and validation: the schema (rl/config.py) with the YAML groups in conf/.

Every option of every group composes; command-line style overrides reach the config; unknown
keys and wrong types fail at composition (or in `validate`), bad values in `validate`, before
any env or network is built.
"""

import copy
import dataclasses
import re
import shutil
from itertools import product
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from rl_helpers import compose, registered, tiny

from rl.config import (
    POLICY_ALPHAS,
    EnvSettings,
    NetworkSettings,
    ScheduleSettings,
    base_a2c,
    base_config,
    base_env,
    base_policy,
    base_ppo,
    base_sac,
    validate,
)
from rl.envs import VECTORIZATION_MODES, make_envs
from rl.networks import ACTIVATIONS, ActorCritic
from rl.schedules import KINDS, build_coefficient
from rl.train import CONF_DIR
from rl.trainer import Trainer


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def test_defaults_compose_against_the_schema():
    cfg = compose()
    validate(cfg)
    assert OmegaConf.get_type(cfg) is base_config
    assert OmegaConf.get_type(cfg.env) is base_env
    assert OmegaConf.get_type(cfg.policy) is base_policy
    assert OmegaConf.get_type(cfg.algo) is base_ppo
    assert (cfg.env.id, cfg.policy.name, cfg.algo.name) == ("CartPole-v1", "softmax", "ppo")


def test_every_group_option_composes_and_validates():
    envs, policies, algos = _options("env"), _options("policy"), _options("algo")
    assert {"cartpole", "acrobot"} <= set(envs)
    assert {"softmax", "sparsemax", "entmax15", "entmax"} <= set(policies)
    assert {"ppo", "a2c"} <= set(algos)
    expected_alpha = {"softmax": 1.0, "sparsemax": 2.0, "entmax15": 1.5}
    for env in envs:
        cfg = compose(f"env={env}")
        validate(cfg)
        assert OmegaConf.get_type(cfg.env) is base_env and cfg.env.id
    for policy, algo in product(policies, algos):
        cfg = compose(f"policy={policy}", f"algo={algo}")
        validate(cfg)
        assert cfg.policy.name == policy and cfg.algo.name == algo
        assert OmegaConf.get_type(cfg.algo) is {"ppo": base_ppo, "a2c": base_a2c, "sac": base_sac}[algo]
        if policy in expected_alpha:
            assert cfg.policy.alpha == expected_alpha[policy]
        else:
            assert cfg.policy.alpha > 1.0


def test_issue_example_overrides_reach_the_config():
    cfg = compose("env=acrobot", "policy=sparsemax", "beta=0.03", "seed=2")
    validate(cfg)
    assert cfg.env.id == "Acrobot-v1"
    assert cfg.policy.alpha == 2.0 and cfg.policy.name == "sparsemax"
    assert cfg.beta == pytest.approx(0.03)
    assert cfg.seed == 2
    # dotted overrides of nested fields and list values
    cfg = compose("algo=a2c", "algo.learning_rate=0.002", "policy.hidden_sizes=[8,4]",
                   "policy.temperature=0.5", "beta_schedule.kind=linear", "env.max_episode_steps=50")
    validate(cfg)
    assert cfg.algo.learning_rate == pytest.approx(0.002) and cfg.algo.optimizer == "rmsprop"
    assert list(cfg.policy.hidden_sizes) == [8, 4]
    assert cfg.policy.temperature == 0.5 and cfg.beta_schedule.kind == "linear"
    assert cfg.env.max_episode_steps == 50


@pytest.mark.parametrize("override", ["algo.learning_rte=0.1", "bta=0.1", "env.idd=CartPole-v1",
                                      "policy.alpah=2"])
def test_unknown_key_is_rejected_at_composition(override):
    with pytest.raises(ConfigCompositionException, match="Could not override"):
        compose(override)


@pytest.mark.parametrize("override", ["+algo.learning_rte=0.1", "+bta=0.1", "+env.idd=CartPole-v1",
                                      "+policy.temperature_schedule.kindd=linear"])
def test_appended_unknown_key_is_rejected_by_validate(override):
    """``+key=value`` opens Hydra's struct flag; validate still refuses a key the schema lacks."""
    cfg = compose(override)
    key = override[1:].split("=")[0]
    with pytest.raises(ValueError, match=f"unknown config key '{key}'"):
        validate(cfg)


def test_appended_unknown_key_suggests_the_field():
    with pytest.raises(ValueError, match="did you mean algo.learning_rate"):
        validate(compose("+algo.learning_rte=0.1"))


def test_free_form_env_kwargs_accept_new_keys():
    cfg = compose("+env.kwargs.sutton_barto_reward=true")
    validate(cfg)
    assert cfg.env.kwargs.sutton_barto_reward is True


@pytest.mark.parametrize("override", ["beta=abc", "seed=1.5", "num_envs=many", "policy.hidden_sizes=abc",
                                      "algo.update_epochs=2.5", "progress=maybe", "env.normalize_obs=often"])
def test_wrong_type_is_rejected_at_composition(override):
    with pytest.raises(ConfigCompositionException, match="Error merging override"):
        compose(override)


def test_group_options_are_schema_checked(tmp_path):
    """A YAML option with a typo or a wrong type fails when it is composed."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "env" / "typo.yaml").write_text("defaults:\n  - base_env\n  - _self_\n\nidd: CartPole-v1\n")
    (conf / "algo" / "badtype.yaml").write_text(
        "defaults:\n  - base_ppo\n  - _self_\n\nname: ppo\nbatch_size: lots\n")
    with pytest.raises(ConfigCompositionException, match="idd"):
        compose("env=typo", config_dir=str(conf))
    with pytest.raises(ConfigCompositionException, match="batch_size"):
        compose("algo=badtype", config_dir=str(conf))


def test_unknown_group_option_lists_the_available_ones():
    with pytest.raises(MissingConfigException, match="acrobot"):
        compose("env=acrobat")


def test_an_algo_override_of_the_other_algos_field_is_rejected():
    # update_epochs is a PPO field; A2C's schema has no such key
    with pytest.raises(ConfigCompositionException, match="algo.update_epochs"):
        compose("algo=a2c", "algo.update_epochs=3")


@pytest.fixture(scope="module")
def default_cfg():
    return compose()


@pytest.mark.parametrize(
    "override, field",
    [
        ("policy.alpha=0.5", "policy.alpha"),
        ("policy.alpha=nan", "policy.alpha"),
        ("policy.temperature=0", "policy.temperature"),
        ("policy.temperature=-1.5", "policy.temperature"),
        ("policy.temperature=inf", "policy.temperature"),
        ("beta=-0.01", "beta"),
        ("beta=inf", "beta"),
        ("algo.gamma=1.5", "algo.gamma"),
        ("algo.gae_lambda=-0.1", "algo.gae_lambda"),
        ("algo.learning_rate=0", "algo.learning_rate"),
        ("algo.clip_eps=0", "algo.clip_eps"),
        ("algo.batch_size=0", "algo.batch_size"),
        ("algo.optimizer=sgd", "algo.optimizer"),
        ("algo.target_kl=-1", "algo.target_kl"),
        ("num_envs=0", "num_envs"),
        ("total_steps=0", "total_steps"),
        ("seed=-1", "seed"),
        ("device=tpu", "device"),
        ("policy.activation=sigmoid", "policy.activation"),
        ("policy.network=resnet", "policy.network"),
        ("policy.name=tsallis", "policy.name"),
        ("env.id=''", "env.id"),
        ("env.distractor_actions=-1", "env.distractor_actions"),
        ("env.frame_stack=0", "env.frame_stack"),
        ("env.max_episode_steps=0", "env.max_episode_steps"),
        ("beta_schedule.lr=0", "beta_schedule.lr"),
        ("beta_schedule.horizon=0", "beta_schedule.horizon"),
        ("policy.temperature_schedule.target_entropy=1.5", "policy.temperature_schedule.target_entropy"),
        ("policy.hidden_sizes=[64,0]", r"policy.hidden_sizes\[1\]"),
        ("env.vectorization=threads", "env.vectorization"),
        ("beta_schedule.kind=sawtooth", "beta_schedule.kind"),
    ],
)
def test_validate_names_the_field_and_its_value(default_cfg, override, field):
    key, value = override.split("=", 1)
    cfg = copy.deepcopy(default_cfg)
    OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)  # as a command line would set it
    with pytest.raises(ValueError, match=rf"^{field}=") as info:
        validate(cfg)
    message = str(info.value)
    assert "allowed" in message
    assert value.strip("[]").split(",")[-1] in message  # the offending value is quoted


@pytest.mark.parametrize("overrides, field", [
    (["policy.alpha=0.9"], "policy.alpha"),
    (["beta=-1"], "beta"),
    (["policy.temperature=0"], "policy.temperature"),
    (["+algo.learning_rte=0.1"], "algo.learning_rte"),
    # schedules are checked by the schema too (rl.config.schedule_settings)
    (["policy.temperature_schedule.kind=linear", "policy.temperature_schedule.end=0"],
     "policy.temperature_schedule.end"),
    (["beta_schedule.target_entropy=1.5"], "beta_schedule.target_entropy"),
    (["beta_schedule.kind=piecewise", "beta_schedule.boundaries=[64]", "beta_schedule.values=[0.1]"],
     "beta_schedule.values"),
])
def test_trainer_refuses_bad_values_before_building_anything(tmp_path, overrides, field):
    built = []

    def make_envs(*args, **kwargs):  # must never be reached
        built.append("envs")
        raise AssertionError("envs built before the config was validated")

    cfg = compose(*overrides, "device=cpu", "progress=false")
    with pytest.raises(ValueError, match=re.escape(field)):
        Trainer(cfg, tmp_path / "run", make_envs=make_envs, make_network=lambda *a, **k: None)
    assert built == []
    assert not (tmp_path / "run").exists()


CUSTOM_ID = "entropy-rl-test/ConfigAnyId-v0"


class _TwoStateEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        return obs, float(action == 1), False, self.t >= 7, {}


@pytest.fixture
def custom_id():
    with registered(CUSTOM_ID, _TwoStateEnv) as env_id:
        yield env_id


def test_env_id_may_be_any_registered_gymnasium_id(tmp_path, custom_id):
    cfg = compose(f"env.id={custom_id}", "env.solved_return=null", "total_steps=64", "num_envs=2",
                   "algo.n_steps=16", "algo.batch_size=16", "algo.update_epochs=1", "device=cpu",
                   "progress=false", "policy.hidden_sizes=[8]")
    validate(cfg)
    trainer = Trainer(cfg, tmp_path)
    try:
        assert trainer.n_actions == 3
        summary = trainer.train()
    finally:
        trainer.close()
    assert summary["env"] == custom_id and summary["steps"] == 64 and summary["episodes"] > 0


def test_two_entropy_targets_are_refused():
    cfg = compose("beta=0.01", "beta_schedule.target_entropy=0.5",
                   "policy.temperature_schedule.target_entropy=0.3")
    with pytest.raises(ValueError, match=r"policy\.temperature_schedule\.target_entropy=0\.3"):
        validate(cfg)


def test_dual_bounds_reach_the_schedule():
    cfg = compose("beta=0.01", "beta_schedule.target_entropy=0.5", "beta_schedule.min=0.002")
    coef = build_coefficient(validate(cfg).beta)
    assert coef.state_dict()["schedule"]["beta_schedule.min"] == 0.002
    with pytest.raises(ValueError, match=r"beta_schedule\.min"):
        no_target = compose("beta_schedule.min=0.002").beta_schedule
        build_coefficient(cfg.beta, no_target, cfg.total_steps, "beta")


# ---------------------------------------------------------------- the schema accepts what the code implements


def test_validate_returns_the_checked_values():
    cfg = compose("env.max_episode_steps=50", "policy.hidden_sizes=[8,4]", "policy.activation=relu",
                  "beta=0.02", "beta_schedule.kind=linear", "total_steps=1000")
    checked = validate(cfg)
    assert checked.env == EnvSettings(id="CartPole-v1", max_episode_steps=50)
    assert checked.network == NetworkSettings(hidden_sizes=(8, 4), activation="relu", shared=False)
    assert checked.beta == ScheduleSettings(name="beta", start=0.02, kind="linear", end=0.0, horizon=1000)
    assert checked.temperature == ScheduleSettings(name="temperature", start=1.0, horizon=1000)


def test_trainer_builds_its_parts_from_the_checked_settings(tmp_path):
    from rl.envs import make_envs as real_make_envs

    seen = {}

    def make_envs(env, num_envs, seed, gamma):
        seen["env"] = env
        return real_make_envs(env, num_envs, seed, gamma=gamma)

    def make_network(space, n_actions, **kwargs):
        seen["network"] = kwargs
        return ActorCritic(space, n_actions, **kwargs)

    cfg = tiny("env.max_episode_steps=20", "policy.activation=elu")
    Trainer(cfg, tmp_path, make_envs=make_envs, make_network=make_network).close()
    checked = validate(cfg)
    assert isinstance(seen["env"], EnvSettings) and seen["env"] == checked.env
    assert seen["network"] == dataclasses.asdict(checked.network)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_the_network_implements_is_accepted(activation):
    network = validate(compose(f"policy.activation={activation}", "policy.hidden_sizes=[8]")).network
    net = ActorCritic(gym.spaces.Box(-1.0, 1.0, (3,), np.float32), 2, **dataclasses.asdict(network))
    assert isinstance(net.actor[1], ACTIVATIONS[activation])
    logits, values = net(torch.randn(4, 3))
    assert torch.isfinite(logits).all() and torch.isfinite(values).all()


@pytest.mark.parametrize("mode", VECTORIZATION_MODES)
def test_every_vectorization_mode_make_envs_implements_is_accepted(mode):
    # EnvPool vectorizes Atari only (CartPole refuses it: tests/rl/test_atari_backends.py)
    env, shape = ("env=atari", (2, 4, 84, 84)) if mode == "envpool" else ("env=cartpole", (2, 4))
    vec = make_envs(validate(compose(env, f"env.vectorization={mode}")).env, 2, seed=0)
    try:
        obs, _ = vec.reset(seed=0)
        assert obs.shape == shape
    finally:
        vec.close()


@pytest.mark.parametrize("kind, at_horizon", [
    ("constant", 0.05), ("linear", 0.01), ("cosine", 0.01), ("exponential", 0.01), ("piecewise", 0.02)])
def test_every_schedule_kind_the_coefficient_implements_is_accepted(kind, at_horizon):
    assert kind in KINDS and len(KINDS) == 5
    cfg = compose("beta=0.05", f"beta_schedule.kind={kind}", "beta_schedule.end=0.01",
                  "beta_schedule.boundaries=[10]", "beta_schedule.values=[0.05,0.02]", "total_steps=100")
    coef = build_coefficient(validate(cfg).beta)
    assert coef.kind == kind and coef.value == pytest.approx(0.05)
    assert coef.step(100) == pytest.approx(at_horizon, rel=1e-12)


def test_policy_names_are_the_group_options_with_their_alphas():
    assert set(POLICY_ALPHAS) == set(_options("policy"))
    for name, alpha in POLICY_ALPHAS.items():
        cfg = compose(f"policy={name}")
        assert cfg.policy.name == name
        assert cfg.policy.alpha == alpha if alpha is not None else cfg.policy.alpha > 1.0


@pytest.mark.parametrize("overrides, needle", [
    (["policy=entmax", "policy.alpha=1.75"], None),
    (["policy=entmax", "policy.alpha=2.0"], None),
    (["policy=softmax", "policy.alpha=2.0"],
     "policy.alpha=2.0 is not allowed; allowed: 1.0 with policy.name='softmax'"),
    (["policy=sparsemax", "policy.alpha=1.5"], "policy.alpha=1.5 is not allowed; allowed: 2.0 with"),
    (["policy=entmax", "policy.alpha=1.0"], "policy.alpha=1.0 is not allowed; allowed: a float > 1"),
])
def test_the_policy_name_labels_the_alpha_that_runs(overrides, needle):
    cfg = compose(*overrides)
    if needle is None:
        validate(cfg)
    else:
        with pytest.raises(ValueError) as err:
            validate(cfg)
        assert needle in str(err.value)
