"""The one strict value parser of every config vh reads.

Both the TOML config (:mod:`vh.config`) and the trunk's ``config.json``
(:mod:`vh.extract.trunk_config`) turn a value read from a file into a field's value here:
first its type, from the field's annotation (a bool is never a number, an int field refuses
``3.0``, a float field takes ``1`` as ``1.0``, a ``Literal`` lists its choices, a
``tuple[float, ...]`` takes a list and checks each element), then the field's declared
:class:`~vh.ranges.Range`. Errors are :class:`~vh.errors.VhError` naming the dotted key;
:func:`located` adds the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union

from vh.errors import VhError
from vh.ranges import Range, field_range, value_text


def type_name(tp: Any) -> str:
    """The annotation ``tp`` in the words of the messages: ``'a' | 'b'``, ``list of float``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form.

    Args:
        value: a value as a TOML or JSON reader gives it.
        tp: the field's annotation (``int``, ``float | None``, ``Literal[...]``,
            ``tuple[float, ...]``, ``dict``, ...).
        key: dotted key named in the error.

    Returns:
        ``value``, with ints widened to float for a float field and lists made tuples.

    Raises:
        VhError: ``expected <type>, got <value>`` naming ``key``.
    """
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise _bad(value, tp, key)
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is tuple:
        (elem, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _bad(value, tp, key)
        return tuple(coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float:
        return _coerce_float(value, key)
    # bool is a subclass of int: test it apart, both ways (True is no int, 1 no bool)
    plain = isinstance(tp, type) and isinstance(value, tp)
    if not plain or isinstance(value, bool) != (tp is bool):
        raise _bad(value, tp, key)
    return value


def _bad(value: Any, tp: Any, key: str) -> VhError:
    return VhError(f"expected {type_name(tp)}, got {value_text(value)}", field=key)


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """``float | None`` and the like: ``none`` (any case) for None, else the first arm that fits."""
    args = typing.get_args(tp)
    is_none = value is None or (isinstance(value, str) and value.lower() == "none")
    if is_none and type(None) in args:
        return None
    for a in args:
        if a is type(None):
            continue
        try:
            return coerce(value, a, key)
        except VhError:
            pass
    raise _bad(value, tp, key)


def _coerce_float(value: Any, key: str) -> float:
    """A float field takes ints too (JSON writes ``1e-05`` or ``1``), never a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(value, float, key)
    try:
        return float(value)
    except OverflowError:  # a JSON integer of hundreds of digits: no float holds it
        raise VhError(f"expected a finite number, got {value_text(value)}", field=key) from None


def parse(value: Any, tp: Any, key: str, rng: Range | None = None) -> Any:
    """:func:`coerce` ``value`` to ``tp``, then check it against ``rng`` (when declared).

    Returns:
        The canonical value.

    Raises:
        VhError: naming ``key``: a wrong type first, else a value out of range.
    """
    out = coerce(value, tp, key)
    if rng is not None:
        rng.check(out, key)
    return out


def check_field(f: dataclasses.Field, value: Any, key: str) -> None:
    """Raise :class:`VhError` naming ``key`` unless ``value`` is in ``f``'s declared range."""
    r = field_range(f)
    if r is not None:
        r.check(value, key)


@contextlib.contextmanager
def located(path: str | os.PathLike | None) -> Iterator[None]:
    """Name ``path`` in a :class:`VhError` raised inside that names no file yet."""
    try:
        yield
    except VhError as e:
        if e.path is not None or path is None:
            raise
        raise VhError(e.message, path=path, field=e.field, code=e.code) from None
