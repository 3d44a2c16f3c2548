# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The tf.data pipelines: fixed shapes, exact evaluation coverage, deterministic resumable pairs."""

import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from ipa_jax import input_pipeline
from tests.conftest import REPO, load_config


@pytest.fixture(scope="module")
def setup(tiny_prepared):
    config = load_config("i2pa", "tiny")
    return config, input_pipeline.get_builder(tiny_prepared, config.data.pairs)


def _split_posts(prepared, split):
    with open(os.path.join(prepared, "pdips.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    with open(os.path.join(prepared, "posts.csv")) as f:
        index = {r["post_id"]: int(r["post_index"]) for r in csv.DictReader(f)}
    return sorted(index[p] for r in rows for p in (r["post_a"], r["post_b"]))


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_eval_visits_every_image_once(setup, tiny_prepared, split):
    config, builder = setup
    seen = []
    for batch in input_pipeline.eval_dataset(builder, config, split).as_numpy_iterator():
        batch = input_pipeline.pad_batch(batch, config.eval_batch_size)
        assert batch["input"].shape == (config.eval_batch_size, 32, 32, 3)
        assert batch["input"].dtype == np.uint8
        seen.extend(batch["post_index"][batch["post_index"] >= 0].tolist())
    assert sorted(seen) == _split_posts(tiny_prepared, split)
    assert input_pipeline.count_images(builder, split) == len(seen)


def test_processes_feed_their_share_of_the_same_batches(setup, monkeypatch):
    """2 processes (simulated) feed halves of exactly the batches 1 process feeds alone."""
    config, builder = setup
    alone = _take(iter(input_pipeline.train_dataset(builder, config, start_step=2)), 4)
    halves = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for i in range(2):
        monkeypatch.setattr(jax, "process_index", lambda i=i: i)
        halves.append(_take(iter(input_pipeline.train_dataset(builder, config, start_step=2)),
                            4))
    for step, whole in enumerate(alone):
        for key in ("image", "likes", "f_ret"):
            np.testing.assert_array_equal(
                whole[key], np.concatenate([h[step][key] for h in halves]))


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_train_stream_is_deterministic_and_resumes_exactly(setup):
    config, builder = setup
    first = iter(input_pipeline.train_dataset(builder, config))
    head = _take(first, 3)
    assert head[0]["image"].shape == (config.batch_size, 2, 32, 32, 3)
    assert head[0]["likes"].shape == (config.batch_size, 2)
    tail = _take(first, 6)  # runs past the end of the first epoch (25 pairs, 8 per batch)

    again = iter(input_pipeline.train_dataset(builder, config))
    for a, b in zip(head, _take(again, 3), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["likes"], b["likes"])
    # The position is the step: a stream started at step 3 is the tail, crops included.
    resumed = iter(input_pipeline.train_dataset(builder, config, start_step=3))
    for a, b in zip(tail, _take(resumed, 6), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["likes"], b["likes"])

    # Both orders of a pair occur, so the BCE label is not always 1.
    likes = np.concatenate([b["likes"] for b in head + tail])
    assert 0.2 < np.mean(likes[:, 0] > likes[:, 1]) < 0.8


def test_decode_and_crop_resizes_short_side_then_crops():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(60, 90, 3), dtype=np.uint8)
    encoded = tf.io.encode_png(image)
    center = input_pipeline.decode_and_crop(encoded, short_side=40, crop=32).numpy()
    resized = tf.image.resize(image, (40, 60), antialias=True).numpy()
    expected = np.clip(np.round(resized[4:36, 14:46]), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(center, expected)
    seed = tf.constant([1, 2], tf.int64)
    a = input_pipeline.decode_and_crop(encoded, short_side=40, crop=32, seed=seed).numpy()
    b = input_pipeline.decode_and_crop(encoded, short_side=40, crop=32, seed=seed).numpy()
    np.testing.assert_array_equal(a, b)
    # The random crop is a window of the resized image.
    windows = [resized[i:i + 32, j:j + 32] for i in range(9) for j in range(29)]
    assert min(np.abs(np.round(w) - a).max() for w in windows) <= 1


def test_a_stream_dropped_mid_chunk_lets_the_process_exit(tiny_prepared):
    """A Python function inside tf.data (numpy_function) deadlocked the end of a full-model demo
    run: the iterator's destructor held the GIL while tf.data's threads waited for it. The
    stream reads in its own thread; dropping it mid-chunk and exiting takes no time."""
    code = (
        "import gc, sys\n"
        "from ipa_jax import input_pipeline\n"
        "from tests.conftest import REPO, load_config\n"
        "config = load_config('i2pa', 'tiny')\n"
        f"builder = input_pipeline.get_builder({tiny_prepared!r}, config.data.pairs)\n"
        "for _ in range(3):\n"
        "    stream = input_pipeline.train_dataset(builder, config)\n"
        "    next(stream)\n"
        "    del stream\n"
        "    gc.collect()\n"
        "print('exited cleanly', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "exited cleanly" in proc.stdout, proc.stderr[-3000:]
