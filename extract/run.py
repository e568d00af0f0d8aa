"""Phase 1: run the frozen trunk once over a dataset and write the embedding cache.

:func:`run_extract` reads top to bottom: workers, inputs and fingerprint, the cache prepared
by rank 0 (lock, create or resume, per-state columns), this rank's units through the
pipeline, then rank 0 verifies every unit and writes the completion marker.

The pipeline that keeps the trunk busy is :mod:`vh.extract.pipeline`; the per-state columns
are :mod:`vh.extract.columns`. Progress and notices go to ``log``, a callable taking one line
(:func:`vh.progress.say` by default, as in every phase).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from vh.cache import fingerprint as fpmod
from vh.cache import ledger, schema
from vh.cache.lock import CacheLock
from vh.cache.writer import (
    CacheWriter,
    check_destination,
    clear_cache_dir,
    init_cache,
    is_initialised,
)
from vh.config import Config, ExtractConfig, to_dict
from vh.errors import VhError
from vh.extract import board
from vh.extract.columns import column_dtypes, compute_columns, runs_table
from vh.extract.dataset import Dataset, open_dataset
from vh.extract.distributed import DistEnv
from vh.extract.pipeline import Stats, UnitPipeline, breakdown
from vh.extract.trunk import LoadedTrunk, load_null, load_onehot, load_trunk
from vh.progress import Progress, say

# re-exported: the pipeline and the columns lived here before
__all__ = ["ExtractResult", "Stats", "UnitPipeline", "compute_columns", "run_extract"]


@dataclass(frozen=True)
class ExtractResult:
    """What :func:`run_extract` did.

    Attributes:
        path: the cache. n, d, dtype: its shape and emb dtype.
        units_done: units this run embedded (all workers). already_complete: nothing to do.
        stats: pipeline timings of this rank. rank: this worker's rank (0 alone).
    """

    path: Path
    n: int
    d: int
    dtype: str
    n_units: int
    units_done: int
    already_complete: bool
    stats: Stats
    rank: int = 0


# --------------------------------------------------------------------------- settings


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this worker's GPU when there is one, else the CPU."""
    if spec == "auto":
        spec = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif spec == "cuda":
        spec = f"cuda:{local_rank}"
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise VhError("expected auto, cpu, cuda or cuda:N", field="extract.device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VhError("no CUDA device here", field="extract.device")
    return dev


def byte_settings(ecfg: ExtractConfig, device: torch.device) -> dict:
    """The extract settings that change the cache's bytes (part of the fingerprint).

    Batch size and compilation change float summation order; the device kind changes the
    arithmetic (bf16 autocast on GPU). Threads, seed of absent weights (in the trunk part)
    and progress do not belong here.
    """
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "trunk": ecfg.trunk,
        "dtype": ecfg.dtype,
        "gamma": ecfg.gamma,
        "chunk_rows": ecfg.chunk_rows,
        "batch_size": ecfg.batch_size,
        "compile": ecfg.compile,
        "device": device.type,
        "autocast": "bfloat16" if device.type == "cuda" else None,
    }


def _load(
    ecfg: ExtractConfig,
    init: str | os.PathLike | None,
    device: torch.device,
    ds: Dataset,
    trust_pickle: bool = False,
) -> LoadedTrunk:
    if ecfg.trunk == "onehot":
        # the raw-board baseline needs token 16 only if a 65536 tile occurs (a full scan,
        # which the dataset keeps for validate())
        return load_onehot(17 if ds.validate().max_exponent >= board.MAX_EXP else 16)
    if ecfg.trunk == "null":  # the benchmark trunk: zeros, so only the pipeline is measured
        return load_null(ecfg.null_dim)
    if init is None:
        raise VhError(
            "--init is required with the init trunk (or use --trunk onehot)", field="--init"
        )
    return load_trunk(init, seed=ecfg.seed, device=device, trust_pickle=trust_pickle)


def _vocab(lt: LoadedTrunk) -> int:
    return lt.config.input_vocab_size if lt.config is not None else lt.model.vocab


# --------------------------------------------------------------------------- rank 0: prepare


@dataclass(frozen=True)
class _Plan:
    fingerprint: dict
    todo: list[int]  # units not done, all ranks
    complete: bool


def _prepare(
    ds: Dataset,
    lt: LoadedTrunk,
    out: Path,
    cfg: Config,
    device: torch.device,
    *,
    overwrite: bool,
    log,
) -> _Plan:
    """Rank 0: validate, fingerprint, create or resume the cache, write the columns."""
    ecfg = cfg.extract
    # ---- inputs: every row checked (contiguous runs, vocab), every file hashed
    ds.validate(_vocab(lt) if ecfg.check_vocab else None)
    fp = _fingerprint(ds, lt, ecfg, device)
    # ---- the cache: start over, resume (same inputs only) or create
    if overwrite:
        clear_cache_dir(out)
    if is_initialised(out):
        writer = CacheWriter(out)
        fpmod.check(writer.attrs["fingerprint"], fp, out)
        removed = ledger.remove_temp_files(out)
        if removed:
            _say(log, f"{out}: removed {removed} temp files of an interrupted run")
    else:
        writer = init_cache(
            out,
            n=ds.n_rows,
            d=lt.dim,
            dtype=ecfg.dtype,
            chunk_rows=ecfg.chunk_rows,
            pooling=ecfg.trunk if ecfg.trunk in ("onehot", "null") else "mean",
            columns=column_dtypes(ecfg.gamma),
            runs=runs_table(ds),
            fingerprint=fp,
            extract_config=_recorded(ecfg),
            extra_attrs={
                "dataset": str(ds.path),
                "layout": ds.layout,
                "trunk_source": lt.source,
                "columns_used": ds.columns_used,
            },
        )
    todo = writer.pending_units()
    marker = out / schema.MARKER
    if marker.exists():
        if not todo and writer.columns_done():
            return _Plan(fp, [], True)
        # a unit no longer matches its record: withdraw the marker before redoing it
        _say(log, f"{out}: {len(todo)} units must be recomputed; completion marker withdrawn")
        marker.unlink()
    # ---- per-state columns: one unit, before any embedding unit
    if not writer.columns_done():
        writer.write_columns(compute_columns(ds, ecfg.gamma))
    return _Plan(fp, todo, False)


def _recorded(ecfg: ExtractConfig) -> dict:
    """The extract config a cache records: ``null_dim`` only with the null trunk it sizes
    (so a cache of any other trunk has the same bytes as before that key existed)."""
    rec = to_dict(ecfg)
    if ecfg.trunk != "null":
        rec.pop("null_dim")
    return rec


def _say(log, message: str) -> None:
    if log is not None:
        log(message)


def _fingerprint(ds: Dataset, lt: LoadedTrunk, ecfg: ExtractConfig, device: torch.device) -> dict:
    inputs = fpmod.file_entries(ds.files(), root=ds.path)
    return fpmod.make_fingerprint(lt.fingerprint, inputs, byte_settings(ecfg, device))


def _check_same_trunk(lt: LoadedTrunk, fp: dict, out: Path) -> None:
    """A worker's trunk must be rank 0's (hosts may see different files)."""
    diffs = fpmod.trunk_differences(fp["trunk"], lt.fingerprint)
    if diffs:
        raise VhError(
            "this worker's trunk differs from rank 0's: " + "; ".join(diffs[:3]),
            path=out,
            field="trunk",
            code=3,
        )


# --------------------------------------------------------------------------- phase 1


def run_extract(
    dataset: str | os.PathLike,
    init: str | os.PathLike | None,
    out: str | os.PathLike,
    cfg: Config,
    *,
    overwrite: bool = False,
    log=say,
    trust_pickle: bool = False,
) -> ExtractResult:
    """Embed every state of a dataset with the frozen trunk into a cache (resumable).

    Re-running the same command resumes: only units without a ledger record are computed.
    Under torchrun each worker takes units ``u % world == rank``.

    Args:
        dataset: the dataset dir.
        init: the trunk init dir (None with ``extract.trunk = "onehot"``).
        out: the cache folder.
        cfg: the resolved config (``cfg.extract`` is used and recorded).
        overwrite: delete an existing cache first (else a different one is refused).
        log: receives progress and notice lines (None: silent).
        trust_pickle: unpickle a ``.pt`` trunk fully (runs its code; see ``load_trunk``).

    Returns:
        An :class:`ExtractResult`.
    """
    ecfg, out = cfg.extract, Path(out)
    if ecfg.batch_size <= 0 or ecfg.chunk_rows <= 0:
        raise VhError("batch_size and chunk_rows must be positive", field="extract")
    env = DistEnv.from_env()
    with contextlib.ExitStack() as stack:
        # ---- workers and device
        env.start()
        stack.callback(env.stop)
        device = resolve_device(ecfg.device, env.local_rank)
        if device.type == "cpu" and ecfg.threads > 0:
            torch.set_num_threads(ecfg.threads)

        # ---- rank 0 decides: lock, inputs, fingerprint, create or resume, columns (its
        # errors reach every rank, so none waits forever); then the others load the same
        inputs: dict = {}

        def prepare() -> _Plan:
            # an --out that is an input or not a vh cache: refused before any lock or folder
            check_destination(out, {"--dataset": dataset, "--init": init}, overwrite=overwrite)
            # inputs first: a refused dataset or trunk leaves no cache folder behind
            inputs.update(_inputs(dataset, init, ecfg, device, trust_pickle))
            # every row checked before the lock too (the scan is kept: _prepare reuses it)
            inputs["ds"].validate(_vocab(inputs["lt"]) if ecfg.check_vocab else None)
            # held until the end; the lock's stale-lock line goes to stderr unless silenced
            stack.enter_context(CacheLock(out, log=sys.stderr if log is not None else None))
            return _prepare(**inputs, out=out, cfg=cfg, device=device, overwrite=overwrite, log=log)

        plan = env.on_main(prepare)
        if not env.is_main:
            inputs.update(_inputs(dataset, init, ecfg, device, trust_pickle))
            _check_same_trunk(inputs["lt"], plan.fingerprint, out)
        writer = CacheWriter(out)
        if plan.complete:
            return _result(writer, 0, True, Stats(), env.rank)

        # ---- embed this worker's units (every rank reports before anyone finishes)
        stats, units = _embed(env, plan.todo, writer, inputs, ecfg, device, log)

        # ---- rank 0: check every unit against its chunk, then the marker (last)
        if env.is_main:
            writer.finish()
        env.barrier()
    return _result(writer, sum(units), False, stats, env.rank)


def _inputs(
    dataset, init, ecfg: ExtractConfig, device: torch.device, trust_pickle: bool = False
) -> dict:
    ds = open_dataset(dataset)
    return {"ds": ds, "lt": _load(ecfg, init, device, ds, trust_pickle)}


def _result(
    writer: CacheWriter, units_done: int, complete: bool, stats: Stats, rank: int
) -> ExtractResult:
    return ExtractResult(
        writer.path,
        writer.n,
        writer.d,
        writer.attrs["dtype"],
        writer.n_units,
        units_done,
        complete,
        stats,
        rank,
    )


def _embed(
    env: DistEnv,
    todo: list[int],
    writer: CacheWriter,
    inputs: dict,
    ecfg: ExtractConfig,
    device: torch.device,
    log,
) -> tuple[Stats, list]:
    """This worker's share of ``todo`` (units ``u % world == rank``) through the pipeline.

    Every rank reports before anyone finishes, so a failed one stops all of them cleanly.

    Returns:
        This rank's timings and the units each rank embedded.
    """
    mine = [u for u in todo if u % env.world == env.rank]
    rows = sum(stop - start for start, stop in map(writer.unit_range, mine))
    bar = Progress(rows, "extract", log=log if env.is_main else None, every=2.0)
    pipe = UnitPipeline(
        inputs["ds"],
        inputs["lt"].model,
        writer,
        batch_size=ecfg.batch_size,
        device=device,
        vocab=_vocab(inputs["lt"]),
        compile=ecfg.compile,
        progress=bar,
    )
    stats, err = Stats(), None
    try:
        stats = pipe.run(mine)
    except BaseException as e:
        err = e
    units = env.all_gather(None if err is not None else stats.units)
    if err is not None:
        raise err
    if None in units:
        raise VhError(
            "another worker failed; rerun the same command to resume", path=writer.path, code=3
        )
    bar.close(breakdown(stats))
    return stats, units
