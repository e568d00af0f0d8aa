"""What a trained trunk saw: the ``vh_trunk_train`` block of its config.json, and the check
that a head's test runs were not among them.

``vh trunk train`` (:mod:`vh.extract.trunk_train`) writes the block; :func:`trunk_training_runs`
reads it back from an init dir (or from a trunk config dict, e.g. the one a cache's
fingerprint carries), and :func:`seen_test_runs` counts the test runs of a head that the trunk
was trained on, so ``vh eval`` can warn that its test figures are optimistic.

Which runs the trunk trained on is recorded as a rule, not a list: the hash split of
:func:`vh.heads.splits.split_runs` (its seed and fractions; a run's split is a pure function
of its id and the seed) and the run ids of the trunk's dataset as ``[first, last]`` ranges
(one range for a synth dataset). A run id was trained on iff it lies in those ranges and
the split puts it in ``train``. The count and a sha256 of the sorted train ids are recorded
too, so a reader can check that the rule reproduces them (:func:`train_run_ids`).

This module imports numpy only (no torch, no JAX): ``eval`` may import it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from vh.config import SplitConfig
from vh.errors import VhError
from vh.heads.splits import TRAIN, split_runs

RECORD_KEY = "vh_trunk_train"
SPLIT_KEYS = ("seed", "train", "val", "test", "val_run_pct")


def id_ranges(ids: np.ndarray) -> list[list[int]]:
    """Sorted unique ``ids`` as inclusive ``[first, last]`` ranges of consecutive integers."""
    u = np.unique(np.asarray(ids, np.int64))
    if not u.size:
        return []
    breaks = np.flatnonzero(np.diff(u) != 1)  # last index of each range but the final one
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [u.size - 1]])
    return [[int(u[a]), int(u[b])] for a, b in zip(starts, ends, strict=True)]


def in_ranges(ids: np.ndarray, ranges: list[list[int]]) -> np.ndarray:
    """bool ``(K,)``: whether each id lies in one of the inclusive ``ranges`` (sorted)."""
    ids = np.asarray(ids, np.int64)
    if not ranges:
        return np.zeros(ids.shape, bool)
    r = np.asarray(ranges, np.int64).reshape(-1, 2)
    k = np.searchsorted(r[:, 0], ids, side="right") - 1  # the last range starting at or below
    return (k >= 0) & (ids <= r[np.maximum(k, 0), 1])


def ids_sha256(ids: np.ndarray) -> str:
    """sha256 of the sorted unique ids as little-endian int64 bytes."""
    return hashlib.sha256(np.unique(np.asarray(ids, np.int64)).astype("<i8").tobytes()).hexdigest()


def split_record(cfg: SplitConfig) -> dict:
    """The hash split's settings as JSON (predicates are refused before this is called)."""
    return {k: getattr(cfg, k) for k in SPLIT_KEYS}


def split_config(record: dict) -> SplitConfig:
    """The :class:`SplitConfig` a ``vh_trunk_train`` block recorded."""
    try:
        return SplitConfig(**{k: record["split"][k] for k in SPLIT_KEYS})
    except (KeyError, TypeError) as e:
        raise VhError(f"malformed split record ({e})", field=f"{RECORD_KEY}.split") from None


def train_run_ids(record: dict) -> np.ndarray:
    """The run ids the trunk trained on, rebuilt from the record's rule (int64, sorted).

    Raises:
        VhError: the rule does not reproduce the recorded count and hash.
    """
    ranges = record.get("dataset_runs") or []
    ids = np.concatenate(
        [np.arange(a, b + 1, dtype=np.int64) for a, b in ranges] or [np.zeros(0, np.int64)]
    )
    train = ids[split_runs(ids, split_config(record)) == TRAIN]
    want = record.get("train_runs", {})
    if len(train) != want.get("count") or ids_sha256(train) != want.get("sha256"):
        raise VhError(
            "the recorded split does not reproduce the recorded train runs",
            field=f"{RECORD_KEY}.train_runs",
        )
    return train


def trunk_training_runs(init: str | os.PathLike | dict) -> dict | None:
    """The ``vh_trunk_train`` block of a trunk, or None for a trunk vh did not train.

    Args:
        init: an init dir, its config.json, or a trunk config dict (a cache fingerprint's).

    Returns:
        The block: ``split`` (seed, fractions), ``dataset_runs`` (id ranges), ``train_runs``
        (count, sha256), ``seed``, ``epochs``, accuracies; None without one.
    """
    if isinstance(init, dict):
        raw = init
    else:
        from vh import durable

        path = Path(init)
        raw = durable.read_json(path / "config.json" if path.is_dir() else path, "config.json")
    block = raw.get(RECORD_KEY)
    if block is None:
        return None
    if not isinstance(block, dict) or "split" not in block or "dataset_runs" not in block:
        raise VhError("malformed trunk training record", field=RECORD_KEY)
    return block


def seen_test_runs(trunk_record: dict | None, test_run_ids: np.ndarray) -> int:
    """How many of ``test_run_ids`` the trunk was trained on (0 without a record).

    A run counts when its id lies in the trunk's dataset (``dataset_runs``) and the trunk's
    split put it in ``train``. This assumes the head's runs come from the same dataset as the
    trunk's (ids of another dataset that happen to coincide count too: a conservative warning).
    """
    if trunk_record is None:
        return 0
    ids = np.unique(np.asarray(test_run_ids, np.int64))
    known = in_ranges(ids, trunk_record.get("dataset_runs") or [])
    trained = split_runs(ids, split_config(trunk_record)) == TRAIN
    return int(np.sum(known & trained))
