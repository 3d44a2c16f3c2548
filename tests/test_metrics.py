# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests for the split metrics against scipy, brute-force loops and hand-computed examples."""

import time

import numpy as np
import pytest
from scipy import stats

from ipa_jax import metrics


def _random_split(seed, num_groups=60, max_size=30):
    """Shuffled split with group sizes 1..max_size, sparse group ids, ties and constant groups."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, num_groups)
    ids = rng.choice(10 * num_groups, num_groups, replace=False) - 3 * num_groups
    group_ids = np.repeat(ids, sizes)
    n = group_ids.size
    scores = rng.normal(size=n)
    scores[rng.random(n) < 0.2] = 0.5  # Tied scores.
    likes = rng.integers(1, 40, n).astype(np.float64)  # Many tied likes.
    for g in ids[:4]:  # Constant scores / likes in a few groups.
        scores[group_ids == g] = 1.0
    for g in ids[4:8]:
        likes[group_ids == g] = 7.0
    perm = rng.permutation(n)
    return scores[perm], likes[perm], group_ids[perm]


def _scipy_group_correlations(scores, likes, group_ids):
    plcc, srcc, skipped = [], [], 0
    for g in np.unique(group_ids):
        s, y = scores[group_ids == g], np.log(likes[group_ids == g])
        if s.size < 2 or np.all(s == s[0]) or np.all(y == y[0]):
            skipped += 1
            continue
        plcc.append(stats.pearsonr(s, y).statistic)
        srcc.append(stats.spearmanr(s, y).statistic)
    return np.mean(plcc), np.mean(srcc), len(plcc), skipped


def _brute_force_pairs(likes, group_ids, min_rel_diff):
    pairs = set()
    for a in range(likes.size):
        for b in range(likes.size):
            la, lb = likes[a], likes[b]
            if group_ids[a] == group_ids[b] and la > lb and (la - lb) / la >= min_rel_diff:
                pairs.add((a, b))
    return pairs


def test_pairwise_accuracy_hand_example():
    assert metrics.pairwise_accuracy([2.0, 1.0, 0.0, 3.0], [1.0, 1.0, 1.0, 4.0]) == 0.375
    assert np.isnan(metrics.pairwise_accuracy([], []))


def test_ratio_mse_hand_example():
    # Pair 1 is exact (ln(s_a/s_b) = 1 = ln(e/1)); pair 2 misses ln 2.
    got = metrics.ratio_mse([1.0, 0.0], [0.0, 0.0], [np.e, 2.0], [1.0, 1.0])
    np.testing.assert_allclose(got, np.log(2) ** 2 / 2)
    assert np.isnan(metrics.ratio_mse([], [], [], []))


@pytest.mark.parametrize("seed", range(3))
def test_spearman_rho_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 20, 500).astype(float)  # Heavy ties.
    targets = scores + rng.integers(0, 15, 500)
    expected = stats.spearmanr(scores, targets).statistic
    np.testing.assert_allclose(metrics.spearman_rho(scores, targets), expected, rtol=1e-12)
    assert np.isnan(metrics.spearman_rho(np.ones(5), np.arange(5.0)))
    assert np.isnan(metrics.spearman_rho([1.0], [2.0]))


@pytest.mark.parametrize("seed", range(3))
def test_group_correlations_match_scipy_per_group(seed):
    scores, likes, group_ids = _random_split(seed)
    plcc, srcc, used, skipped = _scipy_group_correlations(scores, likes, group_ids)
    got = metrics.group_correlations(scores, likes, group_ids)
    assert got["num_groups"] == used and got["num_groups_skipped"] == skipped
    assert skipped >= 8  # The constant groups (and any singletons) really are skipped.
    np.testing.assert_allclose(got["plcc"], plcc, rtol=1e-10)
    np.testing.assert_allclose(got["srcc"], srcc, rtol=1e-10)


def test_group_correlations_all_groups_skipped():
    got = metrics.group_correlations([1.0, 2.0, 3.0], [5.0, 5.0, 2.0], [0, 0, 1])
    assert np.isnan(got["plcc"]) and np.isnan(got["srcc"])
    assert (got["num_groups"], got["num_groups_skipped"]) == (0, 2)


@pytest.mark.parametrize("min_rel_diff", [0.0, 0.5, 0.9])
def test_valid_pair_indices_match_brute_force(min_rel_diff):
    _, likes, group_ids = _random_split(seed=5, num_groups=25)
    win, lose = metrics.valid_pair_indices(likes, group_ids, min_rel_diff)
    got = list(zip(win.tolist(), lose.tolist(), strict=True))
    assert len(got) == len(set(got))
    assert set(got) == _brute_force_pairs(likes, group_ids, min_rel_diff)
    assert got == sorted(got)
    assert np.all(likes[win] > likes[lose])


def test_evaluate_hand_example():
    # Group 7: likes (10, 4, 100) -> pairs (0 beats 1), (2 beats 0), (2 beats 1), all with
    # relative difference >= 0.5. Group 3: likes (5, 6) differ by 1/6 -> no pair; its scores
    # are constant, so it is skipped for the correlations.
    scores = np.array([0.0, 1.0, 2.0, 0.5, 0.5])
    likes = np.array([10.0, 4.0, 100.0, 5.0, 6.0])
    group_ids = np.array([7, 7, 7, 3, 3])
    win, lose = metrics.valid_pair_indices(likes, group_ids)
    np.testing.assert_array_equal(win, [0, 2, 2])
    np.testing.assert_array_equal(lose, [1, 0, 1])
    got = metrics.evaluate(scores, likes, group_ids)
    log_ratios = np.log([10 / 4, 100 / 10, 100 / 4])
    expected = dict(
        pairwise_accuracy=2 / 3,
        ratio_mse=np.mean((np.array([-1.0, 2.0, 1.0]) - log_ratios) ** 2),
        plcc=np.corrcoef([0.0, 1.0, 2.0], np.log([10.0, 4.0, 100.0]))[0, 1],
        srcc=0.5,  # Ranks (1, 2, 3) vs (2, 1, 3): 1 - 6 * 2 / (3 * 8).
        spearman_rho=stats.spearmanr(scores, np.log(likes)).statistic,
        num_pairs=3,
        num_images=5,
        num_groups=1,
        num_groups_skipped=1,
    )
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-12, err_msg=key)


def test_evaluate_with_explicit_pairs_and_brute_force_accuracy():
    scores, likes, group_ids = _random_split(seed=9)
    rng = np.random.default_rng(0)
    win, lose = rng.integers(0, scores.size, (2, 200))
    got = metrics.evaluate(scores, likes, group_ids, pairs=(win, lose))
    wins = sum(
        1.0 if scores[w] > scores[lo] else 0.5 if scores[w] == scores[lo] else 0.0
        for w, lo in zip(win, lose, strict=True)
    )
    assert got["num_pairs"] == 200
    np.testing.assert_allclose(got["pairwise_accuracy"], wins / 200)
    mse = np.mean(
        [
            (scores[w] - scores[lo] - np.log(likes[w] / likes[lo])) ** 2
            for w, lo in zip(win, lose, strict=True)
        ]
    )
    np.testing.assert_allclose(got["ratio_mse"], mse, rtol=1e-10)


def test_evaluate_scales_to_100k_images():
    scores, likes, group_ids = _random_split(seed=3, num_groups=6500)
    assert scores.size > 90_000
    start = time.perf_counter()
    got = metrics.evaluate(scores, likes, group_ids)
    assert time.perf_counter() - start < 5.0
    assert got["num_images"] == scores.size and got["num_pairs"] > 0
