"""Progress lines for long work: rows/s and ETA on stderr, at most every ``every`` seconds."""

from __future__ import annotations

import sys
import time


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
        stream: where lines go (stderr by default; ``None`` silences).
    """

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "rows",
        every: float = 1.0,
        stream=sys.stderr,
        done: int = 0,
    ):
        self.total, self.label, self.unit, self.every = total, label, unit, every
        self.stream = stream
        self.done = done
        self._start_done = done
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, n: int, extra: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        if self.stream is not None and now - self._last >= self.every:
            self._last = now
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
        print(msg, file=self.stream, flush=True)

    def close(self, extra: str = "") -> float:
        """Print a final line; returns elapsed seconds."""
        now = time.perf_counter()
        if self.stream is not None:
            self._emit(now, extra)
        return now - self.t0


def say(line: str) -> None:
    """Print one progress or notice line on stderr (the default ``log`` of the phases)."""
    print(line, file=sys.stderr, flush=True)
