"""Phase 1: run the frozen trunk once over a dataset and write the embedding cache.

:func:`run_extract` reads top to bottom: workers, inputs and fingerprint, the cache prepared
by rank 0 (lock, create or resume, per-state columns), this rank's units through the
pipeline, then rank 0 verifies every unit and writes the completion marker.

The pipeline keeps the trunk busy::

    decode thread    dataset rows -> uint8 tokens in reused (pinned) buffers  --queue-->
    main thread      H2D copy, trunk forward (bf16 autocast on GPU), cast to the cache dtype
                     on the device, copy into the unit's (pinned) host buffer   --queue-->
    writer thread    one whole unit = one emb chunk: write, fsync, ledger record

Every unit is embedded in the same batches relative to its first row, whichever worker does
it and whenever, so a killed-and-resumed or multi-worker run gives the same bytes.

Axes: B = batch rows, D = embedding width, 16 = cells / tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vh.cache import fingerprint as fpmod
from vh.cache import ledger, schema
from vh.cache.lock import CacheLock
from vh.cache.writer import CacheWriter, clear_cache_dir, init_cache, is_initialised
from vh.config import Config, ExtractConfig, to_dict
from vh.errors import VhError
from vh.extract import board
from vh.extract.dataset import Dataset, open_dataset
from vh.extract.distributed import DistEnv
from vh.extract.rewards import discounted_returns, replay_rewards, step_fraction
from vh.extract.trunk import LoadedTrunk, load_onehot, load_trunk
from vh.progress import Progress

# buffers in flight per stage: one being filled, one queued, one being consumed
_TOKEN_BUFFERS = 4
_UNIT_BUFFERS = 3
_POLL_S = 0.1  # how often a blocked thread checks whether the others failed


@dataclass
class Stats:
    """Seconds each stage was busy, and how long the trunk waited for input.

    Attributes:
        rows: rows embedded. units: units written.
        decode: decode thread (dataset read, board decoding) busy time.
        copy: host-to-device copies issued (0 on CPU).
        forward: trunk forward incl. the cast and the copy into the unit buffer.
        write: writer thread busy time (zarr write, fsync, ledger).
        starved: main thread waiting for decoded tokens or a free unit buffer (trunk idle).
        wall: the whole embedding loop.
    """

    rows: int = 0
    units: int = 0
    decode: float = 0.0
    copy: float = 0.0
    forward: float = 0.0
    write: float = 0.0
    starved: float = 0.0
    wall: float = 0.0


@dataclass(frozen=True)
class ExtractResult:
    """What :func:`run_extract` did.

    Attributes:
        path: the cache. n, d, dtype: its shape and emb dtype.
        units_done: units this run embedded (all workers). already_complete: nothing to do.
        stats: pipeline timings of this rank. rank: this worker's rank (0 alone).
    """

    path: Path
    n: int
    d: int
    dtype: str
    n_units: int
    units_done: int
    already_complete: bool
    stats: Stats
    rank: int = 0


# --------------------------------------------------------------------------- settings


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this worker's GPU when there is one, else the CPU."""
    if spec == "auto":
        spec = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif spec == "cuda":
        spec = f"cuda:{local_rank}"
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise VhError("expected auto, cpu, cuda or cuda:N", field="extract.device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VhError("no CUDA device here", field="extract.device")
    return dev


def byte_settings(ecfg: ExtractConfig, device: torch.device) -> dict:
    """The extract settings that change the cache's bytes (part of the fingerprint).

    Batch size and compilation change float summation order; the device kind changes the
    arithmetic (bf16 autocast on GPU). Threads, seed of absent weights (in the trunk part)
    and progress do not belong here.
    """
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "trunk": ecfg.trunk,
        "dtype": ecfg.dtype,
        "gamma": ecfg.gamma,
        "chunk_rows": ecfg.chunk_rows,
        "batch_size": ecfg.batch_size,
        "compile": ecfg.compile,
        "device": device.type,
        "autocast": "bfloat16" if device.type == "cuda" else None,
    }


def _load(
    ecfg: ExtractConfig, init: str | os.PathLike | None, device: torch.device, ds: Dataset
) -> LoadedTrunk:
    if ecfg.trunk == "onehot":
        # the raw-board baseline needs token 16 only if a 65536 tile occurs (a full scan,
        # which the dataset keeps for validate())
        return load_onehot(17 if ds.validate().max_exponent >= board.MAX_EXP else 16)
    if init is None:
        raise VhError(
            "--init is required with the init trunk (or use --trunk onehot)", field="--init"
        )
    return load_trunk(init, seed=ecfg.seed, device=device)


def _vocab(lt: LoadedTrunk) -> int:
    return lt.config.input_vocab_size if lt.config is not None else lt.model.vocab


# --------------------------------------------------------------------------- columns


def compute_columns(
    ds: Dataset, gamma: float | None, block_rows: int = 1 << 20
) -> dict[str, np.ndarray]:
    """Every per-state column, vectorised over the dataset in blocks of rows.

    Rewards come from the values sidecar when there is one, else from replaying each move
    on its board. Returns need whole runs, so they are computed after all rewards.

    Args:
        ds: the opened (and validated) dataset.
        gamma: discount of the ``return`` column; None = no return column.
        block_rows: rows decoded at a time.

    Returns:
        name -> ``(N,)`` array, with the dtypes of ``schema.COLUMN_DTYPES``.
    """
    n = ds.n_rows
    names = [k for k in schema.COLUMN_DTYPES if k != "return" or gamma is not None]
    cols = {k: np.empty(n, dtype=schema.COLUMN_DTYPES[k]) for k in names}
    exps = np.empty((min(block_rows, max(n, 1)), 16), dtype=np.uint8)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        rows = ds.read(start, stop, out_exps=exps)
        cols["run_id"][start:stop] = rows.run_id
        cols["step_index"][start:stop] = rows.step_index
        cols["move_dir"][start:stop] = rows.move
        cols["max_exp"][start:stop] = board.max_exponent(rows.exps)
        cols["board_score"][start:stop] = board.board_score(rows.exps)
        cols["reward"][start:stop] = (
            rows.reward if rows.reward is not None else replay_rewards(rows.exps, rows.move)
        )
    pos, _known = ds.runs.positions(cols["run_id"])  # validate() proved every id known
    cols["step_fraction"][:] = step_fraction(cols["step_index"], ds.runs.steps[pos])
    if gamma is not None:
        cols["return"][:] = discounted_returns(cols["reward"], cols["run_id"], gamma)
    return cols


def _runs_table(ds: Dataset) -> dict[str, np.ndarray]:
    r = ds.runs
    return {
        "id": r.id,
        "steps": r.steps,
        "highest_tile": r.highest_tile,
        "final_score": r.final_score,
        "seed": r.seed,
    }


# --------------------------------------------------------------------------- rank 0: prepare


@dataclass(frozen=True)
class _Plan:
    fingerprint: dict
    todo: list[int]  # units not done, all ranks
    complete: bool


def _prepare(
    ds: Dataset,
    lt: LoadedTrunk,
    out: Path,
    cfg: Config,
    device: torch.device,
    *,
    overwrite: bool,
    log,
) -> _Plan:
    """Rank 0: validate, fingerprint, create or resume the cache, write the columns."""
    ecfg = cfg.extract
    # ---- inputs: every row checked (contiguous runs, vocab), every file hashed
    ds.validate(_vocab(lt) if ecfg.check_vocab else None)
    fp = _fingerprint(ds, lt, ecfg, device)
    # ---- the cache: start over, resume (same inputs only) or create
    if overwrite:
        clear_cache_dir(out)
    if is_initialised(out):
        writer = CacheWriter(out)
        fpmod.check(writer.attrs["fingerprint"], fp, out)
        removed = ledger.remove_temp_files(out)
        if removed:
            _say(log, f"{out}: removed {removed} temp files of an interrupted run")
    else:
        writer = init_cache(
            out,
            n=ds.n_rows,
            d=lt.dim,
            dtype=ecfg.dtype,
            chunk_rows=ecfg.chunk_rows,
            pooling="onehot" if ecfg.trunk == "onehot" else "mean",
            columns=_column_dtypes(ecfg.gamma),
            runs=_runs_table(ds),
            fingerprint=fp,
            extract_config=to_dict(ecfg),
            extra_attrs={
                "dataset": str(ds.path),
                "layout": ds.layout,
                "trunk_source": lt.source,
                "columns_used": ds.columns_used,
            },
        )
    todo = writer.pending_units()
    marker = out / schema.MARKER
    if marker.exists():
        if not todo and writer.columns_done():
            return _Plan(fp, [], True)
        # a unit no longer matches its record: withdraw the marker before redoing it
        _say(log, f"{out}: {len(todo)} units must be recomputed; completion marker withdrawn")
        marker.unlink()
    # ---- per-state columns: one unit, before any embedding unit
    if not writer.columns_done():
        writer.write_columns(compute_columns(ds, ecfg.gamma))
    return _Plan(fp, todo, False)


def _say(log, message: str) -> None:
    if log is not None:
        print(message, file=log, flush=True)


def _fingerprint(ds: Dataset, lt: LoadedTrunk, ecfg: ExtractConfig, device: torch.device) -> dict:
    inputs = fpmod.file_entries(ds.files(), root=ds.path)
    return fpmod.make_fingerprint(lt.fingerprint, inputs, byte_settings(ecfg, device))


def expected_fingerprint(
    dataset: str | os.PathLike, init: str | os.PathLike | None, cfg: Config
) -> dict:
    """The fingerprint a cache of these inputs carries, for ``open_cache(expect_fingerprint=)``.

    Args:
        dataset: the dataset dir. init: the trunk (None for the one-hot baseline).
        cfg: the config the cache was (to be) extracted with.

    Returns:
        The fingerprint dict (hashes every input file).
    """
    device = resolve_device(cfg.extract.device)
    ds = open_dataset(dataset)
    return _fingerprint(ds, _load(cfg.extract, init, device, ds), cfg.extract, device)


def _column_dtypes(gamma: float | None) -> dict[str, np.dtype]:
    return {k: v for k, v in schema.COLUMN_DTYPES.items() if k != "return" or gamma is not None}


def _check_same_trunk(lt: LoadedTrunk, fp: dict, out: Path) -> None:
    """A worker's trunk must be rank 0's (hosts may see different files)."""
    diffs = fpmod.differences({"trunk": fp["trunk"]}, {"trunk": lt.fingerprint})
    if diffs:
        raise VhError(
            "this worker's trunk differs from rank 0's: " + "; ".join(diffs[:3]),
            path=out,
            field="trunk",
            code=3,
        )


# --------------------------------------------------------------------------- the pipeline


class _Stop(Exception):
    """Another stage failed; this one stops quietly (the failure is raised by the caller)."""


@dataclass
class _TokenBuf:
    tokens: torch.Tensor  # (B, 16) uint8, pinned on CUDA
    exps: np.ndarray  # numpy view of tokens, filled by the dataset reader
    copied: torch.cuda.Event | None = None  # H2D copy done: safe to refill


@dataclass
class _UnitBuf:
    rows: torch.Tensor  # (chunk_rows, D) in the cache dtype, pinned on CUDA
    array: np.ndarray  # numpy view of rows
    filled: torch.cuda.Event | None = None  # D2H copies done: safe to write


class UnitPipeline:
    """Embed whole units and write them, decoding and writing on background threads.

    Args:
        ds: the dataset. model: the trunk (``.pooled(tokens) -> (B, D)`` float32).
        writer: the cache writer. batch_size: rows per forward.
        device: where the trunk runs. vocab: token values must lie below it.
        progress: a Progress (rows), or None.
    """

    def __init__(
        self,
        ds: Dataset,
        model: torch.nn.Module,
        writer: CacheWriter,
        *,
        batch_size: int,
        device: torch.device,
        vocab: int,
        compile: bool = False,
        progress: Progress | None = None,
    ):
        self.ds, self.writer, self.bs, self.device = ds, writer, batch_size, device
        self.vocab, self.progress = vocab, progress
        self.cuda = device.type == "cuda"
        self.pooled = torch.compile(model.pooled, dynamic=False) if compile else model.pooled
        self.out_dtype = getattr(torch, writer.attrs["dtype"])
        self.stats = Stats()
        self.failed = threading.Event()
        self.errors: list[BaseException] = []

    # ---- buffers and queues that notice a failed stage

    def _pool(self, make, count: int) -> queue.Queue:
        q: queue.Queue = queue.Queue()
        for _ in range(count):
            q.put(make())
        return q

    def _token_buf(self) -> _TokenBuf:
        t = torch.empty((self.bs, 16), dtype=torch.uint8, pin_memory=self.cuda)
        return _TokenBuf(t, t.numpy())

    def _unit_buf(self) -> _UnitBuf:
        t = torch.empty(
            (self.writer.chunk_rows, self.writer.d), dtype=self.out_dtype, pin_memory=self.cuda
        )
        return _UnitBuf(t, t.numpy())

    def _get(self, q: queue.Queue):
        while True:
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                if self.failed.is_set():
                    raise _Stop from None

    def _put(self, q: queue.Queue, item) -> None:
        while True:
            try:
                return q.put(item, timeout=_POLL_S)
            except queue.Full:
                if self.failed.is_set():
                    raise _Stop from None

    def _thread(self, fn, *args) -> threading.Thread:
        def body():
            try:
                fn(*args)
            except _Stop:
                pass
            except BaseException as e:
                self.errors.append(e)
                self.failed.set()

        t = threading.Thread(target=body, name=fn.__name__, daemon=True)
        t.start()
        return t

    # ---- the three stages

    def _batches(self, units: list[int]):
        for u in units:
            start, stop = self.writer.unit_range(u)
            for b0 in range(start, stop, self.bs):  # batch edges relative to the unit start
                yield u, b0 - start, min(b0 + self.bs, stop) - b0, stop - start

    def _decode(self, units: list[int], free: queue.Queue, ready: queue.Queue) -> None:
        for u, off, n, unit_rows in self._batches(units):
            buf = self._get(free)
            t0 = time.perf_counter()
            if buf.copied is not None:
                buf.copied.synchronize()  # the previous H2D copy from this buffer is done
            start = self.writer.unit_range(u)[0] + off
            rows = self.ds.read(start, start + n, out_exps=buf.exps)
            top = int(rows.exps.max()) if n else 0
            if top >= self.vocab:
                raise VhError(
                    f"tile exponent {top} is outside the trunk's vocab of {self.vocab}",
                    path=self.ds.path,
                    field=f"rows {start}:{start + n}",
                )
            self.stats.decode += time.perf_counter() - t0
            self._put(ready, (u, off, n, unit_rows, buf))
        self._put(ready, None)

    def _write(self, full: queue.Queue, free_units: queue.Queue) -> None:
        while (item := self._get(full)) is not None:
            u, ubuf, n = item
            t0 = time.perf_counter()
            if ubuf.filled is not None:
                ubuf.filled.synchronize()
            self.writer.write_unit(u, ubuf.array[:n])
            self.stats.write += time.perf_counter() - t0
            self.stats.units += 1
            self._put(free_units, ubuf)

    def _forward(self, tokens: torch.Tensor, dst: torch.Tensor) -> None:
        t0 = time.perf_counter()
        with torch.inference_mode(), self._autocast():
            y = self.pooled(tokens).to(self.out_dtype)  # (B, D), cast on the device
        dst.copy_(y, non_blocking=self.cuda)
        self.stats.forward += time.perf_counter() - t0

    def _autocast(self):
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _h2d(self, buf: _TokenBuf, n: int) -> torch.Tensor:
        if not self.cuda:
            return buf.tokens[:n]
        t0 = time.perf_counter()
        tokens = buf.tokens[:n].to(self.device, non_blocking=True)
        buf.copied = torch.cuda.Event()
        buf.copied.record()
        self.stats.copy += time.perf_counter() - t0
        return tokens

    def run(self, units: list[int]) -> Stats:
        """Embed and write ``units`` (in this order); returns the timings."""
        t_start = time.perf_counter()
        free_tok = self._pool(self._token_buf, _TOKEN_BUFFERS)
        free_units = self._pool(self._unit_buf, _UNIT_BUFFERS)
        ready: queue.Queue = queue.Queue(maxsize=_TOKEN_BUFFERS - 1)
        full: queue.Queue = queue.Queue(maxsize=_UNIT_BUFFERS - 1)
        threads = [
            self._thread(self._decode, units, free_tok, ready),
            self._thread(self._write, full, free_units),
        ]
        try:
            ubuf = None
            while True:
                t0 = time.perf_counter()
                item = self._get(ready)
                self.stats.starved += time.perf_counter() - t0
                if item is None:
                    break
                u, off, n, unit_rows, buf = item
                if ubuf is None:  # waits only if the writer is behind
                    t0 = time.perf_counter()
                    ubuf = self._get(free_units)
                    self.stats.starved += time.perf_counter() - t0
                self._forward(self._h2d(buf, n), ubuf.rows[off : off + n])
                self._put(free_tok, buf)
                self.stats.rows += n
                if self.progress is not None:
                    self.progress.update(n)
                if off + n == unit_rows:  # the unit is whole: hand it to the writer
                    if self.cuda:
                        ubuf.filled = torch.cuda.Event()
                        ubuf.filled.record()
                    self._put(full, (u, ubuf, unit_rows))
                    ubuf = None
            self._put(full, None)
        except _Stop:
            pass
        except BaseException as e:
            self.errors.append(e)
            self.failed.set()
        for t in threads:
            t.join()
        if self.errors:
            raise self.errors[0]
        self.stats.wall = time.perf_counter() - t_start
        return self.stats


# --------------------------------------------------------------------------- phase 1


def run_extract(
    dataset: str | os.PathLike,
    init: str | os.PathLike | None,
    out: str | os.PathLike,
    cfg: Config,
    *,
    overwrite: bool = False,
    log=sys.stderr,
) -> ExtractResult:
    """Embed every state of a dataset with the frozen trunk into a cache (resumable).

    Re-running the same command resumes: only units without a ledger record are computed.
    Under torchrun each worker takes units ``u % world == rank``.

    Args:
        dataset: the dataset dir.
        init: the trunk init dir (None with ``extract.trunk = "onehot"``).
        out: the cache folder.
        cfg: the resolved config (``cfg.extract`` is used and recorded).
        overwrite: delete an existing cache first (else a different one is refused).
        log: where progress and notices go (None: silent).

    Returns:
        An :class:`ExtractResult`.
    """
    ecfg, out = cfg.extract, Path(out)
    if ecfg.batch_size <= 0 or ecfg.chunk_rows <= 0:
        raise VhError("batch_size and chunk_rows must be positive", field="extract")
    env = DistEnv.from_env()
    with contextlib.ExitStack() as stack:
        # ---- workers and device
        env.start()
        stack.callback(env.stop)
        device = resolve_device(ecfg.device, env.local_rank)
        if device.type == "cpu" and ecfg.threads > 0:
            torch.set_num_threads(ecfg.threads)

        # ---- rank 0 decides: lock, inputs, fingerprint, create or resume, columns (its
        # errors reach every rank, so none waits forever); then the others load the same
        inputs: dict = {}

        def prepare() -> _Plan:
            stack.enter_context(CacheLock(out, log=log))  # held until the end
            inputs.update(_inputs(dataset, init, ecfg, device))
            return _prepare(**inputs, out=out, cfg=cfg, device=device, overwrite=overwrite, log=log)

        plan = env.on_main(prepare)
        if not env.is_main:
            inputs.update(_inputs(dataset, init, ecfg, device))
            _check_same_trunk(inputs["lt"], plan.fingerprint, out)
        writer = CacheWriter(out)
        if plan.complete:
            return _result(writer, 0, True, Stats(), env.rank)

        # ---- embed this worker's units
        mine = [u for u in plan.todo if u % env.world == env.rank]
        rows = sum(stop - start for start, stop in map(writer.unit_range, mine))
        bar = Progress(rows, "extract", stream=log if env.is_main else None, every=2.0)
        pipe = UnitPipeline(
            inputs["ds"],
            inputs["lt"].model,
            writer,
            batch_size=ecfg.batch_size,
            device=device,
            vocab=_vocab(inputs["lt"]),
            compile=ecfg.compile,
            progress=bar,
        )
        stats, err = Stats(), None
        try:
            stats = pipe.run(mine)
        except BaseException as e:
            err = e
        # every rank reports before anyone finishes: a failed one stops all of them cleanly
        units = env.all_gather(None if err is not None else stats.units)
        if err is not None:
            raise err
        if None in units:
            raise VhError(
                "another worker failed; rerun the same command to resume", path=out, code=3
            )
        bar.close(_breakdown(stats))

        # ---- rank 0: check every unit against its chunk, then the marker (last)
        if env.is_main:
            writer.finish()
        env.barrier()
    return _result(writer, sum(units), False, stats, env.rank)


def _inputs(dataset, init, ecfg: ExtractConfig, device: torch.device) -> dict:
    ds = open_dataset(dataset)
    return {"ds": ds, "lt": _load(ecfg, init, device, ds)}


def _result(
    writer: CacheWriter, units_done: int, complete: bool, stats: Stats, rank: int
) -> ExtractResult:
    return ExtractResult(
        writer.path,
        writer.n,
        writer.d,
        writer.attrs["dtype"],
        writer.n_units,
        units_done,
        complete,
        stats,
        rank,
    )


def _breakdown(s: Stats) -> str:
    return (
        f"[decode {s.decode:.1f}s, copy {s.copy:.1f}s, forward {s.forward:.1f}s, "
        f"write {s.write:.1f}s, trunk starved {s.starved:.1f}s]"
    )


# --------------------------------------------------------------------------- benchmarks

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
    import shutil

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
    import shutil

    from vh.extract.synth import synth
    from vh.extract.trunk import write_init_dir

    ecfg = cfg.extract
    # ---- inputs: a synthetic dataset and a random trunk of the preset
    games = -(-rows // _BENCH_MOVES)
    scfg = dataclasses.replace(
        cfg.synth, games=games, player="random", max_moves=_BENCH_MOVES, shard_rows=1 << 20
    )
    ds_path = synth(scfg, workdir / "ds", overwrite=True, progress=False).out
    init = write_init_dir(workdir / "init", preset, seed=0)
    device = resolve_device(ecfg.device)
    if device.type == "cpu" and ecfg.threads > 0:
        torch.set_num_threads(ecfg.threads)
    ds = open_dataset(ds_path)
    tokens = torch.from_numpy(ds.read(0, ds.n_rows).exps).to(device)  # (N, 16) pre-decoded
    model = load_trunk(init, device=device).model
    out_dtype = getattr(torch, ecfg.dtype)
    _bare_forward(model, tokens[: 4 * ecfg.batch_size], ecfg.batch_size, out_dtype, device)
    # ---- alternate (a) and (b)
    bare, full, stats = [], [], []
    cpu = {"bare": [], "full": []}  # CPU seconds of this process (all threads) per run
    for r in range(repeats):
        c0 = time.process_time()
        bare.append(_bare_forward(model, tokens, ecfg.batch_size, out_dtype, device))
        cpu["bare"].append(time.process_time() - c0)
        cache = workdir / f"cache{r}"
        t0, c0 = time.perf_counter(), time.process_time()
        res = run_extract(ds_path, init, cache, cfg, log=None)
        full.append(time.perf_counter() - t0)
        cpu["full"].append(time.process_time() - c0)
        stats.append(res.stats)
        if r < repeats - 1:
            shutil.rmtree(cache)
    # ---- codecs, on the embeddings just written
    from vh.cache.reader import open_cache

    c = open_cache(workdir / f"cache{repeats - 1}")
    codecs = bench_codecs(c.read_rows(0, c.n), workdir, ecfg.chunk_rows, codec_bytes)
    mid = int(np.argsort(full)[len(full) // 2])
    n = ds.n_rows
    bare_rps, full_rps = n / float(np.median(bare)), n / float(np.median(full))
    # each (a) ran right before its (b): the ratio of a pair is immune to slow drifts of a
    # shared machine's load, and the median of the pairs to a burst in one of them
    pairs = np.array(bare) / np.array(full)
    return {
        "rows": n,
        "d": c.d,
        "preset": preset,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_size": ecfg.batch_size,
        "chunk_rows": ecfg.chunk_rows,
        "dtype": ecfg.dtype,
        "repeats": repeats,
        "bare_rows_s": bare_rps,
        "pipeline_rows_s": full_rps,
        "ratio": float(np.median(pairs)),
        "pair_ratios": pairs.round(3).tolist(),
        "cpu_ratio": float(np.median(np.array(cpu["bare"]) / np.array(cpu["full"]))),
        "embed_loop_rows_s": n / stats[mid].wall,
        "breakdown": dataclasses.asdict(stats[mid]),
        "pipeline_s": full[mid],
        "codecs": codecs,
        "codec_mib": codec_bytes >> 20,
        "torch": torch.__version__,
    }


def benchmarks_markdown(r: dict) -> str:
    """The "extract" section of BENCHMARKS.md for :func:`bench_extract`'s figures."""
    b = r["breakdown"]
    lines = [
        "## extract",
        "",
        f"`vh bench extract --rows {r['rows']} --preset {r['preset']} --repeats {r['repeats']}` "
        f"— {r['preset']} trunk (D = {r['d']}), {r['device']}, {r['threads']} torch threads, "
        f"batch {r['batch_size']}, chunk {r['chunk_rows']} rows, {r['dtype']}, torch "
        f"{r['torch']}; {r['repeats']} alternating pairs (a then b), {time.strftime('%Y-%m-%d')}.",
        "",
        "| measurement | rows/s |",
        "| --- | ---: |",
        f"| (a) bare trunk forward, tokens pre-decoded on the device | {r['bare_rows_s']:,.0f} |",
        f"| (b) full `vh extract` into a fresh cache (validate, hash, columns, decode, forward, "
        f"write, finish) | {r['pipeline_rows_s']:,.0f} |",
        f"| (b) embedding loop only | {r['embed_loop_rows_s']:,.0f} |",
        f"| **ratio (b) / (a)**, median of the pairs | **{r['ratio']:.3f}** |",
        "",
        f"Rows/s are medians; the ratio of each pair: {', '.join(map(str, r['pair_ratios']))}. "
        "On a shared 2-core VM the spread between pairs is the machine's load, not the pipeline. "
        f"CPU seconds of the process, (a) / (b), median of the pairs: {r['cpu_ratio']:.3f}.",
        "",
        f"Breakdown of the median pipeline run ({r['pipeline_s']:.1f} s in all; decode and write "
        "run on background threads, overlapping the forward): "
        f"decode {b['decode']:.2f} s, host-to-device copy {b['copy']:.2f} s, forward "
        f"{b['forward']:.2f} s, write {b['write']:.2f} s, trunk waiting for input "
        f"{b['starved']:.2f} s, embedding loop {b['wall']:.2f} s. The trunk was busy "
        f"{100 * b['forward'] / max(b['wall'], 1e-9):.1f} % of the embedding loop; setup and "
        f"finish (validate, hash, create, columns, fsyncs, verify, marker) took "
        f"{r['pipeline_s'] - b['wall']:.2f} s, a fixed cost that an extract of millions of rows "
        "amortises.",
        "",
        f"emb codecs on these embeddings (tiled to about {r['codec_mib']} MiB of whole chunks, "
        "whole-chunk writes, reads into a preallocated buffer, best of 3):",
        "",
        "| codec | ratio | write GB/s | read GB/s |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {c['codec']} | {c['ratio']:.3f} | {c['write_gbs']:.2f} | {c['read_gbs']:.2f} |"
            for c in r["codecs"]
        ),
        "",
    ]
    return "\n".join(lines)
