# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The Beam pipeline's steps (`data_prep.beam_pipeline` wires them): per element or per user
functions and DoFns over the local path's rules (`ipa_jax.data`), and the writers of its files.
Each step's place in the pipeline is in beam_pipeline's docstring.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from ipa_jax import features, records
from ipa_jax.data import depth as depth_data
from ipa_jax.data import groups as groups_lib
from ipa_jax.data import instagram, manifests, retrieval, tfds_builder
from ipa_jax.data import pdips as pdips_lib
from ipa_jax.data import prepare as prepare_lib
from ipa_jax.data.prepare import SPLITS

DROPS = "ipa_jax.drops"  # metric namespaces: DROPS + "." + stage
DEPTH_OUTCOMES = "ipa_jax.depth_outcomes"  # every post's depth-map outcome (name: the outcome)
STAGES = ("read", "groups", "pdips")
IMAGES_PER_SHARD = 4096  # a shard holds about this many images (~400 MB of 100 kB JPEGs)
TEMP = ".beam_temp"  # the pipeline's facts for the launcher; removed at the end
DATASETS = ("groups", "pdips", "images")
EMBED_BATCH = 64  # posts per retrieval embedding call (the local path's batch)


def on_the_fly(prep) -> bool:
    """Whether the examples carry depth maps (the 3D branch computed in the training step)."""
    return prep.depth.enabled and prep.depth.mode == "on_the_fly"


def count_drop(stage: str, reason: str, n: int = 1) -> None:
    Metrics.counter(f"{DROPS}.{stage}", reason).inc(n)


# ------------------------------------------------------------------------------ reading
def numbered_lines(raw_dir: str):
    """(line number, bytes): undecodable bytes (lone surrogates in the text) survive Beam's
    coders, which refuse such strings; `parse_row` decodes them back."""
    for i, line in enumerate(instagram.mapping_lines(raw_dir)):
        yield i, line.encode("utf-8", "surrogateescape")


def parse_row(numbered):
    i, line = numbered
    row = instagram.parse_line(line.decode("utf-8", "surrogateescape"))
    if isinstance(row, str):
        count_drop("read", row)
    else:
        yield row[1], (i, row)


def select_rows(keyed, users):
    """The rows of one post_id in file order, as `read_posts` selects them."""
    _, rows = keyed
    for row in instagram.select_rows([r for _, r in sorted(rows)], users):
        if isinstance(row, str):
            count_drop("read", row)
        else:
            yield row


def load_post(row, raw_dir: str, check_images: bool, timestamp_range):
    post = instagram.load_post(raw_dir, *row, check_images, timestamp_range)
    if isinstance(post, str):
        count_drop("read", post)
    else:
        yield post


def crawl_time(timestamps, prep):
    return prepare_lib.crawl_time(timestamps, prep) if timestamps else None


def before_crawl(post, crawl):
    if post.timestamp <= crawl["timestamp"]:
        yield post
    else:
        count_drop("read", instagram.AFTER_CRAWL_TIME)


# ------------------------------------------------------------------------------ per user
def user_part(keyed, prep, crawl):
    """(user, posts by (timestamp, post_id), groups, PDIPs, extra): the local rules on one
    user; extra: {} until `join_sides` adds each post's retrieval aspects and depth features."""
    user, posts = keyed
    posts = sorted(posts, key=lambda p: (p.timestamp, p.post_id))
    g = prep.groups
    groups, group_drops = groups_lib.make_groups(
        posts, window_days=g.window_days, min_size=g.min_size, max_size=g.max_size,
        min_likes=g.min_likes)
    pairs, pdip_drops = pdips_lib.make_pdips(posts, prepare_lib.pdip_config(prep,
                                                                            crawl["timestamp"]))
    for stage, drops in (("groups", group_drops), ("pdips", pdip_drops)):
        for reason, n in drops.items():
            count_drop(stage, reason, n)
    return user, posts, groups, pairs, {}


class Depth(beam.DoFn):
    """A batch of posts -> (post, depth features [M, F]) of each post with a usable map; the
    others are dropped (missing="drop"). Every outcome is counted (`ipa_jax.data.depth`'s
    rules, its backbone in padded batches: a row does not depend on its batch)."""

    def __init__(self, raw_dir: str, cfg):
        self._raw_dir, self._cfg = raw_dir, cfg

    def process(self, batch):
        cfg = self._cfg
        depth_dir = cfg.depth_dir or os.path.join(self._raw_dir, "depth")
        kept, paths, maps = [], [], []
        for p in batch:
            path = os.path.join(self._raw_dir, p.image_path)
            d01, outcome = depth_data.map_for_image(depth_dir, p.post_id, path, cfg)
            Metrics.counter(DEPTH_OUTCOMES, outcome).inc()
            if d01 is None:
                count_drop("depth", outcome)
            else:
                kept.append(p)
                paths.append(path)
                maps.append(d01)
        if cfg.mode == "precomputed" and kept:
            rows = depth_data.features_of(cfg, paths, maps)
        else:  # on the fly: the training step computes them
            rows = np.zeros((len(kept), len(cfg.intervals), 0), np.float32)
        yield from zip(kept, rows, strict=True)


class Embed(beam.DoFn):
    """A batch of posts -> (user, (post_id, background, semantic, people)) per post: the
    retrieval aspects (`ipa_jax.data.retrieval.embed`; a row does not depend on its batch)."""

    def __init__(self, raw_dir: str, r):
        self._raw_dir, self._r = raw_dir, r

    def setup(self):  # the backbone, once per worker
        self._embedder = features.file_embedder(retrieval.embedding_spec(self._r), self._r.crop,
                                                self._r.normalize)

    def process(self, batch):
        people = [retrieval.people_of(self._raw_dir, p.post_id) for p in batch]
        boxes = [retrieval.person_boxes(kp, self._r.person_margin) for kp in people]
        no_mask = [np.zeros((0, 4), np.float32)] * len(batch)
        background, semantic = (
            retrieval.embed(aspect, self._raw_dir, batch, masks, self._r, embedder=self._embedder)
            for aspect, masks in (("background", boxes), ("semantic", no_mask)))
        for i, p in enumerate(batch):
            yield p.user, (p.post_id, background[i], semantic[i], people[i])


def join_sides(joined):
    """A user's part with its posts' rows of the other sides added to its extra ({side:
    {post_id: row}})."""
    _, sides = joined
    (user, posts, groups, pairs, extra), = sides.pop("part")
    return user, posts, groups, pairs, {**extra, **{
        side: {x[0]: x[1:] if len(x) > 2 else x[1] for x in rows}
        for side, rows in sides.items()}}


def join_by_user(parts, sides: dict, label: str):
    """`parts` with `sides` ({name: (user, (post_id, ...)) rows}) joined in, by user."""
    return ({"part": parts | f"{label}Key" >> beam.Map(lambda x: (x[0], x)), **sides}
            | f"{label}Group" >> beam.CoGroupByKey() | label >> beam.Map(join_sides))


def user_sizes(part):
    user, posts, groups, pairs, _ = part
    return user, len(posts), len(groups), len(pairs), sum(len(x.posts) for x in groups)


def split_and_rank(parts: dict) -> tuple[np.ndarray, np.ndarray]:
    """{split: sorted positions} -> (split number, rank within the split) of each position."""
    n = sum(len(v) for v in parts.values())
    split, rank = np.zeros(n, np.int8), np.zeros(n, np.int64)
    for s, positions in enumerate(parts.values()):
        split[positions], rank[positions] = s, np.arange(len(positions))
    return split, rank


def make_plan(sizes, prep, images_per_shard: int):
    """Global positions and splits, from each user's counts: what the local path decides with
    every post in memory, decided from numbers (the splits only permute positions)."""
    if not sizes:
        return None
    sizes = sorted(sizes)
    counts = np.array([s[1:] for s in sizes], np.int64).reshape(-1, 4)
    starts = np.concatenate([np.zeros((1, 4), np.int64), np.cumsum(counts, 0)[:-1]])
    n_posts, n_groups, n_pairs, n_group_images = (int(x) for x in counts.sum(0))
    g, p = prep.groups, prep.pdips
    group_splits = groups_lib.split_groups(range(n_groups), fractions=tuple(g.fractions),
                                           seed=prep.split_seed)
    pdip_splits, pdip_sizes = pdips_lib.split_pdips(
        range(n_pairs), validation=p.validation, test=p.test, seed=prep.split_seed,
        fallback=tuple(p.fallback))
    image_splits = groups_lib.split_groups(range(n_posts), fractions=tuple(prep.images.fractions),
                                           seed=prep.split_seed)
    pdip_split, pdip_rank = split_and_rank(pdip_splits)
    pdip_start = np.cumsum([0] + [len(pdip_splits[s]) for s in SPLITS])
    images_per = {"groups": n_group_images / max(1, n_groups), "pdips": 2, "images": 1}
    return {
        "offsets": {user: starts[i, :3].tolist() for i, (user, *_) in enumerate(sizes)},
        "groups": split_and_rank(group_splits), "images": split_and_rank(image_splits),
        "pdips": (pdip_split, pdip_rank),
        "pdip_k": pdip_start[pdip_split] + pdip_rank,  # pdips.csv's row of each PDIP
        "coins": prepare_lib.winner_first(n_pairs, prep.split_seed),
        "split_sizes": {"groups": {s: len(group_splits[s]) for s in SPLITS},
                        "pdips": {s: len(pdip_splits[s]) for s in SPLITS},
                        "images": {s: len(image_splits[s]) for s in SPLITS}},
        "per_shard": {d: max(1, images_per_shard // math.ceil(images_per[d])) for d in DATASETS},
        "pdip_sizes": pdip_sizes.as_dict(), "num_posts": n_posts,
    }


def bank_of(posts, groups, group0: int, plan) -> tuple[list, list, list]:
    """(group ids, in the bank, split name or "") of one user's posts: a post is in the bank
    when its group is in the training split (`plan`)."""
    split_by_post = {p.post_id: int(plan["groups"][0][group0 + j])
                for j, grp in enumerate(groups) for p in grp.posts}
    group_ids = retrieval.group_ids_of(posts, {p.post_id: grp.group_id for grp in groups
                                               for p in grp.posts})
    return (group_ids, [split_by_post.get(p.post_id) == 0 for p in posts],
            [SPLITS[split_by_post[p.post_id]] if p.post_id in split_by_post else "" for p in posts])


def aspects_of(posts, aspects: dict) -> tuple:
    """(background [N, Db], semantic [N, Dc], people) of `posts` from {post_id: aspects}."""
    background, semantic, people = zip(*(aspects[p.post_id] for p in posts), strict=True)
    return np.stack(background), np.stack(semantic), list(people)


def retrieval_rows(posts, post0: int, splits, f_ret, retrieved, all_posts):
    """The local path's retrieval rows of `posts` (rows post0... of posts.csv; `retrieved`:
    posts.csv rows, `all_posts[j - post0]` the post of row j), tagged, and each post's f_ret
    (user, (post_id, [K, 5])) for the join."""
    for i, p in enumerate(posts):
        rows = manifests.retrieval_rows(
            splits[i], p, f_ret[i], [all_posts[j - post0] if j >= 0 else None
                                     for j in retrieved[i]])
        yield beam.pvalue.TaggedOutput("retrieval", (post0 + i, rows))
        yield beam.pvalue.TaggedOutput("retrieval_arrays", (post0 + i, f_ret[i], retrieved[i]))
        yield p.user, (p.post_id, f_ret[i])


def retrieve_user(part, plan, r, raw_dir: str):
    """per_user mode: one user's posts against the user's own bank, on any worker."""
    user, posts, groups, _, extra = part
    post0, group0, _ = plan["offsets"][user]
    group_ids, in_bank, splits = bank_of(posts, groups, group0, plan)
    f_ret, retrieved, stats = retrieval.retrieve(posts, group_ids, in_bank,
                                                 *aspects_of(posts, extra["aspects"]), r, raw_dir)
    yield beam.pvalue.TaggedOutput("retrieval_stats", (user, stats))
    yield from retrieval_rows(posts, post0, splits, f_ret,
                               np.where(retrieved >= 0, post0 + retrieved, -1), posts)


def retrieve_all(parts, plan, r, raw_dir: str):
    """fallback and cross_user modes: one index over every user's bank, as the local path
    builds it, so on one worker (all the posts' embeddings in its memory)."""
    posts, group_ids, in_bank, splits, aspects = [], [], [], [], {}
    for user, user_posts, groups, _, extra in sorted(parts, key=lambda x: x[0]):
        ids, bank, names = bank_of(user_posts, groups, plan["offsets"][user][1], plan)
        posts += user_posts
        group_ids += ids
        in_bank += bank
        splits += names
        aspects.update(extra["aspects"])
    f_ret, retrieved, stats = retrieval.retrieve(posts, group_ids, in_bank,
                                                 *aspects_of(posts, aspects), r, raw_dir)
    yield beam.pvalue.TaggedOutput("retrieval_stats", ("", stats))
    yield from retrieval_rows(posts, 0, splits, f_ret, retrieved, posts)


def emit_rows(part, plan, prep):
    """One user's manifest rows and example specs at their global positions (tagged)."""
    user, posts, groups, pairs, extra = part
    post0, group0, pair0 = plan["offsets"][user]
    index = {p.post_id: post0 + i for i, p in enumerate(posts)}
    f_ret = (np.stack([extra["f_ret"][p.post_id] for p in posts]) if prep.retrieval.enabled
             else np.zeros((len(posts), 0, 5), np.float32))
    depth = (np.stack([extra["depth"][p.post_id] for p in posts]) if prep.depth.enabled
             else np.zeros((len(posts), 5, 0), np.float32))
    rows_of = lambda ps: [index[p.post_id] - post0 for p in ps]  # noqa: E731 - the user's rows
    for i, p in enumerate(posts):
        k = post0 + i
        yield beam.pvalue.TaggedOutput("posts", (k, manifests.post_row(k, p)))
        s, rank = (int(x[k]) for x in plan["images"])
        yield beam.pvalue.TaggedOutput("images", ((s, rank), manifests.image_row(SPLITS[s], p)))
        yield ("images", s, rank, p.post_id, p.user, (p,), [k], [], f_ret[[i]], depth[[i]])
    group_pairs = prepare_lib.group_pairs_fn(prep)
    for j, grp in enumerate(groups):
        s, rank = (int(x[group0 + j]) for x in plan["groups"])
        yield beam.pvalue.TaggedOutput("groups", ((s, rank),
                                                  manifests.group_rows(SPLITS[s], grp)))
        yield ("groups", s, rank, grp.group_id, grp.user, grp.posts,
               [index[p.post_id] for p in grp.posts], group_pairs(grp.posts),
               f_ret[rows_of(grp.posts)], depth[rows_of(grp.posts)])
    for j, (winner, loser) in enumerate(pairs):
        s, rank = (int(x[pair0 + j]) for x in plan["pdips"])
        k = int(plan["pdip_k"][pair0 + j])
        yield beam.pvalue.TaggedOutput("pdips", (k, manifests.pdip_row(
            SPLITS[s], k, winner, loser, plan["coins"][k])))
        yield ("pdips", s, rank, manifests.pdip_id(k), winner.user, (winner, loser),
               [index[winner.post_id], index[loser.post_id]], prepare_lib.pdip_pairs(()),
               f_ret[rows_of((winner, loser))], depth[rows_of((winner, loser))])


# ------------------------------------------------------------------------------ writing
def write_csv(keyed_rows, path: str, header, flatten: bool = False):
    """One manifest, rows in key order (`flatten`: each key holds a list of rows)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    for _, rows in sorted(keyed_rows, key=lambda kv: kv[0]):
        writer.writerows(rows if flatten else [rows])
    with FileSystems.create(path) as f:
        f.write(text.getvalue().encode())


def write_npz(rows, path: str):
    """retrieval.npz: f_ret [N, K, 5] and retrieved [N, K] (posts.csv rows or -1), in order."""
    rows = sorted(rows, key=lambda x: x[0])
    with FileSystems.create(path) as f:
        np.savez(f, f_ret=np.stack([x[1] for x in rows]), retrieved=np.stack([x[2] for x in rows]))


def write_json(value, path: str):
    with FileSystems.create(path) as f:
        f.write(json.dumps(value, default=_jsonable).encode())


def _jsonable(x):
    return x.tolist() if isinstance(x, np.ndarray) else int(x)


class Serialize(beam.DoFn):
    """An example spec -> ((dataset, split, shard), (rank, record, pairs, images))."""

    def __init__(self, raw_dir: str, prep):
        self._raw_dir, self._short_side = raw_dir, prep.store_short_side
        self._depth = prep.depth if on_the_fly(prep) else None

    def setup(self):
        self._features = tfds_builder.features(depth_maps=self._depth is not None)

    def _depth_map(self, post, data: bytes) -> bytes:
        return depth_data.stored_map(self._raw_dir, self._depth.depth_dir, post.post_id,
                                     post.image_path, data, self._depth)

    def process(self, spec, plan):
        dataset, s, rank, group_id, user, posts, post_indices, pairs, f_ret, depth = spec
        n = len(posts)
        example = prepare_lib.example(
            group_id, user, posts, post_indices, pairs, f_ret, depth, raw_dir=self._raw_dir,
            short_side=self._short_side, depth_map=self._depth_map if self._depth else None)
        record = self._features.serialize_example(example)
        shard = rank // plan["per_shard"][dataset]
        yield (dataset, s, shard), (rank, record, len(pairs), n)


def write_shard(keyed, out_dir: str, plan):
    """Writes one shard in rank order; returns its facts and RecordIndex rows."""
    (dataset, s, shard), items = keyed
    items = sorted(items, key=lambda x: x[0])
    per_shard = plan["per_shard"][dataset]
    ranks = [x[0] for x in items]
    if ranks != list(range(shard * per_shard, shard * per_shard + len(items))):
        raise RuntimeError(f"{dataset}/{SPLITS[s]} shard {shard}: ranks {ranks[:5]}... are not "
                           "contiguous; a bug in the plan")
    num_shards = math.ceil(plan["split_sizes"][dataset][SPLITS[s]] / per_shard)
    name = tfds_builder.shard_name(dataset, SPLITS[s], shard, num_shards)
    folder = tfds_builder.dataset_dir(out_dir, dataset)
    rows, position = [], 0
    with tf.io.TFRecordWriter(os.path.join(folder, name)) as writer:
        for rank, record, pairs, images in items:
            writer.write(record)
            rows.append((rank, position + records.HEADER_BYTES, len(record), pairs, images))
            position += records.HEADER_BYTES + len(record) + records.FOOTER_BYTES
    # bytes: of the examples, without the records' framing (as TFDS counts a split's size)
    return {"dataset": dataset, "split": SPLITS[s], "shard": shard, "name": name,
            "num_shards": num_shards, "bytes": sum(r[2] for r in rows), "rows": rows}
