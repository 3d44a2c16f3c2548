# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests for the embedded Instagram-Influencer-format dataset generator."""

import ast
import csv
import dataclasses
import json
import math
import os
import re

import numpy as np
import pytest
import scipy.stats
from PIL import Image, ImageFile

from data_prep import embedded as embedded_cli
from ipa_jax.data import embedded
from ipa_jax.data import embedded_scenes as scenes
from tests.conftest import read_tree

SIZE = embedded.SIZES["tiny"]["image_size"]
INFO_DEFECTS = ("missing_info", "malformed_json", "missing_likes", "missing_timestamp")
IMAGE_DEFECTS = ("missing_image", "corrupt_image")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny") / "raw")
    meta = embedded.generate(out, size="tiny", seed=0, progress=False)
    return out, meta


def _mapping(out):
    with open(os.path.join(out, "JSON-Image_files_mapping.txt")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "Influencer_name\tJSON_PostMetadata_file_name\tImage_file_name"
    return [line.split("\t") for line in lines[1:]]


def _truth(out):
    with open(os.path.join(out, "planted_truth.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _defect_of(meta):
    return {pid: k for k in INFO_DEFECTS + IMAGE_DEFECTS for pid in meta["defects"][k]}


def _readable_infos(out, meta):
    """post_id -> parsed .info of every post whose metadata is complete."""
    defect_of = _defect_of(meta)
    infos = {}
    for user, info_name, _ in _mapping(out):
        pid = f"{user}-{info_name[:-len('.info')]}"
        if defect_of.get(pid) not in INFO_DEFECTS:
            with open(os.path.join(out, "info", f"{pid}.info")) as f:
                infos[pid] = json.load(f)
    return infos


def _unreadable(path):
    try:
        with Image.open(path) as im:
            im.load()
    except Exception:  # PIL raises OSError / SyntaxError / ValueError depending on the damage
        return True
    return False


def test_same_seed_is_byte_identical_and_other_seed_differs(raw, tmp_path):
    out, _ = raw
    embedded.generate(str(tmp_path / "again"), size="tiny", seed=0, progress=False)
    embedded.generate(str(tmp_path / "other"), size="tiny", seed=1, progress=False)
    first, again, other = (read_tree(d) for d in (out, tmp_path / "again", tmp_path / "other"))
    assert sorted(first) == sorted(again)
    assert all(first[k] == again[k] for k in first)
    assert first["planted_truth.csv"] != other["planted_truth.csv"]
    for folder in ("background", "captions"):  # the annotations are generated identically too
        assert any(k.startswith(folder + os.sep) for k in first), folder
    assert set(first) != set(other)  # post ids are drawn from the seed too


def test_tables_and_counts_match_the_files(raw):
    out, meta = raw
    with open(os.path.join(out, "influencers.txt")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "Username\tCategory\t#Followers\t#Followees\t#Posts"
    influencers = [line.split("\t") for line in lines[1:]]
    assert len(influencers) == meta["num_users"] == meta["counts"]["users"] == 6
    for name, category, followers, followees, posts in influencers:
        assert re.fullmatch(r"[a-z0-9._]+", name) and category
        assert int(followers) >= 5000 and int(followees) > 0 and int(posts) >= 50
    rows = _mapping(out)
    assert len(rows) == meta["counts"]["posts"] == 6 * 50
    assert {r[0] for r in rows} == {r[0] for r in influencers}
    postids = [r[1][:-len(".info")] for r in rows]
    assert len(set(postids)) == len(postids)
    assert all(re.fullmatch(r"[1-9]\d{18}", p) and r[1].endswith(".info")
               for p, r in zip(postids, rows, strict=True))
    listed = [n for r in rows for n in ast.literal_eval(r[2])]
    num_images = len(listed) - len(meta["defects"]["missing_image"])
    assert len(os.listdir(os.path.join(out, "image"))) == num_images == meta["counts"]["images"]
    assert len(os.listdir(os.path.join(out, "info"))) == len(rows) - len(
        meta["defects"]["missing_info"])
    n_depth, n_keypoints = (len(os.listdir(os.path.join(out, d))) for d in ("depth", "keypoints"))
    assert n_depth == n_keypoints == meta["counts"]["depth_maps"]
    assert n_keypoints == meta["counts"]["keypoint_files"]
    # One mask and one caption for every post with a depth map, and for no other post.
    depth_posts = {n[:-len(".png")] for n in os.listdir(os.path.join(out, "depth"))}
    for folder, ext, key in (("background", ".png", "background_masks"),
                             ("captions", ".txt", "caption_files")):
        names = os.listdir(os.path.join(out, folder))
        assert {n[:-len(ext)] for n in names} == depth_posts and n_depth == meta["counts"][key]
    counts = meta["counts"]
    assert counts["image_posts"] + counts["sidecar_posts"] + counts["video_posts"] == len(rows)
    assert 0.01 < counts["video_posts"] / len(rows) < 0.12
    assert 0.02 < counts["sidecar_posts"] / len(rows) < 0.15
    assert set(os.listdir(out)) == {"influencers.txt", "JSON-Image_files_mapping.txt", "info",
                                    "image", "depth", "keypoints", "background", "captions",
                                    "planted_truth.csv", "dataset.json"}


def test_every_defect_kind_is_planted_and_recorded(raw, monkeypatch):
    out, meta = raw
    assert tuple(meta["defects"]) == embedded.DEFECT_KINDS
    for kind, pids in meta["defects"].items():
        assert len(pids) == meta["defect_counts"][kind] >= 1, kind
    planted = [p for k in INFO_DEFECTS + IMAGE_DEFECTS for p in meta["defects"][k]]
    assert len(set(planted)) == len(planted)  # one defect per post
    info_dir, image_dir = os.path.join(out, "info"), os.path.join(out, "image")
    for pid in meta["defects"]["missing_info"]:
        assert not os.path.exists(os.path.join(info_dir, f"{pid}.info"))
    for pid in meta["defects"]["malformed_json"]:
        with open(os.path.join(info_dir, f"{pid}.info")) as f, pytest.raises(ValueError):
            json.load(f)
    for kind, field in (("missing_likes", "edge_media_preview_like"),
                        ("missing_timestamp", "taken_at_timestamp")):
        for pid in meta["defects"][kind]:
            with open(os.path.join(info_dir, f"{pid}.info")) as f:
                info = json.load(f)
            assert field not in info and "owner" in info and "shortcode" in info
    for pid in meta["defects"]["missing_image"]:
        assert not os.path.exists(os.path.join(image_dir, f"{pid}.jpg"))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # lenient readers fail too
    for pid in meta["defects"]["corrupt_image"]:
        assert os.path.getsize(os.path.join(image_dir, f"{pid}.jpg")) > 0
        assert _unreadable(os.path.join(image_dir, f"{pid}.jpg"))
    # Recount low-engagement posts independently from every readable .info.
    infos = _readable_infos(out, meta)
    low = sorted(p for p, i in infos.items()
                 if i["edge_media_preview_like"]["count"] < embedded.LOW_LIKES)
    assert low == meta["defects"]["low_likes"]
    assert len(low) < 0.05 * len(infos)  # most posts have >= 50 likes


def test_good_posts_have_the_real_field_names_and_types(raw):
    out, meta = raw
    infos = _readable_infos(out, meta)
    rows = {f"{r[0]}-{r[1][:-5]}": r for r in _mapping(out)}
    for pid, info in infos.items():
        user, _, names = rows[pid]
        names = ast.literal_eval(names)
        typename = info["__typename"]
        assert typename in ("GraphImage", "GraphSidecar", "GraphVideo")
        assert re.fullmatch(r"[A-Za-z0-9_-]{11}", info["shortcode"])
        assert info["owner"]["username"] == user and info["owner"]["id"].isdigit()
        assert type(info["taken_at_timestamp"]) is int
        assert 0 < embedded.CRAWL_TIMESTAMP - info["taken_at_timestamp"] < 400 * 86400
        assert type(info["edge_media_preview_like"]["count"]) is int
        assert type(info["edge_media_to_comment"]["count"]) is int
        assert type(info["comments_disabled"]) is bool
        assert info["dimensions"] == {"height": SIZE, "width": SIZE}
        edges = info["edge_media_to_caption"]["edges"]
        assert len(edges) in (0, 1) and all(isinstance(e["node"]["text"], str) for e in edges)
        assert info["is_video"] is (typename == "GraphVideo")
        postid = pid[len(user) + 1:]
        if typename == "GraphSidecar":
            assert 2 <= len(names) <= 4
            assert names == [f"{postid}_{i + 1}.jpg" for i in range(len(names))]
            assert len(info["edge_sidecar_to_children"]["edges"]) == len(names)
        else:
            assert names == [f"{postid}.jpg"] and "edge_sidecar_to_children" not in info
    assert any(not i["edge_media_to_caption"]["edges"] for i in infos.values())


def test_images_keypoints_and_depth_maps(raw):
    out, meta = raw
    defect_of = _defect_of(meta)
    n_people = 0
    for name in sorted(os.listdir(os.path.join(out, "keypoints"))):
        pid = name[:-len(".json")]
        with Image.open(os.path.join(out, "image", f"{pid}.jpg")) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (SIZE, SIZE)
        with Image.open(os.path.join(out, "depth", f"{pid}.png")) as im:
            assert im.format == "PNG" and im.mode.startswith("I;16")
            depth = np.asarray(im).astype(np.float64) / 65535.0
        assert depth.shape == (SIZE, SIZE)
        assert depth.min() >= 0.0 and depth.max() <= 1.0
        assert depth[0].mean() > depth[-1].mean()  # sky / wall behind the floor
        with open(os.path.join(out, "keypoints", name)) as f:
            results = json.load(f)
        assert isinstance(results, list)
        for person in results:
            assert person["image_id"] == f"{pid}.jpg" and person["category_id"] == 1
            assert 0.0 < person["score"] <= 1.0
            kp = np.asarray(person["keypoints"], np.float64)
            assert kp.shape == (51,)
            kp = kp.reshape(17, 3)
            assert np.all(kp[:, 2] == 2)
            assert np.all((kp[:, :2] >= 0) & (kp[:, :2] <= SIZE - 1))
            assert np.all(kp[11:13, 1] > kp[5:7, 1]) and np.all(kp[15:, 1] > kp[11:13, 1])
            # The torso between the shoulder and hip keypoints is drawn nearer than the far
            # backdrop, so the keypoints are where a person was drawn.
            cx, cy = np.round(kp[[5, 6, 11, 12], :2].mean(axis=0)).astype(int)
            assert depth[cy, cx] < depth[0, 0] - 0.05
            n_people += 1
        assert defect_of.get(pid) not in IMAGE_DEFECTS
    assert n_people >= 20


def test_background_masks_hold_the_drawn_people(raw):
    out, _ = raw
    on_person = []
    for name in sorted(os.listdir(os.path.join(out, "keypoints"))):
        pid = name[:-len(".json")]
        with Image.open(os.path.join(out, "background", f"{pid}.png")) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (SIZE, SIZE)
            mask = np.asarray(im)
        assert set(np.unique(mask).tolist()) <= {0, 255}
        assert mask[0].mean() > 127  # the top row is sky or wall
        with open(os.path.join(out, "keypoints", name)) as f:
            for person in json.load(f):
                kp = np.asarray(person["keypoints"], np.float64).reshape(17, 3)
                x, y = np.floor(kp[kp[:, 2] > 0, :2]).astype(int).T  # pixel i spans [i, i + 1)
                on_person.append(np.mean(mask[y, x] == 0))
    assert len(on_person) >= 20 and min(on_person) >= 0.8, sorted(on_person)[:5]


def test_masks_come_from_the_drawing_not_the_colours():
    for i, kind in enumerate(("landscape", "object", "landscape", "food")):  # with mountains too
        empty = scenes.Scene(kind, warmth=0.5, brightness=0.8, num_persons=0, num_objects=0,
                             blur=0.0, layout_seed=i)
        assert scenes.render(empty, 40).foreground.sum() == 0
    busy = scenes.Scene("people", warmth=-0.2, brightness=0.5, num_persons=2, num_objects=2,
                        blur=0.0, layout_seed=5, closeness=0.9)
    sharp, blurred = (scenes.render(dataclasses.replace(busy, blur=b), 40) for b in (0.0, 0.8))
    assert not np.array_equal(sharp.rgb, blurred.rgb)
    assert np.array_equal(sharp.foreground, blurred.foreground)
    assert 0.05 < sharp.foreground.mean() < 0.6
    mask = np.asarray(scenes.background_image(sharp.foreground))
    assert mask.dtype == np.uint8 and np.array_equal(mask > 127, ~sharp.foreground)


_PERSON_WORD = re.compile(r"\b(person|people)\b", re.IGNORECASE)


def test_captions_say_what_the_scene_holds(raw):
    out, _ = raw
    for name in os.listdir(os.path.join(out, "captions")):
        with open(os.path.join(out, "captions", name), encoding="utf-8") as f:
            text = f.read()
        with open(os.path.join(out, "keypoints", name[:-len(".txt")] + ".json")) as f:
            num_persons = len(json.load(f))
        assert text.strip() and "\n" not in text
        assert bool(_PERSON_WORD.search(text)) == (num_persons > 0), text
    rng = np.random.default_rng(0)
    sampled = [scenes.sample_scene(rng, scenes.KINDS[i % 4]) for i in range(120)]
    sampled.append(scenes.Scene("people", warmth=0.0, brightness=0.5, num_persons=0,
                                num_objects=0, blur=0.0, layout_seed=1))
    texts = [scenes.caption(s) for s in sampled]
    assert texts == [scenes.caption(dataclasses.replace(s)) for s in sampled]  # pure
    assert len({t.split(" with ")[0] for t in texts}) > 20  # wording varies
    for scene, text in zip(sampled, texts, strict=True):
        assert bool(_PERSON_WORD.search(text)) == (scene.num_persons > 0), text
        assert ("two people" in text or "pair of people" in text) == (scene.num_persons == 2)
        assert ("blurry" in text or "out of focus" in text) == (scene.blur > 0), text
        near = any(w in text for w in ("close to", "foreground", "near the camera"))
        assert near == scene.subject_is_near, text
        assert ("warm" in text or "orange" in text) == (scene.warmth >= 1 / 3), text


def test_planted_truth_matches_the_likes(raw):
    out, meta = raw
    truth = _truth(out)
    assert len(truth) == meta["counts"]["posts"]
    infos = _readable_infos(out, meta)
    for row in truth:
        likes = int(row["likes"])
        z = float(row["expected_log_likes"]) + float(row["noise"])
        # round(exp(z)) == likes  <=>  exp(z) in [likes - 0.5, likes + 0.5)
        assert likes - 0.5 - 1e-3 <= math.exp(z) <= likes + 0.5 + 1e-3, row
        parts = sum(float(row[k]) for k in ("appeal", "taste", "follower_level", "trend"))
        assert float(row["expected_log_likes"]) == pytest.approx(parts, abs=2e-6)
        if row["post_id"] in infos:
            info = infos[row["post_id"]]
            assert info["edge_media_preview_like"]["count"] == likes
            assert info["taken_at_timestamp"] == int(row["timestamp"])
    noise = np.array([float(r["noise"]) for r in truth])
    assert 0.25 < np.median(np.abs(noise)) / 0.6745 < 0.45  # robust std: ignores planted lows
    appeal = np.array([float(r["appeal"]) for r in truth])
    assert 0.5 < appeal.std() < 0.8
    got = embedded.read_planted_truth(out)
    assert got == {r["post_id"]: float(r["expected_log_likes"]) for r in truth}


def test_appeal_drives_likes_within_users_and_is_visible_in_pixels(raw):
    out, meta = raw
    truth = _truth(out)
    for user in {r["user"] for r in truth}:
        rows = [r for r in truth if r["user"] == user]
        rho = scipy.stats.spearmanr([float(r["appeal"]) for r in rows],
                                    [math.log(max(int(r["likes"]), 1)) for r in rows]).statistic
        assert rho > 0.4, (user, rho)
    # Two global colour statistics already explain most of it, with the documented signs:
    # warmer (red minus blue) and brighter images are more appealing.
    features, targets = [], []
    for row in truth:
        path = os.path.join(out, "image", f"{row['post_id']}.jpg")
        if os.path.exists(path) and not _unreadable(path):
            rgb = np.asarray(Image.open(path).convert("RGB"), np.float64)
            features.append([rgb[..., 0].mean() - rgb[..., 2].mean(), rgb.mean(), 1.0])
            targets.append(float(row["appeal"]))
    x, y = np.asarray(features), np.asarray(targets)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    assert 1.0 - np.var(y - x @ coef) / np.var(y) > 0.5
    assert coef[0] > 0 and coef[1] > 0


def _caption_key(info):
    edges = info["edge_media_to_caption"]["edges"]
    text = edges[0]["node"]["text"] if edges else ""
    tags = frozenset(t.lower() for t in re.findall(r"#\w+|@[\w.]+", text))
    words = len(re.sub(r"#\w+|@[\w.]+", " ", text).split())
    return tags, words


def test_posting_times_allow_groups_and_pdips(raw):
    out, meta = raw
    infos = _readable_infos(out, meta)
    crawl, day, defective = meta["crawl_timestamp"], 86400, _defect_of(meta)
    for user in {i["owner"]["username"] for i in infos.values()}:
        posts = sorted((i["taken_at_timestamp"], pid, i) for pid, i in infos.items()
                       if i["owner"]["username"] == user)
        times = [t for t, _, _ in posts]
        assert any(crawl - t < 30 * day for t in times)  # too recent for PDIPs
        assert any(crawl - t > 60 * day for t in times)
        # 7-day windows holding at least two posts.
        groups, start = 0, 0
        while start < len(times):
            end = start
            while end + 1 < len(times) and times[end + 1] - times[start] <= 7 * day:
                end += 1
            groups += end > start
            start = end + 1
        assert groups >= 5
        # Greedy disjoint pairs under the Ding et al. rules (likes ratio >= 2, i.e. a ln gap of
        # at least 0.698; <= 10 days apart; >= 30 days old; <= 6 words; same tag set).
        eligible = []
        for t, pid, info in posts:
            likes = info["edge_media_preview_like"]["count"]
            tags, words = _caption_key(info)
            if (info["__typename"] == "GraphImage" and likes >= 50 and crawl - t >= 30 * day
                    and words <= 6 and pid not in defective):
                eligible.append((t, pid, math.log(likes), tags))
        used, pairs = set(), 0
        for i, a in enumerate(eligible):
            if a[1] in used:
                continue
            for b in eligible[i + 1:]:
                if (b[1] not in used and b[0] - a[0] <= 10 * day and a[3] == b[3]
                        and abs(a[2] - b[2]) >= 0.698):
                    used |= {a[1], b[1]}
                    pairs += 1
                    break
        assert pairs >= 3, (user, pairs)


def test_appeal_formula_on_hand_examples():
    warm = scenes.Scene("people", warmth=1.0, brightness=0.6, num_persons=1, num_objects=2,
                        blur=0.0, layout_seed=0)
    assert scenes.appeal(warm) == pytest.approx(0.75 + 0.45 - 0.33)
    cool = scenes.Scene("food", warmth=-0.5, brightness=0.3, num_persons=0, num_objects=4,
                        blur=0.5, layout_seed=3, closeness=0.8)
    assert scenes.appeal(cool) == pytest.approx(-0.375 - 0.54 + 0.2 - 0.25 + 0.5 - 0.33)
    empty = dataclasses.replace(cool, kind="landscape", num_objects=0)  # no subject: no 3D term
    assert scenes.appeal(empty) == pytest.approx(-0.375 - 0.54 - 0.2 - 0.25 - 0.33)
    a, b = scenes.render(cool, 40), scenes.render(cool, 40)
    assert a.rgb.shape == (40, 40, 3) and a.rgb.dtype == np.uint8 and a.keypoints == []
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth)
    with pytest.raises(ValueError, match="unknown scene kind"):
        scenes.sample_scene(np.random.default_rng(0), "cars")


@pytest.mark.parametrize("size", [48, 80])
def test_near_subjects_stand_in_the_near_third_of_the_depth_range(size):
    rng = np.random.default_rng(size)
    near, behind = [], []
    for i in range(240):
        scene = scenes.sample_scene(rng, scenes.KINDS[i % len(scenes.KINDS)])
        drawn = scenes.render(scene, size)
        if not scene.has_subject:
            assert drawn.subject_depth is None
            continue
        # The subject's depth is a value the map really holds, normalised as data_prep does.
        raw = drawn.depth.min() + drawn.subject_depth * (drawn.depth.max() - drawn.depth.min())
        assert np.isclose(drawn.depth, raw, atol=1e-5).any()
        (near if scene.subject_is_near else behind).append(drawn.subject_depth)
    assert 0.25 < len(near) / (len(near) + len(behind)) < 0.55
    assert max(near) < 1 / 3 <= min(behind)


def test_bad_size_and_foreign_directories_are_refused(tmp_path):
    with pytest.raises(ValueError, match="valid sizes.*demo.*medium.*small.*tiny"):
        embedded.generate(str(tmp_path / "x"), size="huge", progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="non-empty"):
        embedded.generate(str(foreign), size="tiny", progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
    other = tmp_path / "other_json"
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({"generator": "someone else"}))
    with pytest.raises(ValueError, match="non-empty"):
        embedded.generate(str(other), size="tiny", progress=False)


def test_regenerates_over_own_output_and_cli_overrides(tmp_path):
    out = tmp_path / "raw"
    embedded_cli.main(["--out_dir", str(out), "--size", "tiny", "--seed", "3", "--quiet",
                   "--num_users", "2", "--posts_per_user", "60", "--image_size", "32"])
    meta = json.loads((out / "dataset.json").read_text())
    assert (meta["num_users"], meta["posts_per_user"], meta["image_size"]) == (2, 60, 32)
    assert meta["counts"]["posts"] == 120 and meta["counts"]["users"] == 2
    with Image.open(next((out / "image").iterdir())) as im:
        assert im.size == (32, 32)
    # A crash leaves no dataset.json behind (only the in-progress marker); rerunning cleans up.
    (out / "dataset.json").unlink()
    (out / ".incomplete").write_text("")
    (out / "info" / "stale.info").write_text("{}")
    meta2 = embedded.generate(str(out), size="tiny", seed=3, num_users=2, posts_per_user=60,
                              image_size=32, progress=False)
    assert meta2 == meta
    assert not (out / "info" / "stale.info").exists() and not (out / ".incomplete").exists()
