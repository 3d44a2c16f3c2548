# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests for ipa_jax.data.groups: group rule, valid pairs and group splits."""

import itertools

import numpy as np
import pytest

from ipa_jax.data import groups as groups_lib
from ipa_jax.data.instagram import Post

DAY = 86400


def _post(user, ts, likes, pid=None):
    pid = pid or f"{user}-{ts}"
    return Post(post_id=pid, user=user, timestamp=int(ts), likes=int(likes), caption="",
                typename="GraphImage", is_video=False, image_paths=(f"image/{pid}.jpg",))


def _random_posts(seed, n=600, users=5):
    rng = np.random.default_rng(seed)
    ts = rng.integers(0, 200 * DAY, size=n)
    likes = rng.integers(0, 40, size=n)
    return [_post(f"u{rng.integers(users)}", t, lk, pid=f"p{k:04d}")
            for k, (t, lk) in enumerate(zip(ts, likes, strict=True))]


def test_hand_example():
    d = DAY
    posts = [_post("a", 0, 5), _post("a", 7 * d, 5),  # a-g00000: 7 days apart is still in.
             _post("a", 7 * d + 1, 5),               # Starts a group that stays alone.
             _post("a", 8 * d, 0),                   # Too few likes, so not a partner.
             _post("a", 20 * d, 3),                  # Alone.
             _post("b", 3, 1), _post("b", 0, 1), _post("b", 2, 1), _post("b", 1, 1)]
    groups, dropped = groups_lib.make_groups(posts, max_size=3)
    assert [(g.group_id, g.user, [p.timestamp for p in g.posts]) for g in groups] == [
        ("a-g00000", "a", [0, 7 * d]), ("b-g00000", "b", [0, 1, 2])]  # b's t=3: size cap.
    assert dict(dropped) == {"too few likes": 1, "no group partner": 3}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("window_days,min_size,max_size,min_likes",
                         [(7.0, 2, 30, 1), (3.5, 3, 5, 10)])
def test_groups_obey_rules_and_partition(seed, window_days, min_size, max_size, min_likes):
    posts = _random_posts(seed)
    groups, dropped = groups_lib.make_groups(posts, window_days=window_days, min_size=min_size,
                                             max_size=max_size, min_likes=min_likes)
    assert groups
    for g in groups:
        ts = [p.timestamp for p in g.posts]
        assert {p.user for p in g.posts} == {g.user}
        assert g.group_id.startswith(f"{g.user}-g")
        assert max(ts) - min(ts) <= window_days * DAY
        assert min_size <= len(g.posts) <= max_size
        assert all(p.likes >= min_likes for p in g.posts)
        assert g.posts == tuple(sorted(g.posts, key=lambda p: (p.timestamp, p.post_id)))
    grouped = [p.post_id for g in groups for p in g.posts]
    assert len(grouped) == len(set(grouped))
    assert len({g.group_id for g in groups}) == len(groups)
    assert dropped["too few likes"] == sum(p.likes < min_likes for p in posts)
    # Groups partition exactly the posts that are not dropped.
    assert len(grouped) + sum(dropped.values()) == len(posts)


def test_groups_deterministic_under_input_order():
    posts = _random_posts(3)
    rng = np.random.default_rng(1)
    shuffled = [posts[k] for k in rng.permutation(len(posts))]
    assert groups_lib.make_groups(posts) == groups_lib.make_groups(shuffled)


def test_group_starts_are_greedy():
    # Each group must be maximal: the post after it breaks the window or the size limit.
    posts = _random_posts(4)
    max_size = 4
    groups, _ = groups_lib.make_groups(posts, min_size=1, max_size=max_size)
    by_user = {}
    for g in groups:
        by_user.setdefault(g.user, []).append(g)
    for user_groups in by_user.values():
        for g, nxt in itertools.pairwise(user_groups):
            too_late = nxt.posts[0].timestamp - g.posts[0].timestamp > 7 * DAY
            assert too_late or len(g.posts) == max_size


def _brute_pairs(likes, min_rel_diff):
    out = []
    for i in range(len(likes)):
        for j in range(i + 1, len(likes)):
            a, b = likes[i], likes[j]
            if a != b and abs(a - b) / max(a, b) >= min_rel_diff:
                out.append((i, j) if a > b else (j, i))
    return out


@pytest.mark.parametrize("min_rel_diff", [0.0, 0.25, 0.5, 0.9])
def test_valid_pairs_vs_brute_force(min_rel_diff):
    rng = np.random.default_rng(0)
    for _ in range(20):
        likes = rng.integers(0, 30, size=rng.integers(0, 25)).tolist()
        assert groups_lib.valid_pairs(likes, min_rel_diff) == _brute_pairs(likes, min_rel_diff)


def test_valid_pairs_hand_example():
    # 10 vs 5: 0.5 (kept, boundary); 10 vs 6: 0.4; 6 vs 5: 1/6; 0 vs anything positive: 1.
    assert groups_lib.valid_pairs([10, 5, 6, 0]) == [(0, 1), (0, 3), (1, 3), (2, 3)]
    with pytest.raises(ValueError):
        groups_lib.valid_pairs([1, -2])


def _groups(n):
    return [groups_lib.Group(f"u-g{k:05d}", "u", (_post("u", k, 1),)) for k in range(n)]


@pytest.mark.parametrize("n,fractions,sizes", [
    (100, (0.8, 0.1, 0.1), (80, 10, 10)),
    (10, (0.8, 0.1, 0.1), (8, 1, 1)),
    (3, (0.8, 0.1, 0.1), (1, 1, 1)),
    (7, (0.5, 0.25, 0.25), (3, 2, 2)),  # Exact 3.5/1.75/1.75: largest remainders win.
    (5, (1.0, 0.0, 0.0), (5, 0, 0)),
    (2, (0.8, 0.1, 0.1), (2, 0, 0)),
    (0, (0.8, 0.1, 0.1), (0, 0, 0)),
])
def test_split_sizes_and_disjointness(n, fractions, sizes):
    gs = _groups(n)
    split = groups_lib.split_groups(gs, fractions=fractions, seed=0)
    assert tuple(len(split[k]) for k in ("train", "validation", "test")) == sizes
    ids = [g.group_id for part in split.values() for g in part]
    assert sorted(ids) == sorted(g.group_id for g in gs)


def test_split_deterministic_and_seed_dependent():
    gs = _groups(50)
    a = groups_lib.split_groups(gs, seed=7)
    assert a == groups_lib.split_groups(gs, seed=7)
    assert a != groups_lib.split_groups(gs, seed=8)


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.9, 0.2, -0.1), (0.5, 0.3, 0.1)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError):
        groups_lib.split_groups(_groups(10), fractions=fractions)
