# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""config.prep.depth.mode="on_the_fly": depth maps in the data, features in the training step.

The tiny dataset is prepared in both modes from one copy of its maps with one missing, one
garbage, one constant and one half-size map: the counted outcomes, drops and manifests agree,
the on-the-fly features of the evaluation crop equal the precomputed ones (up to the stored
map's quantisation, measured below), the pipelines crop image and map as one, and the frozen
depth backbone gets no update, no optimizer state and survives checkpoints and init_from.
"""

import csv
import functools
import itertools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from ipa_jax import (
    checkpointing,
    config_lib,
    config_validation,
    depth,
    images,
    input_pipeline,
    optim,
    pretrained,
    tasks,
    train,
)
from ipa_jax.data import depth as depth_data
from ipa_jax.data import out_dir as out_dir_lib
from ipa_jax.data import prepare, tfds_builder
from tests.conftest import load_config

BAD = {"missing depth map": 5, "unreadable depth map": 50, "constant depth map": 100}
SMALL = 150  # the post whose map is stored at half size (a .npy): "resized depth map"
STEP = 0.5 / tfds_builder.DEPTH_MAP_LEVELS  # the stored map's largest rounding error


def _config(mode, depth_dir="", variant="full"):
    config = load_config("full", f"tiny,variant={variant}")
    config.prep.depth.mode, config.prep.depth.depth_dir = mode, depth_dir
    return config


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _examples(out, name="images"):
    builder = tfds.builder_from_directory(tfds_builder.dataset_dir(out, name))
    return list(builder.as_dataset(split="train+validation+test").as_numpy_iterator())


@pytest.fixture(scope="module")
def maps(tiny_raw, tiny_prepared, tmp_path_factory) -> str:
    """A copy of the tiny maps with one missing, one garbage, one constant, one half-size."""
    ids = [r["post_id"] for r in _rows(os.path.join(tiny_prepared, "posts.csv"))]
    out = str(tmp_path_factory.mktemp("otf_maps") / "depth")
    shutil.copytree(os.path.join(tiny_raw, "depth"), out)
    missing, garbage, constant = (ids[i] for i in BAD.values())
    os.remove(os.path.join(out, f"{missing}.png"))
    with open(os.path.join(out, f"{garbage}.png"), "wb") as f:
        f.write(b"not a png at all")
    Image.fromarray(np.full((20, 30), 7000, np.uint16)).save(os.path.join(out, f"{constant}.png"))
    value = depth_data.read_depth_map(os.path.join(out, f"{ids[SMALL]}.png"))
    os.remove(os.path.join(out, f"{ids[SMALL]}.png"))
    np.save(os.path.join(out, f"{ids[SMALL]}.npy"), value[::2, ::2])
    return out


@pytest.fixture(scope="module")
def preps(tiny_raw, maps, tmp_path_factory) -> dict:
    """mode -> prepared folder: precomputed (without retrieval, not needed here) and
    on_the_fly (`configs/full.py:tiny` with --config.prep.depth.mode=on_the_fly)."""
    out = {}
    for mode in ("precomputed", "on_the_fly"):
        prep = _config(mode, maps).prep
        prep.retrieval.enabled = mode == "on_the_fly"
        out[mode] = str(tmp_path_factory.mktemp(mode) / "prepared")
        prepare.prepare(tiny_raw, out[mode], prep, progress=False)
    return out


# ---------------------------------------------------------------- data preparation

def test_outcomes_drops_and_manifests_are_the_same_in_both_modes(preps):
    pre, otf = (out_dir_lib.read_summary(preps[m]) for m in ("precomputed", "on_the_fly"))
    assert pre["depth"]["shape"] == [5, 512] and otf["depth"]["shape"] == [5, 0]
    assert otf["depth"] == {**pre["depth"], "shape": [5, 0]}
    assert otf["drops"] == pre["drops"] and otf["counts"] == pre["counts"]
    assert pre["drops"]["depth"] == dict.fromkeys(BAD, 1)
    assert pre["depth"]["outcomes"]["resized depth map"] == 1
    for name in ("posts.csv", "groups.csv", "pdips.csv", "images.csv", "drops.json"):
        with open(os.path.join(preps["precomputed"], name), "rb") as a, open(
                os.path.join(preps["on_the_fly"], name), "rb") as b:
            assert a.read() == b.read(), name
    assert "maps stored, features computed on the fly" in prepare.format_report(otf)
    for name in tfds_builder.CONFIGS:
        for example in _examples(preps["on_the_fly"], name):
            n = len(example["post_index"])
            assert example["depth"].shape == (n, 5, 0) and example["depth_map"].shape == (n,)
        assert "depth_map" not in _examples(preps["precomputed"], name)[0]


def _files(tmp_path):
    """Four posts: ok, resized (40 x 48 image, 20 x 24 map), missing, constant."""
    for sub in ("image", "depth"):
        (tmp_path / sub).mkdir()
    rng = np.random.default_rng(0)
    posts = []
    for name, hw, depth_map in (("ok", (32, 32), rng.random((32, 32))),
                                ("small", (40, 48), rng.random((20, 24))),
                                ("nomap", (32, 32), None),
                                ("flat", (32, 32), np.full((32, 32), 3.0))):
        Image.fromarray(rng.integers(0, 256, (*hw, 3), np.uint8)).save(
            tmp_path / "image" / f"{name}.png")
        if depth_map is not None:
            np.save(tmp_path / "depth" / f"{name}.npy", depth_map.astype(np.float32))
        posts.append((name, f"image/{name}.png"))
    return str(tmp_path), posts


@pytest.mark.parametrize("missing", ["drop", "constant"])
def test_each_bad_map_counts_the_same_and_the_stored_map_is_the_normalised_one(tmp_path,
                                                                                missing):
    raw, posts = _files(tmp_path)
    got = {}
    for mode in ("precomputed", "on_the_fly"):
        cfg = _config(mode).prep.depth
        cfg.update(dict(missing=missing, resize=32, crop=32))
        got[mode] = depth_data.compute_features(raw, "", posts, cfg, str(tmp_path / "cache"),
                                                progress=False)
    pre, otf = got["precomputed"], got["on_the_fly"]
    assert dict(otf.outcomes) == dict(pre.outcomes) == {
        "ok": 1, "resized depth map": 1, "missing depth map": 1, "constant depth map": 1}
    np.testing.assert_array_equal(otf.kept, pre.kept)
    np.testing.assert_array_equal(otf.dropped, pre.dropped)
    assert pre.features.shape == (4, 5, 512) and otf.features.shape == (4, 5, 0)
    for i in otf.kept:  # the stored map: the normalised (resized, or constant) map, 16 bits
        pid, image_path = posts[i]
        stored = (tmp_path / image_path).read_bytes()  # the bytes a TFRecord would hold
        hw = images.read_rgb(stored).shape[:2]
        d01, _ = depth_data.load_for_image(os.path.join(raw, "depth"), pid, hw, cfg)
        png = depth_data.stored_map(raw, "", pid, image_path, stored, cfg)
        decoded = input_pipeline.decode_depth_map(png).numpy()
        assert decoded.shape == hw and np.abs(decoded - d01).max() <= STEP + 1e-7
        if pid in ("nomap", "flat"):
            np.testing.assert_array_equal(decoded, 0.5)  # constant_value is a level: exact


# ---------------------------------------------------------------- the same features

def _eval_crops(prepared, config) -> dict:
    """post_index -> that post's evaluation batch row (input, depth or depth_map)."""
    builder = input_pipeline.get_builder(prepared, "images")
    rows = {}
    for split in ("train", "validation", "test"):
        for batch in input_pipeline.eval_dataset(builder, config, split).as_numpy_iterator():
            for j, i in enumerate(batch["post_index"]):
                rows[int(i)] = {k: v[j] for k, v in batch.items()}
    return rows


def test_on_the_fly_features_of_the_eval_crop_equal_the_precomputed_ones(preps, tiny_raw,
                                                                         maps, task):
    """Same frozen weights, same centre crop: the only difference is the stored map's 16-bit
    rounding (<= STEP = 7.6e-6). It moves a mask pixel only where the depth lies within STEP
    of an interval bound; measured on tiny: 1 of 252 images, 4 edge pixels that interpolate to
    0.5 +- 3e-8 (float rounding picks their side in either path), max feature difference
    0.042 there; every other image's features are bit-identical (atol 1e-5 below: the same
    inputs in other batch sizes)."""
    config = _config("on_the_fly", maps)
    pre = _eval_crops(preps["precomputed"], config)
    otf = _eval_crops(preps["on_the_fly"], config)
    assert sorted(pre) == sorted(otf)
    ids = sorted(otf)
    x = np.stack([otf[i]["input"] for i in ids])

    def features(depth_map):  # the training step's own path and frozen backbone
        aux = {"f_ret": np.zeros((len(ids), 0, 5), np.float32), "depth_map": depth_map}
        return np.asarray(jax.jit(task._fusion_inputs)(task.frozen_state(), x, aux)[1])

    stored = np.stack([otf[i]["depth_map"] for i in ids])
    written = np.stack([pre[i]["depth"] for i in ids])  # data_prep's, in the TFRecords
    # data_prep's own crop of the full-precision map (its `crop_like_image`).
    cfg, posts = config.prep.depth, {int(r["post_index"]): r for r in _rows(
        os.path.join(preps["on_the_fly"], "posts.csv"))}
    exact = []
    for i in ids:
        path = os.path.join(tiny_raw, posts[i]["image_path"])
        image = images.read_rgb(path)
        d01, _ = depth_data.load_for_image(maps, posts[i]["post_id"], image.shape[:2], cfg)
        crop, d = depth_data.crop_like_image(image, d01, resize=cfg.resize, crop=cfg.crop)
        np.testing.assert_array_equal(crop, otf[i]["input"])  # the same centre crop
        np.testing.assert_array_equal(pre[i]["input"], otf[i]["input"])
        exact.append(d)
    exact = np.stack(exact)
    # The geometry and the backbone agree exactly: the full-precision map gives data_prep's.
    np.testing.assert_allclose(features(exact), written, rtol=0, atol=1e-5)
    assert np.abs(stored - exact).max() <= STEP + 1e-7
    flipped = np.asarray(depth.depth_masks(stored)) != np.asarray(depth.depth_masks(exact))
    near_bound = np.zeros(exact.shape, bool)
    for bound in {b for iv in cfg.intervals for b in iv} - {0.0, 1.0}:
        near_bound |= np.abs(exact - bound) <= 2 * STEP
    assert not (flipped.any(1) & ~near_bound).any()  # a flip is always the rounding's
    moved = flipped.any((1, 2, 3))
    assert moved.sum() <= 0.02 * len(ids), moved.sum()
    on_the_fly = features(stored)
    np.testing.assert_allclose(on_the_fly[~moved], written[~moved], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- pipelines

def _planted(tmp_path, depth_maps: bool) -> tuple[str, dict]:
    """(a prepared-like folder, likes -> encoded image): 6 groups of 3 noise images whose depth
    map is their grey level (mean over RGB / 255), so an aligned crop of the map is the grey of
    the image's crop."""
    rng = np.random.default_rng(3)
    splits, by_likes = {}, {}
    for g in range(6):
        pixels = [rng.integers(0, 256, (40, 52, 3), np.uint8) for _ in range(3)]
        example = {
            "group_id": f"g{g}", "user": f"u{g}",
            "post_index": np.arange(3 * g, 3 * g + 3, dtype=np.int64),
            "likes": rng.uniform(10, 100, 3).astype(np.float32),
            "timestamp": np.zeros(3, np.int64),
            "image": np.array([tf.io.encode_png(p).numpy() for p in pixels], dtype=object),
            "pairs": np.array([[0, 1], [1, 2], [0, 2]], np.int32),
            "f_ret": np.zeros((3, 0, 5), np.float32),
            "depth": np.zeros((3, 5, 0), np.float32),
        }
        by_likes.update(zip(example["likes"].tolist(), example["image"], strict=True))
        if depth_maps:
            example["depth_map"] = np.array(
                [depth_data.encode_map(p.mean(-1) / 255, p.shape[:2]) for p in pixels],
                dtype=object)
        splits.setdefault(("train", "train", "train", "train", "validation", "test")[g],
                          []).append(example)
    out = str(tmp_path / ("maps" if depth_maps else "plain"))
    tfds_builder.write(out, "groups", splits, depth_maps=depth_maps)
    return out, by_likes


def _assert_aligned(images_u8, depth_map):
    """The map is the grey of the image crop: rounding the image to uint8 moves it by at most
    0.5 / 255, the map's quantisation by STEP; a crop off by one pixel of this noise by ~0.1.
    (The pipelines flip nothing; a flip of the joint tensor would move both alike.)"""
    assert depth_map.shape == images_u8.shape[:-1] and depth_map.dtype == np.float32
    np.testing.assert_allclose(depth_map, images_u8.mean(-1) / 255, rtol=0,
                               atol=0.5 / 255 + STEP + 1e-6)


def test_pipelines_crop_the_depth_map_exactly_as_the_image(tmp_path):
    config = load_config("full", "tiny")  # random 32 px crops of 36 px short sides
    folder, encoded = _planted(tmp_path, True)
    with_maps = input_pipeline.get_builder(folder, "groups")
    plain = input_pipeline.get_builder(_planted(tmp_path, False)[0], "groups")
    take = lambda stream, n: list(itertools.islice(stream, n))  # noqa: E731

    batches = take(input_pipeline.train_dataset(with_maps, config), 3)
    for batch, same in zip(batches, take(input_pipeline.train_dataset(plain, config), 3),
                           strict=True):
        assert batch["depth_map"].shape == (config.batch_size, 2, 32, 32)
        _assert_aligned(batch["image"], batch["depth_map"])
        # The maps change nothing else: the same crops, pairs and swaps as without them.
        for k in same:
            np.testing.assert_array_equal(batch[k], same[k])
    # Random crops: most are not the centre one, so the maps followed other offsets too.
    off_centre = [not np.array_equal(image, input_pipeline.decode_and_crop(
        encoded[float(likes)], short_side=36, crop=32).numpy())
        for batch in batches for image, likes in zip(batch["image"].reshape(-1, 32, 32, 3),
                                                     batch["likes"].reshape(-1), strict=True)]
    assert sum(off_centre) > len(off_centre) // 2

    batch = take(input_pipeline.train_images_dataset(with_maps, config), 1)[0]
    assert batch["depth_map"].shape == (2 * config.batch_size, 32, 32)
    _assert_aligned(batch["image"], batch["depth_map"])
    seen = 0
    for split in ("train", "validation", "test"):
        for batch in input_pipeline.eval_dataset(with_maps, config, split).as_numpy_iterator():
            _assert_aligned(batch["input"], batch["depth_map"])
            seen += len(batch["input"])
    assert seen == 18


# ---------------------------------------------------------------- training

@pytest.fixture(scope="module")
def task(preps, maps):
    config = _config("on_the_fly", maps)
    with open(os.path.join(preps["on_the_fly"], "summary.json")) as f:
        counts = json.load(f)["counts"]["groups"]
    return tasks.ImagePairs(config, preps["on_the_fly"], counts, mesh=None)


def test_the_frozen_depth_backbone_stays_frozen(task):
    assert task.depth_on_the_fly and task.eval_keys == ("f_ret", "depth_map")
    tx, _ = optim.make_optimizer(task.config, steps_per_epoch=10)
    params, model_state = task.init(jax.random.key(0))
    frozen = task.frozen_state()
    assert set(frozen) == {depth.FROZEN} and depth.FROZEN not in params
    before = jax.tree.map(np.array, {"params": params, "frozen": frozen[depth.FROZEN]})
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             model_state={**model_state, **frozen}, opt_state=tx.init(params))
    # As train.py runs it: jitted, the state donated.
    step = jax.jit(functools.partial(train.train_step, task=task, tx=tx, rng=jax.random.key(1)),
                   donate_argnums=0)
    batches = task.train_dataset().as_numpy_iterator()
    for _ in range(3):
        batch = next(batches)
        assert batch["depth_map"].shape == (task.config.batch_size, 2, 32, 32)
        state, metrics = step(state, batch)
        assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    after = jax.device_get(state.model_state[depth.FROZEN])
    same = jax.tree.map(lambda a, b: np.array_equal(a, b) and a.dtype == b.dtype,
                        before["frozen"], after)
    assert all(jax.tree.leaves(same))  # bit for bit, every array
    moved = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before["params"],
                         jax.device_get(state.params))
    assert any(jax.tree.leaves(moved["backbone"])) and any(jax.tree.leaves(moved["fusion"]))
    # AdamW keeps mu and nu for the trained params only: nothing of the frozen backbone.
    names = [checkpointing.path_name(p)
             for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)]
    assert names and not any("frozen" in n for n in names)
    floats = sum(x.size for x in jax.tree.leaves(state.opt_state)
                 if jnp.issubdtype(x.dtype, jnp.floating))
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    assert floats == 2 * num_params
    assert sum(x.size for x in jax.tree.leaves(after)) > 0.5 * num_params


def test_scores_read_the_depth_map_on_the_fly(task):
    params, model_state = task.init(jax.random.key(0))
    model_state = {**model_state, **task.frozen_state()}
    batch = next(task.eval_dataset("validation").as_numpy_iterator())
    score = jax.jit(task.score)
    base = score(params, model_state, batch["input"], batch["f_ret"], batch["depth_map"])
    assert base.shape == batch["post_index"].shape and np.all(np.isfinite(base))
    flipped = score(params, model_state, batch["input"], batch["f_ret"],
                    1.0 - batch["depth_map"])  # near and far swapped
    assert np.abs(flipped - base).max() > 1e-6


@pytest.mark.slow
def test_full_variant_trains_on_the_fly_and_init_from_leaves_the_frozen_backbone(
        task, tiny_raw, maps, preps, tmp_path, monkeypatch):
    """One run of `configs/full.py:tiny --config.prep.depth.mode=on_the_fly` (2 steps, a
    checkpoint and an evaluation), initialised from a checkpoint whose frozen_depth arrays are
    halved: the checkpointed frozen backbone is still the configured one."""
    config = _config("on_the_fly", maps)
    config.data.raw_dir, config.data.prepared_dir = tiny_raw, preps["on_the_fly"]
    config.num_steps, config.log_every_steps = 2, 1
    config.init_from = str(tmp_path)  # any folder: `pretrained.load` is replaced below
    params, model_state = task.init(jax.random.key(5))
    fresh_frozen = task.frozen_state()[depth.FROZEN]
    source = jax.tree.map(np.asarray, {"params": params, **model_state,
                                       depth.FROZEN: jax.tree.map(lambda a: a / 2, fresh_frozen)})
    monkeypatch.setattr(pretrained, "load", lambda path: source)
    results = train.train_and_evaluate(config, str(tmp_path / "workdir"))
    assert results["test"]["num_pairs"] > 0
    assert 0.0 <= results["test"]["pairwise_accuracy"] <= 1.0
    state, _ = checkpointing.restore_best_checkpoint(str(tmp_path / "workdir"))  # verified
    assert set(state["model_state"]) == {"batch_stats", depth.FROZEN}
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                        fresh_frozen, state["model_state"][depth.FROZEN])
    assert all(jax.tree.leaves(same))
    # The backbone itself was loaded (two small steps away from the source's), so init_from
    # did run; the frozen backbone was left out of it.
    loaded = np.asarray(state["params"]["backbone"]["conv1"]["kernel"])
    assert np.abs(loaded - np.asarray(params["backbone"]["conv1"]["kernel"])).max() < 0.02


# ---------------------------------------------------------------- validation

def test_on_the_fly_is_accepted_where_it_can_run():
    config = _config("on_the_fly")
    config_validation.validate(config, num_devices=1)
    for variant in ("retrieval", "backbone_only", "concat", "log_likes"):
        config_validation.validate(_config("on_the_fly", variant=variant), num_devices=1)
    # data_prep's crop settings mean nothing on the fly (the training crop is used) ...
    config.prep.depth.update(dict(resize=16, crop=64, batch_size=0))
    config_validation.validate(config, num_devices=1)
    config.prep.depth.mode = "precomputed"  # ... and are checked when precomputed
    with pytest.raises(config_lib.ConfigError, match=r"prep\.depth\.resize=16 must be >="):
        config_validation.validate(config, num_devices=1)


@pytest.mark.parametrize("name, arg, change, message", [
    ("ratio", "tiny", {}, r"mode='on_the_fly' computes the depth features .*config\.fusion"),
    ("latent_svm", "tiny", {}, r"task='latent_svm', no config\.fusion"),
    ("full", "tiny", {"enabled": False}, r"use_depth=True needs depth features"),
    ("full", "tiny", {"mode": "fly"}, r"config\.prep\.depth\.mode='fly' is not one of"),
    ("full", "tiny", {"fill": "white"}, r"config\.prep\.depth\.fill='white'"),
    ("full", "tiny", {"backbone": "resnet51"}, r"config\.prep\.depth\.backbone='resnet51'"),
])
def test_bad_on_the_fly_settings_are_refused(name, arg, change, message):
    config = load_config(name, arg)
    config.prep.depth.update({"enabled": True, "mode": "on_the_fly", **change})
    with pytest.raises(config_lib.ConfigError, match=message):
        config_validation.validate(config, num_devices=1)
