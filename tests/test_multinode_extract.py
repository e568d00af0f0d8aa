"""An extract gives the same bytes however it is run: on two torchrun nodes, with the boards
decoded in torch (as on a GPU), and with the writer's own chunk files instead of zarr's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import zarr

from tests.conftest import TINY
from vh.cache import schema
from vh.cache.reader import open_cache
from vh.cache.writer import init_cache
from vh.config import load_config
from vh.extract import board, pipeline
from vh.extract.dataset import open_dataset
from vh.extract.run import run_extract


def _files(path: Path) -> dict[str, bytes]:
    """Every file of a cache but the completion marker (it holds a timestamp)."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != schema.MARKER
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(rank: int, port: int, tiny: dict, out: Path) -> subprocess.Popen:
    """One node's launcher: ``torchrun --nnodes 2 --node-rank RANK --nproc-per-node 1``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank",
           str(rank), "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port",
           str(port), "-m", "vh", "extract", "--dataset", str(tiny["ds"]), "--init",
           str(tiny["trunk"]), "--out", str(out), "--config", TINY]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip


def test_two_nodes_give_the_bytes_of_one_worker(tiny, tmp_path):
    out = tmp_path / "c2"
    port = _free_port()
    nodes = [_node(r, port, tiny, out) for r in (0, 1)]  # started together, as on two hosts
    results = [p.communicate(timeout=300) for p in nodes]
    for p, (_stdout, stderr) in zip(nodes, results, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    # node 0 alone reports; it says both nodes' units were embedded by this run
    assert results[0][0].count("wrote ") == 1 and results[1][0].count("wrote ") == 0
    one, two = _files(tiny["cache"]), _files(out)
    assert sorted(one) == sorted(two)
    for name in one:  # emb chunks, columns, runs, ledger records, zarr.json
        assert one[name] == two[name], name
    # the ledger's row ranges tile [0, n) exactly, as one worker's do
    c = open_cache(out)
    assert c.complete
    records = [
        json.loads((out / schema.LEDGER_DIR / f"{schema.unit_record_name(u)}.json").read_text())
        for u in range(len(c.done_units()))
    ]
    ranges = sorted((r["start"], r["stop"]) for r in records)
    assert ranges[0][0] == 0 and ranges[-1][1] == c.n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def test_torch_decode_equals_numpy_unpack():
    rng = np.random.default_rng(3)
    exps = rng.integers(0, 16, (5000, 16)) * (rng.random((5000, 16)) < 0.7)
    exps[::97, rng.integers(0, 16)] = 16  # 65536 tiles, some rows with one
    exps[1] = 15  # every nibble set: the packed uint64 is negative as int64
    boards, mask = board.pack(exps)
    want = board.unpack(boards, mask)
    assert np.array_equal(want, exps)  # the numpy reference itself round-trips
    got = pipeline.decode_tokens(
        torch.from_numpy(boards.view(np.int64)), torch.from_numpy(mask.astype(np.int32))
    )
    assert got.dtype == torch.uint8
    assert np.array_equal(got.numpy(), want)
    no_mask = pipeline.decode_tokens(torch.from_numpy(boards.view(np.int64)))
    assert np.array_equal(no_mask.numpy(), board.unpack(boards))


def test_device_decode_path_gives_the_same_cache(tiny, tmp_path, monkeypatch):
    # the GPU path (raw boards to the device, decoded in torch), forced on the CPU
    assert "board" in open_dataset(tiny["ds"]).fields
    monkeypatch.setattr(pipeline, "decodes_on_device", lambda ds, device: True)
    res = run_extract(tiny["ds"], tiny["trunk"], tmp_path / "c", load_config([TINY]), log=None)
    assert res.stats.rows == res.n
    assert _files(tmp_path / "c") == _files(tiny["cache"])


def test_written_chunk_files_are_zarrs_bytes(tmp_path):
    # n not a multiple of the chunk: the last chunk is padded with the fill value (NaN)
    rng = np.random.default_rng(0)
    n, d, chunk = 2500, 24, 1024
    emb = rng.standard_normal((n, d)).astype(np.float16)
    w = init_cache(tmp_path / "c", n=n, d=d, dtype="float16", chunk_rows=chunk, pooling="x",
                   columns={}, runs={"id": np.arange(3)}, fingerprint={"k": 1},
                   extract_config={})  # fmt: skip
    for u in range(w.n_units):
        a, b = w.unit_range(u)
        w.write_unit(u, emb[a:b])
    ref = zarr.create_array(str(tmp_path / "z"), shape=(n, d), chunks=(chunk, d),
                            dtype="float16", fill_value=np.nan, **schema.emb_codecs())  # fmt: skip
    ref[:] = emb
    mine, theirs = tmp_path / "c" / schema.EMB / "c", tmp_path / "z" / "c"
    names = sorted(str(p.relative_to(theirs)) for p in theirs.rglob("*") if p.is_file())
    assert names == ["0/0", "1/0", "2/0"]
    for name in names:
        assert (mine / name).read_bytes() == (theirs / name).read_bytes(), name
    assert w.verify() == ["the per-state columns were not written"]  # every unit checks out
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "c" / schema.EMB))[:], emb)
