# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Grad-CAM (`ipa_jax.gradcam`): the gradient at the last feature map against a hand-split
model and finite differences, the formula against numpy, the heat where the score looks, and
every kind of model (ResNet, Swin, the retrieval-augmented scorer with its extra inputs)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipa_jax import gradcam, models, scoring
from ipa_jax.models import fusion
from ipa_jax.normalize import preprocess
from tests.conftest import fast_compiles, random_variables

GRID = 4  # the toy model's feature map is GRID x GRID


def _head(feature_map, red: float, green: float, curvature: float):
    """The toy model's log-score of its feature map [N, h, w, 2] (red, green detectors):
    red * mean(red channel) + green * mean(green channel), plus a nonlinear term that weighs
    each cell by its position (so the gradient differs from cell to cell)."""
    h, w = feature_map.shape[1:3]
    position = jnp.arange(h * w, dtype=jnp.float32).reshape(1, h, w, 1) / (h * w)
    linear = (red * feature_map[..., 0].mean((1, 2)) + green * feature_map[..., 1].mean((1, 2)))
    return linear + curvature * jnp.sum(jnp.tanh(feature_map) ** 2 * position, axis=(1, 2, 3))


class _Detect(nn.Module):
    """Red and green detectors: ReLU(r - g) and ReLU(g - r) of each grid cell's mean colour."""

    @nn.compact
    def __call__(self, pixels):
        n, height, width, _ = pixels.shape
        cells = pixels.reshape(n, GRID, height // GRID, GRID, width // GRID, 3).mean((2, 4))
        r, g = cells[..., 0], cells[..., 1]
        return nn.relu(jnp.stack([r - g, g - r], axis=-1))


class _Toy(nn.Module):
    """(logits [N, 1], {"feature_map"}) like the backbones; no parameters."""

    red: float = 1.0
    green: float = -1.0
    curvature: float = 0.0
    detached: bool = False  # the feature map not a module call's output (unsupported)

    @nn.compact
    def __call__(self, x, *, train: bool):
        feature_map = _Detect(name="detect")(x)
        if self.detached:
            feature_map = feature_map * 1.0
        score = _head(feature_map, self.red, self.green, self.curvature)
        return score[:, None], {"feature_map": feature_map}


def _quadrants(size: int = 16) -> np.ndarray:
    """Two float images [2, size, size, 3]: grey with a red top-left and a green bottom-right
    quadrant, and its mirror (green top-left, red bottom-right)."""
    x = np.full((2, size, size, 3), 0.5, np.float32)
    half = size // 2
    for i, (tl, br) in enumerate([((1, 0, 0), (0, 1, 0)), ((0, 1, 0), (1, 0, 0))]):
        x[i, :half, :half] = tl
        x[i, half:, half:] = br
    return x


def _by_quadrant(cams: np.ndarray) -> np.ndarray:
    """[N, h, w] -> [N, 4] mean heat of the top-left, top-right, bottom-left, bottom-right."""
    h, w = cams.shape[1] // 2, cams.shape[2] // 2
    return np.stack([cams[:, :h, :w].mean((1, 2)), cams[:, :h, w:].mean((1, 2)),
                     cams[:, h:, :w].mean((1, 2)), cams[:, h:, w:].mean((1, 2))], axis=1)


def _numpy_cam(feature_map: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM by hand: channel weights, weighted sum, ReLU, divide by the maximum."""
    feature_map, grads = np.asarray(feature_map, np.float64), np.asarray(grads, np.float64)
    weights = grads.mean(axis=(1, 2))
    cam = np.maximum((feature_map * weights[:, None, None, :]).sum(-1), 0.0)
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0.0)


def test_gradient_matches_the_split_model_and_finite_differences():
    model = _Toy(red=0.7, green=-1.3, curvature=0.9)
    x = jnp.asarray(_quadrants() + np.random.default_rng(0).normal(0, 0.05, (2, 16, 16, 3)),
                    jnp.float32)
    source, shape = gradcam.find_source(model, {}, x)
    assert (source.path, source.method) == (("detect",), "__call__")
    assert shape.shape == (2, GRID, GRID, 2)
    feature_map, grads, scores = gradcam.feature_map_grads(model, {}, x)
    # The split model: the feature map an explicit input of the head.
    explicit = _Detect().apply({}, x)
    np.testing.assert_allclose(feature_map, explicit, atol=1e-6)
    head = lambda f: _head(f, model.red, model.green, model.curvature)
    np.testing.assert_allclose(scores, head(explicit), atol=1e-6)
    np.testing.assert_allclose(grads, jax.grad(lambda f: head(f).sum())(explicit), atol=1e-6)
    assert np.ptp(np.asarray(grads)[..., 0]) > 0.05  # the gradient varies over the grid
    # Central finite differences of the log-score at a few feature-map entries.
    eps = 1e-2
    for n, i, j, c in [(0, 0, 0, 0), (0, 3, 3, 1), (1, 1, 2, 0), (1, 2, 1, 1)]:
        bump = jnp.zeros_like(explicit).at[n, i, j, c].set(eps)
        numeric = (head(explicit + bump)[n] - head(explicit - bump)[n]) / (2 * eps)
        assert float(grads[n, i, j, c]) == pytest.approx(float(numeric), abs=2e-3)
    # The formula, against numpy.
    cams = gradcam.grad_cam(feature_map, grads)
    np.testing.assert_allclose(cams, _numpy_cam(feature_map, grads), atol=1e-6)
    assert cams.shape == (2, GRID, GRID) and 0 <= cams.min() and cams.max() == pytest.approx(1)


@pytest.mark.parametrize(("red", "green", "hot"), [
    (1.0, -1.0, "red"),  # likes red, dislikes green: heat on red only
    (-1.0, 1.0, "green"),  # the reverse
    (1.0, 1.0, "both"),  # likes both colours equally
    (-1.0, -1.0, "none"),  # nothing raises the score: an all-zero cam stays 0
])
def test_heat_sits_where_the_score_looks(red, green, hot):
    """A wrong sign, a missing ReLU or unweighted channels would move or spread the heat."""
    x = jnp.asarray(_quadrants())
    want = {"red": (1, 0), "green": (0, 1), "both": (1, 1), "none": (0, 0)}[hot]
    red_at, green_at = np.array([[0, 3], [3, 0]]).T  # image 0: red top-left; 1: mirrored
    grid = gradcam.heatmaps(_Toy(red, green), {}, x, full_size=False)
    full = gradcam.heatmaps(_Toy(red, green), {}, x)
    assert grid.shape == (2, GRID, GRID) and full.shape == (2, 16, 16)
    for cams in (grid, full):
        assert cams.dtype == np.float32 and 0.0 <= cams.min() and cams.max() <= 1.0
    # On the grid, exactly: 1 on every cell of a liked colour, 0 elsewhere.
    expected = np.zeros((2, 4))
    expected[[0, 1], red_at], expected[[0, 1], green_at] = want
    np.testing.assert_allclose(_by_quadrant(grid), expected, atol=1e-6)
    np.testing.assert_allclose(grid, np.repeat(np.repeat(
        expected.reshape(2, 2, 2), 2, 1), 2, 2), atol=1e-6)
    # Upsampled: bilinear blurs the quadrants' edges, the heat stays where it was.
    quadrant = _by_quadrant(full)
    assert (quadrant[expected == 1] > 0.7).all() and (quadrant[expected == 0] < 0.15).all()


def test_a_feature_map_no_module_returns_is_refused():
    x = jnp.asarray(_quadrants())
    with pytest.raises(ValueError, match="not the output of a module call"):
        gradcam.find_source(_Toy(detached=True), {}, x)


@pytest.mark.parametrize(("name", "source"), [("resnet_mini", ("layer4_0",)),
                                              ("swin_mini", ("norm",))])
def test_backbones_gradient_is_the_head_over_the_grid(name, source):
    """Pooling then a linear head: dO/dA = fc / (h w) at every cell, and the cam is the
    class activation map ReLU(A . fc) / max."""
    model = models.get_model(name, num_classes=1)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 64, 64, 3)), jnp.float32)
    variables = random_variables(model, x, other_std=0.1)
    both = jax.jit(lambda v, x: (gradcam.feature_map_grads(model, v, x),
                                 model.apply(v, x, train=False)))
    with fast_compiles():
        assert gradcam.find_source(model, variables, x)[0].path == source
        (feature_map, grads, scores), (logits, out) = both(variables, x)
    h, w = feature_map.shape[1:3]
    assert (h, w) == (2, 2)
    np.testing.assert_allclose(feature_map, out["feature_map"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores, logits[:, 0], rtol=1e-5, atol=1e-4)
    params = variables["params"]
    fc = (params["fc"] if name.startswith("resnet") else params["head"]["fc"])["kernel"][:, 0]
    np.testing.assert_allclose(grads, np.broadcast_to(fc / (h * w), grads.shape), atol=1e-6)
    expected = _numpy_cam(feature_map, grads)
    cams = gradcam.grad_cam(feature_map, grads)
    np.testing.assert_allclose(cams, expected, atol=1e-5)
    full = gradcam.upsample(cams, (64, 64))
    assert full.shape == (2, 64, 64) and 0 <= full.min() and full.max() <= 1
    # Bilinear with half-pixel centres: each corner 16 x 16 block holds its cell's value.
    full = np.asarray(full)
    for i, rows in enumerate((slice(0, 16), slice(48, 64))):
        for j, cols in enumerate((slice(0, 16), slice(48, 64))):
            np.testing.assert_allclose(full[:, rows, cols], np.broadcast_to(
                expected[:, i, j, None, None], (2, 16, 16)), atol=1e-5)


def test_retrieval_augmented_scorer_with_f_ret_and_depth():
    """The fusion module's gradient at the backbone's feature map, by hand: the fusion applied
    to the feature map as an explicit input. Extra inputs pass through."""
    backbone = models.get_model("resnet_mini", num_classes=0)
    block = fusion.AggregationBlock(width=16, num_layers=1, num_heads=2)
    model = fusion.RetrievalAugmentedScorer(backbone, block)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 64, 64, 3)), jnp.float32)
    f_ret = jnp.asarray(rng.uniform(0.1, 1, size=(2, 3, 5)), jnp.float32)
    depth = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
    variables = random_variables(model, x, f_ret, depth, other_std=0.1)
    backbone_variables = {k: v["backbone"] for k, v in variables.items()}

    def split(f):  # the fusion's log-scores of an explicit feature map
        return block.apply({"params": variables["params"]["fusion"]}, f, f_ret, depth,
                           train=False)[0][:, 0]

    def compute(variables, x, f_ret, depth):
        explicit = backbone.apply(backbone_variables, x, train=False)[1]["feature_map"]
        by_hand = (explicit, split(explicit), jax.grad(lambda f: split(f).sum())(explicit))
        return gradcam.feature_map_grads(model, variables, x, f_ret, depth), by_hand

    with fast_compiles():
        assert gradcam.find_source(model, variables, x, f_ret, depth)[0].path == (
            "backbone", "layer4_0")
        (feature_map, grads, scores), expected = jax.jit(compute)(variables, x, f_ret, depth)
        cams = gradcam.heatmaps(model, variables, x, f_ret, depth, full_size=False)
    for got, want in zip((feature_map, scores, grads), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(np.asarray(grads), axis=(1, 2)).max() > 1e-4  # not uniform over the grid
    np.testing.assert_allclose(cams, _numpy_cam(feature_map, grads), atol=1e-5)


def test_for_scorer_prepares_pixels_as_the_spec_says():
    model = models.get_model("resnet_mini", num_classes=1)
    pixels = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    variables = random_variables(model, jnp.zeros((1, 64, 64, 3)), seed=4, other_std=0.1)
    scorer = scoring.Scorer(model, variables, scoring.InputSpec(64, "squash", normalize="unit"))
    with fast_compiles():
        cams = gradcam.for_scorer(scorer, pixels)
        direct = gradcam.heatmaps(model, variables, preprocess(pixels, "unit"))
    assert cams.shape == (2, 64, 64)
    np.testing.assert_allclose(cams, direct, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        gradcam.for_scorer(scorer, pixels.astype(np.float32))
