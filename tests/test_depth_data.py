# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The 3D-aware branch in the data: depth features in the TFRecords equal `compute_features`,
posts without a usable map are dropped (counted) or kept with a constant map, the pipelines
carry `depth`, and with the branch off nothing but an empty [5, 0] `depth` changes."""

import csv
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from ipa_jax import config_lib, config_validation, input_pipeline
from ipa_jax.data import depth as depth_data
from ipa_jax.data import out_dir as out_dir_lib
from ipa_jax.data import prepare, tfds_builder
from tests.conftest import load_config

MANIFESTS = ("posts.csv", "groups.csv", "pdips.csv", "images.csv")


def _config(depth_dir="", *, enabled=True, missing="drop", retrieval=False):
    config = load_config("ratio", "tiny")
    config.prep.retrieval.enabled = retrieval
    d = config.prep.depth
    d.enabled, d.missing, d.depth_dir = enabled, missing, depth_dir
    d.backbone, d.resize, d.crop, d.batch_size = "resnet_mini", 36, 32, 16
    return config


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _examples(out, name):
    builder = tfds.builder_from_directory(tfds_builder.dataset_dir(out, name))
    return list(builder.as_dataset(split="train+validation+test").as_numpy_iterator())


@pytest.fixture(scope="module")
def runs(tiny_raw, tmp_path_factory):
    """Preparations of tiny: depth off; on with missing=drop (retrieval on too); on with
    missing=constant. The maps: a copy with one missing, one garbage, one constant and one
    at half size (a .npy)."""
    tmp = tmp_path_factory.mktemp("depth_data")
    plain = str(tmp / "plain")
    prepare.prepare(tiny_raw, plain, _config(enabled=False).prep, progress=False)
    ids = [r["post_id"] for r in _rows(os.path.join(plain, "posts.csv"))]
    missing, garbage, constant, small = ids[5], ids[50], ids[100], ids[150]
    maps = str(tmp / "depth")
    shutil.copytree(os.path.join(tiny_raw, "depth"), maps)
    os.remove(os.path.join(maps, f"{missing}.png"))
    with open(os.path.join(maps, f"{garbage}.png"), "wb") as f:
        f.write(b"not a png at all")
    Image.fromarray(np.full((20, 30), 7000, np.uint16)).save(
        os.path.join(maps, f"{constant}.png"))
    value = depth_data.read_depth_map(os.path.join(maps, f"{small}.png"))
    os.remove(os.path.join(maps, f"{small}.png"))
    np.save(os.path.join(maps, f"{small}.npy"), value[::2, ::2])
    outs = {"plain": plain}
    for name, config in (("drop", _config(maps, retrieval=True)),
                         ("constant", _config(maps, missing="constant"))):
        outs[name] = str(tmp / name)
        prepare.prepare(tiny_raw, outs[name], config.prep, progress=False)
    bad = {"missing depth map": missing, "unreadable depth map": garbage,
           "constant depth map": constant}
    return outs, maps, bad, small


def _features(tiny_raw, maps, out, cache, missing="drop"):
    """`compute_features` of the posts of a preparation, in post_index order."""
    posts = [(r["post_id"], r["image_path"]) for r in _rows(os.path.join(out, "posts.csv"))]
    result = depth_data.compute_features(tiny_raw, maps, posts, _config(missing=missing).prep.depth,
                                         cache, progress=False)
    assert len(result.dropped) == 0
    return result.features


def test_drop_policy_counts_and_removes_posts_without_a_map(runs):
    outs, _, bad, small = runs
    out = outs["drop"]
    summary = out_dir_lib.read_summary(out)
    drops = {reason: 1 for reason in bad}
    assert summary["drops"]["depth"] == drops
    with open(os.path.join(out, "drops.json")) as f:
        assert '"depth"' in f.read()
    plain_ids = [r["post_id"] for r in _rows(os.path.join(outs["plain"], "posts.csv"))]
    ids = [r["post_id"] for r in _rows(os.path.join(out, "posts.csv"))]
    assert ids == [p for p in plain_ids if p not in set(bad.values())]
    depth = summary["depth"]
    assert depth["outcomes"] == {"ok": len(ids) - 1, "resized depth map": 1, **drops}
    assert (depth["kept"], depth["dropped"], depth["kept_resized"], depth["kept_constant"]) == (
        len(ids), 3, 1, 0)
    assert small in ids
    for name in ("groups.csv", "pdips.csv", "images.csv"):
        rows = _rows(os.path.join(out, name))
        assert not {v for r in rows for v in r.values()} & set(bad.values()), name
    retrieved = _rows(os.path.join(out, "retrieval.csv"))
    assert retrieved and not ({r["post_id"] for r in retrieved}
                              | {r["retrieved_post_id"] for r in retrieved}) & set(bad.values())
    report = prepare.format_report(summary)
    assert "dropped at depth  missing depth map" in report
    assert "depth maps: " in report and "resized depth map" in report


def test_tfrecord_depth_equals_compute_features(runs, tiny_raw, tmp_path):
    outs, maps, _, _ = runs
    out = outs["drop"]
    table = _features(tiny_raw, maps, out, str(tmp_path))
    assert table.shape == (len(_rows(os.path.join(out, "posts.csv"))), 5, 512)
    assert np.isfinite(table).all()
    with np.load(os.path.join(out, "retrieval.npz")) as data:
        f_ret = data["f_ret"]
    for name in tfds_builder.CONFIGS:
        seen = 0
        for example in _examples(out, name):
            assert example["depth"].dtype == np.float32
            np.testing.assert_allclose(example["depth"], table[example["post_index"]],
                                       rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(example["f_ret"], f_ret[example["post_index"]])
            seen += len(example["post_index"])
        assert seen, name


def test_constant_policy_keeps_every_post_and_changes_no_manifest(runs, tiny_raw, tmp_path):
    outs, maps, bad, _ = runs
    out, plain = outs["constant"], outs["plain"]
    summary = out_dir_lib.read_summary(out)
    assert summary["drops"]["depth"] == {}
    assert summary["depth"]["kept_constant"] == 3 and summary["depth"]["dropped"] == 0
    for name in MANIFESTS:
        assert _read(os.path.join(out, name)) == _read(os.path.join(plain, name)), name
    plain_summary = out_dir_lib.read_summary(plain)
    assert {k: v for k, v in summary["drops"].items() if k != "depth"} == plain_summary["drops"]
    assert summary["counts"] == plain_summary["counts"]
    table = _features(tiny_raw, maps, out, str(tmp_path), missing="constant")
    index = {r["post_id"]: int(r["post_index"]) for r in _rows(os.path.join(out, "posts.csv"))}
    got = {}
    for example in _examples(out, "images"):
        got.update(zip(example["post_index"].tolist(), example["depth"], strict=True))
    for post_id in bad.values():  # the constant map's features, not zeros
        i = index[post_id]
        np.testing.assert_allclose(got[i], table[i], rtol=1e-5, atol=1e-6)
        assert np.abs(got[i]).sum() > 0


def test_disabled_depth_is_empty_and_absent_from_the_manifests(runs):
    plain = runs[0]["plain"]
    summary = out_dir_lib.read_summary(plain)
    assert "depth" not in summary and "depth" not in summary["drops"]
    for name in tfds_builder.CONFIGS:
        for example in _examples(plain, name):
            assert example["depth"].shape == (len(example["post_index"]), 5, 0)
            assert example["f_ret"].shape == (len(example["post_index"]), 0, 5)
    config = _config(enabled=False)
    builder = input_pipeline.get_builder(plain, "groups")
    batch = next(input_pipeline.train_dataset(builder, config).as_numpy_iterator())
    assert batch["depth"].shape == (config.batch_size, 2, 5, 0)
    batch = next(input_pipeline.eval_dataset(builder, config, "test").as_numpy_iterator())
    assert batch["depth"].shape == (len(batch["post_index"]), 5, 0)


def test_pipelines_carry_depth(runs):
    out = runs[0]["drop"]
    config = _config()
    table = {}
    for example in _examples(out, "images"):
        table.update(zip(example["post_index"].tolist(), example["depth"], strict=True))
    by_row = {v.tobytes(): i for i, v in table.items()}
    assert len(by_row) == len(table)
    likes = {int(r["post_index"]): float(r["likes"])
             for r in _rows(os.path.join(out, "posts.csv"))}
    with np.load(os.path.join(out, "retrieval.npz")) as data:
        f_ret = data["f_ret"]
    builder = input_pipeline.get_builder(out, "groups")

    batch = next(input_pipeline.train_dataset(builder, config).as_numpy_iterator())
    assert batch["depth"].shape == (config.batch_size, 2, 5, 512)
    for b in range(config.batch_size):
        for k in range(2):
            i = by_row[batch["depth"][b, k].tobytes()]  # the same post's likes and f_ret
            assert batch["likes"][b, k] == np.float32(likes[i])
            np.testing.assert_array_equal(batch["f_ret"][b, k], f_ret[i])

    batch = next(input_pipeline.train_images_dataset(builder, config).as_numpy_iterator())
    assert batch["depth"].shape == (2 * config.batch_size, 5, 512)
    np.testing.assert_array_equal(batch["depth"], np.stack([table[i]
                                                            for i in batch["post_index"]]))

    seen = 0
    for batch in input_pipeline.eval_dataset(builder, config, "validation").as_numpy_iterator():
        n = len(batch["post_index"])
        batch = input_pipeline.pad_batch(batch, config.eval_batch_size)
        assert batch["depth"].shape == (config.eval_batch_size, 5, 512)
        np.testing.assert_array_equal(batch["depth"][:n],
                                      np.stack([table[i] for i in batch["post_index"][:n]]))
        assert not batch["depth"][n:].any()
        seen += n
    assert seen == input_pipeline.count_images(builder, "validation")


@pytest.mark.parametrize("field, value, message", [
    ("mode", "later", r"config\.prep\.depth\.mode='later' is not one of"),
    ("missing", "zeros", r"config\.prep\.depth\.missing"),
    ("near_is", "middle", r"config\.prep\.depth\.near_is"),
    ("fill", "white", r"config\.prep\.depth\.fill"),
    ("normalize", "none", r"config\.prep\.depth\.normalize"),
    ("constant_value", 1.5, r"config\.prep\.depth\.constant_value"),
    ("intervals", ((0.5, 0.2),) * 5, r"config\.prep\.depth\.intervals"),
    ("intervals", ((0.0, 0.5), (0.5, 1.0)), "5 names for 2 intervals"),
    ("resize", 16, r"must be >= config\.prep\.depth\.crop=32"),
    ("crop", 0, r"config\.prep\.depth\.crop=0 must be > 0"),
    ("batch_size", 0, r"config\.prep\.depth\.batch_size=0"),
    ("backbone", "resnet51", r"config\.prep\.depth\.backbone='resnet51'"),
    ("init_from", "/no/such/weights", r"config\.prep\.depth\.init_from"),
    ("depth_dir", "/no/such/maps", r"config\.prep\.depth\.depth_dir"),
])
def test_bad_depth_settings_are_rejected(field, value, message):
    config = _config()
    config.prep.depth[field] = value
    with pytest.raises(config_lib.ConfigError, match=message):
        config_validation.validate_prep(config.prep)
    config.prep.depth.enabled = False  # unchecked while off
    config_validation.validate_prep(config.prep)
