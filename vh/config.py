"""Typed, frozen, nested configuration loaded strictly from TOML.

One root :class:`Config` with a section per phase. Values come from the dataclass defaults,
then each TOML file in order, then ``--set section.key=value`` overrides. Unknown keys and
wrongly typed values raise :class:`~vh.errors.VhError` naming the key (``fit.train.lr``).
The resolved config travels with every artifact (:func:`to_dict`).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, Union

from vh.errors import VhError

# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class SynthConfig:
    games: int = 64
    player: Literal["random", "greedy", "expectimax"] = "expectimax"
    depth: int = 2  # expectimax search depth in moves (chance nodes between them)
    seed: int = 0
    layout: Literal["packed", "selfplay", "legacy"] = "packed"
    board_eval: bool = True  # packed layout: 46-byte rows with board_eval (False: 42 bytes)
    metadata: Literal["modern", "legacy"] = "modern"  # legacy: num_moves / final_score columns
    shard_rows: int = 262_144  # rows per steps-*.npy shard (runs never straddle shards)
    values: bool = False  # also write the values-*.npy sidecar
    gamma: float = 0.997  # discount of the sidecar's returns
    max_moves: int = 0  # stop a game after this many moves (0 = play until it ends)


@dataclass(frozen=True)
class ExtractConfig:
    trunk: Literal["init", "onehot"] = "init"  # onehot = the raw-board baseline, no network
    batch_size: int = 4096
    dtype: Literal["float16", "float32"] = "float16"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    gamma: float | None = None  # when set, a discounted `return` column is written
    chunk_rows: int = 65_536  # rows per zarr chunk = per work unit (see vh.cache.schema)
    compile: bool = False  # torch.compile the trunk (pays off for long extractions)
    threads: int = 0  # torch intra-op threads on CPU (0 = torch's default)
    seed: int = 0  # seed of the random init when the init dir has no weights
    check_vocab: bool = True  # refuse exponents the trunk's vocab cannot embed


@dataclass(frozen=True)
class TargetConfig:
    kind: Literal["ordinal", "tiles", "logscore", "return"] = "ordinal"
    thresholds: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768)  # tile values T_k
    n_bins: int = 64  # logscore bins
    smoothing: float = 0.0  # Gaussian label smoothing, sigma as a ratio of the bin width
    return_encoding: Literal["twohot", "gaussian", "scalar"] = "twohot"
    return_bins: int = 601
    return_sigma: float = 0.75  # gaussian return encoding: sigma in bins
    bin_range: tuple[
        float, ...
    ] = ()  # [lo, hi] bin centres (log1p score / h(return)); [] = train range


@dataclass(frozen=True)
class HeadConfig:
    arch: Literal["probe", "mlp"] = "probe"
    hidden: int = 1024
    dropout: float = 0.1
    monotone: bool = False  # ordinal only: t_k = b - cumsum(softplus(inc_k))
    small_init: bool = True  # last layer ~ N(0, 0.01)


@dataclass(frozen=True)
class LossConfig:
    balance: bool = False  # class-balanced BCE, weights from train positive rates
    max_weight: float = 10.0
    focal_gamma: float = 0.0
    quartic: float = 0.0  # scalar return: MSE + w * mean(err^4)


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    train: float = 0.90
    val: float = 0.05
    test: float = 0.05
    val_run_pct: float | None = None  # when set: val = this % of runs, rest train (no test)
    train_where: str = ""  # SQL predicates over the cache's runs table (override the hash)
    val_where: str = ""
    test_where: str = ""


@dataclass(frozen=True)
class SamplerConfig:
    kind: Literal["all", "stratified"] = "all"
    cap_per_run: int = 512
    stages: tuple[float, ...] = (0.0, 0.25, 0.75, 1.0)
    stage_weights: tuple[float, ...] = (1.0, 2.0, 1.0)
    step_index_min: int = 0
    step_index_max: int = -1  # -1 = no upper bound
    states_per_epoch: int = 0  # 0 = every sampled train row once per epoch
    seed: int = 0  # jitter of the stratified positions


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 3e-4
    wd: float = 1e-4
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    batch_size: int = 65_536
    epochs: int = 20
    patience: int = 3  # early stopping on validation NLL
    seed: int = 0
    data_on_device: Literal["auto", "always", "never"] = "auto"
    device_memory_fraction: float = 0.5  # 'auto' keeps data on device below this share
    prefetch_chunks: int = 4  # streamed: cache chunks read ahead (bounds host memory)
    microbatch: int = 2048  # rows per gradient-accumulation chunk of a step (0 = whole batch)


@dataclass(frozen=True)
class FitConfig:
    target: TargetConfig = field(default_factory=TargetConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class EvalConfig:
    n_boot: int = 1000
    seed: int = 0
    ece_bins: int = 15
    ci: float = 0.95
    temperature: bool = True  # fit post-hoc temperature on the validation split
    max_val_rows: int = 1_000_000  # validation rows for the temperature (seeded subset beyond)
    predict_batch: int = 65_536  # embedding rows read and predicted at a time


@dataclass(frozen=True)
class Config:
    synth: SynthConfig = field(default_factory=SynthConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- loading


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against ``tp`` and return it in canonical form, or raise naming ``key``."""
    origin = typing.get_origin(tp)
    bad = VhError(f"expected {_type_name(tp)}, got {value!r}", field=key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in args:
                return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except VhError:
                pass
        raise bad
    if origin is tuple:
        (elem, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad
        return tuple(_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


def build(cls: type, data: dict, prefix: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from ``data`` strictly, starting from ``base`` (or defaults).

    Args:
        cls: a (frozen) dataclass type.
        data: nested mapping of TOML values.
        prefix: dotted key of this section, used in error messages.
        base: an instance whose values are the starting point.

    Returns:
        A new instance of ``cls``.
    """
    if not isinstance(data, dict):
        raise VhError(f"expected a table, got {data!r}", field=prefix.rstrip(".") or "<root>")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        valid = ", ".join(sorted(names))
        raise VhError(f"unknown config key (valid: {valid})", field=prefix + unknown[0])
    base = base if base is not None else cls()
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = prefix + name
        if _is_dataclass_type(tp):
            kwargs[name] = build(tp, value, key + ".", getattr(base, name))
        else:
            kwargs[name] = _coerce(value, tp, key)
    return dataclasses.replace(base, **kwargs)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string


def parse_sets(sets: typing.Iterable[str]) -> dict:
    """Turn ``["fit.train.lr=1e-3", ...]`` into a nested dict."""
    out: dict = {}
    for item in sets:
        if "=" not in item:
            raise VhError(f"--set expects section.key=value, got {item!r}", field="--set")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise VhError("key is both a value and a table", field=key)
        node[parts[-1]] = _parse_value(text.strip())
    return out


def read_toml(path: str | os.PathLike) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise VhError("config file not found", path=path) from None
    except tomllib.TOMLDecodeError as e:
        raise VhError(f"not valid TOML ({e})", path=path) from None
    except UnicodeDecodeError as e:  # TOML is UTF-8; tomllib lets this one through
        raise VhError(f"not valid TOML (not UTF-8 at byte {e.start})", path=path) from None


def builtin_config(name: str) -> str:
    """Path of a config shipped with the package (``configs/NAME.toml``)."""
    ref = resources.files("vh.configs").joinpath(f"{name}.toml")
    if not ref.is_file():
        raise VhError("no such built-in config", field=name)
    return str(ref)


def load_config(
    paths: typing.Sequence[str | os.PathLike] = (),
    sets: typing.Sequence[str] = (),
    base: Config | None = None,
) -> Config:
    """Resolve a :class:`Config` from defaults, TOML files (in order) and ``--set`` overrides."""
    cfg = base if base is not None else Config()
    for p in paths:
        try:
            cfg = build(Config, read_toml(p), base=cfg)
        except VhError as e:
            if e.path is None:
                e = VhError(e.message, path=p, field=e.field, code=e.code)
            raise e from None
    if sets:
        try:
            cfg = build(Config, parse_sets(sets), base=cfg)
        except VhError as e:
            raise VhError(e.message, path="--set", field=e.field, code=e.code) from None
    return cfg


def to_dict(obj: Any) -> Any:
    """Plain JSON/TOML-able form of a config (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(cls: type, data: dict) -> Any:
    """Inverse of :func:`to_dict` (strict), e.g. to read a config recorded with an artifact."""
    return build(cls, data)
