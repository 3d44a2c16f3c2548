# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""layers.conv_general_dilated: matmul path equals lax's convolution, value and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ipa_jax.models import layers

NHWC = ("NHWC", "HWIO", "NHWC")


def _both(x, w, strides, padding, dimension_numbers=NHWC, **kw):
    def loss(conv, x, w):
        y = conv(x, w, strides, padding, dimension_numbers=dimension_numbers, **kw)
        return jnp.sum(jnp.sin(y)), y

    grad = jax.grad(loss, argnums=(1, 2), has_aux=True)
    ours = jax.jit(lambda x, w: grad(layers.conv_general_dilated, x, w))(x, w)
    ref = jax.jit(lambda x, w: grad(lax.conv_general_dilated, x, w))(x, w)
    return ours, ref


@pytest.mark.parametrize(
    "window, strides, size",
    [
        ((1, 1), (1, 1), 9),
        ((1, 1), (2, 2), 9),
        ((1, 1), (2, 1), 8),
        ((4, 4), (4, 4), 18),
        ((2, 3), (2, 3), 11),
        ((1, 2), (3, 2), 10),
    ],
)
def test_matmul_path_matches_convolution(window, strides, size):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, size, size + 1, 5)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((*window, 5, 7)), jnp.float32)
    (grads, y), (ref_grads, ref_y) = _both(x, w, strides, ((0, 0), (0, 0)))
    assert y.shape == ref_y.shape
    np.testing.assert_allclose(y, ref_y, atol=2e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=5e-5)
    # The matmul path has no convolution left to run.
    hlo = (
        jax.jit(
            lambda x, w: layers.conv_general_dilated(x, w, strides, "VALID", dimension_numbers=NHWC)
        )
        .lower(x, w)
        .as_text()
    )
    assert "convolution" not in hlo and "dot_general" in hlo


@pytest.mark.parametrize(
    "window, strides, padding, kw",
    [
        ((3, 3), (1, 1), ((1, 1), (1, 1)), {}),  # overlapping windows
        ((1, 1), (1, 1), ((1, 1), (0, 0)), {}),  # padded
        ((2, 2), (2, 2), ((0, 0), (0, 0)), {"rhs_dilation": (2, 2)}),
        ((1, 1), (1, 1), ((0, 0), (0, 0)), {"feature_group_count": 5}),
    ],
)
def test_other_convolutions_fall_back_to_lax(window, strides, padding, kw):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 5)), jnp.float32)
    w = jnp.asarray(
        rng.standard_normal((*window, 5 // kw.get("feature_group_count", 1), 10)), jnp.float32
    )
    (grads, y), (ref_grads, ref_y) = _both(x, w, strides, padding, **kw)
    np.testing.assert_array_equal(y, ref_y)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_array_equal(g, r)


def test_channels_first_falls_back_to_lax():
    x = jnp.ones((2, 5, 8, 8))
    w = jnp.ones((7, 5, 1, 1))
    nchw = ("NCHW", "OIHW", "NCHW")
    y = layers.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=nchw)
    assert y.shape == (2, 7, 8, 8)
    np.testing.assert_array_equal(y, 5.0)


def test_flax_conv_with_it_has_the_same_parameters_and_output():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 12, 12, 3)), jnp.float32)
    plain = nn.Conv(8, (4, 4), strides=(4, 4), padding="VALID")
    fast = nn.Conv(
        8, (4, 4), strides=(4, 4), padding="VALID", conv_general_dilated=layers.conv_general_dilated
    )
    variables = plain.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, fast.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, variables
    )
    np.testing.assert_allclose(fast.apply(variables, x), plain.apply(variables, x), atol=1e-5)
