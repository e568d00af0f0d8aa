"""The lock that keeps two extracts off one cache: ``CACHE/extract.lock``.

One implementation for every vh folder (:class:`vh.durable.Lock`): an ``flock`` the kernel
drops when its process dies, plus a record of the owner (pid, host, process start time, wall
clock start) for the message. A lock file left by a process that died on this host is taken
over with a message; one from another host is never broken automatically (its pid means
nothing here).
"""

from __future__ import annotations

import os
import sys

from vh import durable
from vh.cache import schema

REFUSAL = (
    "another extract holds this cache ({holder}); wait for it, or delete the lock if that "
    "process is gone"
)


class CacheLock(durable.Lock):
    """Hold ``CACHE/extract.lock`` for the duration of a ``with`` block.

    Args:
        cache: the cache folder (created if absent; removed again if the block fails
            before anything but the lock and the marker was written).
        log: where the stale-lock message goes (None: nowhere).

    Raises:
        VhError: another live process holds the lock (code 3).
    """

    def __init__(self, cache: str | os.PathLike, log=sys.stderr) -> None:
        super().__init__(cache, schema.LOCK, REFUSAL, log=log)
