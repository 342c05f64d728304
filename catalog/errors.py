"""Errors raised by the data layer.

Every error names the thing that is wrong (file, line, column and value, or id) so a user can
fix the input without reading the code.
"""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Input data that cannot be used, with its location.

    Attributes:
        path: the file that holds the bad input, when there is one.
        line: 1-based physical line number in that file, when known.
        column: the column or field name, when known.
        value: the offending value, when known.
        reason: what is wrong, in words.
    """

    def __init__(
        self,
        reason: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
        value: object = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.column = column
        self.value = value
        self.reason = reason
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        what = ""
        if self.column is not None:
            what = f"column {self.column!r}"
            if self.value is not None:
                what += f" value {_short(self.value)!r}"
            what += ": "
        elif self.value is not None:
            what = f"value {_short(self.value)!r}: "
        return f"{where}{what}{self.reason}"


def _short(value: object, limit: int = 80) -> str:
    return printable(str(value), limit)


def printable(text: str, limit: int = 80) -> str:
    """``text`` safe to echo into a terminal, log or response: control and other unprintable
    characters escaped (so escaping twice changes nothing), at most ``limit`` characters."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."
