# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Raw Instagram-Influencer-format posts -> TFRecords plus auditable manifests.

  python -m data_prep.prepare --config=configs/i2pa.py \
      --config.data.raw_dir=/data/instagram --out_dir=/data/prepared

Writes into `out_dir`:
  posts.csv    every kept post: post_index, post_id, user, likes, comments (-1: unknown),
               timestamp, image_path
  groups.csv   split, group_id, user, post_id, likes, timestamp   (SPEC 2 groups)
  pdips.csv    split, pair_id, post_a, post_b, winner             (SPEC 1 PDIPs)
  images.csv   split, post_id, user, likes, timestamp             (SPEC 3: split by image)
  retrieval.csv / retrieval.npz  with config.prep.retrieval.enabled: each post's retrieved posts
               and its K x 5 `f_ret` rows [p_r, W, S_b, S_p, S_c] (SPEC 2, retrieval branch)
  drops.json   every dropped post counted by stage and reason
  summary.json the settings used and per-split counts of groups, images and pairs
  ipa_posts/{groups,pdips,images}/1.0.0/  TFDS datasets (see data_prep.tfds_builder)
`summary.json` is written last; a directory with it is complete and is reused when the
settings match.
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import os
import shutil

import ml_collections
import numpy as np
from PIL import Image

from data_prep import groups as groups_lib
from data_prep import instagram, tfds_builder
from data_prep import pdips as pdips_lib

SPLITS = ("train", "validation", "test")
SUMMARY = "summary.json"
CACHE = "cache"  # embeddings; kept when an interrupted preparation starts over
FORMAT_VERSION = 3  # bumped whenever the files written here change; old preparations are redone


def _settings(raw_dir: str, prep: ml_collections.ConfigDict) -> dict:
    return {"raw_dir": os.path.abspath(raw_dir), "prep": json.loads(prep.to_json()),
            "format": FORMAT_VERSION}


def is_prepared(out_dir: str, raw_dir: str, prep: ml_collections.ConfigDict) -> bool:
    """True when `out_dir` holds a complete preparation of `raw_dir` with these settings."""
    path = os.path.join(out_dir, SUMMARY)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f)["settings"] == _settings(raw_dir, prep)


def encode_image(path: str, short_side: int) -> bytes:
    """JPEG bytes of `path`, resized so its short side is at most `short_side` (0: as is)."""
    with Image.open(path) as im:
        if im.format == "JPEG" and im.mode == "RGB" and (
                not short_side or min(im.size) <= short_side):
            with open(path, "rb") as f:
                return f.read()
        im = im.convert("RGB")
        if short_side and min(im.size) > short_side:
            scale = short_side / min(im.size)
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=95)
        return buf.getvalue()


def _examples(groups, post_index, raw_dir, short_side, pairs_fn, num_threads, f_ret):
    """Yields TFDS examples; images are encoded by a thread pool, in order."""

    def build(group):
        group_id, user, posts = group
        return {
            "group_id": group_id,
            "user": user,
            "post_index": np.array([post_index[p.post_id] for p in posts], np.int64),
            "likes": np.array([p.likes for p in posts], np.float32),
            "timestamp": np.array([p.timestamp for p in posts], np.int64),
            "image": np.array([encode_image(os.path.join(raw_dir, p.image_path), short_side)
                               for p in posts], dtype=object),
            "pairs": np.array(pairs_fn(posts), np.int32).reshape(-1, 2),
            "f_ret": f_ret[[post_index[p.post_id] for p in posts]],
        }

    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        yield from pool.map(build, groups)


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def prepare(raw_dir: str, out_dir: str, prep: ml_collections.ConfigDict, *,
            progress: bool = True, num_threads: int = 8) -> dict:
    """Runs the whole preparation; returns the summary (also saved as summary.json)."""
    if os.path.exists(os.path.join(out_dir, SUMMARY)):
        if is_prepared(out_dir, raw_dir, prep):
            with open(os.path.join(out_dir, SUMMARY)) as f:
                return json.load(f)
        raise ValueError(
            f"{out_dir} holds data prepared from another raw_dir or with other prep settings; "
            "delete it or choose another --out_dir / config.data.prepared_dir.")
    if os.path.isdir(out_dir):  # an interrupted earlier run: start over, keeping the cache
        for name in os.listdir(out_dir):
            if name != CACHE:
                path = os.path.join(out_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(out_dir, exist_ok=True)

    posts, read_drops = instagram.read_posts(
        raw_dir, check_images=prep.check_images, progress=progress)
    if not posts:
        raise ValueError(f"No usable post in {raw_dir}; drops by reason: {dict(read_drops)}")
    post_index = {p.post_id: i for i, p in enumerate(posts)}
    _write_csv(os.path.join(out_dir, "posts.csv"),
               ("post_index", "post_id", "user", "likes", "comments", "timestamp", "image_path"),
               [(i, p.post_id, p.user, p.likes, p.comments, p.timestamp, p.image_path)
                for i, p in enumerate(posts)])

    g = prep.groups
    groups, group_drops = groups_lib.make_groups(
        posts, window_days=g.window_days, min_size=g.min_size, max_size=g.max_size,
        min_likes=g.min_likes)
    group_splits = groups_lib.split_groups(groups, fractions=tuple(g.fractions),
                                           seed=prep.split_seed)
    _write_csv(os.path.join(out_dir, "groups.csv"),
               ("split", "group_id", "user", "post_id", "likes", "timestamp"),
               [(split, grp.group_id, grp.user, p.post_id, p.likes, p.timestamp)
                for split in SPLITS for grp in group_splits[split] for p in grp.posts])

    p = prep.pdips
    pdip_config = pdips_lib.PdipConfig(
        threshold=p.threshold, sigma=p.sigma, max_days=p.max_days,
        min_age_days=p.min_age_days, max_caption_words=p.max_caption_words,
        min_likes=p.min_likes, crawl_time=prep.crawl_time or None)
    pairs, pdip_drops = pdips_lib.make_pdips(posts, pdip_config)
    pdip_splits = pdips_lib.split_pdips(pairs, validation=p.validation, test=p.test,
                                        seed=prep.split_seed)
    rng = np.random.default_rng(prep.split_seed)
    pdip_rows, pdip_groups = [], {s: [] for s in SPLITS}
    for split in SPLITS:
        for winner, loser in pdip_splits[split]:
            pair_id = f"pdip-{len(pdip_rows):07d}"
            a, b = (winner, loser) if rng.random() < 0.5 else (loser, winner)
            pdip_rows.append((split, pair_id, a.post_id, b.post_id, winner.post_id))
            pdip_groups[split].append((pair_id, winner.user, (winner, loser)))
    _write_csv(os.path.join(out_dir, "pdips.csv"),
               ("split", "pair_id", "post_a", "post_b", "winner"), pdip_rows)

    # Cappallo et al. split by image (70/10/20), every kept post on its own.
    image_splits = groups_lib.split_groups(posts, fractions=tuple(prep.images.fractions),
                                           seed=prep.split_seed)
    _write_csv(os.path.join(out_dir, "images.csv"),
               ("split", "post_id", "user", "likes", "timestamp"),
               [(split, x.post_id, x.user, x.likes, x.timestamp)
                for split in SPLITS for x in image_splits[split]])

    k = prep.retrieval.k if prep.retrieval.enabled else 0
    f_ret = np.zeros((len(posts), k, 5), np.float32)
    retrieval_stats = {}
    if prep.retrieval.enabled:
        from data_prep import retrieval  # noqa: PLC0415 - pulls in JAX and the backbones

        group_of = {p.post_id: grp.group_id for grp in groups for p in grp.posts}
        train_groups = {grp.group_id for grp in group_splits["train"]}
        f_ret, retrieved, retrieval_stats = retrieval.compute(
            raw_dir, posts, group_of, train_groups, prep.retrieval,
            os.path.join(out_dir, CACHE), progress=progress)
        split_of = {p.post_id: s for s in SPLITS for grp in group_splits[s] for p in grp.posts}
        _write_csv(os.path.join(out_dir, "retrieval.csv"),
                   ("split", "post_id", "rank", "retrieved_post_id", "local_popularity",
                    "similarity", "s_background", "s_pose", "s_semantic"),
                   [(split_of.get(p.post_id, ""), p.post_id, rank, posts[j].post_id,
                     *(f"{v:.6f}" for v in f_ret[i, rank]))
                    for i, p in enumerate(posts)
                    for rank, j in enumerate(retrieved[i]) if j >= 0])
        np.savez(os.path.join(out_dir, "retrieval.npz"), f_ret=f_ret, retrieved=retrieved)

    drops = {"read": dict(read_drops), "groups": dict(group_drops), "pdips": dict(pdip_drops)}
    with open(os.path.join(out_dir, "drops.json"), "w") as f:
        json.dump(drops, f, indent=2, sort_keys=True)

    short = prep.store_short_side
    group_pairs = lambda ps: groups_lib.valid_pairs([x.likes for x in ps], g.min_rel_diff)
    datasets = {
        "groups": ({s: [(x.group_id, x.user, x.posts) for x in group_splits[s]] for s in SPLITS},
                   group_pairs),
        "pdips": (pdip_groups, lambda ps: [(0, 1)]),
        "images": ({s: [(x.post_id, x.user, (x,)) for x in image_splits[s]] for s in SPLITS},
                   lambda ps: []),
    }
    counts = {}
    for name, (split_groups, pairs_fn) in datasets.items():
        tfds_builder.write(out_dir, name, {
            s: _examples(split_groups[s], post_index, raw_dir, short, pairs_fn, num_threads,
                         f_ret)
            for s in SPLITS})
        counts[name] = {s: {"groups": len(split_groups[s]),
                            "images": sum(len(x[2]) for x in split_groups[s]),
                            "pairs": sum(len(pairs_fn(x[2])) for x in split_groups[s])}
                        for s in SPLITS}

    summary = {"settings": _settings(raw_dir, prep), "num_posts_read": len(posts),
               "drops": drops, "counts": counts, "retrieval": retrieval_stats}
    with open(os.path.join(out_dir, SUMMARY), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    return summary


def format_report(summary: dict) -> str:
    """A human-readable table of kept and dropped posts, groups and pairs."""
    lines = [f"posts kept after reading: {summary['num_posts_read']}"]
    for stage, reasons in summary["drops"].items():
        for reason, n in sorted(reasons.items()):
            lines.append(f"  dropped at {stage:6s} {reason:24s} {n:8d}")
    for key, value in sorted(summary.get("retrieval", {}).items()):
        lines.append(f"  retrieval {key:28s} {value}")
    for name, splits in summary["counts"].items():
        for split, c in splits.items():
            lines.append(f"{name:6s} {split:10s} groups={c['groups']:7d} "
                         f"images={c['images']:8d} pairs={c['pairs']:8d}")
    return "\n".join(lines)


def main(argv):
    del argv
    from absl import flags  # noqa: PLC0415 - CLI only
    out = flags.FLAGS.out_dir
    summary = prepare(flags.FLAGS.config.data.raw_dir, out, flags.FLAGS.config.prep)
    print(format_report(summary))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file (its data and prep fields).")
    flags.DEFINE_string("out_dir", None, "Where to write TFRecords and manifests.")
    flags.mark_flags_as_required(["config", "out_dir"])
    app.run(main)
