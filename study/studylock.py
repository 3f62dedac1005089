"""One driver per study: an advisory lock on the study's results folder."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType


class StudyLocked(RuntimeError):
    """Another driver is running this study."""


class StudyLock:
    """Held while a driver runs a study; released by the kernel if the driver dies, so a
    lock left by a killed driver is never in the way."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / ".lock"
        self._fh = None

    def __enter__(self) -> StudyLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115  (held open for the lock's lifetime)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            try:
                holder = json.loads(fh.read())
                who = f"PID {holder['pid']} on {holder['host']}, since {holder['since']}"
            except (ValueError, KeyError):
                who = "another driver"
            fh.close()
            raise StudyLocked(
                f"{self.path.parent} is being run by {who}; wait for it to finish (or stop it) and run again"
            ) from None
        fh.seek(0)
        fh.truncate()
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat()}
        fh.write(json.dumps(info))
        fh.flush()
        self._fh = fh
        return self

    @staticmethod
    def held(folder: Path) -> bool:
        """Whether a driver on this machine holds the study's lock now, by the record the holder
        keeps in it (a released lock is emptied; a killed holder's process is gone). It takes
        no lock itself, so it never gets in a starting driver's way."""
        try:
            holder = json.loads((Path(folder) / ".lock").read_text() or "null")
        except (OSError, ValueError):
            return False
        if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except (ProcessLookupError, KeyError, ValueError, TypeError):
            return False
        except PermissionError:  # alive, another user's
            return True
        return True

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._fh is not None:
            self._fh.seek(0)
            self._fh.truncate()
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
