"""Prioritized replay speed: sample 256 + update 256 priorities on a 1M-transition buffer,
against SB3's uniform ReplayBuffer sampling 256 from the same data. Targets (proportional):
under 1 ms per sample + update, and at most 3× the uniform sample.

    python benchmarks/replay.py [--size 1000000] [--batch 256] [--rounds 15] [--calls 200]
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


def per_call(step, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds; medians are reported")
    parser.add_argument("--calls", type=int, default=200, help="calls per variant and round")
    args = parser.parse_args()
    th.set_num_threads(1)
    rng = np.random.default_rng(0)
    obs_space = gym.spaces.Box(-1, 1, shape=(8,))
    actions = gym.spaces.Discrete(4)
    kwargs = {"buffer_size": args.size, "observation_space": obs_space, "action_space": actions, "device": "cpu"}

    steps = {}
    uniform = ReplayBuffer(**kwargs)
    fill(uniform, rng)
    steps["uniform (SB3 ReplayBuffer): sample"] = lambda: uniform.sample(args.batch)
    for name, cls in (("proportional", PrioritizedReplayBuffer), ("rank-based", RankReplayBuffer)):
        buffer = cls(**kwargs)
        fill(buffer, rng)

        def step(buffer=buffer) -> None:
            batch = buffer.sample(args.batch)
            buffer.update_priorities(batch.indices, rng.exponential(size=args.batch))

        steps[f"{name}: sample + update"] = step
    for step in steps.values():  # warm up
        per_call(step, 20)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):  # interleaved, so that a change of machine load hits every variant
        for name, step in steps.items():
            times[name].append(per_call(step, args.calls))
    medians = {name: float(np.median(t)) for name, t in times.items()}
    base = medians["uniform (SB3 ReplayBuffer): sample"]
    print(f"{args.size:,} transitions, batch {args.batch}, median of {args.rounds} interleaved rounds")
    for name, t in medians.items():
        print(f"{name:40s} {t * 1e3:.3f} ms   ratio {t / base:.2f}")


if __name__ == "__main__":
    main()
