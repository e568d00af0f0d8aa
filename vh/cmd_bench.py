"""``vh bench scale``: the whole pipeline at several sizes, each phase a process of its own."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from vh.errors import VhError
from vh.shell import bench

DEFAULT_SIZES = "1000000,10000000,50000000"


def parse_sizes(text: str) -> list[int]:
    """``1000000,10000000`` -> distinct positive sizes, smallest first; bad input: VhError."""
    try:
        sizes = sorted({int(s.replace("_", "")) for s in text.split(",") if s.strip()})
    except ValueError:
        raise VhError(
            f"not a comma-separated list of integers: {text!r}", field="--sizes"
        ) from None
    if any(s < 1 for s in sizes):
        raise VhError(f"sizes must be at least 1 state, got {text!r}", field="--sizes")
    return sizes


@bench.command("scale")
@click.option(
    "--sizes", default=DEFAULT_SIZES, show_default=True,
    help="States per size, comma-separated (greedy games enough for each).",
)  # fmt: skip
@click.option(
    "--workdir", type=click.Path(file_okay=False, exists=True),
    help="Make the work folder under this folder (default: the temp folder); removed after.",
)  # fmt: skip
@click.option("--keep", is_flag=True, help="Keep the work folder (datasets, caches, runs, logs).")
@click.option(
    "--md", type=click.Path(dir_okay=False),
    help="Also write the results as section 'scale' of this markdown file.",
)  # fmt: skip
@click.option("--note", default="", help="A paragraph to add to the section (conditions).")
@click.option(
    "--results", type=click.Path(dir_okay=False),
    help="JSON file of measured sizes: read, then rewritten after each size, so sizes "
    "measured by separate runs make one table.",
)  # fmt: skip
@click.option(
    "--render-only", is_flag=True,
    help="Measure nothing: write the section from --results (e.g. with a new --note).",
)  # fmt: skip
@click.option(
    "--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
    help="A config override passed to every phase (repeatable).",
)  # fmt: skip
def bench_scale_cmd(sizes, workdir, keep, md, note, results, render_only, sets):
    """Synth, extract, fit and eval as a user runs them, at each size: time, states/s, RSS.

    \b
    Prints each phase's figures at each size and the ratio of the per-state cost at the
    largest size to the smallest (flat = 1x). Example:
      vh bench scale --sizes 1000000,10000000 --md BENCHMARKS.md
    """
    from vh.bench.report import publish
    from vh.bench.scale import bench_scale, load_results, scale_section
    from vh.config import load_config

    load_config((), sets)  # a bad --set fails here, in one line, not in the first phase
    res = Path(results) if results else None
    if render_only:
        if res is None:
            raise VhError("--render-only needs --results", field="--render-only")
        measured = load_results(res)
        command = "vh bench scale --sizes " + ",".join(str(r.size) for r in measured)
    else:
        measured = bench_scale(
            parse_sizes(sizes),
            workdir=Path(workdir) if workdir else None,
            keep=keep,
            sets=tuple(sets),
            results=res,
        )
        command = f"vh bench scale --sizes {sizes}" + "".join(
            f" --set {shlex.quote(s)}" for s in sets
        )
        if res is not None:  # the table also holds the sizes measured earlier into it
            command += f" --results {shlex.quote(str(res))}"
    publish(scale_section(measured, command=command, note=note), md)
