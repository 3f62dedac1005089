"""Whole-run throughput of the stacked engine against the SB3 engine, one torch thread, side by side.

For TD3 and SAC (64-64, batch 100, parameter noise k = 5, Pendulum-v1), DQN on the chain MDP
(N = 20, [16, 16], ε-greedy, the chain study's hyperparameters and its evaluation after every
training episode, without stopping when solved) and each E = 1, 2, 4, 8, 16, 32: one `engine:
sb3` run, then a group of E `engine: stacked` runs, each training `--steps` environment steps
per run in its own fresh process, one right after the other so that both see the same load.
Printed per E: environment steps per second of all members, the SB3 run's, their ratio, and the
peak memory each member adds ((peak RSS of the group − peak RSS of E = 1) / (E − 1)).

    python benchmarks/stacked_engine.py [--members 1,2,4,8,16,32] [--steps 3000] [--algos td3,sac,dqn]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CONTINUOUS = {
    "net_arch": [64, 64],
    "hyperparams": {"learning_starts": 100, "batch_size": 100},
    "exploration": {"param_noise": {"interval": 5}},
}
SETTINGS = {
    "td3": {"env": "Pendulum-v1", **CONTINUOUS},
    "sac": {"env": "Pendulum-v1", **CONTINUOUS},
    "dqn": {
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


def specs(algo: str, members: int, steps: int, engine: str) -> list:
    from study.config import RunSettings, RunSpec

    at_end = {"eval": {"freq": 10 * steps, "episodes": 1}}  # one evaluation, at the end
    settings = RunSettings(algo=algo, engine=engine, total_steps=steps, **at_end | SETTINGS[algo])
    return [RunSpec(study="bench", budget="full", seed=seed, settings=settings) for seed in range(members)]


def measure(algo: str, members: int, steps: int) -> dict[str, float]:
    """One measurement, in this process: E = 0 is one SB3 run."""
    import torch as th

    from study.run import execute
    from study.stacked.group import run_group

    th.set_num_threads(1)
    clock = time.perf_counter()
    if members == 0:
        results = [execute(specs(algo, 1, steps, "sb3")[0], cpus=1)]
    else:
        results = run_group(specs(algo, members, steps, "stacked"), cpus=1)
    wall = time.perf_counter() - clock
    if any(result.status != "done" for result in results):
        raise RuntimeError(next(result.error for result in results if result.status != "done"))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"steps_per_s": sum(result.meta["steps"] for result in results) / wall, "rss_mb": rss_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,2,4,8,16,32")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--algos", default="td3,sac,dqn")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # ALGO E: measure in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.steps)))
        return
    for algo in args.algos.split(","):

        def run(members: int, algo: str = algo) -> dict[str, float]:
            command = [sys.executable, __file__, "--steps", str(args.steps), "--one", algo, str(members)]
            return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)

        print(f"{algo} {SETTINGS[algo]['net_arch']}, {SETTINGS[algo]['env']}")
        print("  E   stacked steps/s   SB3 steps/s   ratio   MB per member")
        base = None
        for members in map(int, args.members.split(",")):
            sb3, got = run(0), run(members)
            base = base or got
            per_member = (got["rss_mb"] - base["rss_mb"]) / (members - 1) if members > 1 else float("nan")
            ratio = got["steps_per_s"] / sb3["steps_per_s"]
            speeds = f"{got['steps_per_s']:>17.0f} {sb3['steps_per_s']:>13.0f}"
            print(f"{members:>3} {speeds} {ratio:>7.2f} {per_member:>15.1f}", flush=True)


if __name__ == "__main__":
    main()
