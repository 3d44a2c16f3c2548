# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Frozen backbone embeddings, computed once in batches under jit and cached: the one place.

- `load_or_extract`: pooled features of every prepared image (the latent SVM's input), cached
  in `<prepared_dir>/features/<backbone>-<key>.npz`.
- `embed_files`: embeddings of raw image files, optionally with people masked out (the
  retrieval branch's background and semantic aspects), cached by `cached_array`.
Cache keys cover everything that changes the numbers (backbone, weights, input size,
normalisation, the images); a rerun with the same settings loads instead of recomputing.
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
import tensorflow as tf
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from ipa_jax import checkpointing, evaluation, images, input_pipeline, models, sharding
from ipa_jax.normalize import preprocess

SPLITS = ("train", "validation", "test")


def cache_path(config: ml_collections.ConfigDict, prepared_dir: str) -> str:
    f, i = config.features, config.input
    key = json.dumps({"features": f.to_dict(), "resize": i.resize_short_side,
                      "crop": i.crop_size, "normalize": i.normalize}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return os.path.join(prepared_dir, "features", f"{f.backbone}-{digest}.npz")


def _backbone_variables(f, model, mesh, crop: int):
    """Random (seeded) weights, or the backbone of a trained ipa_jax workdir's best checkpoint.

    `f` names `backbone`, `init_from` (a workdir, or "" for random weights) and `seed`.
    """
    dummy = jnp.zeros((1, crop, crop, 3))
    if not f.init_from:
        return jax.jit(lambda r: model.init(r, dummy, train=False),
                       out_shardings=sharding.replicated(mesh))(jax.random.key(f.seed))
    state, step = checkpointing.restore_best_checkpoint(  # checksums verified
        f.init_from, fallback_sharding=sharding.replicated(mesh))
    params = {k: v for k, v in state["params"].items() if k != "fc"}
    logging.info("Features from %s step %d: %s", f.init_from, step, sorted(params))
    return {"params": params, **state["model_state"]}


def _embedder(f, mesh, crop: int, normalize: str):
    """(variables, jitted apply: uint8 images -> pooled features) of the backbone `f`."""
    model = models.get_model(f.backbone, num_classes=0)
    variables = _backbone_variables(f, model, mesh, crop)

    @functools.partial(jax.jit, in_shardings=(sharding.replicated(mesh),
                                              sharding.data_sharding(mesh)),
                       out_shardings=sharding.data_sharding(mesh))
    def apply(v, images):
        return model.apply(v, preprocess(images, normalize, jnp.float32), train=False)[0]

    return variables, apply


def extract(config: ml_collections.ConfigDict, prepared_dir: str, mesh) -> tuple:
    """(post_index [N], features [N, D]) of every image of the prepared `images` dataset."""
    variables, apply = _embedder(config.features, mesh, config.input.crop_size,
                                 config.input.normalize)

    builder = input_pipeline.get_builder(prepared_dir, "images")
    evaluator = evaluation.Evaluator(
        lambda s: input_pipeline.eval_dataset(builder, config, s),
        lambda s: input_pipeline.count_images(builder, s), apply,
        functools.partial(sharding.to_global, mesh), config.eval_batch_size)
    parts = [evaluator.predict(variables, split) for split in SPLITS]
    return (np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]).astype(np.float32))


def _in_boxes(hw, boxes):
    """bool [H, W, 1]: the pixels inside any of the boxes [M, 4] (y0, x0, y1, x1)."""
    ys = tf.cast(tf.range(hw[0]), tf.float32)[None, :, None]
    xs = tf.cast(tf.range(hw[1]), tf.float32)[None, None, :]
    b = boxes[:, :, None, None]
    inside = (ys >= b[:, 0]) & (ys <= b[:, 2]) & (xs >= b[:, 1]) & (xs <= b[:, 3])
    return tf.reduce_any(inside, axis=0)[..., None]


def _off_mask(hw, mask_path):
    """bool [H, W, 1]: the pixels a background mask (8-bit grey PNG, > 127 = background; any
    size, resized to the image's nearest-neighbour) does not mark as background."""
    mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
    return tf.image.resize(mask, hw, method="nearest") <= 127


def _masked(image, boxes, mask_path=""):
    """`image` with the pixel boxes [M, 4] (y0, x0, y1, x1), or with what `mask_path`'s
    background mask leaves out when a path is given, filled with its mean colour."""
    hw = tf.shape(image)[:2]
    inside = tf.cond(tf.strings.length(mask_path) > 0, lambda: _off_mask(hw, mask_path),
                     lambda: _in_boxes(hw, boxes))
    image = tf.cast(image, tf.float32)
    mean = tf.reduce_mean(image, axis=(0, 1), keepdims=True)
    return tf.cast(tf.where(inside, mean, image), tf.uint8)


def file_embedder(f, crop: int, normalize: str) -> tuple:
    """(mesh, variables, jitted apply) of the backbone `f` on this process's devices, for
    `embed_files`: built (and compiled) once, used for many calls."""
    mesh = sharding.make_mesh(jax.local_devices())
    return (mesh, *_embedder(f, mesh, crop, normalize))


def embed_files(paths, boxes, f, *, resize: int, crop: int, normalize: str,
                batch_size: int = 64, progress: bool = True, embedder=None,
                masks=None) -> np.ndarray:
    """Pooled backbone features [N, D] of image files, people boxes masked out.

    Args:
      paths: N image file paths. boxes: N arrays [M_i, 4] of pixel boxes (y0, x0, y1, x1) to
        mask (empty for none). f: backbone spec (backbone, init_from, seed).
      masks: None, or N background-mask PNG paths ("" for none): where one is given, what it
        does not mark as background is masked instead of the boxes.
      embedder: `file_embedder(f, crop, normalize)`, when the caller keeps one; else built here.
    Runs on this process's devices only (data preparation happens on one host). Every batch
    is padded to the same size, so a row does not depend on the other files of its call.
    """
    mesh, variables, apply = embedder or file_embedder(f, crop, normalize)
    m = max([1] + [len(b) for b in boxes])
    padded = np.full((len(paths), m, 4), -1.0, np.float32)  # (-1,-1,-1,-1) covers no pixel
    for i, b in enumerate(boxes):
        padded[i, :len(b)] = b
    step = -(-batch_size // len(mesh.devices.flat)) * len(mesh.devices.flat)

    def load(path, box, mask):  # the pixels data_prep keeps (`images.read_rgb`), any PIL mode
        image = images.tf_read_rgb(tf.io.read_file(path))
        return input_pipeline.resize_and_crop(_masked(image, box, mask), short_side=resize,
                                              crop=crop)

    masks = tf.constant([""] * len(paths) if masks is None else list(masks), tf.string,
                        shape=[len(paths)])
    ds = tf.data.Dataset.from_tensor_slices((list(paths), padded, masks))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(step)
    out = []
    for batch in tqdm(ds.prefetch(2).as_numpy_iterator(), total=-(-len(paths) // step),
                      desc=f"{f.backbone} embeddings", disable=not progress):
        n = len(batch)
        batch = np.concatenate([batch, np.zeros((step - n, *batch.shape[1:]), batch.dtype)])
        out.append(np.asarray(apply(variables, sharding.to_global(mesh, batch)))[:n])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def cached_array(path: str, compute):
    """`compute()` saved to the npz `path` once; later calls load it."""
    if not os.path.exists(path):
        value = compute()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, value=value)
        os.replace(tmp, path)  # a crash never leaves a partial cache behind
    with np.load(path) as data:
        return data["value"]


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
