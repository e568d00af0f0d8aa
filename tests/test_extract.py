"""Phase 1 end to end on a tiny hand-built dataset with the tiny trunk."""

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from vh.cache import schema
from vh.cache.lock import CacheLock
from vh.cache.reader import open_cache
from vh.cli import main
from vh.config import builtin_config, load_config
from vh.errors import VhError
from vh.extract import board, formats
from vh.extract.run import run_extract
from vh.extract.trunk import load_trunk, write_init_dir


def make_dataset(path, *, runs=12, seed=0, shard_rows=700, min_len=40, max_len=400, big_tile=False):
    """A packed dataset of random boards: PACKED_46 shards and a real metadata.db.

    Run ids are not contiguous (5, 8, 11, ...) and shards cut runs in the middle, so nothing
    relies on either. Returns ``(path, exps (N, 16), rows)``.
    """
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lengths = rng.integers(min_len, max_len, runs)
    ids = np.arange(runs) * 3 + 5
    n = int(lengths.sum())
    exps = rng.integers(0, 12, (n, 16)) * (rng.random((n, 16)) < 0.6)
    if big_tile:
        exps[n // 2, 7] = 16  # one 65536 tile
    rows = np.zeros(n, formats.PACKED_46)
    rows["run_id"] = np.repeat(ids, lengths)
    rows["step_index"] = np.concatenate([np.arange(k) for k in lengths])
    rows["board"], rows["tile_65536_mask"] = board.pack(exps)
    rows["move_dir"] = rng.integers(0, 4, n)
    for i, s in enumerate(range(0, n, shard_rows)):
        np.save(path / f"steps-{i:05d}.npy", rows[s : s + shard_rows])
    run_max = np.maximum.reduceat(exps.max(axis=1), np.cumsum(lengths) - lengths)
    db = sqlite3.connect(path / "metadata.db")
    db.execute(
        "CREATE TABLE runs (id INTEGER PRIMARY KEY, seed INTEGER, steps INTEGER, "
        "max_score INTEGER, highest_tile INTEGER)"
    )
    db.executemany(
        "INSERT INTO runs VALUES (?, ?, ?, ?, ?)",
        [
            # a score these random boards allow (dataset.py refuses one they cannot have):
            # just below 16 * (e - 1) * 2**e, the most 16 tiles <= 2**e can have scored
            (int(i), int(i) * 7, int(k), 16 * (int(e) - 1) * 2 ** int(e) - int(k), 2 ** int(e))
            for i, k, e in zip(ids, lengths, run_max, strict=True)
        ],
    )
    db.commit()
    db.close()
    return path, exps, rows


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dataset, a tiny trunk, and one finished cache (gamma set), shared by read-only tests."""
    tmp = tmp_path_factory.mktemp("extract")
    ds, exps, rows = make_dataset(tmp / "ds")
    init = write_init_dir(tmp / "init", "tiny", seed=0)
    cfg = load_config([builtin_config("tiny")], ["extract.gamma=0.9"])
    res = run_extract(ds, init, tmp / "cache", cfg, log=None)
    return {
        "tmp": tmp,
        "ds": ds,
        "exps": exps,
        "rows": rows,
        "init": init,
        "cfg": cfg,
        "res": res,
        "cache": tmp / "cache",
    }


def _extract_args(ds, init, out, *extra) -> list[str]:
    """``vh extract`` of ``ds`` through ``init`` into ``out`` with the tiny config, then
    ``extra``."""
    return ["extract", "--dataset", str(ds), "--init", str(init), "--out", str(out), "--config",
            builtin_config("tiny"), *extra]  # fmt: skip


def _pooled(init, exps, batch):
    lt = load_trunk(init)
    t = torch.from_numpy(exps.astype(np.int64))
    with torch.inference_mode():
        return np.concatenate(
            [
                lt.model.pooled(t[i : i + batch]).to(torch.float16).numpy()
                for i in range(0, len(t), batch)
            ]
        )


def test_embeddings_equal_the_trunks_pooled_output(world):
    c = open_cache(world["cache"])
    emb = c.read_rows(0, c.n)
    assert (c.n, c.d, c.dtype) == (len(world["exps"]), 32, np.float16)
    # the same forward, computed directly with the cache's batch edges (chunk 512, batch 256
    # divide evenly, so these are every 256 rows): identical bytes
    np.testing.assert_array_equal(emb, _pooled(world["init"], world["exps"], 256))
    # one big batch: the same numbers up to float16 rounding
    np.testing.assert_allclose(
        emb.astype(np.float32),
        _pooled(world["init"], world["exps"], 10**6).astype(np.float32),
        atol=2e-3,
        rtol=2e-3,
    )
    assert np.isfinite(emb).all()


def _py_reward(e, d):
    """Merge score of one move, written out by hand: lines toward the move side, each tile
    merges at most once, a merge of two 2**k scores 2**(k+1)."""
    g = [list(e[4 * r : 4 * r + 4]) for r in range(4)]
    cols = [[g[r][c] for r in range(4)] for c in range(4)]
    lines = {0: cols, 1: [c[::-1] for c in cols], 2: g, 3: [r[::-1] for r in g]}[int(d)]
    score = 0
    for line in lines:
        tiles, i = [t for t in line if t], 0
        while i < len(tiles):
            if i + 1 < len(tiles) and tiles[i] == tiles[i + 1]:
                score += 2 ** (int(tiles[i]) + 1)
                i += 2
            else:
                i += 1
    return score


def test_columns(world):
    c = open_cache(world["cache"])
    rows, exps = world["rows"], world["exps"]
    np.testing.assert_array_equal(c.column("run_id"), rows["run_id"])
    np.testing.assert_array_equal(c.column("step_index"), rows["step_index"])
    np.testing.assert_array_equal(c.column("move_dir"), rows["move_dir"])
    np.testing.assert_array_equal(c.column("max_exp"), exps.max(axis=1))
    # board score: a tile 2**e built from 2s scored (e - 1) * 2**e, summed over the cells
    by_hand = np.where(exps >= 2, (exps - 1) * (2**exps), 0).sum(axis=1)
    np.testing.assert_array_equal(c.column("board_score"), by_hand)
    # rewards: replaying each recorded move by hand (a sample of rows keeps it fast)
    sample = np.random.default_rng(0).choice(len(exps), 300, replace=False)
    reward = c.column("reward")
    assert [reward[i] for i in sample] == [_py_reward(exps[i], rows["move_dir"][i]) for i in sample]
    # returns: G_t = r_t + 0.9 G_{t+1} inside each run, the backward loop written out
    ret = c.column("return")
    expect = np.zeros(len(reward))
    for i in range(len(reward) - 1, -1, -1):
        same_run = i + 1 < len(reward) and rows["run_id"][i + 1] == rows["run_id"][i]
        expect[i] = reward[i] + (0.9 * expect[i + 1] if same_run else 0.0)
    np.testing.assert_allclose(ret, expect, rtol=1e-5)
    # step fraction: step index over the run's step count (ids ascend in file order here)
    counts = np.unique(rows["run_id"], return_counts=True)[1]
    steps = np.repeat(counts, counts)
    np.testing.assert_allclose(c.column("step_fraction"), rows["step_index"] / steps, rtol=1e-6)
    assert set(c.column_names) == set(schema.COLUMN_DTYPES)


def test_runs_table_and_attributes(world):
    c = open_cache(world["cache"])
    db = sqlite3.connect(world["ds"] / "metadata.db")
    ref = np.array(
        db.execute(
            "SELECT id, steps, highest_tile, max_score, seed FROM runs ORDER BY id"
        ).fetchall()
    )
    for j, k in enumerate(["id", "steps", "highest_tile", "final_score", "seed"]):
        np.testing.assert_array_equal(c.runs[k], ref[:, j])
    assert c.attrs["pooling"] == "mean" and c.attrs["extract_config"]["gamma"] == 0.9
    assert c.attrs["extract_config"]["chunk_rows"] == 512
    fp = c.fingerprint
    sha = hashlib.sha256((world["init"] / "model.safetensors").read_bytes()).hexdigest()
    assert fp["trunk"]["weights_sha256"] == sha
    shards = sorted(p.name for p in world["ds"].iterdir())
    assert sorted(fp["inputs"]) == shards
    for name in shards:
        data = (world["ds"] / name).read_bytes()
        if name == "metadata.db":  # hashed as SQLite reads it, -wal included
            from vh.cache.fingerprint import sqlite_content_sha256

            want = {"sqlite_content_sha256": sqlite_content_sha256(world["ds"] / name)}
        else:
            want = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert fp["inputs"][name] == want
    assert fp["extract"]["dtype"] == "float16" and fp["extract"]["batch_size"] == 256


def test_rerun_of_a_finished_cache_says_so(world):
    r = run_extract(world["ds"], world["init"], world["cache"], world["cfg"], log=None)
    assert r.already_complete and r.units_done == 0
    args = _extract_args(world["ds"], world["init"], world["cache"], "--gamma", "0.9")
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "already complete" in out.output


def test_onehot_baseline(tmp_path, world):
    ds, exps, _ = make_dataset(tmp_path / "ds", runs=4, seed=5, big_tile=True)
    cfg = load_config([builtin_config("tiny")], ["extract.trunk=onehot"])
    run_extract(ds, None, tmp_path / "c", cfg, log=None)
    c = open_cache(tmp_path / "c")
    assert c.attrs["pooling"] == "onehot" and c.d == 16 * 17  # a 65536 tile: vocab 17
    onehot = (exps[:, :, None] == np.arange(17)).reshape(len(exps), -1)  # cell-major
    np.testing.assert_array_equal(c.read_rows(0, c.n), onehot.astype(np.float16))
    np.testing.assert_array_equal(c.column("max_exp"), exps.max(axis=1))


def test_vocab_is_checked(tmp_path, world):
    ds, _, _ = make_dataset(tmp_path / "ds", runs=3, seed=6, big_tile=True)
    with pytest.raises(VhError, match="vocab"):
        run_extract(ds, world["init"], tmp_path / "c", world["cfg"], log=None)


def test_float32_and_resume_after_a_lost_unit(tmp_path, world):
    cfg = load_config([builtin_config("tiny")], ["extract.dtype=float32"])
    out = tmp_path / "c"
    run_extract(world["ds"], world["init"], out, cfg, log=None)
    before = open_cache(out).read_rows(0, 2000)
    assert before.dtype == np.float32
    # a unit's record gone (and the marker): a rerun recomputes exactly that unit
    (out / schema.MARKER).unlink()
    (out / "ledger" / "unit-00000002.json").unlink()
    r = run_extract(world["ds"], world["init"], out, cfg, log=None)
    assert r.units_done == 1 and not r.already_complete
    np.testing.assert_array_equal(open_cache(out).read_rows(0, 2000), before)
    # a chunk rewritten behind the ledger's back (record intact): its unit is redone
    zarr.open_group(str(out), mode="r+")["emb"][512:1024] = 0.0
    r = run_extract(world["ds"], world["init"], out, cfg, log=None)
    assert r.units_done == 1 and open_cache(out).complete
    np.testing.assert_array_equal(open_cache(out).read_rows(0, 2000), before)
    np.testing.assert_allclose(before, _pooled(world["init"], world["exps"][:2000], 256), atol=1e-3)


def test_changed_weights_or_shard_are_refused(tmp_path, world):
    init, ds = tmp_path / "init", tmp_path / "ds"
    shutil.copytree(world["init"], init)
    shutil.copytree(world["ds"], ds)
    out = tmp_path / "c"
    run_extract(ds, init, out, world["cfg"], log=None)
    # one bit of one weight (past the safetensors header)
    weights = (init / "model.safetensors").read_bytes()
    flipped = bytearray(weights)
    flipped[-100] ^= 0x01
    (init / "model.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(VhError, match="trunk weights_sha256 differs") as e:
        run_extract(ds, init, out, world["cfg"], log=None)
    assert e.value.code == 3 and e.value.field == "fingerprint"
    # the reader's check: the fingerprint these inputs now have (the new weights' hash)
    changed = json.loads(json.dumps(open_cache(out).fingerprint))
    changed["trunk"]["weights_sha256"] = hashlib.sha256(bytes(flipped)).hexdigest()
    with pytest.raises(VhError, match="trunk weights_sha256 differs"):
        open_cache(out, expect_fingerprint=changed)
    # the CLI: one line, non-zero exit, nothing lost
    res = CliRunner().invoke(main, _extract_args(ds, init, out, "--gamma", "0.9"))
    assert res.exit_code == 3 and len(res.output.strip().splitlines()) == 1
    assert "weights_sha256 differs" in res.output and open_cache(out).complete
    (init / "model.safetensors").write_bytes(weights)
    # a changed shard (a move direction, still a valid dataset)
    shard = ds / "steps-00001.npy"
    a = np.load(shard)
    a["move_dir"][10] = (a["move_dir"][10] + 1) % 4
    np.save(shard, a)
    with pytest.raises(VhError, match="input file steps-00001.npy sha256 differs"):
        run_extract(ds, init, out, world["cfg"], log=None)
    # --overwrite recomputes
    r = run_extract(ds, init, out, world["cfg"], overwrite=True, log=None)
    assert r.units_done == r.n_units and open_cache(out).complete


def test_a_second_extract_is_locked_out(tmp_path, world):
    with CacheLock(tmp_path / "c"):
        with pytest.raises(VhError, match="another extract holds this cache") as e:
            run_extract(world["ds"], world["init"], tmp_path / "c", world["cfg"], log=None)
    assert e.value.code == 3
    # a lock left by a dead process is recovered
    (tmp_path / "c" / schema.LOCK).write_text(
        json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "started_unix": 0})
    )
    run_extract(world["ds"], world["init"], tmp_path / "c", world["cfg"], log=None)
    assert open_cache(tmp_path / "c").complete


def test_cli_errors_are_one_line(tmp_path, world):
    runner = CliRunner()
    res = runner.invoke(
        main, ["extract", "--dataset", str(world["ds"]), "--out", str(tmp_path / "c")]
    )
    assert res.exit_code == 2 and "--init" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    res = runner.invoke(
        main,
        [
            "extract",
            "--dataset",
            str(tmp_path / "nope"),
            "--init",
            str(world["init"]),
            "--out",
            str(tmp_path / "c"),
        ],
    )
    assert res.exit_code == 2 and "no such dataset" in res.output
    (tmp_path / "notacache").mkdir()
    (tmp_path / "notacache" / "x.txt").write_text("precious")
    res = runner.invoke(main, _extract_args(world["ds"], world["init"], tmp_path / "notacache"))
    assert res.exit_code == 3 and "not a vh cache" in res.output
    assert (tmp_path / "notacache" / "x.txt").exists()


def _cache_bytes(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != schema.MARKER
    }


def _torchrun(world, out: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "vh",
        *_extract_args(world["ds"], world["init"], out, "--gamma", "0.9"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


def test_two_workers_give_identical_bytes(tmp_path, world):
    out = tmp_path / "c2"
    proc = _torchrun(world, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone says what it wrote
    assert open_cache(out).complete
    one, two = _cache_bytes(world["cache"]), _cache_bytes(out)
    assert sorted(one) == sorted(two)
    for name in one:
        assert one[name] == two[name], name


def test_two_workers_stop_together_on_rank0s_error(tmp_path, world):
    # rank 0 is refused (the cache is locked): rank 1 gets the same one-line error, no hang
    with CacheLock(tmp_path / "c"):
        proc = _torchrun(world, tmp_path / "c")
    assert proc.returncode != 0
    assert proc.stderr.count("error: ") >= 2 and "another extract holds this cache" in proc.stderr


def test_bench_extract_smoke(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\n## fit\nkeep me\n")
    res = CliRunner().invoke(
        main,
        [
            "bench",
            "extract",
            "--rows",
            "3000",
            "--preset",
            "tiny",
            "--repeats",
            "1",
            "--codec-mib",
            "2",
            "--benchmarks",
            str(md),
            "--set",
            "extract.chunk_rows=1024",
            "--set",
            "extract.batch_size=512",
        ],
    )
    assert res.exit_code == 0, res.output
    text = md.read_text()
    assert "## fit\nkeep me" in text and "## extract" in text and "ratio" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pipeline_matches_cpu(tmp_path, world):
    # pinned buffers, non-blocking copies and events: bf16 autocast, so close to the float32
    # CPU numbers, and the same bytes twice
    cfg = load_config([builtin_config("tiny")], ["extract.device=cuda", "extract.gamma=0.9"])
    for name in ("a", "b"):
        run_extract(world["ds"], world["init"], tmp_path / name, cfg, log=None)
    a, b = open_cache(tmp_path / "a"), open_cache(tmp_path / "b")
    assert a.fingerprint["extract"]["device"] == "cuda"
    np.testing.assert_array_equal(a.read_rows(0, a.n), b.read_rows(0, b.n))
    cpu = open_cache(world["cache"]).read_rows(0, a.n).astype(np.float32)
    np.testing.assert_allclose(a.read_rows(0, a.n).astype(np.float32), cpu, atol=0.1, rtol=0.05)


def test_one_same_trunk_check():
    from vh.cache.fingerprint import trunk_differences

    a = {"kind": "init", "config": {"hidden_size": 32}, "weights_sha256": "ab" * 32}
    assert trunk_differences(a, dict(a)) == []
    # an exported init dir's config.json gains a value_head: the same weights, the same trunk
    b = {**a, "config": {"hidden_size": 32, "value_head": {"arch": "probe"}}}
    assert trunk_differences(a, b) and trunk_differences(a, b, with_config=False) == []
    c = {**a, "weights_sha256": "cd" * 32}
    (diff,) = trunk_differences(a, c, with_config=False)
    assert diff.startswith("trunk weights_sha256 differs")
    # random weights (no file): the seed tells them apart
    r0 = {"kind": "init", "config": {}, "weights_sha256": None, "seed": 0}
    assert trunk_differences(r0, {**r0, "seed": 1}, with_config=False) == [
        "trunk seed differs: cache 0 vs input 1"
    ]
