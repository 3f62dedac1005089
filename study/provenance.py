"""What produced a result: package versions, the project's code version, the host."""

from __future__ import annotations

import hashlib
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


SOURCE = ("study", "pyproject.toml")  # what a run's code is: the package and its pinned dependencies


@cache
def code_version() -> dict[str, str | bool | None]:
    """The git commit of the project's source tree, whether it had uncommitted changes, and the
    sha256 of its source (`source_sha256`), which identifies the code also where git does not
    (an export, an installed copy)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", *SOURCE)
    return {"commit": commit, "dirty": bool(status) if commit else None, "source_sha256": source_sha256(root)}


def source_sha256(root: Path) -> str:
    """The sha256 of the project's source under `root`: each Python file of the package and
    pyproject.toml, by relative path, in sorted order."""
    digest = hashlib.sha256()
    files = sorted((root / SOURCE[0]).rglob("*.py")) + [root / name for name in SOURCE[1:]]
    for path in files:
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


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
