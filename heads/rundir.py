"""The run dir: the one module that knows its file names, writes them and reads them back.

A run dir is the contract between ``vh fit`` (writes it), ``vh eval`` (reads it, and copies
the files the report cites) and ``vh export`` (reads a head from it)::

    RUN_DIR/config.json              what was fitted on what (resolved fit config, cache
                                     identity, target spec, grid); "run_dir_version"
    RUN_DIR/split.npz                run_id, split (0 train, 1 val, 2 test) per run, seed
    RUN_DIR/sampling.npz             train_rows, val_rows, test_rows: sorted cache rows
    RUN_DIR/sampling_manifest.csv    the sampling, for people
    RUN_DIR/members/NAME/best.safetensors   the member's best checkpoint (+ epoch, val_nll)
    RUN_DIR/members/NAME/metrics.jsonl      train and val lines per epoch
    RUN_DIR/members/NAME/summary.json       the member's early-stopping record
    RUN_DIR/summary.json             the best member, per-member records, the batch used
    RUN_DIR/last/state.safetensors   the whole train state after the last finished epoch
    RUN_DIR/lock                     held while a fit runs (vh.durable.Lock)
    RUN_DIR/.vh-owner.json           ownership marker (kind ``run``, vh.durable)

Every file is written atomically (vh.durable). ``config.json`` records the format version
(:data:`VERSION`); a run dir without one was written before the field existed and reads as
version 1; a newer version is refused with one line (this vh does not know its layout).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from vh import durable
from vh.errors import VhError
from vh.heads import checkpoint as ck

VERSION = 1  # bump when a file changes meaning; readers refuse a newer one
VERSION_KEY = "run_dir_version"

CONFIG = "config.json"
SPLIT = "split.npz"
SAMPLING = "sampling.npz"
MANIFEST = "sampling_manifest.csv"
SUMMARY = "summary.json"
MEMBERS = "members"
LAST = "last"
LOCK = "lock"
BEST = "best.safetensors"
METRICS = "metrics.jsonl"
STATE = "state.safetensors"

# written before config.json; without it they are leftovers of a fit killed at its start
SAMPLING_FILES = (SPLIT, SAMPLING, MANIFEST)
# every top-level entry fit writes: --overwrite deletes a run dir holding nothing else
RUN_FILES = (*sorted(SAMPLING_FILES), CONFIG, SUMMARY, MEMBERS, LAST, LOCK)
# the small files a report cites (copied into REPORT_DIR/runs/NAME/), members' too
CITED_FILES = (CONFIG, SUMMARY, MANIFEST)
CITED_MEMBER_FILES = (METRICS, SUMMARY)
SPLIT_NAMES = ("train", "val", "test")

LOCK_REFUSAL = "another vh fit is using this run dir ({holder})"


# --------------------------------------------------------------------------- paths


def member_dir(run_dir: str | os.PathLike, member: str) -> Path:
    """``RUN_DIR/members/NAME``."""
    return Path(run_dir) / MEMBERS / member


def best_path(run_dir: str | os.PathLike, member: str) -> Path:
    """A member's best checkpoint."""
    return member_dir(run_dir, member) / BEST


def metrics_path(run_dir: str | os.PathLike, member: str) -> Path:
    """A member's metrics lines."""
    return member_dir(run_dir, member) / METRICS


def state_path(run_dir: str | os.PathLike) -> Path:
    """The resume state (``last/state.safetensors``)."""
    return Path(run_dir) / LAST / STATE


def lock(run_dir: str | os.PathLike) -> durable.Lock:
    """The run dir's lock (a context manager; refused with one line while another fit runs)."""
    return durable.Lock(run_dir, LOCK, LOCK_REFUSAL)


def is_legacy_run(run_dir: Path) -> bool:
    """A run dir of a vh before ownership markers: its config.json is fit's."""
    rec = durable.try_read_json(Path(run_dir) / CONFIG)
    return bool(rec) and "vh_version" in rec and isinstance(rec.get("fit"), dict)


# --------------------------------------------------------------------------- config.json


def write_config(run_dir: str | os.PathLike, config: dict) -> None:
    """Write ``config.json`` (with the format version); fit writes it last of the setup."""
    durable.atomic_write_json(Path(run_dir) / CONFIG, {VERSION_KEY: VERSION, **config})


def check_version(config: dict, path: str | os.PathLike) -> int:
    """The run dir format version of a config.json (absent: 1); newer or odd: VhError."""
    version = config.get(VERSION_KEY, 1)
    if type(version) is not int or version < 1:
        raise VhError(f"unknown run dir version {version!r}", path=path, field=VERSION_KEY)
    if version > VERSION:
        raise VhError(
            f"run dir version {version} is newer than this vh reads ({VERSION}); "
            "upgrade vh to read it",
            path=path,
            field=VERSION_KEY,
        )
    return version


def read_config(run_dir: str | os.PathLike) -> dict:
    """``config.json``, its version checked; a missing one says it is not a run dir."""
    path = Path(run_dir) / CONFIG
    config = durable.read_json(path, "config.json (not a run dir?)")
    check_version(config, path)
    return config


# --------------------------------------------------------------------------- split, sampling


def _write_npz(path: Path, arrays: dict) -> None:
    def write(p):
        with open(p, "wb") as f:
            np.savez_compressed(f, **arrays)

    durable.atomic_write(path, write)


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise VhError(f"missing {what} (fit not started?)", path=path) from None
    except (OSError, ValueError, EOFError) as e:
        raise VhError(f"unreadable ({e})", path=path) from None


def write_sampling(
    run_dir: str | os.PathLike,
    run_ids: np.ndarray,
    split: np.ndarray,
    rows: dict[str, np.ndarray],
    manifest: str,
    seed: int,
) -> None:
    """Write the split by run (``split.npz``), the rows used (``sampling.npz``), the manifest."""
    run_dir = Path(run_dir)
    _write_npz(run_dir / SPLIT, {"run_id": np.asarray(run_ids, np.int64), "split": split,
                                 "seed": seed})  # fmt: skip
    _write_npz(run_dir / SAMPLING, {f"{n}_rows": rows[n] for n in SPLIT_NAMES})
    durable.atomic_write_text(run_dir / MANIFEST, manifest)


def read_split(run_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """``split.npz``: ``run_id``, ``split`` and ``seed``."""
    return _read_npz(Path(run_dir) / SPLIT, SPLIT)


def read_sampling(run_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """``sampling.npz``: the cache rows of each split (1-D; the test split not empty)."""
    path = Path(run_dir) / SAMPLING
    data = _read_npz(path, SAMPLING)
    for key in ("train_rows", "val_rows", "test_rows"):
        if key not in data or data[key].ndim != 1:
            raise VhError("missing or not a 1-D array", path=path, field=key)
    if data["test_rows"].size == 0:
        raise VhError(
            "no test rows (fitted with val_run_pct or an empty test split?)",
            path=path,
            field="test_rows",
        )
    return data


def read_manifest(run_dir: str | os.PathLike) -> str:
    """``sampling_manifest.csv`` as text ("" when absent: it is for people only)."""
    path = Path(run_dir) / MANIFEST
    return path.read_text() if path.is_file() else ""


# --------------------------------------------------------------------------- members, summary


def write_best(run_dir, member: str, params: dict[str, np.ndarray], meta: dict) -> None:
    """A member's new best checkpoint (flat params; meta: member, epoch, val_nll)."""
    ck.save_tensors(best_path(run_dir, member), params, meta)


def read_best(run_dir, member: str) -> dict[str, np.ndarray]:
    """A member's best checkpoint; VhError naming the file if absent, unreadable or NaN."""
    path = best_path(run_dir, member)
    params, _ = ck.load_tensors(path)
    for key, value in params.items():  # NaN weights would give a silent NaN report or export
        if not np.all(np.isfinite(value)):
            raise VhError("non-finite weights (NaN or inf)", path=path, field=key)
    return params


def metrics_log(run_dir, member: str) -> ck.MetricsLog:
    """The member's append-only metrics lines."""
    return ck.MetricsLog(metrics_path(run_dir, member))


def write_summary(run_dir, summary: dict) -> None:
    """``summary.json`` and each member's ``members/NAME/summary.json``."""
    for name, rec in summary["members"].items():
        durable.atomic_write_json(member_dir(run_dir, name) / SUMMARY, rec)
    durable.atomic_write_json(Path(run_dir) / SUMMARY, summary)


def read_summary(run_dir) -> dict:
    """``summary.json`` (written when a fit finishes)."""
    return durable.read_json(Path(run_dir) / SUMMARY, "summary.json (fit not finished?)")


def read_curves(run_dir) -> dict[str, list[dict]]:
    """Every member's metrics lines: member name → records (blank lines skipped)."""
    curves = {}
    for f in sorted(Path(run_dir).glob(f"{MEMBERS}/*/{METRICS}")):
        records = []
        for i, line in enumerate(f.read_text().splitlines()):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise VhError("not valid JSON", path=f, field=f"line {i + 1}") from None
        curves[f.parent.name] = records
    return curves


def copy_cited(run_dir, dest) -> None:
    """Copy the small files a report cites (config, summaries, manifest, metrics lines)."""
    run_dir, dest = Path(run_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in CITED_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    for f in sorted(run_dir.glob(f"{MEMBERS}/*/*")):
        if f.name in CITED_MEMBER_FILES:
            (dest / MEMBERS / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest / MEMBERS / f.parent.name / f.name)


def input_width(params: dict, run_dir) -> int:
    """The embedding width a checkpoint's head reads: rows of its first layer's kernel."""
    for name in ("hidden.kernel", "out.kernel", "score.kernel"):
        if name in params:
            return int(params[name].shape[0])
    raise VhError("checkpoint has no input layer", path=run_dir, field="params")
