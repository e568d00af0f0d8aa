"""`vh export RUN_DIR --init TRUNK --out NEW_INIT`."""

from __future__ import annotations

import click

from vh.progress import say
from vh.shell import done, folder_option, init_option, main, seed_option, trust_pickle_option


@main.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@init_option("The trunk init dir the run's cache was extracted from.", required=True)
@folder_option("--out", help="New init dir: the trunk plus the head as value_head.")
@click.option("--member", default=None, help="Grid member (default: best by validation NLL).")
@seed_option("Seed of a weightless init dir.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output dir.")
@click.option(
    "--temperature",
    default="none",
    show_default=True,
    help="Fold a temperature into the exported logits: auto (the eval report's "
    "recommendation, recomputed on the validation split; nothing when scaling does not "
    "help), none, or a number T > 0.",
)
@trust_pickle_option
def export(run_dir, init, out, member, seed, overwrite, temperature, trust_pickle):
    """Put a fitted head back into a trunk init dir as value_head (probe or MLP)."""
    from vh.export import export_head

    path = export_head(
        run_dir,
        init,
        out,
        member=member,
        overwrite=overwrite,
        seed=seed,
        trust_pickle=trust_pickle,
        temperature=temperature,
        log=say,
    )
    done(f"wrote init dir with value_head to {path} (model.safetensors, config.json)")
