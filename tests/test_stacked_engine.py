"""The stacked engine: a group collects what SB3 runs collect, determinism, failures, grouping, refusals."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch as th
from stable_baselines3.common.callbacks import CallbackList

import study.stacked.group as group_module
from study.analysis.engines import compare_engines
from study.config import RunSettings, RunSpec, StudyError, load_study
from study.launch import makespan, plan_tasks, run_study, task_cost
from study.run import RunParts, build_run, run_result
from study.stacked.group import Group, Member, run_group
from study.stacked.nets import Unsupported
from study.stacked.resume import read_member_checkpoint
from study.store import checkpoint_steps, load_results

SEEDS = (0, 1, 2)
#: the batched forward of the stacked actors rounds differently from one network's matrix-vector
#: product in the last bits of the action, and the env's dynamics carry that through an episode;
#: everything the runs count (steps, episode ends, resamples, σ decisions, evaluations) must be equal
RTOL = 1e-5
STATE_TOL = 1e-4
EVAL_TOL = 1e-6  # evaluations of continuous actions: batched rounding over at most 200 steps


def specs(algo: str = "td3", gradient_steps: int = 0, **settings: Any) -> list[RunSpec]:
    base: dict[str, Any] = {
        "algo": algo,
        "env": "Pendulum-v1",
        "env_kwargs": {"max_episode_steps": 90},
        "total_steps": 400,
        "net_arch": [16, 16],
        "eval": {"freq": 200, "episodes": 1},
        "hyperparams": {"learning_starts": 100, "batch_size": 16, "gradient_steps": gradient_steps},
    }
    return [RunSpec(study="t", budget="full", seed=seed, settings=RunSettings(**base | settings)) for seed in SEEDS]


def sb3_run(spec: RunSpec) -> tuple[Any, RunParts]:
    """The SB3 engine's run of `spec`, and its parts (to read its model and replay buffer)."""
    parts = build_run(spec)
    parts.model.learn(spec.settings.total_steps, callback=CallbackList(parts.callbacks))
    return run_result(spec, parts, None, pd.Timestamp.now(tz="UTC"), 1.0, None, 1), parts


def stacked_group(runs: list[RunSpec]) -> Group:
    group = Group([Member(spec, build_run(spec)) for spec in runs])
    group.learn()
    return group


def assert_same_tables(a: Any, b: Any, exact: bool = False) -> None:
    for name, table in a.tables().items():
        if name == "traces" and not exact:  # the actions themselves: equal to the last bits' rounding
            pd.testing.assert_frame_equal(table, b.traces, check_exact=False, rtol=STATE_TOL, atol=STATE_TOL)
            continue
        pd.testing.assert_frame_equal(table, b.tables()[name], check_exact=exact, rtol=RTOL)


EXPLORATION = {
    "td3 parameter noise, k = 5, adaptive": ("td3", {"param_noise": {"interval": 5, "adapt_every": 20}}),
    "td3 OU action noise": ("td3", {"action_noise": {"type": "ou", "sigma": 0.3}}),
    "ddpg Gaussian action noise": ("ddpg", {"action_noise": {"type": "normal", "sigma": 0.2}}),
    "sac own noise": ("sac", {}),
    "sac parameter noise, episode": ("sac", {"param_noise": {"interval": "episode", "adapt_every": 20}}),
    "sac gSDE, k = 8, rollouts of an episode": ("sac", {"gsde": {"interval": 8}}, {"train_freq": "episode"}),
    "sac gSDE, k = 8, held across rollouts of one step": ("sac", {"gsde": {"interval": 8}}),
    "td3 parameter noise, rollouts of an episode": (
        "td3",
        {"param_noise": {"interval": 30, "adapt_every": 20}},
        {"train_freq": "episode"},
    ),
    "td3 pink action noise": ("td3", {"action_noise": {"type": "colored", "beta": 1.0, "sigma": 0.3}}),
    "sac red sampling noise": ("sac", {"sampling_noise": {"beta": 2.0}}),
    "sac own noise, rollouts of episodes that end at random": ("sac", {}, {"train_freq": "episode"}, "Ending-v0"),
}


@pytest.mark.parametrize("case", list(EXPLORATION))
def test_with_training_off_a_group_collects_what_each_sb3_run_collects(case: str) -> None:
    algo, exploration, *more = EXPLORATION[case]
    hyperparams = more[0] if more else {}
    env = {"env": f"faulty_envs:{more[1]}", "env_kwargs": {}} if len(more) > 1 else {}
    base = {"learning_starts": 100, "batch_size": 16, "gradient_steps": 0}
    runs = specs(algo, exploration=exploration, hyperparams=base | hyperparams, **env)
    group = stacked_group(runs)
    for member, spec in zip(group.all_members, runs, strict=True):
        assert member.error is None, member.error
        expected, parts = sb3_run(spec)
        model = parts.model
        got = run_result(spec, member.parts, None, pd.Timestamp.now(tz="UTC"), 1.0, None, 1)
        # the same episodes, ends, warm-up, σ schedule and resample points; the same evaluations, up
        # to the rounding of the batched forward that acts in them
        assert_same_tables(expected, got)
        pd.testing.assert_frame_equal(expected.evaluations, got.evaluations, check_exact=False, rtol=EVAL_TOL)
        assert list(expected.episodes["length"]) == list(got.episodes["length"])
        if member.parts.noise is not None:
            assert member.parts.noise.resamples == parts.noise.resamples > 4
        buffer, reference = member.model.replay_buffer, model.replay_buffer
        steps = model.num_timesteps  # 400, or more where rollouts of an episode finish the episode they are in
        assert steps == 400 or (hyperparams and steps > 400)
        assert (buffer.pos, buffer.full) == (reference.pos, reference.full) == (steps, False)
        for name in ("observations", "next_observations", "actions", "rewards"):
            np.testing.assert_allclose(getattr(buffer, name), getattr(reference, name), rtol=STATE_TOL, atol=STATE_TOL)
        for name in ("dones", "timeouts"):
            np.testing.assert_array_equal(getattr(buffer, name), getattr(reference, name))
        assert member.model.num_timesteps == steps
        assert member.model._episode_num == model._episode_num >= 4


Q_EXPLORATION = {
    "dqn ε-greedy": ("dqn", {}),
    "qrdqn ε-greedy": ("qrdqn", {}),
    "dqn parameter noise": ("dqn", {"param_noise": {"interval": "episode", "adapt_every": 20}}),
    "dqn εz-greedy": ("dqn", {"ez_greedy": {"mu": 1.5}}),
    "qrdqn εz-greedy": ("qrdqn", {"ez_greedy": {"mu": 2.0}}),
    "dqn proportional replay": ("dqn", {}, {"replay": {"type": "proportional"}}),
    "dqn rank-based replay": ("dqn", {}, {"replay": {"type": "rank"}}),
    "dqn on CartPole, training at episode ends (the members' rollouts end at different steps)": (
        "dqn",
        {},
        {"env": "CartPole-v1", "env_kwargs": {}, "hyperparams": {"train_freq": "episode", "gradient_steps": -1}},
    ),
}


@pytest.mark.parametrize("case", list(Q_EXPLORATION))
def test_a_dqn_group_trains_each_member_as_its_sb3_run(case: str) -> None:
    """Greedy actions do not see the last bits, so the chain's runs are equal through training."""
    algo, exploration, *overrides = Q_EXPLORATION[case]
    overrides = dict(overrides[0]) if overrides else {}
    hyperparams = {"learning_starts": 200, "batch_size": 16, "train_freq": 4, "target_update_interval": 100}
    settings = RunSettings(
        **{
            "algo": algo,
            "env": "study/Chain-v0",
            "env_kwargs": {"n": 10},
            "total_steps": 1200,
            "net_arch": [16, 16],
            "eval": {"freq": "episode", "episodes": 1},
            "exploration": exploration,
            **overrides,
            "hyperparams": hyperparams | overrides.get("hyperparams", {}),
        }
    )
    runs = [RunSpec(study="t", budget="full", seed=seed, settings=settings) for seed in SEEDS]
    group = stacked_group(runs)
    for member, spec in zip(group.all_members, runs, strict=True):
        expected, parts = sb3_run(spec)
        got = run_result(spec, member.parts, None, pd.Timestamp.now(tz="UTC"), 1.0, None, 1)
        pd.testing.assert_frame_equal(expected.episodes, got.episodes, check_exact=True)
        pd.testing.assert_frame_equal(expected.evaluations, got.evaluations, check_exact=True)
        pd.testing.assert_frame_equal(expected.adaptations, got.adaptations, rtol=1e-3)  # KL of two near nets
        assert member.model._n_updates == parts.model._n_updates > 200
        assert member.model.exploration_rate == parts.model.exploration_rate


@pytest.mark.parametrize(
    ("algo", "exploration"),
    [("td3", {"param_noise": {"interval": 5}}), ("sac", {"gsde": {"interval": 8}})],
    ids=["td3 parameter noise", "sac gSDE held across rollouts, drawn anew in each gradient step"],
)
def test_a_group_trains_each_member_as_its_sb3_run_to_float_tolerance_at_first(algo: str, exploration: dict) -> None:
    runs = specs(algo, gradient_steps=1, total_steps=150, exploration=exploration)
    group = stacked_group(runs)
    for member, spec in zip(group.all_members, runs, strict=True):
        model = sb3_run(spec)[1].model
        assert member.model._n_updates == model._n_updates == 50
        for got, expected in zip(member.model.policy.parameters(), model.policy.parameters(), strict=True):
            np.testing.assert_allclose(got.detach().numpy(), expected.detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("algo", "exploration", "hyperparams"),
    [
        ("td3", {"param_noise": {"interval": 5}}, {}),
        ("sac", {"gsde": {"interval": 8}}, {"train_freq": "episode", "gradient_steps": -1}),
        ("dqn", {}, {"train_freq": 3, "target_update_interval": 70}),
    ],
    ids=["td3 parameter noise", "sac gSDE at episode ends", "dqn"],
)
def test_members_left_training_are_restacked_with_the_same_results(
    algo: str, exploration: dict, hyperparams: dict, monkeypatch
) -> None:
    """Members that finish early leave the stack; the others go on as a smaller one, with the
    tables they would have had in the whole stack."""
    env = {"env": "study/Chain-v0", "env_kwargs": {"n": 8}} if algo == "dqn" else {}
    base = {"learning_starts": 100, "batch_size": 16, "gradient_steps": 1} | hyperparams
    settings = specs(algo, exploration=exploration, hyperparams=base, **env)[0].settings
    runs = [
        RunSpec(study="t", budget="full", seed=seed, settings=settings.model_copy(update={"total_steps": steps}))
        for seed, steps in enumerate((200, 250, 300, 400))
    ]
    restacked: list[int] = []
    original = Group.restack

    def counting(self: Group, members: list[Member]) -> None:
        restacked.append(len(members))
        original(self, members)

    monkeypatch.setattr(Group, "restack", counting)
    smaller = run_group(runs, cpus=1)
    assert restacked == [2, 1]
    monkeypatch.setattr(group_module, "RESTACK_AT", 0.0)
    whole = run_group(runs, cpus=1)
    assert restacked == [2, 1]
    for a, b in zip(whole, smaller, strict=True):
        assert a.status == b.status == "done", a.error or b.error
        assert_same_tables(a, b, exact=True)


def test_the_same_group_twice_gives_identical_tables() -> None:
    runs = specs("sac", gradient_steps=1, total_steps=200, exploration={"param_noise": {"interval": 5}})
    first, second = run_group(runs, cpus=1), run_group(runs, cpus=1)
    for a, b in zip(first, second, strict=True):
        assert a.status == b.status == "done", a.error
        assert a.meta["engine"] == "stacked" and a.meta["group"] == [spec.run_id for spec in runs]
        assert_same_tables(a, b, exact=True)


@pytest.mark.parametrize("where", ["training env", "evaluation env"])
def test_a_member_that_raises_fails_alone_and_the_others_are_unchanged(monkeypatch, where: str) -> None:
    noise = {"action_noise": {"type": "normal"}}
    runs = specs("td3", gradient_steps=1, total_steps=300, exploration=noise, eval={"freq": 100, "episodes": 1})
    alone = run_group(runs[1:], cpus=1)

    def build_breaking_seed_0(spec: RunSpec) -> Any:
        parts = build_run(spec)
        if spec.seed == 0:  # at step 150 of training, or in its second evaluation (at step 200, of 90 steps)
            env = parts.model.env.envs[0] if where == "training env" else parts.evaluator.eval_env
            step, calls = env.step, iter(range(10**6))

            def step_then_raise(action: Any) -> Any:
                if next(calls) == 150:
                    raise RuntimeError("the simulator crashed")
                return step(action)

            env.step = step_then_raise
        return parts

    monkeypatch.setattr(group_module, "build_run", build_breaking_seed_0)
    results = run_group(runs, cpus=1)
    assert [r.status for r in results] == ["failed", "done", "done"]
    assert "the simulator crashed" in results[0].error
    assert results[0].meta["steps"] == 0
    for result, expected in zip(results[1:], alone, strict=True):
        assert_same_tables(expected, result, exact=True)
        assert len(result.evaluations) == 3


@pytest.mark.parametrize(
    ("algo", "settings", "message"),
    [
        ("dqn", {"env": "CartPole-v1", "exploration": {"noisy_net": {}}}, "NoisyLinear layers cannot be stacked"),
    ],
)
def test_what_cannot_be_stacked_fails_every_member_with_the_reason(algo: str, settings: dict, message: str) -> None:
    runs = specs(algo, **settings)
    results = run_group(runs, cpus=1)
    assert {r.status for r in results} == {"failed"}
    assert all(message in r.error and Unsupported.__name__ in r.error for r in results)


def test_the_launcher_groups_runs_that_differ_in_seed_and_exploration_scalars(write_study) -> None:
    study = load_study(
        write_study(
            {"engine": "stacked", "seeds": 10, "grid": {"exploration.param_noise.interval": [5, 50]}},
        )
    )
    other = load_study(write_study({"engine": "stacked", "exploration": {"action_noise": {"type": "normal"}}}))
    sb3 = load_study(write_study({"seeds": 2}))
    pending = study.runs + other.runs + sb3.runs
    tasks = plan_tasks(pending, slots=2)
    assert sorted(spec.run_id for task in tasks for spec in task) == sorted(spec.run_id for spec in pending)
    # 20 alike runs in one group, with the lone run of the other kind: two groups fill the 2 slots
    assert sorted(len(task) for task in tasks) == [1, 1, 1, 20]
    for task in tasks:
        assert len({(spec.settings.engine, spec.settings.exploration.param_noise is None) for spec in task}) == 1
        assert len({spec.settings.exploration.action_noise.type for spec in task}) == 1
    assert {len(task) for task in plan_tasks(study.runs, slots=8)} == {2, 3}  # split until every slot has work
    reduced = load_study("ablations/sampling_interval.yaml", budget="reduced", engine="stacked")
    assert [len(task) for task in plan_tasks(reduced.runs, slots=2)] == [20, 20]
    colored = load_study(
        write_study(
            {
                "engine": "stacked",
                "exploration": {"param_noise": None, "action_noise": {"type": "colored"}},
                "grid": {"exploration.action_noise.beta": [0.0, 1.0, 2.0]},
            }
        )
    )
    assert [len(task) for task in plan_tasks(colored.runs, slots=1)] == [3]  # β leaves every shape alone
    small = load_study(write_study({"engine": "stacked", "seeds": 10, "resources": {"group_size": 4}}))
    assert sorted(len(task) for task in plan_tasks(small.runs)) == [3, 3, 4]
    assert small.runs[0].run_id == load_study(write_study({"engine": "stacked", "seeds": 10})).runs[0].run_id


def test_the_launcher_splits_a_group_only_where_it_shortens_the_wall_time(write_study) -> None:
    long = load_study(write_study({"engine": "stacked", "seeds": 20, "budgets.full": 100_000}, name="long.yaml"))
    short = load_study(write_study({"engine": "stacked", "seeds": 20, "budgets.full": 1_000}, name="short.yaml"))
    assert task_cost(long.runs[:9]) == 100_000 * 2  # 1 + 8 members × 1/8
    tasks = plan_tasks(short.runs + long.runs, slots=2)
    # 20 long members cost 337,500 steps as one group, 212,500 as each of two halves on their own
    # worker, beside which the short group fits; three long groups would make one worker wait
    sizes = [(len(task), task[0].settings.total_steps) for task in tasks]
    assert sizes == [(10, 100_000), (10, 100_000), (20, 1_000)]
    assert makespan([task_cost(task) for task in tasks], 2) == 212_500 + 3_375
    alone = load_study(write_study({"seeds": 1, "budgets.full": 1_000_000}, name="alone.yaml"))
    # the lone SB3 run takes longest however the group is split: splitting would only add work
    assert [len(task) for task in plan_tasks(alone.runs + long.runs, slots=3)] == [1, 20]


def test_the_engine_is_part_of_a_runs_identity_and_the_command_line_sets_it(write_study) -> None:
    path = write_study()
    sb3, stacked = load_study(path), load_study(path, engine="stacked")
    assert stacked.runs[0].settings.engine == "stacked" and sb3.runs[0].settings.engine == "sb3"
    assert stacked.runs[0].run_id != sb3.runs[0].run_id  # its numbers differ in the last bits
    assert sb3.runs[0].run_id == load_study(write_study({"engine": "sb3"})).runs[0].run_id
    assert (
        load_study(path, engine="stacked", overlay={"hyperparams.train_freq": 4}).runs[0].settings.engine == "stacked"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"algo": "dqn", "envs": ["CartPole-v1"], "exploration.param_noise": None, "exploration.noisy_net": {}},
            "exploration.noisy_net: not stacked yet",
        ),
        (
            {"algo": "dqn", "envs": ["MinAtar/Breakout-v1"], "features_extractor": "minatar_cnn"},
            "features_extractor: not stacked yet",
        ),
    ],
)
def test_what_the_stacked_engine_cannot_run_is_refused_at_load(write_study, overrides: dict, message: str) -> None:
    path = write_study({"engine": "stacked", **overrides})
    with pytest.raises(StudyError, match=re.escape(message)) as err:
        load_study(path)
    assert str(path) in str(err.value)
    run = subprocess.run(
        [sys.executable, "-m", "study", "run", str(write_study(overrides, name="cli.yaml")), "--engine", "stacked"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2 and message in run.stderr + run.stdout


GPU_CASE = "sac on a GPU (its gradient step a CUDA graph, captured anew after the resume)"
#: smoothness's MuJoCo runs, trained at episode ends: 60-step episodes train before the checkpoint at 120
HALFCHEETAH_AT_EPISODE_ENDS = {
    "env": "HalfCheetah-v5",
    "env_kwargs": {"max_episode_steps": 60},
    "hyperparams": {"train_freq": "episode", "gradient_steps": -1},
}
#: the SAC studies' Hopper runs, trained at episode ends: the members' episodes end at different steps
HOPPER_AT_EPISODE_ENDS = {"env": "Hopper-v5", "hyperparams": {"train_freq": "episode", "gradient_steps": -1}}
#: SAC's layer-norm and adaptation groups on MuJoCo: fixed σ = 0.2 beside adaptive δ = 0.2, once per episode
FIXED_AND_ADAPTIVE_ONCE_PER_EPISODE = [
    {"param_noise": {"interval": "episode", "adaptive": False, "initial_sigma": 0.2}},
    {"param_noise": {"interval": "episode", "adapt_every": 20}},
]
RESUME_CASES = {
    "td3, OU noise": ("td3", {"action_noise": {"type": "ou", "sigma": 0.3}}, {}),
    "sac, parameter noise k = 5": ("sac", {"param_noise": {"interval": 5, "adapt_every": 20}}, {}),
    "dqn, ε-greedy, target interval 70": ("dqn", {}, {"env": "study/Chain-v0", "env_kwargs": {"n": 8}}),
    "dqn, proportional replay": (
        "dqn",
        {},
        {"env": "study/Chain-v0", "env_kwargs": {"n": 8}, "replay": {"type": "proportional"}},
    ),
    "sac, gSDE k = 8, trained every step": ("sac", {"gsde": {"interval": 8}}, {}),
    "sac, gSDE k = 8, training at episode ends": (
        "sac",
        {"gsde": {"interval": 8}},
        {"hyperparams": {"train_freq": "episode", "gradient_steps": -1}},
    ),
    "sac, pink sampling noise, training at episode ends (the noise's sequences carry over)": (
        "sac",
        {"sampling_noise": {"beta": 1.0}},
        {"hyperparams": {"train_freq": "episode", "gradient_steps": -1}},
    ),
    "sac with layer norm, Gaussian action noise, training at episode ends": (
        "sac",
        {"action_noise": {"type": "normal", "sigma": 0.1}},
        {"layer_norm": True, "hyperparams": {"train_freq": "episode", "gradient_steps": -1}},
    ),
    "sac with layer norm, its own noise alone, training at episode ends (layer norm's SAC action-noise level)": (
        "sac",
        {},
        {"layer_norm": True, "hyperparams": {"train_freq": "episode", "gradient_steps": -1}},
    ),
    "td3 with layer norm, adaptive parameter noise resampled once per episode (sampling_interval's TD3)": (
        "td3",
        {"param_noise": {"interval": "episode", "adapt_every": 20}},
        {"layer_norm": True},
    ),
    "td3 with layer norm, adaptive parameter noise k = 8 on HalfCheetah (sampling_interval's MuJoCo budgets)": (
        "td3",
        {"param_noise": {"interval": 8, "adapt_every": 20}},
        {"layer_norm": True, "env": "HalfCheetah-v5"},
    ),
    "td3 with layer norm, parameter noise once per episode on HalfCheetah": (
        "td3",
        {"param_noise": {"interval": "episode", "adapt_every": 20}},
        {"layer_norm": True, "env": "HalfCheetah-v5"},
    ),
    "td3 with layer norm, fixed and adaptive sigma in one group, once per episode on HalfCheetah": (
        "td3",
        [
            {"param_noise": {"interval": "episode", "adaptive": False, "initial_sigma": 0.2}},
            {"param_noise": {"interval": "episode", "adapt_every": 20, "target_distance": 0.4}},
        ],
        {"layer_norm": True, "env": "HalfCheetah-v5"},
    ),
    "td3 with layer norm, parameter noise once per episode on Hopper (episodes end apart)": (
        "td3",
        {"param_noise": {"interval": "episode", "adapt_every": 20}},
        {"layer_norm": True, "env": "Hopper-v5"},
    ),
    "td3 with layer norm, parameter noise k = 1, 16, 64 in one Hopper group (sampling_interval's Hopper runs)": (
        "td3",
        [{"param_noise": {"interval": k, "adapt_every": 20}} for k in (1, 16, 64)],
        {"layer_norm": True, "env": "Hopper-v5"},
    ),
    "td3 with layer norm, parameter noise k = 8, training at episode ends (decoupling's TD3)": (
        "td3",
        {"param_noise": {"interval": 8, "adapt_every": 20}},
        {"layer_norm": True, "hyperparams": {"train_freq": "episode", "gradient_steps": -1}},
    ),
    "sac with layer norm, fixed-sigma parameter noise k = 8, training at episode ends (adaptation's SAC)": (
        "sac",
        {"param_noise": {"interval": 8, "adaptive": False, "initial_sigma": 0.05}},
        {"layer_norm": True, "hyperparams": {"train_freq": "episode", "gradient_steps": -1}},
    ),
    "sac with layer norm, fixed and adaptive sigma k = 8 in one group, training at episode ends (adaptation's SAC)": (
        "sac",
        [
            {"param_noise": {"interval": 8, "adaptive": False, "initial_sigma": 0.2}},
            {"param_noise": {"interval": 8, "adapt_every": 20, "target_distance": 0.4}},
        ],
        {"layer_norm": True, "hyperparams": {"train_freq": "episode", "gradient_steps": -1}},
    ),
    "sac, OU noise on its mean, training at episode ends (smoothness's OU)": (
        "sac",
        {"mean_actions": True, "action_noise": {"type": "ou", "sigma": 0.1}},
        {"hyperparams": {"train_freq": "episode", "gradient_steps": -1}},
    ),
    "sac, adaptive parameter noise k = 1, 4, 16 on HalfCheetah, episode-end training (smoothness's MuJoCo)": (
        "sac",
        [{"param_noise": {"interval": k, "adapt_every": 20}} for k in (1, 4, 16)],
        HALFCHEETAH_AT_EPISODE_ENDS,
    ),
    "sac, gSDE k = 2, 16, 64 on HalfCheetah, trained at episode ends (smoothness's gSDE; 64 resumes mid-interval)": (
        "sac",
        [{"gsde": {"interval": k}} for k in (2, 16, 64)],
        HALFCHEETAH_AT_EPISODE_ENDS,
    ),
    "sac, colored sampling noise at β = 0, 0.5 and 2 in one group on HalfCheetah, trained at episode ends": (
        "sac",
        [{"sampling_noise": {"beta": beta}} for beta in (0.0, 0.5, 2.0)],
        HALFCHEETAH_AT_EPISODE_ENDS,
    ),
    "sac, its own noise alone on HalfCheetah at episode ends (layer_norm's 'SAC's own noise', layer norm off)": (
        "sac",
        {},
        HALFCHEETAH_AT_EPISODE_ENDS,
    ),
    "sac with layer norm on HalfCheetah at episode ends, fixed and adaptive σ once per episode (its MuJoCo budgets)": (
        "sac",
        FIXED_AND_ADAPTIVE_ONCE_PER_EPISODE,
        HALFCHEETAH_AT_EPISODE_ENDS | {"layer_norm": True},
    ),
    "sac with layer norm, its own noise alone on HalfCheetah at episode ends (layer_norm's 'SAC's own noise')": (
        "sac",
        {},
        HALFCHEETAH_AT_EPISODE_ENDS | {"layer_norm": True},
    ),
    "sac with layer norm on MountainCar at episode ends, fixed σ = 0.05 and adaptive δ = 0.4 at k = 8 in one group "
    "(adaptation's SAC)": (
        "sac",
        [
            {"param_noise": {"interval": 8, "adaptive": False, "initial_sigma": 0.05}},
            {"param_noise": {"interval": 8, "adapt_every": 20, "target_distance": 0.4}},
        ],
        {
            "env": "MountainCarContinuous-v0",
            "env_kwargs": {"max_episode_steps": 60},
            "layer_norm": True,
            "hyperparams": {"train_freq": "episode", "gradient_steps": -1},
        },
    ),
    "sac, adaptive parameter noise k = 8 and once per episode in one Hopper group, trained at episode ends "
    "(decoupling's and smoothness's Hopper)": (
        "sac",
        [{"param_noise": {"interval": k, "adapt_every": 20}} for k in (8, "episode")],
        HOPPER_AT_EPISODE_ENDS,
    ),
    "sac, adaptive parameter noise k = 8 and once per episode in one Hopper group, trained every step "
    "(decoupling's Hopper)": (
        "sac",
        [{"param_noise": {"interval": k, "adapt_every": 20}} for k in (8, "episode")],
        {"env": "Hopper-v5"},
    ),
    "sac, gSDE k = 8 and once per episode in one Hopper group, trained at episode ends (decoupling's Hopper)": (
        "sac",
        [{"gsde": {"interval": k}} for k in (8, "episode")],
        HOPPER_AT_EPISODE_ENDS,
    ),
    "sac with layer norm on Hopper at episode ends, fixed and adaptive σ once per episode (its Hopper budgets)": (
        "sac",
        FIXED_AND_ADAPTIVE_ONCE_PER_EPISODE,
        HOPPER_AT_EPISODE_ENDS | {"layer_norm": True},
    ),
    "sac's mean action, trained every 8 steps (smoothness's 'none, train every 8')": (
        "sac",
        {"mean_actions": True},
        {"hyperparams": {"train_freq": 8, "gradient_steps": -1}},
    ),
    "sac, parameter noise once per episode, training at episode ends": (
        "sac",
        {"param_noise": {"interval": "episode", "adapt_every": 20}},
        {"hyperparams": {"train_freq": "episode", "gradient_steps": -1}},
    ),
    "dqn on CartPole, training at episode ends (the members' rollouts end at different steps)": (
        "dqn",
        {},
        {"env": "CartPole-v1", "env_kwargs": {}, "hyperparams": {"train_freq": "episode", "gradient_steps": -1}},
    ),
    GPU_CASE: (
        "sac",
        {"param_noise": {"interval": 5}},
        {"resources": {"cpus": 1, "gpus": 1}},
    ),
}


@pytest.mark.parametrize(
    "case",
    [  # each named in full (pytest shortens a long string to `case<i>`)
        pytest.param(
            case,
            id=case,
            marks=[pytest.mark.skipif(not th.cuda.is_available(), reason="needs a GPU")] if case == GPU_CASE else [],
        )
        for case in RESUME_CASES
    ],
)
def test_a_resumed_group_equals_an_uninterrupted_one(case: str, tmp_path, monkeypatch) -> None:
    algo, exploration, env = RESUME_CASES[case]
    hyperparams = {"learning_starts": 100, "batch_size": 16, "gradient_steps": 1}
    if algo == "dqn":
        hyperparams |= {"target_update_interval": 70, "train_freq": 3}
    env = dict(env)
    hyperparams |= env.pop("hyperparams", {})
    variants = [  # a list: the members' explorations in turn, in one group (as a study's levels are)
        specs(algo, exploration=variant, total_steps=400, hyperparams=hyperparams, **env)
        for variant in (exploration if isinstance(exploration, list) else [exploration])
    ]
    runs = [variants[i % len(variants)][i].model_copy(update={"checkpoint_every": 120}) for i in range(len(SEEDS))]
    folders = [tmp_path / spec.run_id for spec in runs]
    uninterrupted = run_group(runs, cpus=1)

    saved: dict[str, list[int]] = {spec.run_id: [] for spec in runs}
    original = Group.save_checkpoint

    def save_then_crash(self: Group, i: int) -> None:
        original(self, i)
        member = self.members[i]
        saved[member.spec.run_id].append(member.model.num_timesteps)
        if len(saved[member.spec.run_id]) == 2:  # before any member can finish (Hopper's episodes end apart)
            raise RuntimeError("the machine went down")

    monkeypatch.setattr(Group, "save_checkpoint", save_then_crash)
    crashed = run_group(runs, cpus=1, checkpoint_dirs=folders)
    assert {r.status for r in crashed} == {"failed"}
    for spec, folder in zip(runs, folders, strict=True):  # a member's checkpoint holds the rows its buffer has filled
        state = read_member_checkpoint(folder)
        buffer = state and state["replay_buffer"]
        if buffer:
            assert len(buffer["observations"]) == (buffer["buffer_size"] if buffer["full"] else buffer["pos"])
        assert checkpoint_steps(folder) == (saved[spec.run_id][-1] if saved[spec.run_id] else None)
    monkeypatch.setattr(Group, "save_checkpoint", original)
    resumed = run_group(runs, cpus=1, checkpoint_dirs=folders)
    for a, b in zip(uninterrupted, resumed, strict=True):
        assert b.status == "done", b.error
        steps = saved[b.spec.run_id]
        assert b.meta["resumed_at"] == (steps[-1] if steps else None)
        assert_same_tables(a, b, exact=True)
    assert any(saved.values())
    assert not any(folder.exists() for folder in folders)  # a finished run leaves no checkpoint


def test_the_engine_comparison_tests_one_distribution_per_env_and_metric() -> None:
    def runs(engine: str, returns: list[float]) -> pd.DataFrame:
        return pd.DataFrame(
            {"env": "E", "engine": engine, "seed": [0, 1, 2], "final_return": returns, "c_train": [1.0, 2.0, 3.0]}
        )

    metrics = pd.concat([runs("sb3", [1.0, 2.0, 3.0]), runs("stacked", [10.0, 11.0, 12.5])])
    table = compare_engines(metrics).set_index("metric")
    assert list(table.index) == ["final_return", "c_train"]  # final_sigma: not recorded, left out
    # 3 against 3 with no overlap: the exact two-sided p of both tests is 2 / C(6, 3) = 0.1
    assert table.loc["final_return", "Mann-Whitney p"] == pytest.approx(0.1)
    assert table.loc["final_return", "KS p"] == pytest.approx(0.1)
    assert table.loc["final_return", "median |same-seed difference|"] == 9.0
    assert table.loc["c_train", "Mann-Whitney p"] == table.loc["c_train", "KS p"] == 1.0
    assert table.loc["c_train", "median |same-seed difference|"] == 0.0
    assert table.loc["final_return", "median stacked"] == 11.0


def test_a_stacked_study_runs_through_the_launcher_and_stores_each_run(write_study, tmp_path) -> None:
    study = load_study(write_study({"seeds": 3, "checkpoint_every": 150}), engine="stacked")
    summary = run_study(study, tmp_path / "results", workers=2)
    assert len(summary.done) == 3 and not summary.failed and not summary.lost
    groups = {tuple(result.meta["group"]) for result in summary.done}
    assert sorted(len(group) for group in groups) == [1, 2]  # 3 runs on 2 workers: two groups
    loaded = load_results(study, tmp_path / "results")
    assert len(loaded.runs) == 3 and set(loaded.evaluations["run_id"]) == {spec.run_id for spec in study.runs}
    assert not list((tmp_path / "results").glob("**/checkpoint.pkl"))  # finished runs keep no checkpoint
