# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""TFDS builder for prepared popularity data: one example per group of same-user posts.

Three builder configs share one feature spec:
  groups: Ji et al. 2023 groups (2 to 30 posts of one user within 7 days);
  pdips:  Ding et al. 2019 PDIPs, each a group of two posts (winner first);
  images: every kept post alone (a group of one, no pairs), split by image (Cappallo et al.).
`pairs` lists the training pairs inside the group as (winner, loser) indices.
Readers use `tfds.builder_from_directory`, which needs none of this code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from ipa_jax import records

NAME = "ipa_posts"
VERSION = "1.0.0"
CONFIGS = ("groups", "pdips", "images")
# `depth_map` (config.prep.depth.mode="on_the_fly"): each image's normalised depth map (0 = near,
# `ipa_jax.depth`) at the stored image's size, as a 16-bit grey PNG of round(depth01 * 65520):
# at most 1 / 131040 (7.6e-6) from the float map. 65520 = 2^4 3^2 5 7 13, so every interval
# bound k/n with n <= 16 (but 11), 1/3, 1/2 and 2/3 among them, is a level: a pixel exactly on
# a bound (the flat regions of synthetic or 8-bit maps) decodes to the same float32 and falls
# into the same masks as the unquantised map.
DEPTH_MAP_LEVELS = 65520


def dataset_dir(prepared_dir: str, config: str) -> str:
    """Where the TFRecords of one builder config live."""
    return f"{prepared_dir}/{NAME}/{config}/{VERSION}"


def features(depth_maps: bool = False) -> tfds.features.FeaturesDict:
    """The feature spec of every builder config (`depth_maps`: with `depth_map`)."""
    maps = ({"depth_map": tfds.features.Tensor(shape=(None,), dtype=np.str_)}
            if depth_maps else {})
    return tfds.features.FeaturesDict({
        "group_id": tfds.features.Text(),
        "user": tfds.features.Text(),
        "post_index": tfds.features.Tensor(shape=(None,), dtype=np.int64),
        "likes": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        "timestamp": tfds.features.Tensor(shape=(None,), dtype=np.int64),
        "image": tfds.features.Tensor(shape=(None,), dtype=np.str_),  # encoded JPEG
        "pairs": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
        # Retrieval features, K rows of [p_r, W, S_b, S_p, S_c] per image (K may be 0).
        "f_ret": tfds.features.Tensor(shape=(None, None, 5), dtype=np.float32,
                                      encoding="bytes"),
        # 3D-aware branch: the frozen backbone's pooled features of the M depth-masked
        # centre crops (near, middle, far, foreground, background), [M, F] per image
        # (F = 0 without depth features).
        "depth": tfds.features.Tensor(shape=(None, None, None), dtype=np.float32,
                                      encoding="bytes"),
        **maps,  # encoded 16-bit PNGs, [M, 0] `depth` beside them
    })


class IpaPosts(tfds.core.GeneratorBasedBuilder):
    """Writes groups of posts with encoded images; examples are handed in ready-made and written
    in the order given (`disable_shuffling`: the canonical order of `ipa_jax.data.prepare`).

    With `depth_maps` the examples also carry `depth_map` (see DEPTH_MAP_LEVELS), one encoded
    PNG per image; without, the feature spec is the one precomputed data always had.
    """

    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in CONFIGS]

    def __init__(self, *, examples: Mapping[str, Iterable[dict]] | None = None,
                 depth_maps: bool = False, **kwargs):
        self._examples = examples or {}
        self._depth_maps = depth_maps
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # The module docstring is the description written into dataset_info.json.
        return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                     features=features(self._depth_maps),
                                     disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        return {split: self._generate_examples(ex) for split, ex in self._examples.items()}

    def _generate_examples(self, examples: Iterable[dict]):
        for example in examples:
            yield example["group_id"], example


def write(prepared_dir: str, config: str, examples: Mapping[str, Iterable[dict]], *,
          depth_maps: bool = False) -> None:
    """Writes the TFRecords of one builder config under `prepared_dir` (`depth_maps`: the
    examples carry `depth_map`), and each split's `records.RecordIndex` beside them."""
    builder = IpaPosts(config=config, data_dir=prepared_dir, examples=examples,
                       depth_maps=depth_maps)
    builder.download_and_prepare(
        download_dir=f"{prepared_dir}/.tfds_downloads",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    for split in examples:  # random access, for the training order (ipa_jax.train_order)
        records.write_index(builder, split)


def shard_name(config: str, split: str, shard: int, num_shards: int) -> str:
    """A shard's file name, as TFDS names its own (`{NAME}-{split}.tfrecord-{i:05d}-of-{n:05d}`)."""
    return f"{NAME}-{split}.tfrecord-{shard:05d}-of-{num_shards:05d}"


def write_metadata(prepared_dir: str, config: str, shards: Mapping[str, Sequence[tuple[int, int]]],
                   *, depth_maps: bool = False) -> None:
    """dataset_info.json and features.json for shards written elsewhere (the Beam pipeline),
    named by `shard_name`; shards: {split: [(examples, bytes) of each shard, in order]}. Readers
    then see the same dataset as one `write` makes (each split's `records.RecordIndex` is the
    caller's to save)."""
    builder = IpaPosts(config=config, data_dir=prepared_dir, depth_maps=depth_maps)
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name=NAME, filetype_suffix="tfrecord",
        template=tfds.core.naming.DEFAULT_FILENAME_TEMPLATE)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[n for n, _ in sizes],
                            num_bytes=sum(b for _, b in sizes),
                            filename_template=template.replace(split=split))
        for split, sizes in shards.items()]))
    builder.info.write_to_directory(builder.data_dir)
