# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Per-user post groups for intrinsic popularity (Ji et al. 2023).

Ji et al. compare posts of one user published close in time, but do not say how posts are cut
into groups. We use this deterministic rule:

  1. Posts with `likes < min_likes` are dropped ("too few likes").
  2. Per user, the remaining posts are sorted by (timestamp, post_id).
  3. Walking in that order, a group starts at the first unassigned post and takes the following
     posts while `t - t_start <= window_days * 86400` and the group has fewer than `max_size`
     posts; the next post then starts a new group.
  4. Groups with fewer than `min_size` posts are dropped ("no group partner").

Kept groups are numbered per user in time order: group_id = f"{user}-g{index:05d}".
Training pairs inside a group are the post pairs whose likes differ by a relative margin
(`valid_pairs`).
"""

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np

from ipa_jax.data.instagram import Post

TOO_FEW_LIKES = "too few likes"
NO_GROUP_PARTNER = "no group partner"
SPLITS = ("train", "validation", "test")
_DAY = 86400

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Group:
    """Posts of one user published within a short time window."""

    group_id: str
    user: str
    posts: tuple[Post, ...]  # Sorted by (timestamp, post_id).


def make_groups(posts: Sequence[Post], *, window_days: float = 7.0, min_size: int = 2,
                max_size: int = 30, min_likes: int = 1) -> tuple[list[Group], collections.Counter]:
    """Cuts posts into per-user time-window groups (rule in the module docstring).

    Returns:
      (groups sorted by user then time, Counter of dropped posts by reason).
    """
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    if window_days < 0:
        raise ValueError(f"window_days must be >= 0, got {window_days}")
    dropped = collections.Counter()
    by_user = collections.defaultdict(list)
    for p in posts:
        if p.likes < min_likes:
            dropped[TOO_FEW_LIKES] += 1
        else:
            by_user[p.user].append(p)

    window = window_days * _DAY
    groups = []
    for user in sorted(by_user):
        user_posts = sorted(by_user[user], key=lambda p: (p.timestamp, p.post_id))
        start = index = 0
        while start < len(user_posts):
            end = start + 1
            t_start = user_posts[start].timestamp
            while (end < len(user_posts) and end - start < max_size
                   and user_posts[end].timestamp - t_start <= window):
                end += 1
            members = tuple(user_posts[start:end])
            if len(members) >= min_size:
                groups.append(Group(f"{user}-g{index:05d}", user, members))
                index += 1
            else:
                dropped[NO_GROUP_PARTNER] += len(members)
            start = end
    return groups, dropped


def valid_pairs(likes: Sequence[float], min_rel_diff: float = 0.5) -> list[tuple[int, int]]:
    """Index pairs whose likes differ by at least `min_rel_diff` relative to the larger.

    Returns:
      (winner_idx, loser_idx) for every i < j with |l_i - l_j| / max(l_i, l_j) >= min_rel_diff
      and l_i != l_j; the winner has more likes. Ordered by (i, j).
    """
    if not 0 <= min_rel_diff <= 1:
        raise ValueError(f"min_rel_diff must be in [0, 1], got {min_rel_diff}")
    x = np.asarray(likes, dtype=np.float64)
    if x.ndim != 1 or np.any(x < 0) or not np.all(np.isfinite(x)):
        raise ValueError("likes must be a 1-D sequence of finite non-negative numbers")
    i, j = np.triu_indices(len(x), k=1)
    hi = np.maximum(x[i], x[j])
    diff = np.abs(x[i] - x[j])
    # diff > 0 excludes ties (incl. 0 vs 0), which have no winner.
    keep = (diff > 0) & (diff >= min_rel_diff * hi)
    i, j = i[keep], j[keep]
    i_wins = x[i] > x[j]
    winners, losers = np.where(i_wins, i, j).tolist(), np.where(i_wins, j, i).tolist()
    return list(zip(winners, losers, strict=True))


def random_split(items: Sequence[T], sizes: Mapping[str, int], seed: int) -> dict[str, list[T]]:
    """Randomly splits items into named parts of the given sizes (summing to len(items)).

    Deterministic from seed; each part keeps the input order of its items.
    """
    if sum(sizes.values()) != len(items) or any(s < 0 for s in sizes.values()):
        raise ValueError(f"sizes {dict(sizes)} do not partition {len(items)} items")
    perm = np.random.default_rng(seed).permutation(len(items))
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = [items[k] for k in np.sort(perm[start:start + size])]
        start += size
    return out


def _split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of n * fractions; positive parts non-empty when n >= 3."""
    exact = np.asarray(fractions, dtype=np.float64) * n
    sizes = np.floor(exact).astype(int)
    # Stable order so that equal remainders go to the earlier split.
    for k in np.argsort(-(exact - sizes), kind="stable")[:n - sizes.sum()]:
        sizes[k] += 1
    if n >= len(fractions):
        for k in range(len(fractions)):
            if fractions[k] > 0 and sizes[k] == 0:
                sizes[np.argmax(sizes)] -= 1
                sizes[k] += 1
    return [int(s) for s in sizes]


def split_groups(groups: Sequence[Group], *, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 seed: int = 0) -> dict[str, list[Group]]:
    """Randomly assigns whole groups to train/validation/test.

    Sizes are the fractions of len(groups) rounded (largest remainder) so they add up to the
    total; every split with a positive fraction gets at least one group when there are >= 3.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    sizes = _split_sizes(len(groups), fractions)
    return random_split(groups, dict(zip(SPLITS, sizes, strict=True)), seed)
