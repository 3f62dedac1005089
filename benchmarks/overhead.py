"""Speed of parameter noise (and gSDE) vs the plain SB3 algorithm, side by side.

On HalfCheetah-v5 (64-64 net, batch 64), same hyperparameters within each group:
- TD3: plain SB3 TD3 with Gaussian action noise vs parameter noise (interval episode and 1);
- SAC (episodic training): plain SB3 SAC vs parameter noise (interval episode) and gSDE-8.
The variants of a group train in interleaved chunks (order rotating each round) in one
process with one torch thread, so that machine load hits all alike. Prints steps/s of each
variant and its ratio to the group's plain algorithm.

    python benchmarks/overhead.py [--rounds 4] [--chunk 2000] [--groups td3,sac]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import NormalActionNoise

from study.exploration import ParamNoiseCallback
from study.policies import ParamNoiseSACPolicy, ParamNoiseTD3Policy

ENV = "HalfCheetah-v5"
COMMON = {"learning_starts": 1000, "batch_size": 64, "buffer_size": 200_000, "seed": 0, "device": "cpu"}


def plain_td3() -> tuple[TD3, BaseCallback | None]:
    env = gym.make(ENV)
    dim = env.action_space.shape[0]
    noise = NormalActionNoise(np.zeros(dim), 0.1 * np.ones(dim))
    return TD3("MlpPolicy", env, action_noise=noise, policy_kwargs={"net_arch": [64, 64]}, **COMMON), None


SAC_COMMON = COMMON | {"train_freq": (1, "episode"), "gradient_steps": -1}


def sac(policy: type | str, callback: Callable[[], BaseCallback | None] = lambda: None, **kwargs) -> Callable:
    def make() -> tuple[SAC, BaseCallback | None]:
        model = SAC(policy, gym.make(ENV), policy_kwargs={"net_arch": [64, 64]}, **SAC_COMMON, **kwargs)
        return model, callback()

    return make


def param_noise_td3(interval: int | str) -> Callable[[], tuple[TD3, BaseCallback]]:
    def make() -> tuple[TD3, BaseCallback]:
        model = TD3(ParamNoiseTD3Policy, gym.make(ENV), policy_kwargs={"net_arch": [64, 64]}, **COMMON)
        return model, ParamNoiseCallback(interval=interval, adaptive=True, seed=0)

    return make


GROUPS = {
    "td3": {
        "SB3 TD3 + Gaussian action noise": plain_td3,
        "TD3 + parameter noise, interval=episode": param_noise_td3("episode"),
        "TD3 + parameter noise, interval=1": param_noise_td3(1),
    },
    "sac": {
        "SB3 SAC": sac("MlpPolicy"),
        "SAC + parameter noise, interval=episode": sac(
            ParamNoiseSACPolicy, lambda: ParamNoiseCallback(interval="episode", adaptive=True, seed=0)
        ),
        "SAC + gSDE-8": sac("MlpPolicy", use_sde=True, sde_sample_freq=8),
    },
}


def measure(variants: dict[str, Callable], rounds: int, chunk: int) -> dict[str, float]:
    """Steps/s of each variant, trained in interleaved chunks."""
    built = {name: make() for name, make in variants.items()}
    for model, callback in built.values():  # warm-up and fill the buffer past learning_starts
        model.learn(COMMON["learning_starts"] + 1000, callback=callback)
    seconds = dict.fromkeys(built, 0.0)
    names = list(built)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # rotate the order
            model, callback = built[name]
            start = time.perf_counter()
            model.learn(chunk, callback=callback, reset_num_timesteps=False)
            seconds[name] += time.perf_counter() - start
    return {name: rounds * chunk / total for name, total in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=2000, help="steps per variant per round")
    parser.add_argument("--groups", default="td3,sac", help="comma-separated: td3, sac")
    args = parser.parse_args()
    th.set_num_threads(1)
    print(f"{ENV}, 64-64 net, batch 64, {args.rounds} rounds x {args.chunk} steps per variant, 1 torch thread")
    for group in args.groups.split(","):
        rates = measure(GROUPS[group], args.rounds, args.chunk)
        baseline = next(iter(rates.values()))
        for name, rate in rates.items():
            print(f"  {name:42s} {rate:7.1f} steps/s   ratio {rate / baseline:.3f}")


if __name__ == "__main__":
    main()
