"""`vh play`: seeded games on the built-in engine, moves chosen by value heads, with baselines.

A head comes from a run dir plus the trunk its cache was extracted from (the trunk's weights
must match the cache's fingerprint: :func:`vh.export._check_same_trunk`, the one same-trunk
check), or from an init dir written by ``vh export`` (its ``value_head`` block, evaluated by
the :class:`~vh.extract.encoder.Encoder`). Run-dir heads are read from the best checkpoint
with numpy (:mod:`vh.heads.rundir`), turned into torch tensors by :func:`vh.export.head_tensors`
and evaluated in torch on the trunk's pooled embedding, as the cache holds it: play never
imports jax.

The leaf value (``--value``):

- ``return`` (return heads): the expected discounted return, ``h^-1`` of the expectation over
  the bins (or of the scalar), as eval scores it; a move is worth ``reward + gamma · leaf``
  with the cache's ``gamma``;
- ``score`` (ordinal, tiles and log-score heads): the expected final score. Threshold heads use
  the report's construction ``E = m_0 + sum_k delta_k q_k`` (:func:`vh.eval.metrics.
  expected_score`), ``delta_k`` the increments of the median final score per highest-tile
  bucket over the train split's runs (:func:`vh.eval.metrics.bucket_medians`, from the run
  dir's sampling and its cache); log-score heads the expectation of ``expm1`` over the bins;
- ``p:T`` (threshold heads): ``P(highest tile >= T)``, T one of the head's thresholds.

Every player plays the same seeded games (:func:`vh.extract.synth.game_seeds` of run ids
1..N; draw t of a game's stream decides its move t's spawn), so the figures are paired.
Results go to ``play.json`` and ``play.md`` in the output folder (kind ``play``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vh import __version__, durable
from vh.errors import VhError
from vh.extract.board import unpack
from vh.extract.play_search import (
    LEAF_BATCH,
    MODES,
    PolicyPlayer,
    Search,
    ValuePlayer,
    leaf_function,
    parse_value,
    play_one,
    render_md,
    resolve_value,
    terminal_function,
)
from vh.progress import say

PLAY_JSON, PLAY_MD = "play.json", "play.md"
PLAY_FILES = (PLAY_JSON, PLAY_MD)
BASELINES = ("random", "greedy", "expectimax", "policy")
DEFAULT_MILESTONES = (1024, 2048, 4096, 8192, 16384, 32768)
EXPECTIMAX_DEPTH = 2  # the built-in expectimax baseline's depth (synth's default)
DEPTHS = (1, 2)  # value-head search depths: a third level costs ~50x the second
# the export block's vocab_type -> (target kind, encoding)
_EXPORT_KINDS = {
    "ordinal_milestones": ("ordinal", "bernoulli"),
    "tile_bucket": ("tiles", "class"),
    "log_score_bins": ("logscore", "twohot"),
    "muzero_return_bins": ("return", "twohot"),
    "muzero_return": ("return", "scalar"),
}


@dataclass(frozen=True)
class PlayConfig:
    """What `vh play` does (the CLI's options).

    Attributes:
        games: games per player. seed: the games' seed. depth: search depth (1 or 2).
        mode: ``expectation`` | ``afterstate``. value: ``score`` | ``return`` | ``p:T`` | None
            (the head's natural value: return for return heads, else score).
        baselines: names from :data:`BASELINES`; None = random, greedy, expectimax, and the
            trunk's policy head when it has one.
        device: ``cpu`` | ``cuda``. batch: leaf boards per trunk forward.
        max_moves: stop each game after this many moves (0: play to the end).
    """

    games: int
    seed: int = 0
    depth: int = 1
    mode: str = "expectation"
    value: str | None = None
    baselines: tuple[str, ...] | None = None
    device: str = "cpu"
    batch: int = LEAF_BATCH
    max_moves: int = 0


@dataclass
class Head:
    """A value head ready to play: its value function and how moves are valued."""

    name: str
    spec: object  # vh.heads.targets.TargetSpec
    value_fn: Callable[[np.ndarray], np.ndarray]
    search: Search
    value: str
    source: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- checks


def check_config(cfg: PlayConfig) -> None:
    """Refuse bad options before anything is loaded or written."""
    if cfg.games <= 0:
        raise VhError(f"must be at least 1, got {cfg.games}", field="--games")
    if cfg.max_moves < 0:
        raise VhError(f"must be 0 (no limit) or more, got {cfg.max_moves}", field="--max-moves")
    if cfg.depth not in DEPTHS:
        raise VhError(
            f"must be {' or '.join(map(str, DEPTHS))} (each level costs ~50x more leaves), "
            f"got {cfg.depth}",
            field="--depth",
        )
    if cfg.mode not in MODES:
        raise VhError(f"{cfg.mode!r} is not one of {', '.join(MODES)}", field="--mode")
    parse_value(cfg.value)
    unknown = [b for b in cfg.baselines or () if b not in BASELINES]
    if unknown:
        raise VhError(
            f"unknown baseline {unknown[0]!r} (valid: {', '.join(BASELINES)})", field="--baselines"
        )
    if cfg.device not in ("cpu", "cuda"):
        raise VhError(f"{cfg.device!r} is not cpu or cuda", field="--device")
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise VhError("no CUDA device is available", field="--device")


def check_out(out: Path, inputs: dict, overwrite: bool) -> None:
    """Refuse an output folder that is (or holds) an input, or one vh did not make for play."""
    durable.check_not_input(out, inputs)
    if os.path.lexists(out) and not out.is_dir():
        raise VhError("exists and is not a directory", path=out, field="--out", code=3)
    if out.is_dir() and durable.entries(out):
        if not overwrite:
            raise VhError("output dir exists (pass --overwrite to replace it)", path=out)
        durable.check_owned(out, "play", files=PLAY_FILES)


def train_medians(run_dir, config: dict, spec) -> np.ndarray:
    """Median final score per highest-tile bucket over the train split's runs (the report's
    ``delta_k``): from the run dir's sampling and its cache, as eval computes them."""
    from vh.cache.reader import open_cache
    from vh.eval import metrics as M
    from vh.heads import rundir
    from vh.heads.targets import run_index, tile_bucket

    cache = config.get("cache") or {}
    if "path" not in cache or "fingerprint" not in cache:
        raise VhError("config.json names no cache", path=run_dir, field="cache")
    reader = open_cache(cache["path"], expect_fingerprint=cache["fingerprint"])
    train_rows = rundir.read_sampling(run_dir)["train_rows"]
    train_runs = np.unique(np.asarray(reader.column("run_id"))[train_rows])
    pos = run_index(reader, train_runs)
    tiles = np.asarray(reader.runs["highest_tile"], np.int64)[pos]
    scores = np.asarray(reader.runs["final_score"], np.float64)[pos]
    k = len(spec.thresholds)
    return M.bucket_medians(
        final_score=scores, bucket=tile_bucket(tiles, spec.thresholds), n_buckets=k + 1
    )


def _gamma(config: dict) -> float:
    """The discount of the cache's returns (``extract.gamma`` of its fingerprint)."""
    fp = (config.get("cache") or {}).get("fingerprint") or {}
    gamma = (fp.get("extract") or {}).get("gamma")  # None: no returns extracted
    return 1.0 if gamma is None else float(gamma)


def _search(cfg: PlayConfig, spec, gamma: float, value: str) -> Search:
    common = dict(batch=cfg.batch, depth=cfg.depth, terminal=terminal_function(value))
    if spec.kind == "return":  # a return is this move's reward plus the discounted rest
        return Search(cfg.mode, reward_weight=1.0, discount=gamma, **common)
    return Search(cfg.mode, **common)


# --------------------------------------------------------------------------- torch side


def _autocast(device: str):
    import contextlib

    import torch

    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def torch_fn(model, out_fn: Callable, device: str, post: Callable) -> Callable:
    """Boards -> ``post(out_fn(model, tokens) as float64 numpy)``, under inference mode."""
    import torch

    def fn(boards: np.ndarray) -> np.ndarray:
        tokens = torch.from_numpy(unpack(boards).astype(np.int64)).to(device)  # (B, 16)
        with torch.inference_mode(), _autocast(device):
            z = out_fn(model, tokens)
        z = z.float().cpu().numpy().astype(np.float64)
        return post(z[:, None] if z.ndim == 1 else z)

    return fn


def head_module(tensors: dict[str, np.ndarray], block: dict, dim: int):
    """A torch module computing a run head's logits from pooled embeddings (B, D)."""
    import torch
    from torch import nn

    from vh.extract.encoder import MlpValueHead

    state = {k.removeprefix("value_head."): torch.from_numpy(v) for k, v in tensors.items()}
    if block["arch"] == "probe":
        module = nn.Linear(dim, state["weight"].shape[0])
    else:
        out, hidden = state["fc2.weight"].shape
        module = MlpValueHead(dim, hidden, out, block.get("activation", "gelu_tanh"))
    module.load_state_dict(state, strict=True)
    return module.eval().requires_grad_(False)


# --------------------------------------------------------------------------- loading heads


@dataclass(frozen=True)
class RunParams:
    """A run dir's head as numpy params (what :func:`vh.export.head_tensors` reads)."""

    run_dir: Path
    member: str
    spec: object
    arch: str
    params: dict
    config: dict

    def params_width(self) -> int:
        from vh.heads.rundir import input_width

        return input_width(self.params, self.run_dir)


def read_run(run_dir, member: str | None = None) -> RunParams:
    """The best (or named) member of a run dir, read with numpy only."""
    from vh.heads import rundir
    from vh.heads.targets import TargetSpec

    run_dir = Path(run_dir)
    config = rundir.read_config(run_dir)
    member = member or rundir.read_summary(run_dir)["best_member"]
    names = [g["name"] for g in config.get("grid", [])]
    if member not in names:
        raise VhError(f"no member {member!r}", path=run_dir, field="member")
    spec = TargetSpec.from_dict(config["target"])
    arch = config["fit"]["head"]["arch"]
    return RunParams(run_dir, member, spec, arch, rundir.read_best(run_dir, member), config)


def _trunk_for(rp: RunParams, trunk, init):
    """The trunk a run's head reads: ``trunk`` (checked against the cache), or the one-hot
    baseline when the run was fitted on a one-hot cache."""
    from vh.export import _check_same_trunk
    from vh.extract.trunk import load_onehot

    fp = ((rp.config.get("cache") or {}).get("fingerprint") or {}).get("trunk") or {}
    if fp.get("kind") == "onehot":
        return load_onehot(int((fp.get("config") or {}).get("vocab", 16)))
    if trunk is None:
        raise VhError("a run dir's head needs --init (the trunk of its cache)", field="--init")
    _check_same_trunk(rp, trunk, init)  # refuses a head trained on another trunk's embeddings
    return trunk


def run_head(run_dir, trunk, init, cfg: PlayConfig, member: str | None = None) -> Head:
    """A run dir's head on its trunk, checked to be the trunk of the run's cache."""
    from vh.export import head_tensors

    rp = read_run(run_dir, member)
    value, _ = resolve_value(rp.spec, cfg.value)
    lt = _trunk_for(rp, trunk, init)
    if rp.params_width() != lt.dim:
        raise VhError(
            f"head input width {rp.params_width()} != trunk width {lt.dim}",
            path=run_dir,
            field="params",
        )
    tensors, block = head_tensors(rp)
    module = head_module(tensors, block, lt.dim).to(cfg.device)
    lt.model.to(cfg.device)
    needs_medians = value == "score" and rp.spec.kind in ("ordinal", "tiles")
    medians = train_medians(rp.run_dir, rp.config, rp.spec) if needs_medians else None
    post = leaf_function(rp.spec, value, medians)
    fn = torch_fn(lt.model, lambda m, t: module(m.pooled(t)), cfg.device, post)
    source = {"run_dir": str(rp.run_dir), "member": rp.member, "arch": rp.arch}
    if medians is not None:
        source["medians"] = [float(m) for m in medians]
    return Head(
        rp.run_dir.name, rp.spec, fn, _search(cfg, rp.spec, _gamma(rp.config), value), value, source
    )


def _export_spec(block: dict, where):
    """The target spec an exported ``value_head`` block describes."""
    from vh.heads.targets import TargetSpec

    obj = block.get("objective") or {}
    if obj.get("vocab_type") not in _EXPORT_KINDS:
        raise VhError(
            f"unknown vocab_type {obj.get('vocab_type')!r} (valid: {', '.join(_EXPORT_KINDS)})",
            path=where,
            field="value_head.objective.vocab_type",
        )
    kind, encoding = _EXPORT_KINDS[obj["vocab_type"]]
    lo, hi = (obj.get("support") or [0.0, 0.0])[:2]
    n_out = int(obj.get("vocab_size", 1))
    thresholds = tuple(int(t) for t in obj.get("thresholds") or ())
    return TargetSpec(kind, thresholds, n_out, encoding, lo=float(lo), hi=float(hi))


def export_head(init, lt, cfg: PlayConfig) -> Head:
    """The ``value_head`` of an init dir written by ``vh export``."""
    from vh.heads import rundir

    block = lt.config_dict.get("value_head")
    if lt.config is None or lt.config.value_head is None or not isinstance(block, dict):
        raise VhError("config.json has no value_head block (not from vh export?)", path=init)
    spec = _export_spec(block, Path(init) / "config.json")
    value, _ = resolve_value(spec, cfg.value)
    src = (block.get("source") or {}).get("run_dir")
    needs_run = spec.kind == "return" or (value == "score" and spec.kind in ("ordinal", "tiles"))
    config = {}
    if needs_run:  # the medians (or gamma) live with the run the head came from
        if not src or not Path(src, rundir.CONFIG).is_file():
            if spec.kind != "return":
                raise VhError(
                    f"the expected score needs the source run dir ({src}) and its cache; "
                    "pass --value p:T instead",
                    path=init,
                    field="value_head.source.run_dir",
                )
            say(f"warning: {init}: source run dir not found: returns undiscounted (gamma 1)")
        else:
            config = rundir.read_config(src)
    medians = train_medians(src, config, spec) if config and spec.kind != "return" else None
    post = leaf_function(spec, value, medians)
    lt.model.to(cfg.device)
    fn = torch_fn(lt.model, lambda m, t: m.value(t), cfg.device, post)
    source = {"init": str(init), "run_dir": src, "arch": block.get("arch")}
    return Head(Path(init).name, spec, fn, _search(cfg, spec, _gamma(config), value), value, source)


def policy_player(lt, cfg: PlayConfig) -> PolicyPlayer | None:
    """The trunk's own policy head as a player (None for a trunk without one)."""
    if lt is None or lt.config is None or lt.config.head_type != "action_policy":
        return None
    lt.model.to(cfg.device)
    fn = torch_fn(lt.model, lambda m, t: m(t)[1], cfg.device, lambda z: z)
    return PolicyPlayer("policy", fn, cfg.batch)


# --------------------------------------------------------------------------- playing


def _baselines(cfg: PlayConfig, policy: PolicyPlayer | None, where) -> list:
    """The baseline players asked for (None: all that apply)."""
    from vh.extract.players import make_player

    names = cfg.baselines
    if names is None:
        names = BASELINES if policy is not None else BASELINES[:-1]
    if "policy" in names and policy is None:
        raise VhError(
            "the trunk has no policy head (head_type action_policy)",
            path=where,
            field="--baselines",
        )
    return [
        policy if n == "policy" else make_player(n, EXPECTIMAX_DEPTH) for n in dict.fromkeys(names)
    ]


def _unique_names(heads: list[Head]) -> None:
    seen: dict[str, int] = {}
    for h in heads:
        seen[h.name] = seen.get(h.name, 0) + 1
        if seen[h.name] > 1:
            h.name = f"{h.name}#{seen[h.name]}"


def milestones_of(heads: Sequence[Head]) -> tuple[int, ...]:
    """The heads' thresholds (union), or :data:`DEFAULT_MILESTONES` when none has any."""
    found = sorted({int(t) for h in heads for t in h.spec.thresholds})
    return tuple(found) or DEFAULT_MILESTONES


def play_match(heads: Sequence[Head], baselines: Sequence, cfg: PlayConfig, log=say) -> dict:
    """Every head and baseline plays the same ``cfg.games`` seeded games; the record."""
    from vh.extract.synth import game_seeds

    seeds = game_seeds(cfg.seed, np.arange(1, cfg.games + 1, dtype=np.int64))
    milestones = milestones_of(heads)
    players = []
    for h in heads:
        rec = play_one(
            ValuePlayer(h.name, h.value_fn, h.search), seeds, milestones, log, cfg.max_moves
        )
        search = {"depth": cfg.depth, "mode": h.search.mode, "discount": h.search.discount,
                  "reward_weight": h.search.reward_weight}  # fmt: skip
        players.append({"name": h.name, "type": "head", "kind": h.spec.kind, "value": h.value,
                        "search": search, "source": h.source, **rec})  # fmt: skip
    for b in baselines:
        rec = play_one(b, seeds, milestones, log, cfg.max_moves)
        players.append({"name": b.name, "type": "baseline", **rec})
    return {
        "vh_version": __version__,
        "config": {
            "games": cfg.games,
            "seed": cfg.seed,
            "depth": cfg.depth,
            "mode": cfg.mode,
            "value": cfg.value,
            "device": cfg.device,
            "expectimax_depth": EXPECTIMAX_DEPTH,
            "max_moves": cfg.max_moves,
        },  # fmt: skip
        "milestones": list(milestones),
        "players": players,
    }


def write_play(out: Path, record: dict) -> None:
    """``play.json`` and ``play.md``, each atomically, in ``out`` claimed as a play folder."""
    durable.claim(out, "play")
    durable.atomic_write_json(out / PLAY_JSON, record)
    durable.atomic_write_text(out / PLAY_MD, render_md(record))


def play(
    *,
    runs: Sequence[str | os.PathLike] = (),
    init: str | os.PathLike | None = None,
    export: str | os.PathLike | None = None,
    out: str | os.PathLike,
    cfg: PlayConfig,
    overwrite: bool = False,
    trust_pickle: bool = False,
    log=say,
) -> Path:
    """`vh play`: load the heads, play them and the baselines, write the files.

    Args:
        runs: run dirs (their caches extracted from ``init``), or none with ``export``.
        init: the trunk of the runs' caches. export: an init dir with a ``value_head``.
        out: output folder (``play.json``, ``play.md``).
        cfg: the options. overwrite: replace an earlier play folder.
        trust_pickle: unpickle a ``.pt`` trunk fully (see ``load_trunk``).

    Returns:
        ``out``.
    """
    from vh.extract.trunk import load_trunk

    # ---- refuse bad input before anything is loaded or written
    out = Path(out)
    check_config(cfg)
    if bool(runs) == bool(export):
        raise VhError("give --run RUN_DIR (with --init TRUNK) or --export INIT_DIR", field="--run")
    if export is not None and init is not None:
        raise VhError("--init goes with --run; an --export dir holds its own trunk", field="--init")
    inputs = {f"--run {r}": r for r in runs}
    inputs.update({"--init": init, "--export": export})
    check_out(out, inputs, overwrite)

    # ---- heads and players
    trunk_dir = export if export is not None else init
    lt = None if trunk_dir is None else load_trunk(trunk_dir, trust_pickle=trust_pickle)
    if export is not None:
        heads = [export_head(export, lt, cfg)]
    else:
        heads = [run_head(r, lt, init, cfg) for r in runs]
    _unique_names(heads)
    baselines = _baselines(cfg, policy_player(lt, cfg), trunk_dir)

    # ---- play, then write
    record = play_match(heads, baselines, cfg, log)
    check_out(out, inputs, overwrite)  # again: playing took a while
    write_play(out, record)
    return out
