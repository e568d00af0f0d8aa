"""The extract's pipeline: embed whole units of a cache and write them, on three threads.

::

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
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from vh.cache.writer import CacheWriter
from vh.errors import VhError
from vh.extract.dataset import Dataset
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


def breakdown(s: Stats) -> str:
    """Where the pipeline's time went, for the closing progress line."""
    return (
        f"[decode {s.decode:.1f}s, copy {s.copy:.1f}s, forward {s.forward:.1f}s, "
        f"write {s.write:.1f}s, trunk starved {s.starved:.1f}s]"
    )
