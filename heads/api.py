"""The run dir: :func:`fit` writes it, :func:`load_run` reads it back (for eval and export).

``RUN_DIR`` holds ``config.json`` (resolved fit config, cache identity, target spec, grid),
``split.npz`` (the split of every run, and the seed), ``sampling.npz`` (the sorted cache rows
of each split), ``sampling_manifest.csv``, ``members/NAME/{best.safetensors, metrics.jsonl,
summary.json}``, ``summary.json`` (the best member by validation NLL), ``last/`` (resume
state) and ``lock``.

Rerunning the same ``vh fit`` on a run dir resumes it; a run dir holding a different fit
(another config, cache or grid) is refused unless ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from vh import __version__
from vh.cache.reader import open_cache
from vh.config import FitConfig, from_dict, to_dict
from vh.errors import VhError
from vh.heads import checkpoint as ck
from vh.heads.losses import make_objective
from vh.heads.modules import linear_map as _linear_map
from vh.heads.modules import make_head, unflatten_params
from vh.heads.sampler import manifest_csv, sample_rows
from vh.heads.splits import NAMES, check_nonempty, split_runs
from vh.heads.targets import (
    TargetSpec,
    count_outside,
    link,
    make_spec,
    run_index,
    target_values,
    train_targets,
)
from vh.heads.train import (
    DeviceData,
    StreamData,
    batch_layout,
    device_bytes,
    init_distributed,
    make_members,
    make_mesh,
    train,
)
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


# written before config.json; without it they are leftovers of a fit killed at its start
_SAMPLING_FILES = {"split.npz", "sampling.npz", "sampling_manifest.csv"}


def _prepare_dir(out: Path, ident: dict, resume: bool | None) -> bool:
    """Decide fresh start or resume; clear the dir for a fresh start. Returns ``resume``."""
    recorded = out / "config.json"
    others = [p for p in out.iterdir() if p.name != "lock"]
    if resume is not False and not recorded.exists():
        if {p.name for p in others} - _SAMPLING_FILES:
            raise VhError(
                "not a run dir (no config.json) and not empty; pass --overwrite or "
                "choose another --out",
                path=out,
            )
        if resume:
            raise VhError("nothing to resume (no config.json)", path=out)
        resume = False
    if resume is False:  # --overwrite, or a fresh start
        for p in others:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        return False
    rec = ck.read_json(recorded, "config.json")
    old = {
        "fit": rec.get("fit"),
        "fingerprint": rec.get("cache", {}).get("fingerprint"),
        "grid": [{k: g.get(k) for k in ("name", "lr", "wd", "seed")} for g in rec.get("grid", [])],
    }
    for tmp in out.rglob(".*.tmp-*"):  # a write cut short by a kill (checkpoint.atomic_write)
        tmp.unlink()
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


def _check_reached(spec: TargetSpec, highest_tile: np.ndarray) -> None:
    """Refuse a threshold no train run reaches: its classifier could only learn 'never'."""
    if spec.kind not in ("ordinal", "tiles"):
        return
    top = int(highest_tile.max())
    for t in spec.thresholds:
        if t > top:
            raise VhError(
                f"threshold {t} is reached by no train run (highest tile in train: "
                f"{top}); lower or drop it, e.g. --set fit.target.thresholds=[...]",
                field="fit.target.thresholds",
            )


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
    batch, micro = batch_layout(t.batch_size, t.microbatch, len(rows["train"]), mesh.size)
    nbytes = (len(rows["train"]) + len(rows["val"])) * reader.d * np.dtype(reader.dtype).itemsize
    if _on_device(t.data_on_device, nbytes, t.device_memory_fraction):
        return DeviceData(
            reader.take(rows["train"]),
            y["train"],
            reader.take(rows["val"]),
            y["val"],
            batch,
            mesh,
            t.seed,
            cfg.sampler.states_per_epoch,
            micro,
        )
    return StreamData(
        reader,
        rows["train"],
        y["train"],
        rows["val"],
        y["val"],
        batch,
        mesh,
        t.prefetch_chunks,
        t.seed,
        cfg.sampler.states_per_epoch,
        micro,
    )


def _write_sampling(out: Path, run_ids, split, rows: dict, manifest: str, seed: int) -> None:
    def npz(path, **arrays):
        def write(p):
            with open(p, "wb") as f:
                np.savez_compressed(f, **arrays)

        ck.atomic_write(path, write)

    npz(out / "split.npz", run_id=np.asarray(run_ids, np.int64), split=split, seed=seed)
    npz(out / "sampling.npz", **{f"{n}_rows": rows[n] for n in NAMES})
    ck.atomic_write(out / "sampling_manifest.csv", lambda p: Path(p).write_text(manifest))


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
    with ck.RunLock(out) if primary else contextlib.nullcontext():
        reader = open_cache(cache) if isinstance(cache, str | Path) else cache
        resume = _prepare_dir(out, _identity(cfg, reader, members), resume if primary else True)

        # ---- splits by run, then the rows each split uses
        runs_id = np.asarray(reader.runs["id"])
        db = (
            reader.runs_db()
            if (cfg.split.train_where + cfg.split.val_where + cfg.split.test_where).strip()
            else None
        )
        split = split_runs(runs_id, cfg.split, db)
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

        # ---- target, labels and loss
        values = {n: target_values(cfg.target.kind, reader, rows[n]) for n in NAMES}
        spec = make_spec(
            cfg.target, monotone=cfg.head.monotone, train_values=values["train"].get("value")
        )
        _check_reached(spec, values["train"]["highest_tile"])
        y = {n: train_targets(spec, values[n]) for n in ("train", "val")}
        pos_rate = y["train"].mean(0) if spec.kind == "ordinal" else None
        objective = make_objective(spec, cfg.loss, pos_rate)
        model = make_head(cfg.head.arch, spec, cfg.head)
        outside = {n: count_outside(values[n].get("value", np.zeros(0)), spec) for n in NAMES}

        # ---- record what this fit is, before any training (config.json last)
        if not resume and primary:
            manifest = manifest_csv(rows, cols, cfg.split, cfg.sampler, outside)
            _write_sampling(out, runs_id, split, rows, manifest, cfg.split.seed)
            ck.write_json(out / "config.json", _run_config(cfg, reader, spec, members))
        if any(outside.values()):
            log(f"fit: outside the bins (clipped to the end bins): {outside}")

        # ---- data: on the device when it fits, else streamed
        mesh = make_mesh()
        data = _make_data(cfg, reader, rows, y, mesh)
        where = "on the device" if isinstance(data, DeviceData) else "streamed from the cache"
        log(
            f"fit: {len(members)} {cfg.head.arch} head(s), target {spec.kind} ({spec.n_out} "
            f"outputs), {len(rows['train']):,} train / {len(rows['val']):,} val rows, batch "
            f"{data.batch:,}, data {where} ({mesh.size} device(s))"
            + (", resuming" if resume else "")
        )

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
        return _write_summary(out, members, books, spec, cfg, rows, time.perf_counter() - t_start)


def _write_summary(out: Path, members, books, spec, cfg: FitConfig, rows, seconds) -> dict:
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
    params, _ = ck.load_tensors(out / "members" / best / "best.safetensors")
    summary = {
        "best_member": best,
        "members": per,
        "target": spec.to_dict(),
        "arch": cfg.head.arch,
        "n_params": int(sum(v.size for v in params.values())),
        "train_rows": len(rows["train"]),
        "val_rows": len(rows["val"]),
        "seconds": seconds,
    }
    if jax.process_index() == 0:
        for name, s in per.items():
            ck.write_json(out / "members" / name / "summary.json", s)
        ck.write_json(out / "summary.json", summary)
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
        for name in ("hidden.kernel", "out.kernel", "score.kernel"):
            if name in self.params:
                return int(self.params[name].shape[0])
        raise VhError("checkpoint has no input layer", path=self.run_dir, field="params")


def load_run(run_dir, member: str | None = None) -> RunHead:
    """Load a member's best checkpoint from a run dir.

    Args:
        run_dir: a run dir written by :func:`fit`.
        member: a member name (``m000``…); default the best by validation NLL.

    Returns:
        The :class:`RunHead`; VhError naming the file if the run has no checkpoint.
    """
    run_dir = Path(run_dir)
    config = ck.read_json(run_dir / "config.json", "config.json (not a run dir?)")
    if member is None:
        member = ck.read_json(run_dir / "summary.json", "summary.json (fit not finished?)")[
            "best_member"
        ]
    names = [g["name"] for g in config.get("grid", [])]
    if member not in names:
        raise VhError(
            f"no member {member!r} (run has {', '.join(names)})", path=run_dir, field="member"
        )
    best = run_dir / "members" / member / "best.safetensors"
    params, _ = ck.load_tensors(best)
    for key, value in params.items():  # NaN weights would give a silent NaN report or export
        if not np.all(np.isfinite(value)):
            raise VhError("non-finite weights (NaN or inf)", path=best, field=key)
    spec = TargetSpec.from_dict(config["target"])
    return RunHead(run_dir, member, spec, config["fit"]["head"]["arch"], params, config)
