"""`vh trunk init` (a seeded random-weight init dir) and `vh trunk show` (what a trunk holds)."""

from __future__ import annotations

import json

import click

from vh.shell import done, trunk

# the keys of vh.extract.trunk.PRESETS, spelled out so `vh --help` needs no torch import
# (tests/test_trunk.py checks that the two agree)
PRESET_NAMES = ("tiny", "small", "288x10")


@trunk.command("init")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Init dir to write (config.json + model.safetensors).",
)
@click.option(
    "--preset",
    type=click.Choice(PRESET_NAMES),
    default="tiny",
    show_default=True,
    help="Size: tiny 32x2, small 128x4, 288x10 (the seed trunk's shape).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Weight seed.")
@click.option(
    "--vocab",
    type=click.Choice(["16", "17"]),
    default="16",
    show_default=True,
    help="Token vocab (17 embeds 65536 tiles).",
)
@click.option(
    "--head",
    "head_type",
    type=click.Choice(["binned_ev", "action_policy"]),
    default="binned_ev",
    show_default=True,
    help="Output head of the trunk.",
)
@click.option("--qk-norm", is_flag=True, help="Per-head RMSNorm of queries and keys.")
@click.option("--sinks", is_flag=True, help="Learned attention sink logits.")
def init(
    out: str, preset: str, seed: int, vocab: str, head_type: str, qk_norm: bool, sinks: bool
) -> None:
    """Write a trunk init dir with seeded random weights (for demos and tests)."""
    from vh.extract.trunk import write_init_dir

    path = write_init_dir(
        out, preset, seed, vocab=int(vocab), head_type=head_type, qk_norm=qk_norm, sinks=sinks
    )
    done(f"wrote a random {preset} trunk (seed {seed}) to {path}")


@trunk.command("show")
@click.argument("init", type=click.Path())
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the random init when INIT has no weights.",
)
def show(init: str, seed: int) -> None:
    """Print the resolved config, the weights file, parameter count and sha256 of INIT."""
    from vh.extract.trunk import load_trunk

    lt = load_trunk(init, seed=seed)
    click.echo(json.dumps(lt.config_dict, indent=2, sort_keys=True))
    click.echo(f"weights: {lt.source or f'none (RANDOM, seed {seed})'}")
    click.echo(f"sha256: {lt.weights_sha256 or '-'}")
    click.echo(f"parameters: {sum(p.numel() for p in lt.model.parameters()):,}")
    click.echo(f"pooled dim: {lt.dim}")
    if lt.config.extra_keys:
        click.echo(f"extra config keys (kept, unused): {', '.join(lt.config.extra_keys)}")
