"""Durable files and folders: atomic writes, JSON reads, ownership markers, crash-test hooks.

One module owns how vh puts bytes on disk, so every phase gets the same guarantees:

- **Atomic files** (:func:`atomic_write` and the ``bytes``/``text``/``json`` helpers): the
  content goes to a temp file ``.NAME.PID.tmp`` in the same folder, is fsynced, moved into
  place with ``os.replace``, and the folder is fsynced. A kill at any instant leaves the old
  file or the new one, never a torn one; a leftover temp file is recognised by
  :func:`is_temp` and removed on resume (:func:`remove_temp_files`).
- **Atomic folders** (:func:`temp_dir`, :func:`replace_dir`, :func:`recover_dir`): a folder
  is built as a sibling ``.NAME.tmp-PID``; the old folder is renamed aside to
  ``.NAME.old-PID``, the new one renamed into place, and only then is the old one deleted.
  A kill in between leaves the old folder whole under its aside name; the next command on
  the same ``--out`` puts it back (or drops it once the new one is in place).
- **Ownership** (:func:`claim`, :func:`check_owned`, :func:`check_not_input`): every folder
  vh creates holds a marker ``.vh-owner.json`` naming its kind (dataset, cache, run, init,
  report, demo). ``--overwrite`` deletes or replaces only a folder with the marker of the
  right kind, never one that equals or contains an input of the command, and never a file
  vh did not write. Backwards compatibility: a folder made before the marker existed is
  accepted only when its owner recognises it as vh's (``legacy``: a run dir's config.json
  with ``vh_version`` and ``fit``, a cache's zarr.json with vh's attributes, a dataset whose
  metadata.db session names ``vh_version``, an init dir whose ``value_head`` names its
  source run, a report's eval.json) and, for the kinds whose files vh knows (dataset,
  cache, run, init), it holds nothing else. Anything else is refused with one line saying
  to choose another ``--out`` or delete the folder by hand.
- **Kill points** (:func:`kill_point`): ``VH_FAILPOINT=NAME:K`` SIGKILLs the process at the
  K-th pass through point NAME, as a power cut would (the crash tests use it; fit's points
  are ``fit:trained``, ``fit:best`` and ``fit:last``, passed once per epoch).
- **The lock** (:class:`vh.lock.Lock`, re-exported here as ``Lock``): one process per folder (a run dir's ``lock``, a cache's
  ``extract.lock``): an ``flock`` the kernel drops when its holder dies, plus a JSON record
  of the holder for the message and for what ``flock`` cannot see (another host).

The marker holds no creation time on purpose: the same inputs must give the same bytes
(caches resumed after a kill are compared byte for byte with uninterrupted ones).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from vh.errors import VhError, require_regular_file
from vh.lock import Lock, describe_holder
from vh.lock import pid_alive as _pid_alive

MARKER = ".vh-owner.json"
KINDS = ("dataset", "cache", "run", "init", "report", "demo", "play")
_NAMES = {"dataset": "dataset dir", "run": "run dir", "init": "init dir", "report": "report dir"}
FAILPOINT_ENV = "VH_FAILPOINT"

_hits: Counter = Counter()
# ".NAME.PID.tmp" (this module) and ".NAME.tmp-PID" (run dirs of vh 0.1 before it)
_TEMP_FILE = re.compile(r"^\..+(\.\d+\.tmp|\.tmp-\d+)$")

# --------------------------------------------------------------------------- crash tests


def kill_point(name: str) -> None:
    """Crash-test hook: SIGKILL this process at the k-th pass through point ``name``.

    Set ``VH_FAILPOINT=name:k`` to die exactly there, as a kill -9 or a power cut would: no
    cleanup, no flush. Unset, this is one dict lookup.
    """
    spec = os.environ.get(FAILPOINT_ENV)
    if not spec:
        return
    point, _, k = spec.rpartition(":")
    if point == name:
        _hits[name] += 1
        if _hits[name] == int(k):
            os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- atomic files


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries (a rename, a new file), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """Flush every file and folder under ``root`` (e.g. zarr's metadata and chunks)."""
    for folder, _dirs, files in os.walk(root):
        for f in files:
            fsync_path(Path(folder, f))
        fsync_path(folder)


def is_temp(name: str) -> bool:
    """Whether a file name is a temp file of :func:`atomic_write` (a kill leaves these)."""
    return bool(_TEMP_FILE.match(name))


def remove_temp_files(root: str | os.PathLike) -> int:
    """Delete the temp files a killed writer left anywhere under ``root``; returns how many."""
    count = 0
    for folder, _dirs, files in os.walk(root):
        for f in files:
            if is_temp(f):
                Path(folder, f).unlink(missing_ok=True)
                count += 1
    return count


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], object], *, point: str | None = None
) -> None:
    """Write ``path`` atomically; ``write(tmp_path)`` produces the content.

    Args:
        path: the destination; its folder is created if absent.
        write: writes the whole content to the temp path it is given.
        point: a kill-point prefix: ``POINT:tmp`` is passed with the temp file durable and
            not yet in place, ``POINT:done`` once it is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        fsync_path(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a torn temp is of no use to anyone
        raise
    if point:
        kill_point(f"{point}:tmp")
    # a failed replace leaves the whole temp, as a kill here would; resume removes it
    os.replace(tmp, path)
    fsync_path(path.parent)
    if point:
        kill_point(f"{point}:done")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, point: str | None = None) -> None:
    """Atomic file with these bytes (see :func:`atomic_write`)."""
    atomic_write(path, lambda p: Path(p).write_bytes(data), point=point)


def atomic_write_text(path: str | os.PathLike, text: str, *, point: str | None = None) -> None:
    """Atomic UTF-8 text file (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode(), point=point)


def atomic_write_json(
    path: str | os.PathLike,
    obj,
    *,
    indent: int | None = 1,
    sort_keys: bool = False,
    point: str | None = None,
) -> None:
    """Atomic JSON file, indented so people can read it (see :func:`atomic_write`)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys)
    atomic_write_text(path, text + "\n", point=point)


# --------------------------------------------------------------------------- reading JSON


def read_json(path: str | os.PathLike, what: str = "file") -> dict:
    """Read a JSON object vh needs; a missing, special or malformed file is one VhError.

    Args:
        path: the file.
        what: what the file is, for the message (``config.json (not a run dir?)``).

    Returns:
        The object (a dict; any other JSON value is refused).
    """
    if not os.path.lexists(path):
        raise VhError(f"missing {what}", path=path)
    require_regular_file(path, field=what)  # a FIFO would block read() forever
    try:
        obj = json.loads(Path(path).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VhError(f"{what} is not valid JSON ({e})", path=path) from None
    if not isinstance(obj, dict):
        raise VhError(f"{what} is not a JSON object", path=path)
    return obj


def try_read_json(path: str | os.PathLike) -> dict | None:
    """The JSON object at ``path``, or None when it is absent, special or not a JSON object."""
    try:
        return read_json(path)
    except (VhError, OSError):
        return None


# --------------------------------------------------------------------------- ownership


def claim(folder: str | os.PathLike, kind: str) -> None:
    """Mark ``folder`` (created if absent) as made by vh as a ``kind``.

    An existing marker of the same kind is left as it is (same bytes on a resume).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if owner(folder) == kind:
        return
    from vh import __version__

    atomic_write_json(folder / MARKER, {"vh_owner": kind, "vh_version": __version__})


def owner(folder: str | os.PathLike) -> str | None:
    """The kind recorded in ``folder``'s marker, or None without a readable one."""
    rec = try_read_json(Path(folder) / MARKER)
    kind = rec.get("vh_owner") if rec else None
    return kind if kind in KINDS else None


def entries(folder: Path, scratch: Iterable[str] = ()) -> list[str]:
    """The entries of ``folder`` that count: not the marker, a temp file or a scratch name."""
    skip = {MARKER, *scratch}
    return sorted(e for e in os.listdir(folder) if e not in skip and not is_temp(e))


def _refuse(message: str, folder: Path) -> None:
    raise VhError(message, path=folder, field="--out", code=3)


def check_owned(
    folder: str | os.PathLike,
    kind: str,
    *,
    files: Iterable[str] | None = None,
    legacy: Callable[[Path], bool] | None = None,
    scratch: Iterable[str] = (),
) -> None:
    """Refuse to delete or replace ``folder`` unless vh made it as a ``kind``.

    An absent or empty folder passes (there is nothing to lose). Otherwise the folder needs
    the marker of this kind, or (made before markers existed) a layout ``legacy`` recognises;
    and with ``files`` given, every entry must match one of these glob patterns.

    Args:
        folder: the output folder about to be overwritten.
        kind: the kind of folder the command writes (one of ``KINDS``).
        files: glob patterns of the top-level entries vh writes in such a folder (None: any).
        legacy: recognises a folder of this kind that vh made before the marker existed.
        scratch: names that do not make the folder non-empty (a lock file).

    Raises:
        VhError: (code 3) naming the folder and why it is not vh's to overwrite.
    """
    folder = Path(folder)
    if not os.path.lexists(folder):
        return
    if not folder.is_dir():
        _refuse("exists and is not a directory; refusing to replace it", folder)
    names = entries(folder, scratch)
    if not names:
        return
    found = owner(folder)
    name = _NAMES.get(kind, kind)
    if found is not None and found != kind:
        _refuse(
            f"holds a vh {_NAMES.get(found, found)}, not a {name}; refusing to overwrite it", folder
        )
    if found is None and not (legacy is not None and legacy(folder)):
        _refuse(
            f"not a vh {name} (no {MARKER}); refusing to overwrite it: choose another --out, "
            "or delete it yourself",
            folder,
        )
    if files is not None:
        patterns = tuple(files)
        foreign = [e for e in names if not any(Path(e).match(p) for p in patterns)]
        if foreign:
            _refuse(
                f"refusing to overwrite: it holds {foreign[0]!r}, which vh did not write",
                folder,
            )


def check_not_input(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse an output folder that is an input of the command or holds one.

    Paths are compared resolved (links followed, ``.`` and ``..`` gone), so ``--out .`` or
    ``--out ..`` above the inputs is refused as well as a link to one. An output inside an
    input is allowed (a run dir inside a cache folder is the user's choice).

    Args:
        out: the output folder.
        inputs: role (``--cache``, ``RUN_DIR``) -> path; None entries are skipped.
    """
    o = Path(out).resolve()
    for role, path in inputs.items():
        if path is None:
            continue
        i = Path(path).resolve()
        if o == i:
            _refuse(f"is the {role} input itself; choose another --out", Path(out))
        if o in i.parents:
            _refuse(
                f"contains the {role} input ({i}); refusing to write over it: choose another --out",
                Path(out),
            )


# --------------------------------------------------------------------------- atomic folders


def _absolute(out: str | os.PathLike) -> Path:
    """``out`` made absolute without following links (``.`` gets a name and a parent)."""
    return Path(os.path.abspath(out))


def _sibling(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}.{tag}-{os.getpid()}"


def _stale_siblings(out: Path, tag: str) -> list[Path]:
    """``.NAME.TAG-PID`` folders next to ``out`` whose process is gone (oldest pid first)."""
    prefix = f".{out.name}.{tag}-"
    try:
        names = os.listdir(out.parent)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        pid = name[len(prefix) :]
        if name.startswith(prefix) and pid.isdigit() and not _pid_alive(int(pid)):
            found.append(out.parent / name)
    return sorted(found)


def _remove(path: Path) -> None:
    """Delete a folder (or only the link, if it is one)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def recover_dir(out: str | os.PathLike) -> bool:
    """Clean up after a command killed while replacing ``out``.

    A build folder of a dead process is deleted. An old folder set aside by a dead process is
    put back when ``out`` is missing (the kill came between the two renames), else deleted
    (the new one was in place already).

    Returns:
        Whether an old folder was put back.
    """
    out = _absolute(out)
    for tmp in _stale_siblings(out, "tmp"):
        _remove(tmp)
    restored = False
    for old in _stale_siblings(out, "old"):
        if not os.path.lexists(out):
            os.replace(old, out)
            restored = True
        else:
            _remove(old)
    return restored


def temp_dir(out: str | os.PathLike) -> Path:
    """A fresh, empty build folder ``.NAME.tmp-PID`` next to ``out`` (parents created)."""
    tmp = _sibling(_absolute(out), "tmp")
    _remove(tmp)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Put the finished folder ``tmp`` at ``out``; an old ``out`` is deleted only afterwards.

    The old folder is renamed aside first (``os.replace`` cannot replace a non-empty folder),
    so from start to end either the old or the new folder exists under a known name.
    Kill points: ``replace:aside`` (old aside, new not in place), ``replace:done``.
    """
    tmp, out = Path(tmp), _absolute(out)
    fsync_tree(tmp)
    aside = None
    if os.path.lexists(out):
        aside = _sibling(out, "old")
        _remove(aside)
        os.replace(out, aside)
        fsync_path(out.parent)
        kill_point("replace:aside")
    os.replace(tmp, out)
    fsync_path(out.parent)
    kill_point("replace:done")
    if aside is not None:
        _remove(aside)


__all__ = ["Lock", "describe_holder"]  # the lock lives in vh.lock; re-exported here
