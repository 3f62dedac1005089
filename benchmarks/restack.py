"""What restacking saves a stacked group whose runs finish at different steps, side by side.

A group of `--members` SAC runs (64-64, batch 256, Pendulum-v1, one torch thread) in which all
members but one stop after `--steps` steps and the last goes on to `--tail` steps: trained with
restacking (the default: the last member alone once the others finished) and without it
(`RESTACK_AT = 0`: it keeps the whole stack), in turns, `--rounds` times each. Printed: each
round's wall times and their ratio. The tables are the same either way (tests/test_stacked_engine.py).

    python benchmarks/restack.py [--members 16] [--steps 1500] [--tail 3500] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

import torch as th

import study.stacked.group as group_module
from study.config import RunSettings, RunSpec
from study.stacked.group import run_group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1_500)
    parser.add_argument("--tail", type=int, default=3_500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    th.set_num_threads(1)
    settings = RunSettings(
        algo="sac",
        env="Pendulum-v1",
        total_steps=args.steps,
        net_arch=[64, 64],
        eval={"freq": 10**9, "episodes": 1},
        hyperparams={"learning_starts": 500, "batch_size": 256, "gradient_steps": 1},
    )
    runs = [
        RunSpec(study="restack", budget="full", seed=seed, settings=settings.model_copy(update={"total_steps": steps}))
        for seed, steps in enumerate([args.tail] + [args.steps] * (args.members - 1))
    ]
    default = group_module.RESTACK_AT
    for round_ in range(args.rounds):
        times = {}
        for name, at in (("restacked", default), ("whole stack", 0.0)):
            group_module.RESTACK_AT = at
            start = time.perf_counter()
            run_group(runs, cpus=1)
            times[name] = time.perf_counter() - start
        group_module.RESTACK_AT = default
        print(
            f"round {round_ + 1}: restacked {times['restacked']:.1f} s, whole stack {times['whole stack']:.1f} s: "
            f"{times['whole stack'] / times['restacked']:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
