"""Published reference returns for the benchmark suites, and random-policy returns.

Every entry names its source: the file (and the commit it was read at) or page the number was
copied from. Nothing here is estimated; a number the source does not give is ``None`` with a
note. The benchmark (rl/analysis/benchmark.py) puts these beside this project's numbers and
uses them to normalize scores (random = 0, published = 1).

Sources
-------
* ``ZOO``: rl-baselines3-zoo ``benchmark.md`` ("Performance of trained agents"), read at
  commit 0088472b8cb622732bdbc4aa3d0d0abde86c67ed of github.com/DLR-RM/rl-baselines3-zoo.
  One trained agent per (algo, env), evaluated with the deterministic (greedy) policy for
  ``eval_timesteps`` (~150k steps) except on Atari, where the policy is sampled; ``value``
  and ``std`` are the mean and std over those evaluation episodes (not over seeds). The
  classic-control entries are gym's ``-v2`` LunarLander (v3 fixed bugs of the v2 physics;
  the same task) and Atari ``<Game>NoFrameskip-v4`` with the zoo's AtariWrapper (no sticky
  actions; this project's ``ALE/<Game>-v5`` has sticky actions p=0.25: not the same task).
* ``GYMNAX``: gymnax ``README.md``, table "Implemented Accelerated Environments", column
  "Ckpt (Return)", read at commit 086ad95697d5898b95ce3b14fa25f2b0bae4a1fc of
  github.com/RobertTLange/gymnax. The return of the gymnax-blines PPO checkpoint
  (agents/<Game>-MinAtar/ppo.yaml: 10M steps); the README gives no std and no evaluation
  protocol; Seaquest-MinAtar has no checkpoint ("-").
* Random-policy returns (``RANDOM``): measured here, uniform random actions, by
  ``measure_random`` (``python -m rl.analysis.published --random``); no published value is
  used. See the comment above ``RANDOM``.
"""

from __future__ import annotations

from dataclasses import dataclass

ZOO = ("rl-baselines3-zoo benchmark.md (github.com/DLR-RM/rl-baselines3-zoo, commit 0088472b), "
       "one agent, deterministic evaluation")
ZOO_ATARI = ("rl-baselines3-zoo benchmark.md (github.com/DLR-RM/rl-baselines3-zoo, commit 0088472b), "
             "one agent, stochastic evaluation, <Game>NoFrameskip-v4")
GYMNAX = ("gymnax README.md, table 'Implemented Accelerated Environments', Ckpt (Return) "
          "(github.com/RobertTLange/gymnax, commit 086ad956); gymnax-blines PPO checkpoint")


@dataclass(frozen=True)
class Reference:
    env: str              # this project's env id (conf/env/*.yaml `id`)
    algo: str             # ppo | a2c
    budget: int           # env steps the published agent trained for
    value: float | None   # published mean return; None where the source gives none
    std: float | None     # its std where given (over evaluation episodes, not seeds)
    evaluation: str       # "deterministic eval" | "stochastic eval" | "checkpoint return"
    source: str
    note: str = ""


def _zoo(env, algo, budget, value, std, note=""):
    return Reference(env, algo, budget, value, std, "deterministic eval", ZOO, note)


V2 = "zoo row LunarLander-v2 (v3 fixed v2 physics bugs; same task)"

REFERENCES: tuple[Reference, ...] = (
    # classic control and Box2D: zoo rows `ppo`/`a2c`, columns mean_reward, std_reward, n_timesteps
    _zoo("CartPole-v1", "ppo", 100_000, 500.000, 0.000),
    _zoo("CartPole-v1", "a2c", 500_000, 500.000, 0.000),
    _zoo("Acrobot-v1", "ppo", 1_000_000, -73.506, 18.201),
    _zoo("Acrobot-v1", "a2c", 500_000, -83.353, 17.213),
    _zoo("MountainCar-v0", "ppo", 1_000_000, -110.423, 19.473),
    _zoo("MountainCar-v0", "a2c", 1_000_000, -111.263, 24.087),
    _zoo("LunarLander-v3", "ppo", 1_000_000, 242.119, 31.823, V2),
    _zoo("LunarLander-v3", "a2c", 200_000, 155.751, 80.419, V2),
    # MinAtar: gymnax README, PPO checkpoints of gymnax-blines (10M steps)
    Reference("MinAtar/Asterix-v1", "ppo", 10_000_000, 15.0, None, "checkpoint return", GYMNAX),
    Reference("MinAtar/Breakout-v1", "ppo", 10_000_000, 28.0, None, "checkpoint return", GYMNAX),
    Reference("MinAtar/Freeway-v1", "ppo", 10_000_000, 58.0, None, "checkpoint return", GYMNAX),
    Reference("MinAtar/Seaquest-v1", "ppo", 10_000_000, None, None, "checkpoint return", GYMNAX,
              "the gymnax README lists no checkpoint for Seaquest-MinAtar; reported as measured"),
    Reference("MinAtar/SpaceInvaders-v1", "ppo", 10_000_000, 131.0, None, "checkpoint return",
              GYMNAX),
    # Atari: zoo rows ppo/a2c <Game>NoFrameskip-v4, 10M steps (a different protocol: see above)
    *(Reference(f"ALE/{g}-v5", "ppo", 10_000_000, v, s, "stochastic eval", ZOO_ATARI,
                "NoFrameskip-v4 without sticky actions; not directly comparable to v5")
      for g, v, s in (("Asteroids", 2156.174, 744.640), ("BeamRider", 3397.000, 1662.368),
                      ("Breakout", 398.033, 33.328), ("Enduro", 996.364, 176.090),
                      ("Pong", 20.989, 0.105), ("Qbert", 15627.108, 3313.538),
                      ("RoadRunner", 40680.645, 6675.058), ("Seaquest", 1783.636, 34.096),
                      ("SpaceInvaders", 960.331, 425.355))),
    *(Reference(f"ALE/{g}-v5", "a2c", 10_000_000, v, s, "stochastic eval", ZOO_ATARI,
                "NoFrameskip-v4 without sticky actions; not directly comparable to v5")
      for g, v, s in (("Asteroids", 1286.550, 423.750), ("BeamRider", 2890.298, 1379.137),
                      ("Breakout", 279.793, 122.177), ("Enduro", 0.000, 0.000),
                      ("Pong", 17.292, 3.214), ("Qbert", 3882.345, 1223.327),
                      ("RoadRunner", 31671.512, 6364.085), ("Seaquest", 1721.493, 105.339),
                      ("SpaceInvaders", 627.160, 201.974))),
)

# Mean undiscounted return of the uniform random policy over 100 episodes (seed 0), measured
# here on 2026-12-05 by `python -m rl.analysis.published --random` (gymnasium 1.4.0, minatar 1.0.15):
# our measurements, not published numbers. Atari games are not measured (ALE/<Game>-v5 episodes
# of a random policy are long on 2 cores): they get no normalized score.
RANDOM: dict[str, float | None] = {
    "CartPole-v1": 23.680,
    "Acrobot-v1": -497.080,
    "MountainCar-v0": -200.000,
    "LunarLander-v3": -191.959,
    "MinAtar/Asterix-v1": 0.400,
    "MinAtar/Breakout-v1": 0.400,
    "MinAtar/Freeway-v1": 0.390,
    "MinAtar/Seaquest-v1": 0.080,
    "MinAtar/SpaceInvaders-v1": 4.480,
}


def reference(env: str, algo: str) -> Reference | None:
    """The published reference for (env id, algo), or None where there is none."""
    for ref in REFERENCES:
        if ref.env == env and ref.algo == algo:
            return ref
    return None


def normalized(score, env: str, algo: str, random_scores=None, references=None):
    """``(score - random) / (published - random)``: 0 = random policy, 1 = the published agent.

    NaN where either end is unknown (no published value, random return not measured) or the two
    coincide. `score` may be a number or a NumPy array.
    """
    import numpy as np

    random_scores = RANDOM if random_scores is None else random_scores
    ref = reference(env, algo) if references is None else references.get((env, algo))
    top = getattr(ref, "value", ref)
    low = random_scores.get(env)
    if top is None or low is None or top == low:
        return np.asarray(score, dtype=float) * np.nan
    return (np.asarray(score, dtype=float) - low) / (top - low)


def measure_random(env_id: str, episodes: int = 100, seed: int = 0) -> float:
    """Mean return of uniform random actions over `episodes` episodes of `env_id`."""
    import gymnasium as gym
    import numpy as np

    from rl.envs import _find_spec  # registers the MinAtar / ALE ids as rl-train does

    env = gym.make(_find_spec(env_id, atari=env_id.startswith("ALE/")).id)
    rng = np.random.default_rng(seed)
    total = []
    try:
        for ep in range(episodes):
            env.reset(seed=seed + ep)
            ret, done = 0.0, False
            while not done:
                _, r, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
                ret += float(r)
                done = term or trunc
            total.append(ret)
    finally:
        env.close()
    return float(np.mean(total))


if __name__ == "__main__":
    import sys

    if "--random" in sys.argv:
        for env_id in RANDOM:
            print(f'    "{env_id}": {measure_random(env_id):.3f},', flush=True)
