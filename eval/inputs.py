"""What the report reads from a report dir: the predictions and the copied run files.

Layout (written by :func:`vh.eval.run.evaluate`, or by hand for planted data)::

    REPORT_DIR/predictions/<name>.npz   one per head, all row-aligned on the same test states
    REPORT_DIR/runs/<name>/             the run dir's cited files, copied and read by
                                        vh.heads.rundir (config.json, summary.json, the
                                        manifest, members/<m>/metrics.jsonl, summary.json)
    REPORT_DIR/eval.json                how the predictions were made: runs, notes, config
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vh import durable
from vh.errors import VhError
from vh.eval.predictions import Predictions, load_predictions
from vh.heads import rundir


@dataclass
class RunFiles:
    """What the report knows about one run dir, from the copies under ``runs/<name>/``."""

    config: dict
    summary: dict
    manifest: str
    curves: dict[str, list[dict]]


def read_run_files(run_dir: Path) -> RunFiles:
    """Read the copied run files (config.json and summary.json are required)."""
    return RunFiles(
        config=rundir.read_config(run_dir),
        summary=rundir.read_summary(run_dir),
        manifest=rundir.read_manifest(run_dir),
        curves=rundir.read_curves(run_dir),
    )


def load_inputs(report_dir: Path) -> tuple[list[Predictions], dict[str, RunFiles], dict]:
    """Predictions (in the recorded order), run files, and ``eval.json`` of a report dir."""
    eval_json = report_dir / "eval.json"  # optional: planted data has none
    info = durable.read_json(eval_json, "eval.json") if os.path.lexists(eval_json) else {}
    files = {p.stem: p for p in sorted((report_dir / "predictions").glob("*.npz"))}
    if not files:
        raise VhError("no predictions/*.npz: run `vh eval RUN_DIR… --out` first", path=report_dir)
    order = [n for n in info.get("runs", []) if n in files] + sorted(
        set(files) - set(info.get("runs", []))
    )
    preds = [load_predictions(files[n]) for n in order]
    for p in preds[1:]:
        for key in ("run_id", "step_index"):
            if not np.array_equal(p.rows[key], preds[0].rows[key]):
                raise VhError(
                    f"not row-aligned with {preds[0].name} (evaluate all heads in "
                    "one `vh eval` call)",
                    path=files[p.name],
                    field=f"row_{key}",
                )
    runs = {
        p.name: read_run_files(report_dir / "runs" / p.name)
        for p in preds
        if (report_dir / "runs" / p.name).is_dir()
    }
    return preds, runs, info


# --------------------------------------------------------------------------- trunk training


def trunk_record_of(config: dict) -> dict | None:
    """The ``vh_trunk_train`` block of the trunk a run's cache was extracted with, from the
    cache fingerprint its ``config.json`` records (None: a trunk vh did not train)."""
    from vh.extract.trunk_record import trunk_training_runs

    cache = config.get("cache") if isinstance(config, dict) else None
    fp = cache.get("fingerprint") if isinstance(cache, dict) else None
    trunk = fp.get("trunk") if isinstance(fp, dict) else None
    cfg = trunk.get("config") if isinstance(trunk, dict) else None
    return trunk_training_runs(cfg) if isinstance(cfg, dict) else None


def trunk_seen(config: dict, split_test_runs: np.ndarray, scored_runs: np.ndarray) -> dict | None:
    """How many of a run's test runs its trunk was trained on (for the predictions' meta).

    Args:
        config: the run's config.json (its cache fingerprint carries the trunk's record).
        split_test_runs: the run ids its split put in ``test``.
        scored_runs: the run ids of the test states the report scores (common to all heads).

    Returns:
        None for a trunk without a record; else ``test_runs``, ``seen`` (of the split's test
        runs), ``scored_runs``, ``scored_seen``, or ``error`` when the record cannot be read.
    """
    from vh.extract.trunk_record import seen_test_runs

    try:
        record = trunk_record_of(config)
        if record is None:
            return None
        split, scored = np.unique(split_test_runs), np.unique(scored_runs)
        return {
            "test_runs": int(split.size),
            "seen": seen_test_runs(record, split),
            "scored_runs": int(scored.size),
            "scored_seen": seen_test_runs(record, scored),
        }
    except VhError as e:  # a malformed record: say so in the report rather than fail
        return {"error": e.line()}


def trunk_warning(name: str, seen: dict | None) -> str | None:
    """The report's (and the console's) warning for one run, or None when nothing was seen."""
    if not seen:
        return None
    if "error" in seen:
        return (
            f"{name}: its trunk's training record cannot be read ({seen['error']}); "
            "whether the trunk saw its test runs is unknown."
        )
    if not seen["seen"] and not seen["scored_seen"]:
        return None
    return (
        f"{name}: its trunk was trained on {seen['seen']:,} of its {seen['test_runs']:,} test "
        f"runs ({seen['scored_seen']:,} of the {seen['scored_runs']:,} test games this report "
        "scores): its test figures are optimistic. Fit the head with the trunk's split (the "
        "default split and seed of `vh fit`) or use a trunk trained on other games."
    )
