"""The new-arrivals protocol: who and what is tested, how ranks are counted, and that the
ranking stage scores new items on the shelf."""

from __future__ import annotations

import math

import numpy as np

from benchmarks.evaluation.arrivals import (
    Arrivals,
    Event,
    Scored,
    Scorer,
    figures,
    rank_events,
    run_arrivals,
)
from benchmarks.evaluation.ranking import quick_stage_args
from catalog import Catalog, Interactions, Item, User
from rerank.cross_encoder.training_args import RerankerTrainArgs
from retrieval.encoder import Encoder, encode_catalog
from retrieval.sequential import SequentialConfig

GENRES = ("Horror", "Comedy", "Drama", "Sci-Fi")


def _log(n_old: int = 30, n_new: int = 8, n_users: int = 12) -> Catalog:
    """Old films rated before time 10_000, new ones (ids n1, n2, ...) only after it; users
    u0..u9 return after it, c0 and c1 start after it."""
    items = {f"o{i}": Item(f"o{i}", f"Old film {i}", genres=(GENRES[i % 4],)) for i in range(n_old)}
    items |= {
        f"n{i}": Item(f"n{i}", f"New film {i}", genres=(GENRES[i % 4],)) for i in range(n_new)
    }
    rng = np.random.default_rng(0)
    users, rated, times, ratings = [], [], [], []
    for u in range(n_users - 2):
        for t, i in enumerate(rng.choice(n_old, size=12, replace=False)):
            users.append(f"u{u}"), rated.append(f"o{i}"), times.append(100 * u + t)
            ratings.append(5.0 if t % 3 else 2.0)
        for t, i in enumerate(rng.choice(n_new, size=2, replace=False)):
            users.append(f"u{u}"), rated.append(f"n{i}"), times.append(20_000 + 10 * u + t)
            ratings.append(4.0)
    for c in range(2):  # cold users: four events each, all after the cut-off
        for t, i in enumerate(rng.choice(n_old, size=4, replace=False)):
            users.append(f"c{c}"), rated.append(f"o{i}"), times.append(30_000 + 10 * c + t)
            ratings.append(4.0)
    return Catalog(
        items,
        {u: User(u) for u in sorted(set(users))},
        Interactions(users, rated, times, ratings),
        source={"loader": "test"},
    )


def test_the_split_holds_returning_users_after_the_cutoff_and_cold_users() -> None:
    catalog = _log()
    arrivals = Arrivals.of(catalog)
    assert all(t < arrivals.cutoff for t in arrivals.catalog.interactions.timestamps)
    new = {i for i, c in arrivals.item_col.items() if arrivals.new[c]}
    assert new <= {f"n{i}" for i in range(8)} and new
    catalog.items["never"] = Item("never", "A film nobody rated")
    assert not Arrivals.of(catalog).new[-1]  # never rated: never offered, never counted new
    for e in arrivals.events + arrivals.cold:  # a repeat of a history item is no arrival
        assert e.item_id not in {h.item_id for h in e.history}
    assert arrivals.events and {e.user_id[0] for e in arrivals.events} == {"u"}
    for e in arrivals.events:
        assert e.at >= arrivals.cutoff
        assert all(h.timestamp <= e.at for h in e.history)
        assert any(h.timestamp < arrivals.cutoff for h in e.history)
    assert {e.user_id for e in arrivals.cold} == {"c0", "c1"}
    assert sorted(len(e.history) for e in arrivals.cold) == [1, 1, 2, 2, 3, 3]


def test_ties_count_against_the_target_and_the_shelf_holds_released_new_items() -> None:
    arrivals = Arrivals.of(_log())
    event = next(e for e in arrivals.events if arrivals.new[arrivals.item_col[e.item_id]])
    n = len(arrivals.item_col)

    def constant(events: list[Event]) -> Scored:
        return Scored(np.zeros((len(events), n)))

    ranks = rank_events(arrivals, [event], constant)
    seen = {h.item_id for h in event.history}
    released = [
        i
        for i, c in arrivals.item_col.items()
        if arrivals.released[c] <= event.at or i == event.item_id
    ]
    assert ranks.full[0] == len([i for i in released if i not in seen])  # every tie above it
    shelf = [i for i in released if i not in seen and arrivals.new[arrivals.item_col[i]]]
    assert ranks.shelf[0] == len(shelf)

    def target_first(events: list[Event]) -> Scored:
        scores = np.zeros((len(events), n))
        for k, e in enumerate(events):
            scores[k, arrivals.item_col[e.item_id]] = 1.0
        return Scored(scores)

    best = rank_events(arrivals, [event], target_first)
    assert best.full[0] == 1.0 and best.shelf[0] == 1.0
    old = next(e for e in arrivals.events if not arrivals.new[arrivals.item_col[e.item_id]])
    assert math.isnan(rank_events(arrivals, [old], target_first).shelf[0])
    report = figures(
        arrivals,
        rank_events(arrivals, arrivals.events, target_first),
        rank_events(arrivals, arrivals.cold, target_first),
        seed=0,
    )
    assert report["shelf"]["ndcg@10"] == 1.0 and report["cold_users"]["ndcg@10"] == 1.0


def test_every_method_is_reported_and_new_items_reach_the_stages_shelf(encoder: Encoder) -> None:
    catalog = _log()
    report = run_arrivals(
        catalog,
        lambda items: encode_catalog(encoder, items),
        sequential=SequentialConfig(dim=16, epochs=2),
        stage_args=quick_stage_args(),
        quick=True,
        seed=0,
        progress=lambda _: None,
    )
    assert report["events_on_new_items"] > 0 and report["cold_events"] == 6
    methods = report["methods"]
    short = (
        {"ranking_stage_without_short_histories"} if quick_stage_args().short_histories else set()
    )
    assert (
        set(methods)
        == {
            "popularity_at_cutoff",
            "popularity_since_release",
            "two_tower_zero_shot",
            "two_tower_trained",
            "ranking_stage_without_text",
            "ranking_stage_without_cold_dropout",  # the stage before cold copies, as a reference
            "ranking_stage",
            "served_pipeline",
        }
        | short
    )  # the stage before short copies, when it learns with them
    for name, m in methods.items():
        assert 0.0 <= m["shelf"]["ndcg@10"] <= 1.0, name
        assert "shelf_ndcg@10_minus_served_ci95" in m or name == "served_pipeline"
    # Popularity before the cut-off knows nothing of new items: every shelf item ties.
    assert methods["popularity_at_cutoff"]["new_items"]["recall@10"] == 0.0
    from benchmarks.evaluation.report import _arrivals_table

    table = _arrivals_table({"new_arrivals": report})
    assert {row.split(" | ")[0][2:] for row in table if row.startswith("| ")} >= set(methods)
    verdicts = report["text_features"]  # the text features slice by slice, in the report too
    assert set(verdicts) == {"shelf NDCG@10", "new items Recall@50", "cold users NDCG@10"}
    assert any("text features (`text_cos_*`), slice by slice" in row for row in table)


def test_text_is_said_to_earn_its_place_only_where_its_interval_says_so() -> None:
    from benchmarks.evaluation.arrivals import text_by_slice

    verdicts = text_by_slice(
        {
            "shelf_ndcg@10_minus_served_ci95": [-0.03, -0.001],  # worse without text
            "new_items_recall@50_minus_served_ci95": [-0.01, 0.02],
            "cold_ndcg@10_minus_served_ci95": [0.005, 0.04],  # better without text
        }
    )
    assert [v["text"] for v in verdicts.values()] == ["earns", "no evidence", "costs"]
    assert verdicts["shelf NDCG@10"]["without_minus_with_ci95"] == [-0.03, -0.001]


def _trained_methods(
    encoder: Encoder, reranker_args: RerankerTrainArgs | None = None
) -> tuple[Arrivals, dict[str, Scorer]]:
    """The protocol's trained methods on :func:`_log`, at test size."""
    from benchmarks.evaluation.arrivals import _trained

    catalog = _log()
    arrivals = Arrivals.of(catalog)
    text = encode_catalog(encoder, arrivals.catalog.items)
    methods = _trained(
        arrivals,
        catalog,
        text,
        SequentialConfig(dim=16, epochs=2),
        quick_stage_args(),
        0,
        lambda _: None,
        reranker_args,
    )
    return arrivals, methods


def test_the_stage_scores_every_new_item_released_by_the_event(encoder: Encoder) -> None:
    from benchmarks.evaluation.arrivals import StageScorer

    arrivals, methods = _trained_methods(encoder)
    stage = methods["ranking_stage"]
    assert isinstance(stage, StageScorer)
    events = [e for e in arrivals.events if arrivals.new[arrivals.item_col[e.item_id]]]
    scored = stage(events)
    assert scored.shelf is not None
    for k, e in enumerate(events):
        seen = {h.item_id for h in e.history}
        for item, c in arrivals.item_col.items():
            on_shelf = arrivals.new[c] and (arrivals.released[c] <= e.at or item == e.item_id)
            if on_shelf and item not in seen:
                assert np.isfinite(scored.shelf[k, c]), (e, item)


def test_the_live_stage_counts_only_the_events_before_each_request(encoder: Encoder) -> None:
    from benchmarks.evaluation.arrivals import live_stage
    from rerank.ranker.features import Request
    from retrieval.index import FlatIndex
    from retrieval.towers import MeanItemsTower

    catalog = _log()
    arrivals = Arrivals.of(catalog)
    text = encode_catalog(encoder, arrivals.catalog.items)
    tower = MeanItemsTower(text, n_recent=5)
    index = FlatIndex(text.dim).build(text.ids, text.matrix)
    stage = live_stage(arrivals.catalog, catalog, tower, index, text, quick_stage_args(), 0)
    inter = catalog.interactions
    pop = stage.names.index("pop_all")
    for e in arrivals.on_new()[:5]:
        row = stage.item_rows([Request(e.user_id, list(e.history), e.at)], [e.item_id])
        before = np.count_nonzero((inter.item_ids == e.item_id) & (inter.timestamps < e.at))
        assert row[0, pop] == before  # the live log, cut at the request: never its own event


def test_a_cross_encoder_trained_before_the_cutoff_scores_the_shelf(encoder: Encoder) -> None:
    """With training arguments the protocol trains its own cross-encoder on the events before
    the cut-off; it scores every new item released by a new item's event, and its P(like) is
    the target's score."""

    from tests.rerank.cross_encoder.conftest import TINY

    arrivals, methods = _trained_methods(encoder, TINY)
    scorer = methods["cross_encoder"]
    events = [e for e in arrivals.events if arrivals.new[arrivals.item_col[e.item_id]]]
    scored = scorer(events)
    assert scored.shelf is not None and scored.p_like is not None
    tower = methods["two_tower_trained"](events)
    for k, e in enumerate(events):
        assert 0.0 < scored.p_like[k] < 1.0
        seen = {arrivals.item_col[h.item_id] for h in e.history}
        released = [
            c for c in np.flatnonzero(arrivals.new & (arrivals.released <= e.at)) if c not in seen
        ]
        assert released and np.all(np.isfinite(scored.shelf[k, released]))
        # The cross-encoder reorders the tower's shelf (all of it here: fewer than 100 items),
        # above every score the tower gave.
        assert scored.shelf[k, released].min() > tower.full[k].max()
    # An event on an old item of a returning user: the tower's order, no text pass.
    old = [e for e in arrivals.events if not arrivals.new[arrivals.item_col[e.item_id]]][:3]
    assert old and np.isnan(scorer(old).p_like).all()
    np.testing.assert_array_equal(scorer(old).full, methods["two_tower_trained"](old).full)
    ranks = rank_events(arrivals, events, scorer)
    assert np.all(ranks.shelf >= 1) and np.all(np.isfinite(ranks.target))


def test_the_cold_dropout_bench_reads_every_share_on_validation_and_after_the_cutoff(
    encoder: Encoder,
) -> None:
    from benchmarks.bench_cold_dropout import RATES, _one_seed, _summary

    out = _one_seed(_log(), encoder, 0, quick=True)
    assert set(out) == {str(r) for r in RATES}
    rows = _summary({0: out})
    assert [r["cold_dropout"] for r in rows] == list(RATES)
    assert rows[0]["minus_no_copies"] == 0.0  # share 0 is the reference
    for row in rows:
        assert 0.0 <= row["validation_ndcg@10"] <= 1.0
        assert 0.0 <= row["cold_view_ndcg@10"] <= 1.0
        assert 0.0 <= row["shelf_ndcg@10"] <= 1.0
    # the copies change the trees: the cold view (the stage on content alone) moves
    assert (
        len({round(r["cold_view_ndcg@10"], 9) for r in rows}) > 1
        or len({round(r["validation_ndcg@10"], 9) for r in rows}) > 1
    )


def test_the_share_is_chosen_on_validation_within_one_standard_error() -> None:
    from benchmarks.bench_cold_dropout import choose

    def row(rate: float, minus: float, cold: float) -> dict[str, float]:
        return {
            "cold_dropout": rate,
            "minus_no_copies": minus,
            "minus_no_copies_se": 0.005,
            "cold_view_ndcg@10": cold,
            "shelf_ndcg@10": 1.0 - rate,  # test figures never choose
        }

    rows = [row(0.0, 0.0, 0.03), row(0.25, -0.004, 0.05), row(0.5, -0.02, 0.07)]
    assert choose(rows) == 0.25  # 0.5 sees new arrivals best but costs the warm lists
    assert choose([row(0.0, 0.0, 0.03), row(0.5, -0.02, 0.07)]) == 0.0


def test_the_short_histories_bench_reads_every_share_on_validation_and_after_the_cutoff(
    encoder: Encoder,
) -> None:
    from benchmarks.bench_short_histories import SHARES, _one_seed, _summary, choose

    out = _one_seed(_log(), encoder, 0, quick=True)
    assert set(out) == {str(s) for s in SHARES} | {"first_stage"}
    rows = _summary({0: out})
    assert [r["short_histories"] for r in rows] == list(SHARES)
    assert rows[0]["minus_no_copies"] == 0.0  # share 0 is the reference
    for row in rows:
        assert 0.0 <= row["short_view_ndcg@10"] <= 1.0
        assert 0.0 <= row["cold_users_ndcg@10"] <= 1.0
        assert "cold_view_minus_no_copies_se" in row  # the new arrivals' guard is read
    # the copies change the trees: some share reads the lists differently
    assert (
        len({round(r["short_view_ndcg@10"], 9) for r in rows}) > 1
        or len({round(r["validation_ndcg@10"], 9) for r in rows}) > 1
    )
    assert choose(rows) in SHARES


def test_the_short_share_is_chosen_on_validation_within_one_standard_error() -> None:
    from benchmarks.bench_short_histories import choose

    def row(share: float, minus: float, short: float) -> dict[str, float]:
        return {
            "short_histories": share,
            "minus_no_copies": minus,
            "minus_no_copies_se": 0.005,
            "short_view_ndcg@10": short,
            "cold_users_ndcg@10": 1.0 - share,  # test figures never choose
        }

    rows = [row(0.0, 0.0, 0.03), row(0.5, -0.004, 0.05), row(1.0, -0.02, 0.07)]
    assert choose(rows) == 0.5  # 1.0 sees short histories best but costs the warm lists
    assert choose([row(0.0, 0.0, 0.03), row(1.0, -0.02, 0.07)]) == 0.0
    guarded = [
        {**r, "cold_view_minus_no_copies": cost, "cold_view_minus_no_copies_se": 0.004}
        for r, cost in zip(rows, (0.0, -0.01, 0.0), strict=True)
    ]
    guarded[2]["minus_no_copies"] = 0.0
    assert choose(guarded) == 1.0  # 0.5 would cost the new arrivals; 1.0 costs nothing
    guarded[2]["cold_view_minus_no_copies"] = -0.03
    assert choose(guarded) == 0.0  # every share with copies costs one view or the other


def test_the_ranker_folds_bench_reads_every_recipe_on_validation_and_after_the_cutoff(
    encoder: Encoder,
) -> None:
    from benchmarks.bench_ranker_folds import RECIPES, _one_seed, summary

    out = _one_seed(_log(), encoder, 0, quick=True)
    assert set(out) == set(RECIPES) | {"first_stage"}
    rows = summary({0: out})
    assert [r["recipe"] for r in rows] == list(RECIPES)
    assert rows[0]["minus_before"] == 0.0  # the recipe before is the reference
    before, refit, mean = (out[name] for name in RECIPES)
    assert before["trees"] == before["rounds"] and refit["trees"] == refit["rounds"]
    assert mean["trees"] == 5 * mean["rounds"]  # the five fold models, averaged
    for row in rows:
        assert 0.0 <= row["cold_users_ndcg@10"] <= 1.0 and row["score_us_per_list"] > 0
