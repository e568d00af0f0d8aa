"""`vh fit` end to end on planted caches: acceptance (planted signal), resume after kill -9,
the run-dir contract, refusals, and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vh.cache.reader import open_cache
from vh.cache.writer import write_cache_from_arrays
from vh.config import load_config
from vh.errors import VhError
from vh.heads.api import fit, load_run
from vh.heads.targets import target_values, train_targets

ROOT = Path(__file__).resolve().parents[1]
TILES = np.array([512, 1024, 2048, 4096])  # class c of a run -> its highest tile
THRESHOLDS = "fit.target.thresholds=[1024, 2048, 4096]"


def _labels(spec, reader, rows):
    """The labels the fit trains on, for these cache rows."""
    return train_targets(spec, target_values(spec.kind, reader, rows))


def _cache(path, x, cls, *, states_per_run=1, ret=None, chunk_rows=4096):
    """A cache whose run r holds `states_per_run` consecutive states and class cls[r]."""
    n = len(x)
    run_id = np.arange(n) // states_per_run + 100  # ids need not start at 0
    step = np.arange(n) % states_per_run
    cols = {
        "run_id": run_id,
        "step_index": step,
        "step_fraction": (step / max(states_per_run - 1, 1)).astype(np.float32),
    }
    if ret is not None:
        cols["return"] = ret
    r = n // states_per_run
    rng = np.random.default_rng(1)
    runs = {
        "id": np.arange(r) + 100,
        "steps": np.full(r, states_per_run),
        "highest_tile": TILES[cls],
        "final_score": rng.integers(1000, 60000, r),
        "seed": np.arange(r),
    }
    return write_cache_from_arrays(path, x, cols, runs, chunk_rows=chunk_rows)


def _cfg(*sets):
    return load_config(sets=[THRESHOLDS, "fit.train.wd=0", "fit.train.batch_size=4096", *sets]).fit


def _test_rows(run_dir):
    return np.load(Path(run_dir) / "sampling.npz")["test_rows"]


# --------------------------------------------------------------------------- acceptance


def test_planted_ordinal_probe_matches_true_model(tmp_path):
    # labels drawn from a known monotone logistic model: P(Y >= k) = sigmoid(w.x + t_k)
    rng = np.random.default_rng(0)
    n, d = 60_000, 8
    x = rng.normal(size=(n, d)).astype(np.float16)
    w, t = rng.normal(size=d), np.array([1.5, 0.0, -1.5])
    q = 1 / (1 + np.exp(-(x.astype(np.float64) @ w)[:, None] - t))  # (n, K)
    cls = (rng.random(n)[:, None] < q).sum(1)  # q decreasing in k, so this samples Y
    cache = _cache(tmp_path / "c", x, cls)
    run = tmp_path / "run"
    fit(
        _cfg("fit.train.lr=0.03", "fit.train.epochs=25", "fit.train.patience=4"),
        cache,
        run,
        log=lambda s: None,
    )
    rows = _test_rows(run)
    reader = open_cache(cache)
    y = _labels(load_run(run).spec, reader, rows)
    q_fit = load_run(run).predict(reader.take(rows))

    def nll(p):  # mean BCE over thresholds, by hand
        p = np.clip(p, 1e-12, 1 - 1e-12)
        return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))

    assert len(rows) > 2000
    assert nll(q_fit) <= 1.01 * nll(q[rows])


def test_planted_categorical_head_matches_true_model(tmp_path):
    # labels drawn from a known softmax model over the K+1 tile buckets
    rng = np.random.default_rng(1)
    n, d = 60_000, 8
    x = rng.normal(size=(n, d)).astype(np.float16)
    logits = x.astype(np.float64) @ rng.normal(size=(d, 4)) + rng.normal(size=4)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    cls = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)
    cache = _cache(tmp_path / "c", x, cls)
    run = tmp_path / "run"
    fit(
        _cfg(
            "fit.target.kind=tiles",
            "fit.train.lr=0.03",
            "fit.train.epochs=25",
            "fit.train.patience=4",
        ),
        cache,
        run,
        log=lambda s: None,
    )
    rows = _test_rows(run)
    reader = open_cache(cache)
    c = _labels(load_run(run).spec, reader, rows)
    np.testing.assert_array_equal(c, cls[rows])  # the labels are the planted classes
    p_fit = load_run(run).predict(reader.take(rows))
    nll_fit = -np.mean(np.log(p_fit[np.arange(len(c)), c]))
    nll_true = -np.mean(np.log(p[rows, c]))
    assert nll_fit <= 1.01 * nll_true


# --------------------------------------------------------------------------- the run dir


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    rng = np.random.default_rng(2)
    n, d, per = 12_000, 6, 20
    x = rng.normal(size=(n, d)).astype(np.float16)
    cls = rng.integers(0, 4, n // per)
    ret = rng.gamma(2.0, 500.0, n).astype(np.float32)
    return _cache(
        tmp_path_factory.mktemp("c") / "c", x, cls, states_per_run=per, ret=ret, chunk_rows=1024
    )


def test_run_dir_contract(small_cache, tmp_path):
    run = tmp_path / "run"
    s = fit(
        _cfg(
            "fit.train.epochs=3",
            "fit.train.batch_size=1000",
            "fit.sampler.kind=stratified",
            "fit.sampler.cap_per_run=8",
        ),
        small_cache,
        run,
        grid={"lr": (1e-3, 1e-2)},
        log=lambda s: None,
    )
    cfg = json.loads((run / "config.json").read_text())
    assert set(cfg) >= {"vh_version", "fit", "cache", "target", "grid", "created"}
    assert [g["name"] for g in cfg["grid"]] == ["m000", "m001"]
    assert cfg["cache"]["d"] == 6 and cfg["target"]["kind"] == "ordinal"
    split = np.load(run / "split.npz")
    samp = np.load(run / "sampling.npz")
    reader = open_cache(small_cache)
    run_of = reader.column("run_id")
    for code, name in enumerate(("train", "val", "test")):
        rows = samp[f"{name}_rows"]
        assert np.all(np.diff(rows) > 0)
        assert set(run_of[rows]) <= set(split["run_id"][split["split"] == code])
        assert np.all(np.bincount(run_of[rows])[np.unique(run_of[rows])] <= 8)  # the cap
    assert (run / "sampling_manifest.csv").read_text().startswith("split,runs,rows")
    for name in ("m000", "m001"):
        lines = [json.loads(x) for x in (run / "members" / name / "metrics.jsonl").open()]
        assert {ln["split"] for ln in lines} == {"train", "val"}
        assert set(lines[0]) == {"epoch", "step", "split", "loss", "nll", "lr", "time"}
        ms = json.loads((run / "members" / name / "summary.json").read_text())
        assert ms["epochs_run"] == 3 and ms["best_val_nll"] == s["members"][name]["best_val_nll"]
    assert s["best_member"] == min(s["members"], key=lambda n: s["members"][n]["best_val_nll"])
    rh = load_run(run)
    assert rh.member == s["best_member"]
    q = rh.predict(reader.take(samp["test_rows"][:50]))
    assert q.shape == (50, 3) and q.dtype == np.float64 and np.all((q > 0) & (q < 1))
    w, b = rh.linear()  # the probe's affine map gives the same logits
    z = reader.take(samp["test_rows"][:50]).astype(np.float64) @ w.T + b
    np.testing.assert_allclose(rh.logits(reader.take(samp["test_rows"][:50])), z, atol=1e-4)


@pytest.mark.parametrize(
    "sets",
    [
        [
            "fit.target.kind=return",
            "fit.target.return_bins=51",
            "fit.train.data_on_device=never",
            "fit.sampler.states_per_epoch=3000",
        ],
        ["fit.target.kind=return", "fit.target.return_encoding=scalar", "fit.loss.quartic=0.1"],
        [
            "fit.target.kind=logscore",
            "fit.target.n_bins=16",
            "fit.target.smoothing=0.75",
            "fit.head.arch=mlp",
            "fit.head.hidden=16",
        ],
    ],
)
def test_other_targets_train(small_cache, tmp_path, sets):
    s = fit(
        _cfg("fit.train.epochs=2", "fit.train.batch_size=2048", *sets),
        small_cache,
        tmp_path / "r",
        log=lambda s: None,
    )
    assert np.isfinite(s["members"]["m000"]["best_val_nll"])
    rh = load_run(tmp_path / "r")
    p = rh.predict(open_cache(small_cache).take(np.arange(10)))
    if rh.spec.encoding == "scalar":
        assert p.shape == (10,)
    else:
        assert p.shape == (10, rh.spec.n_out)
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)


def test_refusals(small_cache, tmp_path):
    quiet = {"log": lambda s: None}
    with pytest.raises(VhError, match="split 'val' has no runs"):
        fit(
            _cfg(
                "fit.split.val_where=id < 0",
                "fit.split.test=0",
                "fit.split.train=1",
                "fit.split.val=0",
            ),
            small_cache,
            tmp_path / "a",
            **quiet,
        )
    with pytest.raises(VhError, match="threshold 8192 is reached by no train run"):
        fit(
            load_config(sets=["fit.target.thresholds=[1024, 8192]"]).fit,
            small_cache,
            tmp_path / "b",
            **quiet,
        )
    with pytest.raises(VhError, match="unknown config key|no such column|not a vh cache"):
        fit(_cfg(), tmp_path / "nowhere", tmp_path / "c", **quiet)
    run = tmp_path / "d"
    fit(_cfg("fit.train.epochs=1"), small_cache, run, **quiet)
    with pytest.raises(VhError, match="different fit") as e:  # same dir, another config
        fit(_cfg("fit.train.epochs=1", "fit.train.lr=0.1"), small_cache, run, **quiet)
    assert e.value.field == "fit.train.lr"
    fit(_cfg("fit.train.epochs=1", "fit.train.lr=0.1"), small_cache, run, resume=False, **quiet)
    from vh.heads import rundir

    with rundir.lock(run), pytest.raises(VhError, match="another vh fit"):
        fit(_cfg("fit.train.epochs=1", "fit.train.lr=0.1"), small_cache, run, **quiet)


def test_return_head_needs_the_return_column(tmp_path):
    rng = np.random.default_rng(3)
    cache = _cache(
        tmp_path / "c", rng.normal(size=(400, 4)).astype(np.float16), rng.integers(0, 4, 400)
    )
    with pytest.raises(VhError, match="`return` column") as e:
        fit(_cfg("fit.target.kind=return"), cache, tmp_path / "r", log=lambda s: None)
    assert e.value.field == "return"


# --------------------------------------------------------------------------- kill -9, resume


KILL_SETS = [
    THRESHOLDS,
    "fit.train.epochs=4",
    "fit.train.patience=9",
    "fit.train.batch_size=1000",
    "fit.loss.focal_gamma=1.0",
]


def test_kill_then_resume_gives_the_same_best_checkpoints(small_cache, tmp_path):
    # runs SIGKILLed (subprocess) at two points, resumed here, vs an uninterrupted run here
    grid = {"lr": (1e-3, 1e-2)}
    ref = tmp_path / "ref"
    fit(load_config(sets=KILL_SETS).fit, small_cache, ref, grid=grid, log=lambda s: None)
    cmd = [sys.executable, "-m", "vh", "fit", "--cache", str(small_cache), "--grid", "lr=1e-3,1e-2"]
    cmd += [a for s in KILL_SETS for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for point in ("fit:trained:2", "fit:best:3"):  # after epoch 2's training, epoch 3's best
        run = tmp_path / point.replace(":", "_")
        p = subprocess.run(
            [*cmd, "--out", str(run)],
            env={**env, "VH_FAILPOINT": point},
            capture_output=True,
            text=True,
        )
        assert p.returncode == -9, p.stderr[-2000:]
        lines = []
        fit(load_config(sets=KILL_SETS).fit, small_cache, run, grid=grid, log=lines.append)
        assert "resuming" in lines[0]
        for m in ("m000", "m001"):
            best = Path("members") / m / "best.safetensors"
            assert (run / best).read_bytes() == (ref / best).read_bytes(), (point, m)
            metrics = Path("members") / m / "metrics.jsonl"
            strip = [
                {k: v for k, v in json.loads(x).items() if k != "time"}
                for x in (run / metrics).open()
            ]
            assert strip == [
                {k: v for k, v in json.loads(x).items() if k != "time"}
                for x in (ref / metrics).open()
            ]


# --------------------------------------------------------------------------- CLI, configs


@pytest.mark.parametrize(
    "name", ["probe_ordinal", "probe_categorical", "mlp_ordinal", "mlp_categorical", "return"]
)
def test_seed_configs_load_and_start_with_their_command(name):
    from vh.config import builtin_config

    text = Path(builtin_config(name)).read_text()
    assert "# Run:     vh fit --cache CACHE" in text.split("[fit")[0]
    assert load_config([builtin_config(name)]).fit.target.kind in ("ordinal", "tiles", "return")


def test_cli_smoke(small_cache, tmp_path):
    from vh.cli import main

    run = tmp_path / "run"
    r = CliRunner().invoke(
        main,
        [
            "fit",
            "--cache",
            str(small_cache),
            "--out",
            str(run),
            "--head",
            "categorical",
            "--arch",
            "probe",
            "--set",
            THRESHOLDS,
            "--set",
            "fit.train.epochs=2",
            "--grid",
            "lr=1e-3,3e-3",
        ],
    )
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1].startswith(f"wrote 2 head(s) to {run}: best m00")
    assert json.loads((run / "config.json").read_text())["target"]["kind"] == "tiles"
    r = CliRunner().invoke(
        main, ["fit", "--cache", str(small_cache), "--out", str(run), "--grid", "momentum=0.9"]
    )
    assert r.exit_code == 2 and "unknown grid key" in r.output
    assert "Traceback" not in r.output


@pytest.mark.slow
def test_bench_fit_runs_and_writes_its_section(tmp_path):
    """`vh bench fit` at toy sizes, through the command: its section replaces only its own."""
    from conftest import run_ok

    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\n## extract\n\nkept\n")
    run_ok(["bench", "fit", "--rows", 20_000, "--dim", 32, "--rounds", 1, "--seed-batch", 16,
            "--mlp-rows", 4096, "--md", md])  # fmt: skip
    doc = md.read_text()
    assert "## extract\n\nkept" in doc and doc.count("## fit") == 1 and "Goals:" in doc
    assert "20,000" in doc.split("## fit")[1]
