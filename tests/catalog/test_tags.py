"""Time-honest item text: a tag is part of an item's text only from the time it was written.

The decisive test: a tag written after a cut-off changes no text vector and no ranking
feature computed as of that cut-off, while one written before it does (so the test can fail).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catalog import ItemTextTemplate, load_catalog, load_movielens, save_catalog
from catalog.splits import heldout_start, leave_one_out
from catalog.tags import DatedTags, ordered_tags
from duorank.jobs import training_catalog
from retrieval.encoder import Encoder, encode_catalog


def test_tags_are_ordered_by_count_then_name_in_their_first_spelling() -> None:
    assert ordered_tags(["pixar", "fun", "Pixar", "Zany", "zany", "zany"]) == (
        "Zany",
        "pixar",
        "fun",
    )
    assert ordered_tags([]) == ()


def test_the_importer_dates_every_tag_and_as_of_keeps_only_earlier_ones(ml_csv: Path) -> None:
    catalog = load_movielens(ml_csv)
    assert catalog.tag_events is not None and len(catalog.tag_events) == 4
    assert catalog.items["1"].tags == ("pixar", "fun")  # every tag: the item as known now
    early = catalog.items_as_of(3)  # tags at times 1 and 2 only
    assert early["1"].tags == ("fun", "pixar") and early["2"].tags == ()  # one each: a-z
    assert catalog.items_as_of(2)["1"].tags == ("pixar",)
    assert catalog.items_as_of(None) == catalog.items
    assert catalog.as_of(2).interactions is catalog.interactions
    assert catalog.tag_events.before(3) == 2


def test_dated_tags_survive_the_dataset_folder(ml_csv: Path, tmp_path: Path) -> None:
    manifest = save_catalog(load_movielens(ml_csv), tmp_path / "ds")
    assert manifest["dated_tags"] == 4 and "tags.parquet" in manifest["files"]
    loaded = load_catalog(tmp_path / "ds")
    assert loaded.tag_events is not None
    assert loaded.items_as_of(2)["1"].tags == ("pixar",)
    (tmp_path / "ds" / "tags.parquet").write_bytes(b"changed")
    try:
        load_catalog(tmp_path / "ds")
    except Exception as exc:  # a damaged tags file is caught like any other
        assert "tags.parquet" in str(exc)
    else:
        raise AssertionError("a damaged tags.parquet loaded")


def test_undated_tags_are_kept_as_metadata() -> None:
    from catalog.model import Item

    items = {"a": Item("a", "A", tags=("label",)), "b": Item("b", "B", tags=("x",))}
    dated = DatedTags.of([("b", "x", 100)])
    assert dated.items_as_of(items, 50) == {"a": items["a"], "b": Item("b", "B")}


def _with_tag(folder: Path, movie: str, tag: str, when: int) -> None:
    path = folder / "tags.csv"
    path.write_text(path.read_text() + f"9,{movie},{tag},{when}\n", encoding="utf-8")


def _write_log(root: Path) -> None:
    """Three users, four films, every event after time 1000; tags in tags.csv."""
    root.mkdir()
    (root / "movies.csv").write_text(
        "movieId,title,genres\n1,Alien (1979),Horror|Sci-Fi\n2,Heat (1995),Crime\n"
        "3,Up (2009),Animation\n4,Big (1988),Comedy\n",
        encoding="utf-8",
    )
    rows = [(u, m, 1000 + 10 * u + m) for u in (1, 2, 3) for m in (1, 2, 3, 4)]
    (root / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},4.0,{t}\n" for u, m, t in rows),
        encoding="utf-8",
    )
    (root / "tags.csv").write_text("userId,movieId,tag,timestamp\n", encoding="utf-8")


def test_a_tag_after_the_cutoff_changes_no_vector_and_no_feature(
    tmp_path: Path, encoder: Encoder
) -> None:
    from rerank.ranker.tables import StageTables

    raw = tmp_path / "raw"
    _write_log(raw)
    split = leave_one_out(load_movielens(raw).interactions)
    cutoff = heldout_start(split)
    assert cutoff is not None

    def as_trained(name: str) -> tuple[np.ndarray, dict[str, str], np.ndarray]:
        save_catalog(load_movielens(raw), tmp_path / name)
        catalog, _, at = training_catalog(tmp_path / name)
        assert at == cutoff
        vectors = encode_catalog(encoder, catalog.items)
        text = {i: ItemTextTemplate().render(item) for i, item in catalog.items.items()}
        from catalog.history import group_histories

        tables = StageTables.fit(catalog.items, group_histories(split.train), vectors, None)
        return vectors.matrix, text, np.asarray(tables.text)

    base_vectors, base_text, base_table = as_trained("base")
    _with_tag(raw, "1", "terrifying", cutoff)  # written at the cut-off: not before it
    _with_tag(raw, "2", "heist", cutoff + 10_000)
    late_vectors, late_text, late_table = as_trained("late")
    assert late_text == base_text
    np.testing.assert_array_equal(late_vectors, base_vectors)
    np.testing.assert_array_equal(late_table, base_table)

    _with_tag(raw, "1", "space", cutoff - 1)  # written before the cut-off: it counts
    early_vectors, early_text, _ = as_trained("early")
    assert "space" in early_text["1"] and "terrifying" not in early_text["1"]
    assert not np.array_equal(early_vectors, base_vectors)
