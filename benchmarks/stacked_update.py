"""Throughput of the stacked TD3 update against SB3's, one torch thread, side by side.

For each E, E TD3 models (64-64, batch 100, HalfCheetah-v5 shapes, replay filled with random
transitions) are trained by `StackedTD3` in one call, and one of them by SB3's own `train()`;
the two take turns, `--rounds` rounds of `--steps` gradient steps each, and the ratio of a
round is E x SB3's time for the steps / the stacked time for them (gradient steps of all
members per second, stacked over one SB3 process). Printed: the median ratio per E with its
min-max over rounds. This is the update only; collection is measured by the engine benchmark.

    python benchmarks/stacked_update.py [--members 1,2,4,8,16,32] [--steps 50] [--rounds 7]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import TD3
from stable_baselines3.common.logger import Logger

from study.policies import ParamNoiseTD3Policy
from study.stacked.common import StackedBatch
from study.stacked.td3 import StackedTD3

BATCH = 100


def model(seed: int, env: gym.Env) -> TD3:
    built = TD3(
        ParamNoiseTD3Policy, env, seed=seed, batch_size=BATCH, buffer_size=5_000, learning_starts=0,
        policy_kwargs={"net_arch": [64, 64]},
    )  # fmt: skip
    built.set_logger(Logger(folder=None, output_formats=[]))
    rng = np.random.default_rng(seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    for _ in range(2_000):
        obs, next_obs = rng.normal(size=(2, 1, obs_dim)).astype(np.float32)
        built.replay_buffer.add(
            obs, next_obs, rng.uniform(-1, 1, (1, act_dim)), rng.normal(size=1), np.array([False]), [{}]
        )
    return built


def stacked_batches(models: list[TD3], steps: int) -> list[StackedBatch]:
    drawn = [[m.replay_buffer.sample(BATCH) for _ in range(steps)] for m in models]
    fields = StackedBatch._fields[:5]
    return [StackedBatch(*(th.stack([getattr(d[s], f) for d in drawn]) for f in fields)) for s in range(steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="1,2,4,8,16,32")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    th.set_num_threads(1)
    env = gym.make("HalfCheetah-v5")
    print(f"TD3 64-64, batch {BATCH}, HalfCheetah-v5 shapes, 1 torch thread, {args.steps} gradient steps a round")
    print(f"{'E':>3} {'SB3 steps/s':>12} {'stacked member-steps/s':>23} {'ratio (median)':>15} {'min-max':>12}")
    for members in (int(e) for e in args.members.split(",")):
        models = [model(seed, env) for seed in range(members)]
        single = model(members, env)
        stacked = StackedTD3(models, [th.Generator().manual_seed(seed) for seed in range(members)])
        ratios, sb3_rates, stacked_rates = [], [], []
        for _ in range(args.rounds + 1):  # the first round warms both up and is not counted
            batches = stacked_batches(models, args.steps)
            clock = time.perf_counter()
            stacked.train(batches, 1.0)
            t_stacked = time.perf_counter() - clock
            clock = time.perf_counter()
            single.train(gradient_steps=args.steps, batch_size=BATCH)
            t_sb3 = time.perf_counter() - clock
            ratios.append(members * t_sb3 / t_stacked)
            sb3_rates.append(args.steps / t_sb3)
            stacked_rates.append(members * args.steps / t_stacked)
        ratios, sb3_rates, stacked_rates = ratios[1:], sb3_rates[1:], stacked_rates[1:]
        print(
            f"{members:>3} {np.median(sb3_rates):>12.0f} {np.median(stacked_rates):>23.0f} "
            f"{np.median(ratios):>14.2f}x {min(ratios):>5.2f}-{max(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
