# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Frozen backbone features of every prepared image, computed once under jit and cached.

The cache is `<prepared_dir>/features/<backbone>-<key>.npz` (post_index, features), keyed by
everything that changes the numbers: backbone, weights, input size and normalisation. A rerun
with the same settings loads it instead of recomputing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from ipa_jax import evaluation, input_pipeline, models, sharding
from ipa_jax.normalize import preprocess

SPLITS = ("train", "validation", "test")


def cache_path(config: ml_collections.ConfigDict, prepared_dir: str) -> str:
    f, i = config.features, config.input
    key = json.dumps({"features": f.to_dict(), "resize": i.resize_short_side,
                      "crop": i.crop_size, "normalize": i.normalize}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return os.path.join(prepared_dir, "features", f"{f.backbone}-{digest}.npz")


def _backbone_variables(config, model, mesh):
    """Random (seeded) weights, or the backbone of a trained ipa_jax workdir's best checkpoint."""
    f = config.features
    crop = config.input.crop_size
    dummy = jnp.zeros((1, crop, crop, 3))
    if not f.init_from:
        return jax.jit(lambda r: model.init(r, dummy, train=False),
                       out_shardings=sharding.replicated(mesh))(jax.random.key(f.seed))
    manager = ocp.CheckpointManager(os.path.join(f.init_from, "best"))
    step = manager.best_step()
    if step is None:
        raise ValueError(f"config.features.init_from={f.init_from!r} has no best/ checkpoint.")
    state = manager.restore(step, args=ocp.args.StandardRestore(
        fallback_sharding=sharding.replicated(mesh)))
    params = {k: v for k, v in state["params"].items() if k != "fc"}
    logging.info("Features from %s step %d: %s", f.init_from, step, sorted(params))
    return {"params": params, **state["model_state"]}


def extract(config: ml_collections.ConfigDict, prepared_dir: str, mesh) -> tuple:
    """(post_index [N], features [N, D]) of every image of the prepared `images` dataset."""
    model = models.get_model(config.features.backbone, num_classes=0)
    variables = _backbone_variables(config, model, mesh)
    normalize = config.input.normalize

    @functools.partial(jax.jit, in_shardings=(sharding.replicated(mesh),
                                              sharding.data_sharding(mesh)),
                       out_shardings=sharding.data_sharding(mesh))
    def apply(v, images):
        return model.apply(v, preprocess(images, normalize, jnp.float32), train=False)

    builder = input_pipeline.get_builder(prepared_dir, "images")
    evaluator = evaluation.Evaluator(
        lambda s: input_pipeline.eval_dataset(builder, config, s),
        lambda s: input_pipeline.count_images(builder, s), apply,
        functools.partial(sharding.to_global, mesh), config.eval_batch_size)
    parts = [evaluator.predict(variables, split) for split in SPLITS]
    return (np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]).astype(np.float32))


def load_or_extract(config: ml_collections.ConfigDict, prepared_dir: str, mesh) -> tuple:
    """The cached features when present, else `extract` and cache them."""
    path = cache_path(config, prepared_dir)
    if not os.path.exists(path):
        logging.info("Extracting %s features into %s", config.features.backbone, path)
        post_index, feats = extract(config, prepared_dir, mesh)
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp.npz"
            np.savez(tmp, post_index=post_index, features=feats)
            os.replace(tmp, path)  # a crash never leaves a partial cache behind
        multihost_utils.sync_global_devices("features cached")
    with np.load(path) as data:
        return data["post_index"], data["features"]
