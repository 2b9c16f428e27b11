"""Evaluation during training (rl/evaluation.py): separate envs, greedy and sampled returns,
logged at the interval and written to the summary, for every member of a population."""

import json

import pytest
import torch
from rl_helpers import MaskedEnv, registered, scalars, tiny

from rl.population import Member, train_population
from rl.trainer import SUMMARY_NAME, Trainer


def _train(cfg, run_dir):
    trainer = Trainer(cfg, run_dir)
    try:
        summary = trainer.train()
        return summary, trainer.net.member_state_dict(0), trainer.state_dict()
    finally:
        trainer.close()


def test_evaluation_runs_at_the_interval_and_at_the_end_without_touching_training(tmp_path):
    common = ("total_steps=192", "env.normalize_obs=true", "beta=0.01")
    on, params_on, state_on = _train(tiny(*common, "eval.interval=64", "eval.episodes=3"), tmp_path / "on")
    off, params_off, state_off = _train(tiny(*common, "eval.episodes=0"), tmp_path / "off")
    # separate envs and generators: the training run is the same with and without evaluation
    for name in params_on:
        assert torch.equal(params_on[name], params_off[name]), name
    for key in ("mean", "var", "count"):  # the observation statistics were frozen in evaluation
        rms_on, rms_off = state_on["obs_normalization"]["obs_rms"], state_off["obs_normalization"]["obs_rms"]
        assert torch.equal(rms_on[key], rms_off[key]), key
    assert on["final_mean_return"] == off["final_mean_return"]
    steps, greedy = scalars(tmp_path / "on")["eval/return_greedy"]
    assert steps == [64, 128, 192]
    assert all(g >= 1 for g in greedy)  # CartPole: every episode lasts at least a step
    assert scalars(tmp_path / "on")["eval/return_sampled"][0] == steps
    written = json.loads((tmp_path / "on" / SUMMARY_NAME).read_text())
    assert written["eval_step"] == 192 and written["eval_return_greedy"] == pytest.approx(greedy[-1])
    assert written["eval_return_sampled"] >= 1
    assert off["eval_return_greedy"] is None and "eval/return_greedy" not in scalars(tmp_path / "off")


def test_evaluation_respects_masks_and_evaluates_every_member(tmp_path):
    with registered("entropy-rl-test/MaskedEval-v0", MaskedEnv,
                    kwargs={"where": "info", "allowed": (1, 2)}) as env_id:
        members = [Member(tiny(f"env.id={env_id}", "env.solved_return=null", "total_steps=64",
                               "eval.episodes=2", f"seed={s}", f"policy={p}"), tmp_path / f"m{s}")
                   for s, p in ((0, "softmax"), (1, "sparsemax"))]
        summaries = train_population(members)  # MaskedEnv raises on a forbidden action
    for s in summaries:
        assert s["status"] == "completed" and s["eval_step"] == 64
        assert s["eval_return_greedy"] is not None and s["eval_return_sampled"] is not None


def test_bad_eval_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"eval.episodes=-1 is not allowed"):
        Trainer(tiny("eval.episodes=-1"), tmp_path / "run")


def test_atari_runs_evaluate_through_the_ale_vector_env(tmp_path):
    """ale-py's vector env takes reset seeds as C ints: every derived seed is below 2**31."""
    from rl.envs import derived_seed

    assert all(0 <= derived_seed(s, 2**40 + s) < 2**31 for s in range(200))
    cfg = tiny("env=atari", "num_envs=2", "algo.n_steps=64", "algo.batch_size=64", "total_steps=128",
               "eval.episodes=1", "seed=3", "env.max_episode_steps=100")
    summary, _, _ = _train(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["eval_return_greedy"] is not None
