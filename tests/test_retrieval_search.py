# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests of exact / ScaNN nearest-neighbour search against a full numpy score matrix."""

import numpy as np
import pytest

from ipa_jax.retrieval import search


def _distinct_score_data(n: int, q: int, d: int, seed: int):
    """Integer data whose inner products are exact in float32 and pairwise distinct per query.

    Columns 1.. are small integers times n, column 0 of the database a permutation of 0..n-1
    and of the queries 1, so scores differ modulo n; |scores| < 2**24 keeps them exact.
    """
    rng = np.random.default_rng(seed)
    db = rng.integers(-3, 4, size=(n, d)).astype(np.float32) * n
    db[:, 0] = rng.permutation(n)
    qs = rng.integers(-3, 4, size=(q, d)).astype(np.float32)
    qs[:, 0] = 1.0
    return db, qs


def _clustered(n: int, q: int, d: int, clusters: int, sigma: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m):
        x = centres[rng.integers(clusters, size=m)] + sigma * rng.normal(size=(m, d))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(n), draw(q)


@pytest.mark.parametrize("k", [1, 7, 100, 997])
@pytest.mark.parametrize("block,query_block", [(64, 5), (300, 256), (5000, 2)])
def test_exact_search_equals_full_argsort(k, block, query_block):
    db, qs = _distinct_score_data(997, 23, 8, seed=k)
    full = qs @ db.T
    want = np.argsort(-full, axis=1)[:, :k]
    idx, scores = search.exact_search(db, qs, k, block=block, query_block=query_block)
    assert idx.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(scores, np.take_along_axis(full, want, axis=1))


def test_exact_search_gaussian_matches_float64_reference():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(5003, 48)).astype(np.float32)
    qs = rng.normal(size=(40, 48)).astype(np.float32)
    full = qs.astype(np.float64) @ db.T.astype(np.float64)
    idx, scores = search.exact_search(db, qs, 10, block=512)
    np.testing.assert_allclose(scores, -np.sort(-full, axis=1)[:, :10], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores, np.take_along_axis(full, idx, axis=1), rtol=1e-5, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_exact_search_ties_are_deterministic():
    db = np.ones((50, 4), np.float32)  # Every score ties.
    qs = np.ones((3, 4), np.float32)
    a, _ = search.exact_search(db, qs, 5, block=7)
    b, _ = search.exact_search(db, qs, 5, block=7)
    np.testing.assert_array_equal(a, b)
    for row in a:
        assert len(set(row)) == 5 and (np.diff(row) > 0).all()  # distinct, index order


def test_exact_search_rejects_bad_k_and_shapes():
    db = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="k must be"):
        search.exact_search(db, np.zeros((1, 3)), 5)
    with pytest.raises(ValueError, match="k must be"):
        search.exact_search(db, np.zeros((1, 3)), 0)
    with pytest.raises(ValueError, match="dimension"):
        search.exact_search(db, np.zeros((1, 2)), 1)


def test_scann_index_recall_on_clustered_vectors():
    db, qs = _clustered(20_000, 200, 32, clusters=100, sigma=0.2, seed=0)
    truth, _ = search.exact_search(db, qs, 10)
    index = search.ScannIndex(db)
    idx, scores = index.search(qs, 10)
    assert idx.shape == (200, 10) and idx.dtype == np.int64 and scores.dtype == np.float32
    assert search.recall_at_k(idx, truth) >= 0.9
    # Reordering is exact float32, so the returned scores are the true inner products.
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", qs, db[idx]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    with pytest.raises(ValueError, match="k must be"):
        index.search(qs, 20_001)
    with pytest.raises(ValueError, match="leaves_to_search"):
        index.search(qs, 10, leaves_to_search=0)


def test_scann_index_is_deterministic_per_seed():
    # ScaNN's random k-means seeding made repeated builds of this data differ (intermittently).
    db, qs = _clustered(10_000, 50, 32, clusters=50, sigma=0.3, seed=3)

    def found(seed):
        return search.ScannIndex(db, seed=seed).search(qs, 10, leaves_to_search=2)[0]

    first = found(0)
    for _ in range(2):
        np.testing.assert_array_equal(first, found(0))
    assert (first != found(1)).any()  # the seed reaches ScaNN's k-means


def test_scann_index_pads_missing_neighbours():
    db, qs = _clustered(3000, 4, 16, clusters=20, sigma=0.2, seed=2)
    index = search.ScannIndex(db, num_leaves=30)
    idx, scores = index.search(qs, 500, leaves_to_search=1)  # one leaf holds ~100 points
    missing = idx == -1
    assert missing.any() and (missing == np.isneginf(scores)).all()
    for q, row, row_scores, gap in zip(qs, idx, scores, missing, strict=True):
        # Found neighbours first, distinct, with their true scores; then the padding.
        assert len(set(row[~gap])) == (~gap).sum() and (np.diff(gap.astype(int)) >= 0).all()
        np.testing.assert_allclose(row_scores[~gap], db[row[~gap]] @ q, atol=1e-5)
    empty = index.search(qs[:0], 3)
    assert empty[0].shape == (0, 3) and empty[1].shape == (0, 3)


def test_build_index_switches_at_threshold():
    rng = np.random.default_rng(1)
    db = rng.normal(size=(300, 16)).astype(np.float32)
    qs = rng.normal(size=(5, 16)).astype(np.float32)
    small = search.build_index(db, exact_threshold=300)
    assert isinstance(small, search.ExactIndex)
    for got, want in zip(small.search(qs, 3), search.exact_search(db, qs, 3), strict=True):
        np.testing.assert_array_equal(got, want)
    assert isinstance(search.build_index(db, exact_threshold=299), search.ScannIndex)


@pytest.mark.parametrize("found,truth,want", [
    ([[1, 2, 3], [4, 5, 6]], [[3, 2, 9], [7, 8, 9]], (2 / 3 + 0) / 2),
    ([[1, 1, 2]], [[1, 2, 3]], 2 / 3),  # a repeated hit counts once, as a set
    ([[5, 4, 3, 2, 1]], [[1, 9]], 1 / 2),  # k is the truth's width
    ([[0, 1]], [[1, 0]], 1.0),
])
def test_recall_at_k_hand_examples(found, truth, want):
    assert search.recall_at_k(np.array(found), np.array(truth)) == pytest.approx(want)
