"""Serving: the Recommender (candidates, the second stage that serves, explanations, hot reload,
fallbacks) and the HTTP app around it (API, explorer page, metrics). The names below load on
first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from catalog.faces import lazy_faces

if TYPE_CHECKING:
    from serving.http import create_app
    from serving.recommender import (
        Recommendation,
        RecommendedItem,
        Recommender,
        RecommendRequest,
    )
    from serving.schemas import ServerLimits

_FACES = {
    "Recommendation": "serving.recommender",
    "RecommendedItem": "serving.recommender",
    "Recommender": "serving.recommender",
    "RecommendRequest": "serving.recommender",
    "ServerLimits": "serving.schemas",
    "create_app": "serving.http",
}

__all__ = [
    "RecommendRequest",
    "Recommendation",
    "RecommendedItem",
    "Recommender",
    "ServerLimits",
    "create_app",
]

__getattr__ = lazy_faces(__name__, _FACES)
