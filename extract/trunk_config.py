"""The trunk's ``config.json``: :class:`TrunkConfig`, its ``value_head`` block, the presets.

Every field is declared once, with :func:`spec`, next to its type: its default (none = the
field is required), where it sits in the JSON when that is not under its own name, and its
valid values as :class:`vh.ranges.Range` keywords. Parsing is strict, by the parser the TOML
config shares (:mod:`vh.strict`): a missing field, a wrong type (a bool is never a number), a
value out of range or two fields that contradict each other (``_relations``) raise
:class:`~vh.errors.VhError` naming the file and the field, before any tensor is allocated.

The upper bounds are far above any 2048 trunk (the ``288x10`` preset has ~10M parameters);
they exist so that a typo (``hidden_size = 10**9``) is one line, not a traceback allocating
64 GB, and :data:`MAX_PARAMETERS` bounds what the dimensions make together.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vh import strict
from vh.errors import VhError
from vh.ranges import Range, field_range

HEAD_TYPES = ("binned_ev", "action_policy")
BINS_MAX = 65_536  # output bins and value-head vocab (the fit's n_bins / return_bins maximum)
# the largest trunk vh builds: 2**32 parameters are 16 GiB of float32 in host memory while
# loading, ~400x the 288x10 preset; beyond it a config is a typo, not a trunk
MAX_PARAMETERS = 2**32
_MISSING = object()

# the shapes of the presets, with the ecosystem's field names: (hidden_size, layers, heads,
# kv heads, intermediate_size); 288x10 is the seed trunk's
_PRESET_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
)
PRESETS: dict[str, dict[str, Any]] = {
    name: dict(zip(_PRESET_FIELDS, dims, strict=True))
    for name, dims in (
        ("tiny", (32, 2, 4, 2, 128)),
        ("small", (128, 4, 4, 2, 512)),
        ("288x10", (288, 10, 6, 2, 1152)),
    )
}

# --------------------------------------------------------------------------- declaring fields


def spec(
    default: Any = _MISSING,
    *,
    key: str | None = None,
    missing: str | None = None,
    default_from: str | None = None,
    **limits: Any,
) -> Any:
    """A config.json field: default, JSON key, valid values, in one place.

    Args:
        default: the value when the field is absent or null; none given = required.
        key: dotted JSON key under the block when it differs from the name
            (``objective.type``).
        missing: the message when a required field is absent (default: "missing required
            field").
        default_from: the default is this other field's parsed value.
        limits: :class:`vh.ranges.Range` keywords (bounds, ``pattern`` for strings, ``why``).
    """
    meta = {"range": Range(**limits), "key": key, "missing": missing, "default_from": default_from}
    if default is _MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def _choice(*names: str) -> dict[str, str]:
    """Range keywords accepting exactly ``names`` (a string field)."""
    return {
        "pattern": "|".join(map(re.escape, names)),
        "why": "one of " + ", ".join(map(repr, names)),
    }


# --------------------------------------------------------------------------- reading fields


def _take(
    d: dict, key: str, kind: type, where, *, default: Any = _MISSING, prefix: str = "", rng=None
) -> Any:
    """``d[key]`` parsed as ``kind`` and checked against ``rng`` by :func:`vh.strict.parse`,
    or ``default`` when it is absent or null (none given: the field is required)."""
    value = d.get(key)
    if value is None:
        if default is _MISSING:
            raise VhError(
                "missing required field" if key not in d else "must not be null",
                path=where,
                field=prefix + key,
            )
        return default
    with strict.located(where):
        return strict.parse(value, kind, prefix + key, rng)


@functools.cache
def _kinds(cls: type) -> dict[str, type]:
    """Field name -> the JSON type it takes (``int | None`` -> int)."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        out[name] = args[0] if args else tp
    return out


def _json_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def read_field(cls: type, name: str, d: dict, where, prefix: str = "", resolved=None) -> Any:
    """Field ``name`` of ``cls`` read from the JSON object ``d``, type- and range-checked.

    Args:
        cls: :class:`TrunkConfig` or :class:`ValueHeadSpec`.
        name: the field.
        d: the JSON object of ``cls``'s block.
        where: the file named in errors.
        prefix: dotted key of the block (``value_head.``), for the messages.
        resolved: fields parsed so far (for a ``default_from`` default).
    """
    f = cls.__dataclass_fields__[name]
    *parents, leaf = _json_key(f).split(".")
    node = d
    for p in parents:  # objective.type: the objective object first
        node = _take(node, p, dict, where, default={}, prefix=prefix)
        prefix += p + "."
    default = _MISSING if f.default is dataclasses.MISSING else f.default
    if f.metadata.get("default_from"):
        default = (resolved or {})[f.metadata["default_from"]]
    if leaf not in node and default is _MISSING and f.metadata.get("missing"):
        raise VhError(f.metadata["missing"], path=where, field=prefix + leaf)
    kind, rng = _kinds(cls)[name], field_range(f)
    return _take(node, leaf, kind, where, default=default, prefix=prefix, rng=rng)


def _read_all(cls: type, d: dict, where, prefix: str = "", skip=()) -> dict[str, Any]:
    """Every declared field of ``cls`` (bar ``skip``) read from ``d``, in declaration order."""
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            kw[f.name] = read_field(cls, f.name, d, where, prefix, kw)
    return kw


def _raise_first(obj: Any, where, prefix: str = "") -> None:
    """Raise the first broken rule between fields (``obj._relations``), naming its JSON key."""
    for name, message in obj._relations():
        f = obj.__dataclass_fields__.get(name)
        raise VhError(message, path=where, field=prefix + (_json_key(f) if f else name))


# --------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class ValueHeadSpec:
    """The ``value_head`` block of config.json, as ``vh export`` writes it.

    ``{"objective": {"type": "mse" | "cross_entropy", "vocab_size": N, "vocab_type": "..."},
    "arch": "probe" | "mlp", "hidden": 1024, "activation": "gelu_tanh" | "gelu",
    "pre_pool_mlp": false, "pooling": "mean", "enabled": true}``. ``arch`` defaults to probe
    (a Linear on the pooled vector), ``activation`` to gelu_tanh (flax ``nn.gelu``'s default).
    """

    objective: str = spec("mse", key="objective.type", **_choice("mse", "cross_entropy"))
    # outputs of a cross_entropy head (K milestones, K+1 tile buckets, bins); mse writes 1
    vocab_size: int | None = spec(None, key="objective.vocab_size", ge=1, le=BINS_MAX)
    vocab_type: str | None = spec(None, key="objective.vocab_type")  # a name, not used here
    arch: str = spec("probe", **_choice("probe", "mlp"))
    hidden: int | None = spec(None, ge=1, le=65_536)  # arch mlp (the fit's head.hidden maximum)
    activation: str = spec("gelu_tanh", **_choice("gelu_tanh", "gelu"))
    pre_pool_mlp: bool = spec(False)
    pooling: str = spec("mean", pattern="mean", why="'mean' (the only pooling there is)")

    def out_dim(self) -> int:
        return 1 if self.objective == "mse" else int(self.vocab_size)

    def _relations(self) -> Iterator[tuple[str, str]]:
        if self.objective == "cross_entropy" and self.vocab_size is None:
            yield "vocab_size", "cross_entropy needs vocab_size > 0"
        if self.arch == "mlp" and self.hidden is None:
            yield "hidden", "arch mlp needs hidden > 0"

    @classmethod
    def from_dict(cls, block: dict, where) -> ValueHeadSpec | None:
        """Parse the block strictly; ``None`` when it is disabled."""
        p = "value_head."
        if not _take(block, "enabled", bool, where, default=True, prefix=p):
            return None
        spec_ = cls(**_read_all(cls, block, where, p))
        _raise_first(spec_, where, p)
        return spec_


@dataclass(frozen=True)
class TrunkConfig:
    """The trunk's config.json, parsed strictly (field names are the ecosystem's)."""

    # token values 0..15 are tile exponents (0 = empty); 16 embeds the 65536 tile
    input_vocab_size: int = spec(ge=16, le=17, why="16, or 17 when 65536 tiles occur")
    hidden_size: int = spec(ge=1, le=65_536)
    num_hidden_layers: int = spec(ge=1, le=1024)
    num_attention_heads: int = spec(ge=1, le=1024)
    intermediate_size: int = spec(ge=1, le=262_144)
    # RMSNorm's eps: an infinite one makes every embedding 0, one >= 1 swamps the activations
    layer_norm_eps: float = spec(gt=0.0, lt=1.0)
    max_position_embeddings: int = spec(ge=16, le=65_536, why="a board is 16 tokens")
    head_type: str = spec(
        missing="missing, and no head in the weights to infer it from", **_choice(*HEAD_TYPES)
    )
    output_n_bins: int | None = spec(None, ge=1, le=BINS_MAX)  # head_type binned_ev
    # training only: the frozen trunk runs without dropout, but a value outside is not a trunk
    dropout_prob: float = spec(0.1, ge=0.0, lt=1.0)
    attention_dropout_prob: float = spec(0.0, ge=0.0, lt=1.0)
    num_key_value_heads: int = spec(0, default_from="num_attention_heads", ge=1, le=1024)
    use_qk_norm: bool = spec(False)
    use_attention_sinks: bool = spec(False)
    value_head: ValueHeadSpec | None = None
    extra_keys: tuple[str, ...] = field(default=())  # keys we do not use, kept in config_dict

    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_dict(cls, d: dict, where) -> TrunkConfig:
        """Parse a config dict; a missing field, a wrong type or a value out of range raises
        VhError naming it.

        Args:
            d: the parsed config.json (or a .pt bundle's ``encoder_config``).
            where: the file named in errors.

        Returns:
            The config. Unknown keys are allowed and listed in ``extra_keys``.
        """
        if not isinstance(d, dict):
            raise VhError(f"expected a JSON object, got {type(d).__name__}", path=where)
        kw = _read_all(cls, d, where, skip=("value_head", "extra_keys"))
        block = _take(d, "value_head", dict, where, default=None)
        kw["value_head"] = None if block is None else ValueHeadSpec.from_dict(block, where)
        known = {f for f in cls.__dataclass_fields__ if f != "extra_keys"}
        cfg = cls(**kw, extra_keys=tuple(sorted(set(d) - known)))
        _raise_first(cfg, where)
        return cfg

    def _relations(self) -> Iterator[tuple[str, str]]:
        H, nh, nkv = self.hidden_size, self.num_attention_heads, self.num_key_value_heads
        if H % nh:
            yield (
                "num_attention_heads",
                f"hidden_size {H} is not a multiple of it (no whole head dim)",
            )
        if nh % nkv:
            yield "num_key_value_heads", f"num_attention_heads {nh} is not a multiple of it"
        if self.head_type == "binned_ev" and self.output_n_bins is None:
            yield "output_n_bins", "head_type binned_ev needs output_n_bins > 0"
        if not (H % nh or nh % nkv) and self.parameter_count() > MAX_PARAMETERS:
            yield self._too_big()

    def parameter_parts(self) -> dict[str, int]:
        """Parameters of the Encoder this config builds, by the field that sizes them."""
        H, L, F, hd = (
            self.hidden_size,
            self.num_hidden_layers,
            self.intermediate_size,
            self.head_dim(),
        )
        nh, nkv = self.num_attention_heads, self.num_key_value_heads
        attn = H * nh * hd + 2 * H * nkv * hd + H * H  # wq, wk, wv, wo
        attn += 2 * hd * self.use_qk_norm + nh * self.use_attention_sinks + 2 * H  # + norms
        bins = self.output_n_bins or 0
        head = 4 * (H * bins + bins) if self.head_type == "binned_ev" else 4 * H + 4
        return {
            "input_vocab_size": self.input_vocab_size * H,
            "max_position_embeddings": self.max_position_embeddings * H,
            "hidden_size": L * attn + H,  # + final_ln
            "intermediate_size": L * 3 * H * F,
            "output_n_bins" if self.head_type == "binned_ev" else "head_type": head,
            "value_head": self._value_head_parameters(),
        }

    def parameter_count(self) -> int:
        """Parameters of the Encoder this config builds (computed, nothing allocated)."""
        return sum(self.parameter_parts().values())

    def _value_head_parameters(self) -> int:
        v, H = self.value_head, self.hidden_size
        if v is None:
            return 0
        out = v.out_dim()
        n = (
            H * out + out
            if v.arch == "probe"
            else 2 * H + (H + 1) * v.hidden + (v.hidden + 1) * out
        )
        return n + (H + 3 * H * self.intermediate_size if v.pre_pool_mlp else 0)

    def _too_big(self) -> tuple[str, str]:
        """(the field sizing the most parameters, the message) for a trunk over the limit."""
        parts = self.parameter_parts()
        n = sum(parts.values())
        dims = ", ".join(
            f"{k} {getattr(self, k)}"
            for k in ("hidden_size", "intermediate_size", "num_hidden_layers")
        )
        why = (
            f"the trunk would have {n:,} parameters ({4 * n / 2**30:,.0f} GiB as float32), "
            f"more than vh builds ({MAX_PARAMETERS:,}; {dims})"
        )
        return max(parts, key=parts.get), why


# --------------------------------------------------------------------------- presets


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
