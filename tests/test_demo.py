"""`vh demo` has a pulse: every stage runs on a small study, a rerun reuses what is done."""

import json

import numpy as np
import pytest

from vh.demo import demo_config, pick_thresholds, run_demo, study
from vh.errors import VhError


def test_pick_thresholds_keeps_tiles_that_split_the_runs():
    tiles = np.array([512] * 10 + [1024] * 50 + [2048] * 35 + [4096] * 5)
    # >= 512: 100 % (dropped), >= 1024: 90 %, >= 2048: 40 %, >= 4096: 5 %, >= 8192: 0 (dropped)
    assert pick_thresholds(tiles) == (1024, 2048, 4096)
    with pytest.raises(VhError, match="two milestones"):
        pick_thresholds(np.full(20, 1024))


def test_demo_end_to_end_and_resumes(tmp_path, capsys):
    cfg = demo_config(
        [
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
    metrics = run_demo(tmp_path, cfg)
    report = tmp_path / "report"
    assert (report / "index.html").stat().st_size > 10_000
    saved = json.loads((report / "metrics.json").read_text())
    assert set(saved["runs"]) == set(study()) == set(metrics["runs"])
    capsys.readouterr()
    run_demo(tmp_path, cfg)  # second run: every finished stage is reused
    err = capsys.readouterr().err
    assert "synth: already done" in err
    assert "extract cache-trunk: already done" in err
    assert "extract cache-onehot: already done" in err
    assert err.count("already done") == 4 + len(study())  # synth, trunk, two caches, every fit


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
