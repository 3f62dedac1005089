"""Prioritized replay speed: sample 256 + update 256 priorities on a 1M-transition buffer,
against SB3's uniform ReplayBuffer sampling 256 from the same data. Targets (proportional):
under 1 ms per sample + update, and at most 3× the uniform sample.

    python benchmarks/replay.py [--size 1000000] [--batch 256] [--repeats 2000]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.buffers import ReplayBuffer

from study.buffers import PrioritizedReplayBuffer, RankReplayBuffer


def fill(buffer: ReplayBuffer, rng: np.random.Generator) -> None:
    """Fill to capacity in one go (the contents do not matter for speed)."""
    size = buffer.buffer_size
    buffer.observations[:] = rng.standard_normal(buffer.observations.shape, dtype=np.float32)
    buffer.next_observations[:] = buffer.observations
    buffer.actions[:] = rng.integers(0, 4, size=buffer.actions.shape)
    buffer.rewards[:] = rng.standard_normal(buffer.rewards.shape, dtype=np.float32)
    buffer.pos, buffer.full = 0, True
    if isinstance(buffer, PrioritizedReplayBuffer):
        buffer.update_priorities(np.arange(size), rng.exponential(size=size))


def time_per_call(step, repeats: int) -> float:
    for _ in range(10):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2_000)
    args = parser.parse_args()
    th.set_num_threads(1)
    rng = np.random.default_rng(0)
    obs_space = gym.spaces.Box(-1, 1, shape=(8,))
    actions = gym.spaces.Discrete(4)
    kwargs = {"buffer_size": args.size, "observation_space": obs_space, "action_space": actions, "device": "cpu"}

    uniform = ReplayBuffer(**kwargs)
    fill(uniform, rng)
    t_uniform = time_per_call(lambda: uniform.sample(args.batch), args.repeats)
    print(f"uniform (SB3 ReplayBuffer) sample {args.batch}: {t_uniform * 1e3:.3f} ms")

    for name, cls in (("proportional", PrioritizedReplayBuffer), ("rank", RankReplayBuffer)):
        buffer = cls(**kwargs)
        fill(buffer, rng)
        buffer.sample(args.batch)

        def step(buffer=buffer) -> None:
            batch = buffer.sample(args.batch)
            buffer.update_priorities(batch.indices, rng.exponential(size=args.batch))

        t = time_per_call(step, args.repeats)
        print(f"{name} sample + update {args.batch}: {t * 1e3:.3f} ms, ratio to uniform sample {t / t_uniform:.2f}")


if __name__ == "__main__":
    main()
