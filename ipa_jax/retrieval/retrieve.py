# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Top-K retrieval from users' memory banks, assembled into the K x 5 features f_ret of Ji et al.

Similarity of a query x0 and a bank post xr, in [0, 1] (weights >= 0, summing to 1):

    W = w_p S_p + w_b S_b + w_c S_c,   S_b = (1 + cos_b) / 2,   S_c = (1 + cos_c) / 2,

S_p the best OKS between their people (0 without people), cos_b / cos_c the cosines of background
and semantic embeddings (a zero embedding has cosine 0). The cosines are mapped to [0, 1] so that
W is a convex combination of [0, 1] similarities. Each query gets K rows [p_r, W, S_b, S_p, S_c]
(float32), best W first; slots with no candidate left are zero rows (retrieved index -1).

The embedding part equals an inner product, w_b S_b + w_c S_c = (w_b + w_c) / 2 + <e_q, e_r> with
e = [sqrt(w_b / 2) unit(b), sqrt(w_c / 2) unit(c)], so candidates come from a maximum-inner-product
search (exact or ScaNN, `search.build_index`) and are re-ranked with the full W. The search
fetches enough to leave `candidates` allowed posts per query, so the top K is exact whenever a
bank holds at most `candidates` allowed posts, or w_p = 0.

Modes: per_user searches the query's user's bank only; cross_user one index over all banks (p_r
still within r's own user's bank); fallback is per_user, after which queries of users with fewer
than `min_bank_size` bank posts fill their empty slots with the best posts of other users (their
own posts all stay; the K rows are re-sorted by W).

Leakage rules, verified on the output (AssertionError otherwise, also under `python -O`): only
bank (training) posts are retrieved, never the query itself (same row or same post id), never a
post of a training query's own group; per_user retrieves only the query's user's posts.
"""

import dataclasses
import math

import numpy as np

from ipa_jax.retrieval import popularity, pose, search

MODES = ("per_user", "cross_user", "fallback")
NUM_FEATURES = 5  # [p_r, W, S_b, S_p, S_c]
_GATHER_ELEMENTS = 1 << 23  # floats gathered per re-ranking block (~32 MB)


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """Settings of `retrieve`; validated on construction."""

    k: int = 8
    w_pose: float = 0.2
    w_background: float = 0.4
    w_semantic: float = 0.4
    window_days: float = 30.0
    mode: str = "per_user"  # per_user | cross_user | fallback
    min_bank_size: int = 20  # fallback: smaller banks fill remaining slots from other users
    exact_threshold: int = 2000  # indices over more rows use ScaNN
    candidates: int = 64  # embedding-similarity candidates re-ranked with the full W
    recall_sample: int = 200  # queries checked against exact search for stats["recall"]
    seed: int = 0

    def __post_init__(self):
        weights = (self.w_pose, self.w_background, self.w_semantic)
        if min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"similarity weights must be >= 0 and sum to 1, got {weights}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.k < 1 or self.candidates < self.k:
            raise ValueError(f"need 1 <= k <= candidates, got k={self.k}, "
                             f"candidates={self.candidates}")
        if self.window_days <= 0 or self.min_bank_size < 0 or self.recall_sample < 0:
            raise ValueError("window_days must be > 0; min_bank_size, recall_sample >= 0")


@dataclasses.dataclass(frozen=True)
class _Posts:
    """Per-post arrays in the form retrieval uses (ids as integer codes)."""

    post: np.ndarray
    user: np.ndarray
    group: np.ndarray
    in_bank: np.ndarray
    background: np.ndarray  # [N, Db] unit rows (or zero)
    semantic: np.ndarray  # [N, Dc] unit rows (or zero)
    embedding: np.ndarray  # [N, Db + Dc] search vectors e
    people: tuple  # pose.pack_people output
    p: np.ndarray  # [N] local popularity of bank posts (NaN elsewhere)
    p_default: np.ndarray  # [N] bool: p is the no-neighbour default
    bank_size: np.ndarray  # [N] number of bank posts of the post's user
    excluded: np.ndarray  # [N] bank posts a query may not retrieve (same post id or own group)


@dataclasses.dataclass(frozen=True)
class _Job:
    """One index over `db` rows, searched by `queries` rows."""

    db: np.ndarray
    queries: np.ndarray
    other_users_only: bool = False


def _codes(values, n: int, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {values.shape}")
    return np.unique(values, return_inverse=True)[1].astype(np.int64).reshape(n)


def _unit(x, n: int, name: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, D), got {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def _split_by(keys: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """`rows` grouped by `keys[rows]` (one array per key present, rows ascending within)."""
    rows = rows[np.argsort(keys[rows], kind="stable")]
    cuts = np.flatnonzero(np.diff(keys[rows])) + 1
    return np.split(rows, cuts) if rows.size else []


def _prepare(post_ids, users, likes, timestamps, group_ids, in_bank, background, semantic,
             keypoints, config: RetrievalConfig) -> _Posts:
    n = len(post_ids)
    in_bank = np.asarray(in_bank, bool)
    likes, timestamps = np.asarray(likes, np.float64), np.asarray(timestamps, np.float64)
    if in_bank.shape != (n,) or likes.shape != (n,) or timestamps.shape != (n,):
        raise ValueError("in_bank, likes and timestamps need one entry per post")
    if len(keypoints) != n:
        raise ValueError(f"keypoints must have {n} entries, got {len(keypoints)}")
    post, user = _codes(post_ids, n, "post_ids"), _codes(users, n, "users")
    group = _codes(group_ids, n, "group_ids")
    b, c = _unit(background, n, "background"), _unit(semantic, n, "semantic")
    embedding = np.concatenate([np.sqrt(config.w_background / 2) * b,
                                np.sqrt(config.w_semantic / 2) * c], 1).astype(np.float32)
    bank = np.flatnonzero(in_bank)
    p, p_default = np.full(n, np.nan), np.zeros(n, bool)
    for rows in _split_by(user, bank):
        p[rows], p_default[rows] = popularity.local_popularity_with_mask(
            likes[rows], timestamps[rows], window_days=config.window_days)
    count = lambda codes: np.bincount(codes[bank], minlength=n)[codes]
    excluded = count(post) + np.where(in_bank, count(group), 0)
    return _Posts(post=post, user=user, group=group, in_bank=in_bank, background=b, semantic=c,
                  embedding=embedding,
                  people=pose.pack_people([kp if kp is not None else [] for kp in keypoints]),
                  p=p, p_default=p_default, bank_size=count(user), excluded=excluded)


def _jobs(posts: _Posts, config: RetrievalConfig) -> list[_Job]:
    n = posts.post.size
    bank = np.flatnonzero(posts.in_bank)
    if config.mode == "cross_user":
        return [_Job(bank, np.arange(n))] if bank.size else []
    jobs = [_Job(rows[posts.in_bank[rows]], rows)
            for rows in _split_by(posts.user, np.arange(n)) if posts.in_bank[rows].any()]
    small = np.flatnonzero(posts.bank_size < config.min_bank_size)
    if config.mode == "fallback" and small.size and bank.size:
        jobs.append(_Job(bank, small, other_users_only=True))
    return jobs


def _allowed(posts: _Posts, queries: np.ndarray, cand: np.ndarray, other_users_only: bool,
             taken: np.ndarray | None) -> np.ndarray:
    """[Q, C] mask of the candidates `cand` (rows, -1 = none) that `queries` may retrieve."""
    r, q = np.maximum(cand, 0), queries[:, None]
    ok = (cand >= 0) & posts.in_bank[r] & (r != q) & (posts.post[r] != posts.post[q])
    ok &= ~(posts.in_bank[q] & (posts.group[r] == posts.group[q]))
    if other_users_only:
        ok &= posts.user[r] != posts.user[q]
    if taken is not None:
        ok &= ~(cand[:, :, None] == np.where(taken >= 0, taken, -2)[:, None, :]).any(-1)
    return ok


def _similarities(posts: _Posts, q: np.ndarray, r: np.ndarray,
                  config: RetrievalConfig) -> np.ndarray:
    """[M, 4] rows [W, S_b, S_p, S_c] for the pairs (q[m], r[m])."""
    cos_b = np.einsum("md,md->m", posts.background[q], posts.background[r])
    cos_c = np.einsum("md,md->m", posts.semantic[q], posts.semantic[r])
    s_b = np.clip((1.0 + cos_b.astype(np.float64)) / 2.0, 0.0, 1.0)
    s_c = np.clip((1.0 + cos_c.astype(np.float64)) / 2.0, 0.0, 1.0)
    s_p = pose.pair_pose_similarity(posts.people, q, r)
    w = config.w_pose * s_p + config.w_background * s_b + config.w_semantic * s_c
    return np.stack([w, s_b, s_p, s_c], 1)


def _rank(posts: _Posts, queries: np.ndarray, cand: np.ndarray, ok: np.ndarray,
          config: RetrievalConfig) -> tuple[np.ndarray, np.ndarray]:
    """The first `candidates` allowed candidates re-ranked by W; (rows [Q, k], f_ret [Q, k, 5])."""
    pos = np.argsort(~ok, axis=1, kind="stable")[:, :config.candidates]
    cand, ok = np.take_along_axis(cand, pos, 1), np.take_along_axis(ok, pos, 1)
    sims = np.zeros(cand.shape + (4,))
    sims[ok] = _similarities(posts, np.broadcast_to(queries[:, None], cand.shape)[ok], cand[ok],
                             config)
    w = np.where(ok, sims[..., 0], -np.inf)
    order = np.argsort(-w, axis=1, kind="stable")[:, :config.k]
    width = order.shape[1]
    rows = np.full((queries.size, config.k), -1, np.int64)
    feats = np.zeros((queries.size, config.k, NUM_FEATURES), np.float32)
    keep = np.take_along_axis(ok, order, 1)
    rows[:, :width] = np.where(keep, np.take_along_axis(cand, order, 1), -1)
    feats[:, :width, 1:] = np.take_along_axis(sims, order[..., None], 1) * keep[..., None]
    feats[:, :width, 0] = np.where(keep, posts.p[np.maximum(rows[:, :width], 0)], 0.0)
    return rows, feats


def _run_job(posts: _Posts, job: _Job, config: RetrievalConfig, sample: np.ndarray,
             taken: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    """Retrieval for one job; also (recall, number of queries) over `sample` if approximate."""
    excluded = posts.excluded[job.queries]
    if job.other_users_only:
        excluded = excluded + posts.bank_size[job.queries]
    # Fetch enough that `candidates` remain after dropping the query's own post, group, user.
    kc = int(min(job.db.size, config.candidates + excluded.max(initial=0)))
    index = search.build_index(posts.embedding[job.db], exact_threshold=config.exact_threshold,
                               seed=config.seed)
    if isinstance(index, search.ScannIndex):
        # ScaNN's default searches ~10% of the leaves; when kc is a large part of the index that
        # holds fewer than kc points, so search leaves holding ~10 kc points at least.
        leaves = math.ceil(10 * kc * index.num_leaves / index.size)
        local, scores = index.search(posts.embedding[job.queries], kc, leaves_to_search=min(
            index.num_leaves, max(index.num_leaves_to_search, leaves)))
    else:
        local, scores = index.search(posts.embedding[job.queries], kc)
    recall = None
    if sample.size and isinstance(index, search.ScannIndex):
        truth, _ = search.exact_search(posts.embedding[job.db],
                                       posts.embedding[job.queries[sample]], kc)
        recall = (search.recall_at_k(local[sample], truth), sample.size)
    # Guards against padded approximate results (fewer neighbours found than asked for).
    found = (local >= 0) & (local < job.db.size) & np.isfinite(scores)
    cand = np.where(found, job.db[np.clip(local, 0, job.db.size - 1)], -1)
    rows = np.empty((job.queries.size, config.k), np.int64)
    feats = np.empty((job.queries.size, config.k, NUM_FEATURES), np.float32)
    width = max(posts.embedding.shape[1], 3 * pose.NUM_KEYPOINTS)
    block = max(1, _GATHER_ELEMENTS // (min(kc, config.candidates) * width))
    for s in range(0, job.queries.size, block):
        q, c = job.queries[s:s + block], cand[s:s + block]
        ok = _allowed(posts, q, c, job.other_users_only,
                      None if taken is None else taken[s:s + block])
        rows[s:s + block], feats[s:s + block] = _rank(posts, q, c, ok, config)
    return rows, feats, recall


def _recall_samples(jobs: list[_Job], config: RetrievalConfig) -> list[np.ndarray]:
    """Per job, the query positions checked against exact search (only on ScaNN indices)."""
    sizes = np.array([j.queries.size if j.db.size > config.exact_threshold else 0 for j in jobs])
    total = int(sizes.sum())
    rng = np.random.default_rng(config.seed)
    picked = np.sort(rng.choice(total, min(config.recall_sample, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return [picked[(picked >= a) & (picked < b)] - a
            for a, b in zip(starts[:-1], starts[1:], strict=True)]


def _remap(sample: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Positions `sample` of a query list, after filtering that list by the mask `keep`."""
    new_pos = np.cumsum(keep) - 1
    return new_pos[sample[keep[sample]]]


def _fill(rows: np.ndarray, feats: np.ndarray, new_rows: np.ndarray,
          new_feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Puts the best of `new_*` into the empty slots of `rows`; all re-sorted by W."""
    k = rows.shape[1]
    free = (rows < 0).sum(1, keepdims=True)
    new_rows = np.where(np.arange(k) < free, new_rows, -1)
    all_rows = np.concatenate([rows, new_rows], 1)
    all_feats = np.concatenate([feats, np.where(new_rows[..., None] >= 0, new_feats, 0.0)], 1)
    w = np.where(all_rows >= 0, all_feats[..., 1], -np.inf)
    order = np.argsort(-w, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(all_rows, order, 1),
            np.take_along_axis(all_feats, order[..., None], 1))


def _check_leakage(posts: _Posts, rows: np.ndarray, config: RetrievalConfig) -> None:
    """Raises AssertionError if any retrieved post breaks a leakage rule."""
    q, slot = np.nonzero(rows >= 0)
    r = rows[q, slot]
    violations = {
        "a post outside the memory banks": ~posts.in_bank[r],
        "the query itself": (r == q) | (posts.post[r] == posts.post[q]),
        "the training query's own group": posts.in_bank[q] & (posts.group[r] == posts.group[q]),
    }
    same_user = posts.bank_size[q] >= (config.min_bank_size if config.mode == "fallback" else 0)
    if config.mode != "cross_user":
        violations["another user's post"] = same_user & (posts.user[r] != posts.user[q])
    ordered = np.sort(np.where(rows >= 0, rows, -1 - np.arange(rows.shape[1])), 1)
    violations["a post twice"] = (ordered[:, 1:] == ordered[:, :-1]).any(1)
    for what, bad in violations.items():
        if bad.any():
            raise AssertionError(f"retrieval leakage: {int(bad.sum())} retrievals of {what}")


def retrieve(*, post_ids, users, likes, timestamps, group_ids, in_bank, background, semantic,
             keypoints, config: RetrievalConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Retrieval features f_ret for every post (training, validation and test alike).

    Args: per post (N rows): post_ids, users, group_ids (str; posts in no group need unique ids);
      likes; timestamps (seconds); in_bank (bool, training split); background [N, Db] and
      semantic [N, Dc] embeddings (any norm); keypoints (per post a list of [17, 3] persons).
    Returns: f_ret [N, K, 5] float32 rows [p_r, W, S_b, S_p, S_c] sorted by W (zero rows when
      empty), retrieved [N, K] row indices (-1 when empty), and stats (see below).

    stats: recall (candidate recall of ScaNN vs exact search on up to `recall_sample` queries; 1.0
    when all searches are exact), num_no_neighbours (filled slots whose p_r is the no-neighbour
    default), num_bank_no_neighbours (bank posts with the default), num_empty_slots,
    num_cold_start_queries (fallback searched other users for their empty slots), num_queries,
    num_bank_posts.
    """
    posts = _prepare(post_ids, users, likes, timestamps, group_ids, in_bank, background, semantic,
                     keypoints, config)
    n = posts.post.size
    rows = np.full((n, config.k), -1, np.int64)
    feats = np.zeros((n, config.k, NUM_FEATURES), np.float32)
    jobs = _jobs(posts, config)
    recalls, cold = [], 0
    for job, sample in zip(jobs, _recall_samples(jobs, config), strict=True):
        if job.other_users_only:  # fallback: only queries with empty slots, only into those
            need = (rows[job.queries] < 0).any(1)
            cold = int(need.sum())
            job, sample = _Job(job.db, job.queries[need], True), _remap(sample, need)
            if not job.queries.size:
                continue
            new_rows, new_feats, recall = _run_job(posts, job, config, sample,
                                                   taken=rows[job.queries])
            rows[job.queries], feats[job.queries] = _fill(rows[job.queries], feats[job.queries],
                                                          new_rows, new_feats)
        else:
            rows[job.queries], feats[job.queries], recall = _run_job(posts, job, config, sample)
        if recall is not None:
            recalls.append(recall)
    _check_leakage(posts, rows, config)
    filled = rows >= 0
    sampled = sum(m for _, m in recalls)
    return feats, rows, {
        "recall": sum(r * m for r, m in recalls) / sampled if sampled else 1.0,
        "num_no_neighbours": int(posts.p_default[rows[filled]].sum()),
        "num_bank_no_neighbours": int(posts.p_default.sum()),
        "num_empty_slots": int((~filled).sum()),
        "num_cold_start_queries": cold,
        "num_queries": n,
        "num_bank_posts": int(posts.in_bank.sum()),
    }
