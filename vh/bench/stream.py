"""``vh bench stream``: the streamed fit against the disk and against the data on the device.

In one run, on one cache of random float16 embeddings built here (``--rows`` × ``--dim``,
default 2M × 256 ≈ 1 GB): (a) a raw sequential read of its chunk files into one reused buffer,
after evicting them from the page cache (``posix_fadvise(DONTNEED)``; dropping all caches
needs privileges a sandbox may lack); (b) one streamed probe epoch from a cold page cache
(evicted again); (c) the same epoch with the files in the page cache; (d) the on-device epoch
over the same rows, with and without the progress callbacks inside the scan, in alternating
rounds (:data:`DEVICE_ROUNDS`). Ratios: (b)/(a)
(goal ≥ 60 % and ≥ 0.6 GB/s) and (c)/(d) (goal ≥ 50 %).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from vh.bench.report import Section, goal, machine, number, section, table, times, today
from vh.config import FitConfig

K = 3  # ordinal thresholds of the planted labels
# alternating on-device epochs with and without the progress callbacks: one epoch is ~0.6 s
# on 2 cores, where single timings move by ±20 %; the median of per-round ratios settles it
DEVICE_ROUNDS = 7


def build_cache(path: Path, rows: int, dim: int, chunk_rows: int) -> Path:
    """A finished cache of random float16 embeddings, 100 states per run, written chunk by
    chunk (never the whole array in memory)."""
    from vh.cache import fingerprint as fpmod
    from vh.cache.writer import init_cache

    rng = np.random.default_rng(0)
    n_runs = -(-rows // 100)
    runs = {"id": np.arange(n_runs), "steps": np.full(n_runs, 100),
            "highest_tile": 2 ** rng.integers(9, 13, n_runs), "final_score": np.zeros(n_runs, int),
            "seed": np.arange(n_runs)}  # fmt: skip
    step = np.arange(rows) % 100
    cols = {"run_id": np.arange(rows) // 100, "step_index": step,
            "step_fraction": (step / 99).astype(np.float32)}  # fmt: skip
    w = init_cache(path, n=rows, d=dim, dtype="float16", chunk_rows=chunk_rows, pooling="given",
                   columns={k: v.dtype for k, v in cols.items()}, runs=runs,
                   fingerprint=fpmod.make_fingerprint({"kind": "bench-stream"}, {}, {}),
                   extract_config={})  # fmt: skip
    w.write_columns(cols)
    for u in range(w.n_units):
        a, b = w.unit_range(u)
        w.write_unit(u, rng.standard_normal((b - a, dim), np.float32).astype(np.float16))
    w.finish()
    return path


def chunk_files(cache: Path) -> list[Path]:
    """The emb chunk files in row order."""
    files = (cache / "emb" / "c").glob("*/0")
    return sorted(files, key=lambda p: int(p.parent.name))


def evict(files: list[Path]) -> None:
    """Drop the files from the page cache (written back first: dirty pages stay)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read(files: list[Path]) -> tuple[float, int]:
    """(seconds, bytes) of reading every file in order into one reused buffer."""
    buf = bytearray(max(f.stat().st_size for f in files))
    view, total = memoryview(buf), 0
    t0 = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while k := fh.readinto(view):
                total += k
    return time.perf_counter() - t0, total


def _setup(cfg: FitConfig):
    from vh.heads import train as T
    from vh.heads.losses import make_objective
    from vh.heads.modules import make_head
    from vh.heads.targets import make_spec

    spec = make_spec(dataclasses.replace(cfg.target, kind="ordinal",
                                         thresholds=tuple(2 ** (10 + k) for k in range(K))))  # fmt: skip
    model, objective = make_head("probe", spec, cfg.head), make_objective(spec, cfg.loss)
    members = T.make_members(cfg.train)
    return T, model, objective, members


def epoch_runner(data, cfg: FitConfig, d: int):
    """A function running one epoch of ``data`` (bound here), returning its seconds."""
    import jax

    T, model, objective, members = _setup(cfg)
    data.bind(
        T.make_step(model, objective, T.lr_factor(cfg.train, 1)), T.make_eval(model, objective)
    )
    box = {"state": T.replicate(T.init_state(model, members, d), data.mesh), "epoch": 0}
    keys = T.replicate(T.member_keys(members)[1], data.mesh)

    def run(progress=None) -> float:
        t0 = time.perf_counter()
        box["state"], stats = data.train_epoch(box["state"], keys, box["epoch"], progress)
        jax.block_until_ready(stats)
        box["epoch"] += 1
        return time.perf_counter() - t0

    return run


def run_bench(cfg: FitConfig, *, rows: int, dim: int, chunk_rows: int, readers: int,
              folder: str | None = None, note: str = "") -> Section:  # fmt: skip
    """Measure (a)–(d) of the module docstring on one cache; the ``stream`` section."""
    from vh.cache.reader import open_cache
    from vh.heads import data as D
    from vh.heads import stream as S
    from vh.progress import Progress

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        t0 = time.perf_counter()
        cache = build_cache(Path(tmp) / "cache", rows, dim, chunk_rows)
        built = time.perf_counter() - t0
        files = chunk_files(cache)
        reader = open_cache(cache)
        y = np.random.default_rng(1).integers(0, 2, (rows, K)).astype(np.uint8)
        mesh = D.make_mesh()
        plan = D.Batching.plan(requested=cfg.train.batch_size, micro=cfg.train.microbatch,
                               n_train=rows, n_dev=mesh.size, seed=0)  # fmt: skip
        all_rows = np.arange(rows)
        stream = S.StreamData(reader=reader, train_rows=all_rows, y_train=y, val_rows=all_rows[:0],
                              y_val=y[:0], batching=plan, mesh=mesh,
                              prefetch=cfg.train.prefetch_chunks, readers=readers)  # fmt: skip
        run_stream = epoch_runner(stream, cfg, dim)
        run_stream()  # compile, allocate the buffers
        evict(files)
        raw_s, nbytes = raw_read(files)
        evict(files)
        cold_s = run_stream()
        raw_read(files)  # now in the page cache
        warm_s = run_stream()
        x = reader.take(all_rows)
        runs = {}  # both held at once: two copies of the rows on the device (2x the cache)
        for ticks in (0, D.TICKS):  # both compiled first, then timed in alternation
            data = D.DeviceData(x_train=x, y_train=y, x_val=x[:0], y_val=y[:0], batching=plan,
                                mesh=mesh, ticks=ticks)  # fmt: skip
            runs[ticks] = epoch_runner(data, cfg, dim)
            runs[ticks]()  # compile
        dev = {0: [], D.TICKS: []}
        for _ in range(DEVICE_ROUNDS):
            dev[0].append(runs[0]())
            dev[D.TICKS].append(runs[D.TICKS](Progress(rows, "epoch", log=None)))
        del runs
    out = _section(rows, dim, chunk_rows, readers, cfg, nbytes, built, raw_s, cold_s, warm_s, dev)
    if note:  # e.g. the machine was shared while it ran
        out = dataclasses.replace(out, text=out.text.rstrip("\n") + f"\n\n{note}\n")
    return out


def _section(rows, dim, chunk_rows, readers, cfg, nbytes, built, raw_s, cold_s, warm_s, dev):
    from vh.heads.data import TICKS

    gb = nbytes / 1e9
    raw, cold, warm = gb / raw_s, gb / cold_s, gb / warm_s
    ratio = float(np.median(np.asarray(dev[TICKS]) / np.asarray(dev[0])))
    dev = {k: min(v) for k, v in dev.items()}  # each contender's fastest epoch
    dev_rate, prog_rate = rows / dev[0], rows / dev[TICKS]
    r_cold, r_warm = cold / raw, (rows / warm_s) / dev_rate
    fig = [
        ["raw sequential read of the chunk files (evicted)", number(raw_s, 2), "", number(raw, 2)],
        ["streamed epoch, cold page cache", number(cold_s, 2), number(rows / cold_s), number(cold, 2)],
        ["streamed epoch, files in the page cache", number(warm_s, 2), number(rows / warm_s), number(warm, 2)],
        ["on-device epoch, no progress callbacks", number(dev[0], 2), number(dev_rate), ""],
        [f"on-device epoch, progress (≤ {TICKS} callbacks)", number(dev[TICKS], 2), number(prog_rate), ""],
    ]  # fmt: skip
    return section(
        "stream",
        f"`vh bench stream --rows {rows} --dim {dim} --chunk-rows {chunk_rows} --readers "
        f"{readers}` ({today()}, {machine()}): a {number(gb, 2)} GB float16 cache built in "
        f"{number(built, 1)} s; probe, batch {cfg.train.batch_size:,}, shuffle buffer "
        f"{cfg.train.prefetch_chunks} chunks, {readers} reader threads. Eviction is "
        "`posix_fadvise(DONTNEED)` per chunk file (no root needed).",
        table(["what", "seconds", "rows/s", "GB/s of cache"], [False, True, True, True], fig),
        [
            "- "
            + goal(
                f"streamed from disk ≥ 0.6 GB/s and ≥ 60 % of the raw read: "
                f"{number(cold, 2)} GB/s, {number(100 * r_cold)} %",
                cold >= 0.6 and r_cold >= 0.6,
            ),  # fmt: skip
            "- "
            + goal(
                f"streamed from the page cache ≥ 50 % of the on-device rate: "
                f"{number(100 * r_warm)} %",
                r_warm >= 0.5,
            ),  # fmt: skip
            f"- progress callbacks in the on-device scan: {times(ratio, 3)} the epoch time "
            f"without them (median of {DEVICE_ROUNDS} alternating rounds; the table: each "
            "one's fastest)",
        ],
        closing=f"stream: cold {times(r_cold)} raw read, warm {times(r_warm)} on-device",
    )
