"""Early stopping keeps the epoch with the lowest validation NLL of ``metrics.jsonl``.

A small MLP on labels that carry a little signal and few training runs overfits after a few
epochs at a high learning rate, so the validation NLL turns up before the last epoch; patience
is long enough that training goes past the minimum. The best epoch is then read three ways:
the lowest validation line of ``metrics.jsonl`` (independent of the early-stopping code), the
member's ``summary.json`` entry, and the epoch the best checkpoint records in its header.
"""

import json

import numpy as np

from vh.cache.writer import write_cache_from_arrays
from vh.config import load_config
from vh.heads import checkpoint as ck
from vh.heads import rundir
from vh.heads.api import fit

TILES = np.array([512, 1024, 2048, 4096])
PER = 5  # states per run


def _tiny_cache(path, rng, n_runs=240, d=16):
    """Runs whose class depends weakly on one feature: easy to overfit with 16 inputs."""
    x = rng.normal(size=(n_runs * PER, d)).astype(np.float16)
    z = x[::PER, 0].astype(np.float64)
    cls = np.clip((0.5 * z + rng.logistic(size=n_runs)).round().astype(int) + 1, 0, 3)
    step = np.tile(np.arange(PER), n_runs)
    cols = {
        "run_id": np.repeat(np.arange(n_runs) + 100, PER),
        "step_index": step,
        "step_fraction": (step / (PER - 1)).astype(np.float32),
    }
    runs = {
        "id": np.arange(n_runs) + 100,
        "steps": np.full(n_runs, PER),
        "highest_tile": TILES[cls],
        "final_score": rng.integers(1000, 60000, n_runs),
        "seed": np.arange(n_runs),
    }
    return write_cache_from_arrays(path, x, cols, runs, chunk_rows=1024)


def test_best_checkpoint_is_the_epoch_with_the_lowest_val_nll(tmp_path):
    cache = _tiny_cache(tmp_path / "c", np.random.default_rng(0))
    sets = [
        "fit.target.thresholds=[1024, 2048, 4096]",
        "fit.head.arch=mlp",
        "fit.head.hidden=128",
        "fit.head.dropout=0",
        "fit.train.lr=0.03",
        "fit.train.wd=0",
        "fit.train.batch_size=64",
        "fit.train.epochs=12",
        "fit.train.patience=12",
    ]
    run = tmp_path / "run"
    fit(load_config(sets=sets).fit, cache, run, log=lambda s: None)
    summary = json.loads((run / "summary.json").read_text())
    member = summary["best_member"]
    lines = rundir.metrics_path(run, member).read_text().splitlines()
    val = {r["epoch"]: r["nll"] for r in map(json.loads, lines) if r["split"] == "val"}
    best_epoch = min(val, key=val.get)
    print({e: round(v, 4) for e, v in val.items()})
    assert len(val) == 12  # patience let it run every epoch
    assert best_epoch < max(val), "the planted overfit did not happen: the test would be vacuous"
    assert summary["members"][member]["best_epoch"] == best_epoch
    assert abs(summary["members"][member]["best_val_nll"] - val[best_epoch]) < 1e-6
    _, meta = ck.load_tensors(rundir.best_path(run, member))
    assert meta["epoch"] == best_epoch
