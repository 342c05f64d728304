"""Low-level row readers that keep the physical line number of every row.

Line numbers matter because every parse error must point at ``file:line``. The readers check
that a file exists and is not empty before anything else, so those cases get a clear message too.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from catalog.errors import DataError
from catalog.thresholds import RATING_SCALE, TIMESTAMP_LIMIT

log = logging.getLogger(__name__)


@dataclass
class BadRowPolicy:
    """What to do with a malformed row: raise (the default) or skip and count.

    Attributes:
        skip_bad: skip malformed rows instead of raising.
        skipped: skipped rows per file name.
        first_errors: the first few skipped errors, kept for the summary.
    """

    skip_bad: bool = False
    skipped: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)

    def handle(self, error: DataError) -> None:
        """Raises ``error`` or records it, depending on :attr:`skip_bad`."""
        if not self.skip_bad:
            raise error
        name = Path(error.path).name if error.path else "?"
        self.skipped[name] = self.skipped.get(name, 0) + 1
        if len(self.first_errors) < 5:
            self.first_errors.append(str(error))
            log.warning("skipped bad row: %s", error)

    @property
    def total_skipped(self) -> int:
        """Skipped rows over all files."""
        return sum(self.skipped.values())


def no_interactions(path: Path, *, parsed: int, skipped: int) -> DataError:
    """The error for an import that would hold no interaction (an empty catalog trains
    nothing and would only fail later, far from its cause)."""
    if parsed:
        why = f"all {parsed:,} parsed rows name item ids missing from the items file"
    elif skipped:
        why = f"every row was skipped as bad ({skipped:,})"
    else:
        why = "the file has no data rows"
    return DataError(f"no interactions to import: {why}", path=path)


def check_file(path: Path) -> None:
    """Raises a clear :class:`DataError` when ``path`` is missing, not a file or empty."""
    if not path.exists():
        raise DataError("file not found", path=path)
    if not path.is_file():
        raise DataError("not a regular file", path=path)
    if path.stat().st_size == 0:
        raise DataError("file is empty", path=path)


def _decode_lines(path: Path, encoding: str, bad: dict[int, str]) -> Iterator[str]:
    """The file's lines decoded one at a time, so a bad byte is charged to its own line.

    A text-mode file decodes in 8 KiB blocks: a bad byte then surfaces at whatever row is being
    read, and no row can be skipped. Here an undecodable line is decoded with replacement
    characters (so parsing goes on) and recorded in ``bad`` (physical line -> reason) for the
    caller to report or skip.
    """
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                yield raw.decode(encoding)
            except UnicodeDecodeError as exc:
                bad[line_no] = (
                    f"cannot decode as {encoding}: {exc.reason} "
                    f"(byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                )
                yield raw.decode(encoding, errors="replace")


def _bad_in(bad: dict[int, str], first: int, last: int) -> str | None:
    """The decoding problem of a row spanning physical lines ``first..last``, if any."""
    for line in range(first, last + 1):
        if line in bad:
            return bad[line]
    return None


def iter_csv(
    path: Path, *, delimiter: str = ",", encoding: str = "utf-8"
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yields ``(line, row)`` for a CSV file with a header row.

    A row with the wrong number of fields, or a line that cannot be decoded, is yielded as
    ``{"__error__": reason}`` with its own line number, for the caller's :class:`BadRowPolicy`
    to report or skip.

    Raises:
        DataError: the file is missing or empty, has no header, its header cannot be decoded,
            or the CSV quoting is broken.
    """
    check_file(path)
    bad: dict[int, str] = {}
    reader = csv.reader(_decode_lines(path, encoding, bad), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("file has no header row", path=path) from None
    except csv.Error as exc:
        raise DataError(f"malformed CSV: {exc}", path=path, line=reader.line_num) from None
    problem = _bad_in(bad, 1, reader.line_num)
    if problem:
        raise DataError(f"header row: {problem}", path=path, line=1)
    header = [h.strip().lstrip("\ufeff") for h in header]
    line = reader.line_num
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"malformed CSV: {exc}", path=path, line=reader.line_num) from None
        start = line + 1
        line = reader.line_num
        problem = _bad_in(bad, start, line)
        if problem:
            yield start, {"__error__": problem}
            continue
        if not fields:
            continue
        if len(fields) != len(header):
            yield start, {"__error__": f"expected {len(header)} fields, found {len(fields)}"}
            continue
        yield start, dict(zip(header, fields, strict=True))


def iter_delimited(
    path: Path, *, sep: str, encoding: str, n_fields: int | None = None
) -> Iterator[tuple[int, list[str]]]:
    """Yields ``(line, fields)`` for a header-less file split on ``sep`` (``::``, ``|`` or tab).

    A row whose field count differs from ``n_fields``, or that cannot be decoded, is yielded as
    ``[]`` so the caller can report or skip it with its line number.
    """
    check_file(path)
    bad: dict[int, str] = {}
    for line_no, raw in enumerate(_decode_lines(path, encoding, bad), start=1):
        if line_no in bad:
            yield line_no, []
            continue
        text = raw.rstrip("\r\n")
        if not text.strip():
            continue
        fields = text.split(sep)
        if n_fields is not None and len(fields) != n_fields:
            yield line_no, []
            continue
        yield line_no, fields


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line, object)`` for a JSON-lines file; a bad line yields an ``__error__`` row."""
    check_file(path)
    bad: dict[int, str] = {}
    for line_no, raw in enumerate(_decode_lines(path, "utf-8", bad), start=1):
        if line_no in bad:
            yield line_no, {"__error__": bad[line_no]}
            continue
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield line_no, {"__error__": f"invalid JSON: {exc.msg}"}
            continue
        if not isinstance(obj, dict):
            yield line_no, {"__error__": "expected a JSON object"}
            continue
        yield line_no, obj


def iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(row_number, row)`` for a Parquet file (row numbers are 1-based)."""
    import pyarrow.parquet as pq

    check_file(path)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"cannot read Parquet: {exc}", path=path) from None
    yield from enumerate(table.to_pylist(), start=1)


def iter_table(path: Path, *, delimiter: str = ",") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields rows of a CSV, TSV, JSONL or Parquet file, chosen by its extension."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        yield from iter_csv(path, delimiter="\t" if suffix == ".tsv" else delimiter)
    elif suffix in (".jsonl", ".ndjson"):
        yield from iter_jsonl(path)
    elif suffix == ".parquet":
        yield from iter_parquet(path)
    else:
        raise DataError(
            f"unsupported file type {suffix!r} (use .csv, .tsv, .jsonl, .ndjson or .parquet)",
            path=path,
        )


def parse_int(value: Any, *, path: Path, line: int, column: str) -> int:
    """Parses an integer field, raising a :class:`DataError` that names the field and value."""
    if isinstance(value, bool):
        raise DataError("expected an integer", path=path, line=line, column=column, value=value)
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise DataError(
            "expected an integer", path=path, line=line, column=column, value=value
        ) from None


def parse_float(value: Any, *, path: Path, line: int, column: str) -> float:
    """Parses a finite float field, raising a :class:`DataError` that names the field and value."""
    try:
        out = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except (TypeError, ValueError):
        raise DataError(
            "expected a number", path=path, line=line, column=column, value=value
        ) from None
    if not math.isfinite(out):
        raise DataError(
            "expected a finite number", path=path, line=line, column=column, value=value
        )
    return out


def parse_timestamp(value: Any, *, path: Path, line: int, column: str) -> int:
    """Parses epoch seconds (int or float) or an ISO-8601 date/time into epoch seconds (UTC).

    Raises:
        DataError: not a time, not finite (``inf``, ``NaN``), or beyond
            :data:`catalog.thresholds.TIMESTAMP_LIMIT`, naming the field and value.
    """

    def bad(reason: str) -> DataError:
        return DataError(reason, path=path, line=line, column=column, value=value)

    text = str(value).strip()
    number: float | int
    if isinstance(value, datetime):
        number = _epoch(value)
    else:
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                try:
                    number = _epoch(datetime.fromisoformat(text.replace("Z", "+00:00")))
                except ValueError:
                    raise bad("expected epoch seconds or an ISO-8601 time") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise bad("expected a finite time")
    if abs(number) > TIMESTAMP_LIMIT:
        raise bad(f"time out of range (at most 2**53 in absolute value, {TIMESTAMP_LIMIT})")
    return int(number)


def _epoch(dt: datetime) -> int:
    """Epoch seconds of a date/time (UTC when it carries no zone)."""
    return int((dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp())


def parse_rating(value: Any, *, path: Path, line: int, column: str) -> float:
    """Parses a rating on the project's star scale (:data:`catalog.thresholds.RATING_SCALE`).

    Raises:
        DataError: not a finite number, or outside the scale, naming the field and value.
    """
    rating = parse_float(value, path=path, line=line, column=column)
    low, high = RATING_SCALE
    if not low <= rating <= high:
        raise DataError(
            f"rating outside the {low:g}-{high:g} star scale duorank's like threshold reads "
            "(rescale it, or give 0/1 labels instead)",
            path=path,
            line=line,
            column=column,
            value=value,
        )
    return rating
