"""One user's state as bytes: a bounded history and the profile, in one compact value.

A history of ``n`` events is four packed arrays (times int64, ratings float32 with NaN for
none, labels int8 with -1 for none, id lengths uint16) and the item ids' UTF-8 bytes, after a
header that names the format. About 15 bytes and the id per event, against some 150 for the
same event as JSON, and decoded with numpy, not a Python loop over fields. A live event is the
same encoding of one event, prefixed by its event id.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from catalog.text import HistoryEvent

MAGIC = b"DU"
VERSION = 1
_HEADER = struct.Struct("<2sBII")  # magic, version, events, profile bytes
_ID_LIMIT = 65_535
"""Item and event ids are at most this many UTF-8 bytes (the schemas allow 200 characters)."""


class CorruptStateError(ValueError):
    """A stored value that is not a state this codec wrote (named by its key)."""


@dataclass(frozen=True)
class UserRecord:
    """What the online store holds of one user: the profile and the newest events, oldest
    first."""

    attributes: Mapping[str, str] = field(default_factory=dict)
    history: Sequence[HistoryEvent] = ()


def _ids_bytes(ids: Sequence[str]) -> tuple[bytes, np.ndarray]:
    encoded = [i.encode("utf-8") for i in ids]
    lengths = np.array([len(b) for b in encoded], dtype=np.uint32)
    if len(lengths) and int(lengths.max()) > _ID_LIMIT:
        raise ValueError(f"an id of {int(lengths.max())} bytes: at most {_ID_LIMIT}")
    return b"".join(encoded), lengths.astype("<u2")


def encode(record: UserRecord) -> bytes:
    """The record as bytes (see the module's docstring)."""
    events = list(record.history)
    ids, lengths = _ids_bytes([e.item_id for e in events])
    return encode_arrays(
        dict(record.attributes),
        np.array([e.timestamp for e in events], dtype="<i8"),
        np.array([np.nan if e.rating is None else e.rating for e in events], dtype="<f4"),
        np.array([-1 if e.label is None else e.label for e in events], dtype="i1"),
        lengths,
        ids,
    )


def encode_arrays(
    attributes: Mapping[str, str],
    times: np.ndarray,
    ratings: np.ndarray,
    labels: np.ndarray,
    id_lengths: np.ndarray,
    ids: bytes,
) -> bytes:
    """The record of events given as columns (the nightly writer's path: no object per
    event); ``ids`` is the item ids' UTF-8 bytes end to end, ``id_lengths`` each one's."""
    profile = json.dumps(dict(attributes), sort_keys=True).encode("utf-8") if attributes else b"{}"
    return b"".join(
        (
            _HEADER.pack(MAGIC, VERSION, len(times), len(profile)),
            profile,
            np.asarray(times, "<i8").tobytes(),
            np.asarray(ratings, "<f4").tobytes(),
            np.asarray(labels, "i1").tobytes(),
            np.asarray(id_lengths, "<u2").tobytes(),
            ids,
        )
    )


def _header(value: bytes, key: str) -> tuple[int, int]:
    """The events and profile bytes a record's header announces (checked: format, size)."""
    try:
        magic, version, n, n_profile = _HEADER.unpack_from(value, 0)
    except struct.error:
        raise CorruptStateError(f"{key}: {len(value)} bytes, shorter than a header") from None
    if magic != MAGIC or version != VERSION:
        raise CorruptStateError(f"{key}: not a duorank user state (format {magic!r} {version})")
    return int(n), int(n_profile)


def decode(value: bytes, key: str = "value") -> UserRecord:
    """The record :func:`encode` wrote.

    Raises:
        CorruptStateError: ``value`` (named ``key`` in the message) is not such a record.
    """
    n, n_profile = _header(value, key)
    at = _HEADER.size
    fixed = n_profile + n * (8 + 4 + 1 + 2)
    if len(value) < at + fixed:
        raise CorruptStateError(f"{key}: {len(value)} bytes, too short for {n} events")
    try:
        attributes = json.loads(value[at : at + n_profile].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CorruptStateError(f"{key}: the profile is not JSON") from None
    at += n_profile
    times = np.frombuffer(value, "<i8", n, at)
    at += 8 * n
    ratings = np.frombuffer(value, "<f4", n, at)
    at += 4 * n
    labels = np.frombuffer(value, "i1", n, at)
    at += n
    lengths = np.frombuffer(value, "<u2", n, at).astype(np.int64)
    at += 2 * n
    if len(value) != at + int(lengths.sum()):
        raise CorruptStateError(
            f"{key}: the item ids take {len(value) - at} bytes, not {lengths.sum()}"
        )
    ends = at + np.cumsum(lengths)
    starts = ends - lengths
    try:
        ids = [
            value[s:e].decode("utf-8") for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
        ]
    except UnicodeDecodeError:
        raise CorruptStateError(f"{key}: an item id is not UTF-8") from None
    if not isinstance(attributes, dict):
        raise CorruptStateError(f"{key}: the profile is not an object")
    # tolist() gives Python ints and floats already; NaN is the one value unequal to itself
    history = [
        HistoryEvent(i, t, None if r != r else r, None if lab < 0 else lab)
        for i, t, r, lab in zip(ids, times.tolist(), ratings.tolist(), labels.tolist(), strict=True)
    ]
    return UserRecord({str(k): str(v) for k, v in attributes.items()}, history)


def event_count(value: bytes, key: str = "value") -> int:
    """How many events a record holds, from its header alone.

    Raises:
        CorruptStateError: ``value`` is not a record.
    """
    return _header(value, key)[0]


def encode_event(event_id: str, event: HistoryEvent) -> bytes:
    """One live event with its id (the unit of ingestion and of the nightly fold)."""
    raw = event_id.encode("utf-8")
    if len(raw) > _ID_LIMIT:
        raise ValueError(f"event id of {len(raw)} bytes: at most {_ID_LIMIT}")
    return struct.pack("<H", len(raw)) + raw + encode(UserRecord({}, [event]))


def decode_event(value: bytes, key: str = "value") -> tuple[str, HistoryEvent]:
    """The event id and event :func:`encode_event` wrote.

    Raises:
        CorruptStateError: ``value`` is not such an event.
    """
    if len(value) < 2:
        raise CorruptStateError(f"{key}: {len(value)} bytes, shorter than an event")
    (n,) = struct.unpack_from("<H", value, 0)
    try:
        event_id = value[2 : 2 + n].decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptStateError(f"{key}: the event id is not UTF-8") from None
    events = decode(value[2 + n :], key).history
    if len(events) != 1:
        raise CorruptStateError(f"{key}: {len(events)} events where one was expected")
    return event_id, events[0]
