"""Loading a frozen trunk: locating an init dir's files, reading the weights safely, strict
state-dict loading, seeded init dirs, and the raw-board (one-hot) baseline.

Where the rest lives: the config.json format and each field's valid range in
:mod:`vh.extract.trunk_config`, the network (``Encoder``, its parameter names = the checkpoint
format) in :mod:`vh.extract.encoder`, reading a weight file without running code from it in
:mod:`vh.extract.trunk_weights`. Their public names are re-exported here, so
``from vh.extract.trunk import Encoder, TrunkConfig`` keeps working.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vh.errors import VhError, require_regular_file
from vh.extract.encoder import (
    VALUE_LN_EPS,
    Attention,
    Block,
    Encoder,
    MlpValueHead,
    PositionEmbedding,
    SwiGLU,
)
from vh.extract.trunk_config import (
    BINS_MAX,
    HEAD_TYPES,
    MAX_PARAMETERS,
    PRESETS,
    TrunkConfig,
    ValueHeadSpec,
    preset_config,
    read_field,
)
from vh.extract.trunk_weights import KEY_PREFIXES, PICKLE_REFUSAL, normalize_keys, read_weights

__all__ = [  # the names other modules and tests import from here
    "BINS_MAX",
    "HEAD_TYPES",
    "KEY_PREFIXES",
    "MAX_PARAMETERS",
    "PICKLE_REFUSAL",
    "PRESETS",
    "VALUE_LN_EPS",
    "WEIGHT_NAMES",
    "Attention",
    "Block",
    "Encoder",
    "LoadedTrunk",
    "MlpValueHead",
    "NullTrunk",
    "OneHotTrunk",
    "PositionEmbedding",
    "SwiGLU",
    "TrunkConfig",
    "ValueHeadSpec",
    "load_null",
    "load_onehot",
    "load_trunk",
    "normalize_keys",
    "preset_config",
    "trunk_dim",
    "write_init_dir",
]


# weights in an init dir, in the order they are looked up (the ecosystem's loader order)
WEIGHT_NAMES = (
    "model-best.safetensors",
    "model-stable.safetensors",
    "model.safetensors",
    "model-final.safetensors",
    "model-stable.pt",
    "model.pt",
)


class OneHotTrunk(nn.Module):
    """The raw-board baseline: no network; the "embedding" is the flattened one-hot board.

    Args:
        vocab: token values 0..vocab-1 (16, or 17 with 65536 tiles).
        cells: tokens per board.
    """

    def __init__(self, vocab: int = 16, cells: int = 16):
        super().__init__()
        self.vocab, self.cells = vocab, cells
        self.dim = vocab * cells

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """float32 (B, cells·vocab): cell i's one-hot at ``[i·vocab, (i+1)·vocab)``."""
        return F.one_hot(tokens.long(), self.vocab).flatten(1).float()  # (B, 16·V)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pooled(tokens)

    def pooled_into(self, tokens: torch.Tensor, out: torch.Tensor) -> None:
        """Write :meth:`pooled` (in ``out``'s dtype) straight into ``out`` ``(B, cells·vocab)``.

        CPU tensors only. Same values as ``pooled(tokens).to(out.dtype)`` without its four
        (B, 16·V) temporaries (int64 one-hot, float32 copy, cast): the extract pipeline fills
        its reused chunk buffer. In numpy: one zero fill and one scatter of B·16 ones, ~30×
        faster than torch's one_hot + casts on a busy 2-core VM (bench extract).
        """
        o = out.numpy()  # (B, cells·vocab), contiguous rows of the unit buffer
        o[...] = 0
        t = tokens.numpy().astype(np.intp)  # (B, cells)
        rows = np.arange(len(t))[:, None]
        o[rows, np.arange(self.cells) * self.vocab + t] = 1


class NullTrunk(nn.Module):
    """A benchmark trunk: zeros of width ``dim``, at no cost (``extract.trunk = "null"``).

    Not for studies: it only lets ``vh bench extract`` measure the pipeline around a trunk
    (decode, columns, write) with nothing in the way.
    """

    def __init__(self, dim: int = 256, vocab: int = 17):
        super().__init__()
        self.dim, self.vocab = dim, vocab

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """float32 ``(B, dim)`` zeros."""
        return torch.zeros((tokens.shape[0], self.dim), device=tokens.device)

    def pooled_into(self, tokens: torch.Tensor, out: torch.Tensor) -> None:
        """Zeros into ``out`` (CPU), like :meth:`OneHotTrunk.pooled_into`."""
        out.numpy()[...] = 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pooled(tokens)


def trunk_dim(model: nn.Module) -> int:
    """Width D of ``model.pooled``'s output, for an Encoder, a OneHotTrunk or a NullTrunk."""
    if isinstance(model, Encoder):
        return model.config.hidden_size
    if isinstance(model, (OneHotTrunk, NullTrunk)):
        return model.dim
    raise TypeError(f"not a trunk: {type(model).__name__}")


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class LoadedTrunk:
    """A trunk ready to run, and what it was built from.

    Attributes:
        model: an eval-mode, frozen ``Encoder`` (or ``OneHotTrunk``) on the requested device.
        config: the parsed ``TrunkConfig`` (None for the one-hot baseline).
        source: the weights file read, or None for a random init / the baseline.
        weights_sha256: sha256 of that file's bytes, or None.
        config_dict: the resolved config as a JSON-able dict (extra keys kept).
        seed: the random-init seed when there were no weights, else None.
    """

    model: nn.Module
    config: TrunkConfig | None
    source: str | None
    weights_sha256: str | None
    config_dict: dict
    seed: int | None = None

    @property
    def dim(self) -> int:
        return trunk_dim(self.model)

    @property
    def fingerprint(self) -> dict:
        """What the embeddings depend on: kind, config, weights hash (or the random seed)."""
        kinds = {OneHotTrunk: "onehot", NullTrunk: "null"}
        fp = {
            "kind": kinds.get(type(self.model), "init"),
            "config": self.config_dict,
            "weights_sha256": self.weights_sha256,
        }
        if self.seed is not None:
            fp["seed"] = self.seed
        return fp


def load_onehot(vocab: int = 16) -> LoadedTrunk:
    """The raw-board baseline as a LoadedTrunk (same interface as :func:`load_trunk`)."""
    return LoadedTrunk(OneHotTrunk(vocab), None, None, None, {"kind": "onehot", "vocab": vocab})


def load_null(dim: int = 256) -> LoadedTrunk:
    """The benchmark trunk (zeros of width ``dim``) as a LoadedTrunk; see :class:`NullTrunk`."""
    return LoadedTrunk(NullTrunk(dim), None, None, None, {"kind": "null", "dim": dim})


def load_trunk(
    init: str | os.PathLike,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_pickle: bool = False,
) -> LoadedTrunk:
    """Build the trunk from an init dir, a ``.pt`` bundle or a ``.safetensors`` file.

    Loading is strict: missing, unexpected or mis-shaped keys and non-finite weights raise
    VhError naming the file. An init dir without weights gives a seeded random trunk, with a
    warning on stderr. Nothing in the files runs code: a ``.pt`` bundle is unpickled with
    torch's ``weights_only`` allowlist (tensors, dicts, numbers, strings), and one that needs
    more is refused unless ``trust_pickle``.

    Args:
        init: init dir (config.json + weights looked up in ``WEIGHT_NAMES`` order), a ``.pt``
            bundle (``model`` state dict + ``encoder_config``), or a ``.safetensors`` file with
            config.json beside it.
        seed: seed of the random init when there are no weights.
        device: where the model goes.
        dtype: the model's parameter dtype (float32, bfloat16, ...).
        trust_pickle: unpickle a ``.pt`` bundle fully when the allowlist refuses it. That
            RUNS any code the file holds (``--trust-pickle``): only for files you trust.

    Returns:
        A :class:`LoadedTrunk`.
    """
    # ---- find the files
    config_path, weights_path = _locate(Path(init))
    raw = _read_json(config_path) if config_path is not None else {}
    where = config_path
    state, weights_sha256 = None, None
    if weights_path is not None:
        state, bundle_cfg, weights_sha256 = read_weights(weights_path, trust_pickle)
        if bundle_cfg is not None:  # a bundle's encoder_config wins over config.json
            raw, where = {**raw, **bundle_cfg}, weights_path
    if where is None:
        raise VhError(
            "a .pt bundle without encoder_config needs a config.json beside it",
            path=weights_path,
            field="encoder_config",
        )

    # ---- parse the config, the head taken from the weights where they have one
    raw = _resolve_head(raw, state, where)
    cfg = TrunkConfig.from_dict(raw, where)

    # ---- build, then fill strictly (or randomly, loudly)
    model = Encoder(cfg)
    if state is None:
        print(
            f"warning: no weights in {init}: using a RANDOM trunk (seed {seed})",
            file=sys.stderr,
            flush=True,
        )
        model.init_weights(seed)
    else:
        _check_state(model, state, weights_path)
        model.load_state_dict(state, strict=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return LoadedTrunk(
        model=model,
        config=cfg,
        source=None if weights_path is None else str(weights_path),
        weights_sha256=weights_sha256,
        config_dict=raw,
        seed=seed if state is None else None,
    )


def _locate(init: Path) -> tuple[Path | None, Path | None]:
    """(config.json or None, weights file or None) for an init dir or a weights file.

    Every file returned is a regular file (links resolved): a FIFO or a device named like
    one would make the read block forever, so it is refused here, before anything opens it.
    """
    if init.is_dir():
        config = init / "config.json"
        if not _present(config):
            raise VhError("init dir has no config.json", path=init, field="config.json")
        require_regular_file(config, field="config.json")
        # the first name present wins, whatever it is: a FIFO named model.safetensors is
        # refused, never skipped for the next name (or a random trunk)
        weights = next((init / n for n in WEIGHT_NAMES if _present(init / n)), None)
        if weights is not None:
            require_regular_file(weights, field="weights")
        return config, weights
    if not _present(init):
        raise VhError("no such init dir or weights file", path=init)
    beside = init.parent / "config.json"
    if init.suffix in (".pt", ".pth"):
        require_regular_file(init, field="weights")
        if not _present(beside):
            return None, init
        return Path(require_regular_file(beside, field="config.json")), init
    if init.suffix == ".safetensors":
        require_regular_file(init, field="weights")
        if not _present(beside):
            raise VhError(
                "a .safetensors file needs a config.json beside it", path=init, field="config.json"
            )
        return Path(require_regular_file(beside, field="config.json")), init
    raise VhError("expected an init dir, a .pt bundle or a .safetensors file", path=init)


def _present(path: Path) -> bool:
    """Whether anything is at ``path``, a dangling link included (refused when read)."""
    return path.exists() or path.is_symlink()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    # ValueError: bad syntax, not UTF-8, or an integer of more than 4300 digits
    except ValueError as e:
        raise VhError(f"not valid JSON ({e})", path=path) from None
    except RecursionError:
        raise VhError("not valid JSON (nested too deeply)", path=path) from None


def _resolve_head(raw: dict, state: dict | None, where) -> dict:
    """Take head_type (and bins) from the weights' keys; say so where config.json disagrees.

    A value config.json gives is checked first: one that cannot be true (``output_n_bins``
    of 0, a head type that does not exist) is an error, not a warning the weights paper over.
    """
    if state is None:
        return raw
    if any(k.startswith("policy_head.") for k in state):
        head = {"head_type": "action_policy"}
    elif "ev_heads.0.weight" in state:
        head = {"head_type": "binned_ev", "output_n_bins": int(state["ev_heads.0.weight"].shape[0])}
    else:
        return raw  # no head in the weights: strict loading will list the missing keys
    for k, v in head.items():
        if raw.get(k) is not None and read_field(TrunkConfig, k, raw, where) != v:
            print(
                f"warning: {where}: {k} is {raw[k]!r} but the weights say {v!r}: using {v!r}",
                file=sys.stderr,
            )
    return {**raw, **head}


def _short_list(names: list[str], n: int = 8) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _check_state(model: Encoder, state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise one VhError line listing every key that does not fit, or a non-finite tensor."""
    vocab = model.config.input_vocab_size
    tok = state.get("tok_emb.weight")
    if tok is not None and tok.ndim == 2 and tok.shape[0] != vocab:
        raise VhError(
            f"config input_vocab_size is {vocab} but tok_emb.weight has {tok.shape[0]} rows",
            path=path,
            field="input_vocab_size",
        )
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {want[k]}"
        for k in sorted(set(want) & set(state))
        if tuple(state[k].shape) != want[k]
    ]
    problems = [
        f"{what} ({len(keys)}): {_short_list(keys)}"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", misshaped),
        )
        if keys
    ]
    if problems:
        raise VhError("weights do not fit the trunk config: " + "; ".join(problems), path=path)
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise VhError("non-finite values (NaN or inf) in this tensor", path=path, field=k)


# --------------------------------------------------------------------------- init dirs


def write_init_dir(
    out: str | os.PathLike,
    preset: str = "tiny",
    seed: int = 0,
    *,
    vocab: int = 16,
    head_type: str = "binned_ev",
    bins: int = 32,
    qk_norm: bool = False,
    sinks: bool = False,
) -> Path:
    """Write an init dir holding a seeded random-weight trunk.

    Args:
        out: the directory (created; refused if it already holds a config.json).
        preset: a key of :data:`PRESETS`.
        seed: weight seed (:meth:`Encoder.init_weights`).
        vocab, head_type, bins, qk_norm, sinks: the config.json fields they name.

    Returns:
        ``out`` as a Path: config.json (recording preset and seed under ``vh_init``) and
        model.safetensors.
    """
    from safetensors.torch import save_file

    import vh

    raw = preset_config(
        preset, vocab=vocab, head_type=head_type, bins=bins, qk_norm=qk_norm, sinks=sinks
    )
    raw["vh_init"] = {"preset": preset, "seed": seed, "vh_version": vh.__version__}
    model = Encoder(TrunkConfig.from_dict(raw, f"preset {preset}")).init_weights(seed)
    out = Path(out)
    if (out / "config.json").exists():
        raise VhError(
            "already holds a trunk (config.json); remove it or choose another --out",
            path=out,
            code=3,
        )
    out.mkdir(parents=True, exist_ok=True)
    # weights first, config last: a dir with a config.json is a complete one
    _atomic(out / "model.safetensors", lambda p: save_file(model.state_dict(), p))
    _atomic(out / "config.json", lambda p: Path(p).write_text(json.dumps(raw, indent=2) + "\n"))
    return out


def _atomic(path: Path, write) -> None:
    """Write atomically with fsync of the file and its folder (:func:`vh.durable.atomic_write`)."""
    from vh import durable

    durable.atomic_write(path, write)
