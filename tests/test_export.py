"""`vh export`: a fitted head inside the PyTorch Encoder gives the JAX head's outputs.

Parity: on the same embeddings, the exported ``value_head`` (probe and MLP, ordinal — plain
and monotone — and categorical) equals the JAX head's logits to 1e-5.
Round trip: export, load with vh's trunk loader, run the trunk on the dataset's boards: the
value outputs match the predictions the run dir's head makes on the (float32) cache.
"""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import export_study

from vh.cache.reader import open_cache
from vh.cli import main
from vh.errors import VhError
from vh.export import export_head
from vh.extract import board
from vh.extract.dataset import open_dataset
from vh.extract.trunk import load_trunk, write_init_dir
from vh.heads.api import fit, load_run

HEADS = {  # name -> (target kind, arch, monotone)
    "probe-ordinal": ("ordinal", "probe", False),
    "probe-monotone": ("ordinal", "probe", True),
    "probe-tiles": ("tiles", "probe", False),
    "mlp-ordinal": ("ordinal", "mlp", False),
    "mlp-monotone": ("ordinal", "mlp", True),
    "mlp-tiles": ("tiles", "mlp", False),
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    cfg = export_study(root, "fit.head.hidden=32")
    runs = {}
    for name, (kind, arch, mono) in HEADS.items():
        import dataclasses

        f = cfg.fit
        fcfg = dataclasses.replace(
            f,
            target=dataclasses.replace(f.target, kind=kind),
            head=dataclasses.replace(f.head, arch=arch, monotone=mono),
        )
        fit(fcfg, root / "cache", root / "runs" / name, log=lambda s: None)
        runs[name] = root / "runs" / name
    return root, runs


@pytest.mark.parametrize("name", list(HEADS))
def test_exported_head_matches_the_jax_head(study, name):
    root, runs = study
    out = export_head(runs[name], root / "trunk", root / f"init-{name}")
    lt = load_trunk(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["value_head"]["arch"] == HEADS[name][1]
    rh = load_run(runs[name])
    emb = open_cache(root / "cache").read_rows(0, 700).astype(np.float32)
    with torch.inference_mode():
        torch_out = lt.model.value_head(torch.from_numpy(emb)).numpy()
    np.testing.assert_allclose(torch_out, rh.logits(emb), atol=1e-5, rtol=1e-5)


def test_round_trip_through_the_trunk(study):
    root, runs = study
    out = export_head(runs["mlp-ordinal"], root / "trunk", root / "init-rt", overwrite=True)
    lt = load_trunk(out)
    ds = open_dataset(root / "data")
    rows = ds.read(0, 500)
    tokens = torch.from_numpy(board.to_tokens(rows.exps, 16))
    with torch.inference_mode():
        value = lt.model.value(tokens).numpy()
    rh = load_run(runs["mlp-ordinal"])
    cached = open_cache(root / "cache").read_rows(0, 500)
    np.testing.assert_allclose(value, rh.logits(cached), atol=1e-4, rtol=1e-4)
    # and the probabilities the report scores are the sigmoid of those outputs
    np.testing.assert_allclose(1 / (1 + np.exp(-value)), rh.predict(cached), atol=1e-4)


def test_export_refuses_another_trunk_and_an_existing_dir(study, tmp_path):
    root, runs = study
    write_init_dir(tmp_path / "other", "tiny", seed=4)
    with pytest.raises(VhError, match="another trunk"):
        export_head(runs["probe-ordinal"], tmp_path / "other", tmp_path / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("keep me")
    with pytest.raises(VhError, match="exists"):
        export_head(runs["probe-ordinal"], root / "trunk", tmp_path / "busy")
    assert (tmp_path / "busy" / "f").read_text() == "keep me"


def test_cli_export(study, tmp_path):
    root, runs = study
    r = CliRunner().invoke(
        main,
        [
            "export",
            str(runs["probe-tiles"]),
            "--init",
            str(root / "trunk"),
            "--out",
            str(tmp_path / "new"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "wrote init dir" in r.output
    block = json.loads((tmp_path / "new" / "config.json").read_text())["value_head"]
    assert block["objective"]["type"] == "cross_entropy"
    assert block["objective"]["vocab_type"] == "tile_bucket"
    assert block["objective"]["vocab_size"] == 4
    r = CliRunner().invoke(
        main,
        [
            "export",
            str(tmp_path / "nope"),
            "--init",
            str(root / "trunk"),
            "--out",
            str(tmp_path / "n2"),
        ],
    )
    assert r.exit_code != 0 and "Traceback" not in r.output


def test_cross_entropy_objective_blocks_by_hand():
    # the exported block, key order included (config.json is written in this order): binned
    # kinds carry their support, class kinds their thresholds
    from vh.heads import targets
    from vh.heads.targets.base import TargetSpec

    log = TargetSpec("logscore", (128, 256), 64, "gaussian", lo=0.5, hi=11.25, sigma=0.75)
    assert list(targets.get("logscore").export_objective(log).items()) == [
        ("type", "cross_entropy"),
        ("vocab_size", 64),
        ("vocab_type", "log_score_bins"),
        ("support", [0.5, 11.25]),
    ]
    tiles = TargetSpec("tiles", (128, 256, 512), 4, "class")
    assert list(targets.get("tiles").export_objective(tiles).items()) == [
        ("type", "cross_entropy"),
        ("vocab_size", 4),
        ("vocab_type", "tile_bucket"),
        ("thresholds", [128, 256, 512]),
    ]
