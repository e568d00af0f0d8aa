"""Splits by run and the samplers: deterministic, disjoint, reproducible, and as configured."""

import csv
import io
import sqlite3

import numpy as np
import pytest

from vh.config import SamplerConfig, SplitConfig
from vh.errors import VhError
from vh.heads.sampler import epoch_order, manifest_csv, sample_rows, stage_of
from vh.heads.splits import check_nonempty, split_runs

IDS = np.arange(20_000) * 7 + 11


def test_hash_split_is_deterministic_per_run_and_has_the_fractions():
    a = split_runs(IDS, SplitConfig(seed=5))
    assert np.array_equal(a, split_runs(IDS, SplitConfig(seed=5)))
    # a run's split depends on its id and the seed only, not on the other runs
    assert np.array_equal(a[::3], split_runs(IDS[::3], SplitConfig(seed=5)))
    assert not np.array_equal(a, split_runs(IDS, SplitConfig(seed=6)))
    frac = np.bincount(a, minlength=3) / len(IDS)
    # binomial standard error at 20k runs is <= 0.0021; allow 4 of them
    np.testing.assert_allclose(frac, [0.90, 0.05, 0.05], atol=0.0085)


def test_val_run_pct():
    s = split_runs(IDS, SplitConfig(val_run_pct=20.0))
    assert set(np.unique(s)) == {0, 1}
    assert abs(np.mean(s == 1) - 0.2) < 0.012


def _db():
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, highest_tile)")
    db.executemany(
        "INSERT INTO runs VALUES (?, ?)", [(int(i), 2048 if i % 3 else 4096) for i in IDS]
    )
    return db


def test_sql_predicates_override_the_hash():
    cfg = SplitConfig(test_where="highest_tile >= 4096")
    s = split_runs(IDS, cfg, _db())
    assert np.array_equal(s == 2, IDS % 3 == 0)  # exactly the selected runs are test
    rest = s[IDS % 3 != 0]
    assert set(np.unique(rest)) == {0, 1}
    # the rest is hashed over train/val with their fractions renormalised (90:5)
    assert abs(np.mean(rest == 1) - 0.05 / 0.95) < 0.01
    allthree = SplitConfig(
        train_where="id < 1000",
        val_where="id >= 1000 AND id < 2000",
        test_where="id >= 2000 AND id < 3000",
    )
    s = split_runs(IDS, allthree, _db())
    assert np.all(s[IDS >= 3000] == 3)  # selected by none: unused


@pytest.mark.parametrize(
    "cfg, field",
    [
        (SplitConfig(val_where="id < 100", test_where="id < 50"), "fit.split.test_where"),
        (SplitConfig(val_where="no_such_column = 1"), "fit.split.val_where"),
        (SplitConfig(train=0.5, val=0.1, test=0.1), "fit.split.train"),
        (SplitConfig(val_run_pct=150.0), "fit.split.val_run_pct"),
    ],
)
def test_split_refusals(cfg, field):
    with pytest.raises(VhError) as e:
        split_runs(IDS, cfg, _db())
    assert e.value.field == field


def test_empty_split_is_refused_by_name():
    s = split_runs(IDS[:10], SplitConfig(train=0.98, val=0.01, test=0.01))
    with pytest.raises(VhError, match="split '(val|test)' has no runs: 10 runs"):
        check_nonempty(s, IDS[:10], SplitConfig(train=0.98, val=0.01, test=0.01))


def _columns(n_runs=50, length=1000, short=()):
    lens = np.full(n_runs, length)
    lens[list(short)] = 40
    run = np.repeat(np.arange(n_runs) + 100, lens)
    step = np.concatenate([np.arange(k) for k in lens])
    frac = np.concatenate([np.arange(k) / (k - 1) for k in lens]).astype(np.float32)
    return {"run_id": run, "step_index": step, "step_fraction": frac}


def test_stratified_sampler_caps_runs_and_follows_stage_weights():
    cols = _columns(short=(3,))
    cfg = SamplerConfig(kind="stratified", cap_per_run=200, stage_weights=(1.0, 1.0, 3.0))
    split = np.zeros(len(cols["run_id"]), np.uint8)
    rows = sample_rows(cols, split, cfg)["train"]
    assert np.all(np.diff(rows) > 0)  # sorted, no state twice
    per_run = np.bincount(cols["run_id"][rows] - 100)
    assert per_run.max() == 200 and per_run[3] < 40  # the cap; a short run gives what it has
    long = np.isin(cols["run_id"][rows], [100, 101])
    stage = stage_of(cols["step_fraction"][rows][long], cfg.stages)
    # 200 per run split 1:1:3 -> 40, 40, 120 in each long run
    np.testing.assert_array_equal(np.bincount(stage), [80, 80, 240])
    # positions spread evenly: each fifth of stage 2 of run 100 gets a fifth of its picks
    r = rows[(cols["run_id"][rows] == 100)]
    late = cols["step_fraction"][r][cols["step_fraction"][r] >= 0.75]
    counts = np.histogram(late, bins=np.linspace(0.75, 1.0, 6))[0]
    assert counts.min() >= 22 and counts.max() <= 26
    # reproducible from the seed, different with another
    assert np.array_equal(rows, sample_rows(cols, split, cfg)["train"])
    other = sample_rows(cols, split, SamplerConfig(**{**cfg.__dict__, "seed": 1}))["train"]
    assert not np.array_equal(rows, other) and len(other) == len(rows)


def test_all_sampler_step_bounds_and_splits():
    cols = _columns(n_runs=4, length=30)
    split = np.repeat(np.array([0, 1, 2, 0], np.uint8), 30)
    out = sample_rows(cols, split, SamplerConfig(step_index_min=5, step_index_max=9))
    assert len(out["train"]) == 10 and len(out["val"]) == 5 and len(out["test"]) == 5
    assert set(cols["step_index"][out["train"]]) == set(range(5, 10))
    text = manifest_csv(out, cols, SplitConfig(), SamplerConfig())
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["split"] for r in table] == ["train", "val", "test"]
    assert table[0]["rows"] == "10" and table[0]["runs"] == "2"


@pytest.mark.parametrize(
    "cfg, field",
    [
        (SamplerConfig(stages=(0.0, 0.6, 0.5, 1.0)), "fit.sampler.stages"),
        (SamplerConfig(stage_weights=(1.0, 1.0)), "fit.sampler.stage_weights"),
    ],
)
def test_sampler_refusals(cfg, field):
    cols = _columns(n_runs=2, length=10)
    with pytest.raises(VhError) as e:
        sample_rows(cols, np.zeros(20, np.uint8), cfg)
    assert e.value.field == field


def test_epoch_order_is_a_seeded_permutation():
    a = epoch_order(1000, 3, seed=7)
    assert sorted(a) == list(range(1000))
    assert np.array_equal(a, epoch_order(1000, 3, seed=7))  # resume sees the same order
    assert not np.array_equal(a, epoch_order(1000, 4, seed=7))
    b = epoch_order(100, 0, seed=0, states_per_epoch=250)  # wraps through fresh permutations
    assert len(b) == 250 and np.all(np.bincount(b, minlength=100) >= 2)
    assert len(epoch_order(100, 0, seed=0, states_per_epoch=30)) == 30
