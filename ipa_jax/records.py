# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Random access to the groups of a prepared split: where each TFRecord lies, read by index.

TFRecord files are sequential, but each record is `[length u64][crc u32][data][crc u32]`, so
a record is one seek and one read away once its offset is known. `RecordIndex` lists, for
every group of a split in file order, its file, offset, length and how many pairs and images
it holds; data_prep writes it beside the TFRecords (`index_path`), and readers of data prepared
before it build it once (a pass over the split, in memory). `GroupReader` reads group `i` as
numpy arrays (its images stay encoded), so any process can read any group: the training order
(`train_order`) no longer depends on which host reads what.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import tempfile

import numpy as np
import tensorflow as tf
from absl import logging

HEADER_BYTES = 12  # u64 length + u32 masked CRC of the length
FOOTER_BYTES = 4  # u32 masked CRC of the data


def index_path(dataset_dir: str, split: str) -> str:
    return os.path.join(dataset_dir, f"record_index-{split}.npz")


@dataclasses.dataclass(frozen=True)
class RecordIndex:
    """The groups of one split in file order."""

    files: tuple[str, ...]  # names relative to the dataset directory
    file: np.ndarray  # int32 [G]: index into `files`
    offset: np.ndarray  # int64 [G]: byte offset of the record's data
    length: np.ndarray  # int64 [G]: bytes of the record's data
    num_pairs: np.ndarray  # int32 [G]
    num_images: np.ndarray  # int32 [G]

    def __len__(self) -> int:
        return len(self.offset)

    def save(self, path: str) -> None:
        """Writes atomically (a temporary file renamed): readers never see half an index."""
        folder = os.path.dirname(path)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz.tmp", delete=False) as f:
            np.savez(f, files=np.array(self.files), file_index=self.file, offset=self.offset,
                     length=self.length, num_pairs=self.num_pairs, num_images=self.num_images)
        os.replace(f.name, path)

    @classmethod
    def load(cls, path: str) -> RecordIndex:
        with np.load(path) as z:
            return cls(files=tuple(str(f) for f in z["files"]), file=z["file_index"],
                       offset=z["offset"], length=z["length"], num_pairs=z["num_pairs"],
                       num_images=z["num_images"])


def _split_files(builder, split: str) -> list[str]:
    return [str(f) for f in builder.info.splits[split].filenames]


def _records(path: str):
    """(offset, data) of every record of a TFRecord file, read sequentially."""
    with tf.io.gfile.GFile(path, "rb") as f:
        offset = 0
        while header := f.read(HEADER_BYTES):
            if len(header) < HEADER_BYTES:
                raise ValueError(f"{path}: truncated record header at byte {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(FOOTER_BYTES)) < FOOTER_BYTES:
                raise ValueError(f"{path}: truncated record at byte {offset}")
            yield offset + HEADER_BYTES, data
            offset += HEADER_BYTES + length + FOOTER_BYTES


def parse_group(serialized: bytes) -> dict:
    """A group record (`ipa_jax.data.tfds_builder`'s features) as numpy arrays, as tf.data reads
    it: images (and depth maps) stay encoded, `pairs` [P, 2] int32, `f_ret` [N, K, 5] and
    `depth` [N, M, F] float32 (tfds's bytes encoding: raw little-endian values and a shape)."""
    feature = tf.train.Example.FromString(serialized).features.feature
    out = {}
    for key, value in feature.items():
        kind = value.WhichOneof("kind")
        values = getattr(value, kind).value if kind else []
        if key.endswith("/shape"):
            continue
        if key.endswith("/value"):
            name = key[:-len("/value")]
            shape = tuple(feature[f"{name}/shape"].int64_list.value)
            out[name] = np.frombuffer(values[0], "<f4").reshape(shape)
        elif key in _TEXT:
            out[key] = values[0]
        elif kind == "bytes_list":
            out[key] = np.array(list(values), dtype=object)
        else:
            out[key] = np.array(values, _DTYPES[key])
    out["pairs"] = out.get("pairs", np.zeros(0, np.int32)).reshape(-1, 2)
    return out


_TEXT = ("group_id", "user")
_DTYPES = {"likes": np.float32, "pairs": np.int32, "post_index": np.int64,
           "timestamp": np.int64}


def build_index(builder, split: str) -> RecordIndex:
    """Scans the split's files (one sequential pass, every record parsed once)."""
    files = _split_files(builder, split)
    rows = []
    for i, name in enumerate(files):
        for offset, data in _records(os.path.join(builder.data_dir, name)):
            group = parse_group(data)
            rows.append((i, offset, len(data), len(group["pairs"]), len(group["image"])))
    table = np.array(rows, np.int64).reshape(-1, 5)
    expected = builder.info.splits[split].num_examples
    if len(table) != expected:
        raise ValueError(f"{builder.data_dir} {split}: {len(table)} records in its files, "
                         f"{expected} in dataset_info.json; prepare the data again.")
    return RecordIndex(files=tuple(files), file=table[:, 0].astype(np.int32),
                       offset=table[:, 1], length=table[:, 2],
                       num_pairs=table[:, 3].astype(np.int32),
                       num_images=table[:, 4].astype(np.int32))


def write_index(builder, split: str) -> RecordIndex:
    """Builds the split's index and saves it beside its TFRecords (data_prep)."""
    index = build_index(builder, split)
    index.save(index_path(builder.data_dir, split))
    return index


def load_index(builder, split: str) -> RecordIndex:
    """The split's saved index; data prepared without one gets it built here, in memory."""
    path = index_path(builder.data_dir, split)
    if tf.io.gfile.exists(path):
        index = RecordIndex.load(path)
        if len(index) == builder.info.splits[split].num_examples:
            return index
        logging.warning("%s lists %d groups, the split has %d: rebuilt in memory.", path,
                        len(index), builder.info.splits[split].num_examples)
    else:
        logging.info("%s has no record index (prepared by an older ipa_jax): scanning its %s "
                     "split once.", builder.data_dir, split)
    return build_index(builder, split)


class GroupReader:
    """Reads group `i` of a split (`RecordIndex` order) as numpy arrays; keeps its files open."""

    def __init__(self, builder, index: RecordIndex):
        self._paths = [os.path.join(builder.data_dir, f) for f in index.files]
        self._index = index
        self._open: dict[int, object] = {}

    def raw(self, i: int) -> bytes:
        """The serialized record of group `i`."""
        k = int(self._index.file[i])
        if k not in self._open:
            self._open[k] = tf.io.gfile.GFile(self._paths[k], "rb")
        f = self._open[k]
        f.seek(int(self._index.offset[i]))
        length = int(self._index.length[i])
        data = f.read(length)
        if len(data) != length:
            raise ValueError(f"{self._paths[k]}: record {i} is cut short; prepare the data "
                             "again.")
        return data

    def __getitem__(self, i: int) -> dict:
        return parse_group(self.raw(i))

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()
