"""Reading a trunk's weight file without running code from it.

A ``.safetensors`` file holds tensors only. A ``.pt`` bundle is a pickle, and unpickling runs
whatever it names: it is read with torch's ``weights_only`` allowlist (tensors, dicts, numbers,
strings), and one that needs more is refused unless the user passes ``--trust-pickle``. Either
way the file is read once, so the sha256 recorded is that of the very bytes parsed.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import sys
from pathlib import Path

import torch

from vh.errors import VhError, require_regular_file

KEY_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DataParallel/DDP wrappers


def read_weights(
    path: Path, trust_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], dict | None, str]:
    """The state dict (prefixes stripped), a bundle's ``encoder_config``, and the sha256.

    The file is read once: the hash in the fingerprint is the hash of the very bytes parsed,
    even if the file is replaced meanwhile.
    """
    data = Path(require_regular_file(path, field="weights")).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if path.suffix == ".safetensors":
        from safetensors.torch import load as load_safetensors

        try:
            state, config = load_safetensors(data), None
        except Exception as e:  # safetensors raises its own error type for a bad header
            raise VhError(f"cannot read safetensors ({type(e).__name__}: {e})", path=path) from None
    else:
        state, config = _read_bundle(data, path, trust_pickle)
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise VhError(f"expected a tensor, got {type(v).__name__}", path=path, field=k)
    return normalize_keys(state, path), config, sha


# the refusal of a bundle that needs more than the allowlist: what it is, and both ways out
PICKLE_REFUSAL = (
    "holds pickled objects beyond tensors and plain containers ({what}), and unpickling them "
    "can run code from the file: refused. Convert it to safetensors once, on a machine where you trust "
    "it (in Python: bundle = torch.load(path, weights_only=False); "
    "safetensors.torch.save_file(bundle['model'], 'model.safetensors'); write its "
    "encoder_config as config.json beside it), or pass --trust-pickle if you trust this file"
)


def _read_bundle(data: bytes, path: Path, trust_pickle: bool) -> tuple[dict, dict | None]:
    """A ``.pt`` file: ``{"model": state dict, "encoder_config": dict, ...}`` or a bare state dict.

    Unpickled with torch's ``weights_only`` allowlist, which cannot run code; a file that
    needs anything else is refused, or with ``trust_pickle`` unpickled fully.
    """
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch says so for a damaged pickle too
        what = _disallowed_global(str(e))
        if what is None and not trust_pickle:
            raise VhError(f"cannot read .pt file ({_first_line(e)})", path=path) from None
        if not trust_pickle:  # a global outside the allowlist: may be code
            raise VhError(PICKLE_REFUSAL.format(what=what), path=path, field="weights") from None
        print(
            f"warning: {path}: unpickling fully (--trust-pickle): this runs any code the file "
            "holds",
            file=sys.stderr,
            flush=True,
        )
        obj = _load_pickle_trusted(data, path)
    except Exception as e:  # truncated zip, not a torch file, ...
        raise VhError(f"cannot read .pt file ({type(e).__name__}: {e})", path=path) from None
    if not isinstance(obj, dict):
        raise VhError(f"expected a dict bundle, got {type(obj).__name__}", path=path)
    if "model" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, None  # a bare state dict
        raise VhError("bundle has no 'model' state dict", path=path, field="model")
    state, config = obj["model"], obj.get("encoder_config")
    if not isinstance(state, dict):
        raise VhError(
            f"expected a state dict, got {type(state).__name__}", path=path, field="model"
        )
    if config is not None and not isinstance(config, dict):
        raise VhError(
            f"expected a dict, got {type(config).__name__}", path=path, field="encoder_config"
        )
    return state, config


def _disallowed_global(message: str) -> str | None:
    """The global torch's allowlist refused (``builtins.open``), or None for other failures."""
    m = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    return m.group(1) if m else None


def _first_line(e: Exception) -> str:
    """torch's unpickling errors are pages long: the part that says what went wrong."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return (m.group(1) if m else text.split("\n", 1)[0])[:200]


def _load_pickle_trusted(data: bytes, path: Path):
    """Full unpickling, asked for with ``--trust-pickle`` (runs the file's code)."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as e:  # a class the file names that this Python lacks, ...
        raise VhError(f"cannot read .pt file ({type(e).__name__}: {e})", path=path) from None


def normalize_keys(state: dict, path: str | os.PathLike | None = None) -> dict:
    """Strip ``_orig_mod.`` / ``module.`` prefixes (any number, any order) from the keys."""
    out: dict = {}
    for key, value in state.items():
        k = key
        while k.startswith(KEY_PREFIXES):
            k = k.split(".", 1)[1]
        if k in out:
            raise VhError(f"two keys become {k!r} once prefixes are stripped", path=path, field=key)
        out[k] = value
    return out
