"""``vh bench scale``: the whole pipeline as a user runs it, at several sizes, phase by phase.

For each size (states), in a work folder of its own: ``vh synth`` (greedy games, enough for
the size), ``vh extract --trunk onehot``, ``vh fit --head ordinal --arch probe`` (2 epochs;
streamed on its own when the cache does not fit in memory) and ``vh eval``. Each phase is a
separate ``vh`` process, so its wall time, CPU time and peak RSS (``os.wait4`` gives the
child's own ``ru_maxrss``) are its alone. The section gives each phase's states/s and cost
per state at every size, and the ratio of the per-state cost at the largest size to the
smallest (flat = 1×), beside the marginal cost between the two largest sizes, which leaves
out fixed costs such as starting Python and importing torch or JAX.

Measured sizes can be kept in a JSON file (``--results``) written after each size, so sizes
measured by separate runs (a long one added later) make one table.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vh.bench.report import Section, machine, number, section, table, times, today
from vh.errors import VhError
from vh.progress import say

PHASES = ("synth", "extract", "fit", "eval")
# states per greedy game (vh synth --player greedy, seed 0, 1,000 games: 352,879 states)
STATES_PER_GAME = 353
# tiles greedy games reach: 256 in ~88 % of them, 512 in ~32 %, 1024 in ~1 % (1,000 games);
# the default thresholds (1024…32768) would leave the probe almost nothing to learn
THRESHOLDS = (256, 512, 1024)
EPOCHS = 2
# disk a state needs: the dataset row (46 bytes), a float16 one-hot embedding (256 × 2) and
# the per-state columns (~40), rounded up
BYTES_PER_STATE = 640


@dataclass(frozen=True)
class Phase:
    """One phase's measurement: wall and CPU seconds, and the peak RSS of its process."""

    seconds: float
    cpu_seconds: float
    peak_bytes: int


@dataclass(frozen=True)
class SizeResult:
    """One size: the states asked for, the games played, the states made, and each phase."""

    size: int
    games: int
    states: int
    phases: dict[str, Phase]

    def cost_us(self, phase: str) -> float:
        """Wall microseconds per state of one phase."""
        return self.phases[phase].seconds / self.states * 1e6

    def total_seconds(self) -> float:
        """Wall seconds of the four phases together."""
        return sum(p.seconds for p in self.phases.values())


def games_for(size: int) -> int:
    """Greedy games that make about ``size`` states (at least 3: one per split, at best)."""
    return max(3, round(size / STATES_PER_GAME))


def phase_argv(phase: str, folder: Path, games: int, sets: tuple[str, ...]) -> list[str]:
    """The ``vh`` command line of one phase, working in ``folder`` (``--set`` values last)."""
    vh = [sys.executable, "-m", "vh"]
    extra = [a for s in sets for a in ("--set", s)]
    ds, cache, run, report = (folder / n for n in ("dataset", "cache", "run", "report"))
    if phase == "synth":
        args = ["synth", "--out", ds, "--games", games, "--player", "greedy", "--seed", 0]
    elif phase == "extract":
        args = ["extract", "--dataset", ds, "--out", cache, "--trunk", "onehot"]
    elif phase == "fit":
        thresholds = ",".join(map(str, THRESHOLDS))
        args = ["fit", "--cache", cache, "--out", run, "--head", "ordinal", "--arch", "probe",
                "--set", f"fit.train.epochs={EPOCHS}",
                "--set", f"fit.target.thresholds=[{thresholds}]"]  # fmt: skip
    else:
        args = ["eval", run, "--out", report]
    return vh + [str(a) for a in args] + extra


def measure(argv: list[str], log_path: Path) -> Phase:
    """Run one phase as a child process; its wall and CPU time and its own peak RSS.

    Its stdout goes to ``log_path``; its stderr (progress lines) passes through, so a long
    phase shows where it is. ``os.wait4`` returns the rusage of that child alone, unlike
    ``RUSAGE_CHILDREN``, whose ``ru_maxrss`` is the largest of every child reaped so far.
    """
    with open(log_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode != 0:
        name = argv[3] if len(argv) > 3 else "vh"
        # the work folder goes with its logs: the child's own error line is on stderr above
        why = f"exited with {proc.returncode} (its error is printed above)"
        raise VhError(why, field=f"vh bench scale: vh {name}")
    return Phase(seconds, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024)  # KiB on Linux


def count_states(dataset: Path) -> int:
    """States the dataset holds: the sum of its runs' steps (``metadata.db``)."""
    con = sqlite3.connect(f"file:{dataset / 'metadata.db'}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT SUM(steps) FROM runs").fetchone()[0])
    finally:
        con.close()


def check_disk(folder: Path, size: int) -> None:
    """Refuse a size whose dataset and cache would not fit on the work folder's disk."""
    need, free = size * BYTES_PER_STATE, shutil.disk_usage(folder).free
    if need > free:
        raise VhError(
            f"{size:,} states need about {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free "
            "(use a smaller size or --workdir on a larger disk)",
            path=folder,
            field="--sizes",
        )


def run_size(size: int, folder: Path, sets: tuple[str, ...], log=say) -> SizeResult:
    """The four phases for one size in ``folder`` (made here), one process each."""
    check_disk(folder.parent, size)
    folder.mkdir()
    games, phases, states = games_for(size), {}, 0
    for phase in PHASES:
        log(f"scale: {size:,} states: vh {phase} …")
        phases[phase] = measure(phase_argv(phase, folder, games, sets), folder / f"{phase}.log")
        if phase == "synth":
            states = count_states(folder / "dataset")
        p = phases[phase]
        log(f"scale: {size:,} states: vh {phase} {p.seconds:.1f} s, "
            f"{states / p.seconds:,.0f} states/s, peak RSS {p.peak_bytes / 2**30:.2f} GiB")  # fmt: skip
    return SizeResult(size, games, states, phases)


def save_results(path: Path, results: list[SizeResult]) -> None:
    """Write the measured sizes to a JSON file (replaced atomically)."""
    from vh.durable import atomic_write_text

    data = {"vh_bench_scale": [asdict(r) for r in sorted(results, key=lambda r: r.states)]}
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def load_results(path: Path) -> list[SizeResult]:
    """The sizes measured earlier into ``path`` (none when it does not exist)."""
    if not path.exists():
        return []
    from vh.durable import read_json

    try:
        return [
            SizeResult(
                d["size"], d["games"], d["states"], {k: Phase(**v) for k, v in d["phases"].items()}
            )  # fmt: skip
            for d in read_json(path, "results file")["vh_bench_scale"]
        ]
    except (KeyError, TypeError, AttributeError) as e:
        raise VhError(f"not a vh bench scale results file ({e!r})", path=path) from None


def merge(old: list[SizeResult], new: list[SizeResult]) -> list[SizeResult]:
    """Old and new sizes by size, a new measurement replacing an old one; smallest first."""
    by_size = {r.size: r for r in old} | {r.size: r for r in new}
    return sorted(by_size.values(), key=lambda r: r.states)


def bench_scale(
    sizes: list[int],
    *,
    workdir: Path | None = None,
    keep: bool = False,
    sets: tuple[str, ...] = (),
    results: Path | None = None,
    log=say,
) -> list[SizeResult]:
    """Measure every size, smallest first; the sizes (with those in ``results``) by states.

    Each size's folder is removed once measured unless ``keep`` (a 50M-state cache is 26 GB),
    and the work folder at the end; ``results`` is rewritten after each size.
    """
    base = Path(tempfile.mkdtemp(prefix="vh-bench-scale-", dir=workdir))
    done: list[SizeResult] = []
    old = load_results(results) if results else []
    try:
        for size in sorted(sizes):
            folder = base / f"states-{size}"
            done.append(run_size(size, folder, sets, log=log))
            if results:
                save_results(results, merge(old, done))
            if not keep:
                shutil.rmtree(folder)
    finally:
        if keep:
            log(f"scale: kept the work folder {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return merge(old, done)


def marginal_us(small: SizeResult, large: SizeResult, phase: str) -> float:
    """Wall microseconds per extra state between two sizes: the cost without fixed costs."""
    if large.states == small.states:
        return math.nan
    dt = large.phases[phase].seconds - small.phases[phase].seconds
    return dt / (large.states - small.states) * 1e6


def phase_rows(results: list[SizeResult]) -> list[list[str]]:
    """One table row per size and phase (then the four together)."""
    rows = []
    for r in results:
        for name in (*PHASES, "all"):
            if name == "all":
                sec = r.total_seconds()
                cpu = sum(p.cpu_seconds for p in r.phases.values())
                peak = max(p.peak_bytes for p in r.phases.values())
            else:
                p = r.phases[name]
                sec, cpu, peak = p.seconds, p.cpu_seconds, p.peak_bytes
            rows.append([number(r.states), name, number(sec, 1), number(cpu, 1),
                         number(r.states / sec), number(sec / r.states * 1e6, 2),
                         number(peak / 2**30, 2)])  # fmt: skip
    return rows


def ratio_rows(results: list[SizeResult]) -> tuple[list[list[str]], dict[str, float]]:
    """Per phase: µs/state at the smallest and largest size, their ratio, the marginal cost
    between the two largest sizes and the fixed seconds it implies at the smallest."""
    small, large = results[0], results[-1]
    prev = results[-2]
    rows, ratios = [], {}
    for name in (*PHASES, "all"):
        names = PHASES if name == "all" else (name,)
        a = sum(small.cost_us(n) for n in names)
        b = sum(large.cost_us(n) for n in names)
        m = sum(marginal_us(prev, large, n) for n in names)
        fixed = sum(small.phases[n].seconds for n in names) - m * small.states / 1e6
        ratios[name] = b / a
        rows.append([name, number(a, 2), number(b, 2), f"**{times(b / a)}**", number(m, 2),
                     number(fixed, 1)])  # fmt: skip
    return rows, ratios


def scale_section(results: list[SizeResult], *, command: str, note: str = "") -> Section:
    """The ``scale`` section: every phase at every size, then the per-state cost ratios."""
    if len(results) < 2:
        raise VhError("needs at least two sizes to compare", field="--sizes")
    small, large = results[0], results[-1]
    intro = (
        f"`{command}` — at each size: `vh synth --player greedy` ({small.games:,}…"
        f"{large.games:,} games), `vh extract --trunk onehot` (D = 256, float16), "
        f"`vh fit --head ordinal --arch probe` ({EPOCHS} epochs, thresholds "
        f"{', '.join(map(str, THRESHOLDS))}; streamed from disk when the cache does not fit "
        f"in memory) and `vh eval` (default settings), any `--set` above passed to every "
        f"phase; each phase a `vh` process of its own: wall and CPU seconds, and its own peak "
        f"RSS (`os.wait4`). States/s and µs per state count every state of the dataset for "
        f"every phase (with the default split, fit reads the 90 % train split {EPOCHS}× and "
        f"validates on 5 %; eval scores the 5 % test split). {machine()}, {today()}."
    )
    head = ["states", "phase", "wall s", "CPU s", "states/s", "µs/state", "peak RSS GiB"]
    rows, ratios = ratio_rows(results)
    ratio_head = ["phase", f"µs/state at {number(small.states)}",
                  f"µs/state at {number(large.states)}", "ratio largest / smallest",
                  "marginal µs/state (two largest)", "fixed s implied"]  # fmt: skip
    paragraphs: list[str | list[str]] = [
        intro,
        table(head, [True, False, True, True, True, True, True], phase_rows(results)),
        "Per-state cost, largest size against smallest (1× = flat). The marginal cost is the "
        "extra wall time per extra state between the two largest sizes; what it leaves "
        "unexplained at the smallest size is a fixed cost (starting Python, importing torch "
        "or JAX, compiling).",
        table(ratio_head, [False, True, True, True, True, True], rows),
    ]
    if note:
        paragraphs.append(note)
    closing = f"per-state cost at {large.states:,} / at {small.states:,} states: " + ", ".join(
        f"{n} {times(ratios[n])}" for n in (*PHASES, "all")
    )
    return section("scale", *paragraphs, closing=closing)
