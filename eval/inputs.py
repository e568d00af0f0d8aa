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
