"""A generic loader for catalogs kept as CSV, JSONL or Parquet tables.

The caller maps the library's field names onto the table's column names with
:class:`ColumnMapping`; every unmapped item or user column becomes a free attribute.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.errors import DataError
from catalog.model import NO_LABEL, Catalog, Interactions, Item, User
from catalog.readers import (
    BadRowPolicy,
    iter_table,
    no_interactions,
    parse_int,
    parse_rating,
    parse_timestamp,
)

Row = tuple[str, str, int, float, int, str]


@dataclass(frozen=True)
class ColumnMapping:
    """Which table column holds each field. Optional fields may be absent from the table.

    Attributes:
        item_id, title, description, genres, tags: columns of the items table.
        user_id, timestamp, rating, label, event: columns of the interactions table (the items
            column for the item id is ``item_id`` too). Without a timestamp, the row number
            stands in so that file order is time order.
        list_separator: separator of list fields (genres, tags) stored as text.
    """

    item_id: str = "item_id"
    title: str = "title"
    description: str = "description"
    genres: str = "genres"
    tags: str = "tags"
    user_id: str = "user_id"
    timestamp: str = "timestamp"
    rating: str = "rating"
    label: str = "label"
    event: str = "event"
    list_separator: str = "|"

    @classmethod
    def from_pairs(cls, pairs: list[str]) -> ColumnMapping:
        """Builds a mapping from ``field=column`` strings (the CLI's ``--map`` values).

        Raises:
            DataError: a pair without ``=`` or an unknown field name.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, str] = {}
        for pair in pairs:
            field_name, sep, column = pair.partition("=")
            if not sep or not column:
                raise DataError("expected FIELD=COLUMN", column="--map", value=pair)
            if field_name not in names:
                raise DataError(
                    f"unknown field; choose from {', '.join(sorted(names))}",
                    column="--map",
                    value=field_name,
                )
            values[field_name] = column
        return cls(**values)


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return not (isinstance(value, str) and not value.strip())


def _as_list(value: Any, sep: str) -> tuple[str, ...]:
    if not _present(value):
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if _present(v))
    return tuple(p.strip() for p in str(value).split(sep) if p.strip())


def load_table(
    items: str | Path,
    interactions: str | Path,
    users: str | Path | None = None,
    *,
    mapping: ColumnMapping | None = None,
    skip_bad: bool = False,
    duplicates: str = "error",
) -> Catalog:
    """Loads a catalog from generic tables.

    Args:
        items: items table (CSV/TSV, JSONL or Parquet).
        interactions: interactions table.
        users: optional users table; users seen only in interactions get an empty profile.
        mapping: field-to-column mapping; the default expects the library's own field names.
        skip_bad: skip and count malformed rows instead of raising.
        duplicates: ``"error"`` (raise, naming both rows) or ``"last"`` (the last row wins).

    Raises:
        DataError: missing/empty files, missing required columns, malformed rows, duplicates.
    """
    cols = mapping or ColumnMapping()
    policy = BadRowPolicy(skip_bad=skip_bad)
    item_path = Path(items)
    catalog_items = _read_items(item_path, cols, policy, duplicates)

    catalog_users: dict[str, User] = {}
    if users is not None:
        user_path = Path(users)
        for line, row in iter_table(user_path):
            if "__error__" in row:
                policy.handle(DataError(str(row["__error__"]), path=user_path, line=line))
                continue
            try:
                user_id = _required(row, cols.user_id, user_path, line)
            except DataError as exc:
                policy.handle(exc)
                continue
            attrs = {k: str(v) for k, v in row.items() if k != cols.user_id and _present(v)}
            catalog_users[user_id] = User(user_id, attrs)

    inter_path = Path(interactions)
    rows: list[Row] = []
    unknown = 0
    timed: bool | None = None
    for line, row in iter_table(inter_path):
        if "__error__" in row:
            policy.handle(DataError(str(row["__error__"]), path=inter_path, line=line))
            continue
        if timed is None:
            timed = cols.timestamp in row
        try:
            parsed = _interaction(row, cols, inter_path, line, timed=timed)
        except DataError as exc:
            policy.handle(exc)
            continue
        if parsed[1] not in catalog_items:
            unknown += 1
            continue
        rows.append(parsed)
    if not rows:
        raise no_interactions(
            inter_path, parsed=unknown, skipped=policy.skipped.get(inter_path.name, 0)
        )
    for r in rows:
        catalog_users.setdefault(r[0], User(r[0]))
    inter = Interactions(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        [r[4] for r in rows],
        [r[5] for r in rows],
    )
    stats = {"skipped_rows": policy.total_skipped, "unknown_item_interactions": unknown}
    stats.update({f"skipped_rows[{name}]": n for name, n in policy.skipped.items()})
    source = {
        "loader": "table",
        "items": str(item_path.resolve()),
        "interactions": str(inter_path.resolve()),
    }
    if users is not None:
        source["users"] = str(Path(users).resolve())
    return Catalog(catalog_items, catalog_users, inter, source=source, stats=stats)


def _required(row: dict[str, Any], column: str, path: Path, line: int) -> str:
    if column not in row:
        raise DataError("required column is missing", path=path, line=line, column=column)
    value = row[column]
    if not _present(value):
        raise DataError("required value is empty", path=path, line=line, column=column, value="")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _interaction(
    row: dict[str, Any], cols: ColumnMapping, path: Path, line: int, *, timed: bool
) -> Row:
    """One interaction row. ``timed``: the table has a time column (its first row has it), so
    a row without a time is an error, never a time made up from its line number."""
    user_id = _required(row, cols.user_id, path, line)
    item_id = _required(row, cols.item_id, path, line)
    timestamp = line  # a table without a time column: file order is the time
    if timed:
        ts_raw = row.get(cols.timestamp)
        if not _present(ts_raw):
            raise DataError(
                "time is missing (the table has a time column, so every row needs one)",
                path=path,
                line=line,
                column=cols.timestamp,
                value="" if ts_raw is None else ts_raw,
            )
        timestamp = parse_timestamp(ts_raw, path=path, line=line, column=cols.timestamp)
    rating = math.nan
    if _present(row.get(cols.rating)):
        rating = parse_rating(row[cols.rating], path=path, line=line, column=cols.rating)
    label = NO_LABEL
    if _present(row.get(cols.label)):
        raw = row[cols.label]
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            label = int(raw.strip().lower() == "true")
        else:
            label = parse_int(raw, path=path, line=line, column=cols.label)
        if label not in (0, 1):
            raise DataError(
                "label must be 0 or 1", path=path, line=line, column=cols.label, value=raw
            )
    event = str(row.get(cols.event) or "").strip()
    return user_id, item_id, timestamp, rating, label, event


def load_items(
    path: str | Path,
    *,
    mapping: ColumnMapping | None = None,
    skip_bad: bool = False,
    duplicates: str = "error",
) -> tuple[dict[str, Item], BadRowPolicy]:
    """Loads only an items table (for index builds from an items file).

    Returns the items and the bad-row record (skipped counts).

    Raises:
        DataError: as :func:`load_table` for the items table.
    """
    policy = BadRowPolicy(skip_bad=skip_bad)
    return _read_items(Path(path), mapping or ColumnMapping(), policy, duplicates), policy


def _read_items(
    item_path: Path, cols: ColumnMapping, policy: BadRowPolicy, duplicates: str
) -> dict[str, Item]:
    if duplicates not in ("error", "last"):
        raise DataError("must be 'error' or 'last'", column="duplicates", value=duplicates)
    catalog_items: dict[str, Item] = {}
    first_line: dict[str, int] = {}
    mapped = {cols.item_id, cols.title, cols.description, cols.genres, cols.tags}
    for line, row in iter_table(item_path):
        if "__error__" in row:
            policy.handle(DataError(str(row["__error__"]), path=item_path, line=line))
            continue
        try:
            item_id = _required(row, cols.item_id, item_path, line)
            title = str(row.get(cols.title) or "").strip()
            if item_id in catalog_items and duplicates != "last":
                raise DataError(
                    f"duplicate item id (first seen on line {first_line[item_id]})",
                    path=item_path,
                    line=line,
                    column=cols.item_id,
                    value=item_id,
                )
        except DataError as exc:
            policy.handle(exc)
            continue
        first_line.setdefault(item_id, line)
        attributes = {k: str(v) for k, v in row.items() if k not in mapped and _present(v)}
        catalog_items[item_id] = Item(
            item_id,
            title,
            description=str(row.get(cols.description) or "").strip(),
            genres=_as_list(row.get(cols.genres), cols.list_separator),
            tags=_as_list(row.get(cols.tags), cols.list_separator),
            attributes=attributes,
        )
    if not catalog_items:
        raise DataError("no items could be read", path=item_path)
    return catalog_items
