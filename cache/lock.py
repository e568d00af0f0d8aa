"""A lock file that keeps two extracts off one cache.

The lock (``CACHE/extract.lock``) holds the owner's pid, host, process start time and the
wall-clock start. It is created with ``O_EXCL``, so exactly one process wins. A lock left by a
process that died (same host, pid gone or reused by another process) is recovered with a
message; a lock from another host is never broken automatically (its pid means nothing here).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from vh.cache import schema
from vh.errors import VhError


def _proc_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 counted from the pid; comm may hold spaces


def _alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    start = _proc_start(pid)
    return start is None or owner.get("proc_start") in (None, start)


class CacheLock:
    """Hold ``CACHE/extract.lock`` for the duration of a ``with`` block.

    Args:
        cache: the cache folder (created if absent).
        log: where the stale-lock message goes (None: nowhere).

    Raises:
        VhError: another live process holds the lock (code 3).
    """

    def __init__(self, cache: str | os.PathLike, log=sys.stderr):
        self.path = Path(cache) / schema.LOCK
        self.log = log
        self.held = False

    def _owner(self) -> dict:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "proc_start": _proc_start(os.getpid()),
            "started_unix": time.time(),
        }

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock is removed once; a race with a peer ends in one error
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._break_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._owner(), f)
            self.held = True
            return
        self._refuse(self._read())

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def _refuse(self, owner: dict) -> None:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started_unix", 0)))
        raise VhError(
            f"another extract holds this cache (pid {owner.get('pid')} on "
            f"{owner.get('host')} since {since}); wait for it, or delete the lock "
            "if that process is gone",
            path=self.path,
            code=3,
        )

    def _break_if_stale(self) -> None:
        owner = self._read()
        if not owner:  # being written right now by its owner, or garbage: judge by age
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return  # released meanwhile: try again
            if age < 10:
                self._refuse(owner)
        elif owner.get("host") != socket.gethostname() or _alive(owner):
            self._refuse(owner)
        if self.log is not None:
            print(
                f"{self.path}: removing a stale lock of pid {owner.get('pid')} (no such "
                "process); resuming",
                file=self.log,
                flush=True,
            )
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> CacheLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
