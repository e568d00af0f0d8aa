"""Phase 3 driver: predict every run's best head on the common test states, then report.

``evaluate(run_dirs, out, cfg)`` reads each run dir (``vh.heads.api.load_run``), opens the cache
its ``config.json`` records (refusing one whose fingerprint changed), and predicts on the test
rows its ``sampling.npz`` lists. Heads are compared head to head on the same states: the test
states common to every run, matched on ``(run_id, step_index)`` so that runs fitted on
different caches of one dataset (the raw-board baseline's one-hot cache, a trunk cache) line
up. When the runs' test sets differ (another split seed or sampler) the comparison uses their
intersection and the report says so; runs fitted on different datasets (another
``fingerprint.inputs``) or sharing no test state are refused.

Then it writes ``OUT/predictions/<name>.npz``, copies the run files the report cites into
``OUT/runs/<name>/`` and ``OUT/eval.json``, and calls :func:`vh.eval.report.build_report`,
which needs only those files.

Axes: n = test states, m = validation states, K = thresholds, C = bins, D = embedding width.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vh import __version__
from vh.config import EvalConfig, to_dict
from vh.errors import VhError
from vh.eval import metrics as M
from vh.eval.report import Predictions, build_report, save_predictions, score_all, write_report
from vh.progress import Progress, say

# Files of a run dir the report cites (members/* are globbed); all small.
RUN_FILES = ("config.json", "summary.json", "sampling_manifest.csv")
KEY = np.dtype([("run", "<i8"), ("step", "<i8")])


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


def _load_sampling(run_dir: Path) -> dict[str, np.ndarray]:
    path = run_dir / "sampling.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise VhError("missing sampling.npz (fit not started?)", path=path) from None
    except (OSError, ValueError, EOFError) as e:
        raise VhError(f"unreadable ({e})", path=path) from None
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


def open_run(name: str, run_dir: str | Path) -> OpenRun:
    """Load a run's best head, open its cache as recorded, key its test states."""
    from vh.cache.reader import open_cache
    from vh.heads.api import load_run

    run_dir = Path(run_dir)
    head = load_run(run_dir)
    cache = head.config.get("cache", {})
    if "path" not in cache or "fingerprint" not in cache:
        raise VhError(
            "no cache path or fingerprint recorded", path=run_dir / "config.json", field="cache"
        )
    reader = open_cache(cache["path"], expect_fingerprint=cache["fingerprint"])
    sampling = _load_sampling(run_dir)
    rows = sampling["test_rows"].astype(np.int64)
    if rows.min() < 0 or rows.max() >= reader.n:
        raise VhError(
            f"row index outside the cache's 0:{reader.n}",
            path=run_dir / "sampling.npz",
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
            path=runs[-1].run_dir / "sampling.npz",
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
        bucket=M.bucket_index(tiles, spec.thresholds),
        n_buckets=len(spec.thresholds) + 1,
    )


def _class_labels(spec, values: dict) -> np.ndarray:
    """Validation labels for the temperature: ordinal u1[m, K]; tiles and logscore bins i64."""
    if spec.kind == "ordinal":
        return (values["highest_tile"][:, None] >= np.asarray(spec.thresholds)).astype(np.uint8)
    if spec.kind == "tiles":
        return M.bucket_index(values["highest_tile"], np.asarray(spec.thresholds))
    return M.bin_of(np.log1p(values["final_score"]), spec.bin_edges)


def _return_outputs(run: OpenRun, logits: np.ndarray, rows: np.ndarray, batch: int) -> dict:
    """Predicted value and realised return in raw units; the NLL over the bins if binned."""
    from scipy import special

    from vh.heads.targets import muzero_h, muzero_h_inv, soft_labels, target_values

    spec = run.head.spec
    ret = target_values("return", run.reader, rows)["ret"]
    if not spec.binned:
        return {"value": muzero_h_inv(logits[:, 0]), "ret": ret}
    value_h = np.empty(rows.size)
    nll_row = np.empty(rows.size)
    for a in range(0, rows.size, batch):  # (batch, C) at a time: C can be 601
        p = special.softmax(logits[a : a + batch], axis=1)
        value_h[a : a + batch] = p @ spec.bin_centers  # expectation in h units, then h^-1
        y = soft_labels(muzero_h(ret[a : a + batch]), spec)  # (batch, C), as the fit encodes
        nll_row[a : a + batch] = M.categorical_nll(p=p, y=y)
    return {"value": muzero_h_inv(value_h), "ret": ret, "nll_row": nll_row}


def predict_run(run: OpenRun, common: np.ndarray, cfg: EvalConfig, notes: list[str]) -> Predictions:
    """Predictions of one run's head on the common test states (and its validation states).

    Args:
        run: an opened run.
        common: sorted KEY array of the states to predict on.
        cfg: eval config (batch size, validation cap, seed).
        notes: receives remarks for the report.

    Returns:
        The :class:`~vh.eval.report.Predictions` (not yet saved).
    """
    from vh.heads.targets import target_values

    spec, reader = run.head.spec, run.reader
    rows = run.rows[np.searchsorted(run.keys, common)]  # (n,) cache rows in common order
    val = run.sampling["val_rows"].astype(np.int64)
    if spec.kind != "return" and val.size > cfg.max_val_rows:
        val = np.sort(np.random.default_rng(cfg.seed).choice(val, cfg.max_val_rows, replace=False))
    n_val = val.size if spec.kind != "return" and cfg.temperature else 0
    progress = Progress(rows.size + n_val, f"eval {run.name}", every=5.0)

    # ---- test states: labels' sources, outputs
    values = target_values("ordinal", reader, rows)  # highest_tile, final_score of the runs
    state = _state_columns(reader, rows, notes, run.name)
    logits = _logits(run, rows, cfg.predict_batch, progress)
    if spec.kind == "return":
        out = _return_outputs(run, logits, rows, cfg.predict_batch)
    else:
        out = {"logits": logits}
        if spec.kind == "logscore":
            out["bin_edges"] = spec.bin_edges
        if n_val:  # ---- validation states, for the temperature
            out["val_logits"] = _logits(run, val, cfg.predict_batch, progress)
            out["val_y"] = _class_labels(spec, target_values("ordinal", reader, val))
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


def copy_run_files(run_dir: Path, dest: Path) -> None:
    """Copy the small files the report cites (config, summaries, manifest, metrics.jsonl)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    for f in sorted(run_dir.glob("members/*/*")):
        if f.name in ("metrics.jsonl", "summary.json"):
            (dest / "members" / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest / "members" / f.parent.name / f.name)


# --------------------------------------------------------------------------- the driver


def evaluate(run_dirs: Sequence[str | Path], out: str | Path, cfg: EvalConfig, log=say) -> dict:
    """Predict every run's best head on the common test states and build the report.

    Args:
        run_dirs: run dirs written by ``vh fit``.
        out: the report dir (created; predictions and copies of the run files go inside).
        cfg: the resolved eval config.
        log: receives progress lines.

    Returns:
        The report's ``metrics.json`` content.
    """
    if not run_dirs:
        raise VhError("no run dir given", field="RUN_DIR")
    out = Path(out)
    names = _names([Path(d) for d in run_dirs])

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
        save_predictions(
            out / "predictions" / f"{run.name}.npz", predict_run(run, common, cfg, notes)
        )
        copy_run_files(run.run_dir, out / "runs" / run.name)
    stale = {p.stem for p in (out / "predictions").glob("*.npz")} - set(names)
    for name in stale:  # a previous evaluation's heads must not join this report
        (out / "predictions" / f"{name}.npz").unlink()

    # ---- what was evaluated, then the report (from files only)
    (out / "eval.json").write_text(
        json.dumps(
            {
                "vh_version": __version__,
                "created": datetime.datetime.now().isoformat(timespec="seconds"),
                "config": {"eval": to_dict(cfg)},
                "runs": names,
                "run_dirs": [str(Path(d).resolve()) for d in run_dirs],
                "n_states": int(common.size),
                "notes": notes,
            },
            indent=1,
        )
    )
    log("eval: scoring and writing the report")
    return build_report(out, cfg)


# --------------------------------------------------------------------------- planted data, benchmark

PLANTED_THRESHOLDS = (1024, 2048, 4096, 8192, 16384, 32768)
_CUTS = np.linspace(-3.0, 3.0, len(PLANTED_THRESHOLDS))  # c_k of the planted truth


def _planted_states(rng: np.random.Generator, n_rows: int, n_runs: int, first_id: int) -> dict:
    """Runs with a latent skill z, their outcomes, and their states sorted by (run, step)."""
    z = rng.normal(size=n_runs)
    reach = 1 / (1 + np.exp(-(2.0 * z[:, None] - _CUTS)))  # (R, K) P(highest >= T_k | z)
    bucket = (rng.uniform(size=(n_runs, 1)) < reach).sum(1)  # ordinal draw: one uniform per run
    tiles = np.r_[512, PLANTED_THRESHOLDS][bucket]
    score = np.round(np.exp(7.0 + 0.8 * bucket + 0.3 * rng.normal(size=n_runs)))
    sizes = 1 + rng.multinomial(n_rows - n_runs, rng.dirichlet(np.full(n_runs, 4.0)))
    run = np.repeat(np.arange(n_runs), sizes)  # (n,) run of each state
    step = np.arange(n_rows) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    frac = step / sizes[run]
    exps = np.clip(np.floor(frac * np.log2(tiles[run])) + 1, 1, np.log2(tiles[run]))
    return {
        "z": z[run],
        "bucket": bucket[run],
        "rows": {
            "run_id": (run + first_id).astype(np.int64),
            "step_index": step.astype(np.int64),
            "step_fraction": frac,
            "run_length": sizes[run].astype(np.int64),
            "max_tile": (2**exps).astype(np.int64),
            "highest_tile": tiles[run].astype(np.int64),
            "final_score": score[run],
        },
    }


def _planted_logits(kind: str, z: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A head that sees the skill through noise: threshold logits ``2 z_hat - c_k``."""
    t = 2.0 * (z + noise * rng.normal(size=z.size))[:, None] - _CUTS  # (n, K)
    if kind == "ordinal":
        return t
    return np.log(M.clamp(M.buckets_from_q(1 / (1 + np.exp(-t)))))  # tiles: log bucket probs


def planted(
    *,
    n_rows: int,
    n_runs: int,
    heads: dict[str, tuple[str, float, int]],
    seed: int = 0,
    val_rows: int | None = None,
) -> list[Predictions]:
    """Synthetic threshold-head predictions whose truth is known.

    Each run has a latent skill z ~ N(0, 1) and reaches ``T_k`` with probability
    ``sigmoid(2 z - c_k)`` (one uniform draw per run, so buckets are ordinal). A head sees z
    through noise, per state: ``z_hat = z + noise * eps``; less noise is a better head on every
    figure, and two heads with the same (kind, noise, seed) are identical.

    Args:
        n_rows, n_runs: test states and runs (every run has at least one state).
        heads: name -> (``"ordinal"`` or ``"tiles"``, noise, noise seed).
        seed: seed of the runs and outcomes.
        val_rows: validation states (default a tenth of ``n_rows``), for the temperature.

    Returns:
        Row-aligned :class:`~vh.eval.report.Predictions`, one per head.
    """
    rng = np.random.default_rng(seed)
    test = _planted_states(rng, n_rows, n_runs, first_id=10)
    m = val_rows if val_rows is not None else max(n_rows // 10, 1)
    val = _planted_states(rng, m, max(n_runs * m // n_rows, 1), first_id=10 + n_runs)
    medians = np.exp(7.0 + 0.8 * np.arange(len(PLANTED_THRESHOLDS) + 1))  # lognormal medians
    preds = []
    for name, (kind, noise, head_seed) in heads.items():
        hrng = np.random.default_rng([seed, head_seed])
        vy = (val["bucket"][:, None] > np.arange(len(PLANTED_THRESHOLDS))).astype(np.uint8)
        preds.append(
            Predictions(
                name=name,
                kind=kind,
                thresholds=np.array(PLANTED_THRESHOLDS),
                medians=medians,
                rows=test["rows"],
                out={
                    "logits": _planted_logits(kind, test["z"], noise, hrng),
                    "val_logits": _planted_logits(kind, val["z"], noise, hrng),
                    "val_y": vy if kind == "ordinal" else val["bucket"].astype(np.int64),
                },
                meta={"arch": "planted", "monotone": kind == "ordinal", "noise": noise},
            )
        )
    return preds


def benchmark(
    *, n_rows: int, n_runs: int, n_heads: int, cfg: EvalConfig, out: Path, log=say
) -> dict:
    """Time the scoring (every metric, the bootstrap, the verdict) and the report pages.

    Args:
        n_rows, n_runs: planted test states and runs.
        n_heads: ordinal heads of increasing noise.
        cfg: eval config (``n_boot`` resamples).
        out: where the report pages go.

    Returns:
        ``{"rows", "runs", "heads", "n_boot", "planted_s", "score_s", "score_cpu_s", "write_s",
        "winner"}``; ``score_cpu_s`` (user + system CPU seconds of this process) tells the work
        apart from waiting when the machine is shared.
    """
    import resource
    import time

    def cpu() -> float:
        u = resource.getrusage(resource.RUSAGE_SELF)
        return u.ru_utime + u.ru_stime

    t0 = time.perf_counter()
    heads = {f"h{i}": ("ordinal", 0.3 + 0.1 * i, i) for i in range(n_heads)}
    preds = planted(
        n_rows=n_rows, n_runs=n_runs, heads=heads, val_rows=min(n_rows // 10, cfg.max_val_rows)
    )
    t1 = time.perf_counter()
    log(f"bench eval: planted {n_rows:,} rows x {n_heads} heads in {t1 - t0:.1f} s; scoring")
    c1 = cpu()
    scored = score_all(preds, {}, cfg)
    t2, c2 = time.perf_counter(), cpu()
    write_report(Path(out), scored, preds, {}, {"notes": ["planted benchmark data"]})
    t3 = time.perf_counter()
    return {
        "rows": n_rows,
        "runs": n_runs,
        "heads": n_heads,
        "n_boot": cfg.n_boot,
        "planted_s": t1 - t0,
        "score_s": t2 - t1,
        "score_cpu_s": c2 - c1,
        "write_s": t3 - t2,
        "winner": scored.verdicts[0]["winner"],
    }
