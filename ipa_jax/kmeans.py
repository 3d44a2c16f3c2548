# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Plain k-means (k-means++ seeding, Lloyd iterations) in float64 numpy, deterministic per seed.

Used to initialise the latent senses of the ranking SVM from CNN features (~1000 x 2048, k <= 20),
where one Lloyd iteration is a single [N, D] x [D, k] product.
"""

import numpy as np


def _sq_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [N, k], clipped at 0 against cancellation."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre is drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    centroids = [x[rng.integers(n)]]
    closest = _sq_distances(x, centroids[0][None])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        # All points already coincide with a centre (duplicates): fall back to a uniform draw.
        p = closest / total if total > 0 else np.full(n, 1.0 / n)
        centroids.append(x[rng.choice(n, p=p)])
        closest = np.minimum(closest, _sq_distances(x, centroids[-1][None])[:, 0])
    return np.stack(centroids)


def _means(x: np.ndarray, labels: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Cluster means; an empty cluster moves to the point farthest from its current centre."""
    k = old.shape[0]
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros_like(old)
    np.add.at(sums, labels, x)
    centroids = sums / np.maximum(counts, 1.0)[:, None]
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        dist = _sq_distances(x, old)[np.arange(x.shape[0]), labels]
        far = np.argsort(-dist, kind="stable")[: empty.size]
        centroids[empty] = x[far]
    return centroids


def kmeans(
    x: np.ndarray, k: int, *, seed: int = 0, iters: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Clusters the rows of `x` [N, D] into `k` groups.

    Returns `(centroids [k, D], labels [N])` with `labels` the nearest centroid of each row; once
    Lloyd's iterations have converged (labels stable, normally well within `iters`) every
    centroid is the mean of its rows.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be [N, D], got shape {x.shape}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be in [1, N={x.shape[0]}], got {k}")
    rng = np.random.default_rng(seed)
    centroids = _kmeans_pp(x, k, rng)
    labels = _sq_distances(x, centroids).argmin(1)
    for _ in range(iters):
        centroids = _means(x, labels, centroids)
        new_labels = _sq_distances(x, centroids).argmin(1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return centroids, labels
