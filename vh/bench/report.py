"""One way for every ``vh bench`` command to report: figures, ratios and a BENCHMARKS.md section.

A benchmark returns a :class:`Section`: the markdown it owns in BENCHMARKS.md (from its
``## name`` line to the next ``## ``) and one closing line naming its headline ratio.
:func:`publish` prints the section, writes it into the markdown file when one is given (the
other sections are kept) and ends with the closing line, the same way for every phase.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import click


@dataclass(frozen=True)
class Section:
    """What one benchmark reports.

    Attributes:
        name: its section of BENCHMARKS.md (``## name``).
        text: the markdown of the section, starting with its ``## name`` line.
        closing: one line for the terminal: the headline figure or ratio.
    """

    name: str
    text: str
    closing: str


def number(x: float, decimals: int = 0) -> str:
    """A figure: thousands separated, ``decimals`` digits after the point (``1,234,567``)."""
    return f"{x:,.{decimals}f}"


def times(x: float, decimals: int = 2) -> str:
    """A ratio of two figures: ``4.19×``."""
    return f"{number(x, decimals)}×"


def goal(text: str, met: bool) -> str:
    """A goal and whether this run met it: ``text (met)`` / ``text (NOT met)``."""
    return f"{text} ({'met' if met else 'NOT met'})"


def table(header: list[str], right: list[bool], rows: list[list[str]]) -> list[str]:
    """A markdown table: header cells, whether each column is right-aligned, rows of cells."""
    rule = ["---:" if r else "---" for r in right]
    return [f"| {' | '.join(cells)} |" for cells in (header, rule, *rows)]


def measurements(units: list[str], rows: list[list[str]]) -> list[str]:
    """The figures table every benchmark opens with: a ``measurement`` column (left), then one
    right-aligned column per unit (``rows/s``, ``seconds`` …)."""
    return table(["measurement", *units], [False] + [True] * len(units), rows)


def today() -> str:
    """The date stamped on a section (YYYY-MM-DD)."""
    return time.strftime("%Y-%m-%d")


def machine() -> str:
    """The machine in a few words: ``x86_64, 2 cores``."""
    return f"{platform.machine()}, {os.cpu_count()} cores"


def section(name: str, *paragraphs: str | list[str], closing: str) -> Section:
    """A :class:`Section` from its paragraphs (a string, or a table's lines), blank-separated."""
    lines = [f"## {name}", ""]
    for p in paragraphs:
        lines += [*(p if isinstance(p, list) else [p]), ""]
    return Section(name, "\n".join(lines), closing)


def replace_section(path: Path, name: str, text: str) -> None:
    """Replace (or append) the ``## name`` section of a markdown file, keeping the others."""
    lines = path.read_text().splitlines() if path.exists() else ["# Benchmarks", ""]
    head = f"## {name}"
    start = next((i for i, line in enumerate(lines) if line.strip() == head), None)
    if start is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *text.rstrip("\n").splitlines()]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = [*text.rstrip("\n").splitlines(), ""]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def publish(result: Section, md: str | os.PathLike | None) -> None:
    """Print a benchmark's section, write it into ``md`` when given, then its closing line."""
    from vh.shell import done

    click.echo(result.text)
    if md:
        replace_section(Path(md), result.name, result.text)
    done(result.closing + (f"; wrote section '{result.name}' of {md}" if md else ""))
