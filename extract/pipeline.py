"""The extract's pipeline: embed whole units of a cache and write them, on several threads.

::

    decode thread    dataset rows -> uint8 tokens in reused (pinned) buffers; or, when the
                     trunk runs on a GPU, the raw packed boards (decoded there)  --queue-->
    main thread      H2D copy, board decode in torch (GPU), trunk forward (bf16 autocast on
                     GPU), cast to the cache dtype, into the unit's reused (pinned) buffer
                                                                                --queue-->
    writer threads   ``writers`` of them, each takes one whole unit = one emb chunk: CRC32C,
                     write, fdatasync, ledger record; then the buffer goes back to the main

Every unit is embedded in the same batches relative to its first row, whichever worker does
it and whenever, so a killed-and-resumed or multi-worker run gives the same bytes. A trunk with
``pooled_into`` (one-hot, null) writes straight into the unit buffer on the CPU, a whole unit
per batch: no per-batch temporaries, and its values do not depend on the batching.

**Memory.** Nothing grows with the dataset here: in flight are ``writers + 2`` unit buffers
(``chunk_rows × D × itemsize`` bytes each: 32 MiB at 65,536 rows, D = 256, float16) and
``_TOKEN_BUFFERS`` token buffers (``batch × 16`` bytes, or ``batch × 12`` of raw boards; with a
free trunk the batch is a whole unit: 1 MiB each at 65,536 rows). The
per-state columns, computed before the units (:func:`vh.extract.columns.compute_columns`), are
the only part that scales with N: 38 bytes per row with a ``return`` column (run_id 8,
step_index 8, board_score 8, step_fraction 4, reward 4, return 4, max_exp 1, move_dir 1), 34
without, plus one block of decoded rows (~45 MB). Peak RSS = max(columns, units in flight) +
the dataset's memory maps' resident pages (read once, reclaimable) + the trunk.

Axes: B = batch rows, D = embedding width, 16 = cells / tokens.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from vh.cache.writer import CacheWriter
from vh.errors import VhError
from vh.extract.dataset import Dataset
from vh.extract.shards import gather
from vh.progress import Progress

# token buffers in flight: one being filled, two queued, one being consumed
_TOKEN_BUFFERS = 4
# writer threads: each writes whole chunks, so fsyncs and CRCs of several chunks overlap
# (the disk's queue wants several writes in flight; MEASUREMENTS.md "several chunks in flight")
WRITERS = 4
_POLL_S = 0.1  # how often a blocked thread checks whether the others failed

# bit shifts of cells 0..15 in a packed board (MSB-first nibbles; see vh.extract.board)
_SHIFTS = tuple(range(60, -1, -4))


def decode_tokens(boards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Packed boards -> uint8 tokens ``(B, 16)`` in torch, on the boards' device.

    The same result as :func:`vh.extract.board.unpack` (tests/test_multinode_extract.py
    checks it), so the trunk on a GPU receives 8 bytes a state over the bus, not 16, and the
    host does no decoding.

    Args:
        boards: int64 ``(B,)``, the packed uint64 boards reinterpreted.
        mask: integer ``(B,)`` tile_65536_mask (bit i set: cell i is 16), or None.
    """
    shifts = torch.tensor(_SHIFTS, dtype=torch.int64, device=boards.device)
    tokens = ((boards[:, None] >> shifts) & 15).to(torch.uint8)  # & 15 undoes the sign extension
    if mask is not None:
        bits = (mask[:, None].to(torch.int32) >> torch.arange(16, device=boards.device)) & 1
        tokens = torch.where(bits.bool(), torch.tensor(16, dtype=torch.uint8), tokens)
    return tokens


def decodes_on_device(ds: Dataset, device: torch.device) -> bool:
    """Whether the boards are decoded where the trunk runs: on a GPU, for packed boards."""
    return device.type == "cuda" and "board" in ds.fields and "exps" not in ds.fields


@dataclass
class Stats:
    """Seconds each stage was busy, and how long the trunk waited for input.

    Attributes:
        rows: rows embedded. units: units written. writers: writer threads.
        decode: decode thread (dataset read, board decoding on the host) busy time.
        copy: host-to-device copies issued (0 on CPU).
        forward: trunk forward incl. the device decode, the cast and the copy into the unit
            buffer.
        write: writer threads' busy time (CRC32C, write, fdatasync, ledger), summed over the
            threads (so it can exceed ``wall``).
        starved: main thread waiting for decoded tokens (trunk idle for want of input).
        blocked: main thread waiting for the writers (a free unit buffer, or a writer to
            take a whole unit): the trunk idle because writing is the bottleneck.
        wall: the whole embedding loop.
    """

    rows: int = 0
    units: int = 0
    writers: int = 0
    decode: float = 0.0
    copy: float = 0.0
    forward: float = 0.0
    write: float = 0.0
    starved: float = 0.0
    blocked: float = 0.0
    wall: float = 0.0


class _Stop(Exception):
    """Another stage failed; this one stops quietly (the failure is raised by the caller)."""


@dataclass
class _TokenBuf:
    tokens: torch.Tensor  # (B, 16) uint8 tokens, or (B,) int64 raw boards; pinned on CUDA
    exps: np.ndarray  # numpy view of tokens, filled by the decode thread
    mask: torch.Tensor | None = None  # (B,) int32 tile_65536_mask of raw boards
    mask_np: np.ndarray | None = None
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
        writers: writer threads.
        device_decode: decode packed boards in torch where the trunk runs (None: on a GPU
            with packed boards, see :func:`decodes_on_device`).
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
        writers: int = WRITERS,
        device_decode: bool | None = None,
    ):
        self.ds, self.writer, self.bs, self.device = ds, writer, batch_size, device
        self.vocab, self.progress, self.writers = vocab, progress, max(1, writers)
        self.cuda = device.type == "cuda"
        self.raw = decodes_on_device(ds, device) if device_decode is None else device_decode
        self.pooled = torch.compile(model.pooled, dynamic=False) if compile else model.pooled
        # a free trunk writes straight into the host unit buffer (no temporaries), a whole
        # unit at a time: its values do not depend on the batching, and per-batch Python
        # (queues, thread switches) was the pipeline's largest cost after the writes
        self.pooled_into = getattr(model, "pooled_into", None) if not self.cuda else None
        if self.pooled_into is not None:
            self.bs = max(batch_size, writer.chunk_rows)
        self.out_dtype = getattr(torch, writer.attrs["dtype"])
        self.stats = Stats(writers=self.writers)
        self.failed = threading.Event()
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []

    # ---- buffers and queues that notice a failed stage

    def _pool(self, make, count: int) -> queue.Queue:
        q: queue.Queue = queue.Queue()
        for _ in range(count):
            q.put(make())
        return q

    def _token_buf(self) -> _TokenBuf:
        if not self.raw:
            t = torch.empty((self.bs, 16), dtype=torch.uint8, pin_memory=self.cuda)
            return _TokenBuf(t, t.numpy())
        boards = torch.empty(self.bs, dtype=torch.int64, pin_memory=self.cuda)
        mask = torch.empty(self.bs, dtype=torch.int32, pin_memory=self.cuda)
        return _TokenBuf(boards, boards.numpy().view(np.uint64), mask, mask.numpy())

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

    # ---- the stages

    def _batches(self, units: list[int]):
        for u in units:
            start, stop = self.writer.unit_range(u)
            for b0 in range(start, stop, self.bs):  # batch edges relative to the unit start
                yield u, b0 - start, min(b0 + self.bs, stop) - b0, stop - start

    def _vocab_error(self, top: int, start: int, stop: int) -> VhError:
        return VhError(
            f"tile exponent {top} is outside the trunk's vocab of {self.vocab}",
            path=self.ds.path,
            field=f"rows {start}:{stop}",
        )

    def _decode(self, units: list[int], free: queue.Queue, ready: queue.Queue) -> None:
        for u, off, n, unit_rows in self._batches(units):
            buf = self._get(free)
            t0 = time.perf_counter()
            if buf.copied is not None:
                buf.copied.synchronize()  # the previous H2D copy from this buffer is done
            start = self.writer.unit_range(u)[0] + off
            if self.raw:  # packed boards as stored; decoded on the trunk's device
                self._read_raw(buf, start, start + n)
            else:
                rows = self.ds.read(start, start + n, out_exps=buf.exps)
                top = int(rows.exps.max()) if n else 0
                if top >= self.vocab:
                    raise self._vocab_error(top, start, start + n)
            self.stats.decode += time.perf_counter() - t0
            self._put(ready, (u, off, n, unit_rows, buf))
        self._put(ready, None)

    def _read_raw(self, buf: _TokenBuf, start: int, stop: int) -> None:
        fields, n = self.ds.fields, stop - start
        gather(self.ds.shards, fields["board"], start, stop, buf.exps[:n])
        if "mask" in fields:
            gather(self.ds.shards, fields["mask"], start, stop, buf.mask_np[:n])
        else:
            buf.mask_np[:n] = 0

    def _write(self, full: queue.Queue, free_units: queue.Queue) -> None:
        while (item := self._get(full)) is not None:
            u, ubuf, n = item
            t0 = time.perf_counter()
            if ubuf.filled is not None:
                ubuf.filled.synchronize()
            self.writer.write_unit(u, ubuf.array[:n])
            with self.lock:  # several writer threads add up here
                self.stats.write += time.perf_counter() - t0
                self.stats.units += 1
            self._put(free_units, ubuf)

    def _forward(self, tokens: torch.Tensor, dst: torch.Tensor) -> None:
        t0 = time.perf_counter()
        with torch.inference_mode():
            if self.pooled_into is not None:
                self.pooled_into(tokens, dst)
            else:
                with self._autocast():
                    y = self.pooled(tokens).to(self.out_dtype)  # (B, D), cast on the device
                dst.copy_(y, non_blocking=self.cuda)
        self.stats.forward += time.perf_counter() - t0

    def _autocast(self):
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _h2d(self, buf: _TokenBuf, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch on the trunk's device: tokens, or (raw boards, mask) to decode there."""
        mask = buf.mask[:n] if self.raw else None
        if not self.cuda:
            return buf.tokens[:n], mask
        t0 = time.perf_counter()
        tokens = buf.tokens[:n].to(self.device, non_blocking=True)
        if mask is not None:
            mask = mask.to(self.device, non_blocking=True)
        buf.copied = torch.cuda.Event()
        buf.copied.record()
        self.stats.copy += time.perf_counter() - t0
        return tokens, mask

    def _device_tokens(self, boards: torch.Tensor, mask: torch.Tensor, top: list) -> torch.Tensor:
        """Decode raw boards on the device; keeps the unit's largest token in ``top[0]``
        (checked once per unit, so the device is not synchronised every batch)."""
        with torch.inference_mode():
            tokens = decode_tokens(boards, mask)
            m = tokens.amax() if len(tokens) else torch.zeros((), dtype=torch.uint8)
            top[0] = m if top[0] is None else torch.maximum(top[0], m)
        return tokens

    def run(self, units: list[int]) -> Stats:
        """Embed and write ``units`` (in this order); returns the timings."""
        t_start = time.perf_counter()
        free_tok = self._pool(self._token_buf, _TOKEN_BUFFERS)
        # one unit being filled, one queued, one being written by each writer
        free_units = self._pool(self._unit_buf, self.writers + 2)
        ready: queue.Queue = queue.Queue(maxsize=_TOKEN_BUFFERS - 1)
        full: queue.Queue = queue.Queue(maxsize=1)
        threads = [self._thread(self._decode, units, free_tok, ready)]
        threads += [self._thread(self._write, full, free_units) for _ in range(self.writers)]
        try:
            self._main(ready, free_tok, free_units, full)
            for _ in range(self.writers):
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

    def _main(self, ready, free_tok, free_units, full) -> None:
        """The main thread's loop: batches in, trunk forward, whole units out."""
        ubuf, top = None, [None]
        while True:
            t0 = time.perf_counter()
            item = self._get(ready)
            self.stats.starved += time.perf_counter() - t0
            if item is None:
                return
            u, off, n, unit_rows, buf = item
            if ubuf is None:  # waits only if the writers are behind
                t0 = time.perf_counter()
                ubuf = self._get(free_units)
                self.stats.blocked += time.perf_counter() - t0
            tokens, mask = self._h2d(buf, n)
            if self.raw:
                tokens = self._device_tokens(tokens, mask, top)
            self._forward(tokens, ubuf.rows[off : off + n])
            self._put(free_tok, buf)
            self.stats.rows += n
            if self.progress is not None:
                self.progress.update(n)
            if off + n == unit_rows:  # the unit is whole: hand it to a writer
                if top[0] is not None and int(top[0]) >= self.vocab:
                    start = self.writer.unit_range(u)[0]
                    raise self._vocab_error(int(top[0]), start, start + unit_rows)
                top = [None]
                if self.cuda:
                    ubuf.filled = torch.cuda.Event()
                    ubuf.filled.record()
                t0 = time.perf_counter()
                self._put(full, (u, ubuf, unit_rows))
                self.stats.blocked += time.perf_counter() - t0
                ubuf = None


def breakdown(s: Stats) -> str:
    """Where the pipeline's time went, for the closing progress line."""
    return (
        f"[decode {s.decode:.1f}s, copy {s.copy:.1f}s, forward {s.forward:.1f}s, "
        f"write {s.write:.1f}s over {s.writers} threads, trunk starved {s.starved:.1f}s, "
        f"waiting for writers {s.blocked:.1f}s]"
    )
