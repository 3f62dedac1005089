"""What each algorithm can do, by its YAML name, and the defaults of parameter noise per action space.

Plain data that configuration, launching and analysis read without importing any training code;
the SB3 classes are named by import path and loaded on first use (`Algorithm.load`).
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError


def resolve(path: str) -> Any:
    """The object at "package.module:Name"."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Argument:
    """A constructor argument: its annotation as written, and a check of it where pydantic has one."""

    annotation: str
    check: TypeAdapter | None


@cache
def arguments(cls: type) -> Mapping[str, Argument]:
    """The named arguments of `cls`'s constructors, along its MRO."""
    found: dict[str, Argument] = {}
    for klass in cls.__mro__:  # down the chain of constructors while each passes **kwargs on
        init = klass.__dict__.get("__init__")
        if not inspect.isfunction(init):
            continue
        parameters = inspect.signature(init).parameters.values()
        for parameter in parameters:
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or parameter.name == "self":
                continue
            annotation = parameter.annotation
            written = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
            found.setdefault(parameter.name, Argument(written, _annotation_check(init, parameter)))
        if not any(parameter.kind == parameter.VAR_KEYWORD for parameter in parameters):
            break
    return found


def _annotation_check(init: Any, parameter: inspect.Parameter) -> TypeAdapter | None:
    if parameter.annotation is parameter.empty:
        return None
    holder = type("Annotation", (), {"__annotations__": {parameter.name: parameter.annotation}})
    try:
        return TypeAdapter(typing.get_type_hints(holder, globalns=init.__globals__)[parameter.name])
    except Exception:  # a name only imported for type checkers, or a type pydantic cannot check
        return None


def argument_problem(cls: type, name: str, value: Any) -> str | None:
    """Why `value` cannot be `cls`'s constructor argument `name`, or None."""
    argument = arguments(cls).get(name)
    if argument is None:
        return f"not an argument of {cls.__name__}"
    if argument.check is not None:
        try:
            argument.check.validate_python(value, strict=True)
        except ValidationError:
            return f"{value!r} does not fit {cls.__name__}'s `{name}: {argument.annotation}`"
    return None


@dataclass(frozen=True)
class Algorithm:
    """An algorithm the studies can name: its SB3 classes and what it can do."""

    cls: str  # the SB3 algorithm class, "module:Class"
    policy: str  # its policy with a perturbable acting network
    noisy_policy: str | None = None  # its NoisyNet policy
    stochastic: bool = False  # explores by sampling its own stochastic policy
    discrete: bool = False  # acts in discrete action spaces (value-based)
    prioritized: bool = False  # learns from prioritized replay
    stacked: str | None = None  # its update over E stacked members (engine: stacked), "module:Class"
    on_policy: bool = False  # learns from rollouts of its current policy (PPO, TRPO), not from replay

    @property
    def noisy(self) -> bool:
        return self.noisy_policy is not None

    def load(self) -> type:
        """The SB3 algorithm class."""
        return resolve(self.cls)

    @cache  # noqa: B019  (a handful of frozen registry entries)
    def _parameters(self) -> Mapping[str, inspect.Parameter]:
        return inspect.signature(self.load().__init__).parameters

    def hyperparams(self) -> frozenset[str]:
        """The constructor arguments a study may set under `hyperparams:`."""
        return frozenset(self._parameters()) - {"self", "policy", "env"}

    def policy_class(self, noisy: bool = False) -> type:
        """Its policy class (with NoisyNet layers if `noisy`)."""
        return resolve(self.noisy_policy if noisy else self.policy)

    def default(self, name: str) -> Any:
        """SB3's default for constructor argument `name` (None if it has none)."""
        parameter = self._parameters().get(name)
        return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


ALGORITHMS: dict[str, Algorithm] = {
    "td3": Algorithm(
        "stable_baselines3:TD3", "study.policies:ParamNoiseTD3Policy", stacked="study.stacked.td3:StackedTD3"
    ),
    "ddpg": Algorithm(
        "stable_baselines3:DDPG", "study.policies:ParamNoiseTD3Policy", stacked="study.stacked.td3:StackedTD3"
    ),
    "sac": Algorithm(
        "stable_baselines3:SAC",
        "study.policies:ParamNoiseSACPolicy",
        stochastic=True,
        stacked="study.stacked.sac:StackedSAC",
    ),
    "dqn": Algorithm(
        "study.dqn:DQN",
        "study.policies:ParamNoiseDQNPolicy",
        noisy_policy="study.policies:NoisyDQNPolicy",
        discrete=True,
        prioritized=True,
        stacked="study.stacked.dqn:StackedDQN",
    ),
    "qrdqn": Algorithm(
        "study.dqn:QRDQN",
        "study.policies:ParamNoiseQRDQNPolicy",
        discrete=True,
        stacked="study.stacked.dqn:StackedQRDQN",
    ),
    "ppo": Algorithm("stable_baselines3:PPO", "study.policies:ParamNoiseActorCriticPolicy", on_policy=True),
    "trpo": Algorithm("sb3_contrib:TRPO", "study.policies:ParamNoiseActorCriticPolicy", on_policy=True),
}

#: σ₀, δ and the ε-greedy rate on top, for settings left out (None), by action space (DESIGN.md §3)
PARAM_NOISE_DEFAULTS: dict[str, dict[str, Any]] = {
    "continuous": {"initial_sigma": 0.2, "target_distance": 0.2, "target_epsilon": None, "epsilon": None},
    "discrete": {"initial_sigma": 0.01, "target_distance": None, "target_epsilon": "schedule", "epsilon": 0.0},
}


def param_noise_defaults(
    discrete: bool,
    initial_sigma: float | None = None,
    target_distance: float | None = None,
    target_epsilon: float | Literal["schedule"] | None = None,
    epsilon: float | None = None,
) -> dict[str, Any]:
    """The given settings, with `PARAM_NOISE_DEFAULTS` of the action space for those left out (None)."""
    if target_distance is not None and target_epsilon is not None:
        raise ValueError("target_distance and target_epsilon: choose one way to set δ")
    given = {
        "initial_sigma": initial_sigma,
        "target_distance": target_distance,
        "target_epsilon": target_epsilon,
        "epsilon": epsilon,
    }
    if not discrete:
        for key in ("target_epsilon", "epsilon"):
            if given[key] is not None:
                raise ValueError(f"{key}: only for discrete actions (DQN)")
    resolved = PARAM_NOISE_DEFAULTS["discrete" if discrete else "continuous"].copy()
    if target_distance is not None or target_epsilon is not None:  # δ is given: no default way to set it
        resolved |= {"target_distance": None, "target_epsilon": None}
    return resolved | {key: value for key, value in given.items() if value is not None}
