"""Wall time of a 4-run grid: one after another in-process, in two bare processes, and through
the Ray launcher with 2 workers.

Prints the three wall times, the speedups over in-process, and the launcher's own costs: Ray's
start-up (as the launcher starts it: loopback only, no metrics), its workers' imports, and the
time per run it adds beyond the runs' own work (dispatch, result transfer and the driver's
writes). "Two bare processes" start two plain Python processes that each train half the grid
(imports included, no Ray): what this machine's two cores give with no launcher at all, so
the launcher's loss is the difference between the two. With `--engine stacked` each half is
one group of 2 (the launcher's tasks); with `--engine sb3` two runs one after the other.

`--rounds 2` (the default) measures the three in the order in-process, bare, launcher and
then in the reverse order, and prints the means, so that a drift of the machine's speed
during the script weighs on all three alike.

    python benchmarks/grid_scaling.py [--steps 20000] [--engine sb3|stacked] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from study.config import load_study
from study.launch import _init_ray, plan_tasks, run_study
from study.run import RunResult, execute
from study.stacked.group import run_group

STUDY = {
    "name": "scaling",
    "algo": "td3",
    "envs": ["Pendulum-v1"],
    "seeds": 4,
    "net_arch": [64, 64],
    "eval": {"freq": 1_000_000, "episodes": 2},
    "hyperparams": {"learning_starts": 500, "batch_size": 64, "buffer_size": 50_000},
    "exploration": {"param_noise": {"interval": "episode"}},
}


def _load(folder: Path, steps: int, engine: str):  # noqa: ANN202 (a Study)
    path = folder / "scaling.yaml"
    path.write_text(yaml.safe_dump(STUDY | {"total_steps": steps, "budgets": {"full": steps}}))
    return load_study(path, engine=engine)


def _half(study, half: int) -> list[RunResult]:  # noqa: ANN001
    """Train one worker's share of the grid in this process: its group, or its two runs."""
    if study.runs[0].settings.engine == "stacked":
        return run_group(plan_tasks(study.runs, 2)[half])
    return [execute(spec) for spec in study.runs[2 * half : 2 * half + 2]]


def _warm_up() -> None:
    import study.run  # noqa: F401
    import study.stacked.group  # noqa: F401


def in_process(study) -> float:  # noqa: ANN001
    """The grid one after the other here: its wall time."""
    start = time.perf_counter()
    for half in (0, 1):
        _half(study, half)
    return time.perf_counter() - start


def bare(steps: int, engine: str) -> float:
    """Two plain processes, one per half of the grid, started together: the wall time of both."""
    argv = [sys.executable, __file__, "--steps", str(steps), "--engine", engine, "--half"]
    start = time.perf_counter()
    procs = [subprocess.Popen([*argv, str(half)]) for half in (0, 1)]
    if any(proc.wait() for proc in procs):
        raise RuntimeError("a bare process failed")
    return time.perf_counter() - start


def launcher(study, folder: Path) -> dict[str, float]:  # noqa: ANN001
    """The launcher with 2 workers: Ray's start, the workers' imports, the runs, and a task's mean
    wall time in its worker."""
    import ray

    warm_up = ray.remote(num_cpus=1)(_warm_up)
    start = time.perf_counter()
    _init_ray(None, 2, verbose=False)
    t_ray = time.perf_counter() - start
    start = time.perf_counter()  # two worker processes start and import torch, SB3 and study
    ray.get([warm_up.remote() for _ in range(2)])
    t_warm = time.perf_counter() - start
    start = time.perf_counter()
    summary = run_study(study, folder, workers=2)
    t_runs = time.perf_counter() - start
    ray.shutdown()
    assert len(summary.done) == 4
    tasks = {tuple(r.meta.get("group", [r.spec.run_id])): r.meta["wall_time_s"] for r in summary.done}
    busy = sum(tasks.values()) / 2  # each worker's own work
    return {
        "wall": t_ray + t_warm + t_runs,
        "ray": t_ray,
        "warm": t_warm,
        "per_run": (t_runs - busy) / len(summary.done),
        "half": busy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000, help="steps per run")
    parser.add_argument("--engine", choices=["sb3", "stacked"], default="sb3")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each in the reverse order of the last")
    parser.add_argument("--half", type=int, choices=[0, 1], help=argparse.SUPPRESS)  # a bare process's share
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study = _load(Path(tmp), args.steps, args.engine)
        if args.half is not None:
            _half(study, args.half)
            return
        measured: dict[str, list] = {"in-process": [], "bare": [], "launcher": []}
        phases = {
            "in-process": lambda: in_process(study),
            "bare": lambda: bare(args.steps, args.engine),
            "launcher": lambda: launcher(study, Path(tmp) / f"results{len(measured['launcher'])}"),
        }
        order = list(phases)
        for _ in range(args.rounds):
            for name in order:
                measured[name].append(phases[name]())
            order.reverse()

    seq = statistics.mean(measured["in-process"])
    pair = statistics.mean(measured["bare"])
    ray_ = {key: statistics.mean(m[key] for m in measured["launcher"]) for key in measured["launcher"][0]}
    fixed = ray_["ray"] + ray_["warm"]
    rounds = {
        "in-process": measured["in-process"],
        "bare": measured["bare"],
        "launcher": [m["wall"] for m in measured["launcher"]],
    }
    print(f"4 runs x {args.steps} steps, TD3 64-64 on Pendulum-v1, engine {args.engine}, mean of {args.rounds} rounds")
    print(f"  in-process, one after the other {seq:7.1f} s")
    print(f"  two bare processes              {pair:7.1f} s   speedup {seq / pair:.2f}x")
    print(
        f"  launcher, 2 workers             {ray_['wall']:7.1f} s   speedup {seq / ray_['wall']:.2f}x  (target >= 1.8x)"
    )
    print(f"  the launcher over bare          {ray_['wall'] - pair:+7.1f} s   ({ray_['wall'] / pair - 1:+.1%})")
    print(f"  fixed: Ray start                {ray_['ray']:7.1f} s")
    print(f"  fixed: 2 workers' imports       {ray_['warm']:7.1f} s   (fixed total {fixed:.1f} s, target < 10 s)")
    print(f"  launcher overhead per run       {ray_['per_run']:7.2f} s   (dispatch, transfer, writes; target < 0.5 s)")
    half = "group of 2" if args.engine == "stacked" else "pair of runs"
    print(f"  a {half}, in-process {seq / 2:7.1f} s;  in a worker, beside the other: {ray_['half']:.1f} s")
    print(
        "  each round's wall time: "
        + "; ".join(f"{k} " + ", ".join(f"{v:.1f}" for v in vs) for k, vs in rounds.items())
    )


if __name__ == "__main__":
    main()
