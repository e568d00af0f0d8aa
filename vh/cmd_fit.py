"""``vh fit``: heads on the embedding cache (JAX); ``vh bench fit``: how fast that is."""

from __future__ import annotations

import dataclasses

import click

from vh.heads.targets import cli_names
from vh.shell import bench, config_options, count_option, done, file_option, folder_option, main

HEADS = cli_names()  # --head NAME -> fit.target.kind: every target kind and its aliases


@main.command()
@folder_option("--cache", help="Embedding cache written by vh extract.")
@folder_option("--out", help="Run dir.")
@click.option(
    "--head",
    type=click.Choice(sorted(HEADS)),
    help="Target (fit.target.kind); "
    + ", ".join(f"{a} = {k}" for a, k in sorted(HEADS.items()) if a != k)
    + ".",
)
@click.option("--arch", type=click.Choice(["probe", "mlp"]), help="Head (fit.head.arch).")
@click.option(
    "--grid",
    multiple=True,
    metavar="KEY=V1,V2,…",
    help="Train a grid in one vmapped pass (keys lr, wd, seed; repeatable).",
)
@click.option(
    "--resume/--overwrite",
    default=None,
    help="Default: resume a matching run dir, else start; --overwrite starts over (only in a "
    "run dir vh made; never the cache or a folder holding it).",
)
@config_options
def fit(cfg, cache, out, head, arch, grid, resume):
    """Fit value heads on a cache: splits by run, early stopping, best checkpoints.

    \b
    Example:
      vh fit --cache CACHE --out runs/probe_ord --head ordinal --arch probe \\
             --grid lr=1e-4,3e-4,1e-3 --grid wd=0,1e-4
    """
    from vh.config import check_grid
    from vh.heads.api import fit as run_fit
    from vh.heads.train import parse_grid

    fcfg = cfg.fit
    if head:
        fcfg = dataclasses.replace(fcfg, target=dataclasses.replace(fcfg.target, kind=HEADS[head]))
    if arch:
        fcfg = dataclasses.replace(fcfg, head=dataclasses.replace(fcfg.head, arch=arch))
    summary = run_fit(fcfg, cache, out, grid=check_grid(parse_grid(grid)), resume=resume)
    best = summary["best_member"]
    done(
        f"wrote {len(summary['members'])} head(s) to {out}: best {best}, val nll "
        f"{summary['members'][best]['best_val_nll']:.4f}"
    )


@bench.command("fit")
@count_option("--rows", 2_000_000, "Cached states.")
@count_option("--dim", 288, "Embedding width.")
@folder_option(
    "--cache",
    required=False,
    help="Use this cache's first --rows rows instead of random float16 embeddings.",
)
@count_option("--rounds", 3, "Interleaved timed rounds (after a warm-up round).")
@count_option(
    "--seed-batch", 1024, "States per timed batch of the seed's in-loop trunk (it is slow)."
)
@count_option(
    "--mlp-rows", 262_144, "Rows of the MLP epoch slice (its rows/s extrapolate to a full epoch)."
)
@file_option("--md", help="Also write the results as section 'fit' of this markdown file.")
@config_options
def bench_fit(cfg, rows, dim, cache, rounds, seed_batch, mlp_rows, md):
    """Heads on cached states vs the seed's in-loop trunk and a plain PyTorch loop."""
    from vh.bench.fit import run_bench
    from vh.bench.report import publish

    kw = {"rows": rows, "dim": dim, "cache": cache, "rounds": rounds, "seed_batch": seed_batch}
    publish(run_bench(cfg.fit, **kw, mlp_rows=mlp_rows), md)


@bench.command("stream")
@count_option("--rows", 2_000_000, "Rows of the cache built for the benchmark.")
@count_option("--dim", 256, "Embedding width.")
@count_option("--chunk-rows", 65_536, "Rows per cache chunk.")
@count_option("--readers", 4, "Reader threads of the stream.")
@click.option(
    "--dir", "folder", type=click.Path(file_okay=False, exists=True),
    help="Build the cache under this folder (default: the temp folder); removed afterwards.",
)  # fmt: skip
@file_option("--md", help="Also write the results as section 'stream' of this markdown file.")
@click.option("--note", default="", help="A paragraph to add to the section (conditions).")
@config_options
def bench_stream(cfg, rows, dim, chunk_rows, readers, folder, md, note):
    """Streamed fit vs a raw read of the same chunk files and vs the data on the device."""
    from vh.bench.report import publish
    from vh.bench.stream import run_bench

    kw = {"rows": rows, "dim": dim, "chunk_rows": chunk_rows, "readers": readers}
    publish(run_bench(cfg.fit, **kw, folder=folder, note=note), md)
