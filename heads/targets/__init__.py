"""Targets: what a head predicts, built from the cache's columns, one module per kind.

The registry maps a kind's name to its :class:`~vh.heads.targets.base.TargetKind`, which owns
everything about the kind: its spec and checks, its train and eval labels, its loss and output
link, how its predictions are scored, its family and win criteria, and its export objective.
``vh.config`` (``fit.target.kind``), ``vh fit --head``, ``vh.heads``, ``vh.eval`` and
``vh export`` ask the registry; none of them names a kind.

Kinds (one module each):

- ``ordinal`` (:mod:`.ordinal`): K milestones, ``y_k = [highest_tile of the state's run >=
  T_k]``; a head outputs K logits, ``q_k = sigmoid(logit_k) = P(highest_tile >= T_k)``.
- ``tiles`` (:mod:`.tiles`, ``--head categorical``): the number of thresholds reached, a class
  in ``0..K`` (K+1 logits, softmax).
- ``logscore`` (:mod:`.logscore`): ``log1p(final_score)`` of the run, over ``n_bins`` bins.
- ``return`` (:mod:`.returns`): the state's discounted return through the MuZero transform
  ``h``, over ``return_bins`` bins, or a scalar regressed with MSE.

Adding a kind = one module that subclasses ``TargetKind`` and calls :func:`register` (the
test suite registers a toy kind so). What the kinds share (the spec, the binned encoding and
its outside rule, labels from thresholds) is in :mod:`.base`.

Axis legend: n rows (states), K thresholds, C bins or classes.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

import numpy as np

from vh.errors import VhError
from vh.heads.targets.base import (
    THRESHOLD_POOL,
    Pool,
    TargetKind,
    TargetSpec,
    check_runs,
    check_thresholds,
    count_outside,
    reached,
    refuse_where,
    run_index,
    soft_labels,
    tile_bucket,
)
from vh.transforms import MUZERO_EPS, muzero_h, muzero_h_inv

if TYPE_CHECKING:
    from vh.config import TargetConfig

_KINDS: dict[str, TargetKind] = {}


# --------------------------------------------------------------------------- the registry


def register(kind: TargetKind) -> TargetKind:
    """Add a kind (its ``name`` and ``aliases`` become valid); returns it.

    Registering a kind under a name already taken by another kind's class is refused, so two
    modules cannot silently shadow each other; registering the same class again replaces it
    (a module reloaded).
    """
    for name in (kind.name, *kind.aliases):
        old = _KINDS.get(name) or next((k for k in _KINDS.values() if name in k.aliases), None)
        if old is not None and type(old).__qualname__ != type(kind).__qualname__:
            raise ValueError(f"target kind name {name!r} is taken by {type(old).__qualname__}")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind registered by :func:`register` (a plugin's or a test's); no-op if absent."""
    _KINDS.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered kinds, in registration order (the built-in four first)."""
    return tuple(_KINDS)


def cli_names() -> dict[str, str]:
    """``vh fit --head`` names (each kind's name and aliases) -> the kind's name."""
    out = {k.name: k.name for k in _KINDS.values()}
    out |= {a: k.name for k in _KINDS.values() for a in k.aliases}
    return out


def get(name: str, *, field: str = "fit.target.kind") -> TargetKind:
    """The kind called ``name``; VhError listing the valid names otherwise."""
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise VhError(
            f"unknown target kind {name!r} (valid: {', '.join(_KINDS)})", field=field
        ) from None


def pools() -> tuple[Pool, ...]:
    """The pools of the registered kinds, in registration order (threshold heads first)."""
    return tuple({k.pool.name: k.pool for k in _KINDS.values()}.values())


def pool(name: str) -> Pool:
    """The pool called ``name``."""
    for p in pools():
        if p.name == name:
            return p
    raise VhError(f"unknown pool {name!r} (valid: {', '.join(p.name for p in pools())})")


# --------------------------------------------------------------------------- by the spec's kind


def make_spec(
    cfg: TargetConfig, *, monotone: bool = False, train_values: np.ndarray | None = None
) -> TargetSpec:
    """Resolve a :class:`TargetSpec` from the config (and the train split, for bin ranges).

    Args:
        cfg: the target section of the config.
        monotone: the head's monotone flag (ordinal only).
        train_values: target values of the train rows in the target's units (log1p score or
            h(return)); needed for binned kinds when ``cfg.bin_range`` is empty.

    Returns:
        The spec.
    """
    check_thresholds(cfg.thresholds)
    kind = get(cfg.kind)
    if monotone and not kind.monotone_ok:
        monotone_kinds = ", ".join(k.name for k in _KINDS.values() if k.monotone_ok)
        raise VhError(
            f"monotone heads exist for {monotone_kinds} targets only", field="fit.head.monotone"
        )
    return kind.make_spec(cfg, monotone=monotone, train_values=train_values)


def check_label_sources(cache, kind: str) -> None:
    """Refuse a cache whose label or sampling sources hold impossible values.

    Cheap enough to run before a fit creates anything (the runs table, the ``step_fraction``
    column the sampler stages by, and the kind's own columns, e.g. ``return``), so a refused
    fit leaves nothing behind.

    Args:
        cache: a cache path or an open reader.
        kind: the target kind.
    """
    if isinstance(cache, str | os.PathLike):
        from vh.cache.reader import open_cache

        cache = open_cache(cache)
    check_runs(cache)
    if cache.has_column("step_fraction"):
        frac = np.asarray(cache.column("step_fraction"))
        bad = ~((frac >= 0) & (frac <= 1))  # NaN compares False: caught too
        refuse_where(bad, frac, cache, "columns/step_fraction", "is not in [0, 1]")
    get(kind).check_sources(cache)


def target_values(kind: str, reader, rows: np.ndarray) -> dict:
    """Raw per-row label sources for ``rows`` of the cache (fit's and eval's one reader).

    Args:
        kind: the target kind (decides which further columns are read).
        reader: an open cache.
        rows: int row indices.

    Returns:
        ``highest_tile`` i64[n] and ``final_score`` f64[n] of each row's run, plus the kind's
        own: ``value`` f64[n] (the target in its own units: log1p score, h(return)) and, for
        ``return``, ``ret`` (the raw discounted return).
    """
    rows = np.asarray(rows, dtype=np.int64)
    run = run_index(reader, np.asarray(reader.column("run_id"))[rows])
    check_runs(reader)
    out = {
        "highest_tile": np.asarray(reader.runs["highest_tile"], np.int64)[run],
        "final_score": np.asarray(reader.runs["final_score"], np.float64)[run],
    }
    get(kind).add_values(reader, rows, out)
    return out


def train_targets(spec: TargetSpec, values: dict) -> np.ndarray:
    """The compact label a train step consumes (binned kinds: encoded inside the step).

    Returns:
        ordinal u1[n, K]; tiles i32[n]; binned and scalar kinds f32[n] (value, unclipped:
        the loss applies the outside rule).
    """
    return get(spec.kind).train_labels(spec, values)


def check_train(spec: TargetSpec, values: dict) -> None:
    """Refuse a target the train split cannot teach (a threshold no train run reaches)."""
    get(spec.kind).check_train(spec, values)


def positive_rate(spec: TargetSpec, y: np.ndarray) -> np.ndarray | None:
    """Train positive rates for class balancing (None for kinds without)."""
    return get(spec.kind).positive_rate(y)


def link(spec: TargetSpec):
    """The jax function from logits [n, n_out] to what ``predict`` returns for this target."""
    return get(spec.kind).link(spec)


# The built-in kinds register themselves on import, once the registry above exists; in this
# order, which is the order of the verdict's pools and of the names listed in messages.
for _module in ("ordinal", "tiles", "logscore", "returns"):
    importlib.import_module(f"{__name__}.{_module}")

KINDS = names()  # the built-in kinds (a snapshot: call names() for kinds registered later)

__all__ = [
    "KINDS",
    "MUZERO_EPS",
    "THRESHOLD_POOL",
    "Pool",
    "TargetKind",
    "TargetSpec",
    "check_label_sources",
    "check_runs",
    "check_train",
    "cli_names",
    "count_outside",
    "get",
    "link",
    "make_spec",
    "muzero_h",
    "muzero_h_inv",
    "names",
    "pool",
    "pools",
    "positive_rate",
    "reached",
    "register",
    "run_index",
    "soft_labels",
    "target_values",
    "tile_bucket",
    "train_targets",
    "unregister",
]
