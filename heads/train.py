"""The train engine: a pure jitted step, whole epochs in ``lax.scan``, a vmapped grid, the loop.

State (a pytree; every leaf but ``step`` is stacked over the M grid members):
``params`` (Flax params), ``opt`` (Adam moments), ``lr`` [M], ``wd`` [M], ``step`` (int32,
shared). The optimiser is AdamW written out (``scale_by_adam``, then ``u + wd·p``, then
``-lr·f(step)·u``, which is what ``optax.adamw`` computes) so that learning rate and weight
decay are per-member arrays the grid vmaps over.

The data the step eats (on the device or streamed, the batch plan, the mesh) is
:mod:`vh.heads.data`; the files the loop writes are :mod:`vh.heads.rundir`'s.

The step is jitted once per fit (``TRACES`` counts traces). There is no compilation cache
across fits: one keyed on the head and objective never hit, because the objective's loss
functions are closures built anew by every fit (measured: two fits of one config in one
process traced the step twice).

Axis legend: M grid members, S steps per epoch, B batch rows, D embedding width.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from vh import durable
from vh.config import TrainConfig
from vh.errors import VhError
from vh.heads import checkpoint as ck
from vh.heads import rundir

# the data side, importable from here as before (tests, benchmarks)
from vh.heads.data import (  # noqa: F401
    Batching,
    DeviceData,
    batch_layout,
    device_bytes,
    init_distributed,
    make_mesh,
    put,
    replicate,
)
from vh.heads.losses import Objective
from vh.heads.modules import flatten_params
from vh.heads.sampler import epoch_order  # noqa: F401
from vh.heads.stream import StreamData  # noqa: F401
from vh.progress import Progress

TRACES: Counter = Counter()  # how often each jitted function was traced (tests assert 1)
GRID_KEYS = ("lr", "wd", "seed")

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

    @jax.jit  # one compilation instead of one per eager op
    def init(keys):
        x0 = jnp.zeros((1, d), jnp.float32)
        params = jax.vmap(lambda k: model.init(k, x0)["params"])(keys)
        return params, jax.vmap(_ADAM.init)(params)

    params, opt = init(member_keys(members)[0])
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


def _nonfinite(x: float) -> str:
    return "NaN" if np.isnan(x) else "inf" if x > 0 else "-inf"


def _check_finite(
    stats: dict, val_nll: np.ndarray, epoch: int, step0: int, names, run_dir=None
) -> None:
    """Stop on a non-finite train loss, train NLL or validation NLL, naming which.

    A NaN must never reach the books: ``nan < best`` is False, so a NaN epoch would pass
    silently and a run could end with a meaningless best checkpoint.
    """
    steps = f"steps {step0}–{step0 + len(stats['loss']) - 1} (epoch {epoch})"
    for key, what in (("loss", "training loss"), ("nll", "training NLL")):
        x = np.asarray(stats[key])  # (S, M)
        if not np.all(np.isfinite(x)):
            s, m = np.argwhere(~np.isfinite(x))[0]
            raise VhError(
                f"fit: non-finite {what} at step {step0 + s} of {steps}: "
                f"{_nonfinite(x[s, m])}, member {names[m]}; the run stopped, best "
                "checkpoints so far are kept: lower the learning rate or check the embeddings",
                path=run_dir,
                field=what,
                code=3,
            )
    v = np.asarray(val_nll)
    if not np.all(np.isfinite(v)):
        m = int(np.argmax(~np.isfinite(v)))
        raise VhError(
            f"fit: validation NLL is {_nonfinite(v[m])} at epoch {epoch} (after {steps}), "
            f"member {names[m]}; the run stopped, best checkpoints so far are kept",
            path=run_dir,
            field="validation NLL",
            code=3,
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


def _start(run_dir: Path, model, members: Sequence[Member], d: int, resume: bool):
    """Fresh state and books, or those of the last finished epoch; metrics cut to match.

    Returns:
        (state, books, first epoch to run, metrics logs).
    """
    names = [m.name for m in members]
    primary = jax.process_index() == 0  # the others never touch the run dir (it makes folders)
    logs = {n: rundir.metrics_log(run_dir, n) for n in names} if primary else {}
    state, books, start = init_state(model, members, d), {n: Book() for n in names}, 0
    last = rundir.state_path(run_dir)
    sizes = dict.fromkeys(names, 0)
    if resume and last.exists():
        state, meta = ck.load_state(last, state)
        books = {n: Book(**meta["books"][n]) for n in names}
        start, sizes = meta["epoch"], meta["metrics_size"]
    if primary:
        for n in names:  # drop lines of an epoch that was not finished
            logs[n].truncate(sizes[n])
    return state, books, start, logs


def _keep_epoch(run_dir: Path, epoch: int, ep: dict, books: dict, logs: dict, patience: int):
    """Update each member's books; write its metrics lines and, if better, its checkpoint.

    ``ep``: ``step0``, ``stats`` (host, [S, M]), ``val_nll`` [M], ``lr`` [M], ``seconds``,
    ``params`` (host leaves [M, ...]). A member that stopped early is skipped.
    """
    primary = jax.process_index() == 0
    for i, n in enumerate(books):
        if books[n].stopped:
            continue
        recs = _records(
            epoch, ep["step0"], ep["stats"], float(ep["val_nll"][i]), float(ep["lr"][i]), i,
            ep["seconds"],
        )  # fmt: skip
        improved = books[n].update(epoch, ep["val_nll"][i], patience)
        if primary:
            logs[n].append(recs)
        if primary and improved:
            flat = flatten_params(jax.tree_util.tree_map(lambda a, i=i: a[i], ep["params"]))
            meta = {"member": n, "epoch": epoch, "val_nll": books[n].best_nll}
            rundir.write_best(run_dir, n, flat, meta)


def _epoch_line(epoch: int, epochs: int, ep: dict, books: dict, rows: int) -> str:
    """The progress line of an epoch; it follows the best member."""
    names = list(books)
    best = min(names, key=lambda n: books[n].best_nll)
    i, stats, s = names.index(best), ep["stats"], ep["seconds"]
    return (
        f"fit: epoch {epoch + 1}/{epochs} train loss "
        f"{np.average(stats['loss'][:, i], weights=stats['count']):.4f} val nll "
        f"{ep['val_nll'][i]:.4f} (best: {best} {books[best].best_nll:.4f} at epoch "
        f"{books[best].best_epoch + 1}) {rows / s:,.0f} rows/s {s:.1f}s"
    )


PROGRESS_EVERY = 3.0  # seconds between progress lines inside an epoch or a validation


def _progress(label: str, rows: int, log, primary: bool) -> Progress:
    """Rows/s and ETA inside a long epoch or validation: the first line after
    ``PROGRESS_EVERY`` seconds (a short one prints nothing), then one every as many; only
    the primary process prints."""
    return Progress(
        rows, label, every=PROGRESS_EVERY, delay=PROGRESS_EVERY, log=log if primary else None
    )


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
    the stack (it shares the batches) but its later epochs are ignored. Crash tests kill the
    process at ``fit:trained``, ``fit:best`` and ``fit:last`` (``VH_FAILPOINT=fit:best:2``:
    after the second epoch's checkpoints; see :func:`vh.durable.kill_point`).

    Args:
        run_dir: the run dir (``members/`` and ``last/`` are written here).
        model, objective: the head and its losses.
        members: the grid.
        tcfg: train options (epochs, patience, schedule).
        data: :class:`~vh.heads.data.DeviceData` or :class:`~vh.heads.data.StreamData`.
        d: embedding width.
        mesh: the device mesh.
        resume: continue from ``last/`` when it exists.
        log: called with one progress line per epoch, and inside a long epoch or validation
            with rows/s and ETA every few seconds (:func:`_progress`).

    Returns:
        The final :class:`Book` of each member.
    """
    run_dir = Path(run_dir)
    primary = jax.process_index() == 0  # multi-host: one process writes
    factor = lr_factor(tcfg, tcfg.epochs * data.steps_per_epoch)
    factor_at = jax.jit(factor)  # for the metrics lines
    data.bind(make_step(model, objective, factor), make_eval(model, objective))
    keys = replicate(member_keys(members)[1], mesh)
    state, books, start, logs = _start(run_dir, model, members, d, resume)
    state = replicate(state, mesh)
    names = list(books)

    for epoch in range(start, tcfg.epochs):
        if all(b.stopped for b in books.values()):
            break
        t0 = time.perf_counter()
        step0 = int(ck.to_host(state["step"]))
        bar = _progress(f"fit: epoch {epoch + 1}/{tcfg.epochs}", data.rows_per_epoch, log, primary)
        state, stats = data.train_epoch(state, keys, epoch, progress=bar)
        durable.kill_point("fit:trained")
        bar = _progress("fit: validation", data.n_val, log, primary)
        val_nll = data.val_sums(state["params"], progress=bar) / max(data.n_val, 1)
        stats = jax.tree_util.tree_map(ck.to_host, stats)
        _check_finite(stats, val_nll, epoch, step0, names, run_dir)
        ep = {
            "step0": step0,
            "stats": stats,
            "val_nll": val_nll,
            "seconds": time.perf_counter() - t0,
            "lr": ck.to_host(state["lr"]) * float(factor_at(step0 + len(stats["count"]) - 1)),
            "params": jax.tree_util.tree_map(ck.to_host, state["params"]),  # (M, ...) leaves
        }
        _keep_epoch(run_dir, epoch, ep, books, logs, tcfg.patience)
        durable.kill_point("fit:best")
        if primary:
            meta = {
                "epoch": epoch + 1,
                "books": {n: vars(b) for n, b in books.items()},
                "metrics_size": {n: logs[n].size() for n in names},
            }
            ck.save_state(rundir.state_path(run_dir), state, meta)
        durable.kill_point("fit:last")
        log(_epoch_line(epoch, tcfg.epochs, ep, books, data.rows_per_epoch))
    return books
