"""Text rendering: the documented format, determinism and the token budget."""

from __future__ import annotations

from dataclasses import asdict

from catalog import Item, ItemTextTemplate, User, UserTextTemplate
from catalog.text import HistoryEvent, approx_tokens


def test_item_text_format() -> None:
    item = Item(
        "1", "Toy Story (1995)", genres=("Animation", "Children's", "Comedy"), tags=("pixar", "fun")
    )
    assert ItemTextTemplate().render(item) == (
        "Toy Story (1995). Genres: Animation, Children's, Comedy. Tags: pixar, fun"
    )
    bare = Item("2", "  Heat   (1995) ")
    assert ItemTextTemplate().render(bare) == "Heat (1995)"
    described = Item("3", "X", description="A film.\nAbout   things.")
    assert ItemTextTemplate().render(described) == "X. A film. About things"


def test_template_fingerprint_changes_with_parameters() -> None:
    assert ItemTextTemplate().fingerprint() == ItemTextTemplate().fingerprint()
    assert ItemTextTemplate().fingerprint() != ItemTextTemplate(max_tags=3).fingerprint()


ITEMS = {str(i): Item(str(i), f"Movie {i}") for i in range(40)}


def test_user_text_most_recent_first_with_profile_and_dislikes() -> None:
    history = [
        HistoryEvent("1", 10, 5.0),
        HistoryEvent("2", 30, 4.0),
        HistoryEvent("3", 20, 1.0),
        HistoryEvent("4", 40, None, 1),
        HistoryEvent("5", 50, None, 0),
    ]
    user = User("u", {"age": "25", "gender": "M"})
    text = UserTextTemplate(max_disliked=5).render(user, history, ITEMS)
    assert text == (
        "Profile: age 25, gender M. Liked, most recent first: Movie 4; Movie 2; "
        "Movie 1. Disliked: Movie 5; Movie 3"
    )
    assert "Disliked" not in UserTextTemplate().render(user, history, ITEMS)
    rated = UserTextTemplate(max_disliked=5, ratings=True).render(None, history, ITEMS)
    assert rated == (  # stars where the event has a rating; an implicit event has none
        "Liked, most recent first: Movie 4; Movie 2 (4 stars); Movie 1 (5 stars). "
        "Disliked: Movie 5; Movie 3 (1 star)"
    )
    saved = {k: v for k, v in asdict(UserTextTemplate()).items() if k != "ratings"}
    assert UserTextTemplate.from_dict(saved).render(user, history, ITEMS) == text.replace(
        ". Disliked: Movie 5; Movie 3", ""
    )  # a template saved before the field renders as it did


def test_user_text_respects_the_token_budget_by_cutting_oldest() -> None:
    history = [HistoryEvent(str(i), i, 5.0) for i in range(40)]
    template = UserTextTemplate(max_liked=40, max_tokens=30)
    text = template.render(None, history, ITEMS)
    assert approx_tokens(text) <= 30
    assert text.startswith("Liked, most recent first: Movie 39; Movie 38")
    assert "Movie 0;" not in text and not text.endswith("Movie 0")


def test_user_text_is_deterministic_and_uses_given_counter() -> None:
    history = [HistoryEvent(str(i), 7, 5.0) for i in range(10)]  # all tied in time
    template = UserTextTemplate(max_tokens=1000)
    first = template.render(None, history, ITEMS)
    assert all(template.render(None, history, ITEMS) == first for _ in range(3))
    tiny = template.render(None, history, ITEMS, count_tokens=lambda s: len(s) // 4)
    assert len(tiny) // 4 <= 1000
    assert template.render(None, [], ITEMS) == ""


def test_likes_is_is_positive_for_every_row() -> None:
    """The one "is this a like?" rule, vectorised: a label wins, else the rating, else a
    like (an implicit event); the same answers as is_positive, event by event."""
    import math

    import numpy as np

    from catalog import Interactions
    from catalog.text import HistoryEvent, is_positive, likes

    ratings = [5.0, 2.0, math.nan, 4.0, 1.0, math.nan]
    labels = [-1, -1, -1, 0, 1, 0]
    rows = Interactions(["u"] * 6, list("abcdef"), list(range(6)), ratings, labels)
    got = likes(rows, 4.0)
    assert got.tolist() == [True, False, True, False, True, False]
    for n in range(6):
        event = HistoryEvent(
            "x",
            n,
            None if math.isnan(ratings[n]) else ratings[n],
            None if labels[n] < 0 else labels[n],
        )
        assert bool(is_positive(event, 4.0)) == bool(got[n])
    assert isinstance(got, np.ndarray)
