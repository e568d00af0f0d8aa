"""The train engine: a pure jitted step, whole epochs in ``lax.scan``, a vmapped grid, a mesh.

State (a pytree; every leaf but ``step`` is stacked over the M grid members):
``params`` (Flax params), ``opt`` (Adam moments), ``lr`` [M], ``wd`` [M], ``step`` (int32,
shared). The optimiser is AdamW written out (``scale_by_adam``, then ``u + wd·p``, then
``-lr·f(step)·u``, which is what ``optax.adamw`` computes) so that learning rate and weight
decay are per-member arrays the grid vmaps over.

Data on the device (:class:`DeviceData`): one transfer of the train and val rows; an epoch is
one jitted call that scans over batch indices (a permutation computed in numpy and padded to
whole batches with a mask), gathering each batch on the device. Streamed
(:class:`StreamData`): whole cache chunks are read in groups on a prefetch thread, shuffled
inside the group and fed to the same jitted step; host memory for embeddings stays below
``4 · prefetch_chunks · chunk_rows · D · itemsize`` (two groups queued, one being read, one
being batched), plus the compact labels of the sampled rows (a few bytes per row).

Several devices: a mesh over all devices with one axis ``data``; batches are sharded along it,
parameters, optimiser state and the on-device data are replicated (each device holds all the
rows it may gather). Several hosts: :func:`init_distributed` calls ``jax.distributed``; every
host reads the same rows and builds the same global arrays.

Axis legend: M grid members, S steps per epoch, B batch rows, D embedding width.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vh.config import TrainConfig
from vh.errors import VhError
from vh.heads import checkpoint as ck
from vh.heads.losses import Objective
from vh.heads.modules import flatten_params
from vh.heads.sampler import epoch_order

TRACES: Counter = Counter()  # how often each jitted function was traced (tests assert 1)
GRID_KEYS = ("lr", "wd", "seed")

_COMPILED: dict = {}


def _compiled(key: tuple, build: Callable):
    """Jitted functions by everything they close over (head, objective, schedule, mesh), so
    fits that differ only in data or hyperparameters reuse one compilation."""
    if key not in _COMPILED:
        if len(_COMPILED) >= 64:  # a long-lived process fitting many heads: drop the oldest
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = build()
    return _COMPILED[key]


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class Member:
    """One head of the grid: its name in the run dir and its hyperparameters."""

    name: str
    lr: float
    wd: float
    seed: int


def parse_grid(items: Sequence[str]) -> dict[str, tuple]:
    """``["lr=1e-4,3e-4", "seed=0,1"]`` → ``{"lr": (1e-4, 3e-4), "seed": (0, 1)}``."""
    grid: dict[str, tuple] = {}
    for item in items:
        key, _, values = item.partition("=")
        key = key.strip()
        if key not in GRID_KEYS:
            raise VhError(
                f"unknown grid key (valid: {', '.join(GRID_KEYS)})", field=f"--grid {key}"
            )
        cast = int if key == "seed" else float
        try:
            grid[key] = tuple(cast(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise VhError(
                f"expected comma-separated numbers, got {values!r}", field=f"--grid {key}"
            ) from None
        if not grid[key]:
            raise VhError("no values", field=f"--grid {key}")
    return grid


def make_members(tcfg: TrainConfig, grid: dict[str, tuple] | None = None) -> list[Member]:
    """The cartesian product of the grid (missing keys take the config's value), m000, m001…"""
    grid = grid or {}
    axes = [grid.get("lr", (tcfg.lr,)), grid.get("wd", (tcfg.wd,)), grid.get("seed", (tcfg.seed,))]
    return [
        Member(f"m{i:03d}", float(lr), float(wd), int(seed))
        for i, (lr, wd, seed) in enumerate(itertools.product(*axes))
    ]


# --------------------------------------------------------------------------- the pure parts


def lr_factor(tcfg: TrainConfig, total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """Multiplier of the learning rate at a step: linear warmup, then constant or cosine."""

    def f(step):
        s = step.astype(jnp.float32)
        warm = jnp.minimum(1.0, (s + 1.0) / tcfg.warmup_steps) if tcfg.warmup_steps else 1.0
        if tcfg.schedule == "constant":
            return warm * jnp.ones_like(s)
        span = max(total_steps - tcfg.warmup_steps, 1)
        progress = jnp.clip((s - tcfg.warmup_steps) / span, 0.0, 1.0)
        return warm * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))

    return f


_ADAM = optax.scale_by_adam()


@jax.jit
def _member_keys(seeds: jax.Array) -> tuple[jax.Array, jax.Array]:
    base = jax.vmap(jax.random.PRNGKey)(seeds)
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    return fold(base, 0), fold(base, 1)


def member_keys(members: Sequence[Member]) -> tuple[jax.Array, jax.Array]:
    """(init keys [M, 2], dropout keys [M, 2]), split once from each member's seed."""
    return _member_keys(jnp.asarray([m.seed for m in members], jnp.uint32))


def init_state(model, members: Sequence[Member], d: int) -> dict:
    """Fresh stacked state for the grid; member m's params depend only on its seed."""

    def build():  # one compilation instead of one per eager op
        def init(keys):
            x0 = jnp.zeros((1, d), jnp.float32)
            params = jax.vmap(lambda k: model.init(k, x0)["params"])(keys)
            return params, jax.vmap(_ADAM.init)(params)

        return jax.jit(init)

    params, opt = _compiled(("init", model, d), build)(member_keys(members)[0])
    return {
        "params": params,
        "opt": opt,
        "lr": np.asarray([m.lr for m in members], np.float32),
        "wd": np.asarray([m.wd for m in members], np.float32),
        "step": np.zeros((), np.int32),
    }


def make_step(model, objective: Objective, factor: Callable) -> Callable:
    """The train step ``step(state, batch, keys) -> (state, stats)``, pure, not yet jitted.

    ``batch`` = {"x": [k, c, D], "y": [k, c, …], "mask": [k, c]}: one batch of B = k·c rows,
    shared by all members, in k micro-batches of c rows. The gradient is that of the masked
    mean loss over all B rows (sums accumulated over the micro-batches, divided by the count
    of real rows once); micro-batches only keep the activations in cache: with c = 2048 an
    epoch ran 1.6x faster for the probe and 1.4x for the MLP head than with one 65,536-row
    pass (measured on the 2-core machine). ``keys``: the members' dropout keys [M, 2], folded
    with the step and the micro-batch. ``stats`` = {"loss": [M], "nll": [M], "count": []}
    (means over the real rows of the batch).
    """

    def chunk_grads(params, key, chunk):  # one member, one micro-batch
        def loss_sum(p):
            z = model.apply({"params": p}, chunk["x"], train=True, rngs={"dropout": key})
            return jnp.sum(objective.loss(z, chunk["y"], mask=chunk["mask"])), z

        (loss, z), g = jax.value_and_grad(loss_sum, has_aux=True)(params)
        if objective.nll is objective.loss:  # no second pass over the logits
            return g, loss, loss
        return g, loss, jnp.sum(objective.nll(z, chunk["y"], mask=chunk["mask"]))

    def update(params, opt, lr, wd, g, step):  # AdamW, one member
        u, opt = _ADAM.update(g, opt, params)
        scale = lr * factor(step)
        return jax.tree_util.tree_map(lambda p, u: p - scale * (u + wd * p), params, u), opt

    def step(state, batch, keys):
        TRACES["step"] += 1  # runs at trace time only
        params, m = state["params"], state["lr"].shape[0]
        fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
        step_keys = fold(keys, state["step"])

        def body(acc, chunk_j):
            chunk, j = chunk_j
            out = jax.vmap(chunk_grads, in_axes=(0, 0, None))(params, fold(step_keys, j), chunk)
            return jax.tree_util.tree_map(jnp.add, acc, out), None

        zero = (jax.tree_util.tree_map(jnp.zeros_like, params), jnp.zeros(m), jnp.zeros(m))
        k = batch["mask"].shape[0]
        (g, loss, nll), _ = jax.lax.scan(body, zero, (batch, jnp.arange(k)))
        count = jnp.maximum(jnp.sum(batch["mask"] > 0), 1)
        g = jax.tree_util.tree_map(lambda a: a / count, g)
        params, opt = jax.vmap(update, in_axes=(0, 0, 0, 0, 0, None))(
            params, state["opt"], state["lr"], state["wd"], g, state["step"]
        )
        new = {**state, "params": params, "opt": opt, "step": state["step"] + 1}
        return new, {"loss": loss / count, "nll": nll / count, "count": count}

    return step


def make_eval(model, objective: Objective) -> Callable:
    """``nll_sums(params, batch) -> [M]``: summed validation NLL of each member on a batch
    (laid out in micro-batches like the train step's)."""

    def sums(params, batch):
        def body(acc, chunk):
            def one(p):
                z = model.apply({"params": p}, chunk["x"], train=False)
                return jnp.sum(objective.nll(z, chunk["y"], mask=chunk["mask"]))

            return acc + jax.vmap(one)(params), None

        m = jax.tree_util.tree_leaves(params)[0].shape[0]
        return jax.lax.scan(body, jnp.zeros(m), batch)[0]

    return sums


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
    stats = jax.devices()[0].memory_stats() or {}
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


def _micro(batch: int, micro: int) -> int:
    """Rows per micro-batch: ``micro`` (0 = the whole batch), which must divide the batch."""
    c = micro or batch
    if batch % c:
        raise VhError(
            f"batch {batch} is not a multiple of the micro-batch {c}", field="fit.train.microbatch"
        )
    return c


def _pad_batches(order: np.ndarray, batch: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``order`` as int32 [S, k, c] plus a mask; the last batch padded (B = k·c)."""
    s = -(-len(order) // batch)
    idx = np.zeros(s * batch, np.int32)
    idx[: len(order)] = order
    mask = np.zeros(s * batch, np.float32)
    mask[: len(order)] = 1.0
    return idx.reshape(s, -1, c), mask.reshape(s, -1, c)  # (S, k, c)


class DeviceData:
    """Train and val rows held on the device; epochs run as one scanned, jitted call.

    Args:
        x_train, y_train, x_val, y_val: host arrays (embeddings [n, D], compact labels).
        batch: rows per step; micro: rows per micro-batch (0 = the batch; divides it, and
            is a multiple of the device count).
        mesh: the device mesh.
        seed: the data-order seed; states_per_epoch: rows per epoch (0 = all train rows).
    """

    def __init__(
        self,
        x_train,
        y_train,
        x_val,
        y_val,
        batch: int,
        mesh: Mesh,
        seed: int,
        states_per_epoch: int = 0,
        micro: int = 0,
    ):
        repl = NamedSharding(mesh, P())
        self.batch, self.mesh, self.seed = batch, mesh, seed
        self.micro = _micro(batch, micro)
        self.n_train, self.n_val = len(x_train), len(x_val)
        self.rows_per_epoch = states_per_epoch or self.n_train
        self.steps_per_epoch = -(-self.rows_per_epoch // batch)
        self.train = {"x": put(x_train, repl), "y": put(y_train, repl)}
        self.val = {"x": put(x_val, repl), "y": put(y_val, repl)}
        self._epoch = self._eval = None

    def bind(self, key: tuple, build: Callable) -> None:
        """Jitted epoch and evaluation around ``build() -> (step, eval_sums)`` (cached by key)."""
        self._epoch, self._eval = _compiled(("device", *key), lambda: self._wrap(*build()))

    def _wrap(self, step: Callable, eval_sums: Callable) -> tuple[Callable, Callable]:
        rows = NamedSharding(self.mesh, P(None, "data"))

        def gather(data, i, m):  # i, m: (k, c) -> batch leaves (k, c, ...)
            b = {"x": data["x"][i], "y": data["y"][i], "mask": m}
            return jax.lax.with_sharding_constraint(b, rows)

        def epoch(state, keys, data, idx, mask):  # idx, mask: (S, k, c)
            def body(st, im):
                return step(st, gather(data, *im), keys)

            return jax.lax.scan(body, state, (idx, mask))

        def evaluate(params, data, idx, mask):
            def body(acc, im):
                return acc + eval_sums(params, gather(data, *im)), None

            m = jax.tree_util.tree_leaves(params)[0].shape[0]
            return jax.lax.scan(body, jnp.zeros(m, jnp.float32), (idx, mask))[0]

        return jax.jit(epoch, donate_argnums=0), jax.jit(evaluate)

    def _indices(self, order: np.ndarray) -> tuple[jax.Array, jax.Array]:
        idx, mask = _pad_batches(order, self.batch, self.micro)
        s = NamedSharding(self.mesh, P(None, None, "data"))
        return put(idx, s), put(mask, s)

    def train_epoch(self, state, keys, epoch: int):
        """One epoch in the order of (seed, epoch); returns (state, stats [S, M])."""
        order = epoch_order(self.n_train, epoch, self.seed, self.rows_per_epoch)
        return self._epoch(state, keys, self.train, *self._indices(order))

    def val_sums(self, params) -> np.ndarray:
        """Summed validation NLL per member [M] (divide by ``n_val``)."""
        return ck.to_host(self._eval(params, self.val, *self._indices(np.arange(self.n_val))))


class StreamData:
    """Rows streamed from the cache in whole chunks, prefetched on a thread.

    An epoch visits the chunks holding train rows in an order drawn from (seed, epoch), in
    groups of ``prefetch`` chunks; rows are shuffled inside their group. Batches carry over
    between groups, so an epoch has ``ceil(rows / batch)`` steps and one padded batch.

    Args:
        reader: the open cache.
        train_rows, val_rows: sorted cache rows; y_train, y_val: their compact labels.
        batch: rows per step; mesh: the device mesh; prefetch: chunks per read group.
        seed: the data-order seed; states_per_epoch: 0 = all train rows; micro: rows per
            micro-batch (see :class:`DeviceData`).
    """

    def __init__(
        self,
        reader,
        train_rows,
        y_train,
        val_rows,
        y_val,
        batch: int,
        mesh: Mesh,
        prefetch: int,
        seed: int,
        states_per_epoch: int = 0,
        micro: int = 0,
    ):
        self.reader, self.batch, self.mesh = reader, batch, mesh
        self.micro = _micro(batch, micro)
        self.train_rows, self.y_train = train_rows, y_train
        self.val_rows, self.y_val = val_rows, y_val
        self.n_train, self.n_val = len(train_rows), len(val_rows)
        self.chunk = int(reader.chunk_rows)
        self.prefetch, self.seed = max(prefetch, 1), seed
        self.rows_per_epoch = states_per_epoch or self.n_train
        # one pass over the train rows per n_train rows of the epoch, each ending padded
        full, part = divmod(self.rows_per_epoch, self.n_train)
        self.steps_per_epoch = full * -(-self.n_train // batch) + -(-part // batch)
        self._step = self._eval = None

    def bind(self, key: tuple, build: Callable) -> None:
        """Jitted step and evaluation from ``build() -> (step, eval_sums)`` (cached by key)."""

        def wrap():
            step, eval_sums = build()
            return jax.jit(step, donate_argnums=0), jax.jit(eval_sums)

        self._step, self._eval = _compiled(("stream", *key), wrap)

    def _groups(self, rows: np.ndarray, rng: np.random.Generator | None):
        """Yield (x, positions) per group of chunks, read on a background thread."""
        chunk_of = rows // self.chunk
        chunks, own = np.unique(chunk_of), None
        if rng is not None:
            chunks = rng.permutation(chunks)
            own = np.random.default_rng(rng.integers(1 << 63))  # the reader thread's generator
        q: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def produce():
            try:
                for g in range(0, len(chunks), self.prefetch):
                    if stop.is_set():
                        return
                    pos = np.flatnonzero(np.isin(chunk_of, chunks[g : g + self.prefetch]))
                    pos = own.permutation(pos) if own is not None else pos
                    q.put((self.reader.take(rows[pos]), pos))
                q.put(None)
            except BaseException as e:  # surfaced in the consumer
                q.put(e)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # stopped early (epoch limit) or failed: end the reader, unblocking its put
            stop.set()
            while thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    q.get(timeout=0.05)

    def _batches(self, rows, labels, rng, limit: int):
        """Yield full batches {"x", "y", "mask"} (the last one padded), at most ``limit`` rows."""
        sharding = NamedSharding(self.mesh, P(None, "data"))
        carry_x, carry_p, seen = None, None, 0
        with contextlib.closing(self._groups(rows, rng)) as groups:
            for x, pos in groups:
                if carry_x is not None:
                    x, pos = np.concatenate([carry_x, x]), np.concatenate([carry_p, pos])
                cut = min(len(x), limit - seen)
                full = cut // self.batch * self.batch
                for a in range(0, full, self.batch):
                    b = slice(a, a + self.batch)
                    yield self._device_batch(x[b], labels[pos[b]], sharding)
                seen += full
                carry_x, carry_p = x[full:cut], pos[full:cut]
                if seen + len(carry_x) >= limit:
                    break
        if carry_x is not None and len(carry_x):
            yield self._device_batch(carry_x, labels[carry_p], sharding)

    def _device_batch(self, x, y, sharding) -> dict:
        """A host batch padded to B rows, as (k, c, ...) micro-batches on the devices."""
        n, pad = len(x), self.batch - len(x)
        mask = np.r_[np.ones(n, np.float32), np.zeros(pad, np.float32)]
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)])
        leaves = (("x", x), ("y", y), ("mask", mask))
        return {k: put(v.reshape(-1, self.micro, *v.shape[1:]), sharding) for k, v in leaves}

    def train_epoch(self, state, keys, epoch: int):
        """One epoch in a chunk order drawn from (seed, epoch); returns (state, stats [S, M])."""
        rng = np.random.default_rng([self.seed, epoch])
        stats, remaining = [], self.rows_per_epoch
        while remaining > 0:  # more states per epoch than rows: another pass, new order
            for b in self._batches(self.train_rows, self.y_train, rng, remaining):
                state, st = self._step(state, b, keys)
                stats.append(st)
            remaining -= min(remaining, self.n_train)
        return state, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *stats)

    def val_sums(self, params) -> np.ndarray:
        total = 0.0
        for b in self._batches(self.val_rows, self.y_val, None, self.n_val):
            total = total + self._eval(params, b)
        return ck.to_host(total)


# --------------------------------------------------------------------------- the loop


@dataclass
class Book:
    """Early-stopping bookkeeping of one member."""

    best_nll: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    epochs_run: int = 0
    stopped: bool = False

    def update(self, epoch: int, val_nll: float, patience: int) -> bool:
        """Record an epoch's validation NLL; True when it is a new best."""
        self.epochs_run = epoch + 1
        if val_nll < self.best_nll:
            self.best_nll, self.best_epoch, self.bad_epochs = float(val_nll), epoch, 0
            return True
        self.bad_epochs += 1
        self.stopped = self.bad_epochs >= patience
        return False


def _kill_point(point: str, epoch: int) -> None:
    """Test hook: ``VH_FIT_KILL=EPOCH:POINT`` SIGKILLs this process there (crash tests)."""
    if os.environ.get("VH_FIT_KILL") == f"{epoch}:{point}":
        os.kill(os.getpid(), 9)


def _check_finite(stats: dict, val_nll: np.ndarray, epoch: int, step0: int, names) -> None:
    loss = stats["loss"]  # (S, M)
    steps = f"steps {step0}–{step0 + len(loss) - 1} (epoch {epoch})"
    if not np.all(np.isfinite(loss)):
        s, m = np.argwhere(~np.isfinite(loss))[0]
        raise VhError(
            f"non-finite training loss at step {step0 + s} of {steps}, member "
            f"{names[m]}; the run stopped, best checkpoints so far are kept: lower "
            "the learning rate or check the embeddings",
            field="fit.train",
            code=3,
        )
    if not np.all(np.isfinite(val_nll)):
        m = int(np.argmax(~np.isfinite(val_nll)))
        raise VhError(
            f"non-finite validation NLL after {steps}, member {names[m]}", field="fit.train", code=3
        )


def _records(
    epoch: int,
    step0: int,
    stats: dict,
    val_nll: float,
    lr: float,
    i: int,
    seconds: float,
    n_segments: int = 10,
) -> list[dict]:
    """Metrics lines of member i for one epoch: ≤ n_segments train lines, then one val line."""
    count = stats["count"].astype(np.float64)  # (S,)
    base = {"epoch": epoch, "lr": lr, "time": seconds}
    out = []
    for seg in np.array_split(np.arange(len(count)), min(n_segments, len(count))):
        w = count[seg]
        out.append(
            {
                **base,
                "step": step0 + int(seg[-1]),
                "split": "train",
                "loss": float(np.average(stats["loss"][seg, i], weights=w)),
                "nll": float(np.average(stats["nll"][seg, i], weights=w)),
            }
        )
    last = step0 + len(count) - 1
    return [*out, {**base, "step": last, "split": "val", "loss": val_nll, "nll": val_nll}]


def train(
    run_dir,
    model,
    objective: Objective,
    members: Sequence[Member],
    tcfg: TrainConfig,
    data,
    d: int,
    *,
    mesh: Mesh,
    resume: bool = True,
    log=print,
) -> dict[str, Book]:
    """Train the grid on ``data`` with early stopping; write metrics and checkpoints.

    Per epoch and member: train lines (≤ 10 per epoch) and a val line in
    ``members/NAME/metrics.jsonl``; ``members/NAME/best.safetensors`` when its validation NLL
    improves; then ``last/state.safetensors`` (the whole state and the bookkeeping), written
    last, so a run killed at any point resumes from the last finished epoch and ends with the
    same checkpoints as an uninterrupted one. A member that stopped early keeps training in
    the stack (it shares the batches) but its later epochs are ignored.

    Args:
        run_dir: the run dir (``members/`` and ``last/`` are written here).
        model, objective: the head and its losses.
        members: the grid.
        tcfg: train options (epochs, patience, seeds).
        data: :class:`DeviceData` or :class:`StreamData`.
        d: embedding width.
        mesh: the device mesh.
        resume: continue from ``last/`` when it exists.
        log: called with one progress line per epoch.

    Returns:
        The final :class:`Book` of each member.
    """
    run_dir = Path(run_dir)
    primary = jax.process_index() == 0  # multi-host: one process writes
    names = [m.name for m in members]
    factor = lr_factor(tcfg, tcfg.epochs * data.steps_per_epoch)
    factor_at = jax.jit(factor)  # for the metrics lines
    key = (
        model,
        objective,
        tcfg.schedule,
        tcfg.warmup_steps,
        tcfg.epochs * data.steps_per_epoch,
        mesh,
    )
    data.bind(key, lambda: (make_step(model, objective, factor), make_eval(model, objective)))
    logs = {n: ck.MetricsLog(run_dir / "members" / n / "metrics.jsonl") for n in names}
    keys = replicate(member_keys(members)[1], mesh)

    # ---- start, or resume from the last finished epoch
    state, books, start = init_state(model, members, d), {n: Book() for n in names}, 0
    last = run_dir / "last" / "state.safetensors"
    if resume and last.exists():
        state, meta = ck.load_state(last, state)
        books = {n: Book(**meta["books"][n]) for n in names}
        start = meta["epoch"]
    for n in names:  # drop lines of an epoch that was not finished
        if primary:
            logs[n].truncate(meta["metrics_size"][n] if start else 0)
    state = replicate(state, mesh)

    # ---- epochs
    for epoch in range(start, tcfg.epochs):
        if all(b.stopped for b in books.values()):
            break
        t0 = time.perf_counter()
        step0 = int(ck.to_host(state["step"]))
        state, stats = data.train_epoch(state, keys, epoch)
        _kill_point("trained", epoch)
        val_nll = data.val_sums(state["params"]) / max(data.n_val, 1)
        stats = jax.tree_util.tree_map(ck.to_host, stats)
        _check_finite(stats, val_nll, epoch, step0, names)
        seconds = time.perf_counter() - t0
        lr = ck.to_host(state["lr"]) * float(factor_at(step0 + len(stats["count"]) - 1))
        params = jax.tree_util.tree_map(ck.to_host, state["params"])  # (M, ...) leaves
        for i, n in enumerate(names):
            if books[n].stopped:
                continue
            recs = _records(epoch, step0, stats, float(val_nll[i]), float(lr[i]), i, seconds)
            improved = books[n].update(epoch, val_nll[i], tcfg.patience)
            if primary:
                logs[n].append(recs)
            if primary and improved:
                flat = flatten_params(jax.tree_util.tree_map(lambda a, i=i: a[i], params))
                ck.save_tensors(
                    run_dir / "members" / n / "best.safetensors",
                    flat,
                    {"member": n, "epoch": epoch, "val_nll": books[n].best_nll},
                )
        _kill_point("best", epoch)
        if primary:
            ck.save_state(
                last,
                state,
                {
                    "epoch": epoch + 1,
                    "books": {n: vars(b) for n, b in books.items()},
                    "metrics_size": {n: logs[n].size() for n in names},
                },
            )
        _kill_point("last", epoch)
        best = min(names, key=lambda n: books[n].best_nll)  # the line follows the best member
        i = names.index(best)
        log(
            f"fit: epoch {epoch + 1}/{tcfg.epochs} train loss "
            f"{np.average(stats['loss'][:, i], weights=stats['count']):.4f} val nll "
            f"{val_nll[i]:.4f} (best: {best} {books[best].best_nll:.4f} at epoch "
            f"{books[best].best_epoch + 1}) {data.rows_per_epoch / seconds:,.0f} rows/s "
            f"{seconds:.1f}s"
        )
    return books
