"""Fitting heads: :func:`fit` writes a run dir, :func:`load_run` reads a head back from one.

The run dir's files (``config.json``, ``split.npz``, ``sampling.npz``, the manifest,
``members/NAME/…``, ``summary.json``, ``last/``, ``lock``) are written and read by
:mod:`vh.heads.rundir`, which owns their names and format version; this module decides what
goes in them.

Rerunning the same ``vh fit`` on a run dir resumes it; a run dir holding a different fit
(another config, cache or grid) is refused unless ``--overwrite``, which deletes only a run
dir vh made (marker, or a pre-marker run dir holding only fit's files), never the cache or a
folder holding it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from vh import __version__, durable
from vh.cache.reader import open_cache
from vh.config import FitConfig, from_dict, to_dict
from vh.errors import VhError
from vh.heads import rundir
from vh.heads.data import (
    Batching,
    DeviceData,
    device_bytes,
    init_distributed,
    make_mesh,
)
from vh.heads.losses import make_objective
from vh.heads.modules import linear_map as _linear_map
from vh.heads.modules import make_head, unflatten_params
from vh.heads.sampler import manifest_csv, sample_rows
from vh.heads.splits import NAMES, check_nonempty, split_runs
from vh.heads.stream import StreamData
from vh.heads.targets import (
    TargetSpec,
    check_label_sources,
    check_train,
    count_outside,
    link,
    make_spec,
    positive_rate,
    run_index,
    target_values,
    train_targets,
)
from vh.heads.train import make_members, train
from vh.progress import say

__all__ = ["RunHead", "TargetSpec", "fit", "load_run"]


# --------------------------------------------------------------------------- fit: helpers


def _identity(cfg: FitConfig, reader, members) -> dict:
    """What makes two fits the same fit (compared before resuming)."""
    return {
        "fit": to_dict(cfg),
        "fingerprint": reader.fingerprint,
        "grid": [dataclasses.asdict(m) for m in members],
    }


def _check_out(out: Path, cache, resume: bool | None) -> None:
    """Refuse a run dir fit may not write (before the lock: a refused fit leaves nothing).

    Never the cache or a folder holding it; with ``--overwrite`` only a run dir vh made and
    holding only fit's files; without, a folder with no config.json must hold only leftovers.
    """
    cache_path = cache if isinstance(cache, str | Path) else getattr(cache, "path", None)
    durable.check_not_input(out, {"--cache": cache_path})
    if resume is False:
        durable.check_owned(
            out,
            "run",
            files=rundir.RUN_FILES,
            legacy=rundir.is_legacy_run,
            scratch=(rundir.LOCK,),
        )
        return
    if os.path.lexists(out) and not out.is_dir():
        raise VhError("exists and is not a directory", path=out, field="--out", code=3)
    if (out / rundir.CONFIG).exists():
        return
    if out.is_dir() and set(durable.entries(out, (rundir.LOCK,))) - set(rundir.SAMPLING_FILES):
        raise VhError(
            "not a run dir (no config.json) and not empty; choose another --out",
            path=out,
            field="--out",
            code=3,
        )
    if resume:
        raise VhError("nothing to resume (no config.json)", path=out)


def _prepare_dir(out: Path, cache, ident: dict, resume: bool | None) -> bool:
    """Decide fresh start or resume; clear the dir for a fresh start. Returns ``resume``.

    Runs with the lock held; the checks of :func:`_check_out` are repeated here because
    another process may have changed the dir between them and the lock.
    """
    _check_out(out, cache, resume)
    recorded = out / rundir.CONFIG
    if resume is None and not recorded.exists():
        resume = False
    if resume is False:  # --overwrite, or a fresh start: only fit's own files are here
        for p in out.iterdir():
            if p.name not in (rundir.LOCK, durable.MARKER):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        durable.claim(out, "run")  # only the primary process starts a fit afresh
        return False
    rec = rundir.read_config(out)
    old = {
        "fit": rec.get("fit"),
        "fingerprint": rec.get("cache", {}).get("fingerprint"),
        "grid": [{k: g.get(k) for k in ("name", "lr", "wd", "seed")} for g in rec.get("grid", [])],
    }
    durable.remove_temp_files(out)  # writes cut short by a kill
    if old != ident:
        what = _first_difference(old, ident)
        raise VhError(
            f"run dir holds a different fit ({what} differs); pass --overwrite or "
            "choose another --out",
            path=recorded,
            field=what,
        )
    return True


def _first_difference(a, b, key: str = "") -> str:
    """Dotted key of the first value that differs between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else k)
    return key


def _on_device(mode: str, nbytes: int, fraction: float) -> bool:
    """Whether the train and val rows go to the device (``auto``: below the memory share)."""
    if mode != "auto":
        return mode == "always"
    copies = 2 if jax.devices()[0].platform == "cpu" else 1  # host copy + "device" copy
    return copies * nbytes <= fraction * device_bytes()


def _run_config(cfg: FitConfig, reader, spec: TargetSpec, members) -> dict:
    """The run dir's ``config.json``: what was fitted on what."""
    return {
        "vh_version": __version__,
        "fit": to_dict(cfg),
        "cache": {
            "path": str(Path(reader.path).resolve()),
            "fingerprint": reader.fingerprint,
            "n": reader.n,
            "d": reader.d,
            "dtype": str(np.dtype(reader.dtype)),
        },
        "target": spec.to_dict(),
        "grid": [dataclasses.asdict(m) for m in members],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _make_data(cfg: FitConfig, reader, rows: dict, y: dict, mesh) -> DeviceData | StreamData:
    """Train and val rows on the device when they fit (``fit.train.data_on_device``), else a
    stream from the cache."""
    t = cfg.train
    batching = Batching.plan(
        requested=t.batch_size,
        micro=t.microbatch,
        n_train=len(rows["train"]),
        n_dev=mesh.size,
        seed=t.seed,
        states_per_epoch=cfg.sampler.states_per_epoch,
    )
    nbytes = (len(rows["train"]) + len(rows["val"])) * reader.d * np.dtype(reader.dtype).itemsize
    # what both kinds of data hold; they differ in where the embeddings come from
    common = {"y_train": y["train"], "y_val": y["val"], "batching": batching, "mesh": mesh}
    if _on_device(t.data_on_device, nbytes, t.device_memory_fraction):
        x = {"x_train": reader.take(rows["train"]), "x_val": reader.take(rows["val"])}
        return DeviceData(**x, **common)
    return StreamData(
        reader=reader,
        train_rows=rows["train"],
        val_rows=rows["val"],
        prefetch=t.prefetch_chunks,
        **common,
    )


# --------------------------------------------------------------------------- fit


def fit(
    cfg: FitConfig, cache, out, *, grid: dict | None = None, resume: bool | None = None, log=say
) -> dict:
    """Fit a head (or a grid of heads) on an embedding cache; write the run dir.

    Args:
        cfg: the resolved fit config.
        cache: a cache path or an open reader (``vh.cache.reader``).
        out: the run dir.
        grid: ``{"lr": (…), "wd": (…), "seed": (…)}`` (see :func:`vh.heads.train.parse_grid`).
        resume: None = resume a matching run dir, start fresh otherwise; True = must resume;
            False = overwrite.
        log: receives progress lines.

    Returns:
        The run summary (also ``out/summary.json``).
    """
    t_start = time.perf_counter()
    init_distributed()
    out = Path(out)
    members = make_members(cfg.train, grid)
    primary = jax.process_index() == 0  # multi-host: one process owns the run dir
    if primary:  # before the lock and any folder exist: a refused fit leaves nothing
        _check_out(out, cache, resume)
        check_label_sources(cache, cfg.target.kind)  # impossible labels: refused here too
    with rundir.lock(out) if primary else contextlib.nullcontext():
        reader = open_cache(cache) if isinstance(cache, str | Path) else cache
        ident = _identity(cfg, reader, members)
        if primary:
            resume = _prepare_dir(out, cache, ident, resume)
            durable.claim(out, "run")  # a run dir of a vh before markers becomes a marked one
        resume = _agree(resume)  # several hosts: the others follow the primary's decision

        # ---- splits by run, then the rows each split uses
        runs_id, split, cols, rows = _sample(cfg, reader)

        # ---- target, labels and loss
        values = {n: target_values(cfg.target.kind, reader, rows[n]) for n in NAMES}
        spec = make_spec(
            cfg.target, monotone=cfg.head.monotone, train_values=values["train"].get("value")
        )
        check_train(spec, values["train"])  # e.g. a threshold no train run reaches
        y = {n: train_targets(spec, values[n]) for n in ("train", "val")}
        pos_rate = positive_rate(spec, y["train"])
        objective = make_objective(spec, cfg.loss, pos_rate)
        model = make_head(cfg.head.arch, spec, cfg.head)
        outside = {n: count_outside(values[n].get("value", np.zeros(0)), spec) for n in NAMES}

        # ---- record what this fit is, before any training (config.json last)
        if not resume and primary:
            manifest = manifest_csv(rows, cols, cfg.split, cfg.sampler, outside)
            rundir.write_sampling(out, runs_id, split, rows, manifest, cfg.split.seed)
            rundir.write_config(out, _run_config(cfg, reader, spec, members))
        if any(outside.values()):
            log(f"fit: outside the bins (clipped to the end bins): {outside}")

        # ---- data: on the device when it fits, else streamed
        mesh = make_mesh()
        data = _make_data(cfg, reader, rows, y, mesh)
        log(_start_line(cfg, len(members), spec, rows, data, resume))

        # ---- train
        books = train(
            out,
            model,
            objective,
            members,
            cfg.train,
            data,
            reader.d,
            mesh=mesh,
            resume=resume,
            log=log,
        )

        # ---- summary
        seconds = time.perf_counter() - t_start
        return _write_summary(out, members, books, spec, cfg, rows, data.batching, seconds)


def _agree(resume: bool | None) -> bool:
    """The primary process's resume decision, on every process (one process: as given).

    Only the primary looks at the run dir; a resumed fit's other processes then read
    ``last/`` too, so resuming on several hosts needs the run dir on a shared filesystem.
    """
    if jax.process_count() == 1:
        return bool(resume)
    from jax.experimental import multihost_utils

    flag = np.int32(bool(resume) if jax.process_index() == 0 else 0)
    return bool(multihost_utils.broadcast_one_to_all(flag))


def _sample(cfg: FitConfig, reader) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """Split the cache's runs, then sample the rows of each split.

    Returns:
        (run ids, split code per run, the cache columns used, split name -> sorted rows).
    """
    runs_id = np.asarray(reader.runs["id"])
    wheres = cfg.split.train_where + cfg.split.val_where + cfg.split.test_where
    split = split_runs(runs_id, cfg.split, reader.runs_db() if wheres.strip() else None)
    check_nonempty(split, runs_id, cfg.split)
    cols = {k: reader.column(k) for k in ("run_id", "step_index", "step_fraction")}
    rows = sample_rows(cols, split[run_index(reader, cols["run_id"])], cfg.sampler)
    for name in ("train", "val"):
        if not len(rows[name]):
            raise VhError(
                f"split '{name}' has no rows after sampling (step_index bounds "
                f"{cfg.sampler.step_index_min}..{cfg.sampler.step_index_max})",
                field="fit.sampler",
            )
    return runs_id, split, cols, rows


def _start_line(cfg: FitConfig, n_members: int, spec, rows: dict, data, resume: bool) -> str:
    """The progress line before training: heads, target, rows, the batch used, where data is."""
    where = "on the device" if isinstance(data, DeviceData) else "streamed from the cache"
    asked = cfg.train.batch_size
    clamped = f" (of {asked:,} asked)" if data.batch != asked else ""
    return (
        f"fit: {n_members} {cfg.head.arch} head(s), target {spec.kind} ({spec.n_out} "
        f"outputs), {len(rows['train']):,} train / {len(rows['val']):,} val rows, batch "
        f"{data.batch:,}{clamped}, data {where} ({data.mesh.size} device(s))"
        + (", resuming" if resume else "")
    )


def _write_summary(
    out: Path, members, books, spec, cfg: FitConfig, rows, batching: Batching, seconds
) -> dict:
    """``summary.json``: the best member by validation NLL, every member, the batch used."""
    per = {}
    for m in members:
        b = books[m.name]
        per[m.name] = {
            "best_epoch": b.best_epoch,
            "best_val_nll": b.best_nll,
            "epochs_run": b.epochs_run,
            "stopped_early": b.stopped,
            "lr": m.lr,
            "wd": m.wd,
            "seed": m.seed,
        }
    best = min(per, key=lambda n: per[n]["best_val_nll"])
    # only the primary has the run dir (the hosts need not share a filesystem)
    params = rundir.read_best(out, best) if jax.process_index() == 0 else {}
    summary = {
        "best_member": best,
        "members": per,
        "target": spec.to_dict(),
        "arch": cfg.head.arch,
        "n_params": int(sum(v.size for v in params.values())) if params else None,
        "train_rows": len(rows["train"]),
        "val_rows": len(rows["val"]),
        "batch": batching.record(),  # fit.train.batch_size is clamped to the train rows
        "seconds": seconds,
    }
    if jax.process_index() == 0:
        rundir.write_summary(out, summary)
    return summary


# --------------------------------------------------------------------------- reading a run


@dataclass
class RunHead:
    """One trained head of a run dir, ready to predict on embeddings.

    Attributes:
        run_dir, member: where it comes from. spec: the target. arch: ``probe`` | ``mlp``.
        params: flat name → float32 array. config: the run's ``config.json``.
    """

    run_dir: Path
    member: str
    spec: TargetSpec
    arch: str
    params: dict[str, np.ndarray]
    config: dict
    batch: int = 8192
    _fn: object = None

    def _compiled(self):
        if self._fn is None:
            cfg = from_dict(FitConfig, self.config["fit"])
            model = make_head(self.arch, self.spec, cfg.head)
            tree = {"params": unflatten_params(self.params)}
            self._fn = jax.jit(lambda x: model.apply(tree, x, train=False))
        return self._fn

    def logits(self, emb: np.ndarray) -> np.ndarray:
        """Logits [n, n_out] as float64, computed in fixed-size padded batches (one compile)."""
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[1] != self.params_width():
            raise VhError(
                f"expected embeddings [n, {self.params_width()}], got {emb.shape}", field="emb"
            )
        fn, out = self._compiled(), []
        for a in range(0, len(emb), self.batch):
            x = emb[a : a + self.batch]
            pad = np.zeros((self.batch - len(x), x.shape[1]), x.dtype)
            out.append(np.asarray(fn(np.concatenate([x, pad])))[: len(x)])
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, self.spec.n_out))

    def predict(self, emb: np.ndarray) -> np.ndarray:
        """Probabilities or values, float64: ordinal q[n, K] = P(highest_tile >= T_k); tiles
        p[n, K+1]; logscore p[n, n_bins]; return p[n, bins] or value[n] (transformed units)."""
        z = self.logits(emb)
        return np.asarray(link(self.spec)(z.astype(np.float32)), np.float64)

    def linear(self) -> tuple[np.ndarray, np.ndarray]:
        """A probe's affine map ``(weight [out, D], bias [out])``, PyTorch layout (export)."""
        if self.arch != "probe":
            raise VhError(f"{self.arch} head is not affine", path=self.run_dir, field="arch")
        return _linear_map(self.params)

    def params_width(self) -> int:
        return rundir.input_width(self.params, self.run_dir)


def load_run(run_dir, member: str | None = None) -> RunHead:
    """Load a member's best checkpoint from a run dir.

    Args:
        run_dir: a run dir written by :func:`fit`.
        member: a member name (``m000``…); default the best by validation NLL.

    Returns:
        The :class:`RunHead`; VhError naming the file if the run has no checkpoint.
    """
    run_dir = Path(run_dir)
    config = rundir.read_config(run_dir)
    if member is None:
        member = rundir.read_summary(run_dir)["best_member"]
    names = [g["name"] for g in config.get("grid", [])]
    if member not in names:
        raise VhError(
            f"no member {member!r} (run has {', '.join(names)})", path=run_dir, field="member"
        )
    params = rundir.read_best(run_dir, member)
    spec = TargetSpec.from_dict(config["target"])
    return RunHead(run_dir, member, spec, config["fit"]["head"]["arch"], params, config)
