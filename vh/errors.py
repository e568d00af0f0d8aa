"""User-facing errors.

Every failure caused by bad input raises :class:`VhError`; the CLI prints its message as one
line (``error: <file>: <field>: <what>``) and exits with a non-zero code, never a traceback.
"""

from __future__ import annotations

import os


class VhError(Exception):
    """An error the user can fix: bad input, a refused cache, a wrong config key.

    Args:
        message: what is wrong, one line.
        path: the file or directory concerned, if any.
        field: the field, key or column concerned, if any.
        code: the process exit code the CLI uses (2 = bad input, 3 = refused state).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike | None = None,
        field: str | None = None,
        code: int = 2,
    ):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.field = field
        self.code = code
        super().__init__(self.line())

    def line(self) -> str:
        parts = [p for p in (self.path, self.field) if p]
        head = ": ".join(parts)
        text = f"{head}: {self.message}" if head else self.message
        return " ".join(text.split())  # always one line


def require_regular_file(path: str | os.PathLike, *, field: str | None = None) -> str:
    """Refuse anything that is not a regular file once links are resolved.

    A FIFO, socket or device named like an input would make ``open()`` block forever or read
    endless bytes; a folder gives a confusing error further down. Call this before opening any
    file vh is handed.

    Args:
        path: the file to check.
        field: the field or role of the file, for the message.

    Returns:
        ``path`` as a string, for chaining.
    """
    import stat

    p = os.fspath(path)
    try:
        st = os.stat(p)  # follows links
    except FileNotFoundError:
        raise VhError("no such file", path=p, field=field) from None
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a device or socket"
        )
        raise VhError(f"not a regular file ({kind}); refusing to read it", path=p, field=field)
    return p
