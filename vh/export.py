"""`vh export`: put a trained head back into a trunk init dir.

The head becomes ``value_head.*`` tensors in the init dir's weights and a ``value_head`` block
in its ``config.json``, the format the ecosystem's trunk loaders read; ``vh``'s own
:class:`~vh.extract.trunk.Encoder` then returns the head's output from ``value(tokens)``.

Names (PyTorch layout, weight = (out, in)):
- probe: ``value_head.weight`` (out, H), ``value_head.bias`` (out,)
- mlp (a ``vh`` extension, ``"arch": "mlp"`` in the block): ``value_head.ln.weight/bias``
  (LayerNorm, eps 1e-6 as Flax's), ``value_head.fc1.weight/bias`` (hidden, H), GELU (tanh
  approximation, Flax's default), ``value_head.fc2.weight/bias`` (out, hidden).
A monotone ordinal output layer (score + ordered cut points) is affine, so it is written as a
plain Linear whose rows share the score direction and whose biases are the cut points.

The block: ``{"pooling": "mean", "arch", "objective": {"type": "cross_entropy" | "mse",
"vocab_size", "vocab_type", …}}``, the objective written by the target's kind
(``TargetKind.export_objective`` in ``vh.heads.targets``); ``vocab_type`` names the target:
``ordinal_milestones`` (K independent sigmoid logits, P(highest tile >= T_k); ``thresholds``
lists T_k), ``tile_bucket`` (softmax over K+1 buckets), ``log_score_bins`` (softmax over
log1p(score) bins, ``support`` [lo, hi]), ``muzero_return_bins`` (softmax over h(return) bins,
``support``), or ``mse`` for a scalar return in h() units.

Temperature (``--temperature auto|none|<float>``, default none): the exported logits can be
divided by a temperature T, folded into the output layer (its weight and bias divided by T, so
``softmax(z / T)`` or ``sigmoid(z / T)`` comes out of the head itself); the block records it as
``"temperature"``. ``auto`` recomputes the report's recommendation on the run's validation split
(:func:`vh.eval.calibration.recommend_temperature`: T only when its by-run interval excludes 1
and it lowers the validation NLL) and folds nothing when scaling does not help.

The new init dir is built next to ``--out`` and swapped in by :func:`vh.durable.replace_dir`
(the old one is deleted only once the new one is in place). ``--overwrite`` replaces only an
init dir vh made (marker ``.vh-owner.json`` of kind ``init``, or a pre-marker one whose
``value_head`` names its source run) holding nothing but ``INIT_FILES``; never the run dir, the
trunk, or a folder holding either.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from vh import durable
from vh.cache import fingerprint as fpmod
from vh.errors import VhError
from vh.heads import targets


def _last_layer(params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The output layer as (weight (out, in), bias (out,)), a monotone one made affine."""
    from vh.heads.affine import linear_map  # numpy only: play imports no jax

    last = {
        k: v for k, v in params.items() if k.split(".")[0] in ("out", "score", "cut_b", "cut_inc")
    }
    return linear_map(last)


def head_tensors(rh, temperature: float | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The ``value_head.*`` tensors (float32, PyTorch layout) and config block of a run head.

    Args:
        rh: a :class:`vh.heads.api.RunHead`.
        temperature: T folded into the output layer (weight and bias divided by T); None: 1.

    Returns:
        ``(tensors, block)``.
    """
    spec = rh.spec
    w, b = _last_layer(rh.params)
    if temperature is not None:  # logits / T: the output layer is affine, so fold T into it
        w, b = np.asarray(w, np.float64) / temperature, np.asarray(b, np.float64) / temperature
    if rh.arch == "probe":
        tensors = {"value_head.weight": w, "value_head.bias": b}
    else:
        p = rh.params
        d = p["hidden.kernel"].shape[0]  # vh fit's LayerNorm has no affine: identity scale, 0 bias
        tensors = {
            "value_head.ln.weight": p.get("ln.scale", np.ones(d, np.float32)),
            "value_head.ln.bias": p.get("ln.bias", np.zeros(d, np.float32)),
            "value_head.fc1.weight": p["hidden.kernel"].T,
            "value_head.fc1.bias": p["hidden.bias"],
            "value_head.fc2.weight": w,
            "value_head.fc2.bias": b,
        }
    objective = targets.get(spec.kind).export_objective(spec)  # the target's kind says what it is
    block = {
        "enabled": True,
        "pooling": "mean",
        "arch": rh.arch,
        "objective": objective,
        "source": {"run_dir": str(rh.run_dir), "member": rh.member},
    }
    if temperature is not None:
        block["temperature"] = float(temperature)
    if rh.arch == "mlp":
        block.update(hidden=int(rh.params["hidden.kernel"].shape[1]), activation="gelu_tanh")
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    return tensors, block


def _check_same_trunk(rh, lt, init) -> None:
    """Refuse a head trained on embeddings of another trunk than ``init``."""
    fp = (rh.config.get("cache") or {}).get("fingerprint") or {}
    trunk_fp = fp.get("trunk") or {}
    if trunk_fp.get("kind") == "onehot":
        raise VhError(
            "this head was trained on the one-hot baseline cache, not on a trunk",
            path=rh.run_dir,
            field="cache.fingerprint.trunk",
        )
    want, have = trunk_fp.get("weights_sha256"), lt.weights_sha256
    if fpmod.trunk_differences(trunk_fp, lt.fingerprint, with_config=False):
        raise VhError(
            f"the head was trained on another trunk (weights sha256 {str(want)[:12]} "
            f"in the run's cache, {str(have)[:12]} in the init dir)",
            path=init,
            field="weights",
        )


# what export writes in an init dir: --overwrite replaces a dir holding nothing else
INIT_FILES = ("model.safetensors", "config.json")


def _made_by_export(out: Path) -> bool:
    """An init dir of a vh before ownership markers: its value_head names the run it came from."""
    rec = durable.try_read_json(out / "config.json")
    head = rec.get("value_head") if rec else None
    return isinstance(head, dict) and isinstance(head.get("source"), dict)


def _check_out(run_dir, init, out: Path, overwrite: bool) -> None:
    """Refuse an output dir that is (or holds) the run dir or the trunk, or that vh did not
    make as an init dir; an existing one needs ``overwrite``."""
    durable.check_not_input(out, {"RUN_DIR": run_dir, "--init": init})
    if os.path.lexists(out) and not out.is_dir():
        raise VhError("exists and is not a directory", path=out, field="--out", code=3)
    if out.is_dir() and durable.entries(out):
        if not overwrite:
            raise VhError("output dir exists (pass --overwrite to replace it)", path=out)
        durable.check_owned(out, "init", files=INIT_FILES, legacy=_made_by_export)


def export_head(
    run_dir,
    init,
    out,
    *,
    member: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    trust_pickle: bool = False,
    temperature: str | float | None = None,
    log=None,
) -> Path:
    """Write a new init dir: ``init``'s trunk plus the run's head as ``value_head``.

    Args:
        run_dir: a fitted run dir.
        init: the trunk init dir (or weights file) the run's cache was extracted from.
        out: the new init dir (refused if it exists, unless ``overwrite``; never the run dir,
            the trunk or a folder holding them, never a folder vh did not make as an init dir).
        member: grid member to export (default: the best by validation NLL).
        seed: the random-init seed, for an init dir without weights.
        trust_pickle: unpickle a ``.pt`` trunk fully (runs its code; see ``load_trunk``).
        temperature: ``None`` / ``"none"`` (no scaling), a number T > 0, or ``"auto"`` (the
            report's recommendation, recomputed on the validation split; none when scaling
            does not help).
        log: receives one line saying what ``auto`` decided.

    Returns:
        ``out``.
    """
    import torch
    from safetensors.torch import save_file

    from vh.extract.trunk import load_trunk
    from vh.heads.api import load_run

    out = Path(out)
    durable.recover_dir(out)  # an export killed mid-replace: its old init dir back, temps gone
    _check_out(run_dir, init, out, overwrite)  # before anything is loaded or written
    t = parse_temperature(temperature)  # a bad value is refused before anything is loaded
    rh = load_run(run_dir, member)
    lt = load_trunk(init, seed=seed, trust_pickle=trust_pickle)
    _check_same_trunk(rh, lt, init)
    t = _resolve_temperature(rh, t, log)
    tensors, block = head_tensors(rh, t)
    hidden = lt.config.hidden_size
    width = rh.params_width()
    if width != hidden:
        raise VhError(
            f"head input width {width} != trunk hidden_size {hidden}", path=run_dir, field="params"
        )
    state = {
        k: v.detach().cpu().contiguous()
        for k, v in lt.model.state_dict().items()
        if not k.startswith("value_")
    }
    state.update({k: torch.from_numpy(v) for k, v in tensors.items()})
    config = dict(lt.config_dict)
    config["value_head"] = block
    tmp = durable.temp_dir(out)
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        durable.claim(tmp, "init")
        _check_out(run_dir, init, out, overwrite)  # again: the loading took a while
        durable.replace_dir(tmp, out)  # the old dir is deleted only once the new one is in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# --------------------------------------------------------------------------- temperature


def parse_temperature(value: str | float | None) -> float | str | None:
    """``None`` (no scaling), ``"auto"``, or a finite T > 0; VhError naming --temperature."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not (np.isfinite(t) and t > 0):
        raise VhError(f"expected auto, none or a number > 0, got {value!r}", field="--temperature")
    return t


def _resolve_temperature(rh, t: float | str | None, log) -> float | None:
    """The T to fold: a given number (refused for a head without logits to scale), or the
    recommendation for ``auto`` (None when scaling does not help)."""
    kind = targets.get(rh.spec.kind).temperature
    if t is None:
        return None
    if kind is None:
        if t == "auto":
            return None
        raise VhError(
            f"a {rh.spec.kind} head ({rh.spec.encoding}) has no logits to scale",
            field="--temperature",
        )
    if t != "auto":
        return float(t)
    rec = recommended_temperature(rh)
    if log is not None:
        log(
            f"export: temperature T = {rec['T']:.3f} [{rec['lo']:.3f}, {rec['hi']:.3f}]: "
            + ("folded in" if rec["recommended"] else "not folded")
            + f" ({rec['why']})"
        )
    return float(rec["T"]) if rec["recommended"] else None


def recommended_temperature(rh, cfg=None) -> dict:
    """The report's temperature recommendation for a run head, recomputed on its validation
    split (the same rows, labels, cap and seed as ``vh eval``).

    Returns:
        :func:`vh.eval.calibration.recommend_temperature`'s dict.
    """
    from vh.cache.reader import open_cache
    from vh.config import EvalConfig
    from vh.eval import calibration as C
    from vh.heads import rundir

    cfg = cfg or EvalConfig()
    spec, kind = rh.spec, targets.get(rh.spec.kind)
    cache = rh.config.get("cache", {})
    reader = open_cache(cache["path"], expect_fingerprint=cache["fingerprint"])
    val = rundir.read_sampling(rh.run_dir)["val_rows"].astype(np.int64)
    if val.size > cfg.max_val_rows:
        val = np.sort(np.random.default_rng(cfg.seed).choice(val, cfg.max_val_rows, replace=False))
    if val.size == 0:
        raise VhError("the run has no validation rows to fit a temperature on", path=rh.run_dir)
    logits = np.concatenate(
        [
            rh.logits(reader.take(val[a : a + cfg.predict_batch]))
            for a in range(0, val.size, cfg.predict_batch)
        ]
    )
    out = {"bin_edges": spec.bin_edges} if spec.binned else {}
    values = targets.target_values(spec.kind, reader, val)
    y = kind.eval_labels(values, np.asarray(spec.thresholds), out)
    return C.recommend_temperature(
        logits=logits,
        y=y,
        kind=kind.temperature,
        run_id=np.asarray(reader.column("run_id"))[val],
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        ci=cfg.ci,
    )
