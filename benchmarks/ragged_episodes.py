"""What a stacked group trained at episode ends pays for episodes of different lengths, side by side.

SAC (64-64, batch 256, `train_freq: episode`, one torch thread) on Hopper-v5, whose episodes end
when the hopper falls: groups of E = `--members` runs (seeds 0, 1, …), each training `--steps`
steps after a warm-up of `--warmup`, one right after the other in one process. Every member's
episode is its rollout; the members that finished theirs wait for the group's longest, and the
update then takes as many stacked gradient steps as that episode's length, each member masked
in for its own count. The same groups trained after every step (one gradient step each, all
members together) are the comparison. Printed per schedule and E: the update's time, the members'
gradient steps per second of it and that rate against E = 1, and the stacked steps per member
gradient step (1 = no waiting; the update costs each stacked step whatever the mask).

    python benchmarks/ragged_episodes.py [--members 1,2,4,10] [--steps 6000] [--warmup 10000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch as th

import study.stacked.group as group_module
from study.config import RunSettings, RunSpec
from study.stacked.group import run_group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,2,4,10")
    parser.add_argument("--steps", type=int, default=6_000)
    parser.add_argument("--warmup", type=int, default=10_000)
    args = parser.parse_args()
    th.set_num_threads(1)
    train = group_module.Group.train
    for schedule, train_freq in (("episode ends", {"train_freq": "episode"}), ("every step", {"train_freq": 1})):
        settings = RunSettings(
            algo="sac",
            env="Hopper-v5",
            total_steps=args.warmup + args.steps,
            net_arch=[64, 64],
            eval={"freq": 10**9, "episodes": 1},
            exploration={"param_noise": {"interval": 8}},
            hyperparams={"learning_starts": args.warmup, "batch_size": 256, **train_freq},
        )
        first = None
        for members in map(int, args.members.split(",")):
            first = measure(settings, members, schedule, first, train)


def measure(settings: RunSettings, members: int, schedule: str, first: float | None, train: Callable) -> float:
    """Train one group of `members` runs and print its row; the rate of E = 1 (`first`, or this one's)."""
    tally = {"time": 0.0, "stacked": 0, "member": 0}

    def timed(group: group_module.Group) -> None:
        counts = [m.steps for m in group.members if m.active and m.model.num_timesteps > m.model.learning_starts]
        start = time.perf_counter()
        train(group)
        tally["time"] += time.perf_counter() - start
        tally["stacked"] += max(counts, default=0) * len(group.members)
        tally["member"] += sum(counts)

    group_module.Group.train = timed
    try:
        run_group([RunSpec(study="ragged", budget="full", seed=seed, settings=settings) for seed in range(members)], 1)
    finally:
        group_module.Group.train = train
    rate = tally["member"] / tally["time"]
    first = first or rate
    print(
        f"{schedule:>12}, E = {members:2d}: update {tally['time']:6.1f} s, {rate:5.0f} member gradient steps/s "
        f"({rate / first:.2f}x E = 1), {tally['stacked'] / tally['member']:.2f} stacked steps per member step",
        flush=True,
    )
    return first


if __name__ == "__main__":
    main()
