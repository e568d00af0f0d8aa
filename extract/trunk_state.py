"""The resumable state of ``vh trunk train``, without pickle: safetensors + JSON.

After each epoch two files are written into the init dir, each atomically
(:func:`vh.durable.atomic_write`):

1. ``train_state-<epoch>.safetensors``: the model's tensors (``model/<name>``) and AdamW's
   per-parameter tensors (``opt/<name>/<step|exp_avg|exp_avg_sq>``);
2. ``train_state.json``, the commit point: the epoch, the name and sha256 of that tensor
   file, AdamW's param groups and any non-tensor state, the PCG64 shuffle stream's state,
   the per-epoch history and the settings the run was started with (``identity``).

A kill between the two leaves the previous JSON pointing at the previous tensor file (older
ones are deleted only after the JSON is in place). ``torch.save`` is never used: resuming
must not unpickle anything.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vh import durable
from vh.errors import VhError

STATE_JSON = "train_state.json"
STATE_PREFIX = "train_state-"
STATE_FORMAT = 1
# every entry vh trunk train writes in an init dir (--overwrite / resume check against these)
INIT_FILES = ("config.json", "model.safetensors", STATE_JSON, f"{STATE_PREFIX}*.safetensors")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _param_names(model: torch.nn.Module) -> list[str]:
    """Parameter names in ``model.parameters()`` order = AdamW's state indices."""
    return [n for n, _ in model.named_parameters()]


def write_state(
    out: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    rng: np.random.Generator,
    epoch: int,
    history: list[dict],
    identity: dict,
) -> None:
    """Write the state after ``epoch`` finished epochs (see the module docstring)."""
    from safetensors.torch import save_file

    names = _param_names(model)
    sd = opt.state_dict()
    tensors = {
        f"model/{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
    }
    scalars: dict[str, dict] = {}
    for i, st in sd["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt/{names[i]}/{key}"] = v.detach().to("cpu").contiguous()
            else:  # e.g. a float step of an older torch
                scalars.setdefault(names[i], {})[key] = v
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    name = f"{STATE_PREFIX}{epoch:06d}.safetensors"
    durable.atomic_write(out / name, lambda p: save_file(tensors, p))
    durable.atomic_write_json(
        out / STATE_JSON,
        {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "tensors": name,
            "sha256": _sha256(out / name),
            "optimizer": {"param_groups": groups, "scalars": scalars},
            "rng": rng.bit_generator.state,
            "history": history,
            "identity": identity,
        },
        point="trunk-train:state",
    )
    for stale in out.glob(f"{STATE_PREFIX}*.safetensors"):
        if stale.name != name:
            stale.unlink(missing_ok=True)


@dataclass(frozen=True)
class TrainState:
    """A train state read back (:func:`read_state`)."""

    epoch: int
    identity: dict
    history: list
    rng: dict
    optimizer: dict
    tensors: dict[str, torch.Tensor]
    path: Path

    def restore(self, model, opt, rng: np.random.Generator, device) -> None:
        """Put the model weights, AdamW's state and the shuffle stream back."""
        model_sd = {k[6:]: v for k, v in self.tensors.items() if k.startswith("model/")}
        try:
            model.load_state_dict(model_sd, strict=True)
        except RuntimeError as e:
            raise VhError(
                f"train state does not fit the trunk ({e})".splitlines()[0], path=self.path
            ) from None
        model.to(device)
        names = _param_names(model)
        state: dict[int, dict] = {}
        for i, n in enumerate(names):
            per = {
                k.split("/")[-1]: v for k, v in self.tensors.items() if k.startswith(f"opt/{n}/")
            }
            per.update(self.optimizer.get("scalars", {}).get(n, {}))
            if per:
                state[i] = per
        index = {n: i for i, n in enumerate(names)}
        try:
            groups = [
                {**g, "params": [index[n] for n in g["params"]]}
                for g in self.optimizer["param_groups"]
            ]
            opt.load_state_dict({"state": state, "param_groups": groups})
            rng.bit_generator.state = self.rng
        except (KeyError, TypeError, ValueError) as e:
            raise VhError(f"malformed train state ({e})", path=self.path) from None


def read_state(out: Path) -> TrainState | None:
    """The train state in ``out``, or None without ``train_state.json``.

    Raises:
        VhError: the JSON or its tensor file is missing, altered or malformed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = out / STATE_JSON
    if not os.path.lexists(path):
        return None
    rec = durable.read_json(path, STATE_JSON)
    if rec.get("format") != STATE_FORMAT or not isinstance(rec.get("tensors"), str):
        raise VhError("not a train state of this vh (format)", path=path, field="format")
    tfile = out / Path(rec["tensors"]).name  # a bare name: never a path outside out
    if not tfile.is_file() or _sha256(tfile) != rec.get("sha256"):
        raise VhError(
            "its tensor file is missing or altered; --overwrite to start again", path=tfile
        )
    try:
        tensors = load_file(tfile)
    except (SafetensorError, OSError) as e:
        raise VhError(f"not a readable safetensors file ({e})", path=tfile) from None
    try:
        # the JSON fields by name (a missing one is a KeyError: malformed), the epoch an int
        fields = {k: rec[k] for k in ("identity", "history", "rng", "optimizer")}
        return TrainState(epoch=int(rec["epoch"]), tensors=tensors, path=path, **fields)
    except (KeyError, TypeError, ValueError) as e:
        raise VhError(f"malformed train state ({e})", path=path) from None


def clear_state(out: Path) -> None:
    """Delete the train state (the JSON first: without it the tensor files mean nothing)."""
    (out / STATE_JSON).unlink(missing_ok=True)
    for f in out.glob(f"{STATE_PREFIX}*.safetensors"):
        f.unlink(missing_ok=True)


def link_state(src: Path, dst: Path) -> None:
    """Hard-link (or copy) the current train state of ``src`` into ``dst``."""
    path = src / STATE_JSON
    if not path.exists():
        return
    rec = durable.read_json(path, STATE_JSON)
    for name in (rec["tensors"], STATE_JSON):
        try:
            os.link(src / name, dst / name)
        except OSError:
            shutil.copy2(src / name, dst / name)
