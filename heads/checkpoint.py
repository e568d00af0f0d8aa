"""Checkpoint formats: safetensors files with JSON metadata, the resume state, metrics lines.

Which file lives where in a run dir is :mod:`vh.heads.rundir`'s business; this module only
encodes and decodes. Every file is written atomically by :mod:`vh.durable` (temp file in the
same folder, fsync, ``os.replace``, fsync of the folder), so a kill at any instant leaves
either the old or the new version, never a torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from vh import durable
from vh.errors import VhError


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict | None = None
) -> None:
    """Atomic safetensors file; ``metadata`` (JSON-able) travels in its header."""
    arrays = {k: np.asarray(v, order="C") for k, v in tensors.items()}  # keeps 0-d shapes
    meta = None if metadata is None else {"json": json.dumps(metadata)}
    durable.atomic_write(path, lambda p: save_file(arrays, p, metadata=meta))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a safetensors file written by :func:`save_tensors`.

    Returns:
        (tensors, metadata); VhError naming the file if it is missing or unreadable.
    """
    if not Path(path).is_file():
        raise VhError("no checkpoint", path=path)
    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get("json", "{}"))
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise VhError(f"unreadable checkpoint ({e})", path=path) from None


def to_host(x) -> np.ndarray:
    """A (replicated) jax array as numpy, also when other hosts hold copies of it."""
    if hasattr(x, "addressable_data") and not getattr(x, "is_fully_addressable", True):
        x = x.addressable_data(0)
    return np.asarray(x)


def _leaf_names(tree) -> tuple[list[str], list]:
    import jax

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) for p, _ in leaves], [leaf for _, leaf in leaves]


def save_state(path: str | os.PathLike, state, meta: dict) -> None:
    """The whole train state (a pytree) plus bookkeeping, in one atomic file."""
    names, leaves = _leaf_names(state)
    save_tensors(path, {n: to_host(v) for n, v in zip(names, leaves, strict=True)}, meta)


def load_state(path: str | os.PathLike, template):
    """Restore a state saved by :func:`save_state` into the structure of ``template``.

    Returns:
        (state with numpy leaves, meta); VhError if a leaf is missing or has another shape.
    """
    import jax

    tensors, meta = load_tensors(path)
    names, leaves = _leaf_names(template)
    out = []
    for n, t in zip(names, leaves, strict=True):
        if n not in tensors or tensors[n].shape != np.shape(t):
            raise VhError(
                f"resume state does not match this fit (leaf {n})", path=path, field="last"
            )
        out.append(tensors[n])
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), out), meta


class MetricsLog:
    """Append-only JSON lines; ``truncate`` drops what was written after a resume point."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int) -> None:
        with open(self.path, "a+b") as f:
            f.truncate(size)

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())
