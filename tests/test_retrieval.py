# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests of local popularity and top-K retrieval (leakage rules, features, modes, ScaNN path)."""

import dataclasses

import numpy as np
import pytest

from ipa_jax.retrieval import pose, retrieve
from ipa_jax.retrieval.popularity import local_popularity

DAY = 86400


# ---------------------------------------------------------------------------- local popularity


def test_local_popularity_hand_computed():
    # Days and likes, deliberately unsorted. Window 30 days, strict.
    days = np.array([50, 0, 200, 10, 80])
    likes = np.array([150, 100, 80, 300, 50])
    p, n_default = local_popularity(likes, days * DAY, window_days=30.0)
    # t=50: neighbour t=10? |40| no; t=80? |30| not < 30 -> none -> 1.0.
    # t=0: neighbour t=10 (300) -> 100 / 300.  t=10: neighbour t=0 (100) -> 300 / 100.
    # t=200: none -> 1.0.  t=80: t=50 is exactly 30 days away -> none -> 1.0.
    np.testing.assert_allclose(p, [1.0, 1 / 3, 1.0, 3.0, 1.0])
    assert n_default == 3
    # Move t=80 to t=79: now t=50 and t=79 are neighbours of each other.
    p, n_default = local_popularity(likes, np.array([50, 0, 200, 10, 79]) * DAY)
    np.testing.assert_allclose(p, [3.0, 1 / 3, 1.0, 3.0, 1 / 3])
    assert n_default == 1


def _brute_local_popularity(likes, t, window):
    """(p, mask of the posts with the default p = 1), by the definition."""
    p, default = np.ones(len(likes)), np.zeros(len(likes), bool)
    for r in range(len(likes)):
        nb = [likes[m] for m in range(len(likes)) if m != r and abs(t[m] - t[r]) < window]
        if nb and np.mean(nb) > 0:
            p[r] = likes[r] / np.mean(nb)
        else:
            default[r] = True
    return p, default


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_local_popularity_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 300  # ~2 neighbours per post on average: some have none, some only zero-like ones
    t = rng.integers(0, 1000, n) * DAY + rng.integers(0, 3, n) * 3600  # ties and near-ties
    likes = rng.integers(0, 5, n) * rng.integers(0, 1000, n)  # many zeros
    p, n_default = local_popularity(likes, t, window_days=7.5)
    p_ref, default = _brute_local_popularity(likes, t, 7.5 * DAY)
    np.testing.assert_allclose(p, p_ref, rtol=1e-12)
    assert n_default == default.sum() > 0


# ---------------------------------------------------------------------------- synthetic posts


def _person(rng, template):
    kp = np.zeros((17, 3))
    kp[:, :2] = template + rng.normal(0, 4.0, (17, 2))
    kp[:, 2] = rng.choice([0, 2], 17, p=[0.2, 0.8])
    return kp


def _dataset(bank_sizes, *, extra=4, seed=0, dims=(12, 8)):
    """Posts of users with the given bank (training) sizes plus `extra` non-bank posts each."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(50, 250, (4, 17, 2))
    rows = []
    for u, size in enumerate(bank_sizes):
        g = 0
        for i in range(size + extra):
            rows.append((f"u{u}", i < size, g))
            g += int(rng.random() < 0.5)  # groups of consecutive posts, about 2 posts each
    n = len(rows)
    users = np.array([r[0] for r in rows])
    in_bank = np.array([r[1] for r in rows])
    split = np.where(in_bank, "train", "test")
    groups = np.array([f"{u}-{s}-{g}" for (u, _, g), s in zip(rows, split, strict=True)])
    # Users differ, and a group's posts look alike (so leaking the own group would show).
    centres = [rng.normal(0, 1, (sum(dims),)) for _ in bank_sizes]
    _, group_code = np.unique(groups, return_inverse=True)
    look = rng.normal(0, 1, (group_code.max() + 1, sum(dims)))[group_code]
    emb = np.stack([centres[int(u[1:])] for u in users]) + look + rng.normal(0, .5, look.shape)
    keypoints = [[_person(rng, templates[rng.integers(4)])
                  for _ in range(rng.choice(3, p=[.4, .4, .2]))] for _ in range(n)]
    return dict(post_ids=np.array([f"p{i}" for i in range(n)]), users=users,
                likes=rng.integers(0, 2000, n), timestamps=rng.integers(0, 200 * DAY, n),
                group_ids=groups, in_bank=in_bank, background=emb[:, :dims[0]] * 3.0,
                semantic=emb[:, dims[0]:], keypoints=keypoints)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _bank_popularity(data, config):
    """Local popularity (and default mask) of every bank post within its own user's bank."""
    n = len(data["post_ids"])
    p, default = np.full(n, np.nan), np.zeros(n, bool)
    for u in np.unique(data["users"]):
        rows = np.flatnonzero((data["users"] == u) & data["in_bank"])
        p[rows], default[rows] = _brute_local_popularity(
            data["likes"][rows], data["timestamps"][rows], config.window_days * DAY)
    return p, default


def _brute_pose(query_people, ref_people):
    """S_p by the definition: the best over person pairs of the mean OKS of both directions."""
    best = 0.0
    for a in query_people:
        for b in ref_people:
            both = (pose.oks(a, b, float(pose.person_area(b)))
                    + pose.oks(b, a, float(pose.person_area(a)))) / 2
            best = max(best, both)
    return best


def _brute_p(data, config, q, r):
    """(p_r, default) for query q: r's user's bank in the window, less q's group if q trains."""
    likes, t, users = data["likes"], data["timestamps"], data["users"]
    groups, bank = data["group_ids"], data["in_bank"]
    nb = [likes[m] for m in range(len(likes))
          if bank[m] and users[m] == users[r] and m != r
          and abs(t[m] - t[r]) < config.window_days * DAY
          and not (bank[q] and groups[m] == groups[q])]
    if nb and np.mean(nb) > 0:
        return likes[r] / np.mean(nb), False
    return 1.0, True


def _brute_force(data, config, eligible):
    """Per query: [(W, row, [p, W, S_b, S_p, S_c])] over the eligible rows, best first."""
    n = len(data["post_ids"])
    b, c = _unit(np.asarray(data["background"], float)), _unit(np.asarray(data["semantic"], float))
    sim = ((lambda x: (1 + x) / 2) if config.cosine == "affine" else (lambda x: max(x, 0.0)))
    out = []
    for q in range(n):
        ranked = []
        for r in range(n):
            if not eligible(q, r):
                continue
            s_b, s_c = sim(b[q] @ b[r]), sim(c[q] @ c[r])
            s_p = _brute_pose(data["keypoints"][q], data["keypoints"][r])
            w = config.w_pose * s_p + config.w_background * s_b + config.w_semantic * s_c
            ranked.append((w, r, [_brute_p(data, config, q, r)[0], w, s_b, s_p, s_c]))
        out.append(sorted(ranked, key=lambda x: -x[0]))
    return out


def _no_leak(data, q, r):
    """The leakage rules, restated: a bank post, not the query, not a training query's group."""
    if not data["in_bank"][r] or r == q or data["post_ids"][r] == data["post_ids"][q]:
        return False
    return not (data["in_bank"][q] and data["group_ids"][r] == data["group_ids"][q])


def _check_against(data, f_ret, retrieved, expected, k):
    for q, ranked in enumerate(expected):
        top = ranked[:k]
        np.testing.assert_array_equal(retrieved[q, :len(top)], [r for _, r, _ in top])
        assert (retrieved[q, len(top):] == -1).all()
        if top:
            np.testing.assert_allclose(f_ret[q, :len(top)], [f for _, _, f in top], atol=2e-6)
        assert (f_ret[q, len(top):] == 0).all()


def _invariants(data, f_ret, retrieved):
    for q in range(len(retrieved)):
        rows = retrieved[q][retrieved[q] >= 0]
        assert all(_no_leak(data, q, r) for r in rows)
        assert len(set(rows)) == len(rows)
        w = f_ret[q, :len(rows), 1]
        assert (np.diff(w) <= 0).all()  # sorted by W
        assert ((w >= 0) & (w <= 1)).all()
        assert (retrieved[q, len(rows):] == -1).all()  # empties last


# ---------------------------------------------------------------------------- retrieval


def test_config_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        retrieve.RetrievalConfig(w_pose=0.5)
    with pytest.raises(ValueError, match=">= 0"):
        retrieve.RetrievalConfig(w_pose=-0.2, w_background=0.8)
    with pytest.raises(ValueError, match="mode"):
        retrieve.RetrievalConfig(mode="global")
    with pytest.raises(ValueError, match="candidates"):
        retrieve.RetrievalConfig(k=8, candidates=4)


def test_per_user_matches_brute_force():
    # Banks of 0..40 posts, candidates above every bank: the result is the exact top-K by full W.
    data = _dataset([40, 25, 9, 3, 1, 0], seed=0)
    config = retrieve.RetrievalConfig(k=8, candidates=64)
    f_ret, retrieved, stats = retrieve.retrieve(**data, config=config)
    assert f_ret.shape == (len(data["users"]), 8, 5) and f_ret.dtype == np.float32
    expected = _brute_force(
        data, config, lambda q, r: _no_leak(data, q, r) and data["users"][r] == data["users"][q])
    _check_against(data, f_ret, retrieved, expected, 8)
    _invariants(data, f_ret, retrieved)
    assert (f_ret[..., 3] > 0).sum() > 50  # pose matters in this data
    assert stats["recall"] == 1.0
    assert stats["num_queries"] == len(data["users"])
    assert stats["num_empty_slots"] == sum(max(0, 8 - len(r)) for r in expected)
    assert stats["num_empty_slots"] > 0
    defaults = [_brute_p(data, config, q, retrieved[q, j])[1]
                for q, j in zip(*np.nonzero(retrieved >= 0), strict=True)]
    assert stats["num_no_neighbours"] == sum(defaults) > 0
    _, default = _bank_popularity(data, config)
    assert stats["num_bank_no_neighbours"] == default.sum()


def test_per_user_few_candidates_without_pose():
    # w_pose = 0: the embedding order is the W order, so even candidates = k + 1 is exact, which
    # needs the search to fetch past the query's own post and group.
    data = _dataset([30, 12, 5], seed=1)
    config = retrieve.RetrievalConfig(k=5, candidates=6, w_pose=0.0, w_background=0.3,
                                      w_semantic=0.7)
    f_ret, retrieved, _ = retrieve.retrieve(**data, config=config)
    expected = _brute_force(
        data, config, lambda q, r: _no_leak(data, q, r) and data["users"][r] == data["users"][q])
    _check_against(data, f_ret, retrieved, expected, 5)


def test_cross_user_matches_brute_force():
    data = _dataset([20, 10, 4, 0], seed=2)
    config = retrieve.RetrievalConfig(k=6, candidates=64, mode="cross_user")
    f_ret, retrieved, _ = retrieve.retrieve(**data, config=config)
    expected = _brute_force(data, config, lambda q, r: _no_leak(data, q, r))
    _check_against(data, f_ret, retrieved, expected, 6)
    _invariants(data, f_ret, retrieved)
    users = data["users"]
    assert (users[retrieved[retrieved >= 0]] != np.repeat(users, 6)[retrieved.ravel() >= 0]).any()


def test_fallback_fills_small_banks_from_other_users():
    data = _dataset([30, 25, 6, 2, 0], seed=3)
    base = retrieve.RetrievalConfig(k=8, min_bank_size=10)
    f_user, r_user, _ = retrieve.retrieve(**data, config=base)
    config = dataclasses.replace(base, mode="fallback")
    f_fb, r_fb, stats = retrieve.retrieve(**data, config=config)
    _invariants(data, f_fb, r_fb)
    users, bank_size = data["users"], {u: 0 for u in np.unique(data["users"])}
    for u, b in zip(users, data["in_bank"], strict=True):
        bank_size[u] += int(b)
    small = np.array([bank_size[u] < 10 for u in users])
    # Big banks: unchanged.
    np.testing.assert_array_equal(r_fb[~small], r_user[~small])
    np.testing.assert_array_equal(f_fb[~small], f_user[~small])
    # Small banks: every own-user post kept, every empty slot filled from other users.
    cold = small & (r_user < 0).any(1)
    assert stats["num_cold_start_queries"] == cold.sum() > 0
    for q in np.flatnonzero(small):
        own = set(r_user[q][r_user[q] >= 0])
        got = r_fb[q][r_fb[q] >= 0]
        assert own == {r for r in got if users[r] == users[q]}
        assert len(got) == 8
        others = [r for r in got if users[r] != users[q]]
        assert len(others) == 8 - len(own)
        # The fills are the best other-user posts by W.
        best = _brute_force_one(data, config, q, lambda r, q=q: _no_leak(data, q, r)
                                and users[r] != users[q])
        np.testing.assert_array_equal(sorted(others), sorted(best[:len(others)]))
    assert stats["num_empty_slots"] == 0


@pytest.mark.parametrize("mode", ["per_user", "fallback"])
def test_queries_mask_computes_only_those_rows(mode):
    """`queries=`: the wanted posts get exactly the rows of a full run, the others zero rows."""
    data = _dataset([40, 25, 9, 3, 1, 0], seed=1)
    config = retrieve.RetrievalConfig(k=8, candidates=64, mode=mode, min_bank_size=20)
    full, full_rows, _ = retrieve.retrieve(**data, config=config)
    wanted = ~np.asarray(data["in_bank"]) & (np.arange(len(data["users"])) % 2 == 0)
    assert wanted.sum() > 3
    f_ret, rows, stats = retrieve.retrieve(**data, config=config, queries=wanted)
    np.testing.assert_array_equal(f_ret[wanted], full[wanted])
    np.testing.assert_array_equal(rows[wanted], full_rows[wanted])
    assert not f_ret[~wanted].any() and (rows[~wanted] == -1).all()
    assert stats["num_queries"] == wanted.sum()
    assert stats["num_empty_slots"] == (full_rows[wanted] < 0).sum()


def _brute_force_one(data, config, q, eligible):
    sub = _brute_force({**data}, config, lambda qq, r: qq == q and eligible(r))
    return [r for _, r, _ in sub[q]]


def test_duplicate_post_ids_never_retrieve_each_other():
    data = _dataset([15, 15], seed=4, extra=0)
    data["post_ids"] = data["post_ids"].copy()
    data["post_ids"][20] = data["post_ids"][3]  # the same post twice, under two users
    data["background"][20], data["semantic"][20] = data["background"][3], data["semantic"][3]
    config = retrieve.RetrievalConfig(k=8, mode="cross_user")
    _, retrieved, _ = retrieve.retrieve(**data, config=config)
    assert 20 not in retrieved[3] and 3 not in retrieved[20]


def test_leakage_check_raises():
    data = _dataset([12, 12], seed=5)
    config = retrieve.RetrievalConfig(k=4)
    posts = retrieve._prepare(**data, config=config)
    _, rows, _ = retrieve.retrieve(**data, config=config)
    retrieve._check_leakage(posts, rows, config)
    q = int(np.flatnonzero(data["in_bank"])[0])
    for bad_row, what in [(q, "query itself"), (int(np.flatnonzero(~data["in_bank"])[0]),
                                                 "outside the memory banks"),
                          (int(np.flatnonzero(data["users"] == "u1")[0]), "another user")]:
        bad = rows.copy()
        bad[q, 0] = bad_row
        with pytest.raises(AssertionError, match=what):
            retrieve._check_leakage(posts, bad, config)


def test_scann_path_agrees_with_exact():
    # ~3000 bank posts in one cross-user index; exact_threshold 50 forces ScaNN.
    data = _dataset([300] * 10, seed=6, extra=20, dims=(24, 24))
    exact = retrieve.RetrievalConfig(k=8, mode="cross_user", exact_threshold=10**9)
    approx = dataclasses.replace(exact, exact_threshold=50)
    _, r_exact, s_exact = retrieve.retrieve(**data, config=exact)
    _, r_approx, s_approx = retrieve.retrieve(**data, config=approx)
    assert s_exact["recall"] == 1.0 and s_exact["candidates"] == 0
    # The sampled recall of the exact top K by W reaches min_recall (64 candidates did not here).
    assert 0.99 <= s_approx["recall"] <= 1.0 and s_approx["candidates"] >= 128
    agree = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(r_exact, r_approx, strict=True)])
    assert agree >= 0.99
    # Per-user ScaNN indices (300-post banks) go through the same path.
    per_user = dataclasses.replace(approx, mode="per_user", recall_sample=50)
    _, r_user, s_user = retrieve.retrieve(**data, config=per_user)
    assert s_user["recall"] >= 0.99
    # recall_sample = 0: ScaNN unchecked, reported as None.
    _, _, s_none = retrieve.retrieve(**data, config=dataclasses.replace(per_user, recall_sample=0))
    assert s_none["recall"] is None and s_none["candidates"] == 64
    users = data["users"]
    assert (users[np.maximum(r_user, 0)] == users[:, None]).all()


def test_no_bank_and_zero_embeddings():
    data = _dataset([10, 6], seed=7)
    config = retrieve.RetrievalConfig(k=4, mode="fallback")
    no_bank = {**data, "in_bank": np.zeros(len(data["users"]), bool)}
    f_ret, retrieved, stats = retrieve.retrieve(**no_bank, config=config)
    assert (retrieved == -1).all() and (f_ret == 0).all()
    assert stats["num_empty_slots"] == retrieved.size and stats["recall"] == 1.0
    # A zero embedding has cosine 0 with everything: S_c = 0 (1/2 with the affine map).
    zero = {**data, "semantic": np.zeros_like(data["semantic"])}
    f_ret, retrieved, _ = retrieve.retrieve(**zero, config=config)
    np.testing.assert_array_equal(f_ret[..., 4][retrieved >= 0], 0.0)
    f_ret, retrieved, _ = retrieve.retrieve(
        **zero, config=dataclasses.replace(config, cosine="affine"))
    np.testing.assert_array_equal(f_ret[..., 4][retrieved >= 0], 0.5)
    assert (retrieved >= 0).all()


# ---------------------------------------------------------------------------- issue 12


def _hand_bank(background, *, semantic=None, keypoints=None, in_bank=None, groups=None,
               likes=None, days=None, users=None):
    """Posts from explicit arrays; defaults: one user, all in the bank, groups of one."""
    n = len(background)
    return dict(post_ids=np.array([f"p{i}" for i in range(n)]),
                users=np.array(users if users is not None else ["u"] * n),
                likes=np.array(likes if likes is not None else [100] * n),
                timestamps=np.array(days if days is not None else [0] * n) * DAY,
                group_ids=np.array(groups if groups is not None else [f"g{i}" for i in range(n)]),
                in_bank=np.array(in_bank if in_bank is not None else [True] * n),
                background=np.asarray(background, float),
                semantic=np.asarray(semantic if semantic is not None else background, float),
                keypoints=keypoints if keypoints is not None else [[]] * n)


def _pose_bank(n_plain=100, n_posed=6, n_queries=1):
    """n_queries queries (test split, one person each); then n_plain bank posts closer in
    embedding but without people, then n_posed a little farther with the queries' exact pose:
    W ranks those first."""
    person = _person(np.random.default_rng(0), np.full((17, 2), 100.0))
    angle = np.concatenate([np.zeros(n_queries), np.linspace(0.30, 0.35, n_plain),
                            np.linspace(0.45, 0.5, n_posed)])
    emb = np.stack([np.cos(angle), np.sin(angle)], 1)
    keypoints = [[person]] * n_queries + [[]] * n_plain + [[person]] * n_posed
    return _hand_bank(emb, keypoints=keypoints,
                      in_bank=[False] * n_queries + [True] * (n_plain + n_posed))


def test_top_k_by_full_w_past_the_embedding_candidates():
    # Issue 12 item 2 (fails before: the 64 best by embedding held none of the posed posts).
    data = _pose_bank()
    config = retrieve.RetrievalConfig(k=4)
    f_ret, retrieved, stats = retrieve.retrieve(**data, config=config)
    assert set(retrieved[0]) <= set(range(101, 107))  # all four slots posed
    expected = _brute_force(data, config, lambda q, r: q == 0 and _no_leak(data, q, r))
    _check_against(data, f_ret[:1], retrieved[:1], expected[:1], 4)  # others: near-ties
    assert stats["recall"] == 1.0 and stats["candidates"] == 0


def test_scann_widens_candidates_until_the_top_k_by_w_is_found():
    # Issue 12 item 2, ScaNN path: 8 candidates miss the posed posts; doubling finds them.
    data = _pose_bank(n_plain=300, n_queries=20)
    config = retrieve.RetrievalConfig(k=4, candidates=8, exact_threshold=50, recall_sample=400)
    _, retrieved, stats = retrieve.retrieve(**data, config=config)
    assert (retrieved[:20] >= 320).all()  # every query: the posed posts 320...325
    assert stats["recall"] >= 0.99 and stats["candidates"] > 8
    assert stats["recall"] >= 0.99 and stats["candidates"] > 64


def test_background_and_semantic_similarities_are_cosines():
    # Issue 12 item 3 (fails before: S = (1 + cos) / 2). Query 0; bank posts at cosines 0.8,
    # 0.28 and -0.6 (clipped to 0) in both aspects.
    angles = np.arccos([1.0, 0.8, 0.28, -0.6])
    emb = np.stack([np.cos(angles), np.sin(angles)], 1)
    data = _hand_bank(emb, in_bank=[False, True, True, True])
    f_ret, retrieved, _ = retrieve.retrieve(**data, config=retrieve.RetrievalConfig(k=3))
    np.testing.assert_array_equal(retrieved[0], [1, 2, 3])
    np.testing.assert_allclose(f_ret[0, :, 2], [0.8, 0.28, 0.0], atol=1e-6)  # S_b
    np.testing.assert_allclose(f_ret[0, :, 4], [0.8, 0.28, 0.0], atol=1e-6)  # S_c
    np.testing.assert_allclose(f_ret[0, :, 1], [0.64, 0.224, 0.0], atol=1e-6)  # W, no pose
    affine = retrieve.RetrievalConfig(k=3, cosine="affine")
    f_ret, _, _ = retrieve.retrieve(**data, config=affine)
    np.testing.assert_allclose(f_ret[0, :, 2], [0.9, 0.64, 0.2], atol=1e-6)


def test_training_query_group_left_out_of_local_popularity():
    # Issue 12 item 4 (fails before: the query's group counted in p_r's mean). One user, days
    # and likes by hand; group G = {0, 1} (training); posts 2, 3, 4 in the bank, 5 a test post.
    # Embeddings make every query retrieve post 2 first.
    days = [10, 12, 15, 30, 100, 14]
    likes = [1000, 3000, 200, 600, 50, 7]
    emb = np.array([[1.0, 0.1], [1.0, 0.2], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.05]])
    groups = ["G", "G", "a", "b", "c", "t"]
    data = _hand_bank(emb, groups=groups, likes=likes, days=days,
                      in_bank=[True] * 5 + [False])
    f_ret, retrieved, stats = retrieve.retrieve(**data, config=retrieve.RetrievalConfig(k=3))
    slot = int(np.flatnonzero(retrieved[5] == 2)[0])
    assert retrieved[0, 0] == 2
    # Post 2 (day 15) has neighbours 0, 1 and 3 (day 30: 15 days); post 4 is 85 days away.
    assert f_ret[0, 0, 0] == pytest.approx(200 / 600)  # query 0: its group out -> only post 3
    assert f_ret[5, slot, 0] == pytest.approx(200 / np.mean([1000, 3000, 600]))  # test query
    # Post 4 (day 100) has no neighbour at all: the default, counted.
    assert retrieved[0, 1] == 4 and f_ret[0, 1, 0] == 1.0
    # Post 3 (day 30) for query 0: neighbours 0, 1, 2 -> only post 2 left.
    assert retrieved[0, 2] == 3 and f_ret[0, 2, 0] == pytest.approx(600 / 200)
    # A query whose group leaves no neighbour gets the default too: post 2 for group {0, 1}
    # if post 3 were gone.
    solo = {k: v[[0, 1, 2, 4]] if isinstance(v, np.ndarray) else [v[i] for i in (0, 1, 2, 4)]
            for k, v in data.items()}
    f_solo, r_solo, stats = retrieve.retrieve(**solo, config=retrieve.RetrievalConfig(k=2))
    assert r_solo[0, 0] == 2 and f_solo[0, 0, 0] == 1.0
    assert stats["num_no_neighbours"] == 4  # (0, 2), (0, 4), (1, 2), (1, 4)
