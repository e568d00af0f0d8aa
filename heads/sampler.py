"""Which rows of each split a fit uses, and in which order an epoch visits them.

Sampler kinds (``fit.sampler.kind``):

- ``all``: every row of the split's runs inside ``[step_index_min, step_index_max]``.
- ``stratified``: the quantile-stratified value sampler. A run contributes at most
  ``cap_per_run`` states. Its states are grouped into stages by ``step_fraction`` (boundaries
  ``stages``, e.g. [0, .25, .75, 1]); stage s gets ``round(n_take · w_s / Σw)`` states
  (``n_take = min(cap, states of the run)``), at most what the stage holds. Inside a stage,
  the m states (in step order) are cut into q evenly spaced integer cells
  ``[⌊j·m/q⌋, ⌊(j+1)·m/q⌋)``, and pick j is drawn uniformly inside cell j (the jitter) by a
  generator seeded with ``(fit.sampler.seed, split)``: a subset is reproducible from the
  seed, and never repeats a state.

The same rule applies to train, val and test, so all three are samples of one distribution.
An epoch visits ``states_per_epoch`` train rows (0 = all of them once) in an order drawn from
``(fit.train.seed, epoch)`` alone, so a resumed run sees the same order.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from vh.config import SamplerConfig, SplitConfig
from vh.errors import VhError
from vh.heads.splits import NAMES


def _check(cfg: SamplerConfig) -> None:
    st, w = np.asarray(cfg.stages, float), np.asarray(cfg.stage_weights, float)
    if len(st) < 2 or st[0] != 0.0 or st[-1] != 1.0 or np.any(np.diff(st) <= 0):
        raise VhError(
            f"stage boundaries must rise from 0 to 1, got {list(cfg.stages)}",
            field="fit.sampler.stages",
        )
    if len(w) != len(st) - 1 or np.any(w < 0) or w.sum() <= 0:
        raise VhError(
            f"need {len(st) - 1} non-negative stage weights, got {list(w)}",
            field="fit.sampler.stage_weights",
        )
    if cfg.kind == "stratified" and cfg.cap_per_run < 1:
        raise VhError("cap_per_run must be >= 1", field="fit.sampler.cap_per_run")


def _check_columns(columns: dict) -> None:
    """Refuse impossible sampling columns: a NaN step fraction would land in the last stage
    silently, a negative step index pass any lower bound."""
    frac = np.asarray(columns["step_fraction"])
    bad = ~((frac >= 0) & (frac <= 1))  # NaN compares False: caught here
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise VhError(
            f"row {i}: {frac[i]} is not a step fraction in [0, 1]", field="columns/step_fraction"
        )
    step = np.asarray(columns["step_index"])
    if step.size and step.min() < 0:
        i = int(np.argmin(step))
        raise VhError(f"row {i}: negative step index {step[i]}", field="columns/step_index")


def stage_of(step_fraction: np.ndarray, stages: tuple[float, ...]) -> np.ndarray:
    """Stage index (u1) of each row: ``stages[s] <= f < stages[s+1]``, the last one closed."""
    return np.searchsorted(np.asarray(stages[1:-1]), step_fraction, side="right").astype(np.uint8)


def _group_bounds(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and sizes of the runs of equal values in a sorted key."""
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return starts, np.diff(np.r_[starts, len(key)])


def _stratified(
    rows: np.ndarray,
    run_id: np.ndarray,
    step_index: np.ndarray,
    stage: np.ndarray,
    cfg: SamplerConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    _, run = np.unique(run_id, return_inverse=True)
    n_stages = len(cfg.stages) - 1
    order = np.lexsort((step_index, stage, run))  # group by (run, stage), steps in order
    key = run[order].astype(np.int64) * n_stages + stage[order]
    starts, m = _group_bounds(key)
    g_run, g_stage = key[starts] // n_stages, key[starts] % n_stages
    n_take = np.minimum(np.bincount(run, minlength=int(run.max()) + 1), cfg.cap_per_run)
    w = np.asarray(cfg.stage_weights, float)
    q = np.minimum(m, np.floor(n_take[g_run] * w[g_stage] / w.sum() + 0.5)).astype(np.int64)
    g = np.repeat(np.arange(len(q)), q)  # the group of every pick
    j = np.arange(len(g)) - np.repeat(np.cumsum(q) - q, q)  # pick index inside its group
    lo = j * m[g] // q[g]  # integer cells [lo, hi), at least one state wide since q <= m
    hi = (j + 1) * m[g] // q[g]
    pos = lo + np.floor(rng.random(len(g)) * (hi - lo)).astype(np.int64)
    return np.sort(rows[order[starts[g] + np.minimum(pos, m[g] - 1)]])


def sample_rows(columns: dict, row_split: np.ndarray, cfg: SamplerConfig) -> dict:
    """Rows of the cache each split uses.

    Args:
        columns: cache columns ``run_id``, ``step_index``, ``step_fraction`` [N].
        row_split: u1 [N] split code of each row (its run's split).
        cfg: the sampler section.

    Returns:
        ``{"train": rows, "val": rows, "test": rows}``, sorted int64 row indices.
    """
    _check(cfg)
    _check_columns(columns)
    step = np.asarray(columns["step_index"])
    keep = step >= cfg.step_index_min
    if cfg.step_index_max >= 0:
        keep &= step <= cfg.step_index_max
    out = {}
    for code, name in enumerate(NAMES):
        rows = np.flatnonzero(keep & (row_split == code)).astype(np.int64)
        if cfg.kind == "stratified" and len(rows):
            rng = np.random.default_rng([cfg.seed, code])
            stage = stage_of(np.asarray(columns["step_fraction"])[rows], cfg.stages)
            rows = _stratified(
                rows, np.asarray(columns["run_id"])[rows], step[rows], stage, cfg, rng
            )
        out[name] = rows
    return out


def epoch_order(n: int, epoch: int, seed: int, states_per_epoch: int = 0) -> np.ndarray:
    """Positions (into the train rows) an epoch visits, in order.

    Args:
        n: number of train rows.
        epoch: epoch number (0-based); with ``seed`` it alone fixes the order.
        seed: the data-order seed (``fit.train.seed``).
        states_per_epoch: rows per epoch (0 = n); more than n wraps through fresh permutations.

    Returns:
        int64 positions [states_per_epoch or n].
    """
    rng = np.random.default_rng([seed, epoch])
    want = states_per_epoch or n
    perms = [rng.permutation(n) for _ in range(-(-want // n))]
    return np.concatenate(perms)[:want].astype(np.int64)


def manifest_csv(
    rows: dict,
    columns: dict,
    split_cfg: SplitConfig,
    cfg: SamplerConfig,
    outside: dict | None = None,
) -> str:
    """The human-readable ``sampling_manifest.csv``: one line per split.

    Columns: split, runs, rows, rows per stage, sampler settings, seeds, predicate, and the
    number of labels the outside-bins rule clipped.
    """
    stages = [f"rows_stage_{a:g}-{b:g}" for a, b in zip(cfg.stages, cfg.stages[1:], strict=False)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "split",
            "runs",
            "rows",
            *stages,
            "sampler",
            "cap_per_run",
            "step_index_min",
            "step_index_max",
            "split_seed",
            "sampler_seed",
            "predicate",
            "outside_bins",
        ]
    )
    for name in NAMES:
        r = rows[name]
        per_stage = np.bincount(
            stage_of(np.asarray(columns["step_fraction"])[r], cfg.stages), minlength=len(stages)
        )
        w.writerow(
            [
                name,
                len(np.unique(np.asarray(columns["run_id"])[r])),
                len(r),
                *per_stage.tolist(),
                cfg.kind,
                cfg.cap_per_run,
                cfg.step_index_min,
                cfg.step_index_max,
                split_cfg.seed,
                cfg.seed,
                getattr(split_cfg, f"{name}_where"),
                (outside or {}).get(name, 0),
            ]
        )
    return buf.getvalue()
