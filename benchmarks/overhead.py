"""Speed of parameter noise (and gSDE) vs the plain SB3 algorithm, each in its own process.

On HalfCheetah-v5 (64-64 nets, batch 64), same hyperparameters within each group:
- td3: SB3 TD3 with Gaussian action noise (the baseline) vs parameter noise, interval episode and 1;
- sac (episodic training, as in the gSDE paper): SB3 SAC (the baseline) vs parameter noise
  (interval episode) and gSDE-8;
- ppo (rollouts of one episode, 10 epochs of batches of 50): SB3 PPO (the baseline) vs on-policy
  parameter noise, interval episode and 8 (each step evaluated under its own ε in the update).

A repetition starts a fresh process (one torch thread) for every variant of a group, so that
no model's caches, allocator or torch state reach another, and seeds them all with its index.
Each process trains `--warmup` steps untimed (buffer past learning_starts, training running),
one process after another. Then they take turns, one at a time while the others wait idle:
in every round each trains one timed chunk (`--chunk` steps for TD3; one episode and its
training for SAC, which trains at episode ends; a rollout and its update for PPO), in an order
that rotates each round, until each has trained `--steps`. All variants' chunks of a round
cover the same steps and run within seconds of each other. A round's ratio for a variant is the baseline's CPU time for
the chunk / the variant's (CPU time: a single-threaded process's wall time less the time it
waited for a core); a repetition's ratio is the median over its rounds. Printed per variant,
over repetitions: steps per wall and per CPU second, the median ratio with its min-max and
interquartile range, and the same ratio from wall time (on a quiet machine the two agree).

    python benchmarks/overhead.py [--reps 5] [--steps 5000] [--warmup 3000] [--chunk 125]
        [--groups td3,sac,ppo]
    python benchmarks/overhead.py --quick  # smoke check: 1 repetition of short runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import numpy as np

ENV = "HalfCheetah-v5"
EPISODE = 1000  # steps per episode of ENV
LEARNING_STARTS = 1000
COMMON = {"learning_starts": LEARNING_STARTS, "batch_size": 64, "buffer_size": 200_000, "device": "cpu"}
SAC_COMMON = COMMON | {"train_freq": (1, "episode"), "gradient_steps": -1}
NET = {"net_arch": [64, 64]}
ANSWER = "@overhead "  # starts the lines by which a worker answers


def plain_td3(seed: int) -> tuple[Any, Any]:
    import gymnasium as gym
    from stable_baselines3 import TD3
    from stable_baselines3.common.noise import NormalActionNoise

    env = gym.make(ENV)
    dim = env.action_space.shape[0]
    noise = NormalActionNoise(np.zeros(dim), 0.1 * np.ones(dim))
    return TD3("MlpPolicy", env, action_noise=noise, policy_kwargs=NET, seed=seed, **COMMON), None


def param_noise_td3(interval: int | str) -> Callable[[int], tuple[Any, Any]]:
    def make(seed: int) -> tuple[Any, Any]:
        import gymnasium as gym
        from stable_baselines3 import TD3

        from study.exploration import ParamNoiseCallback
        from study.policies import ParamNoiseTD3Policy

        model = TD3(ParamNoiseTD3Policy, gym.make(ENV), policy_kwargs=NET, seed=seed, **COMMON)
        return model, ParamNoiseCallback(interval=interval, adaptive=True, seed=seed)

    return make


def sac(param_noise: bool = False, **kwargs: Any) -> Callable[[int], tuple[Any, Any]]:
    def make(seed: int) -> tuple[Any, Any]:
        import gymnasium as gym
        from stable_baselines3 import SAC

        from study.exploration import ParamNoiseCallback
        from study.policies import ParamNoiseSACPolicy

        policy = ParamNoiseSACPolicy if param_noise else "MlpPolicy"
        model = SAC(policy, gym.make(ENV), policy_kwargs=NET, seed=seed, **SAC_COMMON, **kwargs)
        callback = ParamNoiseCallback(interval="episode", adaptive=True, seed=seed) if param_noise else None
        return model, callback

    return make


def ppo(param_noise: int | str | None = None) -> Callable[[int], tuple[Any, Any]]:
    def make(seed: int) -> tuple[Any, Any]:
        import gymnasium as gym
        from stable_baselines3 import PPO

        from study.exploration.onpolicy import OnPolicyParamNoiseCallback
        from study.exploration.segments import SegmentRolloutBuffer
        from study.policies import ParamNoiseActorCriticPolicy

        settings = {"n_steps": EPISODE, "batch_size": 50, "policy_kwargs": NET, "seed": seed, "device": "cpu"}
        if param_noise is None:
            return PPO("MlpPolicy", gym.make(ENV), **settings), None
        model = PPO(ParamNoiseActorCriticPolicy, gym.make(ENV), rollout_buffer_class=SegmentRolloutBuffer, **settings)
        return model, OnPolicyParamNoiseCallback(interval=param_noise, adaptive=True, seed=seed)

    return make


#: per group: (variant, how to build it, target ratio or None); the first variant is the baseline
GROUPS: dict[str, list[tuple[str, Callable[[int], tuple[Any, Any]], float | None]]] = {
    "td3": [
        ("SB3 TD3 + Gaussian action noise 0.1", plain_td3, None),
        ("TD3 + param noise, interval episode", param_noise_td3("episode"), 0.97),
        ("TD3 + param noise, interval 1", param_noise_td3(1), 0.90),
    ],
    "sac": [
        ("SB3 SAC", sac(), None),
        ("SAC + param noise, interval episode", sac(param_noise=True), 0.95),
        ("SAC + gSDE-8 (use_sde)", sac(use_sde=True, sde_sample_freq=8), None),
    ],
    "ppo": [
        ("SB3 PPO", ppo(), None),
        ("PPO + param noise, interval episode", ppo("episode"), 0.90),
        ("PPO + param noise, interval 8", ppo(8), None),
    ],
}


def worker(group: str, index: int, seed: int, warmup: int, chunk: int) -> None:
    """Serve one variant: train `warmup` steps, answer "ready", then for each line "chunk" on
    stdin train `chunk` more steps and answer with their wall time and their count."""
    import gc

    import torch as th

    th.set_num_threads(1)
    model, callback = GROUPS[group][index][1](seed)
    model.learn(warmup, callback=callback)
    gc.collect()
    print(ANSWER + "ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "chunk":
            break
        steps, wall, cpu = model.num_timesteps, time.perf_counter(), time.process_time()
        model.learn(chunk, callback=callback, reset_num_timesteps=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(ANSWER + json.dumps([wall, cpu, model.num_timesteps - steps]), flush=True)


class Worker:
    """A `worker` process, with one thread for torch and BLAS."""

    def __init__(self, group: str, index: int, seed: int, warmup: int, chunk: int) -> None:
        self.name = GROUPS[group][index][0]
        env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        args = [sys.executable, __file__, "--worker", f"{group}:{index}:{seed}", "--warmup", str(warmup)]
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [*args, "--chunk", str(chunk)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self._answer()  # "ready": warmed up

    def _answer(self) -> str:
        """The worker's next answer (other output skipped)."""
        for line in self.process.stdout:
            if line.startswith(ANSWER):
                return line.removeprefix(ANSWER)
        self.process.wait()
        self.stderr.seek(0)
        raise RuntimeError(f"{self.name} failed:\n{self.stderr.read()[-3000:]}")

    def chunk(self) -> tuple[float, float, int]:
        """Train one chunk: its wall time, CPU time and steps."""
        self.process.stdin.write("chunk\n")
        self.process.stdin.flush()
        wall, cpu, steps = json.loads(self._answer())
        return wall, cpu, steps

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()
        self.stderr.close()


def load() -> str:
    """The load averages over 1, 5 and 15 minutes."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"


def spread(values: np.ndarray) -> str:
    """'min-max  q1-q3' of `values`."""
    q1, q3 = np.percentile(values, [25, 75])
    return f"{values.min():.3f}-{values.max():.3f}  {q1:.3f}-{q3:.3f}"


def measure(group: str, reps: int, warmup: int, steps: int, chunk: int) -> None:
    """Run and print one group's table."""
    variants = GROUPS[group]
    n, rounds = len(variants), steps // chunk
    ratio = np.zeros((reps, n))  # median over rounds of the baseline's chunk CPU time / the variant's
    wall_ratio = np.zeros((reps, n))  # the same with wall time
    rate = np.zeros((reps, n))  # steps/s over the whole timed run
    cpu_rate = np.zeros((reps, n))  # steps per CPU second over the whole timed run
    for rep in range(reps):
        workers: list[Worker] = []
        wall, cpu, done = np.zeros((rounds, n)), np.zeros((rounds, n)), np.zeros(n)
        try:
            for index in range(n):  # started and warmed up one after another
                workers.append(Worker(group, index, rep, warmup, chunk))
            for round_ in range(rounds):
                first = (rep + round_) % n
                for index in [*range(first, n), *range(first)]:
                    wall[round_, index], cpu[round_, index], count = workers[index].chunk()
                    done[index] += count
        finally:
            for worker_ in workers:
                worker_.close()
        ratio[rep] = np.median(cpu[:, :1] / cpu, axis=0)
        wall_ratio[rep] = np.median(wall[:, :1] / wall, axis=0)
        rate[rep], cpu_rate[rep] = done / wall.sum(axis=0), done / cpu.sum(axis=0)
        print(
            f"  repetition {rep + 1}/{reps}: ratio "
            + ", ".join(f"{r:.3f}" for r in ratio[rep, 1:])
            + "; wall ratio "
            + ", ".join(f"{r:.3f}" for r in wall_ratio[rep, 1:])
            + "; steps/s "
            + ", ".join(f"{r:.1f}" for r in rate[rep]),
            flush=True,
        )
    print(
        f"  {'variant':39s} {'steps/s':>7s} {'/cpu-s':>7s}  {'ratio':>5s}  {'min-max':11s}  {'IQR':11s}"
        f"   {'wall ratio':>10s}  {'min-max':11s}   target"
    )
    for index, (name, _, target) in enumerate(variants):
        median = np.median(ratio[:, index])
        line = f"  {index + 1}. {name:36s} {np.median(rate[:, index]):7.1f} {np.median(cpu_rate[:, index]):7.1f}  "
        line += f"{median:5.3f}  {spread(ratio[:, index])}   {np.median(wall_ratio[:, index]):10.3f}  "
        line += f"{wall_ratio[:, index].min():.3f}-{wall_ratio[:, index].max():.3f}"
        if target is not None:
            line += f"   >= {target:.2f}: " + ("met" if median >= target else "NOT MET")
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="repetitions (each: every variant of a group once)")
    parser.add_argument("--steps", type=int, default=5000, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=3000, help=f"untimed steps first (> {LEARNING_STARTS:,})")
    parser.add_argument("--chunk", type=int, default=125, help="td3: steps per timed chunk (sac: an episode)")
    parser.add_argument("--groups", default="td3,sac", help="comma-separated: td3, sac, ppo")
    parser.add_argument("--quick", action="store_true", help="smoke check: --reps 1 --steps 1000 --warmup 2000")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # group:index:seed: serve one variant
    args = parser.parse_args()
    if args.worker:
        group, index, seed = args.worker.split(":")
        worker(group, int(index), int(seed), args.warmup, args.chunk)
        return
    if args.quick:
        args.reps, args.steps, args.warmup = 1, 1000, 2000
    groups = args.groups.split(",")
    if unknown := set(groups) - set(GROUPS):
        parser.error(f"unknown groups {sorted(unknown)}: choose from {list(GROUPS)}")
    if args.warmup <= LEARNING_STARTS or args.warmup % EPISODE:
        parser.error(f"--warmup: a multiple of {EPISODE:,} above learning_starts = {LEARNING_STARTS:,}")
    if args.steps <= 0 or args.steps % EPISODE or EPISODE % args.chunk:
        parser.error(f"--steps: a multiple of {EPISODE:,}; --chunk: a divisor of {EPISODE:,}")
    start = time.perf_counter()
    versions = f"torch {version('torch')}, stable-baselines3 {version('stable-baselines3')}"
    print(
        f"{ENV}, 64-64 nets, batch 64, 1 torch thread per process ({versions})\n"
        f"machine: {os.cpu_count()} cores, load average {load()} at the start\n"
        f"{args.reps} repetitions per group. A repetition starts one fresh process per variant; each trains "
        f"{args.warmup:,}\nsteps untimed (learning starts at {LEARNING_STARTS:,}), then {args.steps:,} timed "
        f"steps in chunks (td3: {args.chunk} steps; sac: one\n{EPISODE:,}-step episode and its training; ppo: "
        "one rollout of an episode and its update); "
        "the processes take turns, one chunk at a time, order rotating.\n"
        "ratio: how fast the variant is relative to the baseline (variant 1), i.e. the baseline's CPU time\n"
        "for a chunk / the variant's for the same chunk, median over the rounds of a repetition; shown:\n"
        "median over repetitions, min-max, IQR. CPU time leaves out time spent waiting for a core; on a\n"
        "quiet machine it is the wall time, and 'wall ratio' (the same from wall time) agrees with ratio.\n"
        "steps/s, /cpu-s: steps per wall / CPU second over the whole timed run, median over repetitions.\n"
        "Targets apply to the median ratio."
    )
    for group in groups:
        print(f"\n{group}:", flush=True)
        measure(group, args.reps, args.warmup, args.steps, args.chunk if group == "td3" else EPISODE)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s; load average at the end {load()}")


if __name__ == "__main__":
    main()
