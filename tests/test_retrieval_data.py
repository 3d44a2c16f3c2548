# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The retrieval branch in the data: no leakage (checked from the manifests), f_ret in the
TFRecords, cached embeddings reused, the user's own vectors, the retrieval-only scorer."""

import csv
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from ipa_jax import evaluation, features
from ipa_jax.data import instagram, prepare, tfds_builder
from ipa_jax.data import retrieval as retrieval_data
from tests.conftest import load_config


@pytest.fixture(scope="module")
def prepared(tiny_raw, tmp_path_factory):
    config = load_config("ratio", "tiny")
    out = str(tmp_path_factory.mktemp("retrieval") / "prepared")
    prepare.prepare(tiny_raw, out, config.prep, progress=False)
    return out, config


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_retrieval_never_leaks(prepared):
    out, config = prepared
    groups = _rows(os.path.join(out, "groups.csv"))
    split = {r["post_id"]: r["split"] for r in groups}
    group = {r["post_id"]: r["group_id"] for r in groups}
    user = {r["post_id"]: r["user"] for r in _rows(os.path.join(out, "posts.csv"))}
    bank_size = {}
    for r in groups:
        if r["split"] == "train":
            bank_size[r["user"]] = bank_size.get(r["user"], 0) + 1
    rows = _rows(os.path.join(out, "retrieval.csv"))
    assert rows
    for r in rows:
        query, hit = r["post_id"], r["retrieved_post_id"]
        assert hit != query
        assert split.get(hit) == "train"  # validation and test posts are in no bank
        if split.get(query) == "train":
            assert group[hit] != group[query]  # no label leaks from the query's own group
        if user[hit] != user[query]:  # cross-user slots only for small banks (fallback mode)
            assert bank_size.get(user[query], 0) < config.prep.retrieval.min_bank_size
        assert 0.0 <= float(r["similarity"]) <= 1.0
    per_query = {}
    for r in rows:
        per_query.setdefault(r["post_id"], []).append(float(r["similarity"]))
    assert all(s == sorted(s, reverse=True) for s in per_query.values())
    assert max(len(s) for s in per_query.values()) == config.prep.retrieval.k


def test_f_ret_in_the_tfrecords_matches_the_manifest(prepared):
    out, config = prepared
    with np.load(os.path.join(out, "retrieval.npz")) as data:
        f_ret = data["f_ret"]
    assert f_ret.shape[1:] == (config.prep.retrieval.k, 5)
    builder = tfds.builder_from_directory(tfds_builder.dataset_dir(out, "groups"))
    seen = 0
    for example in builder.as_dataset(split="train+validation+test").as_numpy_iterator():
        np.testing.assert_array_equal(example["f_ret"], f_ret[example["post_index"]])
        seen += len(example["post_index"])
    assert seen == sum(1 for _ in _rows(os.path.join(out, "groups.csv")))


def test_rerun_reuses_cached_embeddings(prepared, tiny_raw, tmp_path, monkeypatch):
    out, config = prepared
    copy = str(tmp_path / "prepared")
    shutil.copytree(out, copy)
    os.remove(os.path.join(copy, prepare.SUMMARY))  # as if interrupted before the end

    def fail(*args, **kwargs):
        raise AssertionError("embeddings were recomputed")

    monkeypatch.setattr(features, "embed_files", fail)
    prepare.prepare(tiny_raw, copy, config.prep, progress=False)
    with np.load(os.path.join(out, "retrieval.npz")) as a, \
            np.load(os.path.join(copy, "retrieval.npz")) as b:
        np.testing.assert_array_equal(a["f_ret"], b["f_ret"])


def test_user_vectors_replace_an_aspect(tiny_raw, tmp_path):
    from ipa_jax.data import instagram

    posts, _ = instagram.read_posts(tiny_raw, progress=False)
    ids = np.array([p.post_id for p in posts])
    vectors = np.random.default_rng(0).normal(size=(len(ids), 7)).astype(np.float32)
    path = str(tmp_path / "mine.npz")
    np.savez(path, post_id=ids[::-1], vectors=vectors[::-1])
    np.testing.assert_array_equal(retrieval_data.read_user_vectors(path, list(ids)), vectors)
    with pytest.raises(ValueError, match="no vector for 1 posts"):
        retrieval_data.read_user_vectors(path, [*ids, "nobody-1"])
    parquet = str(tmp_path / "mine.parquet")
    pq.write_table(pa.table({"post_id": list(ids[::-1]), "vector": list(vectors[::-1])}),
                   parquet)
    np.testing.assert_array_equal(retrieval_data.read_user_vectors(parquet, list(ids)), vectors)


def test_person_boxes_cover_visible_keypoints_with_a_margin():
    kp = np.zeros((17, 3), np.float32)
    kp[0] = (10, 20, 2)  # x, y, visible
    kp[5] = (30, 60, 2)
    kp[6] = (99, 99, 0)  # not visible: ignored
    boxes = retrieval_data.person_boxes([kp], margin=0.1)
    # y: 20..60 (+-4+2), x: 10..30 (+-2+2)
    np.testing.assert_allclose(boxes, [[14.0, 6.0, 66.0, 34.0]])
    assert retrieval_data.person_boxes([], 0.1).shape == (0, 4)


def test_retrieval_only_score_is_the_weighted_mean_local_popularity():
    f_ret = np.zeros((3, 2, 5), np.float32)
    f_ret[0, :, 0], f_ret[0, :, 1] = (2.0, 0.5), (0.6, 0.2)  # (2*.6 + .5*.2) / .8 = 1.625
    f_ret[1, 0, 0], f_ret[1, 0, 1] = 3.0, 1.0
    scores = evaluation.retrieval_only_scores(f_ret)
    np.testing.assert_allclose(scores, np.log([1.625, 3.0, 1.0]), rtol=1e-6)


def test_a_dataset_without_keypoints_warns_once_and_renormalises(prepared, tiny_raw, tmp_path,
                                                                 caplog):
    """Real photos carry no keypoints: pose is missing for the whole dataset, so w_pose goes to
    0 and the other weights are scaled to sum to 1 (said once, stored in summary.json), rather
    than S_p = 0 for every pair while still weighing 0.2 of W."""
    out, config = prepared
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw, ignore=shutil.ignore_patterns("keypoints"))
    r = config.prep.retrieval
    with caplog.at_level("WARNING"):
        summary = prepare.prepare(str(raw), str(tmp_path / "out"), config.prep, progress=False)
    warnings = [m for m in caplog.messages if "has no keypoints" in m]
    assert len(warnings) == 1
    stats = summary["retrieval"]
    total = r.w_background + r.w_semantic
    assert stats["missing_aspects"] == ["pose"] and stats["posts_with_people"] == 0
    assert stats["weights"] == pytest.approx(
        {"pose": 0.0, "background": r.w_background / total, "semantic": r.w_semantic / total})
    with np.load(tmp_path / "out" / "retrieval.npz") as data:
        f_ret, retrieved = data["f_ret"], data["retrieved"]
    filled = retrieved >= 0
    assert filled.any() and (f_ret[..., 3] == 0).all()  # S_p
    np.testing.assert_allclose(  # W from the renormalised weights
        f_ret[..., 1][filled], (stats["weights"]["background"] * f_ret[..., 2]
                                + stats["weights"]["semantic"] * f_ret[..., 4])[filled],
        rtol=1e-5, atol=1e-6)
    # The dataset with keypoints keeps its weights and says nothing.
    with open(os.path.join(out, prepare.SUMMARY)) as f:
        with_pose = json.load(f)["retrieval"]
    assert with_pose["missing_aspects"] == [] and with_pose["weights"]["pose"] == r.w_pose > 0


def _box_masks(raw, posts, margin):
    """Background masks (255 = background) drawn from each post's keypoint boxes, with the
    comparisons the boxes are masked with: the same pixels left out."""
    from PIL import Image  # noqa: PLC0415

    folder = raw / "background"
    folder.mkdir(exist_ok=True)
    for post in posts:
        with Image.open(raw / post.image_path) as im:
            h, w = im.height, im.width
        boxes = retrieval_data.person_boxes(retrieval_data.people_of(str(raw), post.post_id),
                                            margin)
        ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
        inside = np.zeros((h, w), bool)
        for y0, x0, y1, x1 in boxes:
            inside |= (ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1)
        Image.fromarray(np.where(inside, 0, 255).astype(np.uint8)).save(
            folder / f"{post.post_id}.png")


def test_background_masks_are_read_and_give_the_boxes_features_when_they_agree(
        prepared, tiny_raw, tmp_path):
    """Annotator output in the documented layout (background/<post_id>.png): masks holding the
    keypoint boxes give exactly the embeddings the boxes give (on a copy without the embedded
    dataset's own drawn masks); other masks, the drawn ones included, change them."""
    out, config = prepared
    r = config.prep.retrieval
    kept = {row["post_id"] for row in _rows(os.path.join(out, "posts.csv"))}
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw, ignore=shutil.ignore_patterns("background"))
    posts, _ = instagram.read_posts(str(raw), check_images=False, progress=False)
    posts = [p for p in posts if p.post_id in kept][::4]  # a quarter, people among them
    boxes = [retrieval_data.person_boxes(retrieval_data.people_of(str(raw), p.post_id),
                                         r.person_margin) for p in posts]
    assert sum(len(b) > 0 for b in boxes) >= 5

    embedder = features.file_embedder(retrieval_data.embedding_spec(r), r.crop, r.normalize)

    def embed(raw_dir):
        return retrieval_data.embed("background", str(raw_dir), posts, boxes, r,
                                    embedder=embedder)

    by_boxes = embed(raw)
    _box_masks(raw, posts, r.person_margin)
    np.testing.assert_array_equal(embed(raw), by_boxes)
    with_people = np.array([len(b) > 0 for b in boxes])
    drawn = embed(tiny_raw)  # the embedded dataset's own masks (people and objects as drawn)
    assert not np.allclose(drawn[with_people], by_boxes[with_people])
    with open(os.path.join(out, prepare.SUMMARY)) as f:  # `prepared` read the drawn masks
        assert json.load(f)["retrieval"]["posts_with_background_mask"] == len(kept)
    # Masks of another size (resized to the image) keeping only the top half as background.
    from PIL import Image  # noqa: PLC0415

    for post in posts:
        mask = np.full((30, 30), 255, np.uint8)
        mask[15:] = 0
        Image.fromarray(mask).save(raw / "background" / f"{post.post_id}.png")
    assert not np.allclose(embed(raw), by_boxes)
