"""YAML study → validated settings → grid expansion → frozen RunSpecs."""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from study.messages import Problem, did_you_mean, problems, show
from study.registry import (
    ALGORITHMS,
    PARAM_NOISE_DEFAULTS,
    Algorithm,
    argument_problem,
    arguments,
    param_noise_defaults,
)
from study.schedules import canonical, schedule
from study.yamlio import KeyLines, describe_error, load_yaml

FULL_BUDGET = "full"
MAX_SEED = 2**32 - 1  # numpy seeds are 32-bit
Scalar = bool | int | float | str | None


class StudyError(ValueError):
    """Bad study input: the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _k_or_episode(value: Any) -> Any:
    if value == "episode" or (_is_int(value) and value > 0):
        return value
    raise ValueError("must be a positive integer k or 'episode'")


# a resampling interval: every episode start, and every k steps within an episode
Interval = Annotated[int | Literal["episode"], BeforeValidator(_k_or_episode)]


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class ParamNoiseSettings(_Strict):
    """Parameter-space noise (DESIGN.md §3). For discrete actions (DQN) the defaults are
    σ₀ = 0.01, δ from `target_epsilon` (the DQN's own ε schedule) and no ε-greedy on top."""

    interval: Interval = "episode"
    adaptive: bool = True
    initial_sigma: PositiveFloat = 0.2
    target_distance: PositiveFloat | None = 0.2
    target_epsilon: Annotated[float, Field(gt=0.0, le=1.0)] | Literal["schedule"] | None = None
    epsilon: Probability | None = None
    adapt_every: PositiveInt = 100
    alpha: float = Field(1.01, gt=1.0)
    follow_learner: bool = False
    distance: Literal["kl", "rms"] | None = None  # on-policy algorithms: how d is measured (default: kl)

    def for_actions(self, discrete: bool) -> ParamNoiseSettings:
        """These settings with the defaults of a continuous or a discrete action space, from the
        one table of them, `study.registry.PARAM_NOISE_DEFAULTS` (the field defaults
        above are its continuous ones, kept here so that run hashes leave them out)."""
        if not discrete and "target_distance" in self.model_fields_set and self.target_distance is None:
            raise ValueError("target_distance: needed for continuous actions")
        given = {
            key: getattr(self, key) if key in self.model_fields_set else None
            for key in PARAM_NOISE_DEFAULTS["discrete"]
        }
        return self.model_copy(update=param_noise_defaults(discrete, **given))


#: the length of a colored-noise sequence: at least two steps, so that it has a frequency
SequenceLength = Annotated[int, Field(ge=2)]


class ActionNoiseSettings(_Strict):
    """Action-space noise, in the normalized [-1, 1] action space: Gaussian ("normal"),
    Ornstein–Uhlenbeck ("ou", with θ) or colored ("colored": 1/f^β over time, a new sequence of
    `seq_len` steps, default the env's episode limit, at every episode start)."""

    type: Literal["none", "normal", "ou", "colored"] = "none"
    sigma: NonNegativeFloat = 0.1
    theta: PositiveFloat = 0.15
    beta: NonNegativeFloat = 1.0
    seq_len: SequenceLength | None = None


class SamplingNoiseSettings(_Strict):
    """SAC's exploring samples with colored noise (1/f^β over time) in place of white Gaussian
    noise, at the policy's own scale; a new sequence of `seq_len` steps (default the env's
    episode limit) at every episode start."""

    beta: NonNegativeFloat = 1.0
    seq_len: SequenceLength | None = None


class GSDESettings(_Strict):
    """Generalized state-dependent exploration (SAC's `use_sde`), resampled like parameter
    noise: at every episode start and every `interval` steps."""

    interval: Interval = "episode"
    log_std_init: float = -3.0


class NoisyNetSettings(_Strict):
    """NoisyNet (Fortunato et al.): noisy fully connected layers in the Q-network.

    `resample` is when the acting network draws new noise: "step" (before every action, as in
    the paper's algorithm; the default), "gradient_step" (keep the noise of the last gradient
    step, as Rainbow implementations do) or k (every k environment steps and every episode start).
    Each gradient step always draws fresh, independent noise for the online and the target network.
    """

    factorised: bool = True
    sigma0: PositiveFloat | None = None  # 0.5 factorised, 0.017 independent
    layers: PositiveInt | Literal["all"] = "all"  # the last fully connected layers made noisy
    resample: PositiveInt | Literal["step", "gradient_step"] = "step"
    epsilon: Probability = 0.0  # ε-greedy on top
    log_every: PositiveInt = 1_000  # steps between records of the mean |σ|

    @property
    def initial_sigma(self) -> float:
        return self.sigma0 if self.sigma0 is not None else (0.5 if self.factorised else 0.017)


class EzGreedySettings(_Strict):
    """εz-greedy (Dabney et al. 2021): with probability ε (SB3's schedule) a random action
    repeated for n ~ zeta(μ) steps (at most `max_duration`, never past the episode's end)."""

    mu: float = Field(2.0, gt=1.0)
    max_duration: PositiveInt = 10_000


class ExplorationSettings(_Strict):
    param_noise: ParamNoiseSettings | None = None
    action_noise: ActionNoiseSettings = ActionNoiseSettings()
    gsde: GSDESettings | None = None
    noisy_net: NoisyNetSettings | None = None
    sampling_noise: SamplingNoiseSettings | None = None  # SAC: colored samples of its own policy
    ez_greedy: EzGreedySettings | None = None  # DQN/QR-DQN: temporally extended ε-greedy
    mean_actions: bool = False  # SAC: explore with the policy's mean, not by sampling it

    @model_validator(mode="after")
    def _one_structured_noise(self) -> ExplorationSettings:
        structured = ("param_noise", "gsde", "noisy_net", "sampling_noise", "ez_greedy")
        chosen = [k for k in structured if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)}: choose one")
        if self.gsde is not None and self.mean_actions:
            raise ValueError("gsde and mean_actions: gSDE explores by sampling its policy")
        if self.sampling_noise is not None and self.mean_actions:
            raise ValueError("sampling_noise and mean_actions: with mean actions the policy is never sampled")
        return self


class ProportionalReplay(_Strict):
    """Prioritized replay, proportional variant: p = |δ| + ε on a sum-tree (Schaul et al.)."""

    type: Literal["proportional"]
    alpha: NonNegativeFloat = 0.6
    beta0: Probability = 0.4  # annealed linearly to 1 over training
    eps: PositiveFloat = 1e-6


class RankReplay(_Strict):
    """Prioritized replay, rank-based variant: p = 1 / rank(|δ|) (Schaul et al.)."""

    type: Literal["rank"]
    alpha: NonNegativeFloat = 0.7
    beta0: Probability = 0.5
    sort_every: PositiveInt = 1_000  # samples between full re-sorts of the priority order


class UniformReplay(_Strict):
    type: Literal["uniform"] = "uniform"


ReplaySettings = Annotated[UniformReplay | ProportionalReplay | RankReplay, Field(discriminator="type")]


class EvalSettings(_Strict):
    freq: PositiveInt | Literal["episode"] = 10_000  # steps, or after every training episode
    episodes: PositiveInt = 10
    stop_when_solved: bool = False  # stop once the env's optimal return was reached `solved_window` times in a row
    solved_window: PositiveInt = 100


TrainFreq = PositiveInt | Literal["episode"] | tuple[PositiveInt, Literal["step", "episode"]]


# a number (YAML reads 3e-4 as a string), or a schedule: lin_<initial rate>
Rate = Annotated[PositiveFloat | str, BeforeValidator(canonical)]


EPISODE_TRAINING = (1, "episode")  # SB3's train_freq for training at the end of each episode


class Hyperparams(_Strict):
    """SB3 constructor arguments; unset ones keep SB3's defaults. Those named here are checked
    here; any other argument of the algorithm's constructor is taken as given and checked
    against its signature (`_SharedSettings._hyperparams_fit_algo`)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    learning_rate: Rate | None = None  # or lin_<initial rate>
    buffer_size: PositiveInt | None = None
    learning_starts: int | None = Field(None, ge=0)
    batch_size: PositiveInt | None = None
    tau: float | None = Field(None, gt=0, le=1)
    gamma: float | None = Field(None, gt=0, le=1)
    train_freq: TrainFreq | None = None
    gradient_steps: int | None = Field(None, ge=-1)
    exploration_fraction: Probability | None = None
    exploration_initial_eps: Probability | None = None
    exploration_final_eps: Probability | None = None
    max_grad_norm: PositiveFloat | None = None
    policy_delay: PositiveInt | None = None
    target_policy_noise: NonNegativeFloat | None = None
    target_noise_clip: NonNegativeFloat | None = None
    ent_coef: PositiveFloat | Annotated[str, Field(pattern=r"^auto(_\d+(\.\d*)?)?$")] | None = None
    target_entropy: float | Literal["auto"] | None = None
    target_update_interval: PositiveInt | None = None

    def sb3_kwargs(self) -> dict[str, Any]:
        """The set hyperparameters, as SB3 expects them."""
        kwargs = self.model_dump(exclude_none=True)
        if "learning_rate" in kwargs:
            kwargs["learning_rate"] = schedule(kwargs["learning_rate"])
        if kwargs.get("train_freq") == "episode":
            kwargs["train_freq"] = EPISODE_TRAINING
        if kwargs.get("train_freq") == EPISODE_TRAINING and "gradient_steps" not in kwargs:
            kwargs["gradient_steps"] = -1  # as many gradient steps as environment steps
        return kwargs


#: constructor arguments the harness sets itself, and the study's key that sets each
HARNESS_ARGUMENTS = {
    "policy": "algo and exploration (they choose the policy class)",
    "env": "envs",
    "seed": "seeds",
    "device": "resources.gpus",
    "policy_kwargs": "policy_kwargs (at the top level of the study)",
    "action_noise": "exploration.action_noise",
    "use_sde": "exploration.gsde",
    "sde_sample_freq": "exploration.gsde.interval",
    "replay_buffer_class": "replay.type",
    "replay_buffer_kwargs": "replay",
    "tensorboard_log": "the harness (each run records its own tables)",
    "verbose": "the harness",
    "_init_setup_model": "the harness",
    "optimize_memory_usage": "nothing: SB3 refuses it with timeout handling, which the harness keeps",
}
#: rl-baselines3-zoo hyperparameters that are no constructor arguments, and the study's key for each
ZOO_KEYS = {
    "n_timesteps": "total_steps",
    "noise_type": "exploration.action_noise.type",
    "noise_std": "exploration.action_noise.sigma",
    "env_wrapper": "env_wrapper",
    "n_envs": "nothing: each run steps one env",
    "normalize": "normalize (at the top level of the study)",
    "frame_stack": "frame_stack (at the top level of the study)",
}
#: policy arguments the harness sets itself, and the study's key that sets each
HARNESS_POLICY_KWARGS = {
    "net_arch": "net_arch (a list, or {pi: [...], qf: [...]})",
    "activation_fn": "activation",
    "layer_norm": "layer_norm",
    "features_extractor_class": "features_extractor",
    "explore_mean": "exploration.mean_actions",
    "use_sde": "exploration.gsde",
    "noisy_layers": "exploration.noisy_net.layers",
    "noisy_kwargs": "exploration.noisy_net",
    "lr_schedule": "hyperparams.learning_rate",
    "observation_space": "the env",
    "action_space": "the env",
}


def _mapping(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(
            "write it as a YAML mapping, e.g. {log_std_init: -3, n_critics: 1} (Python expressions are not read)"
        )
    return value


class NormalizeSettings(_Strict):
    """SB3's VecNormalize of the training env, as rl-zoo3's `normalize`: running statistics of
    the observations (and of the discounted return, to scale rewards); the replay keeps raw
    transitions and normalizes them when sampled, and evaluations see observations normalized
    by the training statistics of the moment."""

    norm_obs: bool = True
    norm_reward: bool = True
    clip_obs: PositiveFloat = 10.0
    clip_reward: PositiveFloat = 10.0
    gamma: Annotated[float, Field(gt=0, le=1)] | None = None  # of the return; default: the algorithm's gamma
    epsilon: PositiveFloat = 1e-8


def _normalize_switch(value: Any) -> Any:
    if value is True:
        return {}
    if value is False:
        return None
    return _mapping(value)


class ActorCriticArch(_Strict):
    """Separate hidden layers for the actor (`pi`) and the critics (`qf`)."""

    pi: list[PositiveInt]
    qf: list[PositiveInt]


class Resources(_Strict):
    cpus: PositiveInt = 1
    gpus: NonNegativeFloat = 0
    group_size: PositiveInt | None = None  # engine: stacked: at most this many runs per group (default 32)


class _SharedSettings(_Strict):
    """Settings shared by a study file and each of its runs."""

    algo: str
    total_steps: PositiveInt
    max_episodes: PositiveInt | None = None  # stop after this many training episodes
    save_model: bool = True  # keep the final model in the run's folder (model.zip)
    env_kwargs: dict[str, Scalar] = {}
    env_wrapper: Literal["none", "atari"] = "none"
    features_extractor: Literal["flatten", "nature_cnn", "minatar_cnn"] = "flatten"
    replay: ReplaySettings = UniformReplay()
    eval: EvalSettings = EvalSettings()
    hyperparams: Hyperparams = Hyperparams()
    policy_kwargs: Annotated[dict[str, Any], BeforeValidator(_mapping)] = {}  # further arguments of the policy
    normalize: Annotated[NormalizeSettings | None, BeforeValidator(_normalize_switch)] = None  # true: defaults
    frame_stack: Annotated[int, Field(ge=2)] | None = None  # observe the last this many observations
    # hidden layers ([] : a linear head on the features); actor-critic algorithms: also {pi: [...], qf: [...]}
    net_arch: list[PositiveInt] | ActorCriticArch = Field(default_factory=lambda: [400, 300])
    activation: Literal["relu", "tanh"] = "relu"
    layer_norm: bool = False
    exploration: ExplorationSettings = ExplorationSettings()
    engine: Literal["sb3", "stacked"] = "sb3"  # stacked: runs that differ in seed trained together
    resources: Resources = Resources()

    @field_validator("algo")
    @classmethod
    def _known_algo(cls, name: str) -> str:
        if name not in ALGORITHMS:
            known = ", ".join(sorted(ALGORITHMS))
            raise ValueError(f"unknown algorithm {name!r} (known: {known}){did_you_mean(name, ALGORITHMS)}")
        return name

    @model_validator(mode="after")
    def _hyperparams_fit_algo(self) -> _SharedSettings:
        algo = ALGORITHMS[self.algo]
        exploration = self.exploration
        for key, value in (self.hyperparams.model_extra or {}).items():
            where = HARNESS_ARGUMENTS.get(key) or ZOO_KEYS.get(key)
            if where:
                raise ValueError(f"hyperparams.{key}: set by {where}")
            problem = argument_problem(algo.load(), key, value)
            if problem:
                raise ValueError(f"hyperparams.{key}: {problem}{did_you_mean(key, algo.hyperparams())}")
        for key in self.hyperparams.model_dump(exclude_none=True):
            if key not in algo.hyperparams():
                raise ValueError(f"hyperparams.{key}: not a hyperparameter of {self.algo}")
        for key, value in self.policy_kwargs.items():
            policy = algo.policy_class(noisy=exploration.noisy_net is not None and algo.noisy)
            where = HARNESS_POLICY_KWARGS.get(key)
            if key == "log_std_init" and exploration.gsde is not None:
                where = "exploration.gsde.log_std_init"
            if where:
                raise ValueError(f"policy_kwargs.{key}: set by {where}")
            problem = argument_problem(policy, key, value)
            if problem:
                raise ValueError(f"policy_kwargs.{key}: {problem}{did_you_mean(key, arguments(policy))}")
        if self.frame_stack is not None and self.env_wrapper == "atari":
            raise ValueError("frame_stack: env_wrapper atari stacks its 4 frames itself")
        n_steps = (self.hyperparams.model_extra or {}).get("n_steps", 1)
        if n_steps != 1 and self.replay.type != "uniform":
            raise ValueError(
                f"hyperparams.n_steps: n-step returns come from uniform replay only (replay.type: {self.replay.type})"
            )
        on_policy_problem = _on_policy_problem(self, algo)
        if on_policy_problem:
            raise ValueError(on_policy_problem)
        if isinstance(self.net_arch, ActorCriticArch) and algo.discrete:
            raise ValueError(f"net_arch: {self.algo} has one network: a list of its hidden layers")
        if exploration.gsde is not None and "use_sde" not in algo.hyperparams():
            raise ValueError(f"exploration.gsde: {self.algo} has no gSDE (SAC has)")
        if exploration.ez_greedy is not None and not algo.discrete:
            raise ValueError(f"exploration.ez_greedy: {self.algo} has continuous actions (dqn, qrdqn act ε-greedily)")
        if exploration.sampling_noise is not None and not algo.stochastic:
            raise ValueError(f"exploration.sampling_noise: {self.algo} does not sample its policy (sac does)")
        if exploration.mean_actions and not algo.stochastic:
            raise ValueError(f"exploration.mean_actions: {self.algo} always explores with its deterministic policy")
        if exploration.mean_actions and exploration.param_noise is not None:
            raise ValueError(
                f"exploration.mean_actions: {self.algo} would act with its unperturbed mean, so "
                "exploration.param_noise would never act; choose one"
            )
        if exploration.noisy_net is not None and not algo.noisy:
            raise ValueError(f"exploration.noisy_net: {self.algo} has no NoisyNet policy (dqn has)")
        if self.replay.type != "uniform" and not algo.prioritized:
            raise ValueError(f"replay.type: {self.algo} cannot learn from prioritized replay (dqn can)")
        if exploration.action_noise.type != "none" and algo.discrete:
            raise ValueError(f"exploration.action_noise: {self.algo} has discrete actions")
        if exploration.param_noise is not None:
            try:
                param_noise = exploration.param_noise.for_actions(algo.discrete)
            except ValueError as err:
                raise ValueError(f"exploration.param_noise.{err}") from None
            object.__setattr__(self, "exploration", exploration.model_copy(update={"param_noise": param_noise}))
        return self

    @model_validator(mode="after")
    def _engine_runs_it(self) -> _SharedSettings:
        if self.engine == "stacked":
            problem = stacked_engine_problem(self)
            if problem:
                raise ValueError(f"{problem} (engine: stacked; engine: sb3 runs it)")
        return self


def _on_policy_problem(settings: _SharedSettings, algo: Algorithm) -> str | None:
    """What in `settings` only an off-policy algorithm can have (or the reverse), or None."""
    exploration, noise = settings.exploration, settings.exploration.param_noise
    if not algo.on_policy:
        if noise is not None and noise.distance is not None:
            return (
                f"exploration.param_noise.distance: {settings.algo} measures d its own way (rms for continuous, "
                "kl for discrete actions); the choice is for on-policy algorithms (ppo, trpo)"
            )
        return None
    unsupported = {
        "exploration.action_noise": exploration.action_noise.type != "none",
        "exploration.gsde": exploration.gsde is not None,
        "exploration.sampling_noise": exploration.sampling_noise is not None,
        "exploration.mean_actions": exploration.mean_actions,
        "replay.type": settings.replay.type != "uniform",
        "net_arch": isinstance(settings.net_arch, ActorCriticArch),
        "exploration.param_noise.adapt_every": noise is not None and "adapt_every" in noise.model_fields_set,
        "exploration.param_noise.follow_learner": noise is not None and noise.follow_learner,
        # the update must see the rollout's rows in order, each with its segment
        "hyperparams.sub_sampling_factor": noise is not None
        and (settings.hyperparams.model_extra or {}).get("sub_sampling_factor", 1) != 1,
    }
    for key, present in unsupported.items():
        if present:
            return (
                f"{key}: not for {settings.algo}, which learns on-policy (parameter noise, adapted once per "
                "rollout, is its exploration besides its own Gaussian; net_arch: a list for both networks)"
            )
    return None


def stacked_engine_problem(settings: _SharedSettings) -> str | None:
    """What in `settings` the stacked engine cannot run yet, or None."""
    algo = ALGORITHMS[settings.algo]
    if algo.stacked is None:
        stacked = ", ".join(name for name, entry in ALGORITHMS.items() if entry.stacked)
        return f"algo: {settings.algo} has no stacked update yet (stacked: {stacked})"
    exploration = settings.exploration
    unsupported = {
        "exploration.noisy_net": exploration.noisy_net is not None,
        "features_extractor": settings.features_extractor != "flatten",
        "env_wrapper": settings.env_wrapper != "none",
        "normalize": settings.normalize is not None,
    }
    optimizer = settings.policy_kwargs.get("optimizer_kwargs") or {}
    unsupported |= {f"policy_kwargs.optimizer_kwargs.{key}": key not in STACKED_ADAM for key in optimizer}
    for key, present in unsupported.items():
        if present:
            return f"{key}: not stacked yet"
    return None


#: the arguments of torch's Adam that the stacked engine's Adam takes
STACKED_ADAM = {"betas", "eps", "weight_decay"}


def _check_env_id(env_id: str) -> str:
    """A registered gymnasium id, or `module:EnvId` (gymnasium imports `module` first)."""
    import importlib

    import gymnasium as gym

    import study.envs  # noqa: F401  (registers the project's envs)

    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"cannot import module {module!r} for environment {env_id!r}: {err}") from None
        env_id = name
    if env_id not in gym.registry:
        hint = did_you_mean(env_id, gym.registry) or " (not registered with gymnasium)"
        raise ValueError(f"unknown environment id {env_id!r}{hint}")
    return f"{module}:{env_id}" if module else env_id


class _EnvFacts(NamedTuple):
    discrete: bool  # its actions
    solvable: bool  # it has an `optimal_return` to reach (eval.stop_when_solved)


@functools.cache
def _env_facts(env_id: str, env_kwargs: str) -> _EnvFacts:
    """What the settings need to know of an environment; builds it once, which also checks `env_kwargs`."""
    import gymnasium as gym

    try:
        env = gym.make(env_id, **json.loads(env_kwargs))
    except Exception as err:  # noqa: BLE001  (any construction error is the user's input)
        raise ValueError(f"env_kwargs: cannot make {env_id} with {env_kwargs}: {err}") from None
    env.close()
    solvable = getattr(env.unwrapped, "optimal_return", None) is not None
    return _EnvFacts(isinstance(env.action_space, gym.spaces.Discrete), solvable)


class RunSettings(_SharedSettings):
    """Everything that determines one run, but the seed."""

    env: str

    @field_validator("env")
    @classmethod
    def _known_env(cls, env_id: str) -> str:
        return _check_env_id(env_id)

    @model_validator(mode="after")
    def _env_fits_algo(self) -> RunSettings:
        facts = _env_facts(self.env, json.dumps(self.env_kwargs, sort_keys=True))
        if facts.discrete != ALGORITHMS[self.algo].discrete:
            kind = "discrete" if facts.discrete else "continuous"
            raise ValueError(f"algo: {self.algo} cannot act in {self.env}, whose actions are {kind}")
        if self.eval.stop_when_solved and not facts.solvable:
            raise ValueError(f"eval.stop_when_solved: {self.env} has no optimal_return to reach")
        return self


class _Range(_Strict):
    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if not self.low < self.high:
            raise ValueError(f"low must be below high (got low={self.low}, high={self.high})")
        if getattr(self, "type", "").startswith("log") and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0 (got {self.low})")
        return self


class FloatParam(_Range):
    type: Literal["float", "log_float"]
    low: float
    high: float
    step: PositiveFloat | None = None


class IntParam(_Range):
    type: Literal["int", "log_int"]
    low: int
    high: int
    step: PositiveInt = 1


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)


SearchParam = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
Objective = Literal["return", "continuity_cost"]


class TuneSettings(_Strict):
    """An Optuna search over a study's settings (`python -m study tune`)."""

    trials: PositiveInt
    search_space: dict[str, SearchParam] = Field(min_length=1)  # dotted setting → distribution
    objectives: list[Objective] = Field(["return"], min_length=1, max_length=2)
    sampler: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    pruner: Literal["median", "successive_halving", "none"] = "median"
    parallel: PositiveInt | None = None  # trials at a time (default: as many as the workers)
    seed: int = 0  # the sampler's

    @model_validator(mode="after")
    def _consistent(self) -> TuneSettings:
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError("objectives: each objective once")
        if len(self.objectives) > 1 and self.pruner != "none":
            raise ValueError("pruner: Optuna prunes single-objective searches only; use pruner: none")
        if self.sampler == "grid":
            for key, param in self.search_space.items():
                if isinstance(param, FloatParam) and param.step is None:
                    raise ValueError(f"search_space.{key}: the grid sampler needs choices or a step")
        return self


def level_label(value: Any) -> str:
    """A factor level as the YAML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _labels(columns: Any) -> Any:
    """Columns → levels as the YAML writes them (each column: one level or a list of them)."""
    if not isinstance(columns, dict):
        return columns
    return {k: [level_label(x) for x in v] if isinstance(v, list) else [level_label(v)] for k, v in columns.items()}


Level = Annotated[str, BeforeValidator(level_label)]
ColumnLevels = Annotated[dict[str, Annotated[list[str], Field(min_length=1)]], BeforeValidator(_labels)]


class CellOverride(_Strict):
    """Settings for the runs whose env and factor levels `match` names (a column: one level or several)."""

    match: Annotated[ColumnLevels, Field(min_length=1)]
    set: dict[str, Any]

    def matches(self, cell: Mapping[str, str]) -> bool:
        """Whether a run with these env and factor levels is one this override sets."""
        return all(cell.get(column) in levels for column, levels in self.match.items())


class Comparison(_Strict):
    """A probability of improvement the study's report computes: level `x` of `factor` against
    level `y`, over the runs whose env and other factors take the levels `where` names (all runs
    if it names none)."""

    factor: str
    x: Level
    y: Level
    where: ColumnLevels = {}


class StudyFile(_SharedSettings):
    """The schema of a study YAML file (after the chosen budget is applied)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    envs: list[str] = Field(min_length=1)
    seeds: PositiveInt | list[NonNegativeInt] = 1  # N: seeds 0 to N - 1; or the seeds
    budgets: dict[str, PositiveInt | dict[str, Any]]
    env_overrides: dict[str, dict[str, Any]] = {}
    grid: dict[str, list[Any] | dict[str, dict[str, Any]]] = {}
    cell_overrides: list[CellOverride] = []  # settings of the grid cells they match, applied after their levels
    compare: list[Comparison] = []  # the report's probabilities of improvement (default: each level vs the last)
    labels: dict[str, dict[Level, str]] = {}  # factor → level → how the report names it (default: from the level)
    checkpoint_every: PositiveInt | None = None
    tune: TuneSettings | None = None  # for `python -m study tune`

    @field_validator("envs")
    @classmethod
    def _known_envs(cls, envs: list[str]) -> list[str]:
        return [_check_env_id(e) for e in envs]

    @field_validator("seeds", mode="before")
    @classmethod
    def _valid_seeds(cls, seeds: Any) -> Any:
        if _is_int(seeds):
            if seeds < 1:
                raise ValueError(f"a number of seeds must be at least 1 (got {seeds})")
            return seeds
        if not isinstance(seeds, list):
            raise ValueError(f"must be a number of seeds or a list of seeds (got {show(seeds)})")
        if not seeds:
            raise ValueError("an empty list of seeds runs nothing")
        for seed in seeds:
            if not (_is_int(seed) and 0 <= seed <= MAX_SEED):
                raise ValueError(f"{show(seed)} is not a seed: seeds are integers from 0 to {MAX_SEED}")
        if twice := [seed for seed, n in Counter(seeds).items() if n > 1]:
            raise ValueError(f"seed {twice[0]} is listed twice: its runs would be the same runs")
        return seeds

    @field_validator("budgets")
    @classmethod
    def _has_full(cls, budgets: dict[str, Any]) -> dict[str, Any]:
        if FULL_BUDGET not in budgets:
            raise ValueError(f"must name the study's {FULL_BUDGET!r} budget")
        return budgets

    @field_validator("grid")
    @classmethod
    def _non_empty_levels(cls, grid: dict[str, Any]) -> dict[str, Any]:
        for factor, levels in grid.items():
            if len(levels) == 0:
                raise ValueError(f"factor {factor!r} has no levels")
        return grid

    @model_validator(mode="after")
    def _overrides_name_envs(self) -> StudyFile:
        for env in self.env_overrides:
            if env not in self.envs:
                raise ValueError(f"env_overrides.{env}: not one of envs{did_you_mean(env, self.envs)}")
        return self

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


class RunSpec(_Strict):
    """One run of a study: frozen, hashable, picklable."""

    study: str
    budget: str
    seed: int
    factors: dict[str, str] = {}
    settings: RunSettings
    checkpoint_every: PositiveInt | None = None  # steps; does not change the results

    @property
    def env(self) -> str:
        return self.settings.env

    @property
    def spec_hash(self) -> str:
        """Short hash of everything that determines the run's results. Settings at their
        defaults are left out, so that a new setting (with a default that keeps the old
        behaviour) does not orphan the results of existing runs. The stacked engine's group
        size and whether the final model is kept change no result and are left out too."""
        unscored = {"resources": {"group_size"}, "save_model": True}  # they change no result
        settings = self.settings.model_dump(mode="json", exclude_defaults=True, exclude=unscored)
        if settings.get("resources") == {}:
            del settings["resources"]
        payload = json.dumps({"settings": settings, "seed": self.seed}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:8]

    @property
    def run_id(self) -> str:
        parts = [self.settings.env.replace("/", "-")]
        parts += [f"{name}={label}" for name, label in self.factors.items()]
        parts += [f"s{self.seed}", self.spec_hash]
        return re.sub(r"[^A-Za-z0-9_.=+-]", "-", "_".join(parts))


class Study(BaseModel):
    """A validated study: its file, the budget in force and the expanded grid."""

    model_config = ConfigDict(frozen=True)

    path: Path
    budget: str
    file: StudyFile
    factor_levels: dict[str, list[str]]
    factor_keys: dict[str, str]  # column → the grid key it came from
    runs: list[RunSpec]
    only: dict[str, list[str]] = {}  # the selection `select_runs` made: column → levels kept

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def factors(self) -> list[str]:
        """The factor columns whose levels vary among the runs (one at a single level is a constant)."""
        return [column for column, levels in self.factor_levels.items() if len(levels) > 1]

    @property
    def constants(self) -> dict[str, str]:
        """The factor columns held at one level (by the budget's `levels` or a selection), with it."""
        return {column: levels[0] for column, levels in self.factor_levels.items() if len(levels) == 1}


# ---------------------------------------------------------------------------
# Overrides on plain dicts, keyed by dotted paths


def set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict; mappings merge into mappings, key by key, with their
    own keys taken as they are (a search space's `hyperparams.learning_rate` stays one key)."""
    *parents, leaf = dotted.split(".")
    node = doc
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    _merge(node, leaf, value)


def _merge(node: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict) and isinstance(node.get(key), dict):
        for sub_key, sub in value.items():
            _merge(node[key], sub_key, sub)
    else:
        node[key] = copy.deepcopy(value)


def apply_overrides(doc: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for key, value in overrides.items():
        set_path(out, str(key), value)
    return out


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` items (the command line's `--set`) as settings: each value read as YAML."""
    sets: dict[str, Any] = {}
    for item in items:
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not re.fullmatch(r"[^.=\s]+(\.[^.=\s]+)*", key):
            raise StudyError(f"--set {item}: expected KEY=VALUE, with KEY a dotted setting (hyperparams.gamma=0.98)")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as err:
            raise StudyError(f"--set {key}: its value is not YAML ({str(err).splitlines()[0]})") from None
        sets.pop(key, None)  # given again: applied in its latest place
        sets[key] = parsed
    return sets


def parse_only(items: Sequence[str]) -> dict[str, list[str]]:
    """`COLUMN=LEVEL[,COLUMN=LEVEL…]` items (the command line's `--only`): column → levels."""
    only: dict[str, list[str]] = {}
    for item in items:
        for pair in re.split(r",(?=\s*[^,=\s]+\s*=)", item):  # a level may hold commas: [64,64]
            column, equals, level = (part.strip() for part in pair.partition("="))
            if not equals or not column or not level:
                raise StudyError(f"--only {item}: expected COLUMN=LEVEL pairs, e.g. env=Hopper-v5,interval=8,seed=0")
            only.setdefault(column, []).append(level)
    return only


def select_runs(study: Study, only: Mapping[str, Sequence[str]]) -> Study:
    """The study with only the runs whose `env`, `seed` or factor columns take one of the given
    levels (a column given twice keeps either level); raises StudyError naming what matches nothing."""
    if not only:
        return study
    columns: dict[str, list[str]] = {
        "env": list(dict.fromkeys(spec.env for spec in study.runs)),
        **study.factor_levels,
        "seed": list(dict.fromkeys(str(spec.seed) for spec in study.runs)),
    }
    for column, levels in only.items():
        if column not in columns:
            raise StudyError(
                f"--only {column}: {study.name} has no column {column!r} (have: {', '.join(columns)})"
                + did_you_mean(column, columns)
            )
        for level in levels:
            if level not in columns[column]:
                raise StudyError(
                    f"--only {column}={level}: no such level (have: {', '.join(columns[column])})"
                    + did_you_mean(level, columns[column])
                )

    def level(spec: RunSpec, column: str) -> str:
        return spec.env if column == "env" else str(spec.seed) if column == "seed" else spec.factors[column]

    runs = [spec for spec in study.runs if all(level(spec, c) in levels for c, levels in only.items())]
    if not runs:
        given = ",".join(f"{c}={v}" for c, levels in only.items() for v in levels)
        raise StudyError(f"--only {given}: matches no run of {study.name}")
    kept = {c: [level for level in levels if level in only.get(c, levels)] for c, levels in study.factor_levels.items()}
    chosen = {c: sorted(set(only[c]), key=columns[c].index) for c in sorted(only)}
    return study.model_copy(update={"runs": runs, "factor_levels": kept, "only": chosen})


def _factor_levels(grid: dict[str, Any]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Factor column name → [(level label, overrides)], in YAML order."""
    short = [name.rsplit(".", 1)[-1] for name in grid]
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for (name, levels), column in zip(grid.items(), short, strict=True):
        column = column if short.count(column) == 1 else name
        if isinstance(levels, list):
            out[column] = [(level_label(v), {name: v}) for v in levels]
        else:
            out[column] = [(str(label), dict(over)) for label, over in levels.items()]
    return out


# ---------------------------------------------------------------------------
# Where each setting was written


def _written(node: Any, parts: tuple[str, ...]) -> tuple[tuple[Any, ...], int]:
    """The key path in `node` that sets `parts` (or its longest set parent), and how many parts it sets."""
    if not parts:
        return (), 0
    if not isinstance(node, Mapping):
        return (), len(parts)  # a value that replaces everything below it
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in node:
            path, covered = _written(node[key], parts[n:])
            return (key, *path), n + covered
    return (), 0


@dataclass(frozen=True)
class _Layer:
    """Settings applied over the ones before them, and where they were written."""

    settings: Mapping[str, Any]  # nested or dotted keys, as written
    file: Path | None  # the file they are in; None: the command line
    where: str = ""  # their key in that file ("budgets.smoke", "grid.noise.param"), or the option ("--steps")
    at: tuple[Any, ...] = ()  # the same key, as a path in the file's line index
    lines: KeyLines = field(default_factory=dict)

    def written(self, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], int]:
        return _written(self.settings, tuple(map(str, loc)))

    def line(self, path: tuple[Any, ...] = ()) -> int | None:
        """The line of `path` in the file, or of its nearest parent that has one."""
        full = (*self.at, *path)
        return next((self.lines[full[:n]] for n in range(len(full), 0, -1) if full[:n] in self.lines), None)

    def prefix(self, path: tuple[Any, ...] = ()) -> str:
        """`file:line: where: `, the start of a message about `path` in these settings."""
        line = self.line(path)
        head = "" if self.file is None else f"{self.file}:{line}: " if line else f"{self.file}: "
        return f"{head}{self.where}: " if self.where else head

    def source(self, path: tuple[Any, ...], seen_from: Path | None) -> str:
        """Where `path` was set, for a message about the file `seen_from`: "budgets.smoke, line 40",
        "--steps", "study.yaml, line 9"."""
        line = self.line(path)
        parts = [str(self.file)] if self.file not in (None, seen_from) else []
        parts += [self.where] if self.where else []
        parts += [f"line {line}"] if line else []
        return ", ".join(parts) or str(self.file)


def _origin(layers: list[_Layer], loc: tuple[Any, ...]) -> tuple[_Layer, tuple[Any, ...], bool]:
    """The last layer that set `loc` (where none did, the one that set most of its parents), the key
    path it wrote, and whether it set `loc` itself."""
    best, best_path, best_covered = layers[0], (), 0
    for layer in layers:
        path, covered = layer.written(loc)
        if covered and covered >= best_covered:
            best, best_path, best_covered = layer, path, covered
    return best, best_path, best_covered == len(loc)


def _message(problem: Problem, layers: list[_Layer]) -> str:
    layer, path, _ = _origin(layers, problem.loc)
    key = f"{problem.key}: " if problem.key else ""
    return f"{layer.prefix(path)}{key}{problem.text}"


# ---------------------------------------------------------------------------
# Checks of each resolved run


class _Bound(NamedTuple):
    """A setting that must stay below (`strict`) or at most another one in every run, or `consequence`."""

    key: str
    limit: str
    strict: bool
    consequence: str


RUN_BOUNDS = (
    _Bound("hyperparams.learning_starts", "total_steps", True, "the run would end before its first gradient step"),
    _Bound("hyperparams.batch_size", "hyperparams.buffer_size", False, "every batch would repeat transitions"),
)


def _value(settings: RunSettings, dotted_key: str) -> tuple[Any, bool]:
    """A resolved setting, and whether it is SB3's default (unset hyperparameters)."""
    node: Any = settings
    for part in dotted_key.split("."):
        node = getattr(node, part, None)
    if node is None and dotted_key.startswith("hyperparams."):
        return ALGORITHMS[settings.algo].default(dotted_key.removeprefix("hyperparams.")), True
    return node, False


def _bound_violations(settings: RunSettings, layers: list[_Layer], study: Path) -> list[str]:
    """One message per bound the run breaks, naming where each of the two values came from."""
    out = []
    for bound in RUN_BOUNDS:
        (value, default), (limit, limit_default) = _value(settings, bound.key), _value(settings, bound.limit)
        if value is None or limit is None or (value < limit if bound.strict else value <= limit):
            continue
        loc, limit_loc = tuple(bound.key.split(".")), tuple(bound.limit.split("."))
        layer, path, own = _origin(layers, loc)
        if not own or default:
            layer, path = _Layer({}, study), ()
        head = layer.prefix(path)
        if not layer.where.startswith(f"grid.{bound.key}["):  # a grid level of this very key names it
            head += f"{bound.key}: "
        limit_layer, limit_path, _ = _origin(layers, limit_loc)
        limit_source = limit_layer.source(limit_path, layer.file)
        limit_source = f"SB3's default for {settings.algo}" if limit_default else limit_source
        given = f"{value} (SB3's default for {settings.algo})" if default else f"{value}"
        relation = "below" if bound.strict else "at most"
        out.append(f"{head}{given} must be {relation} {bound.limit} {limit} ({limit_source}), or {bound.consequence}")
    return out


def _which_runs(labels: list[str], total: int) -> str:
    if len(labels) == total:
        return "in every run"
    shown = "; ".join(labels[:3])
    return f"in {shown}" + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")


# ---------------------------------------------------------------------------
# Loading


@functools.cache
def _study_wide() -> dict[str, str]:
    """Study keys that a run's settings refuse, with the reason."""
    reason = "applies to the whole study: a grid level or env override cannot set it"
    return {key: reason for key in StudyFile.model_fields if key not in RunSettings.model_fields}


def _fail(lines: list[str]) -> StudyError:
    return StudyError("\n".join(dict.fromkeys(lines)))


def _read_yaml(path: Path, what: str) -> tuple[dict[str, Any], KeyLines]:
    """A YAML file that must hold a mapping, and the line of each key; StudyError otherwise."""
    if not path.is_file():
        raise StudyError(f"{path}: file not found")
    try:
        raw, lines = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        problems_ = describe_error(exc)
        raise _fail([f"{path}:{line}: {text}" if line else f"{path}: {text}" for line, text in problems_]) from None
    except UnicodeDecodeError:
        raise StudyError(f"{path}: not a text file") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: {what} must be a YAML mapping")
    return raw, lines


def read_yaml_mapping(path: str | Path, what: str = "a study") -> dict[str, Any]:
    """A YAML file that must hold a mapping, with no key given twice; StudyError otherwise."""
    return _read_yaml(Path(path), what)[0]


def load_study(
    path: str | Path,
    budget: str = FULL_BUDGET,
    steps: int | None = None,
    overlay: dict[str, Any] | str | Path | None = None,
    engine: str | None = None,
    sets: Mapping[str, Any] | None = None,
    only: Mapping[str, Sequence[str]] | None = None,
) -> Study:
    """Read, validate and expand a study file; raises StudyError on any bad input.

    :param overlay: settings (dotted keys, or `grid:`) applied after the budget, e.g. the best
        configuration a tuning wrote; a path is read as a YAML file
    :param sets: settings by dotted key (`hyperparams.learning_rate`), applied after the overlay
        (the command line's `--set`, see `parse_sets`); refused where a grid level, env override or
        cell override sets the same key for one of the runs kept
    :param only: the runs kept, by column and levels (the command line's `--only`, see `select_runs`)
    """
    path = Path(path)
    raw, lines = _read_yaml(path, "a study")
    file_layer = _Layer(raw, path, lines=lines)
    doc, layers = raw, [file_layer]

    budgets, picked = raw.get("budgets"), None
    if isinstance(budgets, dict) and budget not in budgets:
        have = ", ".join(map(str, budgets))
        raise StudyError(
            f"{file_layer.prefix(('budgets',))}budgets: no budget named {budget!r} (have: {have})"
            + did_you_mean(budget, budgets)
        )
    if isinstance(budgets, dict):
        given = budgets[budget]
        chosen = {"total_steps": given} if _is_int(given) else given
        budget_layer = _Layer(chosen, path, f"budgets.{budget}", ("budgets", budget), lines)
        if not isinstance(chosen, dict):
            what = "must be a step count or a mapping of settings"
            raise StudyError(f"{budget_layer.prefix()}{what} (got {show(given)})")
        if _is_int(given) and given < 1:
            raise StudyError(f"{budget_layer.prefix()}a step count must be at least 1 (got {given})")
        if {"budgets", "grid", "name", CELLS} & set(chosen):
            raise StudyError(
                f"{budget_layer.prefix()}may not set name, budgets, grid or {CELLS} (levels: picks levels of the grid)"
            )
        picked = chosen.get(BUDGET_LEVELS_KEY)
        chosen = {k: v for k, v in chosen.items() if k != BUDGET_LEVELS_KEY}
        doc = apply_overrides(doc, chosen)
        layers.append(budget_layer)
    grid_layer = file_layer
    if overlay is not None:
        if isinstance(overlay, dict):
            overlay_layer = _Layer(overlay, path)
        else:
            settings, overlay_lines = _read_yaml(Path(overlay), "an overlay")
            overlay_layer = _Layer(settings, Path(overlay), lines=overlay_lines)
        if {"budgets", "name", CELLS} & set(overlay_layer.settings):
            raise StudyError(f"{overlay_layer.prefix()}an overlay may not set name, budgets or {CELLS}")
        grid = overlay_layer.settings.get("grid")
        doc = apply_overrides(doc, {k: v for k, v in overlay_layer.settings.items() if k != "grid"})
        if grid is not None:
            doc["grid"], grid_layer = grid, overlay_layer
            layers[0] = _Layer({k: v for k, v in raw.items() if k != "grid"}, path, lines=lines)
        layers.append(overlay_layer)
    for key, value in (sets or {}).items():
        if key.split(".")[0] in {"name", "budgets", "grid", CELLS}:
            raise StudyError(f"--set {key}: may not set name, budgets, grid or {CELLS} (--only picks runs of the grid)")
        doc = apply_overrides(doc, {key: value})
        layers.append(_Layer({key: value}, None, "--set"))
    if steps is not None:
        doc = doc | {"total_steps": steps}
        layers.append(_Layer({"total_steps": steps}, None, "--steps"))
    if engine is not None:
        doc = doc | {"engine": engine}
        layers.append(_Layer({"engine": engine}, None, "--engine"))

    try:
        file = StudyFile.model_validate(doc)
    except ValidationError as err:
        raise _fail([_message(p, layers) for p in problems(err, StudyFile)]) from None
    keep = None if picked is None else _kept_levels(_factor_levels(file.grid), picked, budget_layer)
    envs = {
        *_names(raw.get("envs")),
        *(
            e
            for b in (budgets if isinstance(budgets, dict) else {}).values()
            if isinstance(b, dict)
            for e in _names(b.get("envs"))
        ),
    }
    study = select_runs(_expand(path, budget, file, doc, layers, grid_layer, keep, envs | set(file.envs)), only or {})
    _check_sets(sets or {}, study)
    return study


def _names(envs: Any) -> list[str]:
    """The env ids a file's or budget's `envs` lists (nothing, if it is not a list)."""
    return [str(e) for e in envs] if isinstance(envs, list) else []


BUDGET_LEVELS_KEY = "levels"  # in a budget: the levels of grid factors it runs, e.g. {algo: [TD3]}
CELLS = "cell_overrides"


def _kept_levels(
    levels: dict[str, list[tuple[str, dict[str, Any]]]], picked: Any, layer: _Layer
) -> dict[str, list[str]]:
    """The levels that a budget's `levels` keeps (factor column → labels), checked against the grid."""
    head = layer.prefix((BUDGET_LEVELS_KEY,)) + f"{BUDGET_LEVELS_KEY}: "
    if not isinstance(picked, dict) or not picked or any(v == [] for v in picked.values()):
        raise StudyError(f"{head}must map factor columns to the levels to run (got {show(picked)})")
    keep: dict[str, list[str]] = {}
    for column, given in picked.items():
        if str(column) not in levels:
            names = list(levels)
            raise StudyError(
                f"{head}{column}: no such factor (have: {', '.join(names)})" + did_you_mean(str(column), names)
            )
        have = [label for label, _ in levels[str(column)]]
        keep[str(column)] = [level_label(v) for v in (given if isinstance(given, list) else [given])]
        for level in keep[str(column)]:
            if level not in have:
                raise StudyError(
                    f"{head}{column}: no level {level!r} (have: {', '.join(have)})" + did_you_mean(level, have)
                )
    return keep


def _check_sets(sets: Mapping[str, Any], study: Study) -> None:
    """Refuse a `--set` of a setting that a grid level, env override or cell override sets for
    one of the study's runs: it would win over the `--set`."""
    file = study.file
    by_levels = {
        f"grid.{column}": set().union(
            *(_dotted(over) for label, over in levels if label in study.factor_levels[column])
        )
        for column, levels in _factor_levels(file.grid).items()
    }
    envs = {spec.env for spec in study.runs}
    by_levels |= {f"env_overrides.{env}": _dotted(over) for env, over in file.env_overrides.items() if env in envs}
    cells = [{"env": spec.env, **spec.factors} for spec in study.runs]
    by_levels |= {
        f"{CELLS}[{i}]": _dotted(cell.set)
        for i, cell in enumerate(file.cell_overrides)
        if any(cell.matches(run) for run in cells)
    }
    for key in sets:
        for where, paths in by_levels.items():
            if any(key == p or key.startswith(f"{p}.") or p.startswith(f"{key}.") for p in paths):
                raise StudyError(f"--set {key}: {where} sets it per run (pick runs that it does not set with --only)")


def _dotted(doc: Mapping[str, Any], prefix: str = "") -> set[str]:
    """The dotted keys of the values a nested mapping sets."""
    keys: set[str] = set()
    for key, value in doc.items():
        if isinstance(value, Mapping) and value:
            keys |= _dotted(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


@dataclass(frozen=True)
class _Level:
    """A grid level: its label and its settings."""

    label: str
    layer: _Layer


def _grid_layers(grid: dict[str, Any], source: _Layer) -> dict[str, list[_Level]]:
    """Each factor column's levels as layers, named as the file names them: `grid.KEY[i]`, `grid.KEY.LABEL`."""
    out: dict[str, list[_Level]] = {}
    for (column, levels), (key, given) in zip(_factor_levels(grid).items(), grid.items(), strict=True):
        listed = isinstance(given, list)
        out[column] = [
            _Level(
                label,
                _Layer(
                    over,
                    source.file,
                    f"grid.{key}[{i}]" if listed else f"grid.{key}.{label}",
                    ("grid", key, i if listed else label),
                    source.lines,
                ),
            )
            for i, (label, over) in enumerate(levels)
        ]
    return out


def _cell_layers(file: StudyFile, source: _Layer, envs: set[str]) -> tuple[list[_Layer], list[str]]:
    """The study's cell overrides as layers (`cell_overrides[i]`), and what is wrong with their
    `match`: each names `env` (envs of the file or its budgets) or a factor column, with levels of
    the whole grid."""
    columns = _grid_columns(file)
    errors = []
    for i, cell in enumerate(file.cell_overrides):
        head = _Layer({}, source.file, f"cell_overrides[{i}].match", ("cell_overrides", i, "match"), source.lines)
        errors += _match_errors(head, cell.match, columns, envs)
    layers = [
        _Layer(cell.set, source.file, f"cell_overrides[{i}]", ("cell_overrides", i, "set"), source.lines)
        for i, cell in enumerate(file.cell_overrides)
    ]
    return layers, errors


def _grid_columns(file: StudyFile) -> dict[str, list[str]]:
    """Each factor column with the labels of its levels (of the whole grid)."""
    return {column: [label for label, _ in levels] for column, levels in _factor_levels(file.grid).items()}


def _comparison_errors(file: StudyFile, source: _Layer, envs: set[str]) -> list[str]:
    """What is wrong with the study's `compare`: each names a factor, two of its levels (of the
    whole grid), and in `where` envs and other factors' levels."""
    columns = _grid_columns(file)
    errors = []
    for i, comparison in enumerate(file.compare):
        head = _Layer({}, source.file, f"compare[{i}]", ("compare", i), source.lines)
        factor = comparison.factor
        if factor not in columns:
            errors.append(
                f"{head.prefix()}factor: no factor {factor!r} (have: {', '.join(columns)})"
                + did_you_mean(factor, columns)
            )
            continue
        for key in ("x", "y"):
            level = getattr(comparison, key)
            if level not in columns[factor]:
                known = columns[factor]
                errors.append(
                    f"{head.prefix()}{key}: no level {level!r} of {factor} (have: {', '.join(known)})"
                    + did_you_mean(level, known)
                )
        if comparison.x == comparison.y:
            errors.append(f"{head.prefix()}y: the same level as x ({comparison.x!r})")
        if factor in comparison.where:
            errors.append(f"{head.prefix()}where: may not name {factor}, the factor compared")
        where = _Layer({}, source.file, f"compare[{i}].where", ("compare", i, "where"), source.lines)
        errors += _match_errors(where, comparison.where, columns, envs)
    return errors


def _label_errors(file: StudyFile, layers: list[_Layer]) -> list[str]:
    """What is wrong with the study's `labels`: each names a factor and levels of it (of the whole
    grid), each error at the file or budget that wrote it."""
    columns = _grid_columns(file)
    errors = []
    for factor, names in file.labels.items():
        if factor not in columns:
            layer, path, _ = _origin(layers, ("labels", factor))
            have = ", ".join(columns)
            errors.append(
                f"{layer.prefix(path)}labels.{factor}: no factor {factor!r} (have: {have})"
                + did_you_mean(factor, columns)
            )
            continue
        for level in names:
            if level not in (known := columns[factor]):
                layer, path, _ = _origin(layers, ("labels", factor, level))
                errors.append(
                    f"{layer.prefix(path)}labels.{factor}: no level {level!r} of {factor} (have: {', '.join(known)})"
                    + did_you_mean(level, known)
                )
    return errors


def _match_errors(
    head: _Layer, match: dict[str, list[str]], columns: dict[str, list[str]], envs: set[str]
) -> list[str]:
    """What is wrong with a mapping of columns to levels: each column `env` (with envs of the file
    or its budgets) or a factor column (with levels of the whole grid)."""
    errors = []
    for column, levels in match.items():
        if column == "env":
            known = sorted(envs)
            errors += [
                f"{head.prefix()}env: {env!r} is not an env of the study or its budgets (have: {', '.join(known)})"
                + did_you_mean(env, known)
                for env in levels
                if env not in envs
            ]
            continue
        if column not in columns:
            have = ["env", *columns]
            errors.append(
                f"{head.prefix()}{column}: no such column (have: {', '.join(have)})" + did_you_mean(column, have)
            )
            continue
        for level in levels:
            if level not in columns[column]:
                known = columns[column]
                errors.append(
                    f"{head.prefix()}{column}: no level {level!r} (have: {', '.join(known)})"
                    + did_you_mean(level, known)
                )
    return errors


def _level_errors(file: StudyFile, shared: dict[str, Any], level_layers: dict[str, list[_Level]]) -> list[str]:
    """The problems of each grid level on its own, each naming the level and key that caused it."""
    errors = []
    for column_levels, key in zip(level_layers.values(), file.grid, strict=True):
        listed = isinstance(file.grid[key], list)
        for layer in (level.layer for level in column_levels):
            try:
                RunSettings.model_validate(apply_overrides(shared, layer.settings) | {"env": file.envs[0]})
            except ValidationError as err:
                for problem in problems(err, RunSettings, _study_wide()):
                    if listed and problem.key == key and problem.kind == "extra_forbidden":  # once, not per level
                        factor = _Layer({key: None}, layer.file, "grid", ("grid",), layer.lines)
                        errors.append(f"{factor.prefix((key,))}{key}: {problem.text}")
                    elif listed and problem.key == key:
                        errors.append(f"{layer.prefix()}{problem.text}")
                    else:
                        errors.append(_message(problem, [layer]))
    return errors


def _expand(
    path: Path,
    budget: str,
    file: StudyFile,
    doc: dict[str, Any],
    layers: list[_Layer],
    grid_layer: _Layer,
    keep: dict[str, list[str]] | None = None,
    envs: set[str] | None = None,
) -> Study:
    """The runs of a validated study file: every grid cell × env × seed, each checked on its own;
    with `keep`, only those levels of its factors (a budget's `levels`: the others go unchecked)."""
    level_layers = {
        column: [level for level in levels if keep is None or level.label in keep.get(column, [level.label])]
        for column, levels in _grid_layers(file.grid, grid_layer).items()
    }
    env_layers = {
        env: _Layer(over, path, f"env_overrides.{env}", ("env_overrides", env), layers[0].lines)
        for env, over in file.env_overrides.items()
    }
    cell_layers, errors = _cell_layers(file, layers[0], envs or set(file.envs))
    errors += _comparison_errors(file, layers[0], envs or set(file.envs))
    errors += _label_errors(file, layers)
    settable = [("a grid level", level.layer) for column in level_layers.values() for level in column]
    settable += [("an env override", layer) for layer in env_layers.values()]
    settable += [("a cell override", layer) for layer in cell_layers]
    errors += [
        f"{layer.prefix(('env',))}env: set by envs; {what} cannot change it"
        for what, layer in settable
        if "env" in layer.settings
    ]
    shared = {k: v for k, v in doc.items() if k in _SharedSettings.model_fields}
    errors += _level_errors(file, shared, level_layers)  # first, so that an error names its level
    if errors:
        raise _fail(errors)

    runs: list[RunSpec] = []
    violations: dict[str, list[str]] = {}
    cells = 0
    for env in file.envs:
        base = apply_overrides(shared, file.env_overrides.get(env, {})) | {"env": env}
        env_layer = [env_layers[env]] if env in env_layers else []
        for combo in itertools.product(*level_layers.values()):
            cells += 1
            settings_doc = base
            run_layers = [*layers, *env_layer]
            factors = {col: level.label for col, level in zip(level_layers, combo, strict=True)}
            cell = {"env": env} | factors
            matching = [
                layer
                for layer, override in zip(cell_layers, file.cell_overrides, strict=True)
                if override.matches(cell)
            ]
            for layer in [*(level.layer for level in combo), *matching]:
                settings_doc = apply_overrides(settings_doc, dict(layer.settings))
                run_layers.append(layer)
            try:
                settings = RunSettings.model_validate(settings_doc)
            except ValidationError as err:
                errors += [_message(p, run_layers) for p in problems(err, RunSettings, _study_wide())]
                continue
            run = " ".join([env, *(f"{col}={label}" for col, label in factors.items())])
            for violation in _bound_violations(settings, run_layers, path):
                violations.setdefault(violation, []).append(run)
            runs += [
                RunSpec(
                    study=file.name,
                    budget=budget,
                    seed=seed,
                    factors=factors,
                    settings=settings,
                    checkpoint_every=file.checkpoint_every,
                )
                for seed in file.seed_list()
            ]
    if errors:
        raise _fail(errors)
    if violations:
        raise _fail([f"{message} ({_which_runs(runs_, cells)})" for message, runs_ in violations.items()])
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise StudyError(f"{grid_layer.prefix(('grid',))}grid: two grid cells give the same run (repeated levels?)")
    return Study(
        path=path,
        budget=budget,
        file=file,
        factor_levels={col: [level.label for level in lv] for col, lv in level_layers.items()},
        factor_keys=dict(zip(level_layers, file.grid, strict=True)),
        runs=runs,
    )
