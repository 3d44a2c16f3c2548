# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests for the pair and image losses against float64 numpy transcriptions of the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipa_jax import losses


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _np_bce(o_a, o_b, l_a, l_b):
    y = (l_a > l_b).astype(np.float64)
    o = o_a - o_b
    return -(y * _np_log_sigmoid(o) + (1 - y) * _np_log_sigmoid(-o))


def _np_ratio(o_a, o_b, l_a, l_b):
    # s = exp(o) written literally, with a per-pair shift that cancels in s_a / (s_a + s_b).
    m = np.maximum(o_a, o_b)
    s_a, s_b = np.exp(o_a - m), np.exp(o_b - m)
    return (s_a / (s_a + s_b) - l_a / (l_a + l_b)) ** 2 + (
        s_b / (s_a + s_b) - l_b / (l_a + l_b)
    ) ** 2


REFERENCES = {"i2pa_bce": _np_bce, "likes_ratio": _np_ratio}  # pair losses


def _inputs(seed=0, n=256):
    rng = np.random.default_rng(seed)
    o = rng.normal(0, 2, (2, n))
    o[:, : n // 4] = rng.uniform(-50, 50, (2, n // 4))  # Large |o| for stability.
    likes = np.floor(np.exp(rng.uniform(0, 10, (2, n)))) + 1
    likes[1, :8] = likes[0, :8]  # Ties.
    return o[0], o[1], likes[0], likes[1]


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_matches_numpy_reference(name):
    o_a, o_b, l_a, l_b = _inputs()
    f32 = [jnp.asarray(a, jnp.float32) for a in (o_a, o_b, l_a, l_b)]
    out = np.asarray(jax.jit(losses.get_loss(name))(*f32))
    # Compare with the reference on the float32-rounded inputs the loss actually saw.
    ref = REFERENCES[name](*[np.asarray(a, np.float64) for a in f32])
    assert out.shape == (o_a.size,)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=1e-6)


def test_hand_computed_values():
    o_a, o_b = jnp.array([0.0, np.log(3.0)]), jnp.array([0.0, 0.0])
    l_a, l_b = jnp.array([2.0, 1.0]), jnp.array([1.0, 1.0])
    # BCE: p = 1/2 with label 1 -> ln 2; p = 3/4 with label 0 (tie) -> -ln(1/4).
    np.testing.assert_allclose(losses.i2pa_bce(o_a, o_b, l_a, l_b), [np.log(2), np.log(4)], 1e-6)
    # Ratio: shares (1/2, 1/2) vs (2/3, 1/3) -> 2/36; shares (3/4, 1/4) vs (1/2, 1/2) -> 2/16.
    np.testing.assert_allclose(losses.likes_ratio(o_a, o_b, l_a, l_b), [2 / 36, 2 / 16], 1e-6)
    # Log-likes, per image: (0 - ln 2)^2 and (ln 3 - 0)^2.
    np.testing.assert_allclose(losses.log_likes_mse(o_a, l_a), [np.log(2) ** 2, np.log(3) ** 2],
                               1e-6)


def test_log_likes_mse_is_per_image():
    """SPEC 2's baseline: one `(o - ln(likes))^2` per image, not a pair average."""
    rng = np.random.default_rng(3)
    o = rng.normal(5, 3, 301)
    likes = np.floor(np.exp(rng.uniform(0, 12, 301))) + 1
    f32 = [jnp.asarray(a, jnp.float32) for a in (o, likes)]
    out = np.asarray(jax.jit(losses.get_loss("log_likes_mse"))(*f32))
    o64, likes64 = (np.asarray(a, np.float64) for a in f32)
    assert out.shape == (301,)  # an odd count: no pairing involved
    np.testing.assert_allclose(out, (o64 - np.log(likes64)) ** 2, rtol=2e-5, atol=1e-5)
    grad = jax.grad(lambda x: losses.log_likes_mse(x, f32[1]).sum())(f32[0])
    np.testing.assert_allclose(grad, 2 * (o64 - np.log(likes64)), rtol=1e-4, atol=1e-4)
    assert losses.is_per_image("log_likes_mse")
    assert not losses.is_per_image("i2pa_bce") and not losses.is_per_image("likes_ratio")


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_gradients_finite_and_correct(name):
    o_a, o_b, l_a, l_b = (jnp.asarray(a, jnp.float32) for a in _inputs(seed=1))
    loss = losses.get_loss(name)
    g_a, g_b = jax.grad(lambda a, b: loss(a, b, l_a, l_b).sum(), argnums=(0, 1))(o_a, o_b)
    assert np.all(np.isfinite(g_a)) and np.all(np.isfinite(g_b))
    d = np.asarray(o_a - o_b, np.float64)
    p = 1 / (1 + np.exp(-d))
    la, lb = np.asarray(l_a, np.float64), np.asarray(l_b, np.float64)
    expected = {  # d loss / d o_a, derived by hand.
        "i2pa_bce": p - (la > lb),
        "likes_ratio": 4 * (p - la / (la + lb)) * p * (1 - p),
    }[name]
    np.testing.assert_allclose(g_a, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_b, -g_a, rtol=1e-6, atol=1e-7)  # depends on o_a - o_b only


def test_symmetry_under_swapping_the_pair():
    o_a, o_b, l_a, l_b = (jnp.asarray(a, jnp.float32) for a in _inputs(seed=2))
    untied = l_a != l_b
    ratio = losses.likes_ratio
    np.testing.assert_allclose(ratio(o_a, o_b, l_a, l_b), ratio(o_b, o_a, l_b, l_a), rtol=1e-6)
    # Swapping the pair flips the BCE label, which is the same pair seen from the other side.
    bce = losses.i2pa_bce
    np.testing.assert_allclose(
        bce(o_a, o_b, l_a, l_b)[untied], bce(o_b, o_a, l_b, l_a)[untied], rtol=1e-6
    )
    # For ties both orders get label 0, so the two losses differ by exactly -(o_a - o_b).
    tied = ~untied
    np.testing.assert_allclose(
        bce(o_a, o_b, l_a, l_b)[tied] - bce(o_b, o_a, l_b, l_a)[tied],
        (o_a - o_b)[tied],
        rtol=1e-5,
        atol=1e-5,
    )


def test_registry():
    assert set(losses.LOSSES) == {"i2pa_bce", "likes_ratio", "log_likes_mse"}
    assert set(losses.PAIR_LOSSES) == {"i2pa_bce", "likes_ratio"}
    assert set(losses.IMAGE_LOSSES) == {"log_likes_mse"}
    assert losses.get_loss("likes_ratio") is losses.likes_ratio
    with pytest.raises(ValueError, match="i2pa_bce"):
        losses.get_loss("hinge")
