"""The step and values shards of a dataset dir: ``.npy`` files of structured rows.

Each file's header is read and its byte size checked before it is memory-mapped read-only;
fields are found by name (:data:`_ALIASES`) with the dtype the file declares, so the same
logical row may be 42, 46 or 48 bytes and run ids any integer width. Rows are addressed
globally across shards (:func:`pieces`, :func:`gather`, :func:`locate`).

Axes: N = rows (global across shards), 16 = cells.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from itertools import pairwise
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from vh.errors import VhError, require_regular_file
from vh.extract.board import N_CELLS
from vh.extract.formats import MOVE_FIELDS, STEP_FIELDS

# logical column -> the field names writers use for it
_ALIASES = {
    "run_id": ("run_id",),
    "step": STEP_FIELDS,
    "move": MOVE_FIELDS,
    "board": ("board",),
    "mask": ("tile_65536_mask",),
    "exps": ("exps",),
    "reward": ("reward",),
    "return_raw": ("return_raw",),
}
# logical column -> (allowed dtype kinds, subarray shape, itemsize or None, wording)
_FIELD_TYPES = {
    "run_id": ("iu", (), None, "an integer"),
    "step": ("iu", (), None, "an integer"),
    "move": ("iu", (), None, "an integer"),
    "board": ("iu", (), 8, "a 64-bit integer"),
    "mask": ("iu", (), None, "an integer"),
    "exps": ("iu", (N_CELLS,), 1, "16 one-byte integers"),
    "reward": ("f", (), None, "a float"),
    "return_raw": ("f", (), None, "a float"),
}


@dataclass(frozen=True)
class Shard:
    """One ``.npy`` file of structured rows, memory-mapped read-only.

    Attributes:
        path: the file.
        rows: number of rows.
        dtype: the row dtype the file declares.
        start: global index of its first row.
        array: the read-only memmap, ``(rows,)`` records.
    """

    path: Path
    rows: int
    dtype: np.dtype
    start: int
    array: np.ndarray = field(repr=False, compare=False)


@dataclass
class Rows:
    """Global rows ``[start, start + len)`` of a dataset, decoded.

    Attributes:
        run_id: i64 ``(n,)``.
        step_index: i64 ``(n,)``.
        exps: u8 ``(n, 16)`` tile exponents.
        move: u8 ``(n,)`` direction taken from this state (0 up, 1 down, 2 left, 3 right).
        reward: f32 ``(n,)`` from the values sidecar, ``None`` without one.
        return_raw: f32 ``(n,)`` from the values sidecar, ``None`` without one.
        start: global index of the first row.
    """

    run_id: np.ndarray
    step_index: np.ndarray
    exps: np.ndarray
    move: np.ndarray
    reward: np.ndarray | None = None
    return_raw: np.ndarray | None = None
    start: int = 0

    def __len__(self) -> int:
        return int(self.run_id.shape[0])

    def head(self, n: int, start: int) -> Rows:
        """The first ``n`` rows as views, relabelled to begin at global row ``start``."""
        cut = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "start"}
        return Rows(**{k: None if v is None else v[:n] for k, v in cut.items()}, start=start)


# --------------------------------------------------------------------------- npy files


def discover_shards(root: Path, stem: str) -> list[Path]:
    """``stem.npy``, or the ``stem-<n>.npy`` shards sorted by n (steps-2 before steps-10)."""
    single = root / f"{stem}.npy"
    sharded = list(root.glob(f"{stem}-*.npy"))
    if single.exists() and sharded:
        raise VhError(
            f"both {stem}.npy and {stem}-*.npy shards present; keep one", path=root, field=stem
        )
    if single.exists():
        return [single]
    numbered = []
    for p in sharded:
        m = re.fullmatch(rf"{re.escape(stem)}-(\d+)\.npy", p.name)
        if m is None:
            raise VhError(f"shard name has no number (expected {stem}-<n>.npy)", path=p)
        numbered.append((int(m.group(1)), p))
    numbered.sort()
    for (a, pa), (b, pb) in pairwise(numbered):
        if a == b:
            raise VhError(f"{pa.name} and {pb.name} have the same shard number", path=pb)
    return [p for _, p in numbered]


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` from a .npy header, without reading the data."""
    require_regular_file(path, field="header")  # a FIFO would block open() forever
    try:
        with open(path, "rb") as f:
            version = npformat.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = npformat.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):  # 3.0 differs only in the header's text encoding
                shape, _fortran, dtype = npformat.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            return shape, dtype, f.tell()
    except Exception as e:  # numpy parses header bytes with ast/tokenize: many error types
        reason = " ".join(str(e).split())[:160]
        raise VhError(f"not a valid .npy file ({reason})", path=path, field="header") from None


def _open_npy(path: Path) -> np.ndarray:
    """Memory-map a .npy of structured rows read-only, after checking its header and size.

    The size is checked first because a short file must be refused, never padded.
    """
    shape, dtype, offset = _read_header(path)
    if dtype.names is None:
        raise VhError(
            f"not a structured dtype (found {dtype.str}); expected rows with named fields",
            path=path,
            field="dtype",
        )
    if dtype.hasobject:
        raise VhError(
            "holds Python objects; expected plain numeric fields", path=path, field="dtype"
        )
    if len(shape) != 1:
        raise VhError(f"expected a 1-D array of rows, shape is {shape}", path=path, field="shape")
    expected, found = offset + shape[0] * dtype.itemsize, path.stat().st_size
    if found < expected:
        raise VhError(
            f"truncated: expected {expected:,} bytes, found {found:,}", path=path, field="shape"
        )
    if found > expected:
        raise VhError(
            f"expected {expected:,} bytes, found {found:,} (trailing data)",
            path=path,
            field="shape",
        )
    return np.load(path, mmap_mode="r", allow_pickle=False)


def open_shards(paths: list[Path]) -> list[Shard]:
    shards, start = [], 0
    for p in paths:
        arr = _open_npy(p)
        shards.append(
            Shard(path=p, rows=int(arr.shape[0]), dtype=arr.dtype, start=start, array=arr)
        )
        start += int(arr.shape[0])
    return shards


# --------------------------------------------------------------------------- fields


def _pick(dtype: np.dtype, logical: str, path: Path) -> str:
    """The field holding ``logical``, type-checked; a missing one names what was found."""
    names = dtype.names
    found = next((n for n in _ALIASES[logical] if n in names), None)
    if found is None:
        wanted = " or ".join(repr(n) for n in _ALIASES[logical])
        raise VhError(
            f"missing field {wanted}; found {', '.join(names)}",
            path=path,
            field=_ALIASES[logical][0],
        )
    kinds, shape, itemsize, wording = _FIELD_TYPES[logical]
    sub = dtype.fields[found][0]
    if (
        sub.base.kind not in kinds
        or sub.shape != shape
        or (itemsize is not None and sub.base.itemsize != itemsize)
    ):
        raise VhError(
            f"has dtype {sub.base.str}{list(sub.shape) or ''}, expected {wording}",
            path=path,
            field=found,
        )
    return found


def step_layout(dtype: np.dtype, path: Path) -> tuple[str, dict[str, str]]:
    """``(layout, logical column -> field name)`` of a step shard, from its field names."""
    names = dtype.names
    if "exps" in names:
        layout, board = "selfplay", ("exps",)
    elif "board" in names:
        packed = "tile_65536_mask" in names
        layout, board = ("packed", ("board", "mask")) if packed else ("legacy", ("board",))
    else:
        raise VhError(
            f"missing field 'board' or 'exps'; found {', '.join(names)}", path=path, field="board"
        )
    cols = {k: _pick(dtype, k, path) for k in ("run_id", "step", "move", *board)}
    return layout, cols


def agree(shards: list[Shard], resolve) -> tuple:
    """Resolve each shard's fields; every shard must give the first one's answer."""
    first = resolve(shards[0].dtype, shards[0].path)
    for s in shards[1:]:
        got = resolve(s.dtype, s.path)
        if got != first:
            raise VhError(
                f"layout {got} differs from {shards[0].path.name}'s {first}",
                path=s.path,
                field="dtype",
            )
    return first


def sidecar_fields(dtype: np.dtype, path: Path) -> dict[str, str]:
    return {k: _pick(dtype, k, path) for k in ("run_id", "step", "reward", "return_raw")}


# --------------------------------------------------------------------------- row access


def pieces(shards: list[Shard], start: int, stop: int) -> Iterator[tuple[Shard, int, int, int]]:
    """``(shard, local start, local stop, offset in the output)`` covering rows [start, stop)."""
    for s in shards:
        a, b = max(start, s.start), min(stop, s.start + s.rows)
        if a < b:
            yield s, a - s.start, b - s.start, a - start


def gather(shards: list[Shard], name: str, start: int, stop: int, out: np.ndarray) -> None:
    """Copy field ``name`` of global rows [start, stop) into ``out`` (cast to its dtype)."""
    for s, a, b, o in pieces(shards, start, stop):
        out[o : o + b - a] = s.array[name][a:b]


def locate(shards: list[Shard], row: int) -> tuple[Path, int]:
    """``(shard path, row within the shard)`` of a global row."""
    i = bisect.bisect_right([s.start for s in shards], row) - 1
    return shards[i].path, row - shards[i].start
