# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The training order (a pure function of seed, epoch and position) and the random access to
groups it reads through (`records`)."""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ipa_jax import input_pipeline, records, train_order

COUNTS = np.array([3, 0, 1, 5, 2, 0, 4, 1, 6, 2])  # items per group; two groups have none


def test_every_item_once_per_epoch_and_a_new_order_each_epoch():
    order = train_order.TrainOrder(COUNTS, seed=5, window=3)
    assert order.epoch_length == COUNTS.sum()
    epochs = []
    for e in range(3):
        group, item = order.epoch(e)
        pairs = sorted(zip(group.tolist(), item.tolist(), strict=True))
        assert pairs == [(g, i) for g in range(len(COUNTS)) for i in range(COUNTS[g])]
        epochs.append(group)
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])


def test_a_window_mixes_the_items_of_its_groups_only():
    order = train_order.TrainOrder(COUNTS, seed=1, window=3)
    group, _ = order.epoch(0)
    # The groups in epoch order: the first window is the first 3 groups to appear.
    first_seen = list(dict.fromkeys(group.tolist()))
    window = set(first_seen[:3])
    size = int(COUNTS[list(window)].sum())
    assert set(group[:size].tolist()) == window
    assert not set(group[size:].tolist()) & window
    # With one window per epoch the items of all groups interleave.
    whole = train_order.TrainOrder(COUNTS, seed=1, window=len(COUNTS)).epoch(0)[0]
    assert len(set(whole[:8].tolist())) >= 4


def test_positions_are_pure_and_cross_epochs():
    n = int(COUNTS.sum())
    a = train_order.TrainOrder(COUNTS, seed=9, window=2)
    b = train_order.TrainOrder(COUNTS, seed=9, window=2)
    positions = np.arange(n - 5, 2 * n + 3)  # the end of epoch 0, epoch 1, epoch 2's start
    got = a.at(positions)
    np.testing.assert_array_equal(got[0], b.at(positions)[0])
    e0, e1 = a.epoch(0), a.epoch(1)
    np.testing.assert_array_equal(got[0][:5], e0[0][-5:])
    np.testing.assert_array_equal(got[1][5:5 + n], e1[1])
    other = train_order.TrainOrder(COUNTS, seed=10, window=2).at(positions)
    assert not np.array_equal(got[0], other[0])


def test_process_positions_split_each_global_batch():
    both = np.concatenate([train_order.process_positions(7, 8, i, 2) for i in range(2)])
    np.testing.assert_array_equal(both, np.arange(56, 64))
    np.testing.assert_array_equal(train_order.process_positions(7, 8, 0, 1), both)
    with pytest.raises(ValueError, match="batch size 8 is not divisible by 3 processes"):
        train_order.process_positions(0, 8, 0, 3)


def test_bad_orders_are_refused():
    with pytest.raises(ValueError, match="window must be at least 1"):
        train_order.TrainOrder(COUNTS, seed=0, window=0)
    with pytest.raises(ValueError, match="no examples"):
        train_order.TrainOrder(np.zeros(3), seed=0, window=2)


# ---------------------------------------------------------------------------- records
def _tfds_groups(builder, split):
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


@pytest.mark.parametrize("pairs", ["pdips", "groups"])
def test_group_reader_reads_what_tfds_reads(tiny_prepared, pairs):
    builder = input_pipeline.get_builder(tiny_prepared, pairs)
    for split in ("train", "validation", "test"):
        index = records.load_index(builder, split)
        reader = records.GroupReader(builder, index)
        expected = _tfds_groups(builder, split)
        assert len(index) == len(expected)
        for i, want in enumerate(expected):
            got = reader[i]
            assert set(got) == set(want)
            for key, value in want.items():
                np.testing.assert_array_equal(got[key], value, err_msg=f"{split} {i} {key}")
            assert index.num_pairs[i] == len(want["pairs"])
            assert index.num_images[i] == len(want["image"])
        reader.close()


def test_an_index_missing_or_stale_is_rebuilt(tiny_prepared, tmp_path):
    copy = str(tmp_path / "prepared")
    shutil.copytree(tiny_prepared, copy)
    builder = input_pipeline.get_builder(copy, "pdips")
    saved = records.load_index(builder, "train")
    path = records.index_path(builder.data_dir, "train")
    os.remove(path)
    rebuilt = records.load_index(builder, "train")
    for field in ("file", "offset", "length", "num_pairs", "num_images"):
        np.testing.assert_array_equal(getattr(rebuilt, field), getattr(saved, field))
    # An index of another split's size (a prepared folder copied over partly) is not trusted.
    shutil.copy(records.index_path(builder.data_dir, "test"), path)
    assert len(records.load_index(builder, "train")) == len(saved)


def test_a_truncated_file_is_named(tiny_prepared, tmp_path):
    copy = str(tmp_path / "prepared")
    shutil.copytree(tiny_prepared, copy)
    builder = input_pipeline.get_builder(copy, "pdips")
    index = records.load_index(builder, "train")
    path = os.path.join(builder.data_dir, index.files[0])
    os.truncate(path, os.path.getsize(path) - 10)
    with pytest.raises(ValueError, match="truncated record"):
        records.build_index(builder, "train")
    reader = records.GroupReader(builder, index)
    last = int(np.argmax(index.offset))
    with pytest.raises(ValueError, match="cut short; prepare the data again"):
        reader[last]
