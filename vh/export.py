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
"vocab_size", "vocab_type", …}}`` where ``vocab_type`` names the target:
``ordinal_milestones`` (K independent sigmoid logits, P(highest tile >= T_k); ``thresholds``
lists T_k), ``tile_bucket`` (softmax over K+1 buckets), ``log_score_bins`` (softmax over
log1p(score) bins, ``support`` [lo, hi]), ``muzero_return_bins`` (softmax over h(return) bins,
``support``), or ``mse`` for a scalar return in h() units.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from vh.errors import VhError

VOCAB_TYPES = {
    "ordinal": "ordinal_milestones",
    "tiles": "tile_bucket",
    "logscore": "log_score_bins",
    "return": "muzero_return_bins",
}


def _last_layer(params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The output layer as (weight (out, in), bias (out,)), a monotone one made affine."""
    from vh.heads.modules import linear_map

    last = {
        k: v for k, v in params.items() if k.split(".")[0] in ("out", "score", "cut_b", "cut_inc")
    }
    return linear_map(last)


def head_tensors(rh) -> tuple[dict[str, np.ndarray], dict]:
    """The ``value_head.*`` tensors (float32, PyTorch layout) and config block of a run head.

    Args:
        rh: a :class:`vh.heads.api.RunHead`.

    Returns:
        ``(tensors, block)``.
    """
    spec = rh.spec
    w, b = _last_layer(rh.params)
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
    if spec.encoding == "scalar":
        objective = {"type": "mse", "vocab_size": 1, "vocab_type": "muzero_return"}
    else:
        objective = {
            "type": "cross_entropy",
            "vocab_size": int(spec.n_out),
            "vocab_type": VOCAB_TYPES[spec.kind],
        }
        if spec.kind in ("ordinal", "tiles"):
            objective["thresholds"] = [int(t) for t in spec.thresholds]
        if spec.binned:
            objective["support"] = [float(spec.lo), float(spec.hi)]
    block = {
        "enabled": True,
        "pooling": "mean",
        "arch": rh.arch,
        "objective": objective,
        "source": {"run_dir": str(rh.run_dir), "member": rh.member},
    }
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
    if want != have or (want is None and trunk_fp.get("seed") != lt.seed):
        raise VhError(
            f"the head was trained on another trunk (weights sha256 {str(want)[:12]} "
            f"in the run's cache, {str(have)[:12]} in the init dir)",
            path=init,
            field="weights",
        )


def export_head(
    run_dir, init, out, *, member: str | None = None, overwrite: bool = False, seed: int = 0
) -> Path:
    """Write a new init dir: ``init``'s trunk plus the run's head as ``value_head``.

    Args:
        run_dir: a fitted run dir.
        init: the trunk init dir (or weights file) the run's cache was extracted from.
        out: the new init dir (refused if it exists, unless ``overwrite``).
        member: grid member to export (default: the best by validation NLL).
        seed: the random-init seed, for an init dir without weights.

    Returns:
        ``out``.
    """
    import torch
    from safetensors.torch import save_file

    from vh.extract.trunk import load_trunk
    from vh.heads.api import load_run

    rh = load_run(run_dir, member)
    lt = load_trunk(init, seed=seed)
    _check_same_trunk(rh, lt, init)
    tensors, block = head_tensors(rh)
    hidden = lt.config.hidden_size
    width = rh.params_width()
    if width != hidden:
        raise VhError(
            f"head input width {width} != trunk hidden_size {hidden}", path=run_dir, field="params"
        )
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise VhError("output dir exists (pass --overwrite to replace it)", path=out)
    state = {
        k: v.detach().cpu().contiguous()
        for k, v in lt.model.state_dict().items()
        if not k.startswith("value_")
    }
    state.update({k: torch.from_numpy(v) for k, v in tensors.items()})
    config = dict(lt.config_dict)
    config["value_head"] = block
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
