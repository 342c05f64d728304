"""`bench scale`'s synthetic catalog: deterministic, distinct, every item with text."""

from __future__ import annotations

from benchmarks.bench_scale import synthetic_items
from catalog.text import ItemTextTemplate


def test_the_synthetic_catalog_is_deterministic_and_distinct() -> None:
    a, b = synthetic_items(2_000), synthetic_items(2_000)
    assert a == b and len(a) == 2_000
    template = ItemTextTemplate()
    texts = [template.render(item) for item in a.values()]
    assert all(texts) and len(set(texts)) == len(texts)
    assert list(synthetic_items(10)) == list(a)[:10]  # a prefix of the larger catalog
