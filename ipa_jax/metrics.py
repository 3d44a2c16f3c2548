# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Evaluation metrics on whole-split predictions (numpy).

Scores are log-scores `o` (popularity `s = exp(o)`); likes are raw counts (>= 1). Per-group
statistics are vectorised: the split is sorted by group id once and reduced with `bincount`,
so a split of 100k images in ~10k groups takes well under a second.
"""

import numpy as np


def pairwise_accuracy(o_win: np.ndarray, o_lose: np.ndarray) -> float:
    """Fraction of pairs whose winner has the higher log-score; ties count 1/2, empty -> nan."""
    o_win, o_lose = np.asarray(o_win, np.float64), np.asarray(o_lose, np.float64)
    if o_win.size == 0:
        return float("nan")
    return float(np.mean((o_win > o_lose) + 0.5 * (o_win == o_lose)))


def ratio_mse(o_a: np.ndarray, o_b: np.ndarray, likes_a: np.ndarray, likes_b: np.ndarray) -> float:
    """Mean of `(ln(s_a / s_b) - ln(l_a / l_b))^2` over pairs; empty -> nan."""
    o_a, o_b = np.asarray(o_a, np.float64), np.asarray(o_b, np.float64)
    if o_a.size == 0:
        return float("nan")
    log_ratio = np.log(np.asarray(likes_a, np.float64)) - np.log(np.asarray(likes_b, np.float64))
    return float(np.mean((o_a - o_b - log_ratio) ** 2))


def _sorted_groups(group_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns `order` (stable sort by group), dense labels of the sorted items, group sizes."""
    group_ids = np.asarray(group_ids)
    order = np.argsort(group_ids, kind="stable")
    _, labels, counts = np.unique(group_ids[order], return_inverse=True, return_counts=True)
    return order, labels.reshape(-1), counts


def _group_ranks(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-based ranks of `values` within each group, ties get their average rank (like scipy)."""
    n = values.size
    order = np.lexsort((values, labels))  # By group, then by value.
    v, g = values[order], labels[order]
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_run = new_group | np.r_[True, v[1:] != v[:-1]]
    run_start = np.flatnonzero(new_run)
    run_end = np.r_[run_start[1:], n] - 1
    avg_pos = ((run_start + run_end) / 2.0)[np.cumsum(new_run) - 1]
    group_start = np.flatnonzero(new_group)[np.cumsum(new_group) - 1]
    ranks = np.empty(n, np.float64)
    ranks[order] = avg_pos - group_start + 1.0
    return ranks


def _group_pearson(
    x: np.ndarray, y: np.ndarray, labels: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Pearson r per group (nan where undefined); `labels` are dense ids 0..G-1."""
    num_groups = counts.size
    mean_x = np.bincount(labels, x, num_groups) / counts
    mean_y = np.bincount(labels, y, num_groups) / counts
    dx, dy = x - mean_x[labels], y - mean_y[labels]
    sxx = np.bincount(labels, dx * dx, num_groups)
    syy = np.bincount(labels, dy * dy, num_groups)
    sxy = np.bincount(labels, dx * dy, num_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = sxy / np.sqrt(sxx * syy)
    return np.clip(r, -1.0, 1.0)


def _is_constant(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per group of the group-sorted `values` (groups begin at `starts`): all values equal."""
    return np.minimum.reduceat(values, starts) == np.maximum.reduceat(values, starts)


def spearman_rho(scores: np.ndarray, targets: np.ndarray) -> float:
    """Spearman rank correlation over a whole split (average ranks for ties); nan if undefined."""
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets, np.float64)
    n = scores.size
    if n < 2 or np.all(scores == scores[0]) or np.all(targets == targets[0]):
        return float("nan")
    labels, counts = np.zeros(n, np.int64), np.array([n])
    rs, rt = _group_ranks(scores, labels), _group_ranks(targets, labels)
    return float(_group_pearson(rs, rt, labels, counts)[0])


def group_correlations(
    scores: np.ndarray, likes: np.ndarray, group_ids: np.ndarray
) -> dict[str, float]:
    """PLCC and SRCC of log-scores vs `ln(likes)` inside each group, averaged over groups.

    Groups with fewer than 2 images or constant scores or likes have no correlation; they are
    skipped and counted in `num_groups_skipped`. `plcc`/`srcc` are nan if no group is usable.
    """
    order, labels, counts = _sorted_groups(group_ids)
    x = np.asarray(scores, np.float64)[order]
    y = np.log(np.asarray(likes, np.float64))[order]
    if x.size == 0:
        return dict(plcc=float("nan"), srcc=float("nan"), num_groups=0, num_groups_skipped=0)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    usable = (counts >= 2) & ~_is_constant(x, starts) & ~_is_constant(y, starts)
    plcc = _group_pearson(x, y, labels, counts)[usable]
    rx, ry = _group_ranks(x, labels), _group_ranks(y, labels)
    srcc = _group_pearson(rx, ry, labels, counts)[usable]
    num_used = int(usable.sum())
    return dict(
        plcc=float(plcc.mean()) if num_used else float("nan"),
        srcc=float(srcc.mean()) if num_used else float("nan"),
        num_groups=num_used,
        num_groups_skipped=int(counts.size - num_used),
    )


def valid_pair_indices(
    likes: np.ndarray, group_ids: np.ndarray, min_rel_diff: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Within-group pairs with `|l_a - l_b| / max(l_a, l_b) >= min_rel_diff` (Ji et al. 2023).

    Returns `(idx_win, idx_lose)` into the split, winner (more likes) first, sorted by
    `(idx_win, idx_lose)`. Pairs with equal likes have no winner and are never returned.
    """
    likes = np.asarray(likes, np.float64)
    order, labels, counts = _sorted_groups(group_ids)
    wins, loses = [], []
    # Pair sorted position p with p + d; the loop runs max group size - 1 times, not per group.
    for d in range(1, int(counts.max(initial=1))):
        same = np.flatnonzero(labels[d:] == labels[:-d])
        a, b = order[same], order[same + d]
        la, lb = likes[a], likes[b]
        keep = (la != lb) & (np.abs(la - lb) >= min_rel_diff * np.maximum(la, lb))
        a, b, a_wins = a[keep], b[keep], (la > lb)[keep]
        wins.append(np.where(a_wins, a, b))
        loses.append(np.where(a_wins, b, a))
    idx_win = np.concatenate(wins + [np.zeros(0, np.int64)]).astype(np.int64)
    idx_lose = np.concatenate(loses + [np.zeros(0, np.int64)]).astype(np.int64)
    sort = np.argsort(idx_win * likes.size + idx_lose)
    return idx_win[sort], idx_lose[sort]


def evaluate(
    scores: np.ndarray,
    likes: np.ndarray,
    group_ids: np.ndarray,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    min_rel_diff: float = 0.5,
) -> dict[str, float]:
    """All split metrics; `pairs` (idx_win, idx_lose) default to `valid_pair_indices`."""
    scores = np.asarray(scores, np.float64)
    likes = np.asarray(likes, np.float64)
    if pairs is None:
        pairs = valid_pair_indices(likes, group_ids, min_rel_diff)
    win, lose = (np.asarray(p, np.int64) for p in pairs)
    groups = group_correlations(scores, likes, group_ids)
    return dict(
        pairwise_accuracy=pairwise_accuracy(scores[win], scores[lose]),
        ratio_mse=ratio_mse(scores[win], scores[lose], likes[win], likes[lose]),
        plcc=groups["plcc"],
        srcc=groups["srcc"],
        spearman_rho=spearman_rho(scores, np.log(likes)),
        num_pairs=int(win.size),
        num_images=int(scores.size),
        num_groups=groups["num_groups"],
        num_groups_skipped=groups["num_groups_skipped"],
    )


def _binarised_sample(
    y: np.ndarray, top_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and 0/1 labels of the top `round(top_fraction * N)` rows by `y` (ties: first row
    wins) and as many rows drawn without replacement from the rest with `seed`."""
    y = np.asarray(y, np.float64)
    num_pos = int(np.round(top_fraction * y.size))
    if not 1 <= num_pos <= y.size - num_pos:
        raise ValueError(f"top_fraction={top_fraction} leaves no balanced sample of {y.size} rows")
    order = np.argsort(-y, kind="stable")
    pos, rest = order[:num_pos], np.sort(order[num_pos:])
    neg = np.random.default_rng(seed).choice(rest, num_pos, replace=False)
    labels = np.r_[np.ones(num_pos, bool), np.zeros(num_pos, bool)]
    return np.r_[pos, neg], labels


def binarised_accuracy(
    scores: np.ndarray,
    y: np.ndarray,
    threshold: float,
    *,
    top_fraction: float = 0.2,
    seed: int = 0,
) -> float:
    """Accuracy of `score > threshold` at telling the top `top_fraction` by `y` from as many
    random other rows (Khosla et al. 2014; Cappallo et al. 2015)."""
    idx, labels = _binarised_sample(y, top_fraction, seed)
    return float(np.mean((np.asarray(scores, np.float64)[idx] > threshold) == labels))


def binarised_threshold(
    train_scores: np.ndarray, train_y: np.ndarray, *, top_fraction: float = 0.2, seed: int = 0
) -> float:
    """The threshold maximising `binarised_accuracy` on the training split's own sample.

    Candidates are the midpoints between consecutive distinct sample scores plus one threshold
    below and one above them all; ties go to the lowest threshold.
    """
    idx, labels = _binarised_sample(train_y, top_fraction, seed)
    s = np.asarray(train_scores, np.float64)[idx]
    values, inverse = np.unique(s, return_inverse=True)
    # With the threshold just above values[i], rows at values[:i + 1] are called negative.
    pos_le = np.cumsum(np.bincount(inverse, labels, values.size))
    neg_le = np.cumsum(np.bincount(inverse, ~labels, values.size))
    correct = np.r_[labels.sum(), neg_le + (labels.sum() - pos_le)]
    candidates = np.r_[values[0] - 1.0, (values[:-1] + values[1:]) / 2, values[-1] + 1.0]
    return float(candidates[np.argmax(correct)])


def binarised_accuracy_draws(
    train_scores: np.ndarray,
    train_y: np.ndarray,
    test_scores: np.ndarray,
    test_y: np.ndarray,
    *,
    num_draws: int,
    top_fraction: float = 0.2,
) -> np.ndarray:
    """Binarised test accuracy for each of `num_draws` draws of the negatives `[num_draws]`.

    Draw k uses seed k for both the training sample (threshold) and the test sample, so draw 0
    is `binarised_accuracy(..., binarised_threshold(...))` with the default seed, and two
    models scored on the same images see the same negatives in every draw (paired differences).
    """
    if num_draws < 1:
        raise ValueError(f"num_draws={num_draws} must be >= 1")
    out = np.empty(num_draws)
    for k in range(num_draws):
        threshold = binarised_threshold(train_scores, train_y, top_fraction=top_fraction, seed=k)
        out[k] = binarised_accuracy(test_scores, test_y, threshold, top_fraction=top_fraction,
                                    seed=k)
    return out
