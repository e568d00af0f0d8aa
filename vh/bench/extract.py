"""``vh bench extract``: the bare trunk forward against the whole extract, on the same rows.

(a) the trunk alone on tokens decoded beforehand and already on the device, in the extract's
batches; (b) :func:`vh.extract.run.run_extract` end to end into a fresh cache. They alternate
and the median of the pair ratios is the headline. Then candidate emb codecs are measured on
the embeddings just written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from vh.bench.report import Section, number, section, table, today
from vh.config import Config
from vh.extract.dataset import open_dataset
from vh.extract.run import resolve_device, run_extract
from vh.extract.trunk import load_trunk

_BENCH_MOVES = 50  # moves per synthetic game: nearly every random game lasts that long


def _bare_forward(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    batch_size: int,
    out_dtype: torch.dtype,
    device: torch.device,
) -> float:
    """Seconds of the trunk alone over pre-decoded tokens already on the device."""
    ctx = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else (contextlib.nullcontext())
    )
    t0 = time.perf_counter()
    with torch.inference_mode(), ctx:
        for b0 in range(0, tokens.shape[0], batch_size):
            model.pooled(tokens[b0 : b0 + batch_size]).to(out_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def bench_codecs(
    emb: np.ndarray, workdir: Path, chunk_rows: int, min_bytes: int = 256 << 20, repeats: int = 3
) -> list[dict]:
    """Write and read-back throughput of candidate emb codecs on real embeddings.

    The embeddings are tiled to whole chunks of at least ``min_bytes`` (copies sit further
    apart than zstd's window, so tiling does not flatter compression). Reads go into a
    preallocated, already touched buffer. Best of ``repeats`` for each figure.

    Returns:
        One dict per codec: name, ratio (raw / stored bytes), write_gbs, read_gbs.
    """
    import zarr
    import zarr.codecs as zc
    from zarr.core.buffer import cpu

    tiled = np.tile(emb, (max(1, -(-min_bytes // emb.nbytes)), 1))
    data = tiled[: max(1, len(tiled) // chunk_rows) * chunk_rows]  # whole chunks: no padding
    crc = zc.Crc32cCodec()
    candidates = {
        "none + crc32c (chosen)": [crc],
        "zstd level 1 + crc32c": [zc.ZstdCodec(level=1), crc],
        "zstd level 3 + crc32c": [zc.ZstdCodec(level=3), crc],
        "blosc lz4 bitshuffle + crc32c": [
            zc.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=emb.itemsize),
            crc,
        ],
    }
    out, buf, path = [], np.zeros_like(data), workdir / "codec.zarr"
    for name, compressors in candidates.items():
        t_write, t_read = [], []
        for _ in range(repeats):
            arr = zarr.create_array(
                str(path),
                shape=data.shape,
                dtype=data.dtype,
                chunks=(chunk_rows, data.shape[1]),
                compressors=compressors,
                fill_value=0,
                overwrite=True,
            )
            t0 = time.perf_counter()
            arr[:] = data
            t_write.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            arr.get_basic_selection(slice(None), out=cpu.NDBuffer.from_numpy_array(buf))
            t_read.append(time.perf_counter() - t0)
        if not np.array_equal(buf, data):
            raise RuntimeError(f"codec {name} did not round-trip")
        stored = sum(f.stat().st_size for f in (path / "c").rglob("*") if f.is_file())
        out.append(
            {
                "codec": name,
                "ratio": data.nbytes / stored,
                "write_gbs": data.nbytes / min(t_write) / 1e9,
                "read_gbs": data.nbytes / min(t_read) / 1e9,
            }
        )
        shutil.rmtree(path)
    return out


def _inputs(cfg: Config, rows: int, preset: str, workdir: Path) -> tuple[Path, Path]:
    """A synthetic dataset of about ``rows`` rows (random-player games) and a random trunk."""
    from vh.extract.synth import synth
    from vh.extract.trunk import write_init_dir

    games = -(-rows // _BENCH_MOVES)
    scfg = dataclasses.replace(
        cfg.synth, games=games, player="random", max_moves=_BENCH_MOVES, shard_rows=1 << 20
    )
    ds_path = synth(scfg, workdir / "ds", overwrite=True, progress=False).out
    return ds_path, write_init_dir(workdir / "init", preset, seed=0)


def _alternate(cfg: Config, ds_path: Path, init: Path, repeats: int, workdir: Path) -> dict:
    """``repeats`` pairs of (a) the bare forward then (b) the whole extract, timed.

    Returns:
        Wall and CPU seconds of each run of (a) and (b), the pipeline stats of each (b), the
        device and the rows; the last (b)'s cache is kept (``cache{repeats - 1}``).
    """
    ecfg = cfg.extract
    device = resolve_device(ecfg.device)
    if device.type == "cpu" and ecfg.threads > 0:
        torch.set_num_threads(ecfg.threads)
    ds = open_dataset(ds_path)
    tokens = torch.from_numpy(ds.read(0, ds.n_rows).exps).to(device)  # (N, 16) pre-decoded
    model = load_trunk(init, device=device).model
    out_dtype = getattr(torch, ecfg.dtype)
    _bare_forward(model, tokens[: 4 * ecfg.batch_size], ecfg.batch_size, out_dtype, device)
    t = {"bare": [], "full": [], "cpu_bare": [], "cpu_full": [], "stats": []}
    for r in range(repeats):
        c0 = time.process_time()
        t["bare"].append(_bare_forward(model, tokens, ecfg.batch_size, out_dtype, device))
        t["cpu_bare"].append(time.process_time() - c0)
        cache = workdir / f"cache{r}"
        t0, c0 = time.perf_counter(), time.process_time()
        res = run_extract(ds_path, init, cache, cfg, log=None)
        t["full"].append(time.perf_counter() - t0)
        t["cpu_full"].append(time.process_time() - c0)
        t["stats"].append(res.stats)
        if r < repeats - 1:
            shutil.rmtree(cache)
    return {**t, "device": device, "rows": ds.n_rows}


def bench_extract(
    cfg: Config,
    *,
    rows: int,
    preset: str,
    repeats: int,
    workdir: Path,
    codec_bytes: int = 256 << 20,
) -> dict:
    """Bare trunk forward vs the full extract on the same rows, in one process.

    (a) the trunk alone on tokens decoded beforehand and already on the device, in the
    extract's batches; (b) :func:`run_extract` end to end into a fresh cache (validation,
    hashing, columns, decode, forward, write, finish). They alternate ``repeats`` times and
    the medians are compared.

    Args:
        cfg: the resolved config (extract section: batch size, dtype, device, chunk rows).
        rows: about this many rows (synthetic random-player games, ``_BENCH_MOVES`` moves).
        preset: trunk size. repeats: alternations. workdir: where dataset and caches go.
        codec_bytes: size of the codec measurement.

    Returns:
        Figures: rows, rows/s of both, their ratio, the pipeline breakdown, codec table.
    """
    from vh.cache.reader import open_cache

    ecfg = cfg.extract
    ds_path, init = _inputs(cfg, rows, preset, workdir)
    t = _alternate(cfg, ds_path, init, repeats, workdir)
    # ---- codecs, on the embeddings just written
    c = open_cache(workdir / f"cache{repeats - 1}")
    codecs = bench_codecs(c.read_rows(0, c.n), workdir, ecfg.chunk_rows, codec_bytes)
    n, full = t["rows"], t["full"]
    mid = int(np.argsort(full)[len(full) // 2])
    # each (a) ran right before its (b): the ratio of a pair is immune to slow drifts of a
    # shared machine's load, and the median of the pairs to a burst in one of them
    pairs = np.array(t["bare"]) / np.array(full)
    return {
        "rows": n,
        "d": c.d,
        "preset": preset,
        "device": str(t["device"]),
        "threads": torch.get_num_threads(),
        "batch_size": ecfg.batch_size,
        "chunk_rows": ecfg.chunk_rows,
        "dtype": ecfg.dtype,
        "repeats": repeats,
        "bare_rows_s": n / float(np.median(t["bare"])),
        "pipeline_rows_s": n / float(np.median(full)),
        "ratio": float(np.median(pairs)),
        "pair_ratios": pairs.round(3).tolist(),
        "cpu_ratio": float(np.median(np.array(t["cpu_bare"]) / np.array(t["cpu_full"]))),
        "embed_loop_rows_s": n / t["stats"][mid].wall,
        "breakdown": dataclasses.asdict(t["stats"][mid]),
        "pipeline_s": full[mid],
        "codecs": codecs,
        "codec_mib": codec_bytes >> 20,
        "torch": torch.__version__,
    }


def extract_section(r: dict) -> Section:
    """The ``extract`` section of BENCHMARKS.md for :func:`bench_extract`'s figures."""
    b = r["breakdown"]
    setup = (
        f"`vh bench extract --rows {r['rows']} --preset {r['preset']} --repeats {r['repeats']}` "
        f"— {r['preset']} trunk (D = {r['d']}), {r['device']}, {r['threads']} torch threads, "
        f"batch {r['batch_size']}, chunk {r['chunk_rows']} rows, {r['dtype']}, torch "
        f"{r['torch']}; {r['repeats']} alternating pairs (a then b), {today()}."
    )
    figures = table(
        ["measurement", "rows/s"],
        [False, True],
        [
            [
                "(a) bare trunk forward, tokens pre-decoded on the device",
                number(r["bare_rows_s"]),
            ],
            [
                "(b) full `vh extract` into a fresh cache (validate, hash, columns, decode, "
                "forward, write, finish)",
                number(r["pipeline_rows_s"]),
            ],
            ["(b) embedding loop only", number(r["embed_loop_rows_s"])],
            ["**ratio (b) / (a)**, median of the pairs", f"**{number(r['ratio'], 3)}**"],
        ],
    )
    spread = (
        f"Rows/s are medians; the ratio of each pair: {', '.join(map(str, r['pair_ratios']))}. "
        "On a shared 2-core VM the spread between pairs is the machine's load, not the pipeline. "
        f"CPU seconds of the process, (a) / (b), median of the pairs: {number(r['cpu_ratio'], 3)}."
    )
    breakdown = (
        f"Breakdown of the median pipeline run ({r['pipeline_s']:.1f} s in all; decode and write "
        "run on background threads, overlapping the forward): "
        f"decode {b['decode']:.2f} s, host-to-device copy {b['copy']:.2f} s, forward "
        f"{b['forward']:.2f} s, write {b['write']:.2f} s, trunk waiting for input "
        f"{b['starved']:.2f} s, embedding loop {b['wall']:.2f} s. The trunk was busy "
        f"{100 * b['forward'] / max(b['wall'], 1e-9):.1f} % of the embedding loop; setup and "
        f"finish (validate, hash, create, columns, fsyncs, verify, marker) took "
        f"{r['pipeline_s'] - b['wall']:.2f} s, a fixed cost that an extract of millions of rows "
        "amortises."
    )
    codecs = table(
        ["codec", "ratio", "write GB/s", "read GB/s"],
        [False, True, True, True],
        [
            [
                c["codec"],
                number(c["ratio"], 3),
                number(c["write_gbs"], 2),
                number(c["read_gbs"], 2),
            ]
            for c in r["codecs"]
        ],
    )
    return section(
        "extract",
        setup,
        figures,
        spread,
        breakdown,
        f"emb codecs on these embeddings (tiled to about {r['codec_mib']} MiB of whole chunks, "
        "whole-chunk writes, reads into a preallocated buffer, best of 3):",
        codecs,
        closing=f"pipeline / bare forward = {number(r['ratio'], 3)}",
    )
