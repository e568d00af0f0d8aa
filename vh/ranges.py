"""Declared valid values of config fields: :class:`Range` and :func:`ranged`.

Every number, string and list field of a config dataclass (:mod:`vh.config`, and the trunk's
``config.json`` in :mod:`vh.extract.trunk_config`) declares its valid values next to its
default with :func:`ranged`; the one strict parser (:mod:`vh.strict`) checks them with
:meth:`Range.check` once a value has its type, naming the dotted key in the error.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vh.errors import VhError

SEED_MAX = 2**31 - 1  # JAX makes its keys from int32 seeds; numpy and torch take these too
ROWS_MAX = 2**31 - 1  # the fit addresses rows with int32 positions
TILE_MAX = 2**17  # the largest tile a 4x4 board can ever hold
SQL_TEXT = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]{0,4096}"  # sqlite refuses NUL; no control chars


@dataclass(frozen=True)
class Range:
    """The valid values of one config field (each element, for a list field).

    Numbers must be finite and within the bounds: ``ge``/``le`` inclusive, ``gt``/``lt``
    exclusive; ``pow2`` asks for a power of two. Strings must match ``pattern`` in full.
    Lists must have a length in ``lengths`` and, with ``increasing``, strictly rising elements.
    ``one_of`` returns the valid strings when they are known only at run time (the target kinds
    of the registry). ``None`` passes when the field's type allows it (``float | None``).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    pow2: bool = False
    pattern: str | None = None
    lengths: range | tuple[int, ...] | None = None
    increasing: bool = False
    why: str = ""  # what the value means, when the bounds alone do not say it
    one_of: Callable[[], Sequence[str]] | None = None

    def describe(self) -> str:
        """The bounds in words: ``> 0 and <= 10``, ``a power of two >= 4``."""
        parts = [
            f"{op} {_num(b)}"
            for op, b in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if b is not None
        ]
        text = " and ".join(parts)
        return f"a power of two {text}" if self.pow2 else text

    def check(self, value: Any, key: str) -> None:
        """Raise :class:`VhError` naming ``key`` unless ``value`` is in range."""
        if value is None:
            return
        if isinstance(value, tuple):
            self._check_list(value, key)
        elif isinstance(value, str):
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                raise VhError(f"expected {self.why or self.pattern}, got {value!r}", field=key)
            if self.one_of is not None and value not in self.one_of():
                valid = " | ".join(repr(v) for v in self.one_of())
                raise VhError(f"expected {valid}, got {value!r}", field=key)
        else:
            self._check_number(value, key)

    def _check_number(self, v: int | float, key: str) -> None:
        # an int is always finite (and may be too large to test as a float: JSON's 10**2000)
        if not isinstance(v, int) and not math.isfinite(v):
            bounds = f" {self.describe()}" if self.describe() else ""
            raise VhError(f"expected a finite number{bounds}, got {v!r}", field=key)
        bad = (
            (self.ge is not None and v < self.ge)
            or (self.gt is not None and v <= self.gt)
            or (self.le is not None and v > self.le)
            or (self.lt is not None and v >= self.lt)
            or (self.pow2 and (v < 1 or int(v) & (int(v) - 1)))
        )
        if bad:
            why = f" ({self.why})" if self.why else ""
            raise VhError(
                f"out of range: expected {self.describe()}{why}, got {value_text(v)}", field=key
            )

    def _check_list(self, values: tuple, key: str) -> None:
        if self.lengths is not None and len(values) not in self.lengths:
            raise VhError(
                f"expected {_lengths(self.lengths)} elements, got {len(values)}", field=key
            )
        for i, v in enumerate(values):
            self._check_number(v, f"{key}[{i}]")
        if self.increasing and any(b <= a for a, b in zip(values, values[1:], strict=False)):
            raise VhError(f"expected strictly increasing values, got {list(values)}", field=key)


def value_text(value: Any) -> str:
    """``value`` as a message shows it: its repr, or the length of an integer too long to print
    on one line (JSON reads integers of thousands of digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**1000:
        return f"an integer of {len(str(abs(value)))} digits"
    return repr(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _lengths(lengths: range | tuple[int, ...]) -> str:
    if isinstance(lengths, range):
        return f"{lengths.start} to {lengths.stop - 1}"
    return " or ".join(map(str, lengths))


def ranged(default: Any, **limits: Any) -> Any:
    """A dataclass field with its default and its valid values (the :class:`Range` keywords)."""
    return field(default=default, metadata={"range": Range(**limits)})


def field_range(f: dataclasses.Field) -> Range | None:
    """The declared :class:`Range` of a dataclass field (None for bools, choices, sections)."""
    return f.metadata.get("range")
