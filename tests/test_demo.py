"""`vh demo` has a pulse: every stage runs on a small study, a rerun reuses what is done."""

import dataclasses
import json

import numpy as np
import pytest

import vh.demo
from vh.demo import demo_config, pick_thresholds, run_demo, study, train_highest_tiles
from vh.errors import VhError
from vh.extract.trunk_data import Moves, cap_rows
from vh.extract.trunk_record import RECORD_KEY, split_record
from vh.heads.splits import TRAIN, split_runs


def test_pick_thresholds_keeps_tiles_that_split_the_runs():
    tiles = np.array([512] * 10 + [1024] * 50 + [2048] * 35 + [4096] * 5)
    # >= 512: 100 % (dropped), >= 1024: 90 %, >= 2048: 40 %, >= 4096: 5 %, >= 8192: 0 (dropped)
    assert pick_thresholds(tiles) == (1024, 2048, 4096)
    with pytest.raises(VhError, match="two milestones"):
        pick_thresholds(np.full(20, 1024))


class _Runs:
    """A cache's runs table, all that the threshold choice reads."""

    def __init__(self, ids, tiles):
        self.runs = {"id": np.asarray(ids), "highest_tile": np.asarray(tiles)}


def test_thresholds_come_from_the_training_runs_only():
    split = demo_config().fit.split
    ids = np.arange(1, 401)
    codes = split_runs(ids, split)
    # training runs reach 1024, 2048 or 4096 (a third each); held-out runs all reach 8192,
    # so counting them would add 8192 as a threshold
    tiles = np.where(codes == TRAIN, np.array([1024, 2048, 4096])[ids % 3], 8192)
    got = train_highest_tiles(_Runs(ids, tiles), split)
    want = [tiles[i] for i in range(ids.size) if codes[i] == TRAIN]  # one run at a time
    assert got.tolist() == want
    assert pick_thresholds(got) == (2048, 4096)
    assert pick_thresholds(tiles) == (2048, 4096, 8192)  # what choosing from all runs gave


def test_the_demo_holds_out_over_100_test_runs():
    cfg = demo_config()
    ids = np.arange(1, cfg.synth.games + 1)  # vh synth numbers runs from 1
    counts = np.bincount(split_runs(ids, cfg.fit.split), minlength=3)
    assert counts[2] >= 100 and counts[0] >= 100 and counts[1] >= 30


def test_demo_end_to_end_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vh.demo, "PLAY_MAX_MOVES", 40)  # a short match: 3 games of 40 moves
    cfg = demo_config(
        [
            "trunk.epochs=1",
            "synth.games=30",
            "extract.chunk_rows=4096",
            "fit.train.epochs=2",
            "fit.head.hidden=64",
            "eval.n_boot=20",
            "fit.split.train=0.5",
            "fit.split.val=0.25",
            "fit.split.test=0.25",
        ]
    )
    metrics = run_demo(tmp_path, cfg, play_games=3)
    report = tmp_path / "report"
    assert (report / "index.html").stat().st_size > 10_000
    saved = json.loads((report / "metrics.json").read_text())
    assert set(saved["runs"]) == set(study()) == set(metrics["runs"])
    n_train = int(np.sum(split_runs(np.arange(1, 31), cfg.fit.split) == TRAIN))
    assert f"chosen from the {n_train} training games" in capsys.readouterr().err

    # the trunk was trained on the fit's training runs, and says so: eval finds no head whose
    # test runs its trunk saw
    rec = json.loads((tmp_path / "trunk" / "config.json").read_text())[RECORD_KEY]
    assert rec["split"] == split_record(cfg.fit.split)
    assert {k: rec["split"][k] for k in ("seed", "train", "val", "test")} == {
        "seed": 0,
        "train": 0.5,
        "val": 0.25,
        "test": 0.25,
    }
    assert rec["train_runs"]["count"] == n_train and rec["epochs"] == 1
    assert rec["rows"]["train"] <= vh.demo.DEMO_TRUNK_ROWS
    assert rec["val_accuracy"] > rec["val_baselines"]["uniform_legal"] + 0.1  # it learned
    assert saved["warnings"] == []

    # the match: every head of the study and the four baselines, on the same 3 games, found
    # by eval beside runs/ and reported
    played = json.loads((tmp_path / "play" / "play.json").read_text())
    names = [p["name"] for p in played["players"]]
    assert names == [*study(), "random", "greedy", "expectimax", "policy"]
    assert all(p["games"] == 3 for p in played["players"])
    assert all(max(p["lengths"]) <= 40 for p in played["players"])  # the cap held
    assert played["players"][-2]["lengths"] == [40, 40, 40]  # expectimax lives past the cap
    assert played["config"]["max_moves"] == 40 and played["config"]["mode"] == "afterstate"
    assert "## Offline vs play" in (report / "report.md").read_text()
    assert "play" in saved

    run_demo(tmp_path, cfg, play_games=3)  # second run: every finished stage is reused
    err = capsys.readouterr().err
    assert "synth: already done" in err
    assert "demo: trunk: already done" in err
    assert "extract cache-trunk: already done" in err
    assert "extract cache-onehot: already done" in err
    assert "demo: play: already done" in err
    # synth, trunk, two caches, every fit, the match
    assert err.count("already done") == 5 + len(study())


def test_cap_rows_takes_a_seeded_subset_in_row_order():
    n = 1000
    rows = Moves(
        np.arange(16 * n, dtype=np.uint32).reshape(n, 16).astype(np.uint8),
        np.arange(n, dtype=np.int64) % 4,
        np.ones((n, 4), bool),
    )
    rows = Moves(rows.tokens, np.arange(n, dtype=np.int64), rows.legal)  # move = row number
    got = cap_rows(rows, 300, seed=5)
    keep = got.move  # the row numbers kept
    assert len(got) == 300 and np.all(np.diff(keep) > 0)  # distinct rows, in row order
    assert np.array_equal(got.tokens, rows.tokens[keep])
    assert np.array_equal(cap_rows(rows, 300, seed=5).move, keep)  # seeded
    assert not np.array_equal(cap_rows(rows, 300, seed=6).move, keep)
    assert cap_rows(rows, 0, seed=5) is rows and cap_rows(rows, n, seed=5) is rows


def test_the_demo_refuses_an_untrained_trunk_of_an_earlier_demo(tmp_path):
    from vh.extract.trunk import write_init_dir

    init = tmp_path / "trunk"
    write_init_dir(init, "tiny", 0)  # what vh demo wrote before it trained its trunk
    before = sorted((p.name, p.read_bytes()) for p in init.iterdir() if p.is_file())
    with pytest.raises(VhError, match="untrained trunk from an earlier vh demo"):
        vh.demo.train_demo_trunk(tmp_path / "dataset", init, demo_config())
    assert sorted((p.name, p.read_bytes()) for p in init.iterdir() if p.is_file()) == before


def test_the_demo_refuses_a_trunk_an_earlier_demo_trained_otherwise(tmp_path):
    """A policy-only trunk (as vh demo trained before the tile-counts objective): refused,
    untouched, with the setting named and the way out."""
    from conftest import run_ok

    from vh.extract.trunk_train import train_trunk

    run_ok(["synth", "--out", tmp_path / "dataset", "--games", 12, "--player", "greedy",
            "--set", "synth.max_moves=40"])  # fmt: skip
    cfg = demo_config(["trunk.epochs=1"])
    old = dataclasses.replace(cfg.trunk, counts_weight=0.0)
    init = tmp_path / "trunk"
    train_trunk(tmp_path / "dataset", init, old, preset="tiny", split=cfg.fit.split,
                max_rows=vh.demo.DEMO_TRUNK_ROWS, log=None)  # fmt: skip
    before = sorted((p.name, p.read_bytes()) for p in init.iterdir() if p.is_file())
    with pytest.raises(VhError, match=r"--counts-weight 0.0 -> 1.0\); run the demo in a fresh"):
        vh.demo.train_demo_trunk(tmp_path / "dataset", init, cfg)
    assert sorted((p.name, p.read_bytes()) for p in init.iterdir() if p.is_file()) == before


def test_study_takes_the_seed_comparisons_from_their_configs():
    # the runs (and their order) the demo fitted when they were a literal in vh/demo.py: the
    # report must not change
    assert list(study().items()) == [
        ("probe-ordinal", ("ordinal", "probe", "cache-trunk")),
        ("probe-categorical", ("tiles", "probe", "cache-trunk")),
        ("mlp-ordinal", ("ordinal", "mlp", "cache-trunk")),
        ("mlp-categorical", ("tiles", "mlp", "cache-trunk")),
        ("probe-return", ("return", "probe", "cache-trunk")),
        ("baseline-onehot-probe-ordinal", ("ordinal", "probe", "cache-onehot")),
    ]


def test_the_demo_claims_only_a_folder_that_is_all_its_own(tmp_path):
    from vh import durable
    from vh.demo import _claim

    _claim(tmp_path / "fresh")  # absent: created and marked
    assert durable.owner(tmp_path / "fresh") == "demo"
    old = tmp_path / "old"  # a demo of a vh before the markers: marked
    (old / "dataset").mkdir(parents=True)
    (old / "report").mkdir()
    _claim(old)
    assert durable.owner(old) == "demo"
    mine = tmp_path / "mine"  # something of the user's in it: used, never marked
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    _claim(mine)
    assert durable.owner(mine) is None and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    other = tmp_path / "cache"  # another kind's folder keeps its marker
    durable.claim(other, "cache")
    _claim(other)
    assert durable.owner(other) == "cache"
