"""The frozen trunk: its config, the ``Encoder``, the init-dir loader, seeded init dirs, and the
raw-board (one-hot) baseline.

The parameter names below ARE the checkpoint format of the existing 2048 trunks (DESIGN §2);
renaming a submodule breaks loading them::

    tok_emb.weight                         (V, H)
    pos_emb.pos_emb.weight                 (max_pos, H)
    blocks.{i}.attn_norm.weight            (H,)         RMSNorm, eps = layer_norm_eps
    blocks.{i}.attn.wq.weight              (nh·hd, H)   no biases in attn / mlp
    blocks.{i}.attn.wk.weight              (nkv·hd, H)
    blocks.{i}.attn.wv.weight              (nkv·hd, H)
    blocks.{i}.attn.wo.weight              (H, H)
    blocks.{i}.attn.q_norm.weight          (hd,)        use_qk_norm
    blocks.{i}.attn.k_norm.weight          (hd,)        use_qk_norm
    blocks.{i}.attn.sinks                  (nh,)        use_attention_sinks, layout (nkv, g)
    blocks.{i}.mlp_norm.weight             (H,)
    blocks.{i}.mlp.w_gate.weight           (F, H)       SwiGLU: w_down(silu(w_gate x) * w_up x)
    blocks.{i}.mlp.w_up.weight             (F, H)
    blocks.{i}.mlp.w_down.weight           (H, F)
    final_ln.weight                        (H,)
    ev_heads.{0..3}.weight / .bias         (bins, H)    head_type binned_ev
    policy_head.weight / .bias             (4, H)       head_type action_policy
    value_head.weight / .bias              (out, H)     value_head block, arch probe
    value_head.ln.weight / .bias           (H,)         value_head block, arch mlp: LayerNorm,
    value_head.fc1.weight / .bias          (hidden, H)    eps 1e-6 (flax's default), then
    value_head.fc2.weight / .bias          (out, hidden)  GELU, then fc2 (torch layout: out, in)
    value_pre_pool_norm.weight             (H,)         value_head.pre_pool_mlp (older trunks)
    value_pre_pool_mlp.w_gate/w_up/w_down  as mlp

GQA: query head ``h`` uses key/value head ``h mod nkv`` (queries viewed as ``(g, nkv)``,
group-major), NOT repeat-interleave's ``h // g``; sink ``h`` is ``sinks[(h mod nkv)·g + h // nkv]``.

Axes: B = boards, S = tokens (16 cells), H = hidden, nh = query heads, nkv = key/value heads,
g = nh // nkv query heads per kv head, hd = H // nh, F = intermediate size, V = vocab.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vh.cache.fingerprint import sha256_file
from vh.errors import VhError

# weights in an init dir, in the order they are looked up (the ecosystem's loader order)
WEIGHT_NAMES = (
    "model-best.safetensors",
    "model-stable.safetensors",
    "model.safetensors",
    "model-final.safetensors",
    "model-stable.pt",
    "model.pt",
)
HEAD_TYPES = ("binned_ev", "action_policy")
KEY_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DataParallel/DDP wrappers
VALUE_LN_EPS = 1e-6  # flax nn.LayerNorm's default epsilon: the JAX heads are trained with it
_MISSING = object()

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    ),
    "small": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
    ),
    "288x10": dict(
        hidden_size=288,
        num_hidden_layers=10,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=1152,
    ),
}

# --------------------------------------------------------------------------- config


def _take(
    d: dict, key: str, kind: type, where, *, default: Any = _MISSING, prefix: str = ""
) -> Any:
    """``d[key]`` checked against ``kind`` (bool is never an int or a float), or ``default``."""
    value = d.get(key)
    if value is None:
        if default is _MISSING:
            raise VhError(
                "missing required field" if key not in d else "must not be null",
                path=where,
                field=prefix + key,
            )
        return default
    accepted = (int, float) if kind is float else (kind,)  # JSON writes 1e-05 or 1
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, accepted):
        raise VhError(f"expected {kind.__name__}, got {value!r}", path=where, field=prefix + key)
    return float(value) if kind is float else value


def _check(ok: bool, message: str, where, key: str) -> None:
    if not ok:
        raise VhError(message, path=where, field=key)


@dataclass(frozen=True)
class ValueHeadSpec:
    """The ``value_head`` block of config.json, as ``vh export`` writes it.

    ``{"objective": {"type": "mse" | "cross_entropy", "vocab_size": N, "vocab_type": "..."},
    "arch": "probe" | "mlp", "hidden": 1024, "activation": "gelu_tanh" | "gelu",
    "pre_pool_mlp": false, "pooling": "mean", "enabled": true}``. ``arch`` defaults to probe
    (a Linear on the pooled vector), ``activation`` to gelu_tanh (flax ``nn.gelu``'s default).
    """

    objective: str = "mse"
    vocab_size: int | None = None
    vocab_type: str | None = None
    arch: str = "probe"
    hidden: int | None = None
    activation: str = "gelu_tanh"
    pre_pool_mlp: bool = False

    def out_dim(self) -> int:
        return 1 if self.objective == "mse" else int(self.vocab_size)

    @classmethod
    def from_dict(cls, block: dict, where) -> ValueHeadSpec | None:
        """Parse the block strictly; ``None`` when it is disabled."""
        p = "value_head."
        if not _take(block, "enabled", bool, where, default=True, prefix=p):
            return None
        _check(
            _take(block, "pooling", str, where, default="mean", prefix=p) == "mean",
            "only 'mean' pooling exists",
            where,
            p + "pooling",
        )
        obj = _take(block, "objective", dict, where, default={}, prefix=p)
        q = p + "objective."
        spec = cls(
            objective=_take(obj, "type", str, where, default="mse", prefix=q),
            vocab_size=_take(obj, "vocab_size", int, where, default=None, prefix=q),
            vocab_type=_take(obj, "vocab_type", str, where, default=None, prefix=q),
            arch=_take(block, "arch", str, where, default="probe", prefix=p),
            hidden=_take(block, "hidden", int, where, default=None, prefix=p),
            activation=_take(block, "activation", str, where, default="gelu_tanh", prefix=p),
            pre_pool_mlp=_take(block, "pre_pool_mlp", bool, where, default=False, prefix=p),
        )
        _check(
            spec.objective in ("mse", "cross_entropy"),
            "expected 'mse' or 'cross_entropy'",
            where,
            q + "type",
        )
        _check(
            spec.objective == "mse" or (spec.vocab_size or 0) > 0,
            "cross_entropy needs vocab_size > 0",
            where,
            q + "vocab_size",
        )
        _check(spec.arch in ("probe", "mlp"), "expected 'probe' or 'mlp'", where, p + "arch")
        _check(
            spec.arch == "probe" or (spec.hidden or 0) > 0,
            "arch mlp needs hidden > 0",
            where,
            p + "hidden",
        )
        _check(
            spec.activation in ("gelu_tanh", "gelu"),
            "expected 'gelu_tanh' or 'gelu'",
            where,
            p + "activation",
        )
        return spec


@dataclass(frozen=True)
class TrunkConfig:
    """The trunk's config.json, parsed strictly (field names are the ecosystem's)."""

    input_vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    layer_norm_eps: float
    max_position_embeddings: int
    head_type: str = "binned_ev"
    output_n_bins: int | None = None
    dropout_prob: float = 0.1  # training only: the frozen trunk runs without dropout
    attention_dropout_prob: float = 0.0
    num_key_value_heads: int = 0  # resolved: num_attention_heads when absent
    use_qk_norm: bool = False
    use_attention_sinks: bool = False
    value_head: ValueHeadSpec | None = None
    extra_keys: tuple[str, ...] = field(default=())  # keys we do not use, kept in config_dict

    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_dict(cls, d: dict, where) -> TrunkConfig:
        """Parse a config dict; a missing field or a wrong type raises VhError naming it.

        Args:
            d: the parsed config.json (or a .pt bundle's ``encoder_config``).
            where: the file named in errors.

        Returns:
            The config. Unknown keys are allowed and listed in ``extra_keys``.
        """
        if not isinstance(d, dict):
            raise VhError(f"expected a JSON object, got {type(d).__name__}", path=where)
        ints = (
            "input_vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        )
        kw: dict[str, Any] = {k: _take(d, k, int, where) for k in ints}
        kw["layer_norm_eps"] = _take(d, "layer_norm_eps", float, where)
        if "head_type" not in d:
            raise VhError(
                "missing, and no head in the weights to infer it from",
                path=where,
                field="head_type",
            )
        kw["head_type"] = _take(d, "head_type", str, where)
        kw["output_n_bins"] = _take(d, "output_n_bins", int, where, default=None)
        for k, default in (("dropout_prob", 0.1), ("attention_dropout_prob", 0.0)):
            kw[k] = _take(d, k, float, where, default=default)
        kw["num_key_value_heads"] = _take(
            d, "num_key_value_heads", int, where, default=kw["num_attention_heads"]
        )
        for k in ("use_qk_norm", "use_attention_sinks"):
            kw[k] = _take(d, k, bool, where, default=False)
        block = _take(d, "value_head", dict, where, default=None)
        kw["value_head"] = None if block is None else ValueHeadSpec.from_dict(block, where)
        known = {f for f in cls.__dataclass_fields__ if f != "extra_keys"}
        cfg = cls(**kw, extra_keys=tuple(sorted(set(d) - known)))
        cfg._validate(where)
        return cfg

    def _validate(self, where) -> None:
        for k in (
            "input_vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "num_key_value_heads",
        ):
            _check(getattr(self, k) > 0, "must be > 0", where, k)
        _check(self.layer_norm_eps > 0, "must be > 0", where, "layer_norm_eps")
        _check(
            self.max_position_embeddings >= 16,
            "must be >= 16 (a board is 16 tokens)",
            where,
            "max_position_embeddings",
        )
        _check(
            self.hidden_size % self.num_attention_heads == 0,
            f"hidden_size {self.hidden_size} is not a multiple of it",
            where,
            "num_attention_heads",
        )
        _check(
            self.num_attention_heads % self.num_key_value_heads == 0,
            f"num_attention_heads {self.num_attention_heads} is not a multiple of it",
            where,
            "num_key_value_heads",
        )
        _check(
            self.head_type in HEAD_TYPES,
            f"expected one of {', '.join(HEAD_TYPES)}",
            where,
            "head_type",
        )
        _check(
            self.head_type != "binned_ev" or (self.output_n_bins or 0) > 0,
            "head_type binned_ev needs output_n_bins > 0",
            where,
            "output_n_bins",
        )


# --------------------------------------------------------------------------- the Encoder


class Attention(nn.Module):
    """Bidirectional GQA self-attention, optional per-head q/k RMSNorm and learned sinks."""

    def __init__(self, cfg: TrunkConfig):
        super().__init__()
        self.nh, self.nkv, self.hd = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim(),
        )
        self.g = cfg.groups()
        H = cfg.hidden_size
        self.wq = nn.Linear(H, self.nh * self.hd, bias=False)
        self.wk = nn.Linear(H, self.nkv * self.hd, bias=False)
        self.wv = nn.Linear(H, self.nkv * self.hd, bias=False)
        self.wo = nn.Linear(H, H, bias=False)
        qk = cfg.use_qk_norm
        self.q_norm = nn.RMSNorm(self.hd, eps=cfg.layer_norm_eps) if qk else None
        self.k_norm = nn.RMSNorm(self.hd, eps=cfg.layer_norm_eps) if qk else None
        self.sinks = nn.Parameter(torch.zeros(self.nh)) if cfg.use_attention_sinks else None
        self.sdpa = True  # False: the explicit softmax path even without sinks (tests compare)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, H = x.shape
        q = self.wq(x).view(B, S, self.nh, self.hd)
        k = self.wk(x).view(B, S, self.nkv, self.hd)
        v = self.wv(x).view(B, S, self.nkv, self.hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        # query head h = gi·nkv + kv: fold the g query heads of each kv head into the query
        # axis, so K and V are shared without copies and rows stay independent
        q = q.view(B, S, self.g, self.nkv, self.hd).permute(0, 3, 2, 1, 4)  # (B, nkv, g, S, hd)
        q = q.reshape(B, self.nkv, self.g * S, self.hd)  # (B, nkv, g·S, hd)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, nkv, S, hd)
        if self.sinks is None and self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = self._explicit(q, k, v)
        o = o.view(B, self.nkv, self.g, S, self.hd).permute(0, 3, 2, 1, 4)  # (B, S, g, nkv, hd)
        return self.wo(o.reshape(B, S, H))

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax attention with the sink logit as an extra column (dropped after)."""
        B, nkv, GS, _ = q.shape
        S = k.shape[2]
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(self.hd)  # (B, nkv, g·S, S)
        if self.sinks is not None:
            # layout (nkv, g): row (kv, gi, ·) of the folded queries takes sinks[kv·g + gi]
            sink = self.sinks.float().view(nkv, self.g, 1, 1).expand(nkv, self.g, S, 1)
            sink = sink.reshape(1, nkv, GS, 1).expand(B, nkv, GS, 1)
            scores = torch.cat([scores, sink], dim=-1)  # (B, nkv, g·S, S + 1)
        p = torch.softmax(scores, dim=-1)[..., :S].to(v.dtype)
        return p @ v  # (B, nkv, g·S, hd)


class SwiGLU(nn.Module):
    """``w_down(silu(w_gate x) * w_up x)``, no biases."""

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.w_up = nn.Linear(hidden, inner, bias=False)
        self.w_gate = nn.Linear(hidden, inner, bias=False)
        self.w_down = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(attn_norm x)``, then ``x + mlp(mlp_norm x)``."""

    def __init__(self, cfg: TrunkConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.attn_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class PositionEmbedding(nn.Module):
    """Holds ``pos_emb`` so the checkpoint key is ``pos_emb.pos_emb.weight``."""

    def __init__(self, max_pos: int, hidden: int):
        super().__init__()
        self.pos_emb = nn.Embedding(max_pos, hidden)


class MlpValueHead(nn.Module):
    """LayerNorm(eps 1e-6) → fc1 → GELU → fc2: the JAX ``mlp`` head, exported."""

    def __init__(self, dim: int, hidden: int, out: int, activation: str):
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=VALUE_LN_EPS)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out)
        self.approximate = "tanh" if activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.ln(x)), approximate=self.approximate))


class Encoder(nn.Module):
    """The 2048 trunk (see the module docstring for its parameter names).

    ``forward(tokens)`` returns ``(hidden (B, S, H), head logits, value)``: head logits are
    ``(B, 4, bins)`` for binned_ev or ``(B, 4)`` for action_policy; value is ``None`` without
    a value head, else ``(B,)`` (mse) or ``(B, vocab_size)``. Run it under
    ``torch.inference_mode()``; there is no dropout (the trunk is frozen).
    """

    def __init__(self, cfg: TrunkConfig):
        super().__init__()
        self.config = cfg
        H = cfg.hidden_size
        self.tok_emb = nn.Embedding(cfg.input_vocab_size, H)
        self.pos_emb = PositionEmbedding(cfg.max_position_embeddings, H)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.final_ln = nn.RMSNorm(H, eps=cfg.layer_norm_eps)
        binned = cfg.head_type == "binned_ev"
        self.ev_heads = (
            nn.ModuleList(nn.Linear(H, cfg.output_n_bins) for _ in range(4)) if binned else None
        )
        self.policy_head = None if binned else nn.Linear(H, 4)
        self.value_head, self.value_pre_pool_norm, self.value_pre_pool_mlp = None, None, None
        vh = cfg.value_head
        if vh is not None:
            self.value_head = (
                nn.Linear(H, vh.out_dim())
                if vh.arch == "probe"
                else MlpValueHead(H, vh.hidden, vh.out_dim(), vh.activation)
            )
            if vh.pre_pool_mlp:
                self.value_pre_pool_norm = nn.RMSNorm(H, eps=cfg.layer_norm_eps)
                self.value_pre_pool_mlp = SwiGLU(H, cfg.intermediate_size)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """``final_ln`` output, (B, S, H), for integer tokens (B, S)."""
        S = tokens.shape[1]
        x = self.tok_emb(tokens.long()) + self.pos_emb.pos_emb.weight[:S]  # (B, S, H)
        for blk in self.blocks:
            x = blk(x)
        return self.final_ln(x)

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """The board embedding: mean over tokens of ``final_ln``'s output, float32 (B, H)."""
        return self.hidden(tokens).mean(dim=1, dtype=torch.float32)

    def forward(self, tokens: torch.Tensor):
        x = self.hidden(tokens)
        pooled = x.mean(dim=1)  # (B, H), in the model's dtype as the heads were trained
        if self.ev_heads is not None:
            logits = torch.stack([h(pooled) for h in self.ev_heads], dim=1)  # (B, 4, bins)
        else:
            logits = self.policy_head(pooled)  # (B, 4)
        value = self._value(x) if self.value_head is not None else None
        return x, logits, value

    def value(self, tokens: torch.Tensor) -> torch.Tensor:
        """The exported value head's output: (B,) for mse, (B, vocab_size) otherwise."""
        if self.value_head is None:
            raise VhError(
                "this trunk has no value head (config.json has no value_head block)",
                field="value_head",
            )
        return self._value(self.hidden(tokens))

    def _value(self, x: torch.Tensor) -> torch.Tensor:
        if self.value_pre_pool_mlp is not None:
            x = x + self.value_pre_pool_mlp(self.value_pre_pool_norm(x))
        out = self.value_head(x.mean(dim=1))
        return out.squeeze(-1) if self.config.value_head.objective == "mse" else out

    def use_sdpa(self, on: bool = True) -> Encoder:
        """Choose SDPA (default) or the explicit softmax path where there are no sinks."""
        for blk in self.blocks:
            blk.attn.sdpa = on
        return self

    @torch.no_grad()
    def init_weights(self, seed: int) -> Encoder:
        """Seeded random weights: N(0, 0.02) matrices, unit norms, zero biases, N(0, 1) sinks.

        Drawn with numpy's PCG64 in module order, so the weights do not depend on torch's
        RNG (or its version) and golden values stay put.
        """
        rng = np.random.default_rng(seed)

        def normal(p: torch.Tensor, std: float) -> None:
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape), dtype=np.float32) * std))

        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                normal(m.weight, 0.02)
            elif isinstance(m, (nn.RMSNorm, nn.LayerNorm)):
                m.weight.fill_(1.0)
            elif isinstance(m, Attention) and m.sinks is not None:
                normal(m.sinks, 1.0)  # O(1) logits: the sinks take a visible share
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
        return self


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


def trunk_dim(model: nn.Module) -> int:
    """Width D of ``model.pooled``'s output, for an Encoder or a OneHotTrunk."""
    if isinstance(model, Encoder):
        return model.config.hidden_size
    if isinstance(model, OneHotTrunk):
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
        fp = {
            "kind": "onehot" if isinstance(self.model, OneHotTrunk) else "init",
            "config": self.config_dict,
            "weights_sha256": self.weights_sha256,
        }
        if self.seed is not None:
            fp["seed"] = self.seed
        return fp


def load_onehot(vocab: int = 16) -> LoadedTrunk:
    """The raw-board baseline as a LoadedTrunk (same interface as :func:`load_trunk`)."""
    return LoadedTrunk(OneHotTrunk(vocab), None, None, None, {"kind": "onehot", "vocab": vocab})


def load_trunk(
    init: str | os.PathLike,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LoadedTrunk:
    """Build the trunk from an init dir, a ``.pt`` bundle or a ``.safetensors`` file.

    Loading is strict: missing, unexpected or mis-shaped keys and non-finite weights raise
    VhError naming the file. An init dir without weights gives a seeded random trunk, with a
    warning on stderr.

    Args:
        init: init dir (config.json + weights looked up in ``WEIGHT_NAMES`` order), a ``.pt``
            bundle (``model`` state dict + ``encoder_config``), or a ``.safetensors`` file with
            config.json beside it.
        seed: seed of the random init when there are no weights.
        device: where the model goes.
        dtype: the model's parameter dtype (float32, bfloat16, ...).

    Returns:
        A :class:`LoadedTrunk`.
    """
    # ---- find the files
    config_path, weights_path = _locate(Path(init))
    raw = _read_json(config_path) if config_path is not None else {}
    where = config_path
    state = None
    if weights_path is not None:
        state, bundle_cfg = _read_weights(weights_path)
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
        weights_sha256=None if weights_path is None else sha256_file(weights_path),
        config_dict=raw,
        seed=seed if state is None else None,
    )


def _locate(init: Path) -> tuple[Path | None, Path | None]:
    """(config.json or None, weights file or None) for an init dir or a weights file."""
    if init.is_dir():
        config = init / "config.json"
        if not config.is_file():
            raise VhError("init dir has no config.json", path=init, field="config.json")
        weights = next((init / n for n in WEIGHT_NAMES if (init / n).is_file()), None)
        return config, weights
    if not init.exists():
        raise VhError("no such init dir or weights file", path=init)
    beside = init.parent / "config.json"
    if init.suffix in (".pt", ".pth"):
        return (beside if beside.is_file() else None), init
    if init.suffix == ".safetensors":
        if not beside.is_file():
            raise VhError(
                "a .safetensors file needs a config.json beside it", path=init, field="config.json"
            )
        return beside, init
    raise VhError("expected an init dir, a .pt bundle or a .safetensors file", path=init)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VhError(f"not valid JSON ({e})", path=path) from None


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The state dict (prefixes stripped) and, for a bundle, its ``encoder_config``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state, config = load_file(str(path)), None
        except Exception as e:  # safetensors raises its own error type for a bad header
            raise VhError(f"cannot read safetensors ({type(e).__name__}: {e})", path=path) from None
    else:
        state, config = _read_bundle(path)
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise VhError(f"expected a tensor, got {type(v).__name__}", path=path, field=k)
    return normalize_keys(state, path), config


def _read_bundle(path: Path) -> tuple[dict, dict | None]:
    """A ``.pt`` file: ``{"model": state dict, "encoder_config": dict, ...}`` or a bare state dict."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # other pickled objects (optimizer extras, numpy)
            print(
                f"warning: {path}: not loadable with weights_only=True ({str(e)[:120]}...);"
                " unpickling it fully: only do this with files you trust",
                file=sys.stderr,
            )
            obj = torch.load(path, map_location="cpu", weights_only=False)
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


def _resolve_head(raw: dict, state: dict | None, where) -> dict:
    """Take head_type (and bins) from the weights' keys; say so where config.json disagrees."""
    if state is None:
        return raw
    if any(k.startswith("policy_head.") for k in state):
        head = {"head_type": "action_policy"}
    elif "ev_heads.0.weight" in state:
        head = {"head_type": "binned_ev", "output_n_bins": int(state["ev_heads.0.weight"].shape[0])}
    else:
        return raw  # no head in the weights: strict loading will list the missing keys
    for k, v in head.items():
        if raw.get(k) is not None and raw[k] != v:
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


def preset_config(
    preset: str,
    *,
    vocab: int = 16,
    head_type: str = "binned_ev",
    bins: int = 32,
    qk_norm: bool = False,
    sinks: bool = False,
) -> dict:
    """config.json contents for a preset, with the ecosystem's field names."""
    if preset not in PRESETS:
        raise VhError(f"unknown preset (valid: {', '.join(PRESETS)})", field="preset")
    return {
        "input_vocab_size": vocab,
        **PRESETS[preset],
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": 16,
        "head_type": head_type,
        "output_n_bins": bins if head_type == "binned_ev" else None,
        "dropout_prob": 0.0,
        "attention_dropout_prob": 0.0,
        "use_qk_norm": qk_norm,
        "use_attention_sinks": sinks,
        "value_head": None,
    }


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
    """Write through a temp file in the same folder, then ``os.replace`` it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
