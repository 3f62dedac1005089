"""What produced a result: package versions, the project's code version, the host."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "study",
    "stable-baselines3",
    "sb3-contrib",
    "torch",
    "gymnasium",
    "mujoco",
    "numpy",
    "pandas",
    "pyarrow",
    "pydantic",
    "ray",
)


@cache
def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@cache
def code_version() -> dict[str, str | bool | None]:
    """The git commit of the project's source tree, and whether it had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", "study", "pyproject.toml")
    return {"commit": commit, "dirty": bool(status) if commit else None}


def host() -> dict[str, str]:
    return {
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
    }


def cpu_model() -> str:
    """The processor's model name, as the OS names it ("" where it does not say)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
