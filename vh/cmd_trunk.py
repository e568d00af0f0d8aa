"""`vh trunk init` (a seeded random-weight init dir) and `vh trunk show` (what a trunk holds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from vh.shell import bench, done, trunk

# the keys of vh.extract.trunk.PRESETS, spelled out so `vh --help` needs no torch import
# (tests/test_trunk.py checks that the two agree)
PRESET_NAMES = ("tiny", "small", "288x10")

# every command that reads a trunk takes this flag (vh extract, vh export, vh demo, vh trunk show)
trust_pickle_option = click.option(
    "--trust-pickle",
    is_flag=True,
    help="Load a .pt trunk that holds pickled objects beyond tensors. This EXECUTES code "
    "from the file: only for files you trust (better: convert it to safetensors once).",
)


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
@click.option(
    "--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True, help="Weight seed."
)
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
@click.option(
    "--seed",
    type=click.IntRange(0, 2**31 - 1),  # numpy/torch/JAX all take these
    default=0,
    show_default=True,
    help="Seed of the random init when INIT has no weights.",
)
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


@trunk.command("train")
@click.option(
    "--dataset",
    required=True,
    type=click.Path(file_okay=False),
    help="Dataset dir whose recorded moves are learnt.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Init dir to write (config.json + model.safetensors + the train state).",
)
@click.option(
    "--preset",
    type=click.Choice(PRESET_NAMES),
    default=None,
    help="Size: tiny 32x2 (the default), small 128x4, 288x10.",
)
@click.option(
    "--config",
    "trunk_config",
    type=click.Path(dir_okay=False),
    default=None,
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
    "--settings",
    "settings",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="vh TOML config (repeatable): its [trunk] section and the split of [fit.split].",
)
@click.option(
    "--overwrite", is_flag=True, help="Start again over an init dir vh wrote (else resume)."
)
def train(
    dataset, out, preset, trunk_config, epochs, batch_size, lr, wd, seed, device, threads,
    settings, overwrite,
) -> None:  # fmt: skip
    """Train a trunk (Encoder + action_policy head) on DATASET's recorded moves.

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
        threads=threads,
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
    rec = r.record
    base = rec["val_baselines"]
    done(
        f"wrote a trunk trained {rec['epochs']} epochs ({r.epochs_run} by this run) on "
        f"{rec['rows']['train']:,} moves of {rec['train_runs']['count']:,} train runs: val "
        f"accuracy {rec['val_accuracy']:.3f} (majority move {base['majority_move']:.3f}, "
        f"uniform legal {base['uniform_legal']:.3f}) to {r.out}"
    )


@bench.command("trunk-train")
@click.option(
    "--rows",
    type=click.IntRange(min=1),
    default=20_000,
    show_default=True,
    help="Rows trained by each measurement.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Rows per AdamW step.",
)
@click.option(
    "--preset",
    "presets",
    type=click.Choice(PRESET_NAMES),
    multiple=True,
    default=("tiny", "small"),
    show_default=True,
    help="Trunk sizes measured (repeatable).",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Torch CPU threads (0 = torch's default).",
)
@click.option(
    "--benchmarks",
    type=click.Path(dir_okay=False),
    default=None,
    help="Markdown file whose 'trunk train' section is rewritten (none: print only).",
)
def bench_trunk_train_cmd(rows, batch, presets, device, threads, benchmarks) -> None:
    """Rows/s of vh trunk train's training loop (forward, backward, AdamW) per preset."""
    from vh.bench.report import publish
    from vh.bench.trunk import bench_train, trunk_section

    results = [bench_train(p, rows, batch, device, threads=threads) for p in presets]
    publish(trunk_section(results), benchmarks)
