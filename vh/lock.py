"""The one lock of vh: exclusive use of a folder by one process (see :mod:`vh.durable`).

An ``flock`` the kernel drops when its holder dies, plus a JSON record of the holder (pid,
host, process start time) for the refusal message and for what ``flock`` cannot see: a
holder on another host is never broken; a stale record of a dead process on this host is
taken over with a message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from vh.errors import VhError


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 probes without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 counted from the pid; comm may hold spaces


def _holder_alive(rec: dict) -> bool:
    """Whether the process a lock record names still runs (same pid and start time)."""
    pid = rec.get("pid")
    if not isinstance(pid, int):
        return False
    if not pid_alive(pid):
        return False
    start = _proc_start(pid)
    return start is None or rec.get("proc_start") in (None, start)


def describe_holder(rec: dict) -> str:
    """``pid N on HOST since TIME`` from a lock record (what the refusal shows)."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.get("started_unix", 0)))
    return f"pid {rec.get('pid')} on {rec.get('host')} since {since}"


class Lock:
    """Exclusive use of a folder by one process: ``FOLDER/NAME`` for a ``with`` block.

    The one lock of vh (run dirs: ``lock``; caches: ``extract.lock``). Two guards together:

    - an ``flock`` on the file: the kernel drops it when its process dies, so a process
      killed with SIGKILL never blocks the next one, and two live ones never both hold it;
    - a record in the file (JSON: pid, host, process start time, start time), for the
      message and for what ``flock`` cannot see: a record of a live process on this host
      (a vh that locked without flock) or of another host (``flock`` may not reach across
      a network file system, and a pid there means nothing here) is never broken. A record
      left by a dead process on this host is replaced, saying so on ``log``.

    The file is deleted on release. A folder the lock created is removed again when the
    block fails while it holds nothing but the lock and the ownership marker: a refused
    command leaves nothing behind.

    Args:
        folder: the folder (created if absent).
        name: the lock file's name in it.
        refusal: the message when another process holds it; ``{holder}`` is replaced by
            :func:`describe_holder`'s text.
        log: where the stale-lock line goes (a stream, or None for nowhere).

    Raises:
        VhError: (code 3, naming the lock file) another process holds the lock.
    """

    def __init__(self, folder: str | os.PathLike, name: str, refusal: str, log=None) -> None:
        self.path = Path(folder) / name
        self.refusal, self.log = refusal, log
        self.fd: int | None = None
        self.created = False

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        held = self.fd is not None
        if held and exc_type is not None and self.created:
            self._remove_if_bare()  # still holding the lock: nobody else is in there
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise the refusal (VhError, code 3)."""
        self.created = not os.path.lexists(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # the holder deleted the file between our open and flock: again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                rec = self._record(fd)
                os.close(fd)
                self._refuse(rec)
            if self._same_file(fd):
                break
            os.close(fd)
        else:
            self._refuse({})
        self.fd = fd
        self._take_over(self._record(fd))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._own_record()).encode(), 0)
        os.fsync(fd)

    def release(self) -> None:
        """Delete the lock file and drop the lock (no-op when not held)."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding it: nobody reads a stale one
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    # ---- helpers

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    @staticmethod
    def _record(fd: int) -> dict:
        try:
            rec = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # torn by a kill, or a pre-JSON lock of vh 0.1: nobody holds it now
        return rec if isinstance(rec, dict) else {}

    @staticmethod
    def _own_record() -> dict:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "proc_start": _proc_start(os.getpid()),
            "started_unix": time.time(),
        }

    def _take_over(self, rec: dict) -> None:
        """With the flock held: refuse a record flock cannot vouch for, else replace it."""
        if not rec or rec.get("pid") is None:
            return
        here = rec.get("host") == socket.gethostname()
        if not here or (_holder_alive(rec) and rec.get("pid") != os.getpid()):
            self.release_fd_only()
            self._refuse(rec)
        if self.log is not None:
            print(
                f"{self.path}: removing a stale lock of pid {rec.get('pid')} (no such "
                "process); resuming",
                file=self.log,
                flush=True,
            )

    def release_fd_only(self) -> None:
        """Drop the lock without deleting the file (it is someone else's record)."""
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def _refuse(self, rec: dict) -> None:
        holder = describe_holder(rec) if rec else "unknown holder"
        raise VhError(self.refusal.format(holder=holder), path=self.path, code=3)

    def _remove_if_bare(self) -> None:
        """Remove the folder this lock created if it holds only the lock and the marker."""
        folder = self.path.parent
        names = set(os.listdir(folder))
        from vh.durable import MARKER  # the ownership marker may stay: vh made the folder

        if names <= {self.path.name, MARKER}:
            for name in names:
                (folder / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # someone just added a file: keep the folder
                folder.rmdir()
