"""Fuzzing the readers with hypothesis: they read correctly or raise VhError, nothing else.

- step shards with random byte flips (header or body) or truncation: ``open_dataset`` + ``read``
  + ``validate`` either raise VhError or return exactly what numpy's own ``np.load`` finds in
  the (corrupted) file, decoded by an independent nibble decoder written here;
- random structured dtypes: a shard of random fields is refused with VhError or, when it has
  the fields of a layout, read by name to the planted values;
- TOML config files with random byte corruptions: ``load_config`` loads or raises VhError;
- the cache's root ``zarr.json`` with random corruptions or attribute values: ``open_cache``
  opens a cache that reads the same embeddings, or raises VhError.

Any other exception (a traceback for the user) fails the test; a bug found this way was fixed
in the reader and its example pinned with ``@example``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vh.cache.reader import open_cache
from vh.config import load_config
from vh.errors import VhError
from vh.extract.dataset import open_dataset

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


def _decode(a: np.ndarray) -> np.ndarray:
    """Exponents (n, 16) of packed rows, independently of vh: cell i is bits 63-4i..60-4i,
    nibble 15 with mask bit i set is the 65536 tile (exponent 16)."""
    shifts = np.array([60 - 4 * i for i in range(16)], dtype=np.uint64)
    exps = ((a["board"][:, None] >> shifts) & np.uint64(15)).astype(np.uint8)
    bits = ((a["tile_65536_mask"][:, None].astype(np.uint64) >> np.arange(16, dtype=np.uint64))
            & np.uint64(1)).astype(bool)  # fmt: skip
    exps[bits & (exps == 15)] = 16
    return exps


def _read_all(ds: Path):
    d = open_dataset(ds)
    rows = d.read(0, d.n_rows)
    d.validate()
    return rows


# ----------------------------------------------------------------------------- shards


@pytest.fixture(scope="module")
def small_ds(tiny, tmp_path_factory) -> Path:
    """A private copy of the tiny dataset (4 shards of packed rows, metadata.db)."""
    src = tiny["ds"]
    out = tmp_path_factory.mktemp("fuzz") / "ds"
    out.mkdir()
    shutil.copy(src / "metadata.db", out / "metadata.db")
    for p in sorted(src.glob("steps-*.npy")):
        shutil.copy(p, out / p.name)
    return out


def _corrupt_shard(small_ds: Path, tmp: Path, kind: str, pos: int, value: int) -> Path:
    ds = tmp / "ds"
    if ds.exists():
        shutil.rmtree(ds)
    shutil.copytree(small_ds, ds)
    shard = ds / "steps-00001.npy"
    data = bytearray(shard.read_bytes())
    if kind == "truncate":
        data = data[: pos % len(data)]
    else:
        head = 128  # npy v1 header of these files: magic, length, dict, padding
        i = pos % head if kind == "header" else head + pos % (len(data) - head)
        data[i] ^= value or 1
    shard.write_bytes(bytes(data))
    return ds


@FUZZ
@given(
    kind=st.sampled_from(["header", "body", "truncate"]),
    pos=st.integers(0, 1 << 20),
    value=st.integers(0, 255),
)
@example(kind="header", pos=8, value=1)  # header length field
@example(kind="truncate", pos=60, value=0)  # was tokenize.TokenError: fixed in extract/dataset.py
@example(kind="body", pos=3, value=0x80)  # the high byte of a run_id
def test_corrupted_shard_is_read_exactly_or_refused(small_ds, tmp_path, kind, pos, value):
    ds = _corrupt_shard(small_ds, tmp_path, kind, pos, value)
    try:
        rows = _read_all(ds)
    except VhError as e:
        assert e.path and "ds" in e.path, e.line()
        return
    # accepted: it must be exactly what is in the files (np.load is the reference reader)
    # (field by field: a flip may rename a field the reader does not use, e.g. board_eval)
    arrays = [np.load(p) for p in sorted(ds.glob("steps-*.npy"))]
    want = {f: np.concatenate([a[f] for a in arrays]) for f in
            ("run_id", "step_index", "move_dir", "board", "tile_65536_mask")}  # fmt: skip
    np.testing.assert_array_equal(rows.run_id, want["run_id"].astype(np.int64))
    np.testing.assert_array_equal(rows.step_index, want["step_index"].astype(np.int64))
    np.testing.assert_array_equal(rows.move, want["move_dir"])
    np.testing.assert_array_equal(rows.exps, _decode(want))


_INT = st.sampled_from(["<u1", "<u2", "<u4", "<u8", "<i2", "<i4", "<i8", ">u4"])
_NAMES = st.sampled_from(["run_id", "step_index", "step_idx", "board", "tile_65536_mask",
                          "move_dir", "move", "exps", "logp", "junk"])  # fmt: skip


@FUZZ
@given(
    names=st.lists(_NAMES, min_size=1, max_size=7, unique=True),
    types=st.lists(
        st.one_of(_INT, st.sampled_from(["<f4", "<f8", "S3"])), min_size=7, max_size=7
    ),  # fmt: skip
)
def test_random_structured_dtype_is_read_by_name_or_refused(small_ds, tmp_path, names, types):
    ds = tmp_path / "ds"
    shutil.rmtree(ds, ignore_errors=True)  # hypothesis reuses tmp_path across examples
    shutil.copytree(small_ds, ds)
    good = np.concatenate([np.load(p) for p in sorted(ds.glob("steps-*.npy"))])
    for p in ds.glob("steps-*.npy"):
        p.unlink()
    fields = [
        (n, ("u1", (16,)) if n == "exps" else t)
        for n, t in zip(names, types[: len(names)], strict=True)
    ]
    dt = np.dtype([(n, *t) if isinstance(t, tuple) else (n, t) for n, t in fields])
    a = np.zeros(len(good), dtype=dt)
    for n in names:  # plant the true values where the field can hold them
        src = {"step_idx": "step_index", "move": "move_dir"}.get(n, n)
        if n == "exps":
            a[n] = _decode(good)
        elif src in good.dtype.names and dt[n].kind in "iu":
            a[n] = good[src].astype(dt[n])
    np.save(ds / "steps.npy", a)
    try:
        rows = _read_all(ds)
    except VhError as e:
        assert e.path and "steps.npy" in e.path or "metadata.db" in (e.path or ""), e.line()
        return
    # accepted: every logical column read by name gives the planted value
    np.testing.assert_array_equal(rows.run_id, good["run_id"].astype(np.int64))
    np.testing.assert_array_equal(rows.step_index, good["step_index"].astype(np.int64))
    np.testing.assert_array_equal(rows.exps, _decode(good))


# ----------------------------------------------------------------------------- config files


@FUZZ
@given(pos=st.integers(0, 1 << 16), value=st.integers(1, 255), cut=st.booleans())
@example(pos=0, value=128, cut=False)  # was a UnicodeDecodeError: fixed in vh/config.py
def test_corrupted_config_file_loads_or_is_refused(tmp_path, pos, value, cut):
    text = bytearray((ROOT / "configs" / "defaults.toml").read_bytes())
    if cut:
        text = text[: pos % len(text)]
    else:
        text[pos % len(text)] ^= value
    p = tmp_path / "c.toml"
    p.write_bytes(bytes(text))
    try:
        load_config([p])
    except VhError as e:
        assert e.path and "c.toml" in e.path, e.line()


# ----------------------------------------------------------------------------- cache attributes


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),  # fmt: skip
    max_leaves=6,
)


@pytest.fixture(scope="module")
def cache_emb(tiny) -> np.ndarray:
    return open_cache(tiny["cache"]).take(np.arange(50))


def _cache_copy(tiny, tmp: Path) -> Path:
    out = tmp / "cache"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(tiny["cache"], out)
    return out


def _open_or_refused(cache: Path, want: np.ndarray) -> None:
    try:
        got = open_cache(cache).take(np.arange(50))
    except VhError as e:
        assert e.path and "cache" in e.path, e.line()
        return
    np.testing.assert_array_equal(got, want)


@FUZZ
@given(key=st.sampled_from(["n", "d", "dtype", "chunk_rows", "n_units", "columns",
                            "schema_version", "fingerprint", "fingerprint_digest"]),
       value=_JSON)  # fmt: skip
@example(key="n", value="many")  # was a ValueError from int(): fixed in cache/schema.py
@example(key="d", value=64)  # emb is (n, 32): the reader now checks the array's shape
@example(key="columns", value=None)
def test_cache_attribute_values(tiny, cache_emb, tmp_path, key, value):
    cache = _cache_copy(tiny, tmp_path)
    meta = json.loads((cache / "zarr.json").read_text())
    meta["attributes"][key] = value
    (cache / "zarr.json").write_text(json.dumps(meta))
    _open_or_refused(cache, cache_emb)


@FUZZ
@given(pos=st.integers(0, 1 << 16), value=st.integers(1, 255), cut=st.booleans())
def test_corrupted_cache_root_json(tiny, cache_emb, tmp_path, pos, value, cut):
    cache = _cache_copy(tiny, tmp_path)
    data = bytearray((cache / "zarr.json").read_bytes())
    if cut:
        data = data[: pos % len(data)]
    else:
        data[pos % len(data)] ^= value
    (cache / "zarr.json").write_bytes(bytes(data))
    _open_or_refused(cache, cache_emb)
