"""`vh trunk init` (a seeded random-weight init dir) and `vh trunk show` (what a trunk holds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

# PRESET_NAMES and trust_pickle_option are shared options; importers still find them here
from vh.shell import (
    PRESET_NAMES,  # noqa: F401
    bench,
    count_option,
    done,
    file_option,
    folder_option,
    preset_option,
    seed_option,
    trunk,
    trust_pickle_option,
)


@trunk.command("init")
@folder_option("--out", help="Init dir to write (config.json + model.safetensors).")
@preset_option(
    default="tiny",
    help="Size: tiny 32x2, small 128x4, 288x10 (the seed trunk's shape).",
)
@seed_option("Weight seed.")
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
    from vh import durable
    from vh.extract.trunk import write_init_dir

    fresh = not durable.entries(Path(out)) if Path(out).is_dir() else not os.path.lexists(out)
    path = write_init_dir(
        out, preset, seed, vocab=int(vocab), head_type=head_type, qk_norm=qk_norm, sinks=sinks
    )
    if fresh:  # all of it is vh's: marked as an init dir, as export marks the ones it writes
        durable.claim(path, "init")
    done(f"wrote a random {preset} trunk (seed {seed}) to {path}")


@trunk.command("show")
@click.argument("init", type=click.Path())
@seed_option("Seed of the random init when INIT has no weights.")
@trust_pickle_option
def show(init: str, seed: int, trust_pickle: bool) -> None:
    """Print the resolved config, the weights file, parameter count and sha256 of INIT."""
    from vh.extract.trunk import load_trunk

    lt = load_trunk(init, seed=seed, trust_pickle=trust_pickle)
    click.echo(json.dumps(lt.config_dict, indent=2, sort_keys=True))
    click.echo(f"weights: {lt.source or f'none (RANDOM, seed {seed})'}")
    click.echo(f"sha256: {lt.weights_sha256 or '-'}")
    click.echo(f"parameters: {sum(p.numel() for p in lt.model.parameters()):,}")
    click.echo(f"pooled dim: {lt.dim}")
    if lt.config.extra_keys:
        click.echo(f"extra config keys (kept, unused): {', '.join(lt.config.extra_keys)}")


def _trained(rec: dict, epochs_run: int, out) -> str:
    """The closing line of `vh trunk train`: what was trained, how well, where it went."""
    base = rec["val_baselines"]
    return (
        f"wrote a trunk trained {rec['epochs']} epochs ({epochs_run} by this run) on "
        f"{rec['rows']['train']:,} moves of {rec['train_runs']['count']:,} train runs: val "
        f"accuracy {rec['val_accuracy']:.3f} (majority move {base['majority_move']:.3f}, "
        f"uniform legal {base['uniform_legal']:.3f}) to {out}"
    )


@trunk.command("train")
@folder_option("--dataset", help="Dataset dir whose recorded moves are learnt.")
@folder_option(
    "--out", help="Init dir to write (config.json + model.safetensors + the train state)."
)
@preset_option(help="Size: tiny 32x2 (the default), small 128x4, 288x10.")
@file_option(
    "--config",
    "trunk_config",
    help="A trunk config.json to train instead of a preset (its head becomes action_policy).",
)
@click.option("--epochs", type=int, default=None, help="[trunk.epochs]")
@click.option(
    "--batch-size", type=int, default=None, help="Rows per AdamW step. [trunk.batch_size]"
)
@click.option("--lr", type=float, default=None, help="AdamW learning rate (constant). [trunk.lr]")
@click.option("--wd", type=float, default=None, help="AdamW weight decay. [trunk.wd]")
@click.option("--seed", type=int, default=None, help="Weights and shuffle seed. [trunk.seed]")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="[trunk.device]")
@click.option(
    "--threads", type=int, default=None, help="Torch CPU threads, 0 = torch's. [trunk.threads]"
)
@click.option(
    "--counts-weight",
    type=float,
    default=None,
    help="Weight of the auxiliary loss that keeps the tile counts readable from the pooled "
    "embedding; 0 trains the policy alone. [trunk.counts_weight]",
)
@file_option(
    "--settings",
    multiple=True,
    help="vh TOML config (repeatable): its [trunk] section and the split of [fit.split].",
)
@click.option(
    "--overwrite", is_flag=True, help="Start again over an init dir vh wrote (else resume)."
)
def train(
    dataset, out, preset, trunk_config, epochs, batch_size, lr, wd, seed, device, threads,
    counts_weight, settings, overwrite,
) -> None:  # fmt: skip
    """Train a trunk (Encoder + action_policy head) on DATASET's recorded moves.

    \b
    Beside the policy's loss, a linear read-out of the pooled embedding learns the board's
    tile counts (--counts-weight; 0 = the policy alone): a policy alone forgets how far the
    game has gone, which is what value heads need. The read-out is not saved in OUT.

    \b
    Only the training runs of vh fit's split are used (the same function and seed; the
    split is recorded in OUT/config.json). Rerunning the same command resumes after the
    last finished epoch; a larger --epochs continues a finished run.
    """
    from vh.config import TrunkTrainConfig, build, load_config
    from vh.errors import VhError
    from vh.extract.trunk_train import train_trunk

    cfg = load_config(settings)
    given = dict(
        epochs=epochs, batch_size=batch_size, lr=lr, wd=wd, seed=seed, device=device,
        threads=threads, counts_weight=counts_weight,
    )  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    try:
        tcfg = build(TrunkTrainConfig, given, "trunk.", base=cfg.trunk)  # flags over config
    except VhError as e:  # it names trunk.<key>: say which flag gave the value
        flag = "--" + (e.field or "").removeprefix("trunk.").replace("_", "-")
        raise VhError(e.message, path=flag, field=e.field, code=e.code) from None
    r = train_trunk(
        dataset,
        out,
        tcfg,
        preset=preset,
        config=trunk_config,
        split=cfg.fit.split,
        overwrite=overwrite,
    )
    done(_trained(r.record, r.epochs_run, r.out))


@bench.command("trunk-train")
@count_option("--rows", 20_000, "Rows trained by each measurement.")
@count_option("--batch", 256, "Rows per AdamW step.")
@preset_option(
    "--preset",
    "presets",
    multiple=True,
    default=("tiny", "small"),
    help="Trunk sizes measured (repeatable).",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@count_option("--threads", 0, "Torch CPU threads (0 = torch's default).", at_least=0)
@file_option(
    "--benchmarks",
    help="Markdown file whose 'trunk train' section is rewritten (none: print only).",
)
def bench_trunk_train_cmd(rows, batch, presets, device, threads, benchmarks) -> None:
    """Rows/s of vh trunk train's training loop (forward, backward, AdamW) per preset."""
    from vh.bench.report import publish
    from vh.bench.trunk import bench_train, trunk_section

    results = [bench_train(p, rows, batch, device, threads=threads) for p in presets]
    publish(trunk_section(results), benchmarks)
