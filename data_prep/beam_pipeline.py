# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Data preparation as one Apache Beam pipeline: the local path's rules and rows, distributed.

`python -m data_prep.prepare ... --runner=DirectRunner` (or DataflowRunner, FlinkRunner,
SparkRunner) writes what `ipa_jax.data.prepare.prepare` writes, the same manifests, drops and
TFRecord examples in the same order, from the same functions:

  mapping lines   read once, fanned out; each row parsed (`instagram.parse_line`)
  by post_id      each post's rows in file order (`instagram.select_rows`: first row, top users)
  load            metadata and image checks per post (`instagram.load_post`)       distributed
  crawl time      one estimate over all timestamps (`prepare.crawl_time`); later posts dropped
  depth           each post's map read, its outcome counted, the frozen backbone in batches
                  (`ipa_jax.data.depth`; precomputed or on the fly)               distributed
  retrieval       the aspects' embeddings in batches (`ipa_jax.data.retrieval.embed`)
                                                                                    distributed
  by user         each user's posts, groups and PDIPs (`groups.make_groups`, `pdips.make_pdips`
                  are per user: rules inside one user's posts only), joined with its posts'
                  depth rows and aspects                                           distributed
  plan            from counts alone: every user's offsets, the seeded splits of groups, PDIPs
                  and images, the PDIP coins (`prepare.winner_first`); one small step
  rows, examples  each user's retrieval from its own bank (per_user mode), manifest rows and
                  examples at their global positions; images encoded (`prepare.example`)
                                                                                    distributed
  shards          each TFRecord shard written in canonical order, its `records.RecordIndex`
                  rows computed while writing                                      distributed
Dropped posts are counted with Beam metrics (namespace `ipa_jax.drops.<stage>`, name: the
reason; depth-map outcomes under `ipa_jax.depth_outcomes`) and written to drops.json and
summary.json; the manifests and retrieval.npz are each written by one worker, in order. The
launcher (`prepare`) keeps the local path's folder safety, checks and summary.

Not on Beam (refused with a message): retrieval modes `fallback` and `cross_user`, which search
one index over every user's bank. Not cached: a rerun computes the embeddings and depth features
again (the local path caches them in out_dir/cache). Folders are local paths or mounted buckets.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from ipa_jax import config_lib, features, images, records
from ipa_jax.data import depth as depth_data
from ipa_jax.data import groups as groups_lib
from ipa_jax.data import instagram, retrieval, tfds_builder
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


def _drop(stage: str, reason: str, n: int = 1) -> None:
    Metrics.counter(f"{DROPS}.{stage}", reason).inc(n)


# ------------------------------------------------------------------------------ reading
def _numbered_lines(raw_dir: str):
    """(line number, bytes): undecodable bytes (lone surrogates in the text) survive Beam's
    coders, which refuse such strings; `_parse` decodes them back."""
    for i, line in enumerate(instagram.mapping_lines(raw_dir)):
        yield i, line.encode("utf-8", "surrogateescape")


def _parse(numbered):
    i, line = numbered
    row = instagram.parse_line(line.decode("utf-8", "surrogateescape"))
    if isinstance(row, str):
        _drop("read", row)
    else:
        yield row[1], (i, row)


def _select(keyed, users):
    """The rows of one post_id in file order, as `read_posts` selects them."""
    _, rows = keyed
    for row in instagram.select_rows([r for _, r in sorted(rows)], users):
        if isinstance(row, str):
            _drop("read", row)
        else:
            yield row


def _load(row, raw_dir: str, check_images: bool, timestamp_range):
    post = instagram.load_post(raw_dir, *row, check_images, timestamp_range)
    if isinstance(post, str):
        _drop("read", post)
    else:
        yield post


def _crawl(timestamps, prep):
    return prepare_lib.crawl_time(timestamps, prep) if timestamps else None


def _before_crawl(post, crawl):
    if post.timestamp <= crawl["timestamp"]:
        yield post
    else:
        _drop("read", instagram.AFTER_CRAWL_TIME)


# ------------------------------------------------------------------------------ per user
def _user_part(keyed, prep, crawl):
    """(user, posts by (timestamp, post_id), groups, PDIPs, extra): the local rules on one
    user; extra: {} until `_join` adds each post's retrieval aspects and depth features."""
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
            _drop(stage, reason, n)
    return user, posts, groups, pairs, {}


class _Depth(beam.DoFn):
    """A batch of posts -> (post, depth features [M, F]) of each post with a usable map; the
    others are dropped (missing="drop"). Every outcome is counted (`ipa_jax.data.depth`'s
    rules, its backbone in padded batches: a row does not depend on its batch)."""

    def __init__(self, raw_dir: str, cfg):
        self._raw_dir, self._cfg = raw_dir, cfg

    def process(self, batch):
        cfg = self._cfg
        depth_dir = cfg.depth_dir or os.path.join(self._raw_dir, "depth")
        kept, crops = [], []
        for p in batch:
            path = os.path.join(self._raw_dir, p.image_path)
            with images.open_image(path) as im:
                hw = (im.height, im.width)
            d01, outcome = depth_data.load_for_image(depth_dir, p.post_id, hw, cfg)
            Metrics.counter(DEPTH_OUTCOMES, outcome).inc()
            if d01 is None:
                _drop("depth", outcome)
                continue
            kept.append(p)
            if cfg.mode == "precomputed":
                crops.append(depth_data.crop_like_image(images.read_rgb(path), d01,
                                                        resize=cfg.resize, crop=cfg.crop))
        if crops:
            rows = depth_data.run_backbone(cfg, [c for c, _ in crops], [m for _, m in crops],
                                           cfg.batch_size)
        else:  # on the fly: the training step computes them
            rows = np.zeros((len(kept), len(cfg.intervals), 0), np.float32)
        yield from zip(kept, rows, strict=True)


class _Embed(beam.DoFn):
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


def _join(joined):
    """A user's part with its posts' rows of the other sides ({post_id: row} each)."""
    _, sides = joined
    (user, posts, groups, pairs, _), = sides.pop("part")
    return user, posts, groups, pairs, {
        side: {x[0]: x[1:] if len(x) > 2 else x[1] for x in rows}
        for side, rows in sides.items()}


def _sizes(part):
    user, posts, groups, pairs, _ = part
    return user, len(posts), len(groups), len(pairs), sum(len(x.posts) for x in groups)


def _split_of(parts: dict) -> tuple[np.ndarray, np.ndarray]:
    """{split: sorted positions} -> (split number, rank within the split) of each position."""
    n = sum(len(v) for v in parts.values())
    split, rank = np.zeros(n, np.int8), np.zeros(n, np.int64)
    for s, positions in enumerate(parts.values()):
        split[positions], rank[positions] = s, np.arange(len(positions))
    return split, rank


def _plan(sizes, prep, images_per_shard: int):
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
    pdip_split, pdip_rank = _split_of(pdip_splits)
    pdip_start = np.cumsum([0] + [len(pdip_splits[s]) for s in SPLITS])
    images_per = {"groups": n_group_images / max(1, n_groups), "pdips": 2, "images": 1}
    return {
        "offsets": {user: starts[i, :3].tolist() for i, (user, *_) in enumerate(sizes)},
        "groups": _split_of(group_splits), "images": _split_of(image_splits),
        "pdips": (pdip_split, pdip_rank),
        "pdip_k": pdip_start[pdip_split] + pdip_rank,  # pdips.csv's row of each PDIP
        "coins": prepare_lib.winner_first(n_pairs, prep.split_seed),
        "split_sizes": {"groups": {s: len(group_splits[s]) for s in SPLITS},
                        "pdips": {s: len(pdip_splits[s]) for s in SPLITS},
                        "images": {s: len(image_splits[s]) for s in SPLITS}},
        "per_shard": {d: max(1, images_per_shard // math.ceil(images_per[d])) for d in DATASETS},
        "pdip_sizes": pdip_sizes.as_dict(), "num_posts": n_posts,
    }


def _retrieve(posts, groups, group0: int, plan, aspects, r, post0: int):
    """One user's retrieval (per_user mode: the user's own bank), as the local path's rows:
    yields the tagged retrieval.csv rows, npz rows and stats; returns f_ret [posts, K, 5]."""
    split_of = {p.post_id: int(plan["groups"][0][group0 + j])
                for j, grp in enumerate(groups) for p in grp.posts}
    group_ids = retrieval.group_ids_of(posts, {p.post_id: grp.group_id for grp in groups
                                               for p in grp.posts})
    background, semantic, people = (list(x) for x in zip(*(aspects[p.post_id] for p in posts),
                                                         strict=True))
    f_ret, retrieved, stats = retrieval.retrieve(
        posts, group_ids, [split_of.get(p.post_id) == 0 for p in posts], np.stack(background),
        np.stack(semantic), people, r)
    yield beam.pvalue.TaggedOutput("retrieval_stats", stats)
    for i, p in enumerate(posts):
        split = SPLITS[split_of[p.post_id]] if p.post_id in split_of else ""
        rows = [(split, p.post_id, rank, posts[j].post_id, *(f"{v:.6f}" for v in f_ret[i, rank]))
                for rank, j in enumerate(retrieved[i]) if j >= 0]
        yield beam.pvalue.TaggedOutput("retrieval", (post0 + i, rows))
        yield beam.pvalue.TaggedOutput("retrieval_arrays", (
            post0 + i, f_ret[i], np.where(retrieved[i] >= 0, post0 + retrieved[i], -1)))
    return f_ret


def _emit(part, plan, prep):
    """One user's manifest rows and example specs at their global positions (tagged)."""
    user, posts, groups, pairs, extra = part
    post0, group0, pair0 = plan["offsets"][user]
    index = {p.post_id: post0 + i for i, p in enumerate(posts)}
    f_ret = np.zeros((len(posts), prep.retrieval.k if prep.retrieval.enabled else 0, 5),
                     np.float32)
    if prep.retrieval.enabled:
        f_ret = yield from _retrieve(posts, groups, group0, plan, extra["aspects"],
                                     prep.retrieval, post0)
    depth = (np.stack([extra["depth"][p.post_id] for p in posts]) if prep.depth.enabled
             else np.zeros((len(posts), 5, 0), np.float32))
    rows_of = lambda ps: [index[p.post_id] - post0 for p in ps]  # noqa: E731 - the user's rows
    for i, p in enumerate(posts):
        k = post0 + i
        yield beam.pvalue.TaggedOutput("posts", (k, (k, p.post_id, p.user, p.likes, p.comments,
                                                      p.timestamp, p.image_path)))
        s, rank = (int(x[k]) for x in plan["images"])
        yield beam.pvalue.TaggedOutput(
            "images", ((s, rank), (SPLITS[s], p.post_id, p.user, p.likes, p.timestamp)))
        yield ("images", s, rank, p.post_id, p.user, (p,), [k], [], f_ret[[i]], depth[[i]])
    group_pairs = prepare_lib.group_pairs_fn(prep)
    for j, grp in enumerate(groups):
        s, rank = (int(x[group0 + j]) for x in plan["groups"])
        yield beam.pvalue.TaggedOutput("groups", ((s, rank), [
            (SPLITS[s], grp.group_id, grp.user, p.post_id, p.likes, p.timestamp)
            for p in grp.posts]))
        yield ("groups", s, rank, grp.group_id, grp.user, grp.posts,
               [index[p.post_id] for p in grp.posts], group_pairs(grp.posts),
               f_ret[rows_of(grp.posts)], depth[rows_of(grp.posts)])
    for j, (winner, loser) in enumerate(pairs):
        s, rank = (int(x[pair0 + j]) for x in plan["pdips"])
        k = int(plan["pdip_k"][pair0 + j])
        a, b = (winner, loser) if plan["coins"][k] else (loser, winner)
        pair_id = prepare_lib.pdip_id(k)
        yield beam.pvalue.TaggedOutput("pdips", (k, (SPLITS[s], pair_id, a.post_id, b.post_id,
                                                     winner.post_id)))
        yield ("pdips", s, rank, pair_id, winner.user, (winner, loser),
               [index[winner.post_id], index[loser.post_id]], prepare_lib.pdip_pairs(()),
               f_ret[rows_of((winner, loser))], depth[rows_of((winner, loser))])


# ------------------------------------------------------------------------------ writing
def _write_csv(keyed_rows, path: str, header, flatten: bool = False):
    """One manifest, rows in key order (`flatten`: each key holds a list of rows)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    for _, rows in sorted(keyed_rows, key=lambda kv: kv[0]):
        writer.writerows(rows if flatten else [rows])
    with FileSystems.create(path) as f:
        f.write(text.getvalue().encode())


def _write_npz(rows, path: str):
    """retrieval.npz: f_ret [N, K, 5] and retrieved [N, K] (posts.csv rows or -1), in order."""
    rows = sorted(rows, key=lambda x: x[0])
    with FileSystems.create(path) as f:
        np.savez(f, f_ret=np.stack([x[1] for x in rows]), retrieved=np.stack([x[2] for x in rows]))


def _write_json(value, path: str):
    with FileSystems.create(path) as f:
        f.write(json.dumps(value, default=_jsonable).encode())


def _jsonable(x):
    return x.tolist() if isinstance(x, np.ndarray) else int(x)


class _Serialize(beam.DoFn):
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


def _write_shard(keyed, out_dir: str, plan):
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


def _build(p, raw_dir: str, out_dir: str, prep, users, timestamp_range,
           images_per_shard: int) -> None:
    temp = os.path.join(out_dir, TEMP)
    rows = (p | "Mapping" >> beam.Create([raw_dir])
            | "Lines" >> beam.FlatMap(_numbered_lines)
            | "Spread" >> beam.Reshuffle()
            | "Parse" >> beam.FlatMap(_parse)
            | "ByPost" >> beam.GroupByKey()
            | "Select" >> beam.FlatMap(_select, users))
    loaded = rows | "Load" >> beam.FlatMap(_load, raw_dir, prep.check_images, timestamp_range)
    crawl = (loaded | "Timestamps" >> beam.Map(lambda x: x.timestamp)
             | "AllTimestamps" >> beam.combiners.ToList()
             | "Crawl" >> beam.Map(_crawl, prep))
    kept = loaded | "AfterCrawl" >> beam.FlatMap(_before_crawl,
                                                   crawl=beam.pvalue.AsSingleton(crawl))
    num_kept = kept | "CountKept" >> beam.combiners.Count.Globally()
    sides = {}
    if prep.depth.enabled:  # posts without a usable map leave here; the rows join by user
        with_depth = (kept | "DepthBatches" >> beam.BatchElements(
            min_batch_size=prep.depth.batch_size, max_batch_size=prep.depth.batch_size)
            | "Depth" >> beam.ParDo(_Depth(raw_dir, prep.depth)))
        kept = with_depth | "DepthPosts" >> beam.Map(lambda x: x[0])
        sides["depth"] = with_depth | "DepthRows" >> beam.Map(
            lambda x: (x[0].user, (x[0].post_id, x[1])))
        depth_shapes = (with_depth | "DepthShape" >> beam.Map(lambda x: tuple(x[1].shape))
                        | "Shapes" >> beam.Distinct() | "AllShapes" >> beam.combiners.ToList())
    parts = (kept | "KeyUser" >> beam.Map(lambda x: (x.user, x))
             | "ByUser" >> beam.GroupByKey()
             | "Rules" >> beam.Map(_user_part, prep, crawl=beam.pvalue.AsSingleton(crawl)))
    if prep.retrieval.enabled:  # each user's bank meets its posts' aspects, by key
        sides["aspects"] = (kept | "Batches" >> beam.BatchElements(min_batch_size=EMBED_BATCH,
                                                                   max_batch_size=EMBED_BATCH)
                            | "Embed" >> beam.ParDo(_Embed(raw_dir, prep.retrieval)))
    if sides:
        parts = ({"part": parts | "PartByUser" >> beam.Map(lambda x: (x[0], x)), **sides}
                 | "JoinByUser" >> beam.CoGroupByKey() | "Join" >> beam.Map(_join))
    plan = (parts | "Sizes" >> beam.Map(_sizes) | "AllSizes" >> beam.combiners.ToList()
            | "Plan" >> beam.Map(_plan, prep, images_per_shard))
    plan_side = beam.pvalue.AsSingleton(plan)
    out = parts | "Emit" >> beam.FlatMap(_emit, plan_side, prep).with_outputs(
        "posts", "groups", "pdips", "images", "retrieval", "retrieval_arrays", "retrieval_stats",
        main="specs")
    manifests = {"posts": prepare_lib.POSTS_HEADER, "groups": prepare_lib.GROUPS_HEADER,
                 "pdips": prepare_lib.PDIPS_HEADER, "images": prepare_lib.IMAGES_HEADER}
    if prep.retrieval.enabled:
        manifests["retrieval"] = prepare_lib.RETRIEVAL_HEADER
        (out["retrieval_arrays"] | "AllArrays" >> beam.combiners.ToList()
         | "WriteArrays" >> beam.Map(_write_npz, os.path.join(out_dir, "retrieval.npz")))
    for name, header in manifests.items():
        (out[name] | f"All{name}" >> beam.combiners.ToList()
         | f"Write{name}" >> beam.Map(_write_csv, os.path.join(out_dir, f"{name}.csv"), header,
                                      flatten=name in ("groups", "retrieval")))
    shards = (out["specs"] | "Balance" >> beam.Reshuffle()
              | "Encode" >> beam.ParDo(_Serialize(raw_dir, prep), plan_side)
              | "ByShard" >> beam.GroupByKey()
              | "WriteShards" >> beam.Map(_write_shard, out_dir, plan_side))
    facts = {
        "crawl": crawl,
        "num_read": loaded | "CountRead" >> beam.combiners.Count.Globally(),
        "num_kept": num_kept,
        "num_after_depth": kept | "CountAfterDepth" >> beam.combiners.Count.Globally(),
        "plan": plan | "PlanFacts" >> beam.Map(lambda x: x and {
            k: x[k] for k in ("split_sizes", "pdip_sizes", "num_posts")}),
        "shards": shards | "AllShards" >> beam.combiners.ToList(),
        "retrieval_stats": out["retrieval_stats"] | "AllStats" >> beam.combiners.ToList(),
    }
    if prep.depth.enabled:
        facts["depth_shapes"] = depth_shapes
    for name, pcoll in facts.items():
        pcoll | f"Save{name}" >> beam.Map(_write_json, os.path.join(temp, f"{name}.json"))


# ------------------------------------------------------------------------------ launcher
def _refuse_unsupported(prep) -> None:
    if prep.retrieval.enabled and prep.retrieval.mode != "per_user":
        raise config_lib.ConfigError(
            f"config.prep.retrieval.mode={prep.retrieval.mode!r} searches one index over every "
            "user's bank, which the Beam path does not build (it retrieves from each user's own "
            "bank, grouped by user); set --config.prep.retrieval.mode=per_user, or prepare "
            "with the local path (leave out --runner).")


def _counters(result, namespace: str) -> dict:
    """{sub-namespace: {name: count}} of the pipeline's counters under `namespace` (committed
    where the runner has them, else attempted), summed over the steps that count them."""
    out = {}
    for counter in result.metrics().query(MetricsFilter())["counters"]:
        space = counter.key.metric.namespace
        if space != namespace and not space.startswith(namespace + "."):
            continue
        value = counter.committed if counter.committed is not None else counter.attempted
        if value:
            names = out.setdefault(space[len(namespace) + 1:], {})
            names[counter.key.metric.name] = names.get(counter.key.metric.name, 0) + int(value)
    return out


def _read_facts(out_dir: str) -> dict:
    facts = {}
    for name in os.listdir(os.path.join(out_dir, TEMP)):
        with open(os.path.join(out_dir, TEMP, name)) as f:
            facts[name.removesuffix(".json")] = json.load(f)
    return facts


def _write_datasets(out_dir: str, shards: list[dict], depth_maps: bool) -> dict:
    """dataset_info.json and each split's RecordIndex for the shards written; the counts."""
    counts = {}
    for dataset in DATASETS:
        mine = sorted((x for x in shards if x["dataset"] == dataset),
                      key=lambda x: (SPLITS.index(x["split"]), x["shard"]))
        layout = {s: [(len(x["rows"]), x["bytes"]) for x in mine if x["split"] == s]
                  for s in SPLITS}
        tfds_builder.write_metadata(out_dir, dataset, layout, depth_maps=depth_maps)
        counts[dataset] = {}
        for s in SPLITS:
            split = [x for x in mine if x["split"] == s]
            table = np.array([(k, *row[1:]) for k, x in enumerate(split) for row in x["rows"]],
                             np.int64).reshape(-1, 5)
            records.RecordIndex(
                files=tuple(x["name"] for x in split), file=table[:, 0].astype(np.int32),
                offset=table[:, 1], length=table[:, 2], num_pairs=table[:, 3].astype(np.int32),
                num_images=table[:, 4].astype(np.int32),
            ).save(records.index_path(tfds_builder.dataset_dir(out_dir, dataset), s))
            counts[dataset][s] = {"groups": len(table), "images": int(table[:, 4].sum()),
                                  "pairs": int(table[:, 3].sum())}
    return counts


def prepare(raw_dir: str, out_dir: str, prep, beam_args: list[str], *,
            images_per_shard: int = IMAGES_PER_SHARD) -> dict:
    """`ipa_jax.data.prepare.prepare` as one Beam pipeline run with `beam_args` (Beam's own
    command-line options, `--runner=...` among them); returns the summary. Each TFRecord shard
    holds about `images_per_shard` images (the examples and their order do not depend on it)."""
    _refuse_unsupported(prep)
    if (done := prepare_lib.begin(raw_dir, out_dir, prep)) is not None:
        return done
    users = prepare_lib.top_users(raw_dir, prep.top_users)
    timestamp_range = (prep.min_timestamp, int(time.time()))
    for dataset in DATASETS:
        os.makedirs(tfds_builder.dataset_dir(out_dir, dataset), exist_ok=True)
    os.makedirs(os.path.join(out_dir, TEMP), exist_ok=True)
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    _build(pipeline, raw_dir, out_dir, prep, users, timestamp_range, images_per_shard)
    result = pipeline.run()
    result.wait_until_finish()

    facts = _read_facts(out_dir)
    drops = {stage: {} for stage in STAGES} | _counters(result, DROPS)
    prepare_lib.check_read(facts["num_read"], drops["read"], raw_dir)
    prepare_lib.check_after_crawl(facts["num_kept"], raw_dir, facts["crawl"], prep)
    extra = ({} if users is None else
             {"top_users": {"asked": prep.top_users, "selected": len(users)}})
    if prep.depth.enabled:
        shape = (facts["depth_shapes"] or [[len(prep.depth.intervals), 0]])[0]
        drops["depth"], extra["depth"] = depth_data.summary(
            _counters(result, DEPTH_OUTCOMES).get("", {}), prep.depth, raw_dir, shape)
        prepare_lib.check_after_depth(facts["num_after_depth"], raw_dir, drops["depth"])
    else:
        drops.pop("depth", None)
    prepare_lib.write_drops(out_dir, drops)
    plan = facts["plan"]
    prepare_lib.check_nonempty(plan["split_sizes"], plan["num_posts"], out_dir, drops)
    counts = _write_datasets(out_dir, facts["shards"], depth_maps=on_the_fly(prep))
    retrieval_stats = {}
    if prep.retrieval.enabled:
        retrieval_stats = retrieval.merge_stats(facts["retrieval_stats"])
        retrieval.warn_about(retrieval_stats, prep.retrieval)
    shutil.rmtree(os.path.join(out_dir, TEMP))
    return prepare_lib.finish(out_dir, raw_dir, prep, num_posts_read=plan["num_posts"],
                              crawl_time=facts["crawl"], drops=drops, counts=counts,
                              pdip_split=plan["pdip_sizes"], retrieval=retrieval_stats,
                              **extra)
