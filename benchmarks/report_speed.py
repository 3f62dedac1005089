"""Time and peak memory of `study report` on a large synthetic study.

1,024 runs (4 envs × 8 sampling intervals × layer norm on/off × 16 seeds), each with 100
evaluations, 500 training episodes and 500 adaptations, written like real results; then, in
a fresh process, load + metrics + aggregates + every figure and table, timed, with the peak
resident memory of that process. Targets: under 30 s and under 2 GB.

    python benchmarks/report_speed.py [--seeds 16] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

STUDY = {
    "name": "report_speed",
    "algo": "td3",
    "envs": ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "MountainCarContinuous-v0"],
    "total_steps": 1_000_000,
    "budgets": {"full": 1_000_000},
    "hyperparams": {"learning_starts": 10_000},
    "exploration": {"param_noise": {"interval": "episode"}},
    "grid": {"exploration.param_noise.interval": [1, 2, 4, 8, 16, 64, 256, "episode"], "layer_norm": [True, False]},
}


def write_study(folder: Path, seeds: int) -> Path:
    from study.config import load_study
    from study.store import write_run
    from study.synthetic import fake_result

    path = folder / "report_speed.yaml"
    path.write_text(yaml.safe_dump(STUDY | {"seeds": seeds}))
    for spec in load_study(path).runs:
        write_run(fake_result(spec, n_evaluations=100, n_episodes=500), folder / "results")
    return path


def measure(path: Path) -> None:
    """In this process: the whole report, timed; prints seconds and peak memory."""
    from study.analysis.report import build_report
    from study.config import load_study

    start = time.perf_counter()
    study = load_study(path)
    report = build_report(study, path.parent / "results")
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(study.runs)} runs: report in {seconds:.1f} s (target < 30 s), ", end="")
    print(f"peak memory {peak_mb:.0f} MB (target < 2048 MB); {len(report.figures)} figures")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--keep", type=Path, help="write the synthetic study here and keep it")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        path = write_study(folder, args.seeds)
        print(f"wrote the synthetic study in {time.perf_counter() - start:.0f} s (not timed below)")
        subprocess.run([sys.executable, __file__, "--measure", str(path)], check=True)


if __name__ == "__main__":
    main()
