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
# ...and at least this many steps between two: each callback costs a few ms on the CPU (a
# 2M-row epoch of 31 steps ran 11 % slower with one every step; `vh bench stream`)
MIN_TICK_STEPS = 16


class DeviceData:
    """Train and val rows held on the device; epochs run as one scanned, jitted call.

    Args (keyword-only):
        x_train, y_train, x_val, y_val: host arrays (embeddings [n, D], compact labels).
        batching: batch, micro-batch (a multiple of the device count), seed, rows per epoch.
        mesh: the device mesh.
        ticks: progress callbacks per scanned epoch at most (0: none; the scan then has no
            host callback at all).
        min_tick_steps: steps between two callbacks at least (the last step always calls).
    """

    def __init__(
        self, *, x_train, y_train, x_val, y_val, batching: Batching, mesh: Mesh,
        ticks: int = TICKS, min_tick_steps: int = MIN_TICK_STEPS,
    ):  # fmt: skip
        self.ticks, self.min_tick_steps = ticks, min_tick_steps
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
        return max(1, self.min_tick_steps, -(-steps // self.ticks)) if self.ticks else 0

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


def __getattr__(name: str):
    """``StreamData`` lives in :mod:`vh.heads.stream` (it reads the cache itself); kept
    reachable here for callers that knew it from this module."""
    if name == "StreamData":
        from vh.heads.stream import StreamData

        return StreamData
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
