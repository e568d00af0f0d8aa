"""``vh extract`` (phase 1: dataset -> embedding cache) and ``vh bench extract``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from vh.shell import (
    bench,
    config_options,
    count_option,
    done,
    file_option,
    folder_option,
    init_option,
    main,
    preset_option,
    trust_pickle_option,
)


def _with_overrides(cfg, **values):
    """The config with the command-line options that were given (None = not given)."""
    from vh.config import Config, build

    given = {k: v for k, v in values.items() if v is not None}
    return build(Config, {"extract": given}, base=cfg) if given else cfg


def _bench_files(caches: str, md: str, section: str) -> Callable:
    """``--workdir`` (where a benchmark's dataset and ``caches`` go) and the markdown file
    ``md`` whose ``section`` it rewrites: the two files options of the extract benchmarks."""

    def add(fn: Callable) -> Callable:
        why = f"Markdown file whose '{section}' section is rewritten."
        fn = file_option(md, default="BENCHMARKS.md", help=why)(fn)
        why = f"Where the dataset and {caches} go (a temp dir by default)."
        return folder_option("--workdir", required=False, help=why)(fn)

    return add


def _in_workdir(run: Callable, cfg, workdir: str | None, **kw):
    """``run(cfg, workdir=..., **kw)`` in ``workdir``, or in a temp dir removed afterwards."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return run(cfg, workdir=Path(workdir or tmp), **kw)


@main.command()
@folder_option("--dataset", help="Dataset dir (steps-*.npy, metadata.db, optional values-*.npy).")
@init_option("Trunk init dir, .pt bundle or .safetensors (not with --trunk onehot).")
@folder_option("--out", help="Cache dir.")
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
@count_option("--rows", 20_000, "Rows embedded by each measurement.")
@preset_option(default="small", help="Trunk size (random weights).")
@count_option(
    "--repeats",
    5,
    "Pairs of (a) bare forward then (b) pipeline; the median pair ratio is reported.",
)
@count_option("--codec-mib", 256, "Size of the emb codec measurement (0: none).", at_least=0)
@click.option(
    "--trunk",
    type=click.Choice(["init", "null", "onehot"]),
    default="init",
    show_default=True,
    help="init: a random --preset network, compared with its bare forward; null / onehot: a "
    "free trunk, the pipeline compared with the raw disk write of the same bytes.",
)
@_bench_files("caches", "--benchmarks", section="extract")
@config_options
def bench_extract_cmd(rows, preset, repeats, codec_mib, trunk, workdir, benchmarks, cfg):
    """The full extract vs its bound on the same rows: the bare trunk forward on pre-decoded
    tokens (--trunk init), or the raw disk write of the same bytes (--trunk null|onehot)."""
    from vh.bench.extract import bench_extract, extract_section
    from vh.bench.report import publish

    cfg = _with_overrides(cfg, trunk=trunk)
    sizes = dict(rows=rows, preset=preset, repeats=repeats, codec_bytes=codec_mib << 20)
    publish(extract_section(_in_workdir(bench_extract, cfg, workdir, **sizes)), benchmarks)


@bench.command("gpu")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (a GPU when there is one, else the CPU fallback), cpu, cuda or cuda:N.",
)
@count_option("--extract-rows", 5_000_000, "Synthetic states embedded by the extract part.")
@preset_option(default="288x10", help="Trunk size (random weights).")
@count_option("--batch-size", 16_384, "Rows per trunk forward.")
@count_option("--probe-rows", 20_000_000, "Cached rows of the probe and 8-head grid epochs.")
@count_option("--dim", 288, "Width of the cached rows.")
@count_option("--mlp-rows", 2_000_000, "Rows of the MLP head's epoch.")
@count_option("--rounds", 2, "Timed rounds of the heads (after a warm-up round).")
@_bench_files("cache", "--md", section="gpu")
@config_options
def bench_gpu_cmd(workdir, md, cfg, **sizes):
    """The device figures in one command (≤ 5 minutes on an H200): extract with the trunk in
    bf16, the full pipeline vs the bare forward; an on-device probe epoch, the MLP head and an
    8-head grid. Without a GPU it runs on the CPU (use small sizes)."""
    from vh.bench.gpu import bench_gpu
    from vh.bench.report import publish

    # the other options (--device, --extract-rows, ...) are bench_gpu's keywords by name
    publish(_in_workdir(bench_gpu, cfg, workdir, **sizes), md)
