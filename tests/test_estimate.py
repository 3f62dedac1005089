"""`study run --dry-run`'s compute estimate: environment steps, calibrated speeds, the workers' schedule."""

from __future__ import annotations

import pytest

from study.__main__ import main
from study.config import load_study
from study.estimate import Speed, calibrate, configuration, estimate, makespan, task_slots


@pytest.fixture
def grid(write_study):
    intervals = {"exploration.param_noise.interval": [1, 8]}
    return write_study({"seeds": 2, "grid": intervals, "eval": {"freq": 100, "episodes": 1}})


@pytest.mark.parametrize(
    ("durations", "workers", "wall"),
    [([3, 3, 2], 2, 5), ([5, 1, 1, 1], 2, 5), ([1, 1, 1, 5], 2, 6), ([3, 3, 2], 1, 8), ([2], 4, 2)],
)
def test_tasks_go_in_order_to_the_first_free_worker(durations, workers, wall) -> None:
    assert makespan(durations, workers) == wall


def test_a_runs_time_adds_build_warm_up_training_and_evaluations(write_study) -> None:
    spec = load_study(write_study({"eval": {"freq": 250, "episodes": 1}}), steps=1000).runs[0]
    speed = Speed(build=1.0, warmup=0.01, train=0.1, evaluation=2.0)
    # 100 warm-up steps, 900 training steps, evaluations at 250, 500, 750 and 1000 (the last one)
    assert speed.seconds(spec, learning_starts=100) == pytest.approx(1 + 1 + 90 + 4 * 2)
    assert speed.seconds(spec, learning_starts=5000) == pytest.approx(1 + 1000 * 0.01 + 4 * 2)
    odd = load_study(write_study({"eval": {"freq": 300, "episodes": 1}}), steps=1000).runs[0]
    assert speed.seconds(odd, 100) == pytest.approx(1 + 1 + 90 + 4 * 2)  # at 300, 600, 900, and at the end
    after_episodes = load_study(write_study({"eval": {"freq": "episode", "episodes": 1}}), steps=1000).runs[0]
    of_50 = Speed(build=1.0, warmup=0.01, train=0.1, evaluation=2.0, episode_length=50)
    assert of_50.seconds(after_episodes, 100) == pytest.approx(1 + 1 + 90 + (20 + 1) * 2)  # 20 episodes, the end


def test_a_resumed_runs_time_counts_from_its_checkpoint(write_study) -> None:
    spec = load_study(write_study({"eval": {"freq": 250, "episodes": 1}}), steps=1000).runs[0]
    speed = Speed(build=1.0, warmup=0.01, train=0.1, evaluation=2.0)
    # from 500: no warm-up, 500 training steps, evaluations at 750 and 1000
    assert speed.seconds(spec, learning_starts=100, start=500) == pytest.approx(1 + 500 * 0.1 + 2 * 2)
    # from 50: 50 warm-up steps left, 900 training steps, all 4 evaluations
    assert speed.seconds(spec, learning_starts=100, start=50) == pytest.approx(1 + 50 * 0.01 + 90 + 4 * 2)
    after_episodes = load_study(write_study({"eval": {"freq": "episode", "episodes": 1}}), steps=1000).runs[0]
    of_50 = Speed(build=1.0, warmup=0.01, train=0.1, evaluation=2.0, episode_length=50)
    assert of_50.seconds(after_episodes, 100, start=500) == pytest.approx(1 + 50 + (10 + 1) * 2)


def test_runs_that_differ_in_seed_or_member_scalars_share_a_configuration(grid, write_study) -> None:
    runs = load_study(grid).runs
    assert len(runs) == 4 and len({configuration([spec]) for spec in runs}) == 1
    other = load_study(write_study({"net_arch": [32, 32]}, name="other.yaml")).runs[0]
    assert configuration([other]) != configuration([runs[0]])
    stacked = load_study(grid, engine="stacked").runs
    assert configuration(stacked[:2]) != configuration(stacked[:1])  # a group's speed depends on its size


@pytest.mark.parametrize("engine", ["sb3", "stacked"])
def test_calibration_times_each_phase_of_a_short_run(grid, engine) -> None:
    runs = load_study(grid, engine=engine).runs
    speed, learning_starts = calibrate(runs[:2] if engine == "stacked" else runs[:1], steps=50)
    assert learning_starts == 100  # the run's own, not the calibration's
    assert speed.build > 0 and speed.warmup > 0 and speed.evaluation > 0
    assert speed.train > speed.warmup  # training steps also update


def test_the_estimate_counts_the_pending_runs_and_their_steps(grid) -> None:
    runs = load_study(grid).runs
    got = estimate(runs, workers=2, steps=50)
    assert (got.runs, got.steps, got.configurations, got.workers) == (4, 4 * 300, 1, 2)
    resumed = estimate(runs, workers=2, steps=50, resume_at={runs[0].run_id: 200})
    assert resumed.steps == 4 * 300 - 200
    assert 0 < got.seconds < got.run_seconds
    assert task_slots(runs, 2) == 2 and task_slots(runs, 16) == 16


def test_runs_of_several_cpus_take_that_many_workers(write_study) -> None:
    runs = load_study(write_study({"seeds": 3, "resources": {"cpus": 2}})).runs
    assert task_slots(runs, 5) == 2  # as the launcher fits them: 5 CPUs // 2 per run


def test_the_calibration_runs_its_steps_whatever_stops_the_run_early(write_study) -> None:
    """A run that stops when solved or after a few episodes is still timed over its steps, and
    its episodes' length counts its evaluations after every episode."""
    chain = {
        "algo": "dqn",
        "envs": ["study/Chain-v0"],
        "env_kwargs": {"n": 5},
        "max_episodes": 2,
        "eval": {"freq": "episode", "episodes": 1, "stop_when_solved": True, "solved_window": 1},
        "exploration": {},
    }
    speed, learning_starts = calibrate(load_study(write_study(chain)).runs, steps=60)
    assert speed.episode_length == pytest.approx(14)  # the chain's N + 9 steps
    assert speed.train > 0 and learning_starts == 100


def test_dry_run_prints_the_estimate_and_writes_nothing(grid, tmp_path, capsys) -> None:
    results = tmp_path / "results"
    assert main(["run", str(grid), "--dry-run", "--results", str(results), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "estimate: 4 pending runs, 1,200 environment steps at most" in out
    assert "with 2 local workers" in out and "runs that stop early take less" in out
    assert "longest episode" not in out  # trained after every step
    assert not results.exists()


def test_dry_run_warns_that_groups_trained_at_episode_ends_wait(write_study, tmp_path, capsys) -> None:
    study = {"seeds": 2, "engine": "stacked", "hyperparams.train_freq": "episode", "eval": {"freq": 100, "episodes": 1}}
    for resources, warned in (({}, True), ({"group_size": 1}, False)):  # groups of one wait for no one
        path = write_study(study | {"resources": resources})
        assert main(["run", str(path), "--dry-run", "--results", str(tmp_path / "results"), "--workers", "2"]) == 0
        out = capsys.readouterr().out
        assert ("wait for their longest episode" in out) == warned, out
