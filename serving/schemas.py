"""The HTTP API's request and response bodies, with this server's limits, so the OpenAPI schema
states what a 422 enforces: strings must be text, numbers finite, integers JSON Schema's (never
``true``), ids names (a number is read as one), unknown fields refused."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    create_model,
    field_validator,
    model_validator,
)

from catalog.thresholds import RATING_SCALE, TIMESTAMP_LIMIT
from serving.recommender import RecommendedItem


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """Bounds on requests and concurrency."""

    max_k: int = 100
    max_candidates: int = 1000
    max_history: int = 1000
    max_items: int = 1000
    max_allow: int = 100_000
    max_events: int = 1000
    max_body_bytes: int = 1 << 20
    max_in_flight: int = 2
    max_queue: int = 8
    reload_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.reload_interval_s) and self.reload_interval_s > 0):
            raise ValueError(
                f"reload interval {self.reload_interval_s!r}: must be a finite number of "
                "seconds above 0 (0 would poll CURRENT in a busy loop)"
            )


def _unicode_text(value: str) -> str:
    """Rejects lone surrogates: JSON escapes can spell them, but they are not text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"not valid Unicode text: lone surrogate at position {exc.start}"
        ) from None
    return value


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: ``3`` and ``3.0``, never ``true`` or ``"3"`` (which pydantic's
    lax mode would take as 1 and 3)."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError("expected an integer")
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]


def _id_of_number(value: Any) -> Any:
    """Ids are text, but a client may send ``42`` for ``"42"``: ids are names, not numbers."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[Text, BeforeValidator(_id_of_number), Field(min_length=1, max_length=200)]


class Event(BaseModel):
    """A past interaction sent with the request (for users the server has not seen)."""

    model_config = ConfigDict(extra="forbid")

    item_id: Id = Field(description="An item of the catalog (a number is read as its id).")
    timestamp: int = Field(
        default=0,
        ge=-TIMESTAMP_LIMIT,
        le=TIMESTAMP_LIMIT,
        description="When it happened, in the units of the dataset's log (epoch seconds for "
        "MovieLens); at most 2**53 in absolute value.",
    )
    rating: float | None = Field(
        default=None,
        allow_inf_nan=False,
        ge=RATING_SCALE[0],
        le=RATING_SCALE[1],
        description="Stars from 0 to 5; 4 and up is a like.",
    )
    label: int | None = Field(default=None, ge=0, le=1, description="1 like, 0 dislike.")

    _integers = field_validator("timestamp", "label", mode="before")(_json_integer)


class LiveEventBody(Event):
    """One event that happened after the last build (``POST /events``, one JSON object per
    line of ``duorank events ingest``): an :class:`Event` with its own id, its user, and a
    time it must give."""

    event_id: Id = Field(
        description="The event's own id: a retried delivery with the same id is accepted once."
    )
    user_id: Id = Field(description="Who (a user the dataset has not seen starts here).")
    timestamp: int = Field(
        ge=-TIMESTAMP_LIMIT,
        le=TIMESTAMP_LIMIT,
        description="When it happened, in the units of the dataset's log (epoch seconds for "
        "MovieLens).",
    )


class Ingested(BaseModel):
    """``POST /events``' answer: how many events were new, and how many were retries."""

    accepted: int
    duplicates: int


def events_model(lim: ServerLimits) -> type[BaseModel]:
    """``POST /events``' body with this server's limit on the batch."""
    return create_model(
        "EventsRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__="A batch of live events, each visible to its user's next call.",
        events=(
            list[LiveEventBody],
            Field(min_length=1, max_length=lim.max_events, description="The events."),
        ),
    )


class _UserRequest(BaseModel):
    """Names a user by id, by history, or both ("user_id or history" in the schema too, so
    generated clients and fuzzers know it)."""

    model_config = ConfigDict(
        extra="forbid",  # a misspelt field is a 422 naming it, never silently ignored
        json_schema_extra={
            "anyOf": [
                {"required": ["user_id"], "properties": {"user_id": {"type": "string"}}},
                {"required": ["history"], "properties": {"history": {"type": "array"}}},
            ]
        },
    )

    _integers = field_validator("k", "candidates", mode="before", check_fields=False)(_json_integer)

    @model_validator(mode="after")
    def _user_id_or_history(self) -> _UserRequest:
        if getattr(self, "user_id", None) is None and getattr(self, "history", None) is None:
            raise ValueError("give user_id or history (or both)")
        return self


def request_models(lim: ServerLimits) -> tuple[type[BaseModel], type[BaseModel]]:
    """The request bodies with this server's limits, so OpenAPI states them and 422 enforces."""
    user: dict[str, Any] = {
        "user_id": (
            Annotated[Text, BeforeValidator(_id_of_number), Field(max_length=200)] | None,
            Field(default=None, description="A user of the dataset (a number is read as its id)."),
        ),
        "history": (
            list[Event] | None,
            Field(
                default=None,
                max_length=lim.max_history,
                description="Past interactions, for a user the server does not know or to "
                "replace a known user's stored history; items not in the catalog are ignored "
                "and named in `warnings`.",
            ),
        ),
        "profile": (
            dict[Id, Annotated[Text, Field(max_length=1000)]] | None,
            Field(default=None, description="Profile attributes (age, country, ...) as text."),
        ),
    }
    recommend = create_model(
        "RecommendRequest",
        __base__=_UserRequest,
        __doc__="Who to recommend for (a known user id, or a history and profile) and how many.",
        **user,
        k=(int, Field(default=10, ge=1, le=lim.max_k, description="How many items to return.")),
        candidates=(
            int,
            Field(
                default=100,
                ge=1,
                le=lim.max_candidates,
                description="The first stage's candidates (the ranking stage adds its other "
                "sources' own).",
            ),
        ),
        exclude_seen=(
            StrictBool,
            Field(default=True, description="Leave out items already in the history."),
        ),
        allow=(
            list[Id] | None,
            Field(
                default=None,
                max_length=lim.max_allow,
                description="Only these items may be returned (a shelf, a category).",
            ),
        ),
        second_stage=(
            StrictBool,
            Field(
                default=True,
                description="False: the first stage's order (no ranking stage or cross-encoder), "
                "to compare with.",
            ),
        ),
        explain=(
            StrictBool,
            Field(
                default=False,
                description="Per item: its sources, first-stage rank, the history items "
                "closest to it and the ranking-stage features that moved it most.",
            ),
        ),
    )
    score = create_model(
        "ScoreRequest",
        __base__=_UserRequest,
        __doc__="Point-wise scores of given items for a user.",
        **user,
        item_ids=(
            list[Id],
            Field(
                min_length=1,
                max_length=lim.max_items,
                description="The items to score, each on its own (point-wise).",
            ),
        ),
    )
    return recommend, score


class Scores(BaseModel):
    """``POST /score``'s answer: each asked item's scores, in the order asked."""

    items: list[RecommendedItem]
    index_version: str


class _Problem(BaseModel):
    detail: Any


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": _Problem, "description": "The body is not UTF-8 JSON"},
    401: {"model": _Problem, "description": "Missing or wrong bearer token"},
    404: {"model": _Problem, "description": "Unknown user id (without a history) or item id"},
    413: {"model": _Problem, "description": "Request body over the server's limit"},
    429: {"model": _Problem, "description": "Overloaded: retry after the Retry-After seconds"},
}

EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{code: r for code, r in ERROR_RESPONSES.items() if code != 404},
    409: {"model": _Problem, "description": "This server has no online user store"},
    503: {"model": _Problem, "description": "The user store does not answer: retry"},
}
