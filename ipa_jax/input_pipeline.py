# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""tf.data pipelines over the prepared TFDS groups: training pairs or images, and evaluation.

Every host reads its own even share of a split. Training is deterministic given the seed
(stateless random ops keyed by the element's position), so a checkpointed iterator resumes
exactly where the stream stopped. Evaluation visits every image of a split once, in fixed-size
batches padded with `post_index = -1`.
"""

from __future__ import annotations

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data_prep import tfds_builder


def get_builder(prepared_dir: str, pairs: str):
    return tfds.builder_from_directory(tfds_builder.dataset_dir(prepared_dir, pairs))


def host_split(builder, split: str) -> tf.data.Dataset:
    """This host's even share of the groups of `split`, in file order."""
    shares = tfds.even_splits(split, n=jax.process_count(), drop_remainder=False)
    return builder.as_dataset(split=shares[jax.process_index()], shuffle_files=False)


def decode_and_crop(encoded, *, short_side: int, crop: int, seed=None):
    """Decodes a JPEG, resizes its short side to `short_side`, crops `crop` x `crop`.

    The crop is random (stateless, from `seed`) when a seed is given, else central. Returns uint8.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return resize_and_crop(image, short_side=short_side, crop=crop, seed=seed)


def resize_and_crop(image, *, short_side: int, crop: int, seed=None):
    """`decode_and_crop` for an already decoded image [H, W, 3]."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = short_side / tf.reduce_min(hw)
    size = tf.cast(tf.round(hw * scale), tf.int32)
    size = tf.maximum(size, short_side)  # rounding must never leave a side below short_side
    image = tf.image.resize(image, size, method="bilinear", antialias=True)
    if seed is None:
        top = (size[0] - crop) // 2
        left = (size[1] - crop) // 2
        image = image[top:top + crop, left:left + crop]
    else:
        image = tf.image.stateless_random_crop(image, (crop, crop, 3), seed=seed)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.ensure_shape(image, (crop, crop, 3))


def _group_pairs(group):
    """One element per (winner, loser) pair of a group."""
    pairs = group["pairs"]
    return tf.data.Dataset.from_tensor_slices({
        "image": tf.gather(group["image"], pairs),  # [P, 2] encoded
        "likes": tf.gather(group["likes"], pairs),  # [P, 2]
        "f_ret": tf.gather(group["f_ret"], pairs),  # [P, 2, K, 5]
        "depth": tf.gather(group["depth"], pairs),  # [P, 2, M, F]
    })


def train_dataset(builder, config, *, split: str = "train") -> tf.data.Dataset:
    """Endless shuffled pairs: {'image': uint8 [B, 2, crop, crop, 3], 'likes': f32 [B, 2],
    'f_ret': f32 [B, 2, K, 5], 'depth': f32 [B, 2, M, F]} (K = 0 without retrieval features,
    F = 0 without depth features; `depth` belongs to the centre crop the data was prepared
    from, whatever `input.train_crop`).

    B is this host's share of `config.batch_size`. Half the pairs are swapped (winner second),
    chosen by a stateless coin, so a pair's label is not always 1.
    """
    cfg = config.input
    local_batch = config.batch_size // jax.process_count()
    seed = config.seed + 7919 * jax.process_index()
    ds = host_split(builder, split)
    ds = ds.shuffle(cfg.group_shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat().flat_map(_group_pairs)
    ds = ds.shuffle(cfg.pair_shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)

    crop = cfg.crop_size
    random_crop = cfg.train_crop == "random"

    def process(index, pair):
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.constant(seed, tf.int64), index]), num=3)
        images = tf.stack([
            decode_and_crop(pair["image"][k], short_side=cfg.resize_short_side, crop=crop,
                            seed=seeds[k + 1] if random_crop else None)
            for k in range(2)])
        swap = tf.random.stateless_uniform([], seed=seeds[0]) < 0.5
        order = tf.where(swap, [1, 0], [0, 1])
        return {"image": tf.gather(images, order), "likes": tf.gather(pair["likes"], order),
                "f_ret": tf.gather(pair["f_ret"], order), "depth": tf.gather(pair["depth"], order)}

    ds = ds.enumerate().map(process, num_parallel_calls=cfg.num_parallel_calls,
                            deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True)
    return ds.prefetch(cfg.prefetch)


def _train_images(group):
    """One element per image of a group, valid pairs or not."""
    return tf.data.Dataset.from_tensor_slices({
        "image": group["image"], "likes": group["likes"], "f_ret": group["f_ret"],
        "depth": group["depth"], "post_index": tf.cast(group["post_index"], tf.int32)})


def train_images_dataset(builder, config, *, split: str = "train") -> tf.data.Dataset:
    """Endless shuffled single images, for the per-image losses (`losses.IMAGE_LOSSES`):
    {'image': uint8 [B, crop, crop, 3], 'likes': f32 [B], 'f_ret': f32 [B, K, 5],
    'depth': f32 [B, M, F], 'post_index': int32 [B]}.

    B is this host's share of `2 * config.batch_size` (a step sees as many images as a pair
    loss's). Every image of the split's groups, including groups without a valid pair, comes
    exactly once per epoch: the epoch (groups shuffled, then images in a buffer of
    `input.pair_shuffle_buffer`) is shuffled anew and then repeated, so epochs never mix.
    Batches run on across epoch ends. Crops are keyed by the image's position in the stream.
    """
    cfg = config.input
    local_batch = 2 * config.batch_size // jax.process_count()
    seed = config.seed + 7919 * jax.process_index()
    ds = host_split(builder, split)
    ds = ds.shuffle(cfg.group_shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.flat_map(_train_images)
    ds = ds.shuffle(cfg.pair_shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    ds = ds.repeat()

    crop = cfg.crop_size
    random_crop = cfg.train_crop == "random"

    def process(index, example):
        crop_seed = tf.random.experimental.stateless_split(
            tf.stack([tf.constant(seed, tf.int64), index]), num=1)[0]
        image = decode_and_crop(example["image"], short_side=cfg.resize_short_side, crop=crop,
                                seed=crop_seed if random_crop else None)
        return {**example, "image": image}

    ds = ds.enumerate().map(process, num_parallel_calls=cfg.num_parallel_calls,
                            deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True)
    return ds.prefetch(cfg.prefetch)


def _group_images(group):
    return tf.data.Dataset.from_tensor_slices(
        {"image": group["image"], "post_index": group["post_index"], "f_ret": group["f_ret"],
         "depth": group["depth"]})


def eval_dataset(builder, config, split: str) -> tf.data.Dataset:
    """Every image of this host's share of `split` once: {'input', 'post_index', 'f_ret',
    'depth'} (`pad_batch` pads with zero rows)."""
    cfg = config.input
    ds = host_split(builder, split).flat_map(_group_images)
    ds = ds.map(
        lambda x: {"input": decode_and_crop(x["image"], short_side=cfg.resize_short_side,
                                            crop=cfg.crop_size),
                   "post_index": x["post_index"], "f_ret": x["f_ret"], "depth": x["depth"]},
        num_parallel_calls=cfg.num_parallel_calls, deterministic=True)
    return ds.batch(config.eval_batch_size // jax.process_count()).prefetch(cfg.prefetch)


def count_images(builder, split: str) -> int:
    """Images in this host's share of `split`, without decoding any."""
    ds = host_split(builder, split).map(lambda g: tf.size(g["post_index"]))
    return int(ds.reduce(tf.constant(0), lambda a, b: a + b).numpy())


def pad_batch(batch: dict, size: int) -> dict:
    """Pads a numpy eval batch to `size` rows; padded rows get post_index -1."""
    n = len(batch["post_index"])
    if n == size:
        return batch
    out = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
           for k, v in batch.items()}
    out["post_index"][n:] = -1
    return out
