# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The 3D-aware branch on its own: masks, normalisation, depth map files and their counted
outcomes, cached features that equal the on-the-fly ones, and no gradient into the backbone."""

import functools
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ipa_jax import depth, images
from ipa_jax.data import depth as depth_data
from ipa_jax.data import embedded_scenes
from ipa_jax.normalize import preprocess

T, F = True, False
# A hand-made map with values on every boundary: 1/3, 0.5, 2/3 and 1.
HAND = np.array([[0.0, 0.2, 1 / 3, 0.4],
                 [0.5, 0.6, 2 / 3, 0.7],
                 [0.9, 1.0, 0.49, 0.34]], np.float32)
EXPECTED = np.array([
    [[T, T, F, F], [F, F, F, F], [F, F, F, F]],  # near [0, 1/3)
    [[F, F, T, T], [T, T, F, F], [F, F, T, T]],  # middle [1/3, 2/3)
    [[F, F, F, F], [F, F, T, T], [T, T, F, F]],  # far [2/3, 1]
    [[T, T, T, T], [F, F, F, F], [F, F, T, T]],  # foreground [0, 0.5)
    [[F, F, F, F], [T, T, T, T], [T, T, F, F]],  # background [0.5, 1]
])


def _cfg(**overrides):
    cfg = depth.default_config()
    cfg.update(dict(backbone="resnet_mini", resize=32, crop=32, batch_size=4, **overrides))
    return cfg


def test_default_config():
    cfg = depth.default_config()
    assert cfg.names == ("near", "middle", "far", "foreground", "background")
    assert cfg.intervals == ((0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1), (0, 0.5), (0.5, 1))
    assert (cfg.mode, cfg.missing, cfg.backbone, cfg.init_from) == (
        "precomputed", "drop", "resnet50", "")


def test_masks_of_a_hand_made_map():
    np.testing.assert_array_equal(depth.depth_masks(HAND), EXPECTED)
    batch = jax.jit(depth.depth_masks)(np.stack([HAND, 1.0 - HAND]))
    assert batch.shape == (2, 5, 3, 4) and batch.dtype == jnp.bool_
    np.testing.assert_array_equal(batch[0], EXPECTED)
    # Every pixel is in exactly one of near/middle/far and one of foreground/background.
    np.testing.assert_array_equal(batch[:, :3].sum(1), 1)
    np.testing.assert_array_equal(batch[:, 3:].sum(1), 1)


def test_normalize_depth():
    raw = np.array([[2.0, 4.0], [6.0, 10.0]])
    d01, constant = depth.normalize_depth(raw)
    np.testing.assert_allclose(d01, [[0, 0.25], [0.5, 1]])
    assert not constant
    inverted, _ = depth.normalize_depth(raw, near_is="high")  # disparity: large = near
    np.testing.assert_allclose(inverted, [[1, 0.75], [0.5, 0]])
    both, constant = depth.normalize_depth(np.stack([raw, np.full((2, 2), 7.0)]))
    np.testing.assert_array_equal(constant, [False, True])
    np.testing.assert_array_equal(both[1], 0.5)  # constant_value: flagged for the caller
    with pytest.raises(ValueError, match="near_is"):
        depth.normalize_depth(raw, near_is="near")


def test_embedded_maps_are_depth_with_zero_near(tmp_path):
    d = np.array([[0.1, 0.3], [0.7, 0.9]], np.float32)  # embedded_scenes: 0 = nearest
    embedded_scenes.depth_image(d).save(tmp_path / "m.png")
    d01, _ = depth.normalize_depth(depth_data.read_depth_map(str(tmp_path / "m.png")))
    np.testing.assert_allclose(d01, (d - 0.1) / 0.8, atol=1e-4)  # near_is="low" as is


def test_masked_images_are_zero_exactly_where_masked():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 3, 4, 3), np.uint8)
    d = np.stack([HAND, HAND[::-1]])
    masks = np.asarray(depth.depth_masks(d))[..., None]
    for normalize, fill in (("imagenet", "mean"), ("unit", "black")):
        x = np.asarray(depth.masked_images(image, d, normalize=normalize, fill=fill))
        assert x.shape == (2, 5, 3, 4, 3)
        full = np.broadcast_to(np.asarray(preprocess(image, normalize))[:, None], x.shape)
        np.testing.assert_array_equal(np.where(masks, 0.0, x), 0.0)
        np.testing.assert_allclose(np.where(masks, x, 0.0), np.where(masks, full, 0.0),
                                   rtol=1e-6, atol=1e-6)


def test_png_and_npy_maps_read_back_exactly(tmp_path):
    values = np.array([[0, 1, 255], [12345, 40000, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "a.png")
    np.testing.assert_array_equal(depth_data.read_depth_map(str(tmp_path / "a.png")), values)
    Image.fromarray(values.astype(np.uint8)).save(tmp_path / "b.png")  # 8-bit
    np.testing.assert_array_equal(depth_data.read_depth_map(str(tmp_path / "b.png")),
                                  values.astype(np.uint8))
    floats = np.array([[0.125, 3.5], [1e-3, 250.25]], np.float32)
    np.save(tmp_path / "c.npy", floats)
    np.testing.assert_array_equal(depth_data.read_depth_map(str(tmp_path / "c.npy")), floats)
    assert depth_data.find_depth_map(str(tmp_path), "c").endswith("c.npy")
    assert depth_data.find_depth_map(str(tmp_path), "nothing") is None


@pytest.mark.parametrize("name, content, reason", [
    ("garbage.png", b"not a png at all", "not an image"),
    ("nan.npy", np.array([[0.0, np.nan]]), "NaN"),
    ("cube.npy", np.zeros((2, 2, 3)), "3-D"),
    ("colour.png", Image.new("RGB", (2, 2), (255, 0, 0)), "colour"),
])
def test_unreadable_maps_say_why(tmp_path, name, content, reason):
    path = str(tmp_path / name)
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif isinstance(content, Image.Image):
        content.save(path)
    else:
        np.save(path, content)
    with pytest.raises(depth_data.DepthMapError, match=reason):
        depth_data.read_depth_map(path)
    d01, outcome = depth_data.load_for_image(str(tmp_path), name[:-4], (2, 2), _cfg())
    assert (d01, outcome) == (None, depth_data.UNREADABLE)


def test_each_bad_map_gets_its_outcome_and_the_missing_policy(tmp_path):
    ramp = np.linspace(0, 1, 16 * 24, dtype=np.float32).reshape(16, 24)
    np.save(tmp_path / "small.npy", ramp)  # half the image's size
    np.save(tmp_path / "flat.npy", np.full((32, 48), 3.0, np.float32))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    drop, constant = _cfg(missing="drop"), _cfg(missing="constant")
    d01, outcome = depth_data.load_for_image(str(tmp_path), "small", (32, 48), drop)
    assert outcome == depth_data.RESIZED and d01.shape == (32, 48)
    assert d01[0, 0] < 0.05 and d01[-1, -1] > 0.95  # resized, still 0 = near at the top
    for pid, outcome in (("absent", depth_data.MISSING), ("flat", depth_data.CONSTANT),
                         ("broken", depth_data.UNREADABLE)):
        assert depth_data.load_for_image(str(tmp_path), pid, (32, 48), drop) == (None, outcome)
        d01, got = depth_data.load_for_image(str(tmp_path), pid, (32, 48), constant)
        assert got == outcome
        np.testing.assert_array_equal(d01, np.full((32, 48), 0.5, np.float32))


def _write(raw, name, image, depth_map=None):
    Image.fromarray(image).save(raw / "image" / f"{name}.png")
    if isinstance(depth_map, np.ndarray) and depth_map.dtype == np.uint16:
        Image.fromarray(depth_map).save(raw / "depth" / f"{name}.png")
    elif depth_map is not None:
        np.save(raw / "depth" / f"{name}.npy", depth_map)
    return name, f"image/{name}.png"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Four posts: ok (32 px), resized (40 x 48 image, 20 x 24 map), missing, constant."""
    raw = tmp_path_factory.mktemp("depth_raw")
    (raw / "image").mkdir()
    (raw / "depth").mkdir()
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = ((yy * 1500 + xx * 300) % 65536).astype(np.uint16)  # 16-bit, like embedded
    posts = [
        _write(raw, "ok", rng.integers(0, 256, (32, 32, 3), np.uint8), smooth),
        _write(raw, "nomap", rng.integers(0, 256, (32, 32, 3), np.uint8)),
        _write(raw, "small", rng.integers(0, 256, (40, 48, 3), np.uint8),
               rng.random((20, 24)).astype(np.float32)),
        _write(raw, "flat", rng.integers(0, 256, (32, 32, 3), np.uint8),
               np.full((32, 32), 9, np.uint16)),
    ]
    return str(raw), posts


@pytest.fixture(scope="module")
def backbone():
    return depth.frozen_backbone(_cfg())


@pytest.fixture(scope="module")
def on_the_fly(backbone):
    apply, variables = backbone
    fn = jax.jit(functools.partial(depth.depth_features, apply))
    return lambda x, d: np.asarray(fn(variables, x, d))


def test_precomputed_features_equal_on_the_fly_and_are_cached(files, tmp_path, monkeypatch,
                                                              on_the_fly):
    raw, posts = files
    cfg, cache = _cfg(), str(tmp_path / "cache")
    got = depth_data.compute_features(raw, "", posts, cfg, cache, progress=False, chunk_size=2)
    assert dict(got.outcomes) == {depth_data.OK: 1, depth_data.MISSING: 1,
                                  depth_data.RESIZED: 1, depth_data.CONSTANT: 1}
    np.testing.assert_array_equal(got.kept, [0, 2])
    np.testing.assert_array_equal(got.dropped, [1, 3])
    assert got.features.shape == (4, 5, 512) and got.features.dtype == np.float32
    assert np.isnan(got.features[[1, 3]]).all() and np.isfinite(got.features[[0, 2]]).all()

    # On the fly on the same centre crop: 32 px posts need no resize, so the raw files serve.
    image = images.read_rgb(os.path.join(raw, posts[0][1]))
    d01, _ = depth.normalize_depth(depth_data.read_depth_map(os.path.join(raw, "depth/ok.png")))
    np.testing.assert_allclose(got.features[0], on_the_fly(image[None], d01[None])[0],
                               rtol=1e-4, atol=1e-4)
    d01, outcome = depth_data.load_for_image(os.path.join(raw, "depth"), "small", (40, 48), cfg)
    crop, d = depth_data.crop_like_image(images.read_rgb(os.path.join(raw, posts[2][1])), d01,
                                         resize=32, crop=32)
    assert outcome == depth_data.RESIZED and crop.shape == (32, 32, 3) and d.shape == (32, 32)
    np.testing.assert_allclose(got.features[2], on_the_fly(crop[None], d[None])[0],
                               rtol=1e-4, atol=1e-4)

    # A rerun reads the cache; after losing one chunk (a kill), only that chunk is computed.
    calls = []
    monkeypatch.setattr(depth_data, "_run_backbone", lambda *a: calls.append(a) or 1 / 0)
    again = depth_data.compute_features(raw, "", posts, cfg, cache, progress=False,
                                        chunk_size=2)
    np.testing.assert_array_equal(again.features, got.features)
    assert not calls
    chunks = sorted(glob.glob(os.path.join(cache, "depth-resnet_mini-*.npz")))
    assert len(chunks) == 2
    os.remove(chunks[0])
    monkeypatch.undo()
    run = depth_data._run_backbone
    monkeypatch.setattr(depth_data, "_run_backbone", lambda *a: calls.append(a) or run(*a))
    resumed = depth_data.compute_features(raw, "", posts, cfg, cache, progress=False,
                                          chunk_size=2)
    np.testing.assert_allclose(resumed.features, got.features, rtol=1e-5, atol=1e-5)
    assert len(calls) == 1 and len(calls[0][1]) == 1  # one chunk, one image


def test_missing_policy_constant_keeps_every_post(files, tmp_path, on_the_fly):
    raw, posts = files
    got = depth_data.compute_features(raw, os.path.join(raw, "depth"), posts,
                                      _cfg(missing="constant"), str(tmp_path), progress=False)
    assert got.outcomes[depth_data.MISSING] == 1 and got.outcomes[depth_data.CONSTANT] == 1
    np.testing.assert_array_equal(got.kept, [0, 1, 2, 3])
    assert len(got.dropped) == 0 and np.isfinite(got.features).all()
    # The missing and the constant post both saw the constant map (0.5: middle, background).
    for i in (1, 3):
        image = images.read_rgb(os.path.join(raw, posts[i][1]))
        np.testing.assert_allclose(got.features[i],
                                   on_the_fly(image[None], np.full((1, 32, 32), 0.5))[0],
                                   rtol=1e-4, atol=1e-4)


def test_on_the_fly_sends_no_gradient_into_the_frozen_backbone(backbone):
    apply, variables = backbone
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (1, 16, 16, 3), np.uint8)
    d01 = rng.random((1, 16, 16)).astype(np.float32)

    def loss(v):
        return jnp.sum(depth.depth_features(apply, v, image, d01) ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss))(variables)
    assert float(value) > 0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
