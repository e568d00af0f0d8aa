"""Progress lines for long work, and the one way the phases report lines.

Every phase takes ``log``: a callable receiving one line (:func:`say`, stderr, by default;
``None`` silences). :class:`Progress` prints rows/s and ETA through such a ``log``, at most
every ``every`` seconds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def say(line: str) -> None:
    """Print one progress or notice line on stderr (the default ``log`` of the phases)."""
    print(line, file=sys.stderr, flush=True)


def _fmt_secs(s: float) -> str:
    s = int(max(s, 0))
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class Progress:
    """Report throughput and ETA while work advances.

    Args:
        total: amount of work (rows, moves, steps); 0 when unknown.
        label: what is being done, e.g. ``"extract"``.
        unit: unit of work for the rate.
        every: minimum seconds between two lines.
        log: receives each line (:func:`say` by default; ``None`` silences).
        done: work already done before this run (a resumed one): not counted in the rate.
        delay: no line before this many seconds (work that ends sooner prints nothing; 0:
            the first update prints at once).
    """

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "rows",
        every: float = 1.0,
        log: Callable[[str], None] | None = say,
        done: int = 0,
        delay: float = 0.0,
    ):
        self.total, self.label, self.unit, self.every = total, label, unit, every
        self.log = log
        self.done = done
        self._start_done = done
        self.t0 = time.perf_counter()
        self._next = self.t0 + delay  # the earliest time of the next line
        self.lines = 0  # lines printed so far

    def update(self, n: int, extra: str = "") -> None:
        """Count ``n`` more units of work; print a line if ``every`` seconds have passed."""
        self.done += n
        now = time.perf_counter()
        if self.log is not None and now >= self._next:
            self._next = now + self.every
            self._emit(now, extra)

    def _emit(self, now: float, extra: str = "") -> None:
        dt = max(now - self.t0, 1e-9)
        rate = (self.done - self._start_done) / dt
        msg = f"{self.label}: {self.done:,}"
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_s = _fmt_secs(eta) if eta != float("inf") else "?"
            msg += (
                f"/{self.total:,} {self.unit} ({pct:5.1f}%) {rate:,.0f} {self.unit}/s ETA {eta_s}"
            )
        else:
            msg += f" {self.unit} {rate:,.0f} {self.unit}/s"
        if extra:
            msg += f" {extra}"
        self.lines += 1
        self.log(msg)

    def close(self, extra: str = "") -> float:
        """Print a final line; returns elapsed seconds."""
        now = time.perf_counter()
        if self.log is not None:
            self._emit(now, extra)
        return now - self.t0
