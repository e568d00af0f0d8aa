"""Feeding the train step: the device mesh, the batch plan, data on the device or streamed.

Data on the device (:class:`DeviceData`): one transfer of the train and val rows; an epoch is
one jitted call that scans over batch indices (a permutation computed in numpy and padded to
whole batches with a mask), gathering each batch on the device. Streamed
(:class:`StreamData`): whole cache chunks are read in groups on a prefetch thread, shuffled
inside the group and fed to the same jitted step; host memory for embeddings stays below
``4 · prefetch_chunks · chunk_rows · D · itemsize`` (two groups queued, one being read, one
being batched), plus the compact labels of the sampled rows (a few bytes per row).

How rows become steps is one value, :class:`Batching`: the batch actually used (the
configured ``fit.train.batch_size`` no larger than the train rows, rounded to whole
micro-batches), the micro-batch, the order seed and the rows per epoch. The run dir records
it (``summary.json``: ``batch``).

Several devices: a mesh over all devices with one axis ``data``; batches are sharded along it,
parameters, optimiser state and the on-device data are replicated (each device holds all the
rows it may gather). Several hosts: :func:`init_distributed` calls ``jax.distributed``; every
host reads the same rows and builds the same global arrays.

Axis legend: M grid members, S steps per epoch, B batch rows (k micro-batches of c), D width.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vh.errors import VhError
from vh.heads.checkpoint import to_host
from vh.heads.sampler import epoch_order

# --------------------------------------------------------------------------- devices


def init_distributed() -> None:
    """Join a multi-host job when the environment describes one.

    ``VH_COORDINATOR`` (host:port), ``VH_NUM_PROCESSES`` and ``VH_PROCESS_ID`` are passed to
    ``jax.distributed.initialize``; ``VH_DISTRIBUTED=1`` alone lets JAX detect the cluster
    (SLURM, Cloud TPU). Without them this is a no-op (one host).
    """
    if jax.distributed.is_initialized():
        return
    if os.environ.get("VH_COORDINATOR"):
        jax.distributed.initialize(
            os.environ["VH_COORDINATOR"],
            int(os.environ["VH_NUM_PROCESSES"]),
            int(os.environ["VH_PROCESS_ID"]),
        )
    elif os.environ.get("VH_DISTRIBUTED") == "1":
        jax.distributed.initialize()


def make_mesh(devices: Sequence | None = None) -> Mesh:
    """A 1-D mesh named ``data`` over ``devices`` (all devices of all hosts by default)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def put(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Place a host array (identical on every host) as a global array with ``sharding``."""
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate(tree, mesh: Mesh):
    s = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda a: put(np.asarray(a), s), tree)


def device_bytes() -> int:
    """Memory of one device: the accelerator's limit, or the host RAM for CPU devices."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --------------------------------------------------------------------------- data


def batch_layout(requested: int, micro: int, n_train: int, n_dev: int) -> tuple[int, int]:
    """(batch, micro-batch) rows: the batch no larger than the data, the micro-batch a multiple
    of the device count (every micro-batch is sharded over all devices) dividing the batch.

    Args:
        requested: ``fit.train.batch_size``; micro: ``fit.train.microbatch`` (0 = the batch).
        n_train: train rows; n_dev: devices in the mesh.
    """
    b = max(min(requested, n_train), 1)
    c = min(micro or b, b)
    c = -(-c // n_dev) * n_dev
    return -(-b // c) * c, c


@dataclass(frozen=True)
class Batching:
    """How train rows become steps; build it with :meth:`plan` from the config.

    Attributes:
        batch: rows per step, as used (B = k·c).
        micro: rows per micro-batch c (0 given = the batch); must divide the batch.
        seed: the data-order seed.
        states_per_epoch: rows per epoch (0 = all train rows).
        requested: ``fit.train.batch_size`` as configured (0 = not from a config).
    """

    batch: int
    micro: int = 0
    seed: int = 0
    states_per_epoch: int = 0
    requested: int = 0

    def __post_init__(self) -> None:
        c = self.micro or self.batch
        if self.batch < 1 or self.batch % c:
            raise VhError(
                f"batch {self.batch} is not a multiple of the micro-batch {c}",
                field="fit.train.microbatch",
            )
        object.__setattr__(self, "micro", c)

    @classmethod
    def plan(
        cls,
        *,
        requested: int,
        micro: int,
        n_train: int,
        n_dev: int,
        seed: int,
        states_per_epoch: int = 0,
    ) -> Batching:
        """The batching of a fit: ``requested`` rows laid out by :func:`batch_layout`."""
        batch, c = batch_layout(requested, micro, n_train, n_dev)
        return cls(batch, c, seed, states_per_epoch, requested)

    def record(self) -> dict:
        """What the run dir records: the batch asked for, the batch used, the micro-batch."""
        return {"requested": self.requested, "used": self.batch, "micro": self.micro}


def _pad_batches(order: np.ndarray, batch: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``order`` as int32 [S, k, c] plus a mask; the last batch padded (B = k·c)."""
    s = -(-len(order) // batch)
    idx = np.zeros(s * batch, np.int32)
    idx[: len(order)] = order
    mask = np.zeros(s * batch, np.float32)
    mask[: len(order)] = 1.0
    return idx.reshape(s, -1, c), mask.reshape(s, -1, c)  # (S, k, c)


TICKS = 50  # host callbacks per on-device epoch at most (progress lines are rate-limited)


class DeviceData:
    """Train and val rows held on the device; epochs run as one scanned, jitted call.

    Args (keyword-only):
        x_train, y_train, x_val, y_val: host arrays (embeddings [n, D], compact labels).
        batching: batch, micro-batch (a multiple of the device count), seed, rows per epoch.
        mesh: the device mesh.
        ticks: progress callbacks per scanned epoch at most (0: none; the scan then has no
            host callback at all).
    """

    def __init__(
        self, *, x_train, y_train, x_val, y_val, batching: Batching, mesh: Mesh, ticks: int = TICKS
    ):
        self.ticks = ticks
        self._follow(None, 0)
        repl = NamedSharding(mesh, P())
        self.batching, self.mesh = batching, mesh
        self.batch, self.micro, self.seed = batching.batch, batching.micro, batching.seed
        self.n_train, self.n_val = len(x_train), len(x_val)
        self.rows_per_epoch = batching.states_per_epoch or self.n_train
        self.steps_per_epoch = -(-self.rows_per_epoch // self.batch)
        self.train = {"x": put(x_train, repl), "y": put(y_train, repl)}
        self.val = {"x": put(x_val, repl), "y": put(y_val, repl)}
        self._epoch = self._eval = None

    def bind(self, step: Callable, eval_sums: Callable) -> None:
        """Jit the epoch (a scan of ``step``) and the evaluation (a scan of ``eval_sums``)."""
        self._epoch, self._eval = self._wrap(step, eval_sums)

    def _wrap(self, step: Callable, eval_sums: Callable) -> tuple[Callable, Callable]:
        rows = NamedSharding(self.mesh, P(None, "data"))

        def gather(data, i, m):  # i, m: (k, c) -> batch leaves (k, c, ...)
            b = {"x": data["x"][i], "y": data["y"][i], "mask": m}
            return jax.lax.with_sharding_constraint(b, rows)

        def epoch(state, keys, data, idx, mask):  # idx, mask: (S, k, c)
            every = self._every(idx.shape[0])

            def body(st, ims):
                i, im = ims
                out = step(st, gather(data, *im), keys)
                self._tick(i, every, idx.shape[0])
                return out

            return jax.lax.scan(body, state, (jnp.arange(idx.shape[0]), (idx, mask)))

        def evaluate(params, data, idx, mask):
            every = self._every(idx.shape[0])

            def body(acc, ims):
                i, im = ims
                acc = acc + eval_sums(params, gather(data, *im))
                self._tick(i, every, idx.shape[0])
                return acc, None

            m = jax.tree_util.tree_leaves(params)[0].shape[0]
            xs = (jnp.arange(idx.shape[0]), (idx, mask))
            return jax.lax.scan(body, jnp.zeros(m, jnp.float32), xs)[0]

        return jax.jit(epoch, donate_argnums=0), jax.jit(evaluate)

    # progress inside the scan: a host callback every `every` steps, at most `ticks` an epoch
    def _every(self, steps: int) -> int:
        return max(1, -(-steps // self.ticks)) if self.ticks else 0

    def _tick(self, i: jax.Array, every: int, steps: int) -> None:
        """Traced: after step i, call the host every ``every`` steps and after the last one
        (never when ``every`` is 0)."""
        if every:
            jax.lax.cond(
                ((i + 1) % every == 0) | (i + 1 == steps),
                lambda: jax.debug.callback(self._on_tick, i + 1),
                lambda: None,
            )

    def _on_tick(self, steps) -> None:
        """Host side: forward the rows done to the current progress (once per step count,
        although each device of the mesh may call)."""
        rows = min(int(steps) * self.batch, self._progress_rows)
        if self._progress is not None and rows > self._progress_done:
            self._progress.update(rows - self._progress_done)
            self._progress_done = rows

    def _follow(self, progress, rows: int) -> None:
        self._progress, self._progress_rows, self._progress_done = progress, rows, 0

    def _indices(self, order: np.ndarray) -> tuple[jax.Array, jax.Array]:
        idx, mask = _pad_batches(order, self.batch, self.micro)
        s = NamedSharding(self.mesh, P(None, None, "data"))
        return put(idx, s), put(mask, s)

    def train_epoch(self, state, keys, epoch: int, progress=None):
        """One epoch in the order of (seed, epoch); returns (state, stats [S, M]).

        ``progress``: a :class:`vh.progress.Progress` told the rows done, from inside the
        scan (see ``ticks``).
        """
        order = epoch_order(self.n_train, epoch, self.seed, self.rows_per_epoch)
        self._follow(progress, len(order))
        try:
            out = self._epoch(state, keys, self.train, *self._indices(order))
            return jax.block_until_ready(out) if progress is not None else out
        finally:
            self._follow(None, 0)

    def val_sums(self, params, progress=None) -> np.ndarray:
        """Summed validation NLL per member [M] (divide by ``n_val``)."""
        self._follow(progress, self.n_val)
        try:
            return to_host(self._eval(params, self.val, *self._indices(np.arange(self.n_val))))
        finally:
            self._follow(None, 0)


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
