# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests for data_prep.prepare: manifests and TFRecords obey the SPEC rules, checked from raw files.

Every rule is restated here and checked against the raw `.info` JSON and the mapping file, never
with data_prep's own rule functions.
"""

import ast
import collections
import csv
import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from scipy import stats

from ipa_jax.data import prepare, tfds_builder
from tests.conftest import REPO, load_config

DAY = 86400
SPLITS = ("train", "validation", "test")
# SPEC constants, restated rather than read from the config.
GROUP_WINDOW = 7 * DAY
GROUP_MIN, GROUP_MAX = 2, 30
GROUP_REL_DIFF = 0.5
PDIP_PROB, PDIP_SIGMA = 0.95, 0.3
PDIP_MAX_DT = 10 * DAY
PDIP_MIN_AGE = 30 * DAY
PDIP_MAX_WORDS = 6
PDIP_MIN_LIKES = 50

Raw = collections.namedtuple("Raw", "user likes timestamp caption typename is_video")


def _read_raw(raw_dir):
    """post_id -> Raw for every .info file that parses and has all the fields used here."""
    out = {}
    for name in os.listdir(os.path.join(raw_dir, "info")):
        try:
            with open(os.path.join(raw_dir, "info", name)) as f:
                meta = json.load(f)
            edges = meta["edge_media_to_caption"]["edges"]
            out[name[:-len(".info")]] = Raw(
                meta["owner"]["username"], meta["edge_media_preview_like"]["count"],
                meta["taken_at_timestamp"], edges[0]["node"]["text"] if edges else "",
                meta["__typename"], meta["is_video"])
        except (ValueError, KeyError):
            continue
    return out


def _read_mapping(raw_dir):
    """post_id -> image paths relative to raw_dir, from the mapping file."""
    with open(os.path.join(raw_dir, "JSON-Image_files_mapping.txt")) as f:
        lines = [line for line in f.read().splitlines()[1:] if line.strip()]
    out = {}
    for line in lines:
        user, info, images = line.split("\t")
        out[f"{user}-{info[:-len('.info')]}"] = [f"image/{user}-{n}"
                                                  for n in ast.literal_eval(images)]
    return out


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def raw(tiny_raw):
    return _read_raw(tiny_raw)


@pytest.fixture(scope="module")
def dataset_meta(tiny_raw):
    with open(os.path.join(tiny_raw, "dataset.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def out(tiny_prepared):
    """The manifests of the prepared directory."""
    def load(name):
        with open(os.path.join(tiny_prepared, name)) as f:
            return json.load(f)
    return {"posts": _csv(os.path.join(tiny_prepared, "posts.csv")),
            "groups": _csv(os.path.join(tiny_prepared, "groups.csv")),
            "pdips": _csv(os.path.join(tiny_prepared, "pdips.csv")),
            "drops": load("drops.json"), "summary": load("summary.json")}


def _by_group(rows):
    groups = collections.defaultdict(list)
    for r in rows:
        groups[r["group_id"]].append(r)
    return groups


def _tags(caption):
    """(hashtags, mentions, words): the caption rule of Ding et al. as stated in the SPEC."""
    hashtags = {t.lower() for t in re.findall(r"#\w+", caption)}
    mentions = {m.lower() for m in re.findall(r"@[\w.]+", caption)}
    rest = re.sub(r"@[\w.]+", " ", re.sub(r"#\w+", " ", caption))
    words = [tok for tok in rest.split() if any(ch.isalnum() for ch in tok)]
    return hashtags, mentions, len(words)


def _expected_pairs(likes):
    """All (winner, loser) index pairs with |l_a - l_b| / max(l_a, l_b) >= 0.5, sorted."""
    pairs = []
    for i in range(len(likes)):
        for j in range(i + 1, len(likes)):
            hi, lo = max(likes[i], likes[j]), min(likes[i], likes[j])
            if hi > lo and (hi - lo) / hi >= GROUP_REL_DIFF:
                pairs.append((i, j) if likes[i] > likes[j] else (j, i))
    return sorted(pairs)


def _largest_remainder(n, fractions):
    exact = [f * n for f in fractions]
    sizes = [math.floor(e) for e in exact]
    order = sorted(range(len(exact)), key=lambda k: (-(exact[k] - sizes[k]), k))
    for k in order[:n - sum(sizes)]:
        sizes[k] += 1
    return sizes


# 1. Manifests agree with the raw files and obey the rules.

def test_posts_match_raw(out, raw):
    assert [int(r["post_index"]) for r in out["posts"]] == list(range(len(out["posts"])))
    for r in out["posts"]:
        p = raw[r["post_id"]]
        assert (r["user"], int(r["likes"]), int(r["timestamp"])) == (p.user, p.likes, p.timestamp)
        assert p.typename == "GraphImage" and not p.is_video
        assert r["post_id"].startswith(p.user + "-")


def test_group_rows_match_raw_and_obey_rules(out, raw):
    groups = _by_group(out["groups"])
    assert len(groups) >= 10
    for group_id, rows in groups.items():
        for r in rows:
            p = raw[r["post_id"]]
            assert (r["user"], int(r["likes"]), int(r["timestamp"])) == (
                p.user, p.likes, p.timestamp)
        assert len({r["user"] for r in rows}) == 1, group_id
        assert len({r["split"] for r in rows}) == 1, group_id
        times = [raw[r["post_id"]].timestamp for r in rows]
        assert max(times) - min(times) <= GROUP_WINDOW, group_id
        assert GROUP_MIN <= len(rows) <= GROUP_MAX, group_id
        assert all(raw[r["post_id"]].likes >= 1 for r in rows)  # tiny config: min_likes = 1
    # Every kept post is in a group or counted as dropped by the grouping stage.
    assert len(out["groups"]) + sum(out["drops"]["groups"].values()) == len(out["posts"])


def test_pdips_obey_every_rule(out, raw):
    kept = {r["post_id"] for r in out["posts"]}
    crawl = max(raw[pid].timestamp for pid in kept)
    assert len(out["pdips"]) >= 10
    for r in out["pdips"]:
        a, b = raw[r["post_a"]], raw[r["post_b"]]
        assert {r["post_a"], r["post_b"]} <= kept
        assert r["winner"] == (r["post_a"] if a.likes > b.likes else r["post_b"]), r
        assert a.likes != b.likes
        z = abs(math.log(a.likes) - math.log(b.likes)) / (math.sqrt(2) * PDIP_SIGMA)
        assert stats.norm.cdf(z) >= PDIP_PROB, r
        assert a.user == b.user, r
        assert abs(a.timestamp - b.timestamp) <= PDIP_MAX_DT, r
        for p in (a, b):
            assert p.timestamp <= crawl - PDIP_MIN_AGE, r
            assert p.typename == "GraphImage" and p.is_video is False
            assert p.likes >= PDIP_MIN_LIKES
            assert _tags(p.caption)[2] <= PDIP_MAX_WORDS, (r, p.caption)
        assert _tags(a.caption)[:2] == _tags(b.caption)[:2], (a.caption, b.caption)
    # Every kept post is in a PDIP or counted as dropped by the PDIP stage.
    assert 2 * len(out["pdips"]) + sum(out["drops"]["pdips"].values()) == len(out["posts"])


# 2. Disjointness and split sizes.

def test_no_post_in_two_groups_or_splits(out):
    post_ids = [r["post_id"] for r in out["groups"]]
    assert len(post_ids) == len(set(post_ids))
    split_of = {}
    for r in out["groups"]:
        assert split_of.setdefault(r["post_id"], r["split"]) == r["split"]
    assert {r["split"] for r in out["groups"]} == set(SPLITS)


def test_no_image_in_two_pdips(out):
    images = [pid for r in out["pdips"] for pid in (r["post_a"], r["post_b"])]
    assert len(images) == len(set(images))
    assert all(r["post_a"] != r["post_b"] for r in out["pdips"])
    assert len({r["pair_id"] for r in out["pdips"]}) == len(out["pdips"])
    assert {r["split"] for r in out["pdips"]} == set(SPLITS)


def test_split_sizes(out):
    cfg = load_config("i2pa", "tiny").prep
    assert tuple(cfg.groups.fractions) == (0.8, 0.1, 0.1)
    group_split = {gid: rows[0]["split"] for gid, rows in _by_group(out["groups"]).items()}
    counts = collections.Counter(group_split.values())
    assert [counts[s] for s in SPLITS] == _largest_remainder(len(group_split), (0.8, 0.1, 0.1))
    # Groups are assigned at random, not in order of user and time.
    ordered = sorted(group_split)
    assert [group_split[g] for g in ordered] != sorted(
        group_split.values(), key=SPLITS.index)
    # PDIPs: validation and test are 10% of all pairs each, rounded; the rest is train.
    n = len(out["pdips"])
    pdip_counts = collections.Counter(r["split"] for r in out["pdips"])
    tenth = math.floor(0.1 * n + 0.5)
    assert [pdip_counts[s] for s in SPLITS] == [n - 2 * tenth, tenth, tenth]


def test_summary_counts_match_manifests(out):
    counts = out["summary"]["counts"]
    for split in SPLITS:
        rows = [r for r in out["groups"] if r["split"] == split]
        groups = _by_group(rows)
        pairs = sum(len(_expected_pairs([int(r["likes"]) for r in g])) for g in groups.values())
        assert counts["groups"][split] == {"groups": len(groups), "images": len(rows),
                                           "pairs": pairs}
        n = sum(r["split"] == split for r in out["pdips"])
        assert counts["pdips"][split] == {"groups": n, "images": 2 * n, "pairs": n}
    assert out["summary"]["num_posts_read"] == len(out["posts"])
    assert out["summary"]["drops"] == out["drops"]


# 3. Broken inputs are counted, not fatal.

def test_read_drops_match_planted_defects(out, dataset_meta, tiny_raw):
    n = dataset_meta["defect_counts"]
    expected = {
        "missing metadata file": n["missing_info"],
        "unreadable metadata": n["malformed_json"],
        "missing metadata field": n["missing_likes"] + n["missing_timestamp"],
        "missing image file": n["missing_image"],
        "unreadable image": n["corrupt_image"],
        "video": dataset_meta["counts"]["video_posts"],
        "sidecar": dataset_meta["counts"]["sidecar_posts"],
    }
    assert all(v >= 1 for v in expected.values())
    assert out["drops"]["read"] == expected
    mapping_rows = len(_read_mapping(tiny_raw))
    assert mapping_rows == dataset_meta["counts"]["posts"]
    assert len(out["posts"]) + sum(out["drops"]["read"].values()) == mapping_rows


def test_defective_posts_are_absent(out, dataset_meta):
    kept = {r["post_id"] for r in out["posts"]}
    used = kept | {r["post_id"] for r in out["groups"]} | {
        pid for r in out["pdips"] for pid in (r["post_a"], r["post_b"])}
    assert used == kept
    for kind, ids in dataset_meta["defects"].items():
        if kind != "low_likes":
            assert ids and not set(ids) & kept, kind


def test_low_likes_are_counted_at_pdips(out, raw, dataset_meta):
    kept = {r["post_id"] for r in out["posts"]}
    low = {pid for pid in kept if raw[pid].likes < PDIP_MIN_LIKES}
    assert low == set(dataset_meta["defects"]["low_likes"]) & kept
    assert low
    assert out["drops"]["pdips"]["too few likes"] == len(low)
    in_pdips = {pid for r in out["pdips"] for pid in (r["post_a"], r["post_b"])}
    assert not low & in_pdips


# 4. TFRecords agree with the manifests.

def _load_tfds(prepared, name):
    builder = tfds.builder_from_directory(tfds_builder.dataset_dir(prepared, name))
    return {s: list(tfds.as_numpy(builder.as_dataset(split=s, shuffle_files=False)))
            for s in SPLITS}


def _check_images(example, post_ids, raw_dir, mapping):
    assert len(example["image"]) == len(post_ids)
    for encoded, pid in zip(example["image"], post_ids, strict=True):
        decoded = tf.io.decode_image(encoded, expand_animations=False).numpy()
        assert decoded.ndim == 3 and decoded.shape[-1] == 3
        # Stored as is (store_short_side = 0): the pixels are those of the raw image file.
        (path,) = mapping[pid]
        with Image.open(os.path.join(raw_dir, path)) as im:
            reference = np.asarray(im.convert("RGB"), np.float32)
        assert decoded.shape == reference.shape
        assert np.abs(decoded - reference).mean() < 2.0, pid


def _decode_text(x):
    return x.decode() if isinstance(x, bytes) else str(x)


def test_group_tfrecords_match_manifest(tiny_prepared, tiny_raw, out, raw):
    index = {r["post_id"]: int(r["post_index"]) for r in out["posts"]}
    post_id = {i: pid for pid, i in index.items()}
    groups = _by_group(out["groups"])
    mapping = _read_mapping(tiny_raw)
    data = _load_tfds(tiny_prepared, "groups")
    for split in SPLITS:
        examples = data[split]
        expected = {index[r["post_id"]] for r in out["groups"] if r["split"] == split}
        got = [int(i) for ex in examples for i in ex["post_index"]]
        assert len(got) == len(set(got)) and set(got) == expected, split
        assert len(examples) == len({r["group_id"] for r in out["groups"]
                                     if r["split"] == split})
        for ex in examples:
            rows = groups[_decode_text(ex["group_id"])]
            assert rows[0]["split"] == split and _decode_text(ex["user"]) == rows[0]["user"]
            ids = [post_id[int(i)] for i in ex["post_index"]]
            assert ids == [r["post_id"] for r in rows]
            likes = [raw[pid].likes for pid in ids]
            np.testing.assert_array_equal(ex["likes"], np.array(likes, np.float32))
            np.testing.assert_array_equal(ex["timestamp"], [raw[pid].timestamp for pid in ids])
            assert ex["pairs"].shape[1:] == (2,)
            assert sorted(map(tuple, ex["pairs"].tolist())) == _expected_pairs(likes)
            _check_images(ex, ids, tiny_raw, mapping)


def test_pdip_tfrecords_match_manifest(tiny_prepared, tiny_raw, out, raw):
    index = {r["post_id"]: int(r["post_index"]) for r in out["posts"]}
    post_id = {i: pid for pid, i in index.items()}
    rows = {r["pair_id"]: r for r in out["pdips"]}
    mapping = _read_mapping(tiny_raw)
    data = _load_tfds(tiny_prepared, "pdips")
    seen = set()
    for split in SPLITS:
        assert len(data[split]) == sum(r["split"] == split for r in out["pdips"])
        for ex in data[split]:
            row = rows[_decode_text(ex["group_id"])]
            seen.add(row["pair_id"])
            assert row["split"] == split
            ids = [post_id[int(i)] for i in ex["post_index"]]
            assert len(ids) == 2 and set(ids) == {row["post_a"], row["post_b"]}
            assert ids[0] == row["winner"]  # winner first
            assert _decode_text(ex["user"]) == raw[ids[0]].user
            np.testing.assert_array_equal(ex["likes"], [raw[pid].likes for pid in ids])
            assert ex["likes"][0] > ex["likes"][1]
            np.testing.assert_array_equal(ex["timestamp"], [raw[pid].timestamp for pid in ids])
            assert ex["pairs"].tolist() == [[0, 1]]
            _check_images(ex, ids, tiny_raw, mapping)
    assert seen == set(rows)


# 5. Re-running reuses a complete directory and refuses one made with other settings.

def _mtimes(root):
    return {os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns
            for d, _, names in os.walk(root) for n in names}


@pytest.fixture
def prepared_copy(tiny_prepared, tmp_path):
    path = str(tmp_path / "prepared")
    shutil.copytree(tiny_prepared, path)
    return path


@pytest.mark.parametrize("relative", [False, True])
def test_rerun_same_settings_reuses(prepared_copy, tiny_raw, out, relative):
    before = _mtimes(prepared_copy)
    raw_dir = os.path.relpath(tiny_raw) if relative else tiny_raw
    summary = prepare.prepare(raw_dir, prepared_copy, load_config("i2pa", "tiny").prep,
                              progress=False)
    assert summary == out["summary"]
    assert _mtimes(prepared_copy) == before


@pytest.mark.parametrize("change", ["split_seed", "window_days", "min_likes", "raw_dir"])
def test_rerun_other_settings_raises(prepared_copy, tiny_raw, tmp_path, change):
    prep = load_config("i2pa", "tiny").prep
    raw_dir = tiny_raw
    if change == "split_seed":
        prep.split_seed += 1
    elif change == "window_days":
        prep.groups.window_days = 3.0
    elif change == "min_likes":
        prep.pdips.min_likes = 100
    else:
        raw_dir = str(tmp_path / "other_raw")
    before = _mtimes(prepared_copy)
    with pytest.raises(ValueError, match=re.escape(prepared_copy)):
        prepare.prepare(raw_dir, prepared_copy, prep, progress=False)
    assert _mtimes(prepared_copy) == before


def test_imports_run_one_way_from_data_prep_to_ipa_jax():
    """ipa_jax (the package, the dataset format and the local preparation) never imports
    data_prep (the command lines and the Beam pipeline over it)."""
    import ast  # noqa: PLC0415

    package = os.path.join(REPO, "ipa_jax")
    offenders = []
    for folder, _, names in os.walk(package):
        for name in (n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                           [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [(os.path.relpath(path, REPO), m) for m in modules
                              if m.split(".")[0] == "data_prep"]
    assert not offenders
    assert len(list(os.walk(package))) > 3  # the walk saw the package and its subpackages
