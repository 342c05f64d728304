"""Each baseline on tiny data where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from benchmarks.baselines import (
    CatalogTooLargeError,
    EASEScorer,
    ImplicitScorer,
    ItemKNNScorer,
    PopularityScorer,
    SASRecScorer,
    TrainData,
    Validation,
)
from benchmarks.baselines.itemknn import weight_users


def _data() -> TrainData:
    # users 0,1 share items 0 and 1; user 2 has item 2 only
    return TrainData.from_sequences([[0, 1], [0, 3, 1], [2]], n_items=4)


def test_train_data_shapes() -> None:
    data = TrainData.from_sequences([[2, 0, 2], [1]], n_items=3)
    assert data.matrix.toarray().tolist() == [[1, 0, 1], [0, 1, 0]]  # a repeat counts once
    assert data.sequences[0].tolist() == [2, 0, 2]  # the order is kept
    with pytest.raises(ValueError, match="2 sequences for a matrix of 3 users"):
        TrainData(sp.csr_matrix((3, 3)), data.sequences)


def test_popularity_and_itemknn() -> None:
    pop = PopularityScorer().fit(_data())
    assert pop.scores(np.array([0]))[0].tolist() == [2, 2, 1, 1]
    knn = ItemKNNScorer(neighbours=2, shrink=0.0).fit(_data())
    scores = knn.scores(np.array([2, 0]))
    assert scores[0, 0] == 0.0  # item 2 never co-occurs with item 0
    assert scores[1, 3] > scores[1, 2]  # item 3 co-occurs with user 0's items, item 2 does not


def test_itemknn_alpha_half_is_the_cosine() -> None:
    rng = np.random.default_rng(0)
    sequences = [rng.choice(12, size=5, replace=False).tolist() for _ in range(30)]
    data = TrainData.from_sequences(sequences, n_items=12)
    knn = ItemKNNScorer(neighbours=12, shrink=0.0, alpha=0.5).fit(data)
    x = data.matrix.toarray()
    norms = np.linalg.norm(x, axis=0)
    cosine = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(cosine, 0.0)
    assert knn.sim is not None
    np.testing.assert_allclose(knn.sim.toarray(), cosine, atol=1e-6)
    # alpha > 0.5 divides more by the history item's popularity, less by the candidate's
    asym = ItemKNNScorer(neighbours=12, shrink=0.0, alpha=0.8).fit(data)
    assert asym.sim is not None
    counts = x.sum(axis=0)
    expected = (x.T @ x) / np.outer(counts**0.8, counts**0.2)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(asym.sim.toarray(), expected, rtol=1e-5)


def test_itemknn_recency_follows_the_latest_item() -> None:
    # Items 0-2 go together, and 3-5. The user watched 0, 1, then 3: with recency the
    # neighbour of 3 (item 4) comes before the neighbour of 0 and 1 (item 2).
    sequences = [[0, 1, 2]] * 5 + [[3, 4, 5]] * 5 + [[0, 1, 3]]
    data = TrainData.from_sequences(sequences, n_items=6)
    user = np.array([10])
    plain = ItemKNNScorer(neighbours=5, shrink=0.0).fit(data).scores(user)[0]
    recent = ItemKNNScorer(neighbours=5, shrink=0.0, half_life=0.5).fit(data).scores(user)[0]
    assert plain[2] > plain[4]
    assert recent[4] > recent[2]


def test_bm25_and_idf_weigh_long_histories_down() -> None:
    data = TrainData.from_sequences([[0, 1], [0, 1, 2, 3, 4, 5]], n_items=8)
    for weighting in ("idf", "bm25"):
        w = weight_users(data.matrix, weighting).toarray()
        assert w[0, 0] > w[1, 0] > 0  # the same item weighs less from the long history
    with pytest.raises(ValueError, match="weighting must be one of"):
        weight_users(data.matrix, "tfidf")


def test_ease_recovers_planted_pairs() -> None:
    # Items come in pairs (2k, 2k+1) that are always taken together; pairs are independent.
    rng = np.random.default_rng(0)
    sequences = []
    for _ in range(200):
        pairs = rng.choice(10, size=3, replace=False)
        sequences.append([c for p in pairs for c in (2 * p, 2 * p + 1)])
    sequences.append([4])  # a user who has item 4 only: the answer is its partner, 5
    data = TrainData.from_sequences(sequences, n_items=20)
    ease = EASEScorer(lam=10.0).fit(data)
    assert np.all(np.diag(ease.weights) == 0.0)  # no item explains itself
    partner = np.argmax(ease.weights, axis=0)  # the item that weighs most on each item
    assert partner.tolist() == [c ^ 1 for c in range(20)]
    scores = ease.scores(np.array([200]))[0]
    scores[4] = -np.inf
    assert int(np.argmax(scores)) == 5


def test_ease_refuses_a_catalog_it_cannot_hold() -> None:
    data = TrainData.from_sequences([[0, 1]], n_items=50)
    with pytest.raises(CatalogTooLargeError, match=r"dense 50 x 50 solve.*limit of 40 items"):
        EASEScorer(max_items=40).fit(data)
    with pytest.raises(ValueError, match="lam must be > 0"):
        EASEScorer(lam=0)


def test_sasrec_learns_a_deterministic_sequence() -> None:
    # Every user walks the cycle 0 -> 1 -> ... -> 29 -> 0 from a different start; the next
    # item is always determined by the last one, so Recall@1 must reach 1.
    n_items, n_users = 30, 60
    sequences, targets = [], []
    for user in range(n_users):
        start, length = user % n_items, 4 + user % 5
        walk = [(start + k) % n_items for k in range(length + 1)]
        sequences.append(walk[:-1])
        targets.append(walk[-1])
    data = TrainData.from_sequences(sequences, n_items)
    validation = Validation(np.arange(n_users), np.array(targets))
    model = SASRecScorer(
        hidden=32, blocks=1, dropout=0.0, maxlen=8, epochs=40, patience=40, batch_size=8, lr=1e-2
    )
    model.fit(data, validation)
    scores = model.scores(np.arange(n_users))
    assert np.isfinite(scores).all()  # short, left-padded sequences give no NaN
    scores[data.matrix.toarray() > 0] = -np.inf  # the protocol: seen items are not ranked
    assert (np.argmax(scores, axis=1) == np.array(targets)).all()  # Recall@1 = 1
    assert model.validation_ndcg10(validation) == pytest.approx(1.0)
    assert model.refit_params()["epochs"] == model.best_epoch < 40  # the first perfect epoch


def test_sasrec_is_reproducible_and_refits_for_the_chosen_epochs() -> None:
    data = TrainData.from_sequences([[0, 1, 2, 3], [1, 2, 3], [2, 3, 0, 1]], n_items=4)
    runs = [
        SASRecScorer(hidden=8, blocks=1, maxlen=4, epochs=3, seed=5).fit(data).scores(np.arange(3))
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    model = SASRecScorer(hidden=8, blocks=1, maxlen=4, epochs=9, patience=2)
    model.fit(data, Validation(np.arange(3), np.array([0, 0, 2])))
    refit = model.refitted()
    assert isinstance(refit, SASRecScorer)
    assert refit.params["epochs"] == model.best_epoch <= 9
    with pytest.raises(ValueError, match="two or more interactions"):
        SASRecScorer(epochs=1).fit(TrainData.from_sequences([[0], [1]], n_items=2))


def test_als_and_bpr_fit() -> None:
    for kind in ("als", "bpr"):
        scorer = ImplicitScorer(kind, factors=4, iterations=3).fit(_data())
        assert scorer.scores(np.array([0, 1])).shape == (2, 4)
        assert isinstance(scorer.refitted(), ImplicitScorer)
    with pytest.raises(ValueError, match="kind"):
        ImplicitScorer("svd")


def test_bpr_is_reproducible() -> None:
    """Same seed, same factors: the baselines' figures must not depend on thread timing."""
    rng = np.random.default_rng(0)
    sequences = [np.flatnonzero(rng.random(40) < 0.15).tolist() for _ in range(60)]
    data = TrainData.from_sequences(sequences, n_items=40)
    runs = [
        ImplicitScorer("bpr", factors=8, iterations=20, seed=3).fit(data).scores(np.arange(60))
        for _ in range(3)
    ]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])


def test_itemknn_grid_reuses_the_cooccurrence_of_the_same_data() -> None:
    """A grid over neighbours, shrinkage and alpha computes items x items once per weighting."""
    data = TrainData.from_sequences([[0, 1, 2], [1, 2], [0, 2, 3]], n_items=4)
    ItemKNNScorer.release_cache()
    ItemKNNScorer(neighbours=2).fit(data)
    first = ItemKNNScorer._gram
    assert first is not None
    ItemKNNScorer(neighbours=3, shrink=0.0, alpha=0.3).fit(data)
    assert ItemKNNScorer._gram is first  # same matrix, same weighting: reused
    ItemKNNScorer(weighting="bm25").fit(data)
    assert ItemKNNScorer._gram is not first  # another weighting: rebuilt
    ItemKNNScorer.release_cache()
    assert ItemKNNScorer._gram is None
