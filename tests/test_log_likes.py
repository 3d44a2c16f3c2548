# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The log-likes regression baseline trains on images (SPEC 2), not on pairs.

Every training image of the groups, those of groups without a valid pair included, comes once
per epoch, and the loss is the mean over images of (o - ln(likes))^2.
"""

import copy
import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ipa_jax import tasks
from ipa_jax.data import groups as groups_lib
from ipa_jax.data import prepare
from tests.conftest import load_config


@pytest.fixture(scope="module")
def task(tiny_prepared):
    config = load_config("i2pa", "tiny")
    with config.unlocked():
        config.data.pairs = "groups"
        config.loss = "log_likes_mse"
    with open(os.path.join(tiny_prepared, prepare.SUMMARY)) as f:
        counts = json.load(f)["counts"]["groups"]
    return tasks.ImagePairs(config, tiny_prepared, counts, mesh=None)


def _train_groups(prepared):
    """{group_id: [(post_index, likes), ...]} of the training groups, from the manifests."""
    with open(os.path.join(prepared, "posts.csv")) as f:
        index = {r["post_id"]: int(r["post_index"]) for r in csv.DictReader(f)}
    groups = {}
    with open(os.path.join(prepared, "groups.csv")) as f:
        for r in csv.DictReader(f):
            if r["split"] == "train":
                groups.setdefault(r["group_id"], []).append((index[r["post_id"]],
                                                             float(r["likes"])))
    return groups


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_every_training_image_once_per_epoch(task, tiny_prepared):
    groups = _train_groups(tiny_prepared)
    images = sorted(p for posts in groups.values() for p, _ in posts)
    min_rel_diff = task.config.prep.groups.min_rel_diff
    pairless = [p for posts in groups.values()
                if not groups_lib.valid_pairs([lk for _, lk in posts], min_rel_diff)
                for p, _ in posts]
    assert pairless, "the tiny data should have training groups without a valid pair"
    assert task.unit == "images" and task.num_train_examples == len(images)
    batch = 2 * task.config.batch_size  # as many images per step as batch_size pairs have
    assert task.examples_per_step == batch

    stream = iter(task.train_dataset())
    first = _take(stream, 2)
    assert first[0]["image"].shape == (batch, 32, 32, 3)
    assert first[0]["likes"].shape == first[0]["post_index"].shape == (batch,)
    n_batches = -(-3 * len(images) // batch)  # three epochs, across their boundaries
    rest = _take(stream, n_batches - 2)
    seen = np.concatenate([b["post_index"] for b in first + rest])
    n = len(images)
    for epoch in range(3):
        np.testing.assert_array_equal(np.sort(seen[epoch * n:(epoch + 1) * n]), images)
    assert not np.array_equal(seen[:n], seen[n:2 * n])  # reshuffled each epoch
    likes = {p: lk for posts in groups.values() for p, lk in posts}
    got = np.concatenate([b["likes"] for b in first + rest])
    np.testing.assert_array_equal(got, [likes[p] for p in seen])

    resumed = iter(task.train_dataset(start_step=2))  # the position is the step
    for a, b in zip(rest, _take(resumed, len(rest)), strict=True):
        for key in ("image", "likes", "post_index"):
            np.testing.assert_array_equal(a[key], b[key])


class _MeanPixelScorer(nn.Module):
    """o = w . (mean RGB of the image) + b: a model whose scores numpy can recompute."""

    @nn.compact
    def __call__(self, x, train: bool):
        del train
        logits = nn.Dense(1, kernel_init=nn.initializers.normal(3.0),
                          bias_init=nn.initializers.constant(4.0))(x.mean(axis=(1, 2)))
        return logits, {}


def test_loss_is_the_mean_over_images_of_the_squared_log_error(task):
    scorer = copy.copy(task)
    scorer.model = _MeanPixelScorer()
    params = scorer.model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    batch = {k: jnp.asarray(v) for k, v in next(iter(task.train_dataset())).items()}
    loss, (state, aux) = jax.jit(scorer.loss)(params["params"], {}, batch, jax.random.key(1))
    assert state == {} and aux == {}
    pixels = np.asarray(batch["image"], np.float64) / 255  # config.input.normalize = "unit"
    w = np.asarray(params["params"]["Dense_0"]["kernel"], np.float64)[:, 0]
    b = float(params["params"]["Dense_0"]["bias"][0])
    o = pixels.mean(axis=(1, 2)) @ w + b
    likes = np.asarray(batch["likes"], np.float64)
    assert o.shape == likes.shape == (2 * task.config.batch_size,)
    np.testing.assert_allclose(float(loss), np.mean((o - np.log(likes)) ** 2), rtol=1e-5)
