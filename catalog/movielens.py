"""Loaders for the three public MovieLens layouts.

* latest-small / 25M / 32M: ``movies.csv``, ``ratings.csv``, ``tags.csv`` (UTF-8 CSV).
* 100K: ``u.data`` (tab-separated), ``u.item`` and ``u.user`` (``|``-separated, latin-1).
* 1M: ``movies.dat``, ``ratings.dat``, ``users.dat`` (``::``-separated, latin-1).

All three give the same :class:`~catalog.model.Catalog`: items with title, genres and tags,
users (with a profile where the layout has one) and rating interactions.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from catalog.errors import DataError
from catalog.model import Catalog, Interactions, Item, User
from catalog.readers import (
    BadRowPolicy,
    iter_csv,
    iter_delimited,
    no_interactions,
    parse_int,
    parse_rating,
    parse_timestamp,
)
from catalog.tags import DatedTags, ordered_tags

log = logging.getLogger(__name__)

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
"""Genre names of the 19 flag columns of ``u.item``, used when ``u.genre`` is absent."""

AGES_1M = {
    "1": "under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49",
    "50": "50-55", "56": "56+",
}  # fmt: skip
OCCUPATIONS_1M = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip

NO_GENRES = "(no genres listed)"

LAYOUT_FILES = {
    "csv": ("movies.csv", "ratings.csv"),
    "100k": ("u.item", "u.data"),
    "1m": ("movies.dat", "ratings.dat"),
}
"""Each layout's items and interactions files (named in errors)."""


def detect_layout(path: Path) -> str:
    """Returns ``"csv"``, ``"100k"`` or ``"1m"`` for a MovieLens folder.

    Raises:
        DataError: the folder is missing or holds none of the known layouts.
    """
    if not path.is_dir():
        raise DataError("MovieLens folder not found", path=path)
    if (path / "movies.csv").exists():
        return "csv"
    if (path / "u.data").exists():
        return "100k"
    if (path / "ratings.dat").exists():
        return "1m"
    raise DataError(
        "not a MovieLens folder: expected movies.csv (latest/25M), u.data (100K) "
        "or ratings.dat (1M)",
        path=path,
    )


def load_movielens(path: str | Path, *, skip_bad: bool = False) -> Catalog:
    """Loads any of the three MovieLens layouts from a folder.

    Args:
        path: the dataset folder.
        skip_bad: skip and count malformed rows instead of raising.

    Raises:
        DataError: a missing or empty file, or a malformed row (without ``skip_bad``).
    """
    root = Path(path)
    layout = detect_layout(root)
    policy = BadRowPolicy(skip_bad=skip_bad)
    dated = DatedTags()
    if layout == "csv":
        items, users, rows, dated = _load_csv_layout(root, policy)
    elif layout == "100k":
        items, users, rows = _load_100k(root, policy)
    else:
        items, users, rows = _load_1m(root, policy)
    catalog = _assemble(
        items,
        users,
        rows,
        policy,
        {"loader": "movielens", "layout": layout, "path": str(root.resolve())},
        (root / LAYOUT_FILES[layout][0], root / LAYOUT_FILES[layout][1]),
    )
    catalog.tag_events = dated
    return catalog


_Row = tuple[str, str, int, float]


def _assemble(
    items: dict[str, Item],
    users: dict[str, User],
    rows: list[_Row],
    policy: BadRowPolicy,
    source: dict[str, str],
    files: tuple[Path, Path],
) -> Catalog:
    """Builds the catalog, counting (and reporting) interactions whose item is unknown.

    Raises:
        DataError: no item, or no interaction with a known item, is left to import.
    """
    if not items:
        raise DataError("no items to import", path=files[0])
    known = [r for r in rows if r[1] in items]
    if not known:
        raise no_interactions(
            files[1], parsed=len(rows), skipped=policy.skipped.get(files[1].name, 0)
        )
    unknown = len(rows) - len(known)
    if unknown:
        sample = sorted({r[1] for r in rows if r[1] not in items})[:5]
        log.warning(
            "%d interactions name item ids missing from the item file (e.g. %s); they are "
            "excluded and counted in the summary as unknown_item_interactions",
            unknown,
            ", ".join(sample),
        )
    for user_id, *_ in known:
        if user_id not in users:
            users[user_id] = User(user_id)
    users = dict(sorted(users.items(), key=lambda kv: _id_key(kv[0])))
    interactions = Interactions(
        np.array([r[0] for r in known], dtype=str) if known else [],
        np.array([r[1] for r in known], dtype=str) if known else [],
        [r[2] for r in known],
        [r[3] for r in known],
        events=np.full(len(known), "rating") if known else None,
    )
    stats = {"skipped_rows": policy.total_skipped, "unknown_item_interactions": unknown}
    stats.update({f"skipped_rows[{name}]": n for name, n in policy.skipped.items()})
    return Catalog(items, users, interactions, source=source, stats=stats)


def _id_key(value: str) -> tuple[int, int | str]:
    """Sorts numeric ids numerically and other ids after them, alphabetically."""
    return (0, int(value)) if value.isdigit() else (1, value)


def _load_csv_layout(
    root: Path, policy: BadRowPolicy
) -> tuple[dict[str, Item], dict[str, User], list[_Row], DatedTags]:
    movies = root / "movies.csv"
    items: dict[str, Item] = {}
    for line, row in iter_csv(movies):
        if "__error__" in row:
            policy.handle(DataError(row["__error__"], path=movies, line=line))
            continue
        try:
            item_id = str(
                parse_int(row.get("movieId", ""), path=movies, line=line, column="movieId")
            )
            title = row.get("title", "").strip()
            if not title:
                raise DataError("empty title", path=movies, line=line, column="title", value="")
            if item_id in items:
                raise DataError(
                    "duplicate movieId", path=movies, line=line, column="movieId", value=item_id
                )
        except DataError as exc:
            policy.handle(exc)
            continue
        raw_genres = row.get("genres", "").strip()
        genres = () if raw_genres in ("", NO_GENRES) else tuple(raw_genres.split("|"))
        items[item_id] = Item(item_id, title, genres=genres)

    tags_path = root / "tags.csv"
    dated: list[tuple[str, str, int]] = []
    if tags_path.exists() and tags_path.stat().st_size > 0:
        written: dict[str, list[str]] = defaultdict(list)
        for line, row in iter_csv(tags_path):
            if "__error__" in row:
                policy.handle(DataError(row["__error__"], path=tags_path, line=line))
                continue
            movie = row.get("movieId", "").strip()
            tag = " ".join(row.get("tag", "").split())
            if not movie.isdigit() or not tag:
                policy.handle(
                    DataError(
                        "expected movieId and a non-empty tag",
                        path=tags_path,
                        line=line,
                        column="tag",
                        value=row.get("tag", ""),
                    )
                )
                continue
            if "timestamp" in row:  # a tags file without the column: undated tags, kept
                try:
                    when = parse_timestamp(
                        row["timestamp"], path=tags_path, line=line, column="timestamp"
                    )
                except DataError as exc:
                    policy.handle(exc)
                    continue
                if movie in items:
                    dated.append((movie, tag, when))
            written[movie].append(tag)
        for movie, tags in written.items():
            if movie in items:
                old = items[movie]
                items[movie] = Item(old.id, old.title, genres=old.genres, tags=ordered_tags(tags))

    ratings = root / "ratings.csv"
    rows: list[_Row] = []
    for line, row in iter_csv(ratings):
        if "__error__" in row:
            policy.handle(DataError(row["__error__"], path=ratings, line=line))
            continue
        try:
            rows.append(
                _rating_row(
                    row.get("userId", ""),
                    row.get("movieId", ""),
                    row.get("timestamp", ""),
                    row.get("rating", ""),
                    ratings,
                    line,
                    ("userId", "movieId", "timestamp", "rating"),
                )
            )
        except DataError as exc:
            policy.handle(exc)
    return items, {}, rows, DatedTags.of(dated)


def _rating_row(
    user: str, item: str, ts: str, rating: str, path: Path, line: int, names: tuple[str, ...]
) -> _Row:
    user_id = str(parse_int(user, path=path, line=line, column=names[0]))
    item_id = str(parse_int(item, path=path, line=line, column=names[1]))
    timestamp = parse_timestamp(ts, path=path, line=line, column=names[2])
    value = parse_rating(rating, path=path, line=line, column=names[3])
    return user_id, item_id, timestamp, value


def _delimited_rating(fields: list[str], path: Path, line: int, names: tuple[str, ...]) -> _Row:
    """A rating row of the 100K and 1M layouts: user, item, rating, timestamp."""
    return _rating_row(fields[0], fields[1], fields[3], fields[2], path, line, names)


def _load_100k(
    root: Path, policy: BadRowPolicy
) -> tuple[dict[str, Item], dict[str, User], list[_Row]]:
    genre_names = list(GENRES_100K)
    genre_file = root / "u.genre"
    if genre_file.exists() and genre_file.stat().st_size > 0:
        named = {}
        for _, fields in iter_delimited(genre_file, sep="|", encoding="latin-1", n_fields=2):
            if fields and fields[1].strip().isdigit():
                named[int(fields[1])] = fields[0]
        if named:
            genre_names = [
                named.get(i, GENRES_100K[i] if i < 19 else str(i)) for i in range(max(named) + 1)
            ]
    n_flags = len(genre_names)

    item_file = root / "u.item"
    items: dict[str, Item] = {}
    for line, fields in iter_delimited(
        item_file, sep="|", encoding="latin-1", n_fields=5 + n_flags
    ):
        try:
            if not fields:
                raise DataError(
                    f"expected {5 + n_flags} '|'-separated fields", path=item_file, line=line
                )
            item_id = str(parse_int(fields[0], path=item_file, line=line, column="movie id"))
            flags = fields[5:]
            if any(f not in ("0", "1") for f in flags):
                raise DataError(
                    "genre flags must be 0 or 1",
                    path=item_file,
                    line=line,
                    column="genres",
                    value="|".join(flags),
                )
            if item_id in items:
                raise DataError(
                    "duplicate movie id",
                    path=item_file,
                    line=line,
                    column="movie id",
                    value=item_id,
                )
        except DataError as exc:
            policy.handle(exc)
            continue
        genres = tuple(
            g for g, f in zip(genre_names, flags, strict=True) if f == "1" and g != "unknown"
        )
        attributes = {"release_date": fields[2]} if fields[2] else {}
        items[item_id] = Item(item_id, fields[1].strip(), genres=genres, attributes=attributes)

    users: dict[str, User] = {}
    user_file = root / "u.user"
    if user_file.exists():
        for line, fields in iter_delimited(user_file, sep="|", encoding="latin-1", n_fields=5):
            try:
                if not fields:
                    raise DataError("expected 5 '|'-separated fields", path=user_file, line=line)
                user_id = str(parse_int(fields[0], path=user_file, line=line, column="user id"))
            except DataError as exc:
                policy.handle(exc)
                continue
            users[user_id] = User(
                user_id,
                {"age": fields[1], "gender": fields[2], "occupation": fields[3], "zip": fields[4]},
            )

    data_file = root / "u.data"
    rows: list[_Row] = []
    for line, fields in iter_delimited(data_file, sep="\t", encoding="latin-1", n_fields=4):
        try:
            if not fields:
                raise DataError("expected 4 tab-separated fields", path=data_file, line=line)
            rows.append(
                _delimited_rating(
                    fields, data_file, line, ("user id", "item id", "timestamp", "rating")
                )
            )
        except DataError as exc:
            policy.handle(exc)
    return items, users, rows


def _load_1m(
    root: Path, policy: BadRowPolicy
) -> tuple[dict[str, Item], dict[str, User], list[_Row]]:
    movie_file = root / "movies.dat"
    items: dict[str, Item] = {}
    for line, fields in iter_delimited(movie_file, sep="::", encoding="latin-1", n_fields=3):
        try:
            if not fields:
                raise DataError("expected MovieID::Title::Genres", path=movie_file, line=line)
            item_id = str(parse_int(fields[0], path=movie_file, line=line, column="MovieID"))
            if item_id in items:
                raise DataError(
                    "duplicate MovieID", path=movie_file, line=line, column="MovieID", value=item_id
                )
        except DataError as exc:
            policy.handle(exc)
            continue
        genres = tuple(g for g in fields[2].split("|") if g and g != NO_GENRES)
        items[item_id] = Item(item_id, fields[1].strip(), genres=genres)

    users: dict[str, User] = {}
    user_file = root / "users.dat"
    if user_file.exists():
        for line, fields in iter_delimited(user_file, sep="::", encoding="latin-1", n_fields=5):
            try:
                if not fields:
                    raise DataError(
                        "expected UserID::Gender::Age::Occupation::Zip-code",
                        path=user_file,
                        line=line,
                    )
                user_id = str(parse_int(fields[0], path=user_file, line=line, column="UserID"))
                occupation = parse_int(fields[3], path=user_file, line=line, column="Occupation")
            except DataError as exc:
                policy.handle(exc)
                continue
            occ = (
                OCCUPATIONS_1M[occupation]
                if 0 <= occupation < len(OCCUPATIONS_1M)
                else str(occupation)
            )
            users[user_id] = User(
                user_id,
                {
                    "gender": fields[1],
                    "age": AGES_1M.get(fields[2], fields[2]),
                    "occupation": occ,
                    "zip": fields[4],
                },
            )

    rating_file = root / "ratings.dat"
    rows: list[_Row] = []
    for line, fields in iter_delimited(rating_file, sep="::", encoding="latin-1", n_fields=4):
        try:
            if not fields:
                raise DataError(
                    "expected UserID::MovieID::Rating::Timestamp", path=rating_file, line=line
                )
            rows.append(
                _delimited_rating(
                    fields, rating_file, line, ("UserID", "MovieID", "Timestamp", "Rating")
                )
            )
        except DataError as exc:
            policy.handle(exc)
    return items, users, rows
