"""``vh extract`` (phase 1: dataset -> embedding cache) and ``vh bench extract``."""

from __future__ import annotations

from pathlib import Path

import click

from vh.cmd_trunk import trust_pickle_option
from vh.shell import bench, config_options, done, main


def _with_overrides(cfg, **values):
    """The config with the command-line options that were given (None = not given)."""
    from vh.config import Config, build

    given = {k: v for k, v in values.items() if v is not None}
    return build(Config, {"extract": given}, base=cfg) if given else cfg


@main.command()
@click.option(
    "--dataset",
    required=True,
    type=click.Path(file_okay=False),
    help="Dataset dir (steps-*.npy, metadata.db, optional values-*.npy).",
)
@click.option(
    "--init",
    "init",
    type=click.Path(),
    default=None,
    help="Trunk init dir, .pt bundle or .safetensors (not with --trunk onehot).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Cache dir.")
@click.option(
    "--trunk",
    type=click.Choice(["init", "onehot", "null"]),
    default=None,
    help="onehot = the raw-board baseline (no network); null = zeros of width "
    "extract.null_dim, a benchmark trunk only. [extract.trunk]",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per trunk forward. [extract.batch_size]",
)
@click.option(
    "--dtype",
    type=click.Choice(["float16", "float32"]),
    default=None,
    help="Embedding dtype in the cache. [extract.dtype]",
)
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N. [extract.device]")
@click.option(
    "--gamma",
    type=float,
    default=None,
    help="Discount of a `return` column (none without). [extract.gamma]",
)
@click.option("--overwrite", is_flag=True, help="Delete an existing cache at --out first.")
@trust_pickle_option
@config_options
def extract(
    dataset, init, out, trunk, batch_size, dtype, device, gamma, overwrite, trust_pickle, cfg
):
    """Run the frozen trunk once over DATASET and write the embedding cache OUT.

    \b
    Rerunning the same command resumes an interrupted extract; on a finished cache it says
    so. Several workers: torchrun --nproc-per-node N -m vh extract ...
    """
    from vh.extract.run import run_extract

    cfg = _with_overrides(
        cfg, trunk=trunk, batch_size=batch_size, dtype=dtype, device=device, gamma=gamma
    )
    r = run_extract(dataset, init, out, cfg, overwrite=overwrite, trust_pickle=trust_pickle)
    if r.rank != 0:  # under torchrun, rank 0 alone says what was written
        return
    if r.already_complete:
        done(
            f"{r.path} is already complete ({r.n:,} x {r.d} {r.dtype}); nothing to do "
            "(--overwrite recomputes it)"
        )
    else:
        done(
            f"wrote {r.n:,} x {r.d} {r.dtype} embeddings and per-state columns "
            f"({r.n_units} units, {r.units_done} embedded by this run) to {r.path}"
        )


@bench.command("extract")
@click.option(
    "--rows",
    type=click.IntRange(min=1),
    default=20_000,
    show_default=True,
    help="Rows embedded by each measurement.",
)
@click.option(
    "--preset",
    type=click.Choice(["tiny", "small", "288x10"]),
    default="small",
    show_default=True,
    help="Trunk size (random weights).",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Pairs of (a) bare forward then (b) pipeline; the median pair ratio is reported.",
)
@click.option(
    "--codec-mib",
    type=click.IntRange(min=0),
    default=256,
    show_default=True,
    help="Size of the emb codec measurement (0: none).",
)
@click.option(
    "--trunk",
    type=click.Choice(["init", "null", "onehot"]),
    default="init",
    show_default=True,
    help="init: a random --preset network, compared with its bare forward; null / onehot: a "
    "free trunk, the pipeline compared with the raw disk write of the same bytes.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the dataset and caches go (a temp dir by default).",
)
@click.option(
    "--benchmarks",
    type=click.Path(dir_okay=False),
    default="BENCHMARKS.md",
    show_default=True,
    help="Markdown file whose 'extract' section is rewritten.",
)
@config_options
def bench_extract_cmd(rows, preset, repeats, codec_mib, trunk, workdir, benchmarks, cfg):
    """The full extract vs its bound on the same rows: the bare trunk forward on pre-decoded
    tokens (--trunk init), or the raw disk write of the same bytes (--trunk null|onehot)."""
    import tempfile

    from vh.bench.extract import bench_extract, extract_section
    from vh.bench.report import publish

    cfg = _with_overrides(cfg, trunk=trunk)
    with tempfile.TemporaryDirectory() as tmp:
        res = bench_extract(
            cfg,
            rows=rows,
            preset=preset,
            repeats=repeats,
            workdir=Path(workdir or tmp),
            codec_bytes=codec_mib << 20,
        )
    publish(extract_section(res), benchmarks)


@bench.command("gpu")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (a GPU when there is one, else the CPU fallback), cpu, cuda or cuda:N.",
)
@click.option("--extract-rows", type=click.IntRange(min=1), default=5_000_000,
              show_default=True, help="Synthetic states embedded by the extract part.")  # fmt: skip
@click.option("--preset", type=click.Choice(["tiny", "small", "288x10"]), default="288x10",
              show_default=True, help="Trunk size (random weights).")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(min=1), default=16_384, show_default=True,
              help="Rows per trunk forward.")  # fmt: skip
@click.option("--probe-rows", type=click.IntRange(min=1), default=20_000_000,
              show_default=True, help="Cached rows of the probe and 8-head grid epochs.")  # fmt: skip
@click.option("--dim", type=click.IntRange(min=1), default=288, show_default=True,
              help="Width of the cached rows.")  # fmt: skip
@click.option("--mlp-rows", type=click.IntRange(min=1), default=2_000_000, show_default=True,
              help="Rows of the MLP head's epoch.")  # fmt: skip
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Timed rounds of the heads (after a warm-up round).")  # fmt: skip
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where the dataset and cache go (a temp dir by default).")  # fmt: skip
@click.option("--md", type=click.Path(dir_okay=False), default="BENCHMARKS.md",
              show_default=True, help="Markdown file whose 'gpu' section is rewritten.")  # fmt: skip
@config_options
def bench_gpu_cmd(device, extract_rows, preset, batch_size, probe_rows, dim, mlp_rows, rounds,
                  workdir, md, cfg):  # fmt: skip
    """The device figures in one command (≤ 5 minutes on an H200): extract with the trunk in
    bf16, the full pipeline vs the bare forward; an on-device probe epoch, the MLP head and an
    8-head grid. Without a GPU it runs on the CPU (use small sizes)."""
    import tempfile

    from vh.bench.gpu import bench_gpu
    from vh.bench.report import publish

    with tempfile.TemporaryDirectory() as tmp:
        sec = bench_gpu(
            cfg,
            device=device,
            extract_rows=extract_rows,
            preset=preset,
            batch_size=batch_size,
            probe_rows=probe_rows,
            dim=dim,
            mlp_rows=mlp_rows,
            rounds=rounds,
            workdir=Path(workdir or tmp),
        )
    publish(sec, md)
