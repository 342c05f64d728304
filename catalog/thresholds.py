"""The two thresholds the whole project agrees on, defined once."""

from __future__ import annotations

LIKE_THRESHOLD = 4.0
"""A rating at or above this is a like (MovieLens' 0.5-5 stars: 4 and up); below is a dislike."""

COLD_ITEM_THRESHOLD = 5
"""An item with fewer training interactions than this is cold: the tower's text blend and the
evaluation's cold-item recall are about these items."""
