# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Popularity losses on log-scores `o` (popularity `s = exp(o)`).

Pair losses (`PAIR_LOSSES`) have the signature `loss(o_a, o_b, likes_a, likes_b) -> [P]` on
arrays of shape `[P]` and return one value per pair; image losses (`IMAGE_LOSSES`) have
`loss(o, likes) -> [N]` and return one value per image, and train on single images, not pairs.
The caller reduces (mean, weighted mean, ...).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

PairLossFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]
ImageLossFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
LossFn = PairLossFn | ImageLossFn


def i2pa_bce(
    o_a: jnp.ndarray, o_b: jnp.ndarray, likes_a: jnp.ndarray, likes_b: jnp.ndarray
) -> jnp.ndarray:
    """I2PA (Ding et al. 2019): BCE of `sigmoid(o_a - o_b)` against `likes_a > likes_b`."""
    labels = (likes_a > likes_b).astype(jnp.float32)
    # optax works with log-sigmoids, so |o_a - o_b| in the hundreds stays finite.
    return optax.sigmoid_binary_cross_entropy(o_a - o_b, labels)


def likes_ratio(
    o_a: jnp.ndarray, o_b: jnp.ndarray, likes_a: jnp.ndarray, likes_b: jnp.ndarray
) -> jnp.ndarray:
    """Ji et al. 2023 ratio loss: squared error of the shares `s_a / (s_a + s_b)` per image."""
    # s_a / (s_a + s_b) == sigmoid(o_a - o_b), which never overflows unlike exp(o).
    share_a = jax.nn.sigmoid(o_a - o_b)
    share_b = jax.nn.sigmoid(o_b - o_a)
    target_a = likes_a / (likes_a + likes_b)
    target_b = likes_b / (likes_a + likes_b)
    return (share_a - target_a) ** 2 + (share_b - target_b) ** 2


def log_likes_mse(o: jnp.ndarray, likes: jnp.ndarray) -> jnp.ndarray:
    """The log-likes regression baseline (SPEC 2): `(o - ln(likes))^2` per image, [N]."""
    return (o - jnp.log(likes)) ** 2


PAIR_LOSSES: dict[str, PairLossFn] = {"i2pa_bce": i2pa_bce, "likes_ratio": likes_ratio}
IMAGE_LOSSES: dict[str, ImageLossFn] = {"log_likes_mse": log_likes_mse}
LOSSES: dict[str, LossFn] = {**PAIR_LOSSES, **IMAGE_LOSSES}


def get_loss(name: str) -> LossFn:
    """Looks up a loss in `LOSSES`."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; known losses: {sorted(LOSSES)}")
    return LOSSES[name]


def is_per_image(name: str) -> bool:
    """Whether loss `name` trains on single images (`IMAGE_LOSSES`) rather than pairs."""
    get_loss(name)
    return name in IMAGE_LOSSES


def latent_ranking_hinge(
    f_pop: jnp.ndarray,
    f_unpop: jnp.ndarray,
    y: jnp.ndarray,
    *,
    margin: str = "fixed",
    alpha: float = 1.0,
    delta: float = 1.0,
    use_unpopular: bool,
    mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Latent ranking SVM loss (Cappallo et al. 2015) over every in-batch pair with `y_i > y_j`.

    Per pair: `hinge(D_ij - f+_i + f+_j)`, plus `hinge(D_ij - f-_j + f-_i)` if `use_unpopular`,
    with `D_ij = delta` ("fixed") or `max(alpha, y_i - y_j)` ("soft"). Returns the mean over the
    pairs whose rows are both in `mask` [B] (default all), or 0 without such pairs.
    """
    y = jnp.asarray(y, jnp.float32)
    viable = y[:, None] > y[None, :]
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        viable = viable & mask[:, None] & mask[None, :]
    if margin == "fixed":
        d = jnp.float32(delta)
    elif margin == "soft":
        d = jnp.maximum(alpha, y[:, None] - y[None, :])
    else:
        raise ValueError(f"margin must be 'fixed' or 'soft', got {margin!r}")
    loss = jax.nn.relu(d - f_pop[:, None] + f_pop[None, :])
    if use_unpopular:
        # Unpopular senses should respond more strongly to the less popular image j.
        loss = loss + jax.nn.relu(d - f_unpop[None, :] + f_unpop[:, None])
    num_pairs = viable.sum()
    return jnp.where(viable, loss, 0.0).sum() / jnp.maximum(num_pairs, 1)
