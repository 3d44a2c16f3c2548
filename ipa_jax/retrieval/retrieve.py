# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Top-K retrieval from users' memory banks, assembled into the K x 5 features f_ret of Ji et al.

Similarity of a query x0 and a bank post xr, in [0, 1] (weights >= 0, summing to 1):

    W = w_p S_p + w_b S_b + w_c S_c,   S_b = max(cos_b, 0),   S_c = max(cos_c, 0),

S_p the best symmetric OKS between their people (`pose.symmetric_oks`; 0 when either shows no one),
cos_b / cos_c the cosines of background and semantic embeddings (a zero embedding has cosine 0).
S_b and S_c are the cosines of SPEC 2: backbone features pooled after a ReLU are non-negative, so
their cosine lies in [0, 1] already; the clip at 0 only acts on a user's own vectors with negative
entries, and makes opposed vectors as dissimilar as orthogonal ones. `cosine="affine"` maps
(1 + cos) / 2 instead (the mapping before issue 12; it halves the embedding terms' spread, so pose
weighs twice as much relative to them). Each query gets K rows [p_r, W, S_b, S_p, S_c] (float32),
best W first (equal W: lower row first); slots with no candidate left are zero rows (index -1).

Top K by the full W. An index of at most `exact_threshold` rows (a user's bank: hundreds to a few
thousand posts) is searched exactly: the embedding part E = w_b S_b + w_c S_c of every bank post
by one matmul, then S_p wherever it can matter. Since 0 <= S_p <= 1, E <= W <= E + w_p (and W = E
when either post shows no one); a post whose bound is below the K-th best E cannot be in the top
K, so its pose is never computed, and the result is the exact top K by W. A larger index uses
ScaNN over e = [sqrt(w_b) unit(b), sqrt(w_c) unit(c)] (<e_q, e_r> = w_b cos_b + w_c cos_c, the
embedding part's order): it fetches `candidates` allowed posts per query, ranks them by the full
W, and compares the result on `recall_sample` queries with the exact top K by W over the whole
index; while that recall is below `min_recall`, the candidates double (up to the whole index).

Local popularity p_r (`popularity`): l_r over the mean likes of r's user's other bank posts within
`window_days` of r; for a training query, the posts of the query's own group (itself included)
are left out of that mean too, so no label of a training pair reaches its features (SPEC 2).
Validation and test queries are in no bank: their p_r is the bank's.

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
COSINE_MAPS = ("clip", "affine")  # S = max(cos, 0) (SPEC 2) | (1 + cos) / 2 (before issue 12)
NUM_FEATURES = 5  # [p_r, W, S_b, S_p, S_c]
_GATHER_ELEMENTS = 1 << 21  # elements per [queries, candidates] tile (~10 float64 arrays of 16 MB)


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """Settings of `retrieve`; validated on construction."""

    k: int = 8
    w_pose: float = 0.2
    w_background: float = 0.4
    w_semantic: float = 0.4
    cosine: str = "clip"  # clip: S = max(cos, 0) | affine: S = (1 + cos) / 2
    window_days: float = 30.0
    mode: str = "per_user"  # per_user | cross_user | fallback
    min_bank_size: int = 20  # fallback: smaller banks fill remaining slots from other users
    exact_threshold: int = 2000  # indices up to this many rows: exact top K by W; above: ScaNN
    candidates: int = 64  # ScaNN: first number of candidates per query ranked by the full W
    min_recall: float = 0.99  # ScaNN: candidates double until the sampled recall reaches it
    recall_sample: int = 200  # ScaNN: queries checked against the exact top K by W
    seed: int = 0

    def __post_init__(self):
        weights = (self.w_pose, self.w_background, self.w_semantic)
        if min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"similarity weights must be >= 0 and sum to 1, got {weights}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.cosine not in COSINE_MAPS:
            raise ValueError(f"cosine must be one of {COSINE_MAPS}, got {self.cosine!r}")
        if self.k < 1 or self.candidates < self.k:
            raise ValueError(f"need 1 <= k <= candidates, got k={self.k}, "
                             f"candidates={self.candidates}")
        if not 0.0 < self.min_recall <= 1.0:
            raise ValueError(f"min_recall must be in (0, 1], got {self.min_recall}")
        if self.window_days <= 0 or self.min_bank_size < 0 or self.recall_sample < 0:
            raise ValueError("window_days must be > 0; min_bank_size, recall_sample >= 0")


@dataclasses.dataclass(frozen=True)
class _Posts:
    """Per-post arrays in the form retrieval uses (ids as integer codes)."""

    post: np.ndarray
    user: np.ndarray
    group: np.ndarray
    in_bank: np.ndarray
    likes: np.ndarray  # [N] float64
    timestamps: np.ndarray  # [N] float64 seconds
    background: np.ndarray  # [N, Db] unit rows (or zero)
    semantic: np.ndarray  # [N, Dc] unit rows (or zero)
    embedding: np.ndarray  # [N, Db + Dc] ScaNN search vectors e
    people: tuple  # pose.pack_people output
    has_people: np.ndarray  # [N] bool
    window_count: np.ndarray  # [N] bank neighbours within the window (bank posts; 0 elsewhere)
    window_likes: np.ndarray  # [N] their summed likes
    p_default: np.ndarray  # [N] bool: a bank post's p is the no-neighbour default (whole bank)
    bank_size: np.ndarray  # [N] number of bank posts of the post's user
    excluded: np.ndarray  # [N] bank posts a query may not retrieve (same post id or own group)
    group_members: np.ndarray  # bank rows sorted by group ...
    group_offsets: np.ndarray  # ... group g's are group_members[offsets[g]:offsets[g + 1]]


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
    embedding = np.concatenate([np.sqrt(config.w_background) * b,
                                np.sqrt(config.w_semantic) * c], 1).astype(np.float32)
    bank = np.flatnonzero(in_bank)
    window_count, window_likes = np.zeros(n, np.int64), np.zeros(n)
    for rows in _split_by(user, bank):
        window_count[rows], window_likes[rows] = popularity.window_totals(
            likes[rows], timestamps[rows], window_days=config.window_days)
    _, p_default = popularity.ratio(likes, window_count, window_likes)
    p_default &= in_bank
    count = lambda codes: np.bincount(codes[bank], minlength=n)[codes]
    excluded = count(post) + np.where(in_bank, count(group), 0)
    members = bank[np.argsort(group[bank], kind="stable")]
    offsets = np.searchsorted(group[members], np.arange(group.max(initial=-1) + 2))
    people = pose.pack_people([kp if kp is not None else [] for kp in keypoints])
    return _Posts(post=post, user=user, group=group, in_bank=in_bank, likes=likes,
                  timestamps=timestamps, background=b, semantic=c, embedding=embedding,
                  people=people, has_people=np.diff(people[2]) > 0, window_count=window_count,
                  window_likes=window_likes, p_default=p_default, bank_size=count(user),
                  excluded=excluded, group_members=members, group_offsets=offsets)


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
        for t in np.moveaxis(taken, 1, 0):  # [Q] each; -1 matches no candidate
            ok &= cand != np.where(t >= 0, t, -2)[:, None]
    return ok


def _cosine_map(cos: np.ndarray, config: RetrievalConfig) -> np.ndarray:
    cos = cos.astype(np.float64)
    if config.cosine == "affine":
        return np.clip((1.0 + cos) / 2.0, 0.0, 1.0)
    return np.clip(cos, 0.0, 1.0)


def _top_k(posts: _Posts, queries: np.ndarray, cand: np.ndarray, s_b: np.ndarray,
           s_c: np.ndarray, ok: np.ndarray, config: RetrievalConfig) -> tuple:
    """Exact top K by the full W among the candidates `cand` [Q, C] (rows) where `ok`.

    s_b, s_c: [Q, C] similarities. Pose is computed only where the bound E + w_p reaches the K-th
    best E (see the module docstring). Returns (rows [Q, k], f_ret [Q, k, 5] without p_r, number
    of pose pairs computed).
    """
    e = config.w_background * s_b + config.w_semantic * s_c
    low = np.where(ok, e, -np.inf)
    k = min(config.k, cand.shape[1])
    kth = -np.partition(-low, k - 1, axis=1)[:, k - 1:k]
    # Pairs whose S_p can matter: both show people, and the bound reaches the K-th best E.
    need = ok & posts.has_people[queries][:, None] & posts.has_people[np.maximum(cand, 0)]
    need &= (e + config.w_pose) >= kth
    s_p = np.zeros(cand.shape)
    qi, ci = np.nonzero(need)
    s_p[qi, ci] = pose.pair_pose_similarity(posts.people, queries[qi], cand[qi, ci])
    w = np.where(ok, e + config.w_pose * s_p, -np.inf)
    # Best W first; equal W by lower row (candidates are not always in row order).
    order = np.lexsort((np.where(ok, cand, np.iinfo(np.int64).max), -w), axis=1)[:, :config.k]
    keep = np.take_along_axis(ok, order, 1)
    rows = np.full((queries.size, config.k), -1, np.int64)
    feats = np.zeros((queries.size, config.k, NUM_FEATURES), np.float32)
    width = order.shape[1]
    rows[:, :width] = np.where(keep, np.take_along_axis(cand, order, 1), -1)
    for j, x in ((1, w), (2, s_b), (3, s_p), (4, s_c)):
        feats[:, :width, j] = np.where(keep, np.take_along_axis(x, order, 1), 0.0)
    return rows, feats, qi.size


def _exact(posts: _Posts, job: _Job, queries: np.ndarray, config: RetrievalConfig,
           taken: np.ndarray | None) -> tuple:
    """The exact top K by W of `queries` over the whole index `job.db`; (rows, f_ret, pairs)."""
    rows = np.empty((queries.size, config.k), np.int64)
    feats = np.empty((queries.size, config.k, NUM_FEATURES), np.float32)
    block, pairs = max(1, _GATHER_ELEMENTS // max(1, job.db.size)), 0
    for s in range(0, queries.size, block):
        q = queries[s:s + block]
        cand = np.broadcast_to(job.db, (q.size, job.db.size))
        s_b = _cosine_map(posts.background[q] @ posts.background[job.db].T, config)
        s_c = _cosine_map(posts.semantic[q] @ posts.semantic[job.db].T, config)
        ok = _allowed(posts, q, cand, job.other_users_only,
                      None if taken is None else taken[s:s + block])
        rows[s:s + block], feats[s:s + block], n = _top_k(posts, q, cand, s_b, s_c, ok, config)
        pairs += n
    return rows, feats, pairs


def _approximate(posts: _Posts, job: _Job, index, candidates: int, config: RetrievalConfig,
                 taken: np.ndarray | None) -> tuple:
    """Top K by W among ScaNN's `candidates` (allowed) nearest posts; (rows, f_ret, pairs)."""
    excluded = posts.excluded[job.queries]
    if job.other_users_only:
        excluded = excluded + posts.bank_size[job.queries]
    # Fetch enough that `candidates` remain after dropping the query's own post, group, user.
    kc = int(min(job.db.size, candidates + excluded.max(initial=0)))
    # ScaNN's default searches ~10% of the leaves; when kc is a large part of the index that
    # holds fewer than kc points, so search leaves holding ~10 kc points at least.
    leaves = math.ceil(10 * kc * index.num_leaves / index.size)
    local, scores = index.search(posts.embedding[job.queries], kc, leaves_to_search=min(
        index.num_leaves, max(index.num_leaves_to_search, leaves)))
    # Guards against padded approximate results (fewer neighbours found than asked for).
    found = (local >= 0) & (local < job.db.size) & np.isfinite(scores)
    cand = np.where(found, job.db[np.clip(local, 0, job.db.size - 1)], -1)
    rows = np.empty((job.queries.size, config.k), np.int64)
    feats = np.empty((job.queries.size, config.k, NUM_FEATURES), np.float32)
    width = max(posts.background.shape[1], posts.semantic.shape[1])
    block, pairs = max(1, _GATHER_ELEMENTS // (kc * width)), 0
    for s in range(0, job.queries.size, block):
        q, c = job.queries[s:s + block], cand[s:s + block]
        r = np.maximum(c, 0)
        s_b = _cosine_map(np.einsum("qd,qcd->qc", posts.background[q], posts.background[r]),
                          config)
        s_c = _cosine_map(np.einsum("qd,qcd->qc", posts.semantic[q], posts.semantic[r]), config)
        ok = _allowed(posts, q, c, job.other_users_only,
                      None if taken is None else taken[s:s + block])
        rows[s:s + block], feats[s:s + block], n = _top_k(posts, q, c, s_b, s_c, ok, config)
        pairs += n
    return rows, feats, pairs


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries with a non-empty exact top K of the share of it found, ties counted.

    found, truth: f_ret [Q, K, 5] of the approximate and the exact top K. A found post counts when
    its W reaches the exact K-th best W (less 1e-6 for round-off): it belongs to a top K by W.
    """
    size = (truth[..., 1] > 0).sum(1)  # filled slots (W > 0; a W of 0 ties with anything)
    kth = truth[np.arange(len(truth)), np.maximum(size - 1, 0), 1]
    hits = np.minimum((found[..., 1] >= kth[:, None] - 1e-6).sum(1), size)
    return float(np.mean(hits[size > 0] / size[size > 0])) if (size > 0).any() else 1.0


def _run_job(posts: _Posts, job: _Job, config: RetrievalConfig, sample: np.ndarray,
             taken: np.ndarray | None = None) -> tuple:
    """Retrieval for one job: (rows, f_ret without p_r, info); info holds, on ScaNN indices, the
    sampled recall of the exact top K by W, the number of queries sampled, the candidates reached.
    """
    if job.db.size <= config.exact_threshold:
        rows, feats, pairs = _exact(posts, job, job.queries, config, taken)
        return rows, feats, {"pairs": pairs}
    index = search.ScannIndex(posts.embedding[job.db], seed=config.seed)
    truth = None
    if sample.size:
        _, truth, _ = _exact(posts, job, job.queries[sample], config,
                             None if taken is None else taken[sample])
    candidates = config.candidates
    while True:
        rows, feats, pairs = _approximate(posts, job, index, candidates, config, taken)
        recall = None if truth is None else _recall(feats[sample], truth)
        if recall is None or recall >= config.min_recall or candidates >= job.db.size:
            break
        candidates *= 2
    return rows, feats, {"pairs": pairs, "recall": recall, "sampled": sample.size,
                         "candidates": min(candidates, job.db.size)}


def _local_popularity(posts: _Posts, queries: np.ndarray, rows: np.ndarray,
                      config: RetrievalConfig) -> tuple[np.ndarray, np.ndarray]:
    """p_r of the retrieved posts `rows` [M] for `queries` [M], and the mask of the defaults.

    The retrieved post's window over its user's bank, less the posts of a training query's own
    group (the query included) that lie in that window.
    """
    count, total = posts.window_count[rows].copy(), posts.window_likes[rows].copy()
    train = np.flatnonzero(posts.in_bank[queries])
    g = posts.group[queries[train]]
    start, size = posts.group_offsets[g], posts.group_offsets[g + 1] - posts.group_offsets[g]
    owner = np.repeat(train, size)
    m = posts.group_members[np.repeat(start, size) + np.arange(size.sum())
                            - np.repeat(np.cumsum(size) - size, size)]
    r = rows[owner]
    mate = (m != r) & (posts.user[m] == posts.user[r]) & popularity.in_window(
        posts.timestamps[m], posts.timestamps[r], config.window_days)
    count -= np.bincount(owner[mate], minlength=rows.size)
    total -= np.bincount(owner[mate], weights=posts.likes[m[mate]], minlength=rows.size)
    return popularity.ratio(posts.likes[rows], count, total)


def _fill(rows: np.ndarray, feats: np.ndarray, new_rows: np.ndarray,
          new_feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Puts the best of `new_*` into the empty slots of `rows`; all re-sorted by W."""
    k = rows.shape[1]
    free = (rows < 0).sum(1, keepdims=True)
    new_rows = np.where(np.arange(k) < free, new_rows, -1)
    all_rows = np.concatenate([rows, new_rows], 1)
    all_feats = np.concatenate([feats, np.where(new_rows[..., None] >= 0, new_feats, 0.0)], 1)
    w = np.where(all_rows >= 0, all_feats[..., 1], -np.inf)
    order = np.lexsort((np.where(all_rows >= 0, all_rows, np.iinfo(np.int64).max), -w),
                       axis=1)[:, :k]
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
             keypoints, config: RetrievalConfig, queries=None
             ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Retrieval features f_ret for every post (training, validation and test alike).

    Args: per post (N rows): post_ids, users, group_ids (str; posts in no group need unique ids);
      likes; timestamps (seconds); in_bank (bool, training split); background [N, Db] and
      semantic [N, Dc] embeddings (any norm); keypoints (per post a list of [17, 3] persons).
      queries: None (every post), or a bool [N] mask of the posts whose f_ret is wanted (the
      others get zero rows, at no cost; e.g. new drafts scored against a creator's bank).
    Returns: f_ret [N, K, 5] float32 rows [p_r, W, S_b, S_p, S_c] sorted by W (zero rows when
      empty), retrieved [N, K] row indices (-1 when empty), and stats (see below).

    stats: recall (on ScaNN indices, the share of the exact top K by W found, over up to
    `recall_sample` queries per index; 1.0 when every index is searched exactly, None when ScaNN
    ran unchecked because recall_sample = 0), num_recall_queries (the queries it was measured
    on), candidates (the most ScaNN candidates per query
    that reaching `min_recall` needed; 0 without ScaNN), num_pose_pairs (post pairs whose S_p was
    computed), num_no_neighbours (filled slots whose p_r is the no-neighbour default),
    num_bank_no_neighbours (bank posts with the default over their whole window),
    num_empty_slots, num_cold_start_queries (fallback searched other users for their empty
    slots), num_queries, num_bank_posts.
    """
    posts = _prepare(post_ids, users, likes, timestamps, group_ids, in_bank, background, semantic,
                     keypoints, config)
    n = posts.post.size
    rows = np.full((n, config.k), -1, np.int64)
    feats = np.zeros((n, config.k, NUM_FEATURES), np.float32)
    infos, cold = [], 0
    wanted = np.ones(n, bool) if queries is None else np.asarray(queries, bool)
    for job in _jobs(posts, config):
        job = dataclasses.replace(job, queries=job.queries[wanted[job.queries]])
        if not job.queries.size:
            continue
        taken = None
        if job.other_users_only:  # fallback: only queries with empty slots, only into those
            need = (rows[job.queries] < 0).any(1)
            cold = int(need.sum())
            job = _Job(job.db, job.queries[need], True)
            if not job.queries.size:
                continue
            taken = rows[job.queries]
        sample = np.zeros(0, np.int64)
        if job.db.size > config.exact_threshold:
            rng = np.random.default_rng(config.seed)
            sample = np.sort(rng.choice(job.queries.size, min(config.recall_sample,
                                                               job.queries.size), replace=False))
        new_rows, new_feats, info = _run_job(posts, job, config, sample, taken)
        infos.append(info)
        if taken is None:
            rows[job.queries], feats[job.queries] = new_rows, new_feats
        else:
            rows[job.queries], feats[job.queries] = _fill(rows[job.queries], feats[job.queries],
                                                          new_rows, new_feats)
    _check_leakage(posts, rows, config)
    filled = rows >= 0
    q, slot = np.nonzero(filled)
    p, p_default = _local_popularity(posts, q, rows[q, slot], config)
    feats[q, slot, 0] = p
    scann = [i for i in infos if "recall" in i]
    checked = [i for i in scann if i["recall"] is not None]
    sampled = sum(i["sampled"] for i in checked)
    recall = sum(i["recall"] * i["sampled"] for i in checked) / sampled if sampled else 1.0
    return feats, rows, {
        "recall": None if len(checked) < len(scann) else recall,
        "num_recall_queries": sampled,
        "candidates": max((i["candidates"] for i in scann), default=0),
        "num_pose_pairs": sum(i["pairs"] for i in infos),
        "num_no_neighbours": int(p_default.sum()),
        "num_bank_no_neighbours": int(posts.p_default.sum()),
        "num_empty_slots": int((~filled[wanted]).sum()),
        "num_cold_start_queries": cold,
        "num_queries": int(wanted.sum()),
        "num_bank_posts": int(posts.in_bank.sum()),
    }
