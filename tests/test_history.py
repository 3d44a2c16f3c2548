# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Reading a creator's history (`ipa_jax.history.read_history`): Instagram folders and CSVs,
bad rows counted by reason. Scoring with it is tested in tests/test_full_model.py."""

import datetime
import os

import pytest

from ipa_jax import history
from ipa_jax.data import instagram


def test_instagram_folder_needs_one_creator(tiny_raw):
    with pytest.raises(ValueError, match="creators.*--user"):
        history.read_history(tiny_raw)
    posts, _ = instagram.read_posts(tiny_raw, progress=False)
    user = posts[0].user
    bank, skipped = history.read_history(tiny_raw, user=user)
    mine = [p for p in posts if p.user == user]
    assert [p.post_id for p in bank.posts] == [p.post_id for p in mine]
    assert [p.likes for p in bank.posts] == [p.likes for p in mine]
    assert all(os.path.isabs(p.image_path) and os.path.isfile(p.image_path) for p in bank.posts)
    assert bank.root == os.path.abspath(tiny_raw)  # its sidecars: <raw>/keypoints/<post_id>...
    assert instagram.NOT_A_TOP_USER not in skipped  # the other creators' rows are no skips


def test_csv_rows_are_read_or_counted(tiny_raw, tmp_path):
    posts, _ = instagram.read_posts(tiny_raw, progress=False)
    a, b = (os.path.join(tiny_raw, p.image_path) for p in posts[:2])
    iso = datetime.datetime.fromtimestamp(posts[1].timestamp, datetime.timezone.utc).isoformat()
    (tmp_path / "h.csv").write_text(
        "image,likes,timestamp\n"
        f"{a},10,{posts[0].timestamp}\n"
        f"{b},20,{iso}\n"
        f"{a},30,{posts[0].timestamp}\n"  # the same post again
        "missing.jpg,5,1500000000\n"
        f"{a},many,1500000000\n"
        f"{a},-1,1500000000\n")
    bank, skipped = history.read_history(str(tmp_path / "h.csv"), sidecar_dir=tiny_raw)
    assert [p.post_id for p in bank.posts] == [posts[0].post_id, posts[1].post_id]
    assert [p.timestamp for p in bank.posts] == [posts[0].timestamp, posts[1].timestamp]
    assert [p.likes for p in bank.posts] == [10, 20]
    assert bank.root == os.path.abspath(tiny_raw)
    assert skipped == {"duplicate post_id": 1, "missing image file": 1,
                       "bad likes or timestamp": 2}


def test_unusable_history_is_one_clear_error(tmp_path):
    (tmp_path / "bad.csv").write_text("path,likes\nx.jpg,1\n")
    with pytest.raises(ValueError, match="lacks the columns.*image"):
        history.read_history(str(tmp_path / "bad.csv"))
    (tmp_path / "empty.csv").write_text("image,likes,timestamp\nnope.jpg,1,1\n")
    with pytest.raises(ValueError, match="no usable post"):
        history.read_history(str(tmp_path / "empty.csv"))
    with pytest.raises(ValueError, match="neither"):
        history.read_history(str(tmp_path / "absent"))
