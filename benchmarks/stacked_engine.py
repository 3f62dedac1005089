"""Whole-run throughput of the stacked engine against the SB3 engine, one torch thread, side by side.

For TD3 and SAC (64-64, batch 100, parameter noise k = 5, Pendulum-v1), DQN on the chain MDP
(N = 20, [16, 16], ε-greedy, the chain study's hyperparameters and its evaluation after every
training episode, without stopping when solved) and each E = 1, 2, 4, 8, 16, 32: one `engine:
sb3` run, then a group of E `engine: stacked` runs, each training `--steps` environment steps
per run in its own fresh process, one right after the other so that both see the same load.
Printed per E: environment steps per second of all members, the SB3 run's, their ratio, the
peak memory each member adds ((peak RSS of the group − peak RSS of E = 1) / (E − 1); with
`--gpu`, of the GPU's peak allocation), and where the time goes: the share of the wall time in
the update (`train()`), in choosing actions (the actors' forward passes, noise included), and
in the rest (env steps, callbacks, buffer writes, evaluation).

`sac-cheetah` is SAC [400, 300], batch 256, on HalfCheetah-v5 (the GPU case: `--gpu` trains
on the first CUDA device, `resources: {gpus: 1}`).

    python benchmarks/stacked_engine.py [--members 1,2,4,8,16,32] [--steps 3000] [--algos td3,sac,dqn]
    python benchmarks/stacked_engine.py --gpu --algos sac-cheetah --members 1,8,32 --steps 3000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any
from unittest import mock

CONTINUOUS = {
    "net_arch": [64, 64],
    "hyperparams": {"learning_starts": 100, "batch_size": 100},
    "exploration": {"param_noise": {"interval": 5}},
}
SETTINGS = {
    "td3": {"algo": "td3", "env": "Pendulum-v1", **CONTINUOUS},
    "sac": {"algo": "sac", "env": "Pendulum-v1", **CONTINUOUS},
    "sac-cheetah": {
        "algo": "sac",
        "env": "HalfCheetah-v5",
        "net_arch": [400, 300],
        "hyperparams": {"learning_starts": 1_000, "batch_size": 256},
    },
    "dqn": {
        "algo": "dqn",
        "env": "study/Chain-v0",
        "env_kwargs": {"n": 20},
        "net_arch": [16, 16],
        "eval": {"freq": "episode", "episodes": 1},
        "hyperparams": {
            "learning_rate": 1e-3,
            "buffer_size": 50_000,
            "learning_starts": 1_000,
            "batch_size": 32,
            "train_freq": 4,
            "target_update_interval": 500,
            "exploration_fraction": 0.1,
            "exploration_final_eps": 0.01,
        },
    },
}


def specs(case: str, members: int, steps: int, engine: str, gpu: bool = False) -> list:
    from study.config import RunSettings, RunSpec

    at_end = {"eval": {"freq": 10 * steps, "episodes": 1}}  # one evaluation, at the end
    resources = {"resources": {"cpus": 1, "gpus": int(gpu)}}
    settings = RunSettings(engine=engine, total_steps=steps, **at_end | resources | SETTINGS[case])
    return [RunSpec(study="bench", budget="full", seed=seed, settings=settings) for seed in range(members)]


def timed(clocks: dict[str, float], name: str, method: Callable, sync: Callable[[], None]) -> Callable:
    """`method`, adding its wall time (GPU work finished) to `clocks[name]`."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        clock = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            sync()
            clocks[name] += time.perf_counter() - clock

    return wrapper


def measure(case: str, members: int, steps: int, gpu: bool = False) -> dict[str, float]:
    """One measurement, in this process: E = 0 is one SB3 run."""
    import torch as th
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    from study.registry import ALGORITHMS, resolve
    from study.run import execute
    from study.stacked.group import Group, run_group

    th.set_num_threads(1)
    sync = th.cuda.synchronize if gpu else lambda: None
    if gpu:
        th.zeros(1, device="cuda")  # the CUDA context, outside the clock
    clocks = {"update": 0.0, "act": 0.0}
    if members == 0:
        cls = resolve(ALGORITHMS[SETTINGS[case]["algo"]].cls)
        methods = {"update": (cls, "train"), "act": (OffPolicyAlgorithm, "_sample_action")}
    else:
        methods = {"update": (Group, "train"), "act": (Group, "sample_actions")}
    with ExitStack() as patches:
        for name, (owner, attr) in methods.items():
            patches.enter_context(mock.patch.object(owner, attr, timed(clocks, name, getattr(owner, attr), sync)))
        clock = time.perf_counter()
        if members == 0:
            results = [execute(specs(case, 1, steps, "sb3", gpu)[0], cpus=1)]
        else:
            results = run_group(specs(case, members, steps, "stacked", gpu), cpus=1)
        wall = time.perf_counter() - clock
    if any(result.status != "done" for result in results):
        raise RuntimeError(next(result.error for result in results if result.status != "done"))
    peak_mb = th.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "steps_per_s": sum(result.meta["steps"] for result in results) / wall,
        "peak_mb": peak_mb / 2**20,
        **{name: seconds / wall for name, seconds in clocks.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,2,4,8,16,32")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--algos", default="td3,sac,dqn", help=f"of {', '.join(SETTINGS)}")
    parser.add_argument("--gpu", action="store_true", help="train on the first CUDA device")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # CASE E: measure in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.steps, args.gpu)))
        return
    for case in args.algos.split(","):

        def run(members: int, case: str = case) -> dict[str, float]:
            command = [sys.executable, __file__, "--steps", str(args.steps), "--one", case, str(members)]
            done = subprocess.run(command + ["--gpu"] * args.gpu, capture_output=True, text=True)
            if done.returncode:
                sys.exit(done.stderr)
            return json.loads(done.stdout)

        where = "GPU" if args.gpu else "CPU"
        print(f"{case}: {SETTINGS[case]['algo']} {SETTINGS[case]['net_arch']}, {SETTINGS[case]['env']}, {where}")
        print("  E  stacked steps/s  SB3 steps/s  ratio  MB per member  update, act, rest: stacked | SB3")
        base = None
        for members in map(int, args.members.split(",")):
            sb3, got = run(0), run(members)
            base = got if members == 1 else base  # the memory of one member
            per_member = (got["peak_mb"] - base["peak_mb"]) / (members - 1) if base and members > 1 else float("nan")
            ratio = got["steps_per_s"] / sb3["steps_per_s"]
            speeds = f"{got['steps_per_s']:>16.0f} {sb3['steps_per_s']:>12.0f} {ratio:>6.2f} {per_member:>14.1f}"
            shares = [
                " ".join(f"{100 * s:>3.0f}%" for s in (m["update"], m["act"], 1 - m["update"] - m["act"]))
                for m in (got, sb3)
            ]
            print(f"{members:>3} {speeds}  {shares[0]:>25} | {shares[1]}", flush=True)


if __name__ == "__main__":
    main()
