# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""tf.data pipelines over the prepared TFDS groups: training pairs or images, and evaluation.

Every host reads its own even share of a split. Training is deterministic given the seed
(stateless random ops keyed by the element's position), so a checkpointed iterator resumes
exactly where the stream stopped. Evaluation visits every image of a split once, in fixed-size
batches padded with `post_index = -1`.
"""

from __future__ import annotations

import collections

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ipa_jax import records, streams, train_order
from ipa_jax.data import tfds_builder


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
    return resize_and_crop(decode_rgb(encoded), short_side=short_side, crop=crop, seed=seed)


def decode_rgb(encoded):
    """uint8 [H, W, 3] of a stored image (JPEG or PNG; an animation's first frame)."""
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def decode_depth_map(encoded):
    """float32 [H, W] in [0, 1] of a stored `depth_map` (a 16-bit PNG, `tfds_builder`)."""
    levels = tf.io.decode_png(encoded, channels=1, dtype=tf.uint16)[..., 0]
    return tf.cast(levels, tf.float32) / tfds_builder.DEPTH_MAP_LEVELS


def _resize_and_crop_float(x, *, short_side: int, crop: int, seed=None):
    """float32 [crop, crop, C] of x [H, W, C]: short side to `short_side` (bilinear, antialiased),
    then the central or a random (stateless, from `seed`) `crop` x `crop` window."""
    hw = tf.cast(tf.shape(x)[:2], tf.float32)
    scale = short_side / tf.reduce_min(hw)
    size = tf.cast(tf.round(hw * scale), tf.int32)
    size = tf.maximum(size, short_side)  # rounding must never leave a side below short_side
    x = tf.image.resize(x, size, method="bilinear", antialias=True)
    if seed is None:
        top = (size[0] - crop) // 2
        left = (size[1] - crop) // 2
        return x[top:top + crop, left:left + crop]
    # The offsets depend on the seed and the spatial sizes only, not on the channels.
    return tf.image.stateless_random_crop(x, (crop, crop, x.shape[-1]), seed=seed)


def _to_uint8(x, crop: int):
    image = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
    return tf.ensure_shape(image, (crop, crop, 3))


def resize_and_crop(image, *, short_side: int, crop: int, seed=None):
    """`decode_and_crop` for an already decoded image [H, W, 3]."""
    return _to_uint8(_resize_and_crop_float(image, short_side=short_side, crop=crop, seed=seed),
                     crop)


def resize_and_crop_with_depth(image, depth01, *, short_side: int, crop: int, seed=None):
    """(uint8 [crop, crop, 3], float32 [crop, crop] in [0, 1]): `resize_and_crop` of an image
    [H, W, 3] and of its depth map [H, W] of the same pixels, as one 4-channel tensor: both
    get the same resize weights and the same crop window (the image exactly as alone)."""
    x = tf.concat([tf.cast(image, tf.float32), tf.cast(depth01, tf.float32)[..., None]], -1)
    x = _resize_and_crop_float(x, short_side=short_side, crop=crop, seed=seed)
    depth = tf.ensure_shape(tf.clip_by_value(x[..., 3], 0.0, 1.0), (crop, crop))
    return _to_uint8(x[..., :3], crop), depth


def _decode_crop(encoded, encoded_map, cfg, seed=None) -> dict:
    """{'image': uint8 crop} of one stored image, plus {'depth_map': float32 crop} when its
    depth map is stored (`encoded_map` not None), cropped identically."""
    sizes = dict(short_side=cfg.resize_short_side, crop=cfg.crop_size, seed=seed)
    if encoded_map is None:
        return {"image": decode_and_crop(encoded, **sizes)}
    image, depth = resize_and_crop_with_depth(decode_rgb(encoded), decode_depth_map(encoded_map),
                                              **sizes)
    return {"image": image, "depth_map": depth}


# Per-image data riding beside the images: f_ret and depth always, depth_map when stored
# (config.prep.depth.mode="on_the_fly").
_AUX = ("f_ret", "depth")


def _per_image(group, keys) -> dict:
    """The group's `keys` and its `depth_map` when the data has one."""
    return {k: group[k] for k in (*keys, "depth_map") if k in group}


def train_dataset(builder, config, *, start_step: int = 0,
                  split: str = "train") -> streams.TrainStream:
    """Endless training pairs from global step `start_step` on: {'image': uint8
    [B, 2, crop, crop, 3], 'likes': f32 [B, 2], 'f_ret': f32 [B, 2, K, 5], 'depth': f32
    [B, 2, M, F]} (K = 0 without retrieval features, F = 0 without depth features; `depth`
    belongs to the centre crop the data was prepared from, whatever `input.train_crop`). Data
    with depth maps (prep.depth.mode="on_the_fly") adds 'depth_map': f32 [B, 2, crop, crop] in
    [0, 1], resized and cropped with the image.

    B is this process's share of `config.batch_size`; the pairs are the `train_order` of the
    split's pairs, the same on any number of hosts. Half the pairs are swapped (winner
    second), chosen by a stateless coin keyed by the pair's position, so a pair's label is not
    always 1; random crops are keyed by it too.
    """
    return _train_stream(builder, config, "pairs", config.batch_size, start_step, split)


def train_images_dataset(builder, config, *, start_step: int = 0,
                         split: str = "train") -> streams.TrainStream:
    """Endless single images from global step `start_step` on, for the per-image losses
    (`losses.IMAGE_LOSSES`): {'image': uint8 [B, crop, crop, 3], 'likes': f32 [B], 'f_ret':
    f32 [B, K, 5], 'depth': f32 [B, M, F], 'post_index': int32 [B]} (and 'depth_map': f32
    [B, crop, crop] when the data stores depth maps, cropped with the image).

    B is this process's share of `2 * config.batch_size` (a step sees as many images as a pair
    loss's). Every image of the split's groups, including groups without a valid pair, comes
    exactly once per epoch (`train_order`); batches run on across epoch ends.
    """
    return _train_stream(builder, config, "images", 2 * config.batch_size, start_step, split)


class _Examples:
    """The training examples of a split by global position (`train_order`): one pair
    {'image' [2], 'likes' [2], 'f_ret' [2, K, 5], 'depth' [2, M, F] (, 'depth_map' [2])} or one
    image ({.. without the 2, 'post_index'}), as numpy. Read by one thread at a time."""

    def __init__(self, builder, config, unit: str, split: str):
        self.unit = unit
        index = records.load_index(builder, split)
        counts = index.num_pairs if unit == "pairs" else index.num_images
        window = config.input.shuffle_window_groups
        self.order = train_order.TrainOrder(counts, seed=config.seed, window=window)
        self._reader = records.GroupReader(builder, index)
        self._cache: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self._cache_size = window  # about the groups of the window being read
        first = self._group(int(np.flatnonzero(counts)[0]))
        self.keys = tuple(_per_image(first, ("image", "likes", *_AUX)))
        if unit == "images":
            self.keys += ("post_index",)

    def _group(self, g: int) -> dict:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        group = self._cache[g] = self._reader[g]
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return group

    def _item(self, group: dict, j: int) -> dict:
        if self.unit == "pairs":
            members = group["pairs"][j]
            return {k: group[k][members] for k in self.keys}
        return {k: group[k][j] for k in self.keys}

    def at(self, positions: np.ndarray) -> dict:
        """The examples at `positions`, stacked, with their 'position'."""
        items = [self._item(self._group(int(g)), int(j))
                 for g, j in zip(*self.order.at(positions), strict=True)]
        out = {k: np.stack([x[k] for x in items]) for k in self.keys}
        return {**out, "position": np.asarray(positions, np.int64)}


def _train_stream(builder, config, unit: str, global_batch: int, start_step: int,
                  split: str) -> streams.TrainStream:
    """This process's positions of each global batch from `start_step` on (`train_order`),
    read in a Python thread and decoded and cropped by tf.data in parallel, in order."""
    cfg = config.input
    examples = _Examples(builder, config, unit, split)
    random_crop = cfg.train_crop == "random"
    key = tf.constant(config.seed, tf.int64)

    def process_pair(x):
        position = x.pop("position")
        seeds = tf.random.experimental.stateless_split(tf.stack([key, position]), num=3)
        maps = x.get("depth_map")
        crops = [_decode_crop(x["image"][k], None if maps is None else maps[k], cfg,
                              seeds[k + 1] if random_crop else None) for k in range(2)]
        swap = tf.random.stateless_uniform([], seed=seeds[0]) < 0.5
        order = tf.where(swap, [1, 0], [0, 1])
        out = {**x, **{k: tf.stack([c[k] for c in crops]) for k in crops[0]}}
        return {k: tf.gather(v, order) for k, v in out.items()}

    def process_image(x):
        position = x.pop("position")
        crop_seed = tf.random.experimental.stateless_split(tf.stack([key, position]),
                                                           num=1)[0]
        return {**x, "post_index": tf.cast(x["post_index"], tf.int32),
                **_decode_crop(x["image"], x.get("depth_map"), cfg,
                               crop_seed if random_crop else None)}

    def decode(raw: dict) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices(raw)
        ds = ds.map(process_pair if unit == "pairs" else process_image,
                    num_parallel_calls=cfg.num_parallel_calls, deterministic=True)
        return ds.batch(local, drop_remainder=True).prefetch(cfg.prefetch)

    local = global_batch // jax.process_count()
    return streams.TrainStream(examples.at, decode, global_batch=global_batch,
                               start_step=start_step,
                               chunk_steps=max(1, streams.CHUNK_EXAMPLES // local))


def _group_images(group):
    return tf.data.Dataset.from_tensor_slices(
        _per_image(group, ("image", "post_index", *_AUX)))


def _eval_example(x, cfg) -> dict:
    """The centre crop as 'input' (and 'depth_map', cropped identically, when stored)."""
    crop = _decode_crop(x["image"], x.get("depth_map"), cfg)
    return {"input": crop.pop("image"), **crop, **{k: x[k] for k in ("post_index", *_AUX)}}


def eval_dataset(builder, config, split: str) -> tf.data.Dataset:
    """Every image of this host's share of `split` once: {'input', 'post_index', 'f_ret',
    'depth'} and, when the data stores depth maps, 'depth_map' f32 [N, crop, crop] of the same
    centre crop (`pad_batch` pads with zero rows)."""
    cfg = config.input
    ds = host_split(builder, split).flat_map(_group_images)
    ds = ds.map(lambda x: _eval_example(x, cfg), num_parallel_calls=cfg.num_parallel_calls,
                deterministic=True)
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
