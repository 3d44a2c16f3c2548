# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Maximum-inner-product nearest-neighbour search: exact (blocked numpy) and approximate (ScaNN).

- `exact_search`: brute force, float32, blocked over database rows with a running top-k.
- `ScannIndex`: ScaNN tree + anisotropic hashing + exact reordering, defaults derived from N.
- `build_index`: exact below a size threshold (where ScaNN's training is not worth it), else ScaNN.
- `recall_at_k`: overlap of approximate with exact neighbours.

All searches return `(indices [Q, k] int64, scores [Q, k] float32)`, sorted by descending score.
"""

from __future__ import annotations

import math

import numpy as np

# Queries per matmul: a [1024, 4096] float32 score tile (16 MB) was fastest on 2 cores.
_QUERY_BLOCK = 1024


def _as_matrix(x, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {x.shape}")
    return x


def _check_inputs(database, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
    database, queries = _as_matrix(database, "database"), _as_matrix(queries, "queries")
    if database.shape[1] != queries.shape[1]:
        raise ValueError(f"dimension mismatch: database {database.shape}, queries {queries.shape}")
    if not 1 <= k <= database.shape[0]:
        raise ValueError(f"k must be in [1, N={database.shape[0]}], got {k}")
    return database, queries


def _top_k_unsorted(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and values of the k largest entries per row, in no particular order."""
    width = scores.shape[1]
    if k == width:
        pos = np.broadcast_to(np.arange(width), scores.shape)
    else:
        pos = np.argpartition(scores, width - k, axis=1)[:, width - k:]
    return pos, np.take_along_axis(scores, pos, axis=1)


def _merge(top_s: np.ndarray, top_i: np.ndarray, scores: np.ndarray, offset: int) -> None:
    """Folds a block of scores into the running top-k (in place).

    Only entries beating the row's current k-th best are gathered: after the first few blocks
    that is a handful per row, so the per-block cost is one comparison pass, not a partition.
    (A flat np.flatnonzero; the 2-D np.nonzero is ~10x slower.) Strict `>` keeps the earlier
    entry on ties, so results do not depend on anything but the inputs.
    """
    k, width = top_s.shape[1], scores.shape[1]
    flat = np.flatnonzero(scores > top_s.min(axis=1, keepdims=True))
    if flat.size == 0:
        return
    rows, cols = np.divmod(flat, width)
    counts = np.bincount(rows, minlength=scores.shape[0])
    active = np.flatnonzero(counts)
    # Rank of each hit within its row (flat order is row-major), to scatter into a padded tile.
    rank = np.arange(flat.size) - (np.cumsum(counts) - counts)[rows]
    slot = (np.cumsum(counts > 0) - 1)[rows]
    extra = int(counts.max())
    cand_s = np.full((active.size, k + extra), -np.inf, np.float32)
    cand_i = np.full((active.size, k + extra), -1, np.int64)
    cand_s[:, :k], cand_i[:, :k] = top_s[active], top_i[active]
    cand_s[slot, k + rank] = scores.ravel()[flat]
    cand_i[slot, k + rank] = cols + offset
    pos, vals = _top_k_unsorted(cand_s, k)
    top_s[active], top_i[active] = vals, np.take_along_axis(cand_i, pos, axis=1)


def _exact_query_block(database: np.ndarray, queries: np.ndarray, k: int,
                       block: int) -> tuple[np.ndarray, np.ndarray]:
    # The first tile holds at least k rows so the running top-k starts full (no -inf padding).
    first = min(database.shape[0], max(block, k))
    top_i, top_s = _top_k_unsorted(queries @ database[:first].T, k)
    top_i = np.ascontiguousarray(top_i, dtype=np.int64)
    for start in range(first, database.shape[0], block):
        _merge(top_s, top_i, queries @ database[start:start + block].T, start)
    order = np.lexsort((top_i, -top_s), axis=1)  # Score descending, then index ascending.
    return np.take_along_axis(top_i, order, axis=1), np.take_along_axis(top_s, order, axis=1)


def exact_search(database, queries, k: int, *, block: int = 4096,
                 query_block: int = _QUERY_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product search in float32.

    Args: database [N, D]; queries [Q, D]; k in [1, N]; block / query_block: tile sizes.
    Returns: (indices [Q, k] int64, scores [Q, k] float32), best first; equal scores by index.
    """
    database, queries = _check_inputs(database, queries, k)
    if block < 1 or query_block < 1:
        raise ValueError(f"block sizes must be positive, got {block}, {query_block}")
    indices = np.empty((queries.shape[0], k), np.int64)
    scores = np.empty((queries.shape[0], k), np.float32)
    for q0 in range(0, queries.shape[0], query_block):
        q1 = q0 + query_block
        indices[q0:q1], scores[q0:q1] = _exact_query_block(database, queries[q0:q1], k, block)
    return indices, scores


class ExactIndex:
    """Brute-force index with the same `.search` interface as `ScannIndex`."""

    def __init__(self, database, *, block: int = 4096):
        self.database = _as_matrix(database, "database")
        self.block = block

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(self.database, queries, k, block=self.block)


def _import_scann():
    try:
        from scann.scann_ops.py import scann_ops_pybind
    except ImportError as e:  # scann wheels exist only for some platforms / TF versions.
        raise ImportError("ScannIndex needs the `scann` package (pip install scann==1.4.2, "
                          "Linux x86-64, beside tensorflow 2.20); use exact_search instead.") from e
    return scann_ops_pybind


class ScannIndex:
    """ScaNN dot-product index: k-means tree, anisotropic hashing, exact float32 reordering.

    Defaults from N: ~sqrt(N) leaves (at least ~50 points each), 10% of leaves searched,
    max(10 k, 100) candidates reordered exactly, the tree's k-means trained on up to
    max(100k, 128 per leaf) points, the hashing codebooks on up to 100k of them.
    Builds are deterministic given `seed` (same data, same machine).
    """

    def __init__(self, database, *, num_leaves: int | None = None,
                 num_leaves_to_search: int | None = None, reorder: int | None = None,
                 training_sample_size: int | None = None, dimensions_per_block: int = 2,
                 anisotropic_threshold: float = 0.2, seed: int = 0):
        scann_ops_pybind = _import_scann()
        database = _as_matrix(database, "database")
        n = database.shape[0]
        if n < 1:
            raise ValueError("database is empty")
        if num_leaves is None:
            num_leaves = max(1, min(round(math.sqrt(n)), n // 50))
        if num_leaves_to_search is None:
            num_leaves_to_search = max(1, math.ceil(0.1 * num_leaves))
        if training_sample_size is None:
            # ~50 sampled points per leaf placed leaves badly (1M mixture, 2000 leaves: recall@10
            # 0.82 at 5% of leaves searched; 0.99 with 125 per leaf).
            training_sample_size = min(n, max(100_000, 128 * num_leaves))
        self.num_leaves = int(num_leaves)
        self.num_leaves_to_search = int(min(num_leaves_to_search, self.num_leaves))
        self.reorder = reorder
        self.size, self.dim = database.shape
        builder = scann_ops_pybind.builder(database, 10, "dot_product")
        if self.num_leaves > 1:
            # k-means++ seeding: ScaNN's default random seeding ignores `clustering_seed`, so
            # two builds of the same data would partition differently.
            builder = builder.tree(num_leaves=self.num_leaves,
                                   num_leaves_to_search=self.num_leaves_to_search,
                                   training_sample_size=int(training_sample_size),
                                   random_init=False)
        # 10k-100k training points gave the same recall for the 16-centre codebooks; more only
        # slows the build.
        builder = builder.score_ah(dimensions_per_block,
                                   anisotropic_quantization_threshold=anisotropic_threshold,
                                   training_sample_size=int(min(training_sample_size, 100_000)))
        config = builder.reorder(reorder if reorder is not None else 100).create_config()
        # The builder exposes no seeds; the config proto does (k-means of the tree and of AH).
        config = config.replace("partitioning {", f"partitioning {{ clustering_seed: {seed}", 1)
        config = config.replace("asymmetric_hash {", f"asymmetric_hash {{ clustering_seed: {seed} "
                                f"sampling_seed: {seed}", 1)
        self._searcher = scann_ops_pybind.create_searcher(database, config)

    def search(self, queries, k: int, *, leaves_to_search: int | None = None,
               reorder: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k by inner product.

        Args: queries [Q, D]; k in [1, N]; leaves_to_search / reorder: per-call overrides.
        Returns: (indices [Q, k] int64, scores [Q, k] float32), best first; slots left empty
            (the searched leaves hold fewer than k points) are index -1, score -inf.
        """
        queries = _as_matrix(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, index {self.dim}")
        if not 1 <= k <= self.size:
            raise ValueError(f"k must be in [1, N={self.size}], got {k}")
        leaves = self.num_leaves_to_search if leaves_to_search is None else leaves_to_search
        pre = reorder if reorder is not None else self.reorder
        pre = max(k, pre if pre is not None else max(10 * k, 100))
        if leaves < 1:  # ScaNN would read -1 as "its default" and 0 as an error.
            raise ValueError(f"leaves_to_search must be >= 1, got {leaves}")
        if queries.shape[0] == 0:
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
        idx, dist = self._searcher.search_batched_parallel(
            queries, final_num_neighbors=k, pre_reorder_num_neighbors=pre,
            leaves_to_search=min(leaves, self.num_leaves))
        idx, dist = np.asarray(idx, np.int64), np.asarray(dist, np.float32)
        # ScaNN pads with (0, NaN) when the searched leaves hold fewer than k points.
        missing = ~np.isfinite(dist)
        idx[missing], dist[missing] = -1, -np.inf
        return idx, dist


def build_index(database, *, exact_threshold: int = 2000, **scann_options):
    """An `ExactIndex` when N <= exact_threshold, else a `ScannIndex(database, **scann_options)`."""
    if np.shape(database)[0] <= exact_threshold:
        return ExactIndex(database)
    return ScannIndex(database, **scann_options)


def recall_at_k(found, truth) -> float:
    """Mean over queries of |set(found_q) & set(truth_q)| / k, with k = truth.shape[1]."""
    found, truth = np.asarray(found), np.asarray(truth)
    if found.ndim != 2 or truth.ndim != 2 or found.shape[0] != truth.shape[0]:
        raise ValueError(f"need [Q, k] arrays with equal Q, got {found.shape}, {truth.shape}")
    if truth.shape[0] == 0 or truth.shape[1] == 0:
        raise ValueError("recall of an empty result is undefined")
    found = np.sort(found, axis=1)
    first = np.ones(found.shape, bool)  # Count each distinct found index once, as a set does.
    first[:, 1:] = found[:, 1:] != found[:, :-1]
    hits = ((found[:, :, None] == truth[:, None, :]).any(axis=2) & first).sum(axis=1)
    return float(np.mean(hits / truth.shape[1]))
