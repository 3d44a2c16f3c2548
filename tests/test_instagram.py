# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests for ipa_jax.data.instagram on a hand-built raw directory with every defect kind."""

import collections
import csv
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from ipa_jax import config_lib
from ipa_jax.data import instagram

T0 = 1_500_000_000  # 2017-07-14: a plausible post time (read_posts drops implausible ones)


def _meta(user, pid, *, ts=1_500_000_000, likes=10, caption="hi", typename="GraphImage",
          is_video=False):
    edges = [{"node": {"text": caption}}] if caption is not None else []
    return {"owner": {"id": "42", "username": user}, "taken_at_timestamp": ts,
            "edge_media_preview_like": {"count": likes}, "edge_media_to_caption": {"edges": edges},
            "is_video": is_video, "__typename": typename, "shortcode": f"sc{pid}"}


def _noise_jpeg():
    # Noise keeps the entropy-coded data long, so a cut leaves the header intact.
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


class RawDir:
    """Writes a raw directory in the Instagram Influencer Dataset layout."""

    def __init__(self, root):
        self.root = root
        (root / "info").mkdir()
        (root / "image").mkdir()
        self.rows = ["Influencer_name\tJSON_PostMetadata_file_name\tImage_file_name"]

    def post(self, user, pid, *, meta=None, info_text=None, images=None, image_bytes=None,
             **meta_kw):
        """Adds a mapping row, its .info file (meta=False: none) and its JPEG(s)."""
        names = images if images is not None else [f"{pid}.jpg"]
        self.rows.append(f"{user}\t{pid}.info\t{names!r}")
        info = self.root / "info" / f"{user}-{pid}.info"
        if isinstance(info_text, bytes):
            info.write_bytes(info_text)
        elif info_text is not None:
            info.write_text(info_text)
        elif meta is not False:
            info.write_text(json.dumps(meta if meta is not None else _meta(user, pid, **meta_kw)))
        for name in names:
            path = self.root / "image" / f"{user}-{name}"
            if image_bytes is not None:
                path.write_bytes(image_bytes)
            elif name != "absent.jpg":
                color = (int(pid) * 37 % 256, 10, 200)
                Image.new("RGB", (8, 6), color).save(path, format="JPEG")

    def write(self, extra_rows=()):
        text = "\n".join(self.rows + list(extra_rows)) + "\n"
        (self.root / instagram.MAPPING_FILE).write_text(text)


@pytest.fixture
def raw(tmp_path):
    r = RawDir(tmp_path)
    # Kept: three images of two users, one with no caption edge.
    r.post("bob", "3", ts=T0 + 300, likes=5, caption="b3")
    r.post("alice", "2", ts=T0 + 200, likes=7, caption=None)
    r.post("alice", "1", ts=T0 + 100, likes=0, caption="first #post")
    # Dropped, one or more per reason.
    r.post("alice", "10", meta=False)                                      # missing metadata file
    r.post("alice", "11", info_text="{not json")                           # unreadable metadata
    r.post("alice", "12", info_text=b"\xff\xfe{]")                         # unreadable metadata
    m = _meta("alice", "13")
    del m["edge_media_preview_like"]
    r.post("alice", "13", meta=m)                                          # missing metadata field
    r.post("alice", "14", ts="yesterday")                                  # missing metadata field
    r.post("alice", "15", likes=True)                                      # missing metadata field
    r.post("alice", "16", info_text="[1, 2]")                              # missing metadata field
    r.post("bob", "20", typename="GraphVideo", is_video=True)              # video
    r.post("bob", "21", typename="GraphImage", is_video=True)              # video
    r.post("bob", "22", typename="GraphSidecar", images=["22_a.jpg", "22_b.jpg"])  # sidecar
    r.post("bob", "23", images=["absent.jpg"])                             # missing image file
    r.post("bob", "24", image_bytes=b"definitely not a jpeg")              # unreadable image
    r.post("bob", "25", image_bytes=_noise_jpeg()[:1500])                 # unreadable (truncated)
    r.post("bob", "26", images=["26_a.jpg", "26_b.jpg"])                   # sidecar (2 files)
    r.rows.append("bob\t3.info\t['3.jpg']")                                # duplicate post
    r.rows.append("alice\t10.info\t['10.jpg']")                            # duplicate of a dropped
    r.write(extra_rows=[
        "",                                                                # blank: not a row
        "carol\t30.info",                                                  # bad mapping row
        "carol\t31.info\t['31.jpg'",                                       # bad mapping row
        "carol\t32.info\t__import__('os')",                                # bad mapping row
        "carol\t33.info\t[]",                                              # bad mapping row
        "carol\t34.json\t['34.jpg']",                                      # bad mapping row
        "carol\t35.info\t['../../etc/passwd']",                            # bad mapping row
    ])
    return r


EXPECTED_DROPS = {
    "missing metadata file": 1, "unreadable metadata": 2, "missing metadata field": 4, "video": 2,
    "sidecar": 2, "missing image file": 1, "unreadable image": 2, "duplicate post": 2,
    "bad mapping row": 6,
}


@pytest.mark.parametrize("num_threads", [1, 3])
def test_read_posts_counts_every_defect(raw, num_threads):
    posts, dropped = instagram.read_posts(raw.root, progress=False, num_threads=num_threads)
    assert dict(dropped) == EXPECTED_DROPS
    assert set(dropped) <= set(instagram.DROP_REASONS)
    n_rows = len(raw.rows) - 1 + 6  # Header excluded, blank line excluded.
    assert len(posts) + sum(dropped.values()) == n_rows
    assert [p.post_id for p in posts] == ["alice-1", "alice-2", "bob-3"]


def test_read_posts_fields(raw):
    posts, _ = instagram.read_posts(raw.root, progress=False)
    a1, a2, b3 = posts
    assert a1 == instagram.Post(post_id="alice-1", user="alice", timestamp=T0 + 100, likes=0,
                                caption="first #post", typename="GraphImage", is_video=False,
                                image_paths=("image/alice-1.jpg",))
    assert a2.caption == ""  # No caption edge.
    assert b3.image_path == "image/bob-3.jpg" and b3.likes == 5
    with Image.open(raw.root / b3.image_path) as im:
        assert im.size == (8, 6)


def test_read_posts_without_decoding_keeps_corrupt_but_not_missing_images(raw):
    posts, dropped = instagram.read_posts(raw.root, check_images=False, progress=False)
    assert "unreadable image" not in dropped
    assert dropped["missing image file"] == 1
    assert {"bob-24", "bob-25"} <= {p.post_id for p in posts}
    assert len(posts) == 3 + 2


def test_read_posts_order_is_user_time_id(tmp_path):
    r = RawDir(tmp_path)
    rng = np.random.default_rng(0)
    expected = []
    for k in rng.permutation(40):
        user = f"u{k % 3}"
        ts = T0 + int(k // 4)  # Ties in timestamp are broken by post_id.
        r.post(user, str(100 + k), ts=ts)
        expected.append((user, ts, f"{user}-{100 + k}"))
    r.write()
    posts, dropped = instagram.read_posts(tmp_path, progress=False, num_threads=2)
    assert not dropped
    assert [(p.user, p.timestamp, p.post_id) for p in posts] == sorted(expected)


def test_read_influencers(tmp_path):
    (tmp_path / instagram.INFLUENCERS_FILE).write_text(
        "Username\tCategory\t#Followers\t#Followees\t#Posts\n"
        "alice\tfashion\t1200\t300\t45\n\nbob\tfood\t99\t1\t7\n")
    assert instagram.read_influencers(tmp_path) == ({
        "alice": {"category": "fashion", "followers": 1200, "followees": 300, "posts": 45},
        "bob": {"category": "food", "followers": 99, "followees": 1, "posts": 7},
    }, collections.Counter())


def test_read_influencers_bom_separator_and_bad_rows(tmp_path):
    """Issue 10 item 9: the released file's separator line, a BOM, bad rows: read or counted."""
    (tmp_path / instagram.INFLUENCERS_FILE).write_bytes(
        b"\xef\xbb\xbfUsername\tCategory\t#Followers\t#Followees\t#Posts\n"
        + b"=" * 60 + b"\n"
        b"alice\tfashion\t1,200\t300\t45\n"
        b"caf\xe9\tfood\t10\t1\t7\n"           # Latin-1 name: not UTF-8
        b"bob\tfood\tmany\t1\t7\n"             # not a count
        b"carol\ttravel\t5\n"                    # 3 columns
        b"alice\tfood\t1\t1\t1\n"               # duplicate: the first row wins
        b"\n")
    influencers, dropped = instagram.read_influencers(tmp_path)
    assert influencers == {
        "alice": {"category": "fashion", "followers": 1200, "followees": 300, "posts": 45}}
    assert dropped == {"bad influencer row": 3, "duplicate influencer": 1}


def test_drop_reasons_are_the_documented_strings():
    assert collections.Counter(instagram.DROP_REASONS) == collections.Counter([
        "missing metadata file", "unreadable metadata", "missing metadata field", "video",
        "sidecar", "missing image file", "unreadable image", "duplicate post", "bad mapping row",
        "non-utf-8 mapping row", "implausible timestamp", "not among the top users"])


def test_top_users_keep_the_most_followed_and_count_the_rest(raw, tmp_path):
    influencers = {"alice": {"followers": 10}, "bob": {"followers": 500},
                   "carol": {"followers": 10}, "dan": {"followers": 7}}
    assert instagram.top_users(influencers, 1) == {"bob"}
    assert instagram.top_users(influencers, 2) == {"bob", "alice"}  # ties: by name
    assert instagram.top_users(influencers, 9) == set(influencers)
    posts, dropped = instagram.read_posts(raw.root, progress=False, users=frozenset({"bob"}))
    assert [p.post_id for p in posts] == ["bob-3"]
    everyone, all_drops = instagram.read_posts(raw.root, progress=False)
    # alice's rows are counted as another user's before anything of theirs is opened.
    assert dropped["not among the top users"] > 0
    assert len(posts) + sum(dropped.values()) == len(everyone) + sum(all_drops.values())


def test_prepare_keeps_the_top_users(tiny_raw, tmp_path):
    from ipa_jax.data import prepare
    from tests.conftest import load_config

    prep = load_config("i2pa", "tiny").prep
    influencers, _ = instagram.read_influencers(tiny_raw)
    keep = instagram.top_users(influencers, 3)
    prep.top_users = 3
    summary = prepare.prepare(tiny_raw, str(tmp_path / "p"), prep, progress=False)
    with open(tmp_path / "p" / "posts.csv") as f:
        users = {r["user"] for r in csv.DictReader(f)}
    assert users == keep and len(influencers) > 3
    assert summary["top_users"] == {"asked": 3, "selected": 3}
    assert summary["drops"]["read"]["not among the top users"] > 0
    assert "the 3 with the most followers" in prepare.format_report(summary)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / instagram.MAPPING_FILE).write_text("Influencer_name\tx\ty\n")
    with pytest.raises(config_lib.DataError, match="influencers.txt is missing"):
        prepare.prepare(str(tmp_path / "raw"), str(tmp_path / "q"), prep, progress=False)


def test_mapping_bom_and_non_utf8_names_are_read_or_counted(tmp_path):
    """Issue 10 item 9: a BOM is no bad row; a non-UTF-8 name is a counted drop, never a crash."""
    r = RawDir(tmp_path)
    r.post("alice", "1", ts=T0 + 1)
    r.post("alice", "2", ts=T0 + 2, info_text=b"\xef\xbb\xbf" + json.dumps(
        _meta("alice", "2", ts=T0 + 2)).encode())                       # .info with a BOM: kept
    r.post("alice", "3", ts=T0 + 3, caption="broken \ud83d escape")   # lone surrogate: mended
    m = _meta("alice", "4", ts=T0 + 4)
    m["owner"]["username"] = "\udce9"
    r.post("alice", "4", meta=m)                                        # missing metadata field
    text = "\n".join(r.rows) + "\n"
    # A Latin-1 user name, with its .info and image on disk under the same bytes.
    latin = b"caf\xe9"
    (tmp_path / "info" / (latin + b"-5.info").decode("utf-8", "surrogateescape")).write_text(
        json.dumps(_meta("cafe", "5", ts=T0 + 5)))
    Image.new("RGB", (8, 6)).save(
        tmp_path / "image" / (latin + b"-5.jpg").decode("utf-8", "surrogateescape"), "JPEG")
    (tmp_path / instagram.MAPPING_FILE).write_bytes(
        b"\xef\xbb\xbf" + text.encode() + latin + b"\t5.info\t['5.jpg']\n")
    posts, dropped = instagram.read_posts(tmp_path, progress=False, num_threads=1)
    assert dropped == {"non-utf-8 mapping row": 1, "missing metadata field": 1}
    assert [p.post_id for p in posts] == ["alice-1", "alice-2", "alice-3"]
    assert posts[2].caption.encode("utf-8") == b"broken ? escape"
    assert len(posts) + sum(dropped.values()) == 5  # header not counted


def test_implausible_timestamps_are_counted(tmp_path):
    """Issue 10 item 3: milliseconds, the future, before Instagram: a counted drop reason."""
    r = RawDir(tmp_path)
    r.post("u", "1", ts=T0)
    r.post("u", "2", ts=T0 * 1000)                                      # milliseconds
    r.post("u", "3", ts=int(time.time()) + 86400)                       # tomorrow
    r.post("u", "4", ts=1286323200 - 1)                                 # before 2010-10-06
    r.post("u", "5", ts=-1)
    r.post("u", "6", ts=1286323200)                                     # Instagram's first day
    r.write()
    posts, dropped = instagram.read_posts(tmp_path, progress=False)
    assert dropped == {"implausible timestamp": 4}
    assert [p.post_id for p in posts] == ["u-6", "u-1"]
    posts, dropped = instagram.read_posts(tmp_path, progress=False, max_timestamp=T0 - 1)
    assert dropped == {"implausible timestamp": 5} and [p.post_id for p in posts] == ["u-6"]


def test_crawl_time_estimate_ignores_a_few_outliers():
    day = 86400
    ts = [T0 + k * day // 3 for k in range(300)]  # 100 days of posts
    newest = max(ts)
    assert instagram.estimate_crawl_time(ts) == newest
    for bad in (T0 + 400 * day, T0 * 1000, 2**62):
        assert instagram.estimate_crawl_time([*ts, bad, bad - 1]) == newest
    assert instagram.estimate_crawl_time(ts[:2] + [T0 + 90 * day]) == ts[1]
    assert instagram.estimate_crawl_time([T0]) == T0
    posts = [instagram.Post(f"u-{t}", "u", t, 1, "", "GraphImage", False, ("image/x",))
             for t in (T0, T0 + 1, T0 + 2)]
    dropped = collections.Counter()
    assert instagram.drop_after_crawl(posts, T0 + 1, dropped) == posts[:2]
    assert dropped == {"after crawl time": 1}
