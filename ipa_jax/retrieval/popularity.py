# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Local popularity of a post within its user's memory bank (Ji et al. 2023).

    p_r = l_r / mean{ l_m : m in bank, m != r, |t_m - t_r| < window }

Likes are only comparable among posts of about the same time (followers grow), so a retrieved
post's likes are expressed relative to the user's other posts of the surrounding window.
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
    count = hi - lo - 1  # the run always holds the post itself
    total = cum[hi] - cum[lo] - ls
    defined = (count > 0) & (total > 0)
    p_sorted = np.full(ts.shape, NO_NEIGHBOUR_VALUE)
    p_sorted[defined] = ls[defined] * count[defined] / total[defined]
    p, defaulted = np.empty_like(p_sorted), np.empty(ts.shape, bool)
    p[order], defaulted[order] = p_sorted, ~defined
    return p, defaulted
