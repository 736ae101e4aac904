"""The errors rlxf raises on bad input.

Every error a user can cause is an :class:`RlxfError`; the CLI prints its message on
one line and exits with status 2, without a traceback. Messages say what is wrong,
where, and how to fix it.
"""

from __future__ import annotations


class RlxfError(Exception):
    """Base class: a problem with the user's input, not a bug in rlxf."""


class ConfigError(RlxfError):
    """A config key is unknown, has the wrong type, or contradicts another key."""


class DataError(RlxfError):
    """A data file or row is malformed.

    ``str(err)`` reads ``FILE:LINE: field 'F': PROBLEM`` so editors and terminals can
    jump to the place; ``line`` is 1-based (the row number for Parquet and datasets).
    """

    def __init__(self, problem: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.problem, self.path, self.line, self.field = problem, path, line, field
        where = path or "<data>"
        if line is not None:
            where += f":{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{problem}")
