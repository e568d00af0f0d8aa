"""Typed, frozen, nested configuration loaded strictly from TOML.

One root :class:`Config` with a section per phase. Values come from the dataclass defaults,
then each TOML file in order, then ``--set section.key=value`` overrides. Unknown keys,
wrongly typed values and values outside a field's declared range raise
:class:`~vh.errors.VhError` naming the key (``fit.train.lr``), before any command creates
anything; :mod:`vh.strict` reads each value (the parser the trunk's config.json shares).
The resolved config travels with every artifact (:func:`to_dict`).

Ranges: every number, string and list field is declared with :func:`ranged` next to its
default (bounds, pattern, length, order); rules that tie two fields together (split fractions
summing to 1, one weight per stage) are a section's ``_relations`` method, checked once the
whole config is resolved (:func:`validate`). :func:`build` range-checks every value it is
given (command-line options go through it too); :func:`load_config` and :func:`from_dict`
also validate the result. Plain ``SplitConfig(...)`` construction checks nothing: tests
build deliberately bad sections to exercise the checks further down.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from vh import strict
from vh.errors import VhError

# the declared ranges (Range, ranged, ...) live in vh.ranges; re-exported for importers
from vh.ranges import (  # noqa: E402
    ROWS_MAX,
    SEED_MAX,
    SQL_TEXT,
    TILE_MAX,
    Range,  # noqa: F401  (re-exported: vh.config.Range)
    field_range,
    ranged,
)

# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class SynthConfig:
    games: int = ranged(64, ge=1, le=ROWS_MAX)
    player: Literal["random", "greedy", "expectimax"] = "expectimax"
    # expectimax search depth in moves (chance nodes between them); the cost grows ~8x a move
    depth: int = ranged(2, ge=1, le=6)
    seed: int = ranged(0, ge=0, le=SEED_MAX)
    layout: Literal["packed", "selfplay", "legacy"] = "packed"
    board_eval: bool = True  # packed layout: 46-byte rows with board_eval (False: 42 bytes)
    metadata: Literal["modern", "legacy"] = "modern"  # legacy: num_moves / final_score columns
    # rows per steps-*.npy shard (runs never straddle shards)
    shard_rows: int = ranged(262_144, ge=1, le=ROWS_MAX)
    values: bool = False  # also write the values-*.npy sidecar
    gamma: float = ranged(0.997, ge=0.0, le=1.0)  # discount of the sidecar's returns
    # stop a game after this many moves (0 = play until it ends)
    max_moves: int = ranged(0, ge=0, le=ROWS_MAX)


@dataclass(frozen=True)
class ExtractConfig:
    # onehot = the raw-board baseline, no network; null = zeros of width null_dim, a
    # benchmark trunk only (`vh bench extract --trunk null`: the pipeline with a free trunk)
    trunk: Literal["init", "onehot", "null"] = "init"
    batch_size: int = ranged(4096, ge=1, le=2**20)  # rows per trunk forward
    dtype: Literal["float16", "float32"] = "float16"
    device: str = ranged(
        "auto", pattern=r"auto|cpu|cuda(:[0-9]{1,3})?", why="auto, cpu, cuda or cuda:N"
    )
    # when set, a discounted `return` column is written
    gamma: float | None = ranged(None, ge=0.0, le=1.0)
    # rows per zarr chunk = per work unit (see vh.cache.schema)
    chunk_rows: int = ranged(65_536, ge=1, le=2**24)
    compile: bool = False  # torch.compile the trunk (pays off for long extractions)
    threads: int = ranged(0, ge=0, le=4096)  # torch intra-op threads on CPU (0 = torch's)
    seed: int = ranged(0, ge=0, le=SEED_MAX)  # seed of the random init without weights
    check_vocab: bool = True  # refuse exponents the trunk's vocab cannot embed
    # width D of the benchmark `null` trunk's zeros (recorded in a cache only with that trunk)
    null_dim: int = ranged(256, ge=1, le=65_536)


def _target_kinds() -> tuple[str, ...]:
    """The registered target kinds (imported here, late: the registry imports no config)."""
    from vh.heads.targets import names

    return names()


@dataclass(frozen=True)
class TargetConfig:
    kind: str = ranged("ordinal", one_of=_target_kinds)  # a kind of vh.heads.targets
    # tile values T_k: powers of two a board can hold, rising (at most 16 of them)
    thresholds: tuple[int, ...] = ranged(
        (1024, 2048, 4096, 8192, 16384, 32768),
        ge=4,
        le=TILE_MAX,
        pow2=True,
        increasing=True,
        lengths=range(1, 17),
    )
    n_bins: int = ranged(64, ge=2, le=65_536)  # logscore bins
    # Gaussian label smoothing, sigma as a ratio of the bin width (0 = two-hot)
    smoothing: float = ranged(0.0, ge=0.0, le=100.0)
    return_encoding: Literal["twohot", "gaussian", "scalar"] = "twohot"
    return_bins: int = ranged(601, ge=2, le=65_536)
    return_sigma: float = ranged(0.75, ge=0.0, le=1000.0)  # gaussian encoding: sigma in bins
    # [lo, hi] bin centres (log1p score / h(return)); [] = the train range
    bin_range: tuple[float, ...] = ranged((), lengths=(0, 2), increasing=True)

    def _relations(self) -> Iterator[tuple[str, str]]:
        if self.return_encoding == "gaussian" and self.return_sigma == 0:
            yield "return_sigma", "the gaussian encoding needs return_sigma > 0 (or use twohot)"


@dataclass(frozen=True)
class HeadConfig:
    arch: Literal["probe", "mlp"] = "probe"
    hidden: int = ranged(1024, ge=1, le=65_536)
    dropout: float = ranged(0.1, ge=0.0, lt=1.0)
    monotone: bool = False  # ordinal only: t_k = b - cumsum(softplus(inc_k))
    small_init: bool = True  # last layer ~ N(0, 0.01)


@dataclass(frozen=True)
class LossConfig:
    balance: bool = False  # class-balanced BCE, weights from train positive rates
    # cap on a class weight 1/(2p); balanced classes weigh 1, so a cap below 1 means nothing
    max_weight: float = ranged(10.0, ge=1.0, le=1e6)
    focal_gamma: float = ranged(0.0, ge=0.0, le=10.0)
    quartic: float = ranged(0.0, ge=0.0, le=1e6)  # scalar return: MSE + w * mean(err^4)


@dataclass(frozen=True)
class SplitConfig:
    seed: int = ranged(0, ge=0, le=SEED_MAX)
    train: float = ranged(0.90, ge=0.0, le=1.0)
    val: float = ranged(0.05, ge=0.0, le=1.0)
    test: float = ranged(0.05, ge=0.0, le=1.0)
    # when set: val = this % of runs, rest train (no test)
    val_run_pct: float | None = ranged(None, gt=0.0, lt=100.0)
    # SQL predicates over the cache's runs table (override the hash)
    train_where: str = ranged("", pattern=SQL_TEXT, why="an SQL predicate (no control chars)")
    val_where: str = ranged("", pattern=SQL_TEXT, why="an SQL predicate (no control chars)")
    test_where: str = ranged("", pattern=SQL_TEXT, why="an SQL predicate (no control chars)")

    def _relations(self) -> Iterator[tuple[str, str]]:
        f = (self.train, self.val, self.test)
        if abs(sum(f) - 1.0) > 1e-9:  # the same tolerance as vh.heads.splits
            yield "train", f"train/val/test fractions must sum to 1, got {list(f)}"


@dataclass(frozen=True)
class SamplerConfig:
    kind: Literal["all", "stratified"] = "all"
    cap_per_run: int = ranged(512, ge=1, le=ROWS_MAX)
    # stage boundaries as fractions of a run's steps: from 0 to 1, rising
    stages: tuple[float, ...] = ranged(
        (0.0, 0.25, 0.75, 1.0), ge=0.0, le=1.0, increasing=True, lengths=range(2, 65)
    )
    stage_weights: tuple[float, ...] = ranged((1.0, 2.0, 1.0), ge=0.0, le=1e6, lengths=range(1, 64))
    step_index_min: int = ranged(0, ge=0, le=ROWS_MAX)
    step_index_max: int = ranged(-1, ge=-1, le=ROWS_MAX)  # -1 = no upper bound
    # 0 = every sampled train row once per epoch
    states_per_epoch: int = ranged(0, ge=0, le=ROWS_MAX)
    seed: int = ranged(0, ge=0, le=SEED_MAX)  # jitter of the stratified positions

    def _relations(self) -> Iterator[tuple[str, str]]:
        st, w = self.stages, self.stage_weights
        if st[0] != 0.0 or st[-1] != 1.0:
            yield "stages", f"stage boundaries must run from 0 to 1, got {list(st)}"
        if len(w) != len(st) - 1:
            yield "stage_weights", f"need {len(st) - 1} weights (one per stage), got {len(w)}"
        if sum(w) <= 0:
            yield "stage_weights", f"at least one stage weight must be > 0, got {list(w)}"
        if self.step_index_max != -1 and self.step_index_max < self.step_index_min:
            why = f"below step_index_min {self.step_index_min} (-1 = no upper bound)"
            yield "step_index_max", why


@dataclass(frozen=True)
class TrainConfig:
    lr: float = ranged(3e-4, gt=0.0, le=10.0)
    wd: float = ranged(1e-4, ge=0.0, le=10.0)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = ranged(0, ge=0, le=ROWS_MAX)
    batch_size: int = ranged(65_536, ge=1, le=ROWS_MAX)
    epochs: int = ranged(20, ge=1, le=100_000)
    patience: int = ranged(3, ge=1, le=100_000)  # early stopping on validation NLL
    seed: int = ranged(0, ge=0, le=SEED_MAX)
    data_on_device: Literal["auto", "always", "never"] = "auto"
    # 'auto' keeps data on device below this share of its memory
    device_memory_fraction: float = ranged(0.5, gt=0.0, le=1.0)
    # streamed: cache chunks read ahead (bounds host memory)
    prefetch_chunks: int = ranged(4, ge=1, le=1024)
    # rows per gradient-accumulation chunk of a step (0 = whole batch)
    microbatch: int = ranged(2048, ge=0, le=ROWS_MAX)


@dataclass(frozen=True)
class FitConfig:
    """`vh fit`: what a head predicts, the head, its loss, the split, the sampler, the loop."""

    target: TargetConfig = field(default_factory=TargetConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class EvalConfig:
    # bootstrap resamples; fewer than 10 give no usable percentile interval
    n_boot: int = ranged(1000, ge=10, le=100_000)
    seed: int = ranged(0, ge=0, le=SEED_MAX)
    ece_bins: int = ranged(15, ge=1, le=10_000)
    ci: float = ranged(0.95, gt=0.0, lt=1.0)  # confidence level of the intervals
    temperature: bool = True  # fit post-hoc temperature on the validation split
    # validation rows for the temperature (seeded subset beyond)
    max_val_rows: int = ranged(1_000_000, ge=1, le=ROWS_MAX)
    predict_batch: int = ranged(65_536, ge=1, le=2**24)  # embedding rows predicted at a time


@dataclass(frozen=True)
class TrunkTrainConfig:
    """`vh trunk train`: the trunk's action_policy training (AdamW, constant lr), with the
    auxiliary tile-counts read-out."""

    epochs: int = ranged(10, ge=1, le=100_000)
    batch_size: int = ranged(256, ge=1, le=2**20)  # rows per AdamW step
    lr: float = ranged(1e-3, gt=0.0, le=10.0)
    wd: float = ranged(0.01, ge=0.0, le=10.0)  # AdamW's decoupled weight decay
    seed: int = ranged(0, ge=0, le=SEED_MAX)  # initial weights and the shuffle
    device: Literal["cpu", "cuda"] = "cpu"
    # torch intra-op threads on CPU (0 = torch's); 1 is fastest for tiny trunks on a busy host
    threads: int = ranged(0, ge=0, le=4096)
    # weight of the auxiliary tile-counts loss beside the policy's (0: the policy alone);
    # why it exists: vh/extract/trunk_objective.py
    counts_weight: float = ranged(1.0, ge=0.0, le=1000.0)


@dataclass(frozen=True)
class Config:
    """The whole config: one section per command that reads it, in the pipeline's order
    (``[synth]``, ``[extract]``, ``[fit.*]``, ``[eval]``, and ``[trunk]`` for `vh trunk train`).
    """

    synth: SynthConfig = field(default_factory=SynthConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trunk: TrunkTrainConfig = field(default_factory=TrunkTrainConfig)


# --------------------------------------------------------------------------- checking


def validate(obj: Any, prefix: str = "") -> None:
    """Check every field of ``obj`` (a config section, recursively) and the rules between them.

    Args:
        obj: a config dataclass instance.
        prefix: dotted key of ``obj`` (``"fit."``), for the messages.

    Raises:
        VhError: naming the first key out of range.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}{f.name}.")
        else:
            strict.check_field(f, value, prefix + f.name)
    relations = getattr(obj, "_relations", None)
    for name, message in relations() if relations else ():
        raise VhError(message, field=prefix + name)


def section_prefix(cls: type, root: type | None = None, prefix: str = "") -> str | None:
    """Dotted key of the section of type ``cls`` inside :class:`Config` (``FitConfig`` -> ``fit.``)."""
    root = root or Config
    if cls is root:
        return prefix
    for name, tp in typing.get_type_hints(root).items():
        if _is_dataclass_type(tp):
            found = section_prefix(cls, tp, f"{prefix}{name}.")
            if found is not None:
                return found
    return None


def check_grid(grid: dict[str, tuple]) -> dict[str, tuple]:
    """Check each value of a ``--grid`` (keys of ``fit.train``) against its declared range."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, values in grid.items():
        for v in values if key in fields else ():  # parse_grid refuses unknown keys
            try:
                strict.check_field(fields[key], v, f"fit.train.{key}")
            except VhError as e:
                raise VhError(e.message, path=f"--grid {key}", field=e.field) from None
    return grid


# --------------------------------------------------------------------------- loading


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def build(cls: type, data: dict, prefix: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from ``data`` strictly, starting from ``base`` (or defaults).

    Each value given is type- and range-checked; rules between fields are left to
    :func:`validate`, so that layered files may set related keys one at a time.

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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
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
            kwargs[name] = strict.parse(value, tp, key, field_range(fields[name]))
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
    """Resolve a :class:`Config` from defaults, TOML files (in order) and ``--set`` overrides.

    Each value is type- and range-checked as its layer is read (the error names that file or
    ``--set``); the rules between fields are checked once, on the resolved config.
    """
    cfg = base if base is not None else Config()
    layers: list[tuple[str, dict]] = []  # (source, its table), to name who broke a rule
    for p in paths:
        with strict.located(p):
            data = read_toml(p)
            cfg = build(Config, data, base=cfg)
        layers.append((os.fspath(p), data))
    if sets:
        try:
            data = parse_sets(sets)
            cfg = build(Config, data, base=cfg)
        except VhError as e:
            raise VhError(e.message, path="--set", field=e.field, code=e.code) from None
        layers.append(("--set", data))
    try:
        validate(cfg)
    except VhError as e:
        where = _last_to_touch(layers, e.field or "")
        raise VhError(e.message, path=where, field=e.field, code=e.code) from None
    return cfg


def _last_to_touch(layers: list[tuple[str, dict]], key: str) -> str | None:
    """The last source that set anything in the section of ``key`` (None: the defaults did)."""
    section = key.split("[")[0].split(".")[:-1]
    for source, data in reversed(layers):
        node: Any = data
        for part in section:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            return source
    return None


def to_dict(obj: Any) -> Any:
    """Plain JSON/TOML-able form of a config (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(cls: type, data: dict) -> Any:
    """Inverse of :func:`to_dict` (strict, range-checked), e.g. to read a config recorded with
    an artifact: a recorded value out of range is refused like a typed one."""
    prefix = section_prefix(cls) or ""
    obj = build(cls, data, prefix)
    validate(obj, prefix)
    return obj
