"""`vh export RUN_DIR --init TRUNK --out NEW_INIT`."""

from __future__ import annotations

import click

from vh.shell import done, main


@main.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--init",
    "init",
    required=True,
    type=click.Path(),
    help="The trunk init dir the run's cache was extracted from.",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False),
    help="New init dir: the trunk plus the head as value_head.",
)
@click.option("--member", default=None, help="Grid member (default: best by validation NLL).")
@click.option("--seed", default=0, show_default=True, help="Seed of a weightless init dir.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output dir.")
def export(run_dir, init, out, member, seed, overwrite):
    """Put a fitted head back into a trunk init dir as value_head (probe or MLP)."""
    from vh.export import export_head

    path = export_head(run_dir, init, out, member=member, overwrite=overwrite, seed=seed)
    done(f"wrote init dir with value_head to {path} (model.safetensors, config.json)")
