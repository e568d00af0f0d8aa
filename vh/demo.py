"""`vh demo`: the whole study on a synthetic dataset and a seeded trunk, end to end.

Stages (each resumable: a second run reuses what is done):
1. ``dataset/``: ``vh synth`` games with the built-in engine (expectimax player).
2. ``trunk/``: ``vh trunk train`` of the 32-wide preset on the recorded moves of the TRAINING
   runs of the split ``vh fit`` uses here (``fit.split``; the init dir records it), a capped
   number of rows for a few epochs (``[trunk]`` of the config) — or ``--init``.
3. ``cache-trunk/`` and ``cache-onehot/``: ``vh extract`` with the trunk, and the raw-board
   baseline, both with a discount so the return head has its column.
4. ``runs/``: the seed's four comparisons (probe/MLP × ordinal/categorical), the return head,
   and the baseline's ordinal probe.
5. ``play/`` (``--play N``: 50 games by default, 0 skips it): ``vh play`` of the study's heads
   and the baselines (random, greedy, expectimax, the trunk's policy head) on N seeded games,
   afterstate search, at most :data:`PLAY_MAX_MOVES` moves a game; ``vh eval`` finds it
   beside ``runs/``.
6. ``report/``: ``vh eval`` over all of them.

Synthetic games end far below 16384, so the demo picks milestone thresholds that split the
runs it actually played (every tile value reached by between 3 % and 97 % of the training
runs; the validation and test runs play no part in the choice) and says so.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from vh import durable
from vh.config import Config, builtin_config, load_config
from vh.errors import VhError
from vh.progress import say

# the seed's four comparisons are these shipped configs: the demo takes each one's target kind
# and head arch (sizes and schedule come from configs/demo.toml, sized for a laptop)
SEED_COMPARISONS = ("probe_ordinal", "probe_categorical", "mlp_ordinal", "mlp_categorical")


def study() -> dict[str, tuple[str, str, str]]:
    """The runs the demo fits, in order: run name -> (target kind, arch, cache).

    The seed's four comparisons (from their configs), a return head, and the raw-board
    baseline's ordinal probe.
    """
    runs = {}
    for name in SEED_COMPARISONS:
        c = load_config([builtin_config(name)])
        runs[name.replace("_", "-")] = (c.fit.target.kind, c.fit.head.arch, "cache-trunk")
    runs["probe-return"] = ("return", "probe", "cache-trunk")
    kind, arch, _ = runs["probe-ordinal"]
    runs["baseline-onehot-probe-ordinal"] = (kind, arch, "cache-onehot")
    return runs


# what the demo writes in its folder, one entry per stage
DEMO_ENTRIES = ("dataset", "trunk", "cache-trunk", "cache-onehot", "runs", "play", "report")

# the demo's trunk: the 32-wide preset embeds ~460k states in about a minute of CPU, where the
# 128-wide one needs several (the demo's budget is 5 minutes in all)
DEMO_PRESET = "tiny"
# rows the trunk trains on per epoch, drawn from all training runs: ~3,600 rows/s on one
# thread, so each epoch costs ~15 s of CPU (all ~200k training rows would cost ~60 s)
DEMO_TRUNK_ROWS = 50_000
# play: afterstate search (one leaf per move, ~2 x the empty cells fewer than the exact
# expectation) and a cap on each game's length, so a match fits beside the rest of the budget
PLAY_MODE = "afterstate"
PLAY_MAX_MOVES = 2000  # synth-quality games last ~1,600 moves; weak heads far fewer
PLAY_SEED = 1  # not synth's seed: the match plays other games than the dataset's


def demo_config(sets=()) -> Config:
    """The embedded demo config (``configs/demo.toml``) with overrides."""
    return load_config([builtin_config("demo")], sets)


def pick_thresholds(highest_tile: np.ndarray, lo: float = 0.03, hi: float = 0.97) -> tuple:
    """Tile values T whose share of runs with highest tile >= T lies in [lo, hi].

    Args:
        highest_tile: the highest tile (value) of each run.
        lo, hi: bounds on the positive rate.

    Returns:
        The thresholds, ascending (at least two, else VhError).
    """
    ts = []
    for e in range(3, 18):
        rate = float(np.mean(highest_tile >= (1 << e)))
        if lo <= rate <= hi:
            ts.append(1 << e)
    if len(ts) < 2:
        raise VhError(
            f"the synthetic games do not spread over two milestones (highest tiles "
            f"{sorted(set(highest_tile.tolist()))}); play more games",
            field="synth.games",
        )
    return tuple(ts)


def train_highest_tiles(reader, split) -> np.ndarray:
    """The highest tile of each training run of a cache, split as ``vh fit`` splits it.

    Args:
        reader: an open cache.
        split: the fit's split config (``fit.split``).
    """
    from vh.heads.splits import TRAIN, split_runs

    ids = np.asarray(reader.runs["id"])
    wheres = split.train_where + split.val_where + split.test_where
    codes = split_runs(ids, split, reader.runs_db() if wheres.strip() else None)
    return np.asarray(reader.runs["highest_tile"])[codes == TRAIN]


def _claim(out: Path) -> None:
    """Mark ``out`` as a demo folder (created if absent) when all of it is the demo's.

    A fresh folder, or one holding only what the demo writes (a demo of a vh before the
    markers), is claimed; a folder holding anything else is written into but never marked,
    so nothing of the user's is ever taken for vh's.
    """
    if not out.is_dir():
        durable.claim(out, "demo")
    elif durable.owner(out) is None and set(durable.entries(out)) <= set(DEMO_ENTRIES):
        durable.claim(out, "demo")


def train_demo_trunk(dataset: Path, init: Path, cfg: Config) -> None:
    """Stage 2: train the demo's trunk (``vh trunk train``) on the fit split's training runs.

    ``train_trunk`` resumes by itself (per epoch) and does nothing when the init dir already
    holds the asked epochs. A ``trunk/`` from an earlier demo (random weights, no training
    record, or trained with other settings) is refused: its caches and runs were made from
    that trunk.
    """
    from vh.extract.trunk_record import RECORD_KEY
    from vh.extract.trunk_train import OtherSettings, train_trunk

    cfg_json = init / "config.json"
    if cfg_json.is_file() and RECORD_KEY not in (durable.try_read_json(cfg_json) or {}):
        raise VhError(
            "holds an untrained trunk from an earlier vh demo; run the demo in a fresh --out",
            path=init,
            field="trunk",
        )
    t = time.perf_counter()
    say("demo: trunk ...")
    try:
        r = train_trunk(
            dataset, init, cfg.trunk, preset=DEMO_PRESET, split=cfg.fit.split,
            max_rows=DEMO_TRUNK_ROWS,
        )  # fmt: skip
    except OtherSettings as e:  # a trunk of an earlier demo: its caches and runs come from it
        raise VhError(
            f"holds training with other settings ({'; '.join(e.differs)}); run the demo in a "
            "fresh --out (or --set the recorded values to keep this one)",
            path=init,
            field="trunk",
            code=e.code,
        ) from None
    if r.epochs_run == 0:
        say(f"demo: trunk: already done, reusing {init}")
        return
    rec = r.record
    say(
        f"demo: trunk: trained on {rec['rows']['train']:,} rows of {rec['train_runs']['count']} "
        f"training runs; validation move accuracy {rec['val_accuracy']:.3f} (uniform legal "
        f"move {rec['val_baselines']['uniform_legal']:.3f}); done in "
        f"{time.perf_counter() - t:.1f} s"
    )


def play_demo(
    out: Path, run_dirs: list[Path], init: Path, games: int, threads: int, trust_pickle: bool
) -> None:
    """Stage 5: ``vh play`` of the study's heads and the baselines into ``out / "play"``.

    Reused when ``play/play.json`` holds a match of the same games, mode and cap; replaced
    (it is the demo's own folder) when those changed. Torch runs on ``threads`` threads
    (``trunk.threads``; 0: as it is): the small leaf batches of a few games run several
    times faster on one thread than on two on a busy 2-core machine.
    """
    import torch

    from vh.extract.play import PLAY_JSON, PlayConfig, play

    cfg = PlayConfig(games=games, seed=PLAY_SEED, mode=PLAY_MODE, max_moves=PLAY_MAX_MOVES)
    folder = out / "play"
    want = {"games": games, "seed": PLAY_SEED, "mode": PLAY_MODE, "max_moves": PLAY_MAX_MOVES}
    old = durable.try_read_json(folder / PLAY_JSON) or {}
    old_heads = [p.get("name") for p in old.get("players", []) if p.get("type") == "head"]
    same = all((old.get("config") or {}).get(k) == v for k, v in want.items())
    if same and old_heads == [d.name for d in run_dirs]:
        say(f"demo: play: already done, reusing {folder}")
        return
    t = time.perf_counter()
    say(f"demo: play {games} games ({PLAY_MODE}, at most {PLAY_MAX_MOVES} moves each) ...")
    was = torch.get_num_threads()
    try:
        if threads > 0:
            torch.set_num_threads(threads)
        play(
            runs=run_dirs, init=init, out=folder, cfg=cfg, overwrite=True, trust_pickle=trust_pickle
        )
    finally:
        torch.set_num_threads(was)
    say(f"demo: play: done in {time.perf_counter() - t:.1f} s")


def _stage(name: str, done_marker: Path, fn, *args) -> None:
    if done_marker.exists():
        say(f"demo: {name}: already done, reusing {done_marker.parent}")
        return
    t = time.perf_counter()
    say(f"demo: {name} ...")
    fn(*args)
    say(f"demo: {name}: done in {time.perf_counter() - t:.1f} s")


def run_demo(
    out, cfg: Config, *, init=None, trust_pickle: bool = False, play_games: int = 0
) -> dict:
    """Run every stage under ``out``; returns the report's metrics.

    Args:
        out: the demo dir.
        cfg: the resolved config (``configs/demo.toml`` plus overrides).
        init: a trunk init dir to use instead of training one.
        trust_pickle: unpickle a ``.pt`` trunk fully (runs its code; see ``load_trunk``).
        play_games: games of the play match (0: no match; an earlier ``play/`` stays and
            ``vh eval`` reports it).
    """
    from vh.cache.reader import open_cache
    from vh.eval.run import evaluate
    from vh.extract.run import run_extract
    from vh.extract.synth import synth
    from vh.heads.api import fit

    out = Path(out)
    _claim(out)
    t0 = time.perf_counter()

    # ---- 1. dataset
    dataset = out / "dataset"
    _stage("synth", dataset / "metadata.db", lambda: synth(cfg.synth, dataset))

    # ---- 2. trunk
    if init is None:
        init = out / "trunk"
        train_demo_trunk(dataset, init, cfg)

    # ---- 3. caches (run_extract resumes, and says so on a finished cache)
    onehot = dataclasses.replace(cfg, extract=dataclasses.replace(cfg.extract, trunk="onehot"))
    for name, c, trunk in (("cache-trunk", cfg, init), ("cache-onehot", onehot, None)):
        say(f"demo: extract {name} ...")
        if run_extract(dataset, trunk, out / name, c, trust_pickle=trust_pickle).already_complete:
            say(f"demo: extract {name}: already done, reusing {out / name}")

    # ---- 4. heads: thresholds that split the runs actually played
    train_tiles = train_highest_tiles(open_cache(out / "cache-trunk"), cfg.fit.split)
    thresholds = pick_thresholds(train_tiles)
    say(
        f"demo: milestone thresholds chosen from the {train_tiles.size} training games: "
        f"{list(thresholds)} (real 2048 data would use 1024..32768)"
    )
    run_dirs = []
    for name, (kind, arch, cache) in study().items():
        target = dataclasses.replace(cfg.fit.target, kind=kind, thresholds=thresholds)
        head = dataclasses.replace(cfg.fit.head, arch=arch)
        fcfg = dataclasses.replace(cfg.fit, target=target, head=head)
        run_dir = out / "runs" / name
        _stage(f"fit {name}", run_dir / "summary.json", fit, fcfg, out / cache, run_dir)
        run_dirs.append(run_dir)

    # ---- 5. play (vh eval finds play/ beside runs/)
    if play_games > 0:
        play_demo(out, run_dirs, Path(init), play_games, cfg.trunk.threads, trust_pickle)

    # ---- 6. report
    say("demo: eval ...")
    metrics = evaluate(run_dirs, out / "report", cfg.eval)
    say(f"demo: finished in {time.perf_counter() - t0:.0f} s")
    return metrics
