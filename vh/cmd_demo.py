"""`vh demo [--out DIR]`: the whole study on a synthetic dataset, end to end."""

from __future__ import annotations

import click

from vh.shell import done, main


@main.command()
@click.option(
    "--out",
    default="demo-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the dataset, trunk, caches, runs and report go.",
)
@click.option(
    "--init",
    default=None,
    type=click.Path(),
    help="Use this trunk init dir instead of a seeded random one.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a value of the embedded demo config (configs/demo.toml).",
)
def demo(out, init, sets):
    """Synthesize games, extract caches (trunk and one-hot baseline), fit the seed's four
    comparisons plus the return head, evaluate, and write the report. Resumable."""
    from vh.demo import demo_config, run_demo

    run_demo(out, demo_config(sets), init=init)
    done(f"wrote the report to {out}/report/index.html (also report.md, metrics.json)")
