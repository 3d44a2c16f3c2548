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
  drops.json   every dropped post counted by stage and reason (stage `depth`: posts without a
               usable depth map under config.prep.depth.missing="drop")
  summary.json the settings used, the crawl time (explicit or estimated, see
               config.prep.crawl_time), per-split counts of groups, images and pairs, and
               `pdip_split`: the PDIP validation/test sizes asked for and used, with a notice
               when counts fell back to fractions (ipa_jax.data.pdips.split_sizes); with
               config.prep.depth.enabled, `depth`: each depth-map outcome's count
               (ipa_jax.data.depth), posts kept (resized or constant maps among them) and dropped
  ipa_posts/{groups,pdips,images}/1.0.0/  TFDS datasets (see ipa_jax.data.tfds_builder); each
               image's `f_ret` [K, 5] and `depth` [M, F] features ride beside it ([0, 5] and
               [5, 0] when the branch is off); with config.prep.depth.mode="on_the_fly",
               `depth` is [5, 0] and `depth_map` holds each image's normalised depth map at
               the stored image's size (a 16-bit PNG, ipa_jax.data.depth.encode_map)
  .ipa_jax_prepared  written first: marks the folder as data_prep's own
`summary.json` is written last; a directory with it is complete and is reused when the
settings match.

Every TFDS split holds its examples in one canonical order (groups and images in split order,
PDIPs by pair_id; `disable_shuffling`), so the local path here and the Beam pipeline
(`data_prep/beam_pipeline.py`, which shares the rules and rows below) write the same examples
in the same order, whatever their shard files.

Folder safety (`ipa_jax.data.out_dir`): only ever deletes what it wrote. Refused with
`config_lib.DataError`: an out_dir that is not ours, a missing raw dataset or mapping file, a
dataset without a single usable post and one that leaves a split empty; `python -m
data_prep.prepare` prints those as one line.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import io
import json
import os

import ml_collections
import numpy as np
from PIL import Image

from ipa_jax import config_lib, config_validation, images
from ipa_jax.data import groups as groups_lib
from ipa_jax.data import instagram, manifests, tfds_builder
from ipa_jax.data import out_dir as out_dir_lib
from ipa_jax.data import pdips as pdips_lib
from ipa_jax.data.out_dir import CACHE, MARKER, SUMMARY  # noqa: F401 - the folder's names

SPLITS = ("train", "validation", "test")
# Bumped whenever the files written here change; old preparations are redone. 6: examples in
# canonical order (disable_shuffling), not TFDS's key-hash order; retrieval without keypoints
# drops the pose weight (ipa_jax.data.retrieval.available_aspects).
FORMAT_VERSION = 6
def settings(raw_dir: str, prep: ml_collections.ConfigDict) -> dict:
    return {"raw_dir": os.path.abspath(raw_dir), "prep": json.loads(prep.to_json()),
            "format": FORMAT_VERSION}


def is_prepared(out_dir: str, raw_dir: str, prep: ml_collections.ConfigDict) -> bool:
    """True when `out_dir` holds a complete preparation of `raw_dir` with these settings."""
    summary = out_dir_lib.read_summary(out_dir)
    return summary is not None and summary["settings"] == settings(raw_dir, prep)


def begin(raw_dir: str, out_dir: str, prep: ml_collections.ConfigDict) -> dict | None:
    """Checks the settings and folders and claims `out_dir`; returns the summary of a complete
    preparation with these settings already there (nothing to do), else None.

    Raises:
      config_lib.ConfigError: prep settings that cannot be used (`config_validation.validate_prep`).
      config_lib.DataError: an unusable out_dir or raw dataset (`ipa_jax.data.out_dir`).
    """
    config_validation.validate_prep(prep)
    out_dir_lib.check_folders(raw_dir, out_dir)
    summary = out_dir_lib.read_summary(out_dir)
    if summary is not None:
        if summary["settings"] == settings(raw_dir, prep):
            return summary
        raise config_lib.DataError(
            f"{out_dir} holds data prepared from another raw_dir, with other prep settings or "
            "by an older ipa_jax; delete it or choose another --out_dir / "
            "config.data.prepared_dir.")
    out_dir_lib.check_raw(raw_dir)
    out_dir_lib.claim(out_dir, raw_dir, FORMAT_VERSION)
    return None


def top_users(raw_dir: str, n: int) -> frozenset[str] | None:
    """`config.prep.top_users` > 0: the n influencers of influencers.txt with the most followers
    (the paper's Top3000: n = 3000); 0: None, every influencer."""
    if n <= 0:
        return None
    path = os.path.join(raw_dir, instagram.INFLUENCERS_FILE)
    if not os.path.isfile(path):
        raise config_lib.DataError(
            f"config.prep.top_users={n} ranks influencers by followers, but {path} is missing; "
            "put the dataset's influencers.txt there, or set --config.prep.top_users=0.")
    influencers, _ = instagram.read_influencers(raw_dir)
    if not influencers:
        raise config_lib.DataError(f"{path} lists no readable influencer; config.prep.top_users="
                                   f"{n} needs their follower counts (or use 0: everyone).")
    return instagram.top_users(influencers, n)


def check_read(num_posts: int, read_drops, raw_dir: str) -> None:
    """DataError when reading kept no post: an empty mapping file, or every row dropped."""
    if num_posts:
        return
    mapping = os.path.join(raw_dir, instagram.MAPPING_FILE)
    if not sum(read_drops.values()):
        raise config_lib.DataError(
            f"{mapping} lists no post (nothing but a header or blank lines); point "
            "--config.data.raw_dir at a dataset with posts.")
    raise config_lib.DataError(
        f"None of the {sum(read_drops.values())} rows of {mapping} is a usable post; "
        f"dropped by reason: {dict(sorted(read_drops.items()))}. Check that info/ and "
        "image/ sit beside it and hold the files it names.")


def _utc(timestamp: int) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def crawl_time(timestamps, prep: ml_collections.ConfigDict) -> dict:
    """The crawl time used for the 30-day rule: explicit, or a robust estimate from the
    timestamps of the posts read."""
    if prep.crawl_time:
        timestamp, source = int(prep.crawl_time), "config.prep.crawl_time"
    else:
        timestamp = instagram.estimate_crawl_time(timestamps, slack_days=prep.crawl_slack_days)
        source = (f"estimated: the newest post at most {prep.crawl_slack_days:g} days after the "
                  "99th percentile of post times")
    return {"timestamp": timestamp, "utc": _utc(timestamp), "source": source}


def check_after_crawl(num_posts: int, raw_dir: str, crawl: dict,
                      prep: ml_collections.ConfigDict) -> None:
    if not num_posts:
        raise config_lib.DataError(
            f"Every post of {raw_dir} was taken after the crawl time {crawl['utc']} "
            f"(config.prep.crawl_time={prep.crawl_time}); set config.prep.crawl_time to the "
            "time the dataset was crawled, or 0 to estimate it.")


def pdip_config(prep: ml_collections.ConfigDict, crawl_timestamp: int) -> pdips_lib.PdipConfig:
    p = prep.pdips
    return pdips_lib.PdipConfig(
        threshold=p.threshold, sigma=p.sigma, max_days=p.max_days, min_age_days=p.min_age_days,
        max_caption_words=p.max_caption_words, min_likes=p.min_likes, crawl_time=crawl_timestamp)


def winner_first(num_pairs: int, seed: int) -> np.ndarray:
    """bool [num_pairs]: whether pdips.csv lists the k-th PDIP's winner as post_a (a fair coin
    per pair, seeded, so post_a is not always the winner)."""
    return np.random.default_rng(seed).random(num_pairs) < 0.5


def check_nonempty(sizes: dict, num_posts: int, out_dir: str, drops: dict) -> None:
    """DataError naming every empty split ({dataset: {split: size}}): TFDS cannot write one."""
    if empty := [f"{name}/{s}" for name, splits in sizes.items() for s in SPLITS
                 if not splits[s]]:
        raise config_lib.DataError(
            f"No example is left for {', '.join(empty)}: of {num_posts} posts kept after reading, "
            f"too few survive the rules (drops by stage and reason in "
            f"{os.path.join(out_dir, 'drops.json')}: {drops}); prepare a larger dataset or "
            "loosen config.prep (e.g. pdips.min_likes, groups.min_size, the split sizes).")


def write_drops(out_dir: str, drops: dict) -> None:
    with open(os.path.join(out_dir, "drops.json"), "w") as f:
        json.dump(drops, f, indent=2, sort_keys=True)


def encode_image(path: str, short_side: int) -> bytes:
    """JPEG bytes of `path`, resized so its short side is at most `short_side` (0: as is).

    An RGB JPEG that needs no resizing is kept byte for byte (its pixels unchanged) once
    TensorFlow, the training pipeline's decoder, has decoded it; any other file is read by
    `images.load_rgb` (every PIL mode, the pixel limit) and re-encoded at quality 95. Raises
    `images.ImageTooLarge`, `images.UnreadableImage` or PIL's errors for a file that cannot be
    kept: `instagram.read_posts(check_images=True)` has dropped those already, counted.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        with images.open_image(data) as source:
            if images.stored_as_is(source) and (not short_side or min(source.size) <= short_side):
                images.decode_tf(data)  # raises if the training pipeline cannot read them
                return data
            im = Image.fromarray(images.to_rgb(source))
    except (images.ImageTooLarge, images.UnreadableImage) as e:
        raise type(e)(f"{path}: {e}; prepare with prep.check_images=True to drop such files "
                      "(counted as 'unreadable image')") from None
    if short_side and min(im.size) > short_side:
        scale = short_side / min(im.size)
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im = im.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def example(group_id: str, user: str, posts, post_indices, pairs, f_ret, depth, *, raw_dir: str,
            short_side: int, depth_map=None) -> dict:
    """One TFDS example: a group of posts with their encoded images (`encode_image`).

    post_indices: each post's row of posts.csv; pairs: (winner, loser) positions in the group;
    f_ret, depth: the posts' feature rows; depth_map: None, or (post, encoded image) -> the
    post's encoded `depth_map` (on the fly).
    """
    encoded = [encode_image(os.path.join(raw_dir, p.image_path), short_side) for p in posts]
    out = {
        "group_id": group_id,
        "user": user,
        "post_index": np.asarray(post_indices, np.int64),
        "likes": np.array([p.likes for p in posts], np.float32),
        "timestamp": np.array([p.timestamp for p in posts], np.int64),
        "image": np.array(encoded, dtype=object),
        "pairs": np.array(pairs, np.int32).reshape(-1, 2),
        "f_ret": f_ret,
        "depth": depth,
    }
    if depth_map is not None:
        out["depth_map"] = np.array(
            [depth_map(p, data) for p, data in zip(posts, encoded, strict=True)], dtype=object)
    return out


def _examples(groups, post_index, pairs_fn, num_threads, f_ret, depth, **kwargs):
    """Yields the examples of `groups` ((group_id, user, posts) each), in order; images are
    encoded by a thread pool."""

    def build(group):
        group_id, user, posts = group
        rows = [post_index[p.post_id] for p in posts]
        return example(group_id, user, posts, rows, pairs_fn(posts), f_ret[rows], depth[rows],
                       **kwargs)

    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        yield from pool.map(build, groups)


def check_after_depth(num_posts: int, raw_dir: str, depth_drops: dict) -> None:
    if not num_posts:  # only the depth stage can have dropped them all
        raise config_lib.DataError(
            f"Every post of {raw_dir} was dropped for want of a usable depth map "
            f"({depth_drops}); put <post_id>.png maps into config.prep.depth.depth_dir "
            "(default <raw_dir>/depth), or keep such posts with "
            "--config.prep.depth.missing=constant.")


def _depth_features(raw_dir, out_dir, posts, prep, progress):
    """(features float32 [kept posts, M, F], drops by reason, stats) of the 3D-aware branch.

    Disabled: zeros [posts, 5, 0], no drops, no stats. Enabled:
    `ipa_jax.data.depth.compute_features` (cached under out_dir/cache); posts without a usable
    map are dropped and counted under their outcome with missing="drop" (stats["_kept"]: the
    indices of the posts kept, for the caller).
    On the fly the features are [kept, 5, 0]; the outcomes, drops and stats are the same.
    """
    cfg = prep.depth
    if not cfg.enabled:
        return np.zeros((len(posts), 5, 0), np.float32), {}, {}
    from ipa_jax.data import depth as depth_data  # noqa: PLC0415 - pulls in JAX and the backbones

    result = depth_data.compute_features(raw_dir, cfg.depth_dir, posts, cfg,
                                         os.path.join(out_dir, CACHE), progress=progress)
    features = result.features[result.kept]
    drops, stats = depth_data.summary(result.outcomes, cfg, raw_dir, features.shape[1:])
    return features, drops, {"_kept": [int(i) for i in result.kept], **stats}


def group_pairs_fn(prep: ml_collections.ConfigDict):
    """A group's training pairs: (winner, loser) positions whose likes differ enough."""
    min_rel_diff = prep.groups.min_rel_diff
    return lambda posts: groups_lib.valid_pairs([x.likes for x in posts], min_rel_diff)


def pdip_pairs(posts):
    del posts
    return [(0, 1)]  # a PDIP example holds its winner first


def no_pairs(posts):
    del posts
    return []


def split_counts(split_groups: dict, pairs_fn) -> dict:
    """summary.json's counts of one dataset: groups, images and pairs per split."""
    return {s: {"groups": len(split_groups[s]),
                "images": sum(len(x[2]) for x in split_groups[s]),
                "pairs": sum(len(pairs_fn(x[2])) for x in split_groups[s])} for s in SPLITS}


def finish(out_dir: str, raw_dir: str, prep: ml_collections.ConfigDict, **summary) -> dict:
    """Writes summary.json last (the folder is then complete) and returns it: the settings and
    `summary`'s fields (num_posts_read, crawl_time, drops, counts, pdip_split, retrieval and,
    when used, top_users and depth)."""
    summary = {"settings": settings(raw_dir, prep), **summary}
    out_dir_lib.write_summary(out_dir, summary)
    return summary


def prepare(raw_dir: str, out_dir: str, prep: ml_collections.ConfigDict, *,
            progress: bool = True, num_threads: int = 8) -> dict:
    """Runs the whole preparation here, in one process; returns the summary (also saved as
    summary.json).

    Raises:
      config_lib.ConfigError: prep settings that cannot be used (`config_validation.validate_prep`).
      config_lib.DataError: an unusable out_dir or raw dataset (`begin`), or no post
        left to prepare; the message names the folder or file and the fix.
    """
    if (done := begin(raw_dir, out_dir, prep)) is not None:
        return done
    users = top_users(raw_dir, prep.top_users)
    posts, read_drops = instagram.read_posts(
        raw_dir, check_images=prep.check_images, progress=progress,
        min_timestamp=prep.min_timestamp, users=users)
    check_read(len(posts), read_drops, raw_dir)
    crawl = crawl_time([p.timestamp for p in posts], prep)
    posts = instagram.drop_after_crawl(posts, crawl["timestamp"], read_drops)
    check_after_crawl(len(posts), raw_dir, crawl, prep)
    depth, depth_drops, depth_stats = _depth_features(raw_dir, out_dir, posts, prep, progress)
    if prep.depth.enabled:
        posts = [posts[i] for i in depth_stats.pop("_kept")]
    check_after_depth(len(posts), raw_dir, depth_drops)
    post_index = {p.post_id: i for i, p in enumerate(posts)}
    manifests.write_csv(os.path.join(out_dir, "posts.csv"), manifests.POSTS_HEADER,
                        [manifests.post_row(i, p) for i, p in enumerate(posts)])

    g = prep.groups
    groups, group_drops = groups_lib.make_groups(
        posts, window_days=g.window_days, min_size=g.min_size, max_size=g.max_size,
        min_likes=g.min_likes)
    group_splits = groups_lib.split_groups(groups, fractions=tuple(g.fractions),
                                           seed=prep.split_seed)
    manifests.write_csv(os.path.join(out_dir, "groups.csv"), manifests.GROUPS_HEADER,
                        [row for split in SPLITS for grp in group_splits[split]
                         for row in manifests.group_rows(split, grp)])

    pairs, pdip_drops = pdips_lib.make_pdips(posts, pdip_config(prep, crawl["timestamp"]))
    p = prep.pdips
    pdip_splits, pdip_sizes = pdips_lib.split_pdips(
        pairs, validation=p.validation, test=p.test, seed=prep.split_seed,
        fallback=tuple(p.fallback))
    coins = winner_first(len(pairs), prep.split_seed)
    pdip_rows, pdip_groups = [], {s: [] for s in SPLITS}
    for split in SPLITS:
        for winner, loser in pdip_splits[split]:
            k = len(pdip_rows)
            pdip_rows.append(manifests.pdip_row(split, k, winner, loser, coins[k]))
            pdip_groups[split].append((manifests.pdip_id(k), winner.user, (winner, loser)))
    manifests.write_csv(os.path.join(out_dir, "pdips.csv"), manifests.PDIPS_HEADER, pdip_rows)

    # Cappallo et al. split by image (70/10/20), every kept post on its own.
    image_splits = groups_lib.split_groups(posts, fractions=tuple(prep.images.fractions),
                                           seed=prep.split_seed)
    manifests.write_csv(os.path.join(out_dir, "images.csv"), manifests.IMAGES_HEADER,
                        [manifests.image_row(split, x)
                         for split in SPLITS for x in image_splits[split]])

    drops = {"read": dict(read_drops), "groups": dict(group_drops), "pdips": dict(pdip_drops)}
    if prep.depth.enabled:
        drops["depth"] = depth_drops
    write_drops(out_dir, drops)
    check_nonempty({"groups": group_splits, "pdips": pdip_groups, "images": image_splits},
                   len(posts), out_dir, drops)

    k = prep.retrieval.k if prep.retrieval.enabled else 0
    f_ret = np.zeros((len(posts), k, 5), np.float32)
    retrieval_stats = {}
    if prep.retrieval.enabled:
        from ipa_jax.data import retrieval  # noqa: PLC0415 - pulls in JAX and the backbones

        group_of = {p.post_id: grp.group_id for grp in groups for p in grp.posts}
        train_groups = {grp.group_id for grp in group_splits["train"]}
        f_ret, retrieved, retrieval_stats = retrieval.compute(
            raw_dir, posts, group_of, train_groups, prep.retrieval,
            os.path.join(out_dir, CACHE), progress=progress)
        split_of = {p.post_id: s for s in SPLITS for grp in group_splits[s] for p in grp.posts}
        manifests.write_csv(
            os.path.join(out_dir, "retrieval.csv"), manifests.RETRIEVAL_HEADER,
            [row for i, p in enumerate(posts) for row in manifests.retrieval_rows(
                split_of.get(p.post_id, ""), p, f_ret[i],
                [posts[j] if j >= 0 else None for j in retrieved[i]])])
        np.savez(os.path.join(out_dir, "retrieval.npz"), f_ret=f_ret, retrieved=retrieved)

    depth_map = None
    if prep.depth.enabled and prep.depth.mode == "on_the_fly":
        from ipa_jax.data import depth as depth_data  # noqa: PLC0415 - pulls in JAX

        depth_map = lambda p, data: depth_data.stored_map(  # noqa: E731
            raw_dir, prep.depth.depth_dir, p.post_id, p.image_path, data, prep.depth)
    datasets = {
        "groups": ({s: [(x.group_id, x.user, x.posts) for x in group_splits[s]] for s in SPLITS},
                   group_pairs_fn(prep)),
        "pdips": (pdip_groups, pdip_pairs),
        "images": ({s: [(x.post_id, x.user, (x,)) for x in image_splits[s]] for s in SPLITS},
                   no_pairs),
    }
    counts = {}
    for name, (split_groups, pairs_fn) in datasets.items():
        tfds_builder.write(out_dir, name, {
            s: _examples(split_groups[s], post_index, pairs_fn, num_threads, f_ret, depth,
                         raw_dir=raw_dir, short_side=prep.store_short_side, depth_map=depth_map)
            for s in SPLITS}, depth_maps=depth_map is not None)
        counts[name] = split_counts(split_groups, pairs_fn)

    extra = ({} if users is None else
             {"top_users": {"asked": prep.top_users, "selected": len(users)}})
    if prep.depth.enabled:
        extra["depth"] = depth_stats
    return finish(out_dir, raw_dir, prep, num_posts_read=len(posts), crawl_time=crawl,
                  drops=drops, counts=counts, pdip_split=pdip_sizes.as_dict(),
                  retrieval=retrieval_stats, **extra)


def format_report(summary: dict) -> str:
    """A human-readable table of kept and dropped posts, groups and pairs."""
    lines = [f"posts kept after reading: {summary['num_posts_read']}"]
    if top := summary.get("top_users"):
        lines.append(f"influencers: the {top['selected']} with the most followers "
                     f"(config.prep.top_users={top['asked']})")
    if crawl := summary.get("crawl_time"):
        lines.append(f"crawl time: {crawl['utc']} ({crawl['timestamp']}; {crawl['source']})")
    for stage, reasons in summary["drops"].items():
        for reason, n in sorted(reasons.items()):
            lines.append(f"  dropped at {stage:6s} {reason:24s} {n:8d}")
    if split := summary.get("pdip_split"):
        asked, used = split["asked"], split["used"]
        lines.append(f"pdip split: validation={used['validation']:g} test={used['test']:g}"
                     + ("" if asked == used else f" (asked {asked['validation']:g} / "
                                                 f"{asked['test']:g})"))
        if split["notice"]:
            lines.append(f"  NOTICE: {split['notice']}")
    for key, value in sorted(summary.get("retrieval", {}).items()):
        lines.append(f"  retrieval {key:28s} {value}")
    if depth := summary.get("depth"):
        computed = (f"features {depth['shape']}" if depth["shape"][-1] else
                    "maps stored, features computed on the fly")
        lines.append(f"depth maps: {depth['kept']} posts kept, {depth['dropped']} dropped "
                     f"(missing={depth['missing']!r}), {computed}")
        for outcome, n in sorted(depth["outcomes"].items()):
            lines.append(f"  depth {outcome:32s} {n:8d}")
    for name, splits in summary["counts"].items():
        for split, c in splits.items():
            lines.append(f"{name:6s} {split:10s} groups={c['groups']:7d} "
                         f"images={c['images']:8d} pairs={c['pairs']:8d}")
    return "\n".join(lines)
