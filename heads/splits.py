"""Splits by run: every state of a run lands in the same split, deterministically.

Three ways, in order of precedence:

1. SQL predicates over the cache's ``runs`` table (``train_where`` / ``val_where`` /
   ``test_where``): a run a predicate selects goes to that split (a run selected by two is an
   error). Runs no predicate selects are hashed over the splits that have no predicate, with
   their fractions renormalised; if all three have predicates, they are left out (code 3).
2. ``val_run_pct``: that percentage of runs (by hash) is validation, the rest train, no test.
3. Default: a seeded hash of the run id, ``train / val / test`` fractions (90/5/5).

The hash is splitmix64 of ``run_id`` mixed with the seed, mapped to [0, 1): a run's split
depends only on its id and the seed, never on which other runs exist, so adding runs to a
dataset does not move old ones. The test split is never used for fitting or model selection.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from vh.config import SplitConfig
from vh.errors import VhError
from vh.transforms import splitmix64

TRAIN, VAL, TEST, UNUSED = 0, 1, 2, 3
NAMES = ("train", "val", "test")


def run_uniform(run_id: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per run, a pure function of (run id, seed)."""
    salt = splitmix64(np.array([seed], np.int64).view(np.uint64))[0]
    h = splitmix64(np.asarray(run_id, np.int64).view(np.uint64) ^ salt)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _by_fractions(u: np.ndarray, fractions: dict[int, float]) -> np.ndarray:
    """Assign codes by cumulative fractions (renormalised to sum 1)."""
    codes = np.array(sorted(fractions), np.uint8)
    w = np.array([fractions[c] for c in codes], np.float64)
    cum = np.cumsum(w / w.sum())
    return codes[np.minimum(np.searchsorted(cum, u, side="right"), len(codes) - 1)]


def _selected(db: sqlite3.Connection, where: str, key: str, ids: np.ndarray) -> np.ndarray:
    try:
        sel = np.array([r[0] for r in db.execute(f"SELECT id FROM runs WHERE {where}")], np.int64)
    except sqlite3.Error as e:
        raise VhError(f"bad SQL predicate {where!r}: {e}", field=key) from None
    return np.isin(ids, sel)


def _check_fractions(cfg: SplitConfig) -> None:
    f = (cfg.train, cfg.val, cfg.test)
    if min(f) < 0 or abs(sum(f) - 1.0) > 1e-9:
        raise VhError(
            f"train/val/test fractions must be >= 0 and sum to 1, got {list(f)}",
            field="fit.split.train",
        )
    if cfg.val_run_pct is not None and not 0 < cfg.val_run_pct < 100:
        raise VhError(
            f"expected a percentage in (0, 100), got {cfg.val_run_pct}",
            field="fit.split.val_run_pct",
        )


def split_runs(
    run_ids: np.ndarray, cfg: SplitConfig, db: sqlite3.Connection | None = None
) -> np.ndarray:
    """The split of every run.

    Args:
        run_ids: int [R] run ids.
        cfg: the split section of the config.
        db: a connection with a ``runs`` table (needed when a predicate is set).

    Returns:
        u1 [R]: 0 train, 1 val, 2 test, 3 unused (only when all three predicates are set).
    """
    _check_fractions(cfg)
    ids = np.asarray(run_ids, np.int64)
    u = run_uniform(ids, cfg.seed)
    wheres = {TRAIN: cfg.train_where, VAL: cfg.val_where, TEST: cfg.test_where}
    wheres = {c: w for c, w in wheres.items() if w.strip()}
    if not wheres:
        if cfg.val_run_pct is not None:
            return np.where(u < cfg.val_run_pct / 100.0, VAL, TRAIN).astype(np.uint8)
        return _by_fractions(u, {TRAIN: cfg.train, VAL: cfg.val, TEST: cfg.test})
    if db is None:
        raise VhError("SQL split predicates need the cache's runs table", field="fit.split")
    out = np.full(len(ids), UNUSED, np.uint8)
    taken = np.zeros(len(ids), bool)
    for code, where in wheres.items():
        key = f"fit.split.{NAMES[code]}_where"
        sel = _selected(db, where, key, ids)
        if np.any(sel & taken):
            clash = int(ids[np.argmax(sel & taken)])
            raise VhError(f"run {clash} is selected by two split predicates", field=key)
        out[sel], taken = code, taken | sel
    rest = {
        c: f
        for c, f in zip((TRAIN, VAL, TEST), (cfg.train, cfg.val, cfg.test), strict=True)
        if c not in wheres and f > 0
    }
    if rest:
        out[~taken] = _by_fractions(u[~taken], rest)
    return out


def check_nonempty(split: np.ndarray, run_ids: np.ndarray, cfg: SplitConfig) -> None:
    """Refuse a split without train or val runs (and without test runs when one is expected)."""
    need = [TRAIN, VAL] + (
        [TEST] if cfg.val_run_pct is None and (cfg.test > 0 or cfg.test_where) else []
    )
    for code in need:
        if not np.any(split == code):
            counts = ", ".join(f"{n} {int(np.sum(split == c))}" for c, n in enumerate(NAMES))
            raise VhError(
                f"split '{NAMES[code]}' has no runs: {len(run_ids)} runs ({counts}); "
                "use more runs or change the fractions/predicates",
                field="fit.split",
            )
