"""Fingerprints: what a cache was computed from, so a changed input is refused, never reused.

A fingerprint is a nested JSON dict with three parts:

- ``trunk``: the trunk kind, its config and the sha256 of its weights (or the random-init seed),
- ``inputs``: for every input file, by name: its byte size and sha256 (metadata.db included),
- ``extract``: the extract settings that change the bytes (dtype, gamma, chunk_rows, ...).

Its digest (sha256 of the canonical JSON) goes into every ledger record, so a record from
other inputs never counts as done. :func:`differences` says in words which entries differ.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vh.errors import VhError

_HASH_BLOCK = 8 << 20  # streamed in 8 MiB blocks: hashes a dataset of any size in flat memory


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def file_entries(
    files: Iterable[str | os.PathLike], root: str | os.PathLike | None = None, threads: int = 4
) -> dict[str, dict]:
    """Name, size and sha256 of each file (hashed on a few threads: hashlib releases the GIL).

    Args:
        files: the input files.
        root: names are relative to this folder (the file name alone when None).
        threads: hashing threads.

    Returns:
        ``{name: {"size": int, "sha256": str}}``.
    """
    paths = [Path(f) for f in files]
    names = [str(p.relative_to(root)) if root is not None else p.name for p in paths]
    with ThreadPoolExecutor(max(1, min(threads, len(paths)))) as pool:
        hashes = list(pool.map(sha256_file, paths))
    return {
        n: {"size": p.stat().st_size, "sha256": h}
        for n, p, h in zip(names, paths, hashes, strict=True)
    }


def make_fingerprint(trunk: dict, inputs: dict, extract: dict) -> dict:
    """Assemble a fingerprint from its three parts (see the module docstring)."""
    return {"trunk": trunk, "inputs": inputs, "extract": extract}


def digest(fp: dict) -> str:
    """Hex sha256 of the canonical JSON of a fingerprint."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def _flatten(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def _short(v: object) -> str:
    s = json.dumps(v)
    # sha256 hex digests are long: twelve characters tell two of them apart
    return s[:13] + '…"' if isinstance(v, str) and len(v) == 64 else s


def _entry_name(key: str) -> str:
    # "inputs.steps-00001.npy.size" -> "steps-00001.npy size"; "trunk.weights_sha256" ->
    # "trunk weights_sha256": the words a user recognises
    part, _, rest = key.partition(".")
    if part == "inputs" and "." in rest:
        name, _, attr = rest.rpartition(".")
        return f"input file {name} {attr}"
    return f"{part} {rest}" if rest else part


def differences(cached: dict, expected: dict) -> list[str]:
    """Every entry that differs between two fingerprints, in words.

    Returns:
        e.g. ``["trunk weights_sha256 differs: cache \"1a2b…\" vs input \"3c4d…\"",
        "input file steps-00002.npy missing from the cache"]``; empty when they agree.
    """
    a, b = _flatten(cached), _flatten(expected)
    out = []
    for key in sorted(set(a) | set(b)):
        name = _entry_name(key)
        if key not in a:
            out.append(f"{name} missing from the cache")
        elif key not in b:
            out.append(f"{name} not among the inputs")
        elif a[key] != b[key]:
            out.append(f"{name} differs: cache {_short(a[key])} vs input {_short(b[key])}")
    return out


def check(cached: dict, expected: dict, path: str | os.PathLike) -> None:
    """Raise VhError (code 3) naming what differs when two fingerprints disagree."""
    diffs = differences(cached, expected)
    if diffs:
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise VhError(
            "cache was computed from other inputs: "
            + "; ".join(diffs[:3])
            + more
            + " (vh extract --overwrite recomputes it)",
            path=path,
            field="fingerprint",
            code=3,
        )
