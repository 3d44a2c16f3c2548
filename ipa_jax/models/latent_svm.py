# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Latent ranking SVM on frozen CNN features (Cappallo et al. 2015).

Each image gets `f+(x) = max_s w_s . x` over popular senses and `f-(x)` likewise over unpopular
senses; its popularity score is `f+(x) - f-(x)`. With one popular sense and no unpopular ones
this is the plain linear ranking SVM `w . x`. Senses start from k-means centroids of the most
(popular) and least (unpopular) popular training images.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ipa_jax.kmeans import kmeans

sense_init = nn.initializers.normal(stddev=0.01)


class LatentSenses(nn.Module):
    """Max over linear senses; `num_popular=0` is the plain ranking SVM (one weight vector).

    `use_bias` adds one bias per sense, which shifts which sense wins the max (a shared bias
    would cancel in every ranking pair).
    """

    num_popular: int
    num_unpopular: int = 0
    use_bias: bool = False

    def _senses(self, x: jnp.ndarray, name: str, num: int) -> jnp.ndarray:
        """Responses [B, num] of the senses `name` to features [B, D]."""
        w = self.param(name, sense_init, (num, x.shape[-1]), jnp.float32)
        out = x @ w.T
        if self.use_bias:
            out = out + self.param(f"{name}_bias", nn.initializers.zeros, (num,), jnp.float32)
        return out

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> dict[str, jnp.ndarray]:
        x = jnp.asarray(x, jnp.float32)
        pop = self._senses(x, "popular", max(1, self.num_popular))
        f_pop = pop.max(-1)
        if self.num_unpopular > 0:
            unpop = self._senses(x, "unpopular", self.num_unpopular)
            f_unpop = unpop.max(-1)
        else:
            unpop = jnp.zeros((x.shape[0], 0), jnp.float32)
            f_unpop = jnp.zeros_like(f_pop)
        return dict(
            score=f_pop - f_unpop,
            f_pop=f_pop,
            f_unpop=f_unpop,
            pop_senses=pop,
            unpop_senses=unpop,
        )


def _centroids(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    if k >= x.shape[0]:
        raise ValueError(f"k-means init needs fewer senses than rows: k={k}, rows={x.shape[0]}")
    return kmeans(x, k, seed=seed)[0].astype(np.float32)


def kmeans_init_params(
    features: np.ndarray,
    y: np.ndarray,
    num_popular: int,
    num_unpopular: int,
    *,
    top_k: int = 1000,
    seed: int = 0,
    use_bias: bool = False,
) -> dict[str, Any]:
    """`LatentSenses` params with senses at k-means centroids of the extreme training rows.

    Popular senses cluster the `top_k` rows with the highest `y`, unpopular senses the `top_k`
    with the lowest (all rows if there are fewer; ties by row order). Biases start at zero.
    """
    features = np.asarray(features, np.float64)
    y = np.asarray(y, np.float64)
    if features.ndim != 2 or y.shape != features.shape[:1]:
        raise ValueError(f"need features [N, D] and y [N], got {features.shape}, {y.shape}")
    top_k = min(top_k, y.size)
    params = {}
    top = np.argsort(-y, kind="stable")[:top_k]
    params["popular"] = _centroids(features[top], max(1, num_popular), seed)
    if num_unpopular > 0:
        bottom = np.argsort(y, kind="stable")[:top_k]
        params["unpopular"] = _centroids(features[bottom], num_unpopular, seed + 1)
    if use_bias:
        for name in list(params):
            params[f"{name}_bias"] = np.zeros(params[name].shape[0], np.float32)
    return jax.tree.map(jnp.asarray, params)


def init_params(
    rng: jax.Array,
    dim: int,
    num_popular: int,
    num_unpopular: int,
    init: str = "kmeans",
    features: np.ndarray | None = None,
    y: np.ndarray | None = None,
    top_k: int = 1000,
    *,
    use_bias: bool = False,
) -> dict[str, Any]:
    """Params of `LatentSenses` for `dim`-dim features: "random" (normal, std 0.01) or "kmeans"."""
    if init == "random":
        model = LatentSenses(num_popular, num_unpopular, use_bias)
        return model.init(rng, jnp.zeros((1, dim), jnp.float32))["params"]
    if init == "kmeans":
        if features is None or y is None:
            raise ValueError("init='kmeans' needs `features` and `y`")
        if np.shape(features)[-1] != dim:
            raise ValueError(f"features have dim {np.shape(features)[-1]}, expected {dim}")
        seed = int(jax.random.randint(rng, (), 0, 2**31 - 2))
        return kmeans_init_params(
            features, y, num_popular, num_unpopular, top_k=top_k, seed=seed, use_bias=use_bias
        )
    raise ValueError(f"init must be 'kmeans' or 'random', got {init!r}")
