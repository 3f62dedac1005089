"""Wall time of a 4-run grid: one after another in-process vs the Ray launcher with 2 workers.

Prints both wall times, the speedup, and the launcher's fixed overhead: Ray's start-up (as the
launcher starts it: loopback only, no metrics), and the time per run the launcher adds beyond
the runs' own work (dispatch, worker start-up with its imports, result transfer and the
driver's writes). With `--engine stacked`, the launcher trains two groups of 2, one per
worker, and "in-process" trains the same two groups one after the other.

    python benchmarks/grid_scaling.py [--steps 20000] [--engine sb3|stacked]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from study.config import load_study
from study.launch import _init_ray, plan_tasks, run_study
from study.run import execute
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


def _warm_up() -> None:
    import study.run  # noqa: F401
    import study.stacked.group  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000, help="steps per run")
    parser.add_argument("--engine", choices=["sb3", "stacked"], default="sb3")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scaling.yaml"
        path.write_text(yaml.safe_dump(STUDY | {"total_steps": args.steps, "budgets": {"full": args.steps}}))
        study = load_study(path, engine=args.engine)

        start = time.perf_counter()
        if args.engine == "stacked":  # the launcher's tasks, one after the other
            sequential = [result for task in plan_tasks(study.runs, 2) for result in run_group(task)]
        else:
            sequential = [execute(spec) for spec in study.runs]
        t_seq = time.perf_counter() - start

        import ray

        warm_up = ray.remote(num_cpus=1)(_warm_up)
        start = time.perf_counter()
        _init_ray(None, 2, verbose=False)
        t_ray = time.perf_counter() - start
        start = time.perf_counter()  # two worker processes start and import torch, SB3 and study
        ray.get([warm_up.remote() for _ in range(2)])
        t_warm = time.perf_counter() - start

        start = time.perf_counter()
        summary = run_study(study, Path(tmp) / "results", workers=2)
        t_runs = time.perf_counter() - start
        ray.shutdown()
    t_par = t_ray + t_warm + t_runs

    assert len(summary.done) == len(sequential) == 4
    groups = {tuple(r.meta.get("group", [r.spec.run_id])): r.meta["wall_time_s"] for r in summary.done}
    busy = sum(groups.values()) / 2  # the runs' (or groups') own work per worker
    per_run = (t_runs - busy) / len(summary.done)
    tasks_alone = {tuple(r.meta.get("group", [r.spec.run_id])): r.meta["wall_time_s"] for r in sequential}
    alone = sum(tasks_alone.values()) / len(tasks_alone)
    side_by_side = sum(groups.values()) / len(groups)
    print(f"4 runs x {args.steps} steps, TD3 64-64 on Pendulum-v1, engine {args.engine}")
    print(f"  sequential, in-process     {t_seq:7.1f} s")
    print(f"  launcher, 2 workers        {t_par:7.1f} s   speedup {t_seq / t_par:.2f}x  (target >= 1.8x)")
    print(f"  fixed: Ray start           {t_ray:7.1f} s")
    print(f"  fixed: 2 workers' imports  {t_warm:7.1f} s   (fixed total {t_ray + t_warm:.1f} s, target < 10 s)")
    print(f"  launcher overhead per run  {per_run:7.2f} s   (dispatch, transfer, writes; target < 0.5 s)")
    task = "group of 2" if args.engine == "stacked" else "run"
    print(f"  a {task}, in-process      {alone:7.1f} s;  in a worker, beside the other: {side_by_side:.1f} s")


if __name__ == "__main__":
    main()
