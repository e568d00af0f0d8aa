"""Phase 3 driver: predict every run's best head on the common test states, then report.

``evaluate(run_dirs, out, cfg)`` reads each run dir (``vh.heads.api.load_run`` and
:mod:`vh.heads.rundir`), opens the cache
its ``config.json`` records (refusing one whose fingerprint changed), and predicts on the test
rows its ``sampling.npz`` lists. Heads are compared head to head on the same states: the test
states common to every run, matched on ``(run_id, step_index)`` so that runs fitted on
different caches of one dataset (the raw-board baseline's one-hot cache, a trunk cache) line
up. When the runs' test sets differ (another split seed or sampler) the comparison uses their
intersection and the report says so; runs fitted on different datasets (another
``fingerprint.inputs``) or sharing no test state are refused.

Then it writes ``OUT/predictions/<name>.npz`` (its meta carries ``trunk_seen``: how many of
the run's test runs its trunk was trained on, from the ``vh_trunk_train`` record in the
cache's fingerprint), copies the run files the report cites into ``OUT/runs/<name>/``, the
play results (``--play`` or found beside the run dirs, :mod:`vh.eval.play`) into
``OUT/play/`` and ``OUT/eval.json``, and calls :func:`vh.eval.report.build_report`,
which needs only those files.

Axes: n = test states, m = validation states, K = thresholds, C = bins, D = embedding width.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vh import __version__, durable
from vh.config import EvalConfig, to_dict
from vh.errors import VhError
from vh.eval import metrics as M
from vh.eval.inputs import trunk_record_of, trunk_seen
from vh.eval.labels import tile_bucket

# planted data moved to .planted (the scoring benchmark to vh.bench.eval); importable as before
from vh.eval.planted import PLANTED_THRESHOLDS, planted  # noqa: F401
from vh.eval.play import collect as collect_play
from vh.eval.play import copy_into as copy_play
from vh.eval.predictions import Predictions, save_predictions
from vh.eval.report import build_report
from vh.heads import rundir
from vh.progress import Progress, say

KEY = np.dtype([("run", "<i8"), ("step", "<i8")])
TEST = rundir.SPLIT_NAMES.index("test")  # split.npz's code of a test run


# --------------------------------------------------------------------------- opening runs


@dataclass
class OpenRun:
    """A run dir opened for evaluation: its head, its cache, its test states."""

    name: str
    run_dir: Path
    head: object  # vh.heads.api.RunHead
    reader: object  # vh.cache.reader.CacheReader
    sampling: dict[str, np.ndarray]
    keys: np.ndarray  # (own test states,) KEY, sorted
    rows: np.ndarray  # (own test states,) cache rows in the order of ``keys``


def _keys(run_id: np.ndarray, step: np.ndarray) -> np.ndarray:
    k = np.empty(run_id.shape[0], dtype=KEY)
    k["run"], k["step"] = run_id, step
    return k


def _names(run_dirs: Sequence[Path]) -> list[str]:
    """File-safe, unique names from the run dirs' basenames."""
    names: list[str] = []
    for d in run_dirs:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(d).resolve().name) or "run"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def open_run(name: str, run_dir: str | Path) -> OpenRun:
    """Load a run's best head, open its cache as recorded, key its test states."""
    from vh.cache.reader import open_cache
    from vh.heads.api import load_run

    run_dir = Path(run_dir)
    head = load_run(run_dir)
    cache = head.config.get("cache", {})
    if "path" not in cache or "fingerprint" not in cache:
        raise VhError(
            "no cache path or fingerprint recorded", path=run_dir / rundir.CONFIG, field="cache"
        )
    reader = open_cache(cache["path"], expect_fingerprint=cache["fingerprint"])
    sampling = rundir.read_sampling(run_dir)
    rows = sampling["test_rows"].astype(np.int64)
    if rows.min() < 0 or rows.max() >= reader.n:
        raise VhError(
            f"row index outside the cache's 0:{reader.n}",
            path=run_dir / rundir.SAMPLING,
            field="test_rows",
        )
    keys = _keys(reader.column("run_id")[rows], reader.column("step_index")[rows])
    order = np.argsort(keys, order=("run", "step"), kind="stable")
    return OpenRun(name, run_dir, head, reader, sampling, keys[order], rows[order])


def common_states(runs: list[OpenRun]) -> tuple[np.ndarray, list[str]]:
    """The test states every run has, sorted by (run_id, step_index), and notes about them."""
    inputs = [r.reader.fingerprint.get("inputs") for r in runs]
    for r, inp in zip(runs[1:], inputs[1:], strict=True):
        if inp != inputs[0]:
            raise VhError(
                f"fitted on a cache of another dataset than {runs[0].name} "
                "(fingerprint inputs differ): not comparable",
                path=r.reader.path,
                field="fingerprint.inputs",
            )
    common = runs[0].keys
    for r in runs[1:]:
        common = np.intersect1d(common, r.keys)
    if common.size == 0:
        raise VhError(
            "the runs share no test state (different splits?)",
            path=runs[-1].run_dir / rundir.SAMPLING,
            field="test_rows",
        )
    notes = [
        f"{r.name} has {r.keys.size:,} test states; the comparison uses the "
        f"{common.size:,} common to all runs (different split or sampling)."
        for r in runs
        if r.keys.size != common.size
    ]
    return common, notes


# --------------------------------------------------------------------------- predicting


def _logits(run: OpenRun, rows: np.ndarray, batch: int, progress: Progress) -> np.ndarray:
    """Head logits of cache rows, read and predicted ``batch`` rows at a time."""
    out = np.empty((rows.size, run.head.spec.n_out), dtype=np.float64)
    for a in range(0, rows.size, batch):
        b = min(a + batch, rows.size)
        out[a:b] = run.head.logits(run.reader.take(rows[a:b]))
        progress.update(b - a)
    return out


def _state_columns(reader, rows: np.ndarray, notes: list[str], name: str) -> dict:
    """Per test state: step fraction, run length, highest tile on the board."""
    from vh.heads.targets import run_index

    run_id = reader.column("run_id")[rows]
    cols = {
        "run_id": run_id.astype(np.int64),
        "step_index": reader.column("step_index")[rows].astype(np.int64),
        "step_fraction": reader.column("step_fraction")[rows].astype(np.float64),
        "run_length": np.asarray(reader.runs["steps"], np.int64)[run_index(reader, run_id)],
    }
    if reader.has_column("max_exp"):
        exps = reader.column("max_exp")[rows].astype(np.int64)
        cols["max_tile"] = np.where(exps > 0, 2**exps, 0)
    else:
        cols["max_tile"] = np.full(rows.size, -1, dtype=np.int64)  # unknown: no tile slices
        notes.append(f"{name}: the cache has no max_exp column; tile slices are empty.")
    return cols


def _score_medians(run: OpenRun) -> np.ndarray:
    """Median final score per highest-tile bucket over the train split's runs (delta_k)."""
    from vh.heads.targets import run_index

    reader, spec = run.reader, run.head.spec
    train_runs = np.unique(reader.column("run_id")[run.sampling["train_rows"]])
    pos = run_index(reader, train_runs)
    tiles = np.asarray(reader.runs["highest_tile"], np.int64)[pos]
    scores = np.asarray(reader.runs["final_score"], np.float64)[pos]
    return M.bucket_medians(
        final_score=scores,
        bucket=tile_bucket(tiles, spec.thresholds),
        n_buckets=len(spec.thresholds) + 1,
    )


def predict_run(run: OpenRun, common: np.ndarray, cfg: EvalConfig, notes: list[str]) -> Predictions:
    """Predictions of one run's head on the common test states (and its validation states).

    Args:
        run: an opened run.
        common: sorted KEY array of the states to predict on.
        cfg: eval config (batch size, validation cap, seed).
        notes: receives remarks for the report.

    Returns:
        The :class:`~vh.eval.predictions.Predictions` (not yet saved).
    """
    from vh.heads.targets import get, target_values

    spec, reader = run.head.spec, run.reader
    kind = get(spec.kind)  # the kind decides the outputs kept and the validation labels
    rows = run.rows[np.searchsorted(run.keys, common)]  # (n,) cache rows in common order
    val = run.sampling["val_rows"].astype(np.int64)
    if kind.temperature and val.size > cfg.max_val_rows:
        val = np.sort(np.random.default_rng(cfg.seed).choice(val, cfg.max_val_rows, replace=False))
    n_val = val.size if kind.temperature and cfg.temperature else 0
    progress = Progress(rows.size + n_val, f"eval {run.name}", every=5.0)

    # ---- test states: labels' sources, outputs
    values = target_values(spec.kind, reader, rows)  # highest_tile, final_score of the runs, …
    state = _state_columns(reader, rows, notes, run.name)
    logits = _logits(run, rows, cfg.predict_batch, progress)
    out = kind.eval_outputs(spec, logits, values, cfg.predict_batch)
    out |= _prior_outputs(run, values, logits.shape, cfg.predict_batch)
    if n_val:  # ---- validation states, for the temperature
        out["val_logits"] = _logits(run, val, cfg.predict_batch, progress)
        val_values = target_values(spec.kind, reader, val)
        out["val_y"] = kind.eval_labels(val_values, np.asarray(spec.thresholds), out)
        out["val_run_id"] = reader.column("run_id")[val].astype(np.int64)  # T's by-run interval
    progress.close()
    return Predictions(
        name=run.name,
        kind=spec.kind,
        thresholds=np.asarray(spec.thresholds, np.int64),
        medians=_score_medians(run),
        rows={
            **state,
            "highest_tile": values["highest_tile"],
            "final_score": values["final_score"],
        },
        out=out,
        meta=_meta(run),
    )


def _prior_outputs(run: OpenRun, values: dict, shape: tuple, batch: int) -> dict:
    """The no-skill head (the train split's base rates) for the report's prior row:
    ``prior_logits`` ``(n_out,)``, and for a kind that keeps no logits (return) its outputs
    on the test states as ``prior_<key>`` (see ``vh.eval.scoring.prior_predictions``)."""
    from vh.heads.targets import get, target_values

    spec, kind = run.head.spec, get(run.head.spec.kind)
    train = np.sort(run.sampling["train_rows"].astype(np.int64))
    z = kind.prior_logits(spec, target_values(spec.kind, run.reader, train))
    if z is None:
        return {}
    own = kind.eval_outputs(spec, np.broadcast_to(z, shape), values, batch)
    out = {"prior_logits": np.asarray(z, dtype=np.float64)}
    if "logits" not in own:  # the report cannot rebuild these from the logits
        out |= {f"prior_{k}": v for k, v in own.items() if k != "ret"}
    return out


def _meta(run: OpenRun) -> dict:
    """What the report lists about a run: where it comes from, what it is, its cache."""
    attrs, spec = run.reader.attrs, run.head.spec
    trunk = (
        attrs.get("extract_config", {}).get("trunk")
        or run.reader.fingerprint.get("trunk", {}).get("kind")
        or attrs.get("pooling")
    )
    return {
        "run_dir": str(run.run_dir.resolve()),
        "member": run.head.member,
        "arch": run.head.arch,
        "monotone": bool(spec.monotone),
        "encoding": spec.encoding,
        "baseline": trunk == "onehot" or attrs.get("pooling") == "onehot",
        "own_test_rows": int(run.keys.size),
        "cache": {
            "path": str(run.reader.path),
            "trunk": trunk,
            "fingerprint": attrs.get("fingerprint_digest", ""),
        },
    }


# --------------------------------------------------------------------------- the driver


def evaluate(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    cfg: EvalConfig,
    log=say,
    play: Sequence[str | Path] | None = None,
) -> dict:
    """Predict every run's best head on the common test states and build the report.

    Args:
        run_dirs: run dirs written by ``vh fit``.
        out: the report dir (created; predictions and copies of the run files go inside).
        cfg: the resolved eval config.
        log: receives progress lines (and the warnings).
        play: ``vh play`` output folders (``--play``); None: those found beside the run dirs
            (:mod:`vh.eval.play`); empty: none.

    Returns:
        The report's ``metrics.json`` content.
    """
    if not run_dirs:
        raise VhError("no run dir given", field="RUN_DIR")
    out = Path(out)
    names = _names([Path(d) for d in run_dirs])
    # play results first: a --play that matches no run is refused before any work
    play_files = collect_play(
        [Path(d) for d in run_dirs], names, None if play is None else list(play)
    )

    # ---- open every run; the states they are compared on
    runs = [open_run(n, d) for n, d in zip(names, run_dirs, strict=True)]
    common, notes = common_states(runs)
    log(
        f"eval: {len(runs)} run(s), {common.size:,} common test states from "
        f"{np.unique(common['run']).size:,} runs"
    )

    # ---- predictions and run files
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    for run in runs:
        pred = predict_run(run, common, cfg, notes)
        seen = _trunk_seen(run, common)
        if seen is not None:  # the report warns from this (rebuilt without the cache)
            pred.meta["trunk_seen"] = seen
        save_predictions(out / "predictions" / f"{run.name}.npz", pred)
        rundir.copy_cited(run.run_dir, out / "runs" / run.name)
    play_entries = copy_play(out, play_files)
    stale = {p.stem for p in (out / "predictions").glob("*.npz")} - set(names)
    for name in stale:  # a previous evaluation's heads must not join this report
        (out / "predictions" / f"{name}.npz").unlink()

    # ---- what was evaluated, then the report (from files only)
    durable.atomic_write_text(
        out / "eval.json",
        json.dumps(
            {
                "vh_version": __version__,
                "created": datetime.datetime.now().isoformat(timespec="seconds"),
                "config": {"eval": to_dict(cfg)},
                "runs": names,
                "run_dirs": [str(Path(d).resolve()) for d in run_dirs],
                "n_states": int(common.size),
                "notes": notes,
                "play": play_entries,
            },
            indent=1,
        ),
    )
    log("eval: scoring and writing the report")
    return build_report(out, cfg, log=log)


def _trunk_seen(run: OpenRun, common: np.ndarray) -> dict | None:
    """How many of the run's test runs (its split's, and those scored) its trunk trained on;
    None for a trunk without a training record (the split is then not read)."""
    try:
        if trunk_record_of(run.head.config) is None:
            return None
    except VhError:
        pass  # a malformed record: trunk_seen says so
    if (run.run_dir / rundir.SPLIT).is_file():
        split = rundir.read_split(run.run_dir)
        test = np.asarray(split["run_id"], np.int64)[np.asarray(split["split"]) == TEST]
    else:  # a run dir without its split by run: the runs of its test states
        test = run.keys["run"]
    return trunk_seen(run.head.config, test, common["run"])
