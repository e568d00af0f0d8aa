"""`vh demo`: the whole study on a synthetic dataset and a seeded trunk, end to end.

Stages (each resumable: a second run reuses what is done):
1. ``dataset/``: ``vh synth`` games with the built-in engine (expectimax player).
2. ``trunk/``: a seeded random-weight init dir, 32 wide (or ``--init``).
3. ``cache-trunk/`` and ``cache-onehot/``: ``vh extract`` with the trunk, and the raw-board
   baseline, both with a discount so the return head has its column.
4. ``runs/``: the seed's four comparisons (probe/MLP × ordinal/categorical), the return head,
   and the baseline's ordinal probe.
5. ``report/``: ``vh eval`` over all of them.

Synthetic games end far below 16384, so the demo picks milestone thresholds that split the
runs it actually played (every tile value reached by between 3 % and 97 % of the training
runs) and says so.
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
DEMO_ENTRIES = ("dataset", "trunk", "cache-trunk", "cache-onehot", "runs", "report")

# the demo's random trunk: the 32-wide preset embeds ~270k states in well under a minute on two
# CPU cores, where the 128-wide one needs several (the demo's budget is 5 minutes in all)
DEMO_PRESET = "tiny"


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


def _stage(name: str, done_marker: Path, fn, *args) -> None:
    if done_marker.exists():
        say(f"demo: {name}: already done, reusing {done_marker.parent}")
        return
    t = time.perf_counter()
    say(f"demo: {name} ...")
    fn(*args)
    say(f"demo: {name}: done in {time.perf_counter() - t:.1f} s")


def run_demo(out, cfg: Config, *, init=None, trust_pickle: bool = False) -> dict:
    """Run every stage under ``out``; returns the report's metrics.

    Args:
        out: the demo dir.
        cfg: the resolved config (``configs/demo.toml`` plus overrides).
        init: a trunk init dir to use instead of a seeded random one.
        trust_pickle: unpickle a ``.pt`` trunk fully (runs its code; see ``load_trunk``).
    """
    from vh.cache.reader import open_cache
    from vh.eval.run import evaluate
    from vh.extract.run import run_extract
    from vh.extract.synth import synth
    from vh.extract.trunk import write_init_dir
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
        _stage(
            "trunk",
            init / "config.json",
            lambda: write_init_dir(init, DEMO_PRESET, cfg.extract.seed),
        )

    # ---- 3. caches (run_extract resumes, and says so on a finished cache)
    onehot = dataclasses.replace(cfg, extract=dataclasses.replace(cfg.extract, trunk="onehot"))
    for name, c, trunk in (("cache-trunk", cfg, init), ("cache-onehot", onehot, None)):
        say(f"demo: extract {name} ...")
        if run_extract(dataset, trunk, out / name, c, trust_pickle=trust_pickle).already_complete:
            say(f"demo: extract {name}: already done, reusing {out / name}")

    # ---- 4. heads: thresholds that split the runs actually played
    reader = open_cache(out / "cache-trunk")
    thresholds = pick_thresholds(np.asarray(reader.runs["highest_tile"]))
    say(
        f"demo: milestone thresholds chosen from the synthetic games: {list(thresholds)} "
        f"(real 2048 data would use 1024..32768)"
    )
    run_dirs = []
    for name, (kind, arch, cache) in study().items():
        target = dataclasses.replace(cfg.fit.target, kind=kind, thresholds=thresholds)
        head = dataclasses.replace(cfg.fit.head, arch=arch)
        fcfg = dataclasses.replace(cfg.fit, target=target, head=head)
        run_dir = out / "runs" / name
        _stage(f"fit {name}", run_dir / "summary.json", fit, fcfg, out / cache, run_dir)
        run_dirs.append(run_dir)

    # ---- 5. report
    say("demo: eval ...")
    metrics = evaluate(run_dirs, out / "report", cfg.eval)
    say(f"demo: finished in {time.perf_counter() - t0:.0f} s")
    return metrics
