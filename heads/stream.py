"""Streamed data for the train step: whole cache chunks read into reused buffers by reader
threads, shuffled at chunk granularity, fed to the same jitted step as on-device data
(:mod:`vh.heads.data` holds the mesh, the batch plan and the on-device mode).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vh.heads.checkpoint import to_host
from vh.heads.data import Batching, put


class StreamData:
    """Rows streamed from the cache in whole chunks: reader threads, reused buffers, a
    chunk-granular shuffle.

    An epoch draws (from seed and epoch) a permutation of the chunks holding the rows and cuts
    it into shuffle buffers of ``prefetch`` chunks; each buffer's rows are permuted and cut
    into batches (a batch may span two buffers, so an epoch has ``ceil(rows / batch)`` steps
    and one padded batch, as on the device). Reader threads (``readers``, one chunk each,
    :meth:`vh.cache.reader.CacheReader.read_chunk`) fill the next ``depth`` shuffle buffers
    while the current one is batched; the buffers and the batch slots are allocated once and
    reused. float16 rows travel to the device as they are (the heads cast inside the jitted
    step); the only host copy is the gather of a batch's rows out of the shuffle buffer.

    Host memory: ``(depth + 1) · prefetch · chunk_rows · D · itemsize`` for the shuffle
    buffers plus three batches, plus the compact labels of the sampled rows.

    What this shuffle gives up against a full permutation of the train rows (the device
    mode's order): two rows of the same batch come from the same ``prefetch`` chunks, so a
    batch mixes ``prefetch · chunk_rows`` rows, not all of them; the rows of one chunk (in a
    cache, consecutive states of the same runs) stay within one buffer's span of the epoch.
    Each epoch is still a permutation of every row (each seen once), the chunk order and the
    within-buffer order are fresh each epoch, and batch gradients remain unbiased; what grows
    is their correlation within a buffer's span, which matters when one chunk holds only a
    few runs and ``prefetch`` is small. ``tests/test_stream.py`` checks on a planted problem
    that the validation NLL matches the device mode's.

    Args (keyword-only):
        reader: the open cache (``read_chunk``; a stand-in with ``take`` and ``chunk_rows``
            works too, reading through ``take``).
        train_rows, val_rows: sorted cache rows; y_train, y_val: their compact labels.
        batching: see :class:`DeviceData`; mesh: the device mesh.
        prefetch: chunks per shuffle buffer (``fit.train.prefetch_chunks``).
        readers: reader threads (chunks read at once); depth: buffers read ahead.
    """

    def __init__(
        self,
        *,
        reader,
        train_rows,
        y_train,
        val_rows,
        y_val,
        batching: Batching,
        mesh: Mesh,
        prefetch: int,
        readers: int = 4,
        depth: int = 2,
    ):
        self.reader, self.batching, self.mesh = reader, batching, mesh
        self.batch, self.micro, self.seed = batching.batch, batching.micro, batching.seed
        self.train_rows, self.y_train = np.asarray(train_rows), y_train
        self.val_rows, self.y_val = np.asarray(val_rows), y_val
        self.n_train, self.n_val = len(train_rows), len(val_rows)
        self.chunk = int(reader.chunk_rows)
        self.prefetch, self.readers, self.depth = max(prefetch, 1), max(readers, 1), max(depth, 1)
        self.rows_per_epoch = batching.states_per_epoch or self.n_train
        # one pass over the train rows per n_train rows of the epoch, each ending padded
        full, part = divmod(self.rows_per_epoch, self.n_train)
        self.steps_per_epoch = full * -(-self.n_train // self.batch) + -(-part // self.batch)
        self._step = self._eval = None
        self._blocks: list[np.ndarray] = []  # shuffle buffers, allocated on first use
        self._slots: list[dict] = []  # batch slots: host arrays and the device batch made last
        self._pool: ThreadPoolExecutor | None = None
        self._emitted: dict = {}  # the slot of the batch yielded last

    def bind(self, step: Callable, eval_sums: Callable) -> None:
        """Jit the step (its state donated) and the evaluation."""
        self._step, self._eval = jax.jit(step, donate_argnums=0), jax.jit(eval_sums)

    # ------------------------------------------------------------------ reading

    def _layout(self, rows: np.ndarray) -> tuple[np.dtype, int]:
        """(dtype, D) of emb: the reader's, or a stand-in's first row."""
        if hasattr(self.reader, "read_chunk"):
            return np.dtype(self.reader.dtype), int(self.reader.d)
        probe = np.asarray(self.reader.take(rows[:1]))
        return probe.dtype, probe.shape[1]

    def _buffers(self, rows: np.ndarray, labels: np.ndarray) -> None:
        """Allocate the shuffle buffers and batch slots once (reused by every epoch)."""
        if not self._blocks:
            dtype, d = self._layout(rows)
            n = self.prefetch * self.chunk
            self._blocks = [np.empty((n, d), dtype) for _ in range(self.depth + 1)]
            x = [np.empty((self.batch, d), dtype) for _ in range(3)]
            self._slots = [{"x": a, "device": None} for a in x]
            self._pool = ThreadPoolExecutor(self.readers, thread_name_prefix="vh-stream")
        for s in self._slots:  # labels differ between train and val
            ys = (self.batch, *labels.shape[1:])
            if s.get("y") is None or s["y"].shape != ys or s["y"].dtype != labels.dtype:
                s["y"], s["mask"] = np.empty(ys, labels.dtype), np.empty(self.batch, np.float32)

    def _guard(self, consumer) -> None:
        """The batch last yielded may be refilled once ``consumer`` (its step's output) is ready."""
        self._emitted["guard"] = consumer

    def _read_chunk(self, j: int, out: np.ndarray, upto: int) -> None:
        """Chunk ``j`` into ``out`` (room for a whole chunk); a stand-in reads ``upto`` rows."""
        if hasattr(self.reader, "read_chunk"):
            self.reader.read_chunk(int(j), out)
        else:
            out[:upto] = self.reader.take(np.arange(j * self.chunk, j * self.chunk + upto))

    # ------------------------------------------------------------------ batching

    def _batches(self, rows, labels, rng, limit: int):
        """Yield full batches {"x", "y", "mask"} (the last one padded), at most ``limit`` rows."""
        for b, _ in self._counted(rows, labels, rng, limit):
            yield b

    def _counted(self, rows, labels, rng, limit: int):
        """:meth:`_batches` with each batch's count of real rows: (batch, rows)."""
        rows, labels = np.asarray(rows), np.asarray(labels)
        if not len(rows) or limit <= 0:
            return
        self._buffers(rows, labels)
        srt = None if np.all(rows[1:] >= rows[:-1]) else np.argsort(rows, kind="stable")
        sorted_rows = rows if srt is None else rows[srt]
        ids, lo = np.unique(sorted_rows // self.chunk, return_index=True)
        hi = np.r_[lo[1:], len(rows)]
        order = rng.permutation(len(ids)) if rng is not None else np.arange(len(ids))
        own = np.random.default_rng(rng.integers(1 << 63)) if rng is not None else None
        k, c = self.prefetch, self.chunk
        groups = [order[a : a + k] for a in range(0, len(order), k)]
        sizes = np.cumsum([int(np.sum(hi[g] - lo[g])) for g in groups])
        groups = groups[: int(np.searchsorted(sizes, min(limit, sizes[-1]))) + 1]  # only those used
        pending: dict[int, list[Future]] = {}

        def submit(g: int) -> None:
            block = self._blocks[g % len(self._blocks)]
            pending[g] = [
                self._pool.submit(
                    self._read_chunk,
                    ids[i],
                    block[s * c : (s + 1) * c],
                    int(sorted_rows[hi[i] - 1] - ids[i] * c + 1),
                )  # fmt: skip
                for s, i in enumerate(groups[g])
            ]

        def plan(g: int) -> tuple[np.ndarray, np.ndarray]:
            """(positions in rows, rows of the shuffle buffer) of group g, permuted."""
            spans = [np.arange(lo[i], hi[i]) for i in groups[g]]
            local = np.concatenate(
                [
                    sorted_rows[p] - ids[i] * c + s * c
                    for s, (i, p) in enumerate(zip(groups[g], spans, strict=True))
                ]
            )
            pos = np.concatenate(spans)
            pos = pos if srt is None else srt[pos]
            if own is not None:
                perm = own.permutation(len(pos))
                pos, local = pos[perm], local[perm]
            return pos, local

        batcher, seen, submitted = _Filler(self, labels), 0, 0
        try:
            for g in range(len(groups)):
                while submitted < min(g + self.depth + 1, len(groups)):  # keep `depth` ahead
                    submit(submitted)
                    submitted += 1
                for f in pending.pop(g):
                    f.result()
                pos, local = plan(g)
                take = min(len(pos), limit - seen)
                block = self._blocks[g % len(self._blocks)]
                yield from batcher.fill(block, local[:take], pos[:take])
                seen += take
            yield from batcher.flush()
        finally:  # stopped early or failed: let the reads in flight end before buffers are reused
            futures = [f for fs in pending.values() for f in fs]
            for f in futures:
                f.cancel()
            wait(futures)

    def train_epoch(self, state, keys, epoch: int, progress=None):
        """One epoch in a chunk order drawn from (seed, epoch); returns (state, stats [S, M]).

        ``progress``: a :class:`vh.progress.Progress` told the rows of every batch.
        """
        rng = np.random.default_rng([self.seed, epoch])
        stats, remaining = [], self.rows_per_epoch
        while remaining > 0:  # more states per epoch than rows: another pass, new order
            for b, n in self._counted(self.train_rows, self.y_train, rng, remaining):
                state, st = self._step(state, b, keys)
                self._guard(st)
                stats.append(st)
                if progress is not None:
                    progress.update(n)
            remaining -= min(remaining, self.n_train)
        return state, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *stats)

    def val_sums(self, params, progress=None) -> np.ndarray:
        """Summed validation NLL per member [M] (divide by ``n_val``)."""
        total = 0.0
        for b, n in self._counted(self.val_rows, self.y_val, None, self.n_val):
            total = total + self._eval(params, b)
            self._guard(total)
            if progress is not None:
                progress.update(n)
        return to_host(total)


class _Filler:
    """Copies rows out of shuffle buffers into the batch slots; yields device batches.

    On CPU a device array may share memory with the host array it was made from (JAX's
    zero-copy transfer), and on a GPU the copy may still be running: so a slot's host arrays
    are refilled only once what consumed its last batch is ready (``guard``: the step's
    output, set by :meth:`StreamData._guard`; without one, the batch itself). Three slots
    keep the host up to two batches ahead of the device without a fresh allocation per
    batch. A caller of ``_batches`` that keeps a batch past the next two must copy it.
    """

    def __init__(self, data: StreamData, labels: np.ndarray):
        self.data, self.labels = data, labels
        self.sharding = NamedSharding(data.mesh, P(None, "data"))
        self.i, self.n, self.slot = 0, 0, None  # slot index, rows in it, the slot if acquired

    def _acquire(self) -> dict:
        slot = self.data._slots[self.i]
        for key in ("guard", "device"):
            if slot.get(key) is not None:
                jax.block_until_ready(slot[key])
                slot[key] = None
        return slot

    def fill(self, block: np.ndarray, local: np.ndarray, pos: np.ndarray):
        """Append rows ``block[local]`` (labels ``labels[pos]``); yield each full batch."""
        i, b = 0, self.data.batch
        while i < len(local):
            self.slot = self.slot or self._acquire()
            m = min(b - self.n, len(local) - i)
            dst = slice(self.n, self.n + m)
            np.take(block, local[i : i + m], axis=0, out=self.slot["x"][dst], mode="clip")
            np.take(self.labels, pos[i : i + m], axis=0, out=self.slot["y"][dst], mode="clip")
            self.n, i = self.n + m, i + m
            if self.n == b:
                yield self._emit()

    def flush(self):
        """Yield the last, padded batch if rows are left."""
        if self.n:
            yield self._emit()

    def _emit(self) -> tuple[dict, int]:
        s, n, c = self.slot, self.n, self.data.micro
        s["mask"][:n], s["mask"][n:] = 1.0, 0.0
        if n < self.data.batch:
            s["x"][n:], s["y"][n:] = 0, 0
        leaves = {k: s[k].reshape(-1, c, *s[k].shape[1:]) for k in ("x", "y", "mask")}
        s["device"] = {k: put(v, self.sharding) for k, v in leaves.items()}
        self.data._emitted = s
        self.i, self.n, self.slot = (self.i + 1) % len(self.data._slots), 0, None
        return s["device"], n
