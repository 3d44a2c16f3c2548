# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Data preparation as one Apache Beam pipeline: the local path's rules and rows, distributed.

`python -m data_prep.prepare ... --runner=DirectRunner` (or DataflowRunner, FlinkRunner,
SparkRunner) writes what `ipa_jax.data.prepare.prepare` writes, the same manifests, drops and
TFRecord examples in the same order, from the same functions (the steps: `data_prep.beam_stages`):

  mapping lines   read once, fanned out; each row parsed (`instagram.parse_line`)
  by post_id      each post's rows in file order (`instagram.select_rows`: first row, top users)
  load            metadata and image checks per post (`instagram.load_post`)       distributed
  crawl time      one estimate over all timestamps (`prepare.crawl_time`); later posts dropped
  depth           each post's map read, its outcome counted, the frozen backbone in batches
                  (`ipa_jax.data.depth`; precomputed or on the fly)               distributed
  embeddings      the retrieval aspects in batches (`ipa_jax.data.retrieval.embed`)
                                                                                    distributed
  by user         each user's posts, groups and PDIPs (`groups.make_groups`, `pdips.make_pdips`
                  are per user: rules inside one user's posts only), joined with its posts'
                  depth rows and aspects                                           distributed
  plan            from counts alone: every user's offsets, the seeded splits of groups, PDIPs
                  and images, the PDIP coins (`prepare.winner_first`); one small step
  retrieval       per_user mode: each user's posts against its own bank        distributed
                  fallback, cross_user: one index over every user's bank, as the local path
                  builds it, on one worker (all embeddings in its memory)
  rows, examples  each user's manifest rows and examples at their global positions; images
                  encoded (`prepare.example`)                                      distributed
  shards          each TFRecord shard written in canonical order, its `records.RecordIndex`
                  rows computed while writing                                      distributed
Dropped posts are counted with Beam metrics (namespace `ipa_jax.drops.<stage>`, name: the
reason; depth-map outcomes under `ipa_jax.depth_outcomes`) and written to drops.json and
summary.json; the manifests and retrieval.npz are each written by one worker, in order. The
launcher (`prepare`) keeps the local path's folder safety, checks and summary.

Not cached: a rerun computes the embeddings and depth features again (the local path caches
them in out_dir/cache). Folders are local paths or mounted buckets.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from data_prep import beam_stages as stages
from ipa_jax import records
from ipa_jax.data import depth as depth_data
from ipa_jax.data import manifests, retrieval, tfds_builder
from ipa_jax.data import prepare as prepare_lib
from ipa_jax.data.prepare import SPLITS


def _build(p, raw_dir: str, out_dir: str, prep, users, timestamp_range,
           images_per_shard: int, r) -> None:
    """The pipeline into `p`; r: the retrieval settings used (`retrieval.available_aspects`)."""
    temp = os.path.join(out_dir, stages.TEMP)
    rows = (p | "Mapping" >> beam.Create([raw_dir])
            | "Lines" >> beam.FlatMap(stages.numbered_lines)
            | "Spread" >> beam.Reshuffle()
            | "Parse" >> beam.FlatMap(stages.parse_row)
            | "ByPost" >> beam.GroupByKey()
            | "Select" >> beam.FlatMap(stages.select_rows, users))
    loaded = rows | "Load" >> beam.FlatMap(stages.load_post, raw_dir, prep.check_images,
                                           timestamp_range)
    crawl = (loaded | "Timestamps" >> beam.Map(lambda x: x.timestamp)
             | "AllTimestamps" >> beam.combiners.ToList()
             | "Crawl" >> beam.Map(stages.crawl_time, prep))
    kept = loaded | "AfterCrawl" >> beam.FlatMap(stages.before_crawl,
                                                   crawl=beam.pvalue.AsSingleton(crawl))
    num_kept = kept | "CountKept" >> beam.combiners.Count.Globally()
    sides = {}
    if prep.depth.enabled:  # posts without a usable map leave here; the rows join by user
        with_depth = (kept | "DepthBatches" >> beam.BatchElements(
            min_batch_size=prep.depth.batch_size, max_batch_size=prep.depth.batch_size)
            | "Depth" >> beam.ParDo(stages.Depth(raw_dir, prep.depth)))
        kept = with_depth | "DepthPosts" >> beam.Map(lambda x: x[0])
        sides["depth"] = with_depth | "DepthRows" >> beam.Map(
            lambda x: (x[0].user, (x[0].post_id, x[1])))
        depth_shapes = (with_depth | "DepthShape" >> beam.Map(lambda x: tuple(x[1].shape))
                        | "Shapes" >> beam.Distinct() | "AllShapes" >> beam.combiners.ToList())
    parts = (kept | "KeyUser" >> beam.Map(lambda x: (x.user, x))
             | "ByUser" >> beam.GroupByKey()
             | "Rules" >> beam.Map(stages.user_part, prep, crawl=beam.pvalue.AsSingleton(crawl)))
    if prep.retrieval.enabled:  # each user's bank meets its posts' aspects, by key
        sides["aspects"] = (kept | "Batches" >> beam.BatchElements(
            min_batch_size=stages.EMBED_BATCH, max_batch_size=stages.EMBED_BATCH)
            | "Embed" >> beam.ParDo(stages.Embed(raw_dir, r)))
    if sides:
        parts = stages.join_by_user(parts, sides, "Join")
    plan = (parts | "Sizes" >> beam.Map(stages.user_sizes) | "AllSizes" >> beam.combiners.ToList()
            | "Plan" >> beam.Map(stages.make_plan, prep, images_per_shard))
    plan_side = beam.pvalue.AsSingleton(plan)
    outputs = {}
    if prep.retrieval.enabled:  # per_user: by user, anywhere; else one index over all banks
        tags = ("retrieval", "retrieval_arrays", "retrieval_stats")
        if prep.retrieval.mode == "per_user":
            found = parts | "Retrieve" >> beam.FlatMap(
                stages.retrieve_user, plan_side, r, raw_dir).with_outputs(*tags, main="f_ret")
        else:
            found = (parts | "AllParts" >> beam.combiners.ToList()
                     | "RetrieveAll" >> beam.FlatMap(stages.retrieve_all, plan_side, r, raw_dir)
                     .with_outputs(*tags, main="f_ret"))
        parts = stages.join_by_user(parts, {"f_ret": found["f_ret"]}, "JoinRetrieved")
        outputs = {tag: found[tag] for tag in tags}
        (found["retrieval_arrays"] | "AllArrays" >> beam.combiners.ToList()
         | "WriteArrays" >> beam.Map(stages.write_npz, os.path.join(out_dir, "retrieval.npz")))
    out = parts | "Emit" >> beam.FlatMap(stages.emit_rows, plan_side, prep).with_outputs(
        "posts", "groups", "pdips", "images", main="specs")
    outputs.update({name: out[name] for name in ("posts", "groups", "pdips", "images")})
    headers = {"posts": manifests.POSTS_HEADER, "groups": manifests.GROUPS_HEADER,
               "pdips": manifests.PDIPS_HEADER, "images": manifests.IMAGES_HEADER}
    if prep.retrieval.enabled:
        headers["retrieval"] = manifests.RETRIEVAL_HEADER
    for name, header in headers.items():
        (outputs[name] | f"All{name}" >> beam.combiners.ToList()
         | f"Write{name}" >> beam.Map(stages.write_csv, os.path.join(out_dir, f"{name}.csv"),
                                      header, flatten=name in ("groups", "retrieval")))
    shards = (out["specs"] | "Balance" >> beam.Reshuffle()
              | "Encode" >> beam.ParDo(stages.Serialize(raw_dir, prep), plan_side)
              | "ByShard" >> beam.GroupByKey()
              | "WriteShards" >> beam.Map(stages.write_shard, out_dir, plan_side))
    facts = {
        "crawl": crawl,
        "num_read": loaded | "CountRead" >> beam.combiners.Count.Globally(),
        "num_kept": num_kept,
        "num_after_depth": kept | "CountAfterDepth" >> beam.combiners.Count.Globally(),
        "plan": plan | "PlanFacts" >> beam.Map(lambda x: x and {
            k: x[k] for k in ("split_sizes", "pdip_sizes", "num_posts")}),
        "shards": shards | "AllShards" >> beam.combiners.ToList(),
    }
    if prep.retrieval.enabled:
        facts["retrieval_stats"] = outputs["retrieval_stats"] | "AllStats" >> (
            beam.combiners.ToList())
    if prep.depth.enabled:
        facts["depth_shapes"] = depth_shapes
    for name, pcoll in facts.items():
        pcoll | f"Save{name}" >> beam.Map(stages.write_json, os.path.join(temp, f"{name}.json"))


# ------------------------------------------------------------------------------ launcher
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
    for name in os.listdir(os.path.join(out_dir, stages.TEMP)):
        with open(os.path.join(out_dir, stages.TEMP, name)) as f:
            facts[name.removesuffix(".json")] = json.load(f)
    return facts


def _write_datasets(out_dir: str, shards: list[dict], depth_maps: bool) -> dict:
    """dataset_info.json and each split's RecordIndex for the shards written; the counts."""
    counts = {}
    for dataset in stages.DATASETS:
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
            images_per_shard: int = stages.IMAGES_PER_SHARD) -> dict:
    """`ipa_jax.data.prepare.prepare` as one Beam pipeline run with `beam_args` (Beam's own
    command-line options, `--runner=...` among them); returns the summary. Each TFRecord shard
    holds about `images_per_shard` images (the examples and their order do not depend on it)."""
    if (done := prepare_lib.begin(raw_dir, out_dir, prep)) is not None:
        return done
    users = prepare_lib.top_users(raw_dir, prep.top_users)
    timestamp_range = (prep.min_timestamp, int(time.time()))
    for dataset in stages.DATASETS:
        os.makedirs(tfds_builder.dataset_dir(out_dir, dataset), exist_ok=True)
    os.makedirs(os.path.join(out_dir, stages.TEMP), exist_ok=True)
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    r, aspect_stats = (retrieval.available_aspects(raw_dir, prep.retrieval)
                       if prep.retrieval.enabled else (prep.retrieval, {}))
    _build(pipeline, raw_dir, out_dir, prep, users, timestamp_range, images_per_shard, r)
    result = pipeline.run()
    result.wait_until_finish()

    facts = _read_facts(out_dir)
    drops = {stage: {} for stage in stages.STAGES} | _counters(result, stages.DROPS)
    prepare_lib.check_read(facts["num_read"], drops["read"], raw_dir)
    prepare_lib.check_after_crawl(facts["num_kept"], raw_dir, facts["crawl"], prep)
    extra = ({} if users is None else
             {"top_users": {"asked": prep.top_users, "selected": len(users)}})
    if prep.depth.enabled:
        shape = (facts["depth_shapes"] or [[len(prep.depth.intervals), 0]])[0]
        drops["depth"], extra["depth"] = depth_data.summary(
            _counters(result, stages.DEPTH_OUTCOMES).get("", {}), prep.depth, raw_dir, shape)
        prepare_lib.check_after_depth(facts["num_after_depth"], raw_dir, drops["depth"])
    else:
        drops.pop("depth", None)
    prepare_lib.write_drops(out_dir, drops)
    plan = facts["plan"]
    prepare_lib.check_nonempty(plan["split_sizes"], plan["num_posts"], out_dir, drops)
    counts = _write_datasets(out_dir, facts["shards"], depth_maps=stages.on_the_fly(prep))
    retrieval_stats = {}
    if prep.retrieval.enabled:  # in user order, as the local path sums them
        retrieval_stats = retrieval.merge_stats([x for _, x in sorted(
            facts["retrieval_stats"], key=lambda x: x[0])])
        retrieval.warn_about(retrieval_stats, r)
        retrieval_stats.update(aspect_stats)
    shutil.rmtree(os.path.join(out_dir, stages.TEMP))
    return prepare_lib.finish(out_dir, raw_dir, prep, num_posts_read=plan["num_posts"],
                              crawl_time=facts["crawl"], drops=drops, counts=counts,
                              pdip_split=plan["pdip_sizes"], retrieval=retrieval_stats,
                              **extra)
