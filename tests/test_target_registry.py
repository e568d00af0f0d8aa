"""The target registry: every kind is one module; a new kind is one file.

The toy kind of ``tests/toy_target.py`` (the share of the game still to play, regressed) is
registered from that file alone, then fitted, evaluated next to a built-in ordinal head and
exported, and each step is checked against an independent computation. The registry's own
contract (names, aliases, unknown names, clashes, the config's allowed kinds) is checked too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import FIT_SETS, TINY

from vh.cache.reader import open_cache
from vh.config import EvalConfig, TargetConfig, load_config
from vh.errors import VhError
from vh.heads import targets

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ("ordinal", "tiles", "logscore", "return")
SETS = [s for s in FIT_SETS if s != "--set"]


@pytest.fixture
def toy():
    """The toy kind, registered for one test only (later tests see the four built-in kinds)."""
    import toy_target

    targets.register(toy_target.KIND)  # again, if an earlier test unregistered it
    yield toy_target.KIND
    targets.unregister(toy_target.KIND.name)


# --------------------------------------------------------------------------- the registry


def test_builtin_kinds_in_order_with_the_cli_alias():
    assert targets.names() == BUILTIN  # the verdict's pools follow this order
    assert [p.name for p in targets.pools()] == ["threshold", "logscore", "return"]
    assert targets.cli_names() == {**{k: k for k in BUILTIN}, "categorical": "tiles"}
    for name in BUILTIN:
        assert targets.get(name).name == name


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(VhError) as e:
        targets.get("nope")
    assert e.value.field == "fit.target.kind"
    assert "'nope'" in e.value.message and "ordinal, tiles, logscore, return" in e.value.message
    with pytest.raises(VhError) as e:  # the spec asks the registry too
        targets.make_spec(TargetConfig(kind="nope"))
    assert e.value.field == "fit.target.kind"
    with pytest.raises(VhError) as e:  # and so does the config, before anything runs
        load_config(sets=['fit.target.kind="nope"'])
    assert e.value.field == "fit.target.kind"
    assert e.value.message == "expected 'ordinal' | 'tiles' | 'logscore' | 'return', got 'nope'"


def test_a_name_taken_by_another_kind_is_refused(toy):
    class Clash(type(toy)):
        name = "ordinal"
        aliases = ()

    with pytest.raises(ValueError, match="taken"):
        targets.register(Clash())
    assert targets.get("ordinal").__class__.__name__ == "Ordinal"


def test_config_and_cli_names_follow_the_registry(toy):
    assert load_config(sets=['fit.target.kind="toy_remaining"']).fit.target.kind == toy.name
    assert targets.cli_names()["toy"] == toy.name
    targets.unregister(toy.name)
    with pytest.raises(VhError, match="toy_remaining"):
        load_config(sets=['fit.target.kind="toy_remaining"'])


def test_fit_head_categorical_is_tiles(tiny, tmp_path):
    from vh.cli import main

    out = tmp_path / "run"
    args = ["fit", "--cache", tiny["cache"], "--out", out, "--head", "categorical"]
    r = CliRunner().invoke(main, [str(a) for a in [*args, "--config", TINY, *FIT_SETS]])
    assert r.exit_code == 0, r.output
    target = json.loads((out / "config.json").read_text())["target"]
    assert (target["kind"], target["encoding"], target["n_out"]) == ("tiles", "class", 3)


# --------------------------------------------------------------------------- a new kind, one file


def test_the_toy_kind_is_one_file():
    # nothing outside the test folder names it: adding it touched no other module
    names = ("toy_remaining", "toy_target")
    for folder in ("vh", "heads", "eval", "extract", "cache"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert not any(n in text for n in names), path


def test_toy_kind_is_fitted_evaluated_and_exported(toy, tiny, tmp_path):
    from vh.eval.predictions import load_predictions
    from vh.eval.run import evaluate
    from vh.export import export_head
    from vh.extract.trunk import load_trunk
    from vh.heads.api import fit, load_run

    # ---- fit: the head learns 1 - step_fraction with the squared error
    cfg = load_config([TINY], sets=[*SETS, 'fit.target.kind="toy_remaining"', "fit.train.lr=0.01"])
    run = tmp_path / "toy"
    summary = fit(cfg.fit, tiny["cache"], run, log=lambda s: None)
    assert summary["target"]["kind"] == toy.name and summary["target"]["n_out"] == 1
    head, reader = load_run(run), open_cache(tiny["cache"])
    val = np.load(run / "sampling.npz")["val_rows"]
    truth_val = 1.0 - reader.column("step_fraction")[val].astype(np.float64)
    pred_val = head.predict(reader.take(val))  # the toy's link: the scalar itself
    mse = float(np.mean((pred_val - truth_val) ** 2))
    best = summary["members"][summary["best_member"]]["best_val_nll"]
    assert mse == pytest.approx(best, rel=1e-3)  # the fit's validation NLL is this MSE

    # ---- eval: next to the built-in ordinal probe, in a pool of its own
    metrics = evaluate(
        [run, tiny["run"]], tmp_path / "report", EvalConfig(n_boot=50), log=lambda s: None
    )
    toy_json = metrics["runs"]["toy"]
    assert (toy_json["kind"], toy_json["pool"], toy_json["family"]) == (
        toy.name,
        "toy",
        "toy (remaining)",
    )
    pred = load_predictions(tmp_path / "report" / "predictions" / "toy.npz")
    rows = np.load(run / "sampling.npz")["test_rows"]
    order = np.lexsort((reader.column("step_index")[rows], reader.column("run_id")[rows]))
    rows = rows[order]  # the report's states: sorted by (run, step); one cache, one split
    truth = 1.0 - reader.column("step_fraction")[rows].astype(np.float64)
    np.testing.assert_allclose(pred.out["truth"], truth, rtol=1e-6)
    err = head.predict(reader.take(rows)) - truth
    assert toy_json["headline"]["rmse"]["value"] == pytest.approx(np.sqrt(np.mean(err**2)), 1e-5)
    assert toy_json["headline"]["mae"]["value"] == pytest.approx(np.mean(np.abs(err)), 1e-5)
    pools = [v["pool"] for v in metrics["verdicts"]]
    assert pools == ["threshold", "toy"]  # registration order: built-in pools first
    assert metrics["verdicts"][1]["winner"] == "toy"  # the only head of its pool
    page = (tmp_path / "report" / "report.md").read_text()
    assert "Winner among the toy heads (the share of the game still to play): toy" in page

    # ---- export: the kind's objective, and the Linear computes the head's output
    out = export_head(run, tiny["trunk"], tmp_path / "init")
    block = json.loads((out / "config.json").read_text())["value_head"]
    assert block["objective"] == {"type": "mse", "vocab_size": 1, "vocab_type": "toy_remaining"}
    emb = reader.take(rows[:200]).astype(np.float32)
    with torch.inference_mode():
        exported = load_trunk(out).model.value_head(torch.from_numpy(emb)).numpy()
    np.testing.assert_allclose(exported[:, 0], head.predict(emb), atol=1e-5, rtol=1e-5)
