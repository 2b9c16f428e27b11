"""GAE against hand computations; termination vs truncation; next-step autoreset entries.

rl/rollout.py: ``compute_gae`` and ``RolloutBuffer.advantages_and_returns``; then the trainer's
own rollout on small deterministic envs, where the value of every state is known.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch
from rl_helpers import compose, registered

from rl.rollout import compute_gae
from rl.trainer import Trainer


def _col(*xs):
    return np.array(xs, dtype=np.float64)[:, None]


def test_gae_single_env_no_done_matches_hand_computation():
    gamma, lam = 0.9, 0.5
    rewards = _col(1.0, 2.0, 3.0, 4.0)
    values = _col(0.5, 1.0, 1.5, 2.0)
    next_values = _col(1.0, 1.5, 2.0, 2.5)
    no = np.zeros((4, 1), dtype=bool)
    adv = compute_gae(rewards, values, next_values, no, no, ~no, gamma, lam)
    # delta_t = r_t + 0.9 V(s_{t+1}) - V(s_t) = 1.4, 2.35, 3.3, 4.25
    # A_3 = 4.25; A_2 = 3.3 + 0.45 * 4.25 = 5.2125; A_1 = 2.35 + 0.45 * 5.2125 = 4.695625
    # A_0 = 1.4 + 0.45 * 4.695625 = 3.51303125
    np.testing.assert_allclose(adv[:, 0], [3.51303125, 4.695625, 5.2125, 4.25], rtol=0, atol=1e-12)


def _done_rollout():
    """Two envs, 4 steps, next-step autoreset. Env 0 terminates at t = 1, env 1 is truncated at
    t = 1 (time limit); for both, t = 2 is the reset-only step (action ignored, reward 0)."""
    rewards = np.array([[1.0, 2.0], [4.0, 1.0], [0.0, 0.0], [2.0, 1.0]])
    # values[t] = V(obs[t]); obs[2] is the final observation the done step returned
    values = np.array([[0.5, 1.0], [2.0, 3.0], [7.0, 5.0], [1.0, 0.5]])
    next_values = np.array([[2.0, 3.0], [7.0, 5.0], [1.0, 0.5], [3.0, 2.0]])
    terminated = np.zeros((4, 2), dtype=bool)
    truncated = np.zeros((4, 2), dtype=bool)
    terminated[1, 0] = True
    truncated[1, 1] = True
    valid = np.ones((4, 2), dtype=bool)
    valid[2, :] = False
    return rewards, values, next_values, terminated, truncated, valid


def test_gae_termination_vs_truncation_matches_hand_computation():
    rewards, values, next_values, terminated, truncated, valid = _done_rollout()
    adv = compute_gae(rewards, values, next_values, terminated, truncated, valid, 0.9, 0.5)
    # env 0 (terminated at t=1): A_3 = 2 + 0.9*3 - 1 = 3.7; A_2 = 0 (reset-only);
    #   A_1 = 4 - 2 = 2 (no bootstrap from V(final obs) = 7); A_0 = (1 + 0.9*2 - 0.5) + 0.45*2 = 3.2
    # env 1 (truncated at t=1): A_3 = 1 + 0.9*2 - 0.5 = 2.3; A_2 = 0;
    #   A_1 = 1 + 0.9*5 - 3 = 2.5 (bootstraps from V(final obs) = 5); A_0 = 3.7 + 0.45*2.5 = 4.825
    expected = np.array([[3.2, 4.825], [2.0, 2.5], [0.0, 0.0], [3.7, 2.3]])
    np.testing.assert_allclose(adv, expected, rtol=0, atol=1e-12)


def test_reset_only_entry_never_reaches_the_advantages():
    rewards, values, next_values, terminated, truncated, valid = _done_rollout()
    base = compute_gae(rewards, values, next_values, terminated, truncated, valid, 0.9, 0.5)
    rng = np.random.default_rng(0)
    rewards[2] = rng.normal(size=2) * 100  # whatever the ignored step returned
    values[2] = next_values[1] = rng.normal(size=2) * 100  # and whatever V(final obs) is ...
    terminated[2] = truncated[2] = rng.random(2) < 0.5
    adv = compute_gae(rewards, values, next_values, terminated, truncated, valid, 0.9, 0.5)
    # ... only the truncated env's step 1 may depend on V(final obs); nothing on the reset entry
    changed = np.abs(adv - base) > 1e-12
    assert changed[1, 1] and changed.sum() == 2 and changed[0, 1]  # A_1 and, through it, A_0 of env 1
    assert np.all(adv[2] == 0.0)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_gae_limits_are_td0_and_discounted_returns(lam):
    """lambda = 0: A = delta; lambda = 1: A + V = discounted return bootstrapped at the rollout end
    (random rollout with terminations and truncations; no reset-only entries)."""
    rng = np.random.default_rng(1)
    T, N, gamma = 12, 3, 0.95
    rewards, all_values = rng.normal(size=(T, N)), rng.normal(size=(T + 1, N))
    # next-step layout: V(s_{t+1}) is the next entry's value (the final obs' value after a done)
    values, next_values = all_values[:-1], all_values[1:]
    terminated = rng.random((T, N)) < 0.15
    truncated = ~terminated & (rng.random((T, N)) < 0.15)
    valid = np.ones((T, N), dtype=bool)
    adv = compute_gae(rewards, values, next_values, terminated, truncated, valid, gamma, lam)
    expected = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            if lam == 0.0:
                expected[t, n] = rewards[t, n] + gamma * next_values[t, n] * (1 - terminated[t, n]) \
                    - values[t, n]
                continue
            ret, discount, k = 0.0, 1.0, t
            while True:  # n-step return to the first done or the rollout end
                ret += discount * rewards[k, n]
                discount *= gamma
                if terminated[k, n]:
                    break
                if truncated[k, n] or k == T - 1:
                    ret += discount * next_values[k, n]
                    break
                k += 1
            expected[t, n] = ret - values[t, n]
    np.testing.assert_allclose(adv, expected, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- the trainer's own rollout

EPISODE = 3  # steps per episode of the chain env
GAMMA = 0.9


class ChainEnv(gym.Env):
    """obs = (t / 10, noise); reward 1 + t; ends after `EPISODE` steps (terminated unless
    ``truncate``, in which case the registered time limit truncates it)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, truncate=False):
        self.truncate = truncate

    def _obs(self):
        return np.array([self.t / 10, self.np_random.normal()], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = 1.0 + self.t
        self.t += 1
        return self._obs(), reward, (not self.truncate) and self.t >= EPISODE, False, {}


class KnownValueNet(torch.nn.Module):
    """Random logits; V(obs) = 10 * obs[0] = t, so the bootstrap targets are known exactly."""

    def __init__(self, obs_space, n_actions, **kwargs):
        super().__init__()
        self.actor = torch.nn.Linear(obs_space.shape[0], n_actions)
        self.critic = torch.nn.Linear(1, 1)  # a parameter the value loss reaches; weight 0

        with torch.no_grad():
            self.critic.weight.zero_()
            self.critic.bias.zero_()

    def values(self, obs):
        return 10.0 * obs[:, 0] + self.critic(obs[:, :1]).squeeze(-1)

    def forward(self, obs):
        return self.actor(obs), self.values(obs)


@pytest.fixture(params=["terminated", "truncated"])
def chain(request):
    env_id = f"entropy-rl-test/Chain{request.param.capitalize()}-v0"
    truncate = request.param == "truncated"
    with registered(env_id, ChainEnv, kwargs={"truncate": truncate},
                    max_episode_steps=EPISODE if truncate else None):
        yield env_id, request.param


def test_trainer_bootstraps_truncation_from_the_final_observation_only(tmp_path, chain):
    env_id, kind = chain
    cfg = compose(f"env.id={env_id}", "env.solved_return=null", "num_envs=2", "algo.n_steps=10",
                   f"algo.gamma={GAMMA}", "algo.gae_lambda=0.0", "algo.norm_adv=false",
                   "total_steps=1000", "device=cpu", "progress=false")
    trainer = Trainer(cfg, tmp_path, make_network=KnownValueNet)
    try:
        trainer.collect_rollout()
        buf = trainer.buffer
        t_state = np.rint(buf.obs[:, :, 0].numpy() * 10).astype(int)  # the chain position t
        adv, returns = buf.advantages_and_returns(GAMMA, 0.0)
        batch = trainer.batch(0)
    finally:
        trainer.close()

    # every 4th entry (the step after a done) only resets: invalid, never trained on
    done = buf.terminated | buf.truncated
    assert done.sum() > 0 and (buf.terminated.any() == (kind == "terminated"))
    assert (buf.truncated.any() == (kind == "truncated"))
    after_done = np.zeros_like(done)
    after_done[1:] = done[:-1]
    np.testing.assert_array_equal(buf.valid, ~after_done)
    assert np.all(t_state[:-1][~buf.valid] == EPISODE)  # the ignored action was taken at a final obs
    assert np.all(adv[~buf.valid] == 0)

    # value targets with lambda = 0: r + gamma V(s') unless terminated; V(s) = t
    for t, n in zip(*np.nonzero(buf.valid), strict=True):
        s = t_state[t, n]
        assert s < EPISODE
        target = 1.0 + s
        if s == EPISODE - 1:  # the done step: s' is the final observation, V = EPISODE
            target += GAMMA * EPISODE if kind == "truncated" else 0.0
        else:
            target += GAMMA * (s + 1)
        assert returns[t, n] == pytest.approx(target, abs=1e-5), (t, n, kind)

    # the update's batch holds exactly the valid entries, never a final observation
    assert batch.obs.shape[0] == int(buf.valid.sum())
    batch_t = np.rint(batch.obs[:, 0].numpy() * 10).astype(int)
    assert batch_t.max() < EPISODE
    np.testing.assert_allclose(batch.returns.numpy(), returns[buf.valid], rtol=0, atol=1e-5)


def test_trainer_refuses_a_same_step_autoreset_env(tmp_path):
    """A vector env in SAME_STEP mode (injected; make_envs builds NEXT_STEP ones) is refused
    before training, naming the mode: the rollout storage assumes next-step autoreset."""
    def make_envs(env, num_envs, seed, gamma=None):
        return gym.make_vec(env.id, num_envs, vectorization_mode="sync",
                            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})

    with registered("entropy-rl-test/ChainSameStep-v0", ChainEnv, kwargs={"truncate": True},
                    max_episode_steps=EPISODE) as env_id:
        cfg = compose(f"env.id={env_id}", "env.solved_return=null", "num_envs=2", "algo.n_steps=7",
                      "total_steps=1000", "device=cpu", "progress=false")
        with pytest.raises(ValueError, match="autoreset_mode.*NEXT_STEP"):
            Trainer(cfg, tmp_path, make_envs=make_envs, make_network=KnownValueNet)
