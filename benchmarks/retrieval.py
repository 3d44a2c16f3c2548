# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Benchmark of exact vs ScaNN maximum-inner-product search on global indices (prints tables).

    python benchmarks/retrieval.py [--n 1000000] [--dim 256] [--queries 1000]
                                   [--real_embeddings PATH.npz]

Datasets: (a) unit vectors from a mixture of Gaussian clusters (centres uniform on the sphere),
(b) uniformly random unit vectors (no structure: the hard case for partitioning), (c) the
L2-normalised `features` of an npz (e.g. `<prepared>/features/*.npz` of ipa_jax.features), with
held-out rows as queries. For each: exact brute force, then ScaNN settings with build time,
batched QPS (all queries in one call, best of --repeats), recall@k against exact, and speed-up.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ipa_jax.retrieval import search  # noqa: E402

_CHUNK = 100_000  # rows generated at a time, so float64 temporaries stay ~200 MB


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def mixture(n: int, dim: int, centres: np.ndarray, sigma: float,
            rng: np.random.Generator) -> np.ndarray:
    """Unit vectors: normalise(centre + sigma * N(0, I)), centres drawn uniformly."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        x = centres[rng.integers(len(centres), size=m)] + sigma * rng.standard_normal((m, dim))
        out[start:start + m] = _unit(x)
    return out


def uniform(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random unit vectors (normalised isotropic Gaussians)."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        out[start:start + m] = _unit(rng.standard_normal((m, dim)))
    return out


def real(path: str, num_queries: int, rng: np.random.Generator):
    """(database, queries) from an npz `features` array; None (with a message) when absent."""
    if not os.path.exists(path):
        print(f"\n(c) real embeddings: {path} not found, skipped.")
        return None
    feats = np.load(path)["features"].astype(np.float32)
    feats = feats.reshape(len(feats), -1)
    feats = feats[np.linalg.norm(feats, axis=1) > 0]
    num_queries = min(num_queries, len(feats) // 10)
    if num_queries < 1:
        print(f"\n(c) real embeddings: {path} has too few rows ({len(feats)}), skipped.")
        return None
    order = rng.permutation(len(feats))
    return _unit(feats[order[num_queries:]]), _unit(feats[order[:num_queries]])


def timed(repeats: int, fn, *args, **kwargs):
    """(best wall seconds over `repeats` calls of fn(*args, **kwargs), result of the last)."""
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, out


def scann_settings(n: int, k: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """[(num_leaves, [(leaves_to_search, reorder), ...]), ...] scaled to the database size.

    ~sqrt(n) and ~2 sqrt(n) leaves (1000 / 2000 at n = 1M), 1-10% of them searched, 3k or 10k
    candidates reordered exactly.
    """
    base = max(2, min(round(math.sqrt(n)), n // 100))
    return [(leaves, [(max(1, round(frac * leaves)), mult * k)
                      for frac in (0.01, 0.02, 0.05, 0.1) for mult in (3, 10)])
            for leaves in (base, 2 * base)]


def bench(database: np.ndarray, queries: np.ndarray, k: int, repeats: int) -> None:
    n, q = len(database), len(queries)
    exact_s, (truth, truth_scores) = timed(repeats, search.exact_search, database, queries, k)
    exact_qps = q / exact_s
    pairs = np.random.default_rng(0).integers(n, size=(2, 2000))
    cos = (database[pairs[0]] * database[pairs[1]]).sum(1)
    print(f"  inner products: random database pairs {cos.mean():.3f} +- {cos.std():.3f}; "
          f"exact top-1 {truth_scores[:, 0].mean():.3f}, top-{k} {truth_scores[:, -1].mean():.3f}")
    header = (f"  {'method':<8}{'leaves':>7}{'search':>8}{'reorder':>8}{'build s':>9}"
              f"{'QPS':>9}{f'recall@{k}':>11}{'speed-up':>10}")
    print(header)
    print("  " + "-" * (len(header) - 2))
    print(f"  {'exact':<8}{'-':>7}{'-':>8}{'-':>8}{'-':>9}{exact_qps:>9.0f}{1.0:>11.4f}"
          f"{1.0:>9.1f}x")
    if n <= 1000:
        print("  (database too small for ScaNN settings)")
        return
    for leaves, searches in scann_settings(n, k):
        build_s, index = timed(1, search.ScannIndex, database, num_leaves=leaves)
        for to_search, reorder in searches:
            secs, (found, _) = timed(repeats, index.search, queries, k,
                                     leaves_to_search=to_search, reorder=reorder)
            recall = search.recall_at_k(found, truth)
            print(f"  {'scann':<8}{leaves:>7}{to_search:>8}{reorder:>8}{build_s:>9.1f}"
                  f"{q / secs:>9.0f}{recall:>11.4f}{exact_s / secs:>9.1f}x")
        del index
        gc.collect()
    sys.stdout.flush()


def mixture_spread(dim: int, sigma: float, rng: np.random.Generator) -> str:
    """Measured angle point-to-centre and cosine of same-cluster pairs, for the header."""
    c = _unit(rng.standard_normal((1, dim)))
    pts = mixture(2000, dim, c.astype(np.float64), sigma, rng)
    angle = np.degrees(np.arccos(np.clip(pts @ c[0], -1, 1))).mean()
    pair = (pts[:1000] * pts[1000:]).sum(1).mean()
    return f"mean angle to centre {angle:.1f} deg, mean cos of same-cluster pairs {pair:.3f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--sigma", type=float, default=None,
                        help="per-coordinate noise of the mixture; default 1/sqrt(dim)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, best is reported")
    parser.add_argument("--real_embeddings", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    # Noise with the centre's norm: points ~45 deg from their centre, same-cluster cos ~0.5,
    # against ~0 +- 1/sqrt(dim) across clusters; top-k neighbours are mostly, not trivially,
    # in the query's own cluster.
    sigma = args.sigma if args.sigma is not None else 1.0 / math.sqrt(args.dim)
    print(f"exact vs ScaNN MIPS: n={args.n:,} dim={args.dim} queries={args.queries} k={args.k}, "
          f"{os.cpu_count()} CPUs, QPS best of {args.repeats}, queries batched in one call")

    centres = _unit(rng.standard_normal((args.clusters, args.dim))).astype(np.float64)
    print(f"\n(a) mixture of {args.clusters} Gaussian clusters: centres uniform on the sphere, "
          f"per-coordinate sigma {sigma:.4f}; {mixture_spread(args.dim, sigma, rng)}")
    db = mixture(args.n, args.dim, centres, sigma, rng)
    bench(db, mixture(args.queries, args.dim, centres, sigma, rng), args.k,
          args.repeats)
    del db
    gc.collect()

    print(f"\n(b) uniformly random unit vectors (cos of random pairs ~ 0 +- "
          f"{1 / math.sqrt(args.dim):.3f})")
    db = uniform(args.n, args.dim, rng)
    bench(db, uniform(args.queries, args.dim, rng), args.k, args.repeats)
    del db
    gc.collect()

    if args.real_embeddings is None:
        print("\n(c) real embeddings: no --real_embeddings given, skipped.")
        return
    data = real(args.real_embeddings, args.queries, rng)
    if data is not None:
        db, qs = data
        print(f"\n(c) real embeddings {args.real_embeddings}: {len(db):,} x {db.shape[1]} "
              f"(L2-normalised), {len(qs)} held-out rows as queries")
        bench(db, qs, min(args.k, len(db)), args.repeats)


if __name__ == "__main__":
    main()
