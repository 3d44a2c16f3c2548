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
               when counts fell back to fractions (data_prep.pdips.split_sizes); with
               config.prep.depth.enabled, `depth`: each depth-map outcome's count
               (data_prep.depth), posts kept (resized or constant maps among them) and dropped
  ipa_posts/{groups,pdips,images}/1.0.0/  TFDS datasets (see data_prep.tfds_builder); each
               image's `f_ret` [K, 5] and `depth` [M, F] features ride beside it ([0, 5] and
               [5, 0] when the branch is off); with config.prep.depth.mode="on_the_fly",
               `depth` is [5, 0] and `depth_map` holds each image's normalised depth map at
               the stored image's size (a 16-bit PNG, data_prep.depth.encode_map)
  .ipa_jax_prepared  written first: marks the folder as data_prep's own
`summary.json` is written last; a directory with it is complete and is reused when the
settings match.

Only ever deletes what it wrote: `out_dir` must be new, empty, or marked as its own by
`.ipa_jax_prepared` and hold nothing else (an interrupted preparation then starts over, keeping
`cache/`). Any other folder, one inside the raw dataset or one holding it is
refused with `config_lib.DataError`, as are a missing raw dataset or mapping file, a dataset
without a single usable post and one that leaves a split empty; `python -m data_prep.prepare`
prints those as one line.
"""

from __future__ import annotations

import concurrent.futures
import csv
import datetime
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
from ipa_jax import config_lib, config_validation, images

SPLITS = ("train", "validation", "test")
SUMMARY = "summary.json"
CACHE = "cache"  # embeddings; kept when an interrupted preparation starts over
FORMAT_VERSION = 5  # bumped whenever the files written here change; old preparations are redone
MARKER = ".ipa_jax_prepared"  # written first into a new or empty out_dir: the folder is ours
GENERATOR = "ipa_jax.data_prep.prepare"
# Everything written into out_dir (by prepare, and the features ipa_jax.features derives from
# its images); only these are removed when a preparation starts over.
_OUTPUTS = frozenset({"posts.csv", "groups.csv", "pdips.csv", "images.csv", "retrieval.csv",
                      "retrieval.npz", "drops.json", SUMMARY, SUMMARY + ".tmp", tfds_builder.NAME,
                      ".tfds_downloads", "features"})
_KEPT = frozenset({MARKER, CACHE})  # the marker and the embeddings survive a restart


def _settings(raw_dir: str, prep: ml_collections.ConfigDict) -> dict:
    return {"raw_dir": os.path.abspath(raw_dir), "prep": json.loads(prep.to_json()),
            "format": FORMAT_VERSION}


def _read_summary(out_dir: str) -> dict | None:
    """The summary of a complete preparation in `out_dir`; None if absent or unreadable."""
    try:
        with open(os.path.join(out_dir, SUMMARY)) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and "settings" in summary else None


def is_prepared(out_dir: str, raw_dir: str, prep: ml_collections.ConfigDict) -> bool:
    """True when `out_dir` holds a complete preparation of `raw_dir` with these settings."""
    summary = _read_summary(out_dir)
    return summary is not None and summary["settings"] == _settings(raw_dir, prep)


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it (both already real paths)."""
    return os.path.commonpath([path, folder]) == folder


def _check_folders(raw_dir: str, out_dir: str) -> None:
    """Refuses an out_dir that is, lies in or holds the raw dataset (symlinks resolved)."""
    if not out_dir:
        raise config_lib.DataError("The output folder is empty; give --out_dir / "
                                   "config.data.prepared_dir a folder of its own.")
    raw_real, out_real = os.path.realpath(raw_dir), os.path.realpath(out_dir)
    if _inside(out_real, raw_real):
        raise config_lib.DataError(
            f"Refusing to prepare into {out_dir}: it is or lies inside the raw dataset {raw_dir}, "
            "which preparation never writes into; choose an --out_dir / "
            "config.data.prepared_dir outside it.")
    if _inside(raw_real, out_real):
        raise config_lib.DataError(
            f"Refusing to prepare into {out_dir}: the raw dataset {raw_dir} lies inside it; "
            "choose an --out_dir / config.data.prepared_dir of its own, outside the raw dataset.")


def _check_raw(raw_dir: str) -> str:
    """The mapping file's path; DataError naming the fix when the raw dataset is not there."""
    if not os.path.isdir(raw_dir):
        raise config_lib.DataError(
            f"The raw dataset folder {raw_dir} does not exist; set --config.data.raw_dir to an "
            "Instagram-Influencer-format folder (JSON-Image_files_mapping.txt, info/, image/).")
    mapping = os.path.join(raw_dir, instagram.MAPPING_FILE)
    if not os.path.isfile(mapping):
        raise config_lib.DataError(
            f"{mapping} is missing: the raw dataset lists its posts in {instagram.MAPPING_FILE} "
            "(tab-separated Influencer_name, JSON_PostMetadata_file_name, Image_file_name); set "
            "--config.data.raw_dir to the dataset's root folder, the one holding that file, "
            "info/ and image/.")
    return mapping


def _top_users(raw_dir: str, n: int) -> frozenset[str] | None:
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


def _is_ours(out_dir: str) -> bool:
    try:
        with open(os.path.join(out_dir, MARKER)) as f:
            return json.load(f).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _claim_out_dir(out_dir: str, raw_dir: str) -> None:
    """Makes `out_dir` ready to write: a new or empty folder is marked as ours; in a marked one,
    an interrupted preparation's files are removed (cache/ kept); any other
    folder is refused and left as it is."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise config_lib.DataError(f"{out_dir} is a file, not a folder; choose another "
                                   "--out_dir / config.data.prepared_dir.")
    os.makedirs(out_dir, exist_ok=True)
    entries = set(os.listdir(out_dir))
    if entries and not _is_ours(out_dir):
        raise config_lib.DataError(
            f"Refusing to prepare into {out_dir}: it is not empty ({_names(entries)}) and holds no "
            f"{MARKER} marker, so data_prep did not create it and will not delete its files; "
            "choose a new or empty --out_dir / config.data.prepared_dir.")
    if foreign := entries - _OUTPUTS - _KEPT:
        raise config_lib.DataError(
            f"Refusing to prepare into {out_dir}: besides an unfinished preparation it holds "
            f"files data_prep did not write ({_names(foreign)}); move them away or choose "
            "another --out_dir / config.data.prepared_dir.")
    for name in entries & _OUTPUTS:  # an interrupted earlier run: start over, keeping the cache
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    if MARKER not in entries:
        with open(os.path.join(out_dir, MARKER), "w") as f:
            json.dump({"generator": GENERATOR, "format": FORMAT_VERSION,
                       "raw_dir": os.path.abspath(raw_dir),
                       "note": "written by python -m data_prep.prepare; this folder is its own "
                               "and is emptied when a preparation starts over"}, f, indent=2)


def _names(entries) -> str:
    names = sorted(entries)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _utc(timestamp: int) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def _crawl_time(posts, prep: ml_collections.ConfigDict) -> dict:
    """The crawl time used for the 30-day rule: explicit, or a robust estimate."""
    if prep.crawl_time:
        timestamp, source = int(prep.crawl_time), "config.prep.crawl_time"
    else:
        timestamp = instagram.estimate_crawl_time(
            [p.timestamp for p in posts], slack_days=prep.crawl_slack_days)
        source = (f"estimated: the newest post at most {prep.crawl_slack_days:g} days after the "
                  "99th percentile of post times")
    return {"timestamp": timestamp, "utc": _utc(timestamp), "source": source}


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


def _examples(groups, post_index, raw_dir, short_side, pairs_fn, num_threads, f_ret, depth,
              depth_map=None):
    """Yields TFDS examples; images are encoded by a thread pool, in order.

    `depth_map`: None, or (post, encoded image) -> the post's encoded `depth_map` (on the fly).
    """

    def build(group):
        group_id, user, posts = group
        encoded = [encode_image(os.path.join(raw_dir, p.image_path), short_side) for p in posts]
        example = {
            "group_id": group_id,
            "user": user,
            "post_index": np.array([post_index[p.post_id] for p in posts], np.int64),
            "likes": np.array([p.likes for p in posts], np.float32),
            "timestamp": np.array([p.timestamp for p in posts], np.int64),
            "image": np.array(encoded, dtype=object),
            "pairs": np.array(pairs_fn(posts), np.int32).reshape(-1, 2),
            "f_ret": f_ret[[post_index[p.post_id] for p in posts]],
            "depth": depth[[post_index[p.post_id] for p in posts]],
        }
        if depth_map is not None:
            example["depth_map"] = np.array(
                [depth_map(p, data) for p, data in zip(posts, encoded, strict=True)], dtype=object)
        return example

    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        yield from pool.map(build, groups)


def _depth_features(raw_dir, out_dir, posts, prep, progress):
    """(features float32 [kept posts, M, F], drops by reason, stats) of the 3D-aware branch.

    Disabled: zeros [posts, 5, 0], no drops, no stats. Enabled: `data_prep.depth.compute_features`
    (cached under out_dir/cache); posts without a usable map are dropped and counted under their
    outcome with missing="drop" (stats["_kept"]: the indices of the posts kept, for the caller).
    On the fly the features are [kept, 5, 0]; the outcomes, drops and stats are the same.
    """
    cfg = prep.depth
    if not cfg.enabled:
        return np.zeros((len(posts), 5, 0), np.float32), {}, {}
    from data_prep import depth as depth_data  # noqa: PLC0415 - pulls in JAX and the backbones

    result = depth_data.compute_features(raw_dir, cfg.depth_dir, posts, cfg,
                                         os.path.join(out_dir, CACHE), progress=progress)
    outcomes = {o: int(result.outcomes[o]) for o in depth_data.OUTCOMES if result.outcomes[o]}
    no_map = sum(result.outcomes[o] for o in depth_data.OUTCOMES
                 if o not in (depth_data.OK, depth_data.RESIZED))
    drops = ({o: n for o, n in outcomes.items()
              if o not in (depth_data.OK, depth_data.RESIZED)} if cfg.missing == "drop" else {})
    features = result.features[result.kept]
    stats = {"_kept": [int(i) for i in result.kept], "outcomes": outcomes,
             "missing": cfg.missing, "kept": len(result.kept), "dropped": len(result.dropped),
             "kept_resized": outcomes.get(depth_data.RESIZED, 0),
             "kept_constant": 0 if cfg.missing == "drop" else int(no_map),
             "shape": list(features.shape[1:]),
             "depth_dir": cfg.depth_dir or os.path.join(os.path.abspath(raw_dir), "depth")}
    return features, drops, stats


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def prepare(raw_dir: str, out_dir: str, prep: ml_collections.ConfigDict, *,
            progress: bool = True, num_threads: int = 8) -> dict:
    """Runs the whole preparation; returns the summary (also saved as summary.json).

    Raises:
      config_lib.ConfigError: prep settings that cannot be used (`config_validation.validate_prep`).
      config_lib.DataError: an unusable out_dir or raw dataset (module docstring), or no post
        left to prepare; the message names the folder or file and the fix.
    """
    config_validation.validate_prep(prep)
    _check_folders(raw_dir, out_dir)
    summary = _read_summary(out_dir)
    if summary is not None:
        if summary["settings"] == _settings(raw_dir, prep):
            return summary
        raise config_lib.DataError(
            f"{out_dir} holds data prepared from another raw_dir, with other prep settings or "
            "by an older ipa_jax; delete it or choose another --out_dir / "
            "config.data.prepared_dir.")
    mapping = _check_raw(raw_dir)
    _claim_out_dir(out_dir, raw_dir)

    users = _top_users(raw_dir, prep.top_users)
    posts, read_drops = instagram.read_posts(
        raw_dir, check_images=prep.check_images, progress=progress,
        min_timestamp=prep.min_timestamp, users=users)
    if not posts:
        if not read_drops:
            raise config_lib.DataError(
                f"{mapping} lists no post (nothing but a header or blank lines); point "
                "--config.data.raw_dir at a dataset with posts.")
        raise config_lib.DataError(
            f"None of the {sum(read_drops.values())} rows of {mapping} is a usable post; "
            f"dropped by reason: {dict(sorted(read_drops.items()))}. Check that info/ and "
            "image/ sit beside it and hold the files it names.")
    crawl = _crawl_time(posts, prep)
    posts = instagram.drop_after_crawl(posts, crawl["timestamp"], read_drops)
    if not posts:
        raise config_lib.DataError(
            f"Every post of {raw_dir} was taken after the crawl time {crawl['utc']} "
            f"(config.prep.crawl_time={prep.crawl_time}); set config.prep.crawl_time to the "
            "time the dataset was crawled, or 0 to estimate it.")
    depth, depth_drops, depth_stats = _depth_features(raw_dir, out_dir, posts, prep, progress)
    if prep.depth.enabled:
        posts = [posts[i] for i in depth_stats.pop("_kept")]
    if not posts:  # only the depth stage can have dropped them all
        raise config_lib.DataError(
            f"Every post of {raw_dir} was dropped for want of a usable depth map "
            f"({depth_drops}); put <post_id>.png maps into config.prep.depth.depth_dir "
            "(default <raw_dir>/depth), or keep such posts with "
            "--config.prep.depth.missing=constant.")
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
        min_likes=p.min_likes, crawl_time=crawl["timestamp"])
    pairs, pdip_drops = pdips_lib.make_pdips(posts, pdip_config)
    pdip_splits, pdip_sizes = pdips_lib.split_pdips(
        pairs, validation=p.validation, test=p.test, seed=prep.split_seed,
        fallback=tuple(p.fallback))
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

    drops = {"read": dict(read_drops), "groups": dict(group_drops), "pdips": dict(pdip_drops)}
    if prep.depth.enabled:
        drops["depth"] = depth_drops
    with open(os.path.join(out_dir, "drops.json"), "w") as f:
        json.dump(drops, f, indent=2, sort_keys=True)
    sizes = {"groups": group_splits, "pdips": pdip_groups, "images": image_splits}
    if empty := [f"{name}/{s}" for name, splits in sizes.items() for s in SPLITS
                 if not splits[s]]:  # TFDS cannot write an empty split
        raise config_lib.DataError(
            f"No example is left for {', '.join(empty)}: of {len(posts)} posts kept after reading, "
            f"too few survive the rules (drops by stage and reason in "
            f"{os.path.join(out_dir, 'drops.json')}: {drops}); prepare a larger dataset or "
            "loosen config.prep (e.g. pdips.min_likes, groups.min_size, the split sizes).")

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

    short = prep.store_short_side
    depth_map = None
    if prep.depth.enabled and prep.depth.mode == "on_the_fly":
        from data_prep import depth as depth_data  # noqa: PLC0415 - pulls in JAX

        depth_map = lambda p, data: depth_data.stored_map(  # noqa: E731
            raw_dir, prep.depth.depth_dir, p.post_id, p.image_path, data, prep.depth)
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
                         f_ret, depth, depth_map)
            for s in SPLITS}, depth_maps=depth_map is not None)
        counts[name] = {s: {"groups": len(split_groups[s]),
                            "images": sum(len(x[2]) for x in split_groups[s]),
                            "pairs": sum(len(pairs_fn(x[2])) for x in split_groups[s])}
                        for s in SPLITS}

    summary = {"settings": _settings(raw_dir, prep), "num_posts_read": len(posts),
               "crawl_time": crawl, "drops": drops, "counts": counts,
               "pdip_split": pdip_sizes.as_dict(), "retrieval": retrieval_stats}
    if users is not None:
        summary["top_users"] = {"asked": prep.top_users, "selected": len(users)}
    if prep.depth.enabled:
        summary["depth"] = depth_stats
    tmp = os.path.join(out_dir, SUMMARY + ".tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(out_dir, SUMMARY))  # last, and whole: the folder is complete
    return summary


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


def main(argv):
    if len(argv) > 1:
        raise config_lib.ConfigError(f"Unexpected arguments: {argv[1:]}")
    from absl import flags  # noqa: PLC0415 - CLI only
    raw_dir = flags.FLAGS.config.data.raw_dir
    if raw_dir in ("", config_lib.EMBEDDED):
        raise config_lib.ConfigError(
            f"config.data.raw_dir={raw_dir!r}: data_prep.prepare reads an Instagram-Influencer-"
            "format directory; pass --config.data.raw_dir=DIR (write the embedded dataset first "
            "with python -m data_prep.embedded --out_dir=DIR).")
    summary = prepare(raw_dir, flags.FLAGS.out_dir, flags.FLAGS.config.prep)
    print(format_report(summary))


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from ipa_jax import cli

    config_flags.DEFINE_config_file("config", None, "Config file (its data and prep fields).")
    flags.DEFINE_string("out_dir", None, "Where to write TFRecords and manifests.")
    flags.mark_flags_as_required(["config", "out_dir"])
    cli.require_nonempty("out_dir", "the folder for TFRecords and manifests")
    cli.run(main)
