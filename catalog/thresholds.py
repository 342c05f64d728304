"""The thresholds and bounds the whole project agrees on, defined once."""

from __future__ import annotations

LIKE_THRESHOLD = 4.0
"""A rating at or above this is a like (MovieLens' 0.5-5 stars: 4 and up); below is a dislike."""

COLD_ITEM_THRESHOLD = 5
"""An item with fewer training interactions than this is cold: the tower's text blend and the
evaluation's cold-item recall are about these items."""

RATING_SCALE = (0.0, 5.0)
"""Ratings are stars from 0 to 5 (MovieLens: 0.5-5 or 1-5), the scale LIKE_THRESHOLD reads;
the importer refuses a rating outside it (rescale, or give 0/1 labels instead)."""

TIMESTAMP_LIMIT = 2**53
"""Timestamps (epoch seconds, or milli- or microseconds) lie within +-2**53: exact as JSON
numbers and float64, and far from int64 overflow when two are subtracted."""
