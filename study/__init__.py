"""study: reproduce and ablate parameter-space noise exploration on stable-baselines3.

- `study.policies` / `study.exploration`: parameter noise for your own SB3 scripts;
- `study.config.load_study` → `study.launch.run_study` → `study.store.load_results`: studies;
- `study.analysis`: metrics, aggregates, figures, tables and reports.
"""

from importlib.metadata import PackageNotFoundError, version

import study.envs  # noqa: F401  (registers the project's environments with gymnasium)

try:
    __version__ = version("study")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
