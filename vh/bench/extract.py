"""``vh bench extract``: the whole extract against what bounds it, on the same rows.

With a network (``--trunk init``): (a) the trunk alone on tokens decoded beforehand and already
on the device, in the extract's batches; (b) :func:`vh.extract.run.run_extract` end to end into
a fresh cache. With a free trunk (``--trunk null`` or ``onehot``: the pipeline around a trunk,
decode, columns, write, with nothing in the way): (a) the raw disk write of the same bytes
(as many chunk files of the same size, write + fdatasync, by as many threads as the pipeline's
writers); (b) the same. They alternate and the median of the pair ratios is the headline. The
peak RSS of each (b) is measured (VmHWM, reset before it). Then candidate emb codecs are
measured on the embeddings just written. This module measures; :mod:`vh.bench.extract_sections`
lays the figures out as BENCHMARKS.md sections.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch

# the sections' layout lives in vh.bench.extract_sections; importable from here as before
from vh.bench.extract_sections import extract_section as extract_section
from vh.config import Config
from vh.extract.dataset import open_dataset
from vh.extract.pipeline import WRITERS
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


def raw_write(folder: Path, files: int, nbytes: int, threads: int) -> float:
    """Seconds to write ``files`` files of ``nbytes`` each (write + fdatasync), ``threads`` at
    a time, from one reused buffer: the disk's speed for the bytes an extract writes."""
    buf = np.ones(nbytes, np.uint8)  # touched once, before the clock starts
    folder.mkdir(parents=True, exist_ok=True)
    todo: queue.Queue = queue.Queue()
    for i in range(files):
        todo.put(i)

    def work() -> None:
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            fd = os.open(folder / f"{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, buf)
                os.fdatasync(fd)
            finally:
                os.close(fd)

    t0 = time.perf_counter()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - t0
    shutil.rmtree(folder)
    return seconds


def _peak_rss_reset() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS; returns that RSS in bytes."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def _status_bytes(key: str) -> int:
    """``VmHWM`` / ``VmRSS`` of this process in bytes (ru_maxrss where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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


def _inputs(cfg: Config, rows: int, preset: str, workdir: Path) -> tuple[Path, Path | None]:
    """A synthetic dataset of about ``rows`` rows (random-player games) and a random trunk
    (None with a free trunk: ``extract.trunk`` null or onehot)."""
    from vh.extract.synth import synth
    from vh.extract.trunk import write_init_dir

    games = -(-rows // _BENCH_MOVES)
    scfg = dataclasses.replace(
        cfg.synth, games=games, player="random", max_moves=_BENCH_MOVES, shard_rows=1 << 20
    )
    ds_path = synth(scfg, workdir / "ds", overwrite=True, progress=False).out
    if cfg.extract.trunk != "init":
        return ds_path, None
    return ds_path, write_init_dir(workdir / "init", preset, seed=0)


def _extract(cfg: Config, ds_path: Path, init: Path | None, cache: Path, t: dict) -> int:
    """One timed ``run_extract`` into a fresh ``cache``, its peak RSS; returns its D."""
    rss0 = _peak_rss_reset()
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_extract(ds_path, init, cache, cfg, log=None, overwrite=True)  # always fresh
    t["full"].append(time.perf_counter() - t0)
    t["cpu_full"].append(time.process_time() - c0)
    t["stats"].append(res.stats)
    t["rss_start"].append(rss0)
    t["rss_peak"].append(_status_bytes("VmHWM"))
    return res.d


def _alternate(cfg: Config, ds_path: Path, init: Path | None, repeats: int, workdir: Path) -> dict:
    """``repeats`` pairs of (a) the bound then (b) the whole extract, timed.

    (a) is the bare forward with a network, else the raw write of (b)'s bytes (run after its
    (b), whose width it needs).

    Returns:
        Wall and CPU seconds of each run of (a) and (b), the pipeline stats and peak RSS of
        each (b), the device and the rows; the last (b)'s cache is kept
        (``cache{repeats - 1}``).
    """
    ecfg = cfg.extract
    device = resolve_device(ecfg.device)
    if device.type == "cpu" and ecfg.threads > 0:
        torch.set_num_threads(ecfg.threads)
    ds = open_dataset(ds_path)
    keys = ("bare", "full", "cpu_bare", "cpu_full", "stats", "rss_start", "rss_peak", "raw")
    t: dict = {k: [] for k in keys}
    if init is not None:
        tokens = torch.from_numpy(ds.read(0, ds.n_rows).exps).to(device)  # (N, 16) pre-decoded
        model = load_trunk(init, device=device).model
        out_dtype = getattr(torch, ecfg.dtype)
        _bare_forward(model, tokens[: 4 * ecfg.batch_size], ecfg.batch_size, out_dtype, device)
    for r in range(repeats):
        cache = workdir / f"cache{r}"
        if init is not None:
            c0 = time.process_time()
            t["bare"].append(_bare_forward(model, tokens, ecfg.batch_size, out_dtype, device))
            t["cpu_bare"].append(time.process_time() - c0)
            _extract(cfg, ds_path, init, cache, t)
        else:
            d = _extract(cfg, ds_path, init, cache, t)
            itemsize = np.dtype(ecfg.dtype).itemsize
            files = -(-ds.n_rows // ecfg.chunk_rows)
            t["raw"].append(
                raw_write(workdir / "raw", files, ecfg.chunk_rows * d * itemsize, WRITERS)
            )
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
    """The full extract vs what bounds it, on the same rows, in one process.

    With a network (``extract.trunk = "init"``): (a) the trunk alone on tokens decoded
    beforehand and already on the device, in the extract's batches; (b) :func:`run_extract`
    end to end into a fresh cache (validation, hashing, columns, decode, forward, write,
    finish). With a free trunk (null, onehot): (a) the raw disk write of (b)'s bytes. They
    alternate ``repeats`` times and the medians are compared.

    Args:
        cfg: the resolved config (extract section: trunk, batch size, dtype, device, chunk
            rows).
        rows: about this many rows (synthetic random-player games, ``_BENCH_MOVES`` moves).
        preset: trunk size (with a network). repeats: alternations. workdir: where dataset
            and caches go.
        codec_bytes: size of the codec measurement (0: none).

    Returns:
        Figures: rows, rows/s of both, their ratio, the pipeline breakdown, peak RSS, codecs.
    """
    from vh.cache.reader import open_cache

    ecfg = cfg.extract
    ds_path, init = _inputs(cfg, rows, preset, workdir)
    t = _alternate(cfg, ds_path, init, repeats, workdir)
    # ---- codecs, on the embeddings just written
    c = open_cache(workdir / f"cache{repeats - 1}")
    codecs = []
    if codec_bytes:
        codecs = bench_codecs(c.read_rows(0, c.n), workdir, ecfg.chunk_rows, codec_bytes)
    itemsize = np.dtype(ecfg.dtype).itemsize
    return {
        "rows": t["rows"],
        "d": c.d,
        "trunk": ecfg.trunk,
        "preset": preset,
        "device": str(t["device"]),
        "threads": torch.get_num_threads(),
        "writers": WRITERS,
        "batch_size": ecfg.batch_size,
        "chunk_rows": ecfg.chunk_rows,
        "dtype": ecfg.dtype,
        "repeats": repeats,
        "load": os.getloadavg()[0],
        **_rates(t, t["rows"] * c.d * itemsize, network=init is not None),
        "unit_bytes": ecfg.chunk_rows * c.d * itemsize,
        "codecs": codecs,
        "codec_mib": codec_bytes >> 20,
        "torch": torch.__version__,
    }


def _rates(t: dict, emb_bytes: int, network: bool) -> dict:
    """Rows/s and GB/s (medians), the ratios of the pairs, the median run's breakdown and peak
    RSS, from :func:`_alternate`'s timings of ``emb_bytes`` of embeddings."""
    n, full = t["rows"], t["full"]
    mid = int(np.argsort(full)[len(full) // 2])
    loops = np.array([s.wall for s in t["stats"]])
    # each (a) ran right before its (b): the ratio of a pair is immune to slow drifts of a
    # shared machine's load, and the median of the pairs to a burst in one of them. Without a
    # network (a) wrote the same bytes: rate of (b) / rate of (a) = time (a) / time (b)
    bound = np.array(t["bare"] if network else t["raw"])
    pairs, loop_pairs = bound / np.array(full), bound / loops
    return {
        "bare_rows_s": n / float(np.median(t["bare"])) if t["bare"] else None,
        "raw_gbs": emb_bytes / float(np.median(t["raw"])) / 1e9 if t["raw"] else None,
        "pipeline_rows_s": n / float(np.median(full)),
        "pipeline_gbs": emb_bytes / float(np.median(full)) / 1e9,
        "ratio": float(np.median(pairs)),
        "pair_ratios": pairs.round(3).tolist(),
        "loop_ratio": float(np.median(loop_pairs)),
        "cpu_ratio": (
            float(np.median(np.array(t["cpu_bare"]) / np.array(t["cpu_full"])))
            if t["cpu_bare"]
            else None
        ),
        "embed_loop_rows_s": n / t["stats"][mid].wall,
        "embed_loop_gbs": emb_bytes / t["stats"][mid].wall / 1e9,
        "breakdown": dataclasses.asdict(t["stats"][mid]),
        "pipeline_s": full[mid],
        "rss_start": t["rss_start"][mid],
        "rss_peak": max(t["rss_peak"]),
    }
