# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Layers shared by the backbones."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def drop_path(x: jnp.ndarray, rate: float, *, module: nn.Module, train: bool) -> jnp.ndarray:
    """Stochastic depth (timm's DropPath): zeroes whole samples, scales the kept by 1/keep.

    Draws from `module`'s "dropout" rng; the identity when not training or `rate` is 0.
    """
    if not train or rate == 0.0:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, 0).astype(x.dtype)
