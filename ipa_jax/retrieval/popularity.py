# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Local popularity of a post within its user's memory bank (Ji et al. 2023).

    p_r = l_r / mean{ l_m : m in bank, m != r, |t_m - t_r| < window }

Likes are only comparable among posts of about the same time (followers grow), so a retrieved
post's likes are expressed relative to the user's other posts of the surrounding window. For a
training query, `ipa_jax.retrieval.retrieve` also leaves the query's own group out of the mean
(SPEC 2), from `window_totals` less the group's share, so no label of a training pair reaches its
own features.
"""

import numpy as np

SECONDS_PER_DAY = 86400.0
NO_NEIGHBOUR_VALUE = 1.0  # "as popular as its neighbours" when there are none to compare with


def local_popularity(likes: np.ndarray, timestamps: np.ndarray, *,
                     window_days: float = 30.0) -> tuple[np.ndarray, int]:
    """Local popularity of each post of ONE bank (one user).

    Args: likes [N]; timestamps [N] in seconds (Unix time); window_days: delta, strict bound.
    Returns: (p [N] float64, number of posts that got NO_NEIGHBOUR_VALUE). A post gets the default
    when no other post lies within the window, or when its neighbours' mean likes is 0 (no ratio).
    """
    p, defaulted = local_popularity_with_mask(likes, timestamps, window_days=window_days)
    return p, int(defaulted.sum())


def local_popularity_with_mask(likes: np.ndarray, timestamps: np.ndarray, *,
                               window_days: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """`local_popularity`, with a [N] bool mask of the posts that got the default."""
    count, total = window_totals(likes, timestamps, window_days=window_days)
    return ratio(likes, count, total)


def window_totals(likes: np.ndarray, timestamps: np.ndarray, *,
                  window_days: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Per post of ONE bank, (count [N] int64, sum of likes [N] float64) of its neighbours: the
    other posts m with t_r - window < t_m < t_r + window (the post itself left out)."""
    likes = np.asarray(likes, np.float64)
    t = np.asarray(timestamps, np.float64)
    if likes.shape != t.shape or likes.ndim != 1:
        raise ValueError(f"likes and timestamps must be equal [N], got {likes.shape}, {t.shape}")
    order = np.argsort(t, kind="stable")
    ts, ls = t[order], likes[order]
    window = window_days * SECONDS_PER_DAY
    # Sorted by time, each post's neighbours are one contiguous run: (t - window, t + window).
    lo = np.searchsorted(ts, ts - window, side="right")
    hi = np.searchsorted(ts, ts + window, side="left")
    # Prefix sums are exact for integer likes (below 2^53), so the run sums have no round-off.
    cum = np.concatenate([[0.0], np.cumsum(ls)])
    count, total = np.empty(ts.shape, np.int64), np.empty(ts.shape)
    count[order] = hi - lo - 1  # the run always holds the post itself
    total[order] = cum[hi] - cum[lo] - ls
    return count, total


def in_window(t_m: np.ndarray, t_r: np.ndarray, window_days: float) -> np.ndarray:
    """Whether posts at t_m are neighbours of posts at t_r, exactly as `window_totals` decides."""
    window = window_days * SECONDS_PER_DAY
    t_m, t_r = np.asarray(t_m, np.float64), np.asarray(t_r, np.float64)
    return (t_m > t_r - window) & (t_m < t_r + window)


def ratio(likes: np.ndarray, count: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p = likes / (total / count), mask of the defaults): NO_NEIGHBOUR_VALUE where count is 0 or
    total is 0."""
    likes = np.asarray(likes, np.float64)
    count, total = np.asarray(count), np.asarray(total, np.float64)
    defined = (count > 0) & (total > 0)
    p = np.full(likes.shape, NO_NEIGHBOUR_VALUE)
    p[defined] = likes[defined] * count[defined] / total[defined]
    return p, ~defined
