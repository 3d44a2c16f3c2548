# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The retrieval branch's data step (Ji et al. 2023): aspects, banks, top-K, `f_ret` per post.

Aspects of every post:
  pose        COCO-17 keypoints from `<raw>/keypoints/<post_id>.json` (COCO results JSON);
  background  a frozen backbone's embedding of the image's background: what the post's mask
              `<raw>/background/<post_id>.png` (8-bit grey, > 127 = background, any size:
              resized to the image, nearest) leaves out, else the boxes of its people's
              keypoints (grown by `person_margin`), is filled with the image's mean colour;
  semantic    the text embedding of the post's generated caption `<raw>/captions/<post_id>.txt`
              (`ipa_jax.data.captions`; `caption_encoder`), the paper's S_c; a dataset without
              captions uses the backbone's embedding of the whole image instead, with a warning
              (`semantic_source`: auto | captions | image).
Either embedding can instead come from the user's own vectors (`*_vectors`: an npz with
`post_id` and `vectors`, or a parquet file with `post_id` and `vector` columns).
Banks hold the training-split posts of each user; `ipa_jax.retrieval.retrieve` does the rest.

A dataset without any keypoints file (real photos before annotation) has no pose signal at all:
`available_aspects` says so once, loudly, and sets w_pose to 0 with w_background and
w_semantic scaled to sum to 1 (the weights used go into summary.json), rather than letting
S_p be 0 for every pair while still weighing it.
"""

from __future__ import annotations

import functools
import os

import ml_collections
import numpy as np
from absl import logging

from ipa_jax import config_lib, features
from ipa_jax.data import captions as captions_lib
from ipa_jax.data import instagram
from ipa_jax.retrieval import pose
from ipa_jax.retrieval import retrieve as retrieve_lib


def person_boxes(people, margin: float) -> np.ndarray:
    """Pixel boxes [M, 4] (y0, x0, y1, x1) around each person's visible keypoints."""
    boxes = []
    for kp in people:
        visible = kp[kp[:, 2] > 0]
        if len(visible):
            (x0, y0), (x1, y1) = visible[:, :2].min(0), visible[:, :2].max(0)
            dy, dx = (y1 - y0) * margin + 2, (x1 - x0) * margin + 2
            boxes.append((y0 - dy, x0 - dx, y1 + dy, x1 + dx))
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def read_user_vectors(path: str, post_ids) -> np.ndarray:
    """The user's own vectors for `post_ids`, from an npz or a parquet file keyed by post id."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq  # noqa: PLC0415 - only for parquet input

        table = pq.read_table(path).to_pydict()
        ids, vectors = table["post_id"], np.asarray(table["vector"], np.float32)
    else:
        with np.load(path) as data:
            ids, vectors = data["post_id"].astype(str), data["vectors"].astype(np.float32)
    row = {p: i for i, p in enumerate(ids)}
    missing = [p for p in post_ids if p not in row]
    if missing:
        raise ValueError(f"{path} has no vector for {len(missing)} posts, e.g. {missing[:3]}")
    return vectors[[row[p] for p in post_ids]]


def people_of(raw_dir: str, post_id: str) -> list[np.ndarray]:
    """The post's people: its COCO-17 keypoints file's persons ([] when it has none)."""
    return pose.read_keypoints(os.path.join(raw_dir, "keypoints", f"{post_id}.json"))


def embedding_spec(r: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(backbone=r.backbone, init_from=r.init_from,
                                          seed=r.seed))


def background_masks(raw_dir: str, posts) -> list[str]:
    """Each post's background mask file (`<raw>/background/<post_id>.png`), "" when none."""
    paths = [os.path.join(raw_dir, "background", f"{p.post_id}.png") for p in posts]
    return [path if os.path.isfile(path) else "" for path in paths]


def embed(aspect: str, raw_dir: str, posts, boxes, r: ml_collections.ConfigDict, *,
          progress: bool = False, embedder=None, masks=None) -> np.ndarray:
    """[N, D] `aspect` embeddings of `posts` (boxes: what to mask, per post): the user's own
    vectors when `r.<aspect>_vectors` names them, else the frozen backbone's (`embedder`: a
    `features.file_embedder` of `embedding_spec(r)` to reuse). Every row depends on its own
    post only (batches are padded to one size), so any batching gives the same rows. masks:
    the background aspect's `background_masks`, when the caller has them already."""
    if user_path := r[f"{aspect}_vectors"]:
        return read_user_vectors(user_path, [p.post_id for p in posts])
    if aspect == "semantic" and semantic_source(raw_dir, r) == "captions":
        texts = captions_lib.read_captions(raw_dir, [p.post_id for p in posts])
        return captions_lib.embed_captions(texts, r.caption_encoder)
    paths = [os.path.join(raw_dir, p.image_path) for p in posts]
    if masks is None and aspect == "background":
        masks = background_masks(raw_dir, posts)
    return features.embed_files(paths, boxes, embedding_spec(r), resize=r.resize, crop=r.crop,
                                normalize=r.normalize, progress=progress, embedder=embedder,
                                masks=masks)


def _embeddings(aspect, raw_dir, posts, boxes, r, cache_dir, progress, embedder):
    """`embed`, cached under cache_dir by everything that decides the result; `embedder()`
    gives the backbone, built when first needed and shared by the aspects."""
    if r[f"{aspect}_vectors"]:
        return embed(aspect, raw_dir, posts, boxes, r)
    if aspect == "semantic" and semantic_source(raw_dir, r) == "captions":
        texts = captions_lib.read_captions(raw_dir, [p.post_id for p in posts])
        key = features.cache_key("captions", r.caption_encoder, texts)
        return features.cached_array(os.path.join(cache_dir, f"captions-{key}.npz"),
                                     lambda: embed(aspect, raw_dir, posts, boxes, r))
    paths = [os.path.join(raw_dir, p.image_path) for p in posts]
    masks = background_masks(raw_dir, posts) if aspect == "background" else None
    stats = [(m, os.stat(m).st_size, os.stat(m).st_mtime_ns) if m else ""
             for m in masks or []]
    key = features.cache_key(aspect, embedding_spec(r).to_dict(), r.resize, r.crop,
                             r.normalize, paths, [b.tolist() for b in boxes], *(
                                 [stats] if any(stats) else []))
    return features.cached_array(
        os.path.join(cache_dir, f"{aspect}-{r.backbone}-{key}.npz"),
        lambda: embed(aspect, raw_dir, posts, boxes, r, progress=progress, embedder=embedder(),
                      masks=masks))


def config_of(r: ml_collections.ConfigDict) -> retrieve_lib.RetrievalConfig:
    return retrieve_lib.RetrievalConfig(
        k=r.k, w_pose=r.w_pose, w_background=r.w_background, w_semantic=r.w_semantic,
        cosine=r.cosine, window_days=r.window_days, mode=r.mode, min_bank_size=r.min_bank_size,
        exact_threshold=r.exact_threshold, candidates=r.candidates, min_recall=r.min_recall,
        recall_sample=r.recall_sample, seed=r.seed)


def retrieve(posts, group_ids, in_bank, background, semantic, people,
             r: ml_collections.ConfigDict, raw_dir: str):
    """(f_ret [N, K, 5], retrieved [N, K] rows of `posts` or -1, stats) from the aspects."""
    f_ret, retrieved, stats = retrieve_lib.retrieve(
        post_ids=[p.post_id for p in posts], users=[p.user for p in posts],
        likes=np.array([p.likes for p in posts], np.float64),
        timestamps=np.array([p.timestamp for p in posts], np.int64),
        group_ids=group_ids, in_bank=np.asarray(in_bank, bool), background=background,
        semantic=semantic, keypoints=people, config=config_of(r))
    stats["posts_with_people"] = int(sum(len(kp) > 0 for kp in people))
    stats["posts_with_background_mask"] = sum(map(bool, background_masks(raw_dir, posts)))
    if semantic_source(raw_dir, r) == "captions" and not r.semantic_vectors:
        stats["posts_without_caption"] = sum(
            c is None for c in captions_lib.read_captions(raw_dir, [p.post_id for p in posts]))
    return f_ret, retrieved, stats


def merge_stats(parts: list[dict]) -> dict:
    """The stats of one `retrieve` over all posts, from those of disjoint per_user parts (each
    user's bank and queries in one part): counts add up, recall is the mean over every
    sampled query, candidates the largest."""
    if len(parts) == 1:  # one retrieval over all posts (fallback, cross_user): as it is
        return dict(parts[0])
    sampled = sum(x["num_recall_queries"] for x in parts)
    out = {key: sum(x[key] for x in parts) for key in parts[0]
           if key not in ("recall", "candidates")}
    out["candidates"] = max(x["candidates"] for x in parts)
    unchecked = any(x["recall"] is None for x in parts)
    recall = (sum(x["recall"] * x["num_recall_queries"] for x in parts) / sampled if sampled
              else 1.0)
    out["recall"] = None if unchecked else recall
    return out


def warn_about(stats: dict, r: ml_collections.ConfigDict) -> None:
    """Logs what a user should know about a retrieval's stats (defaults, recall, empty slots)."""
    if stats["num_no_neighbours"]:
        logging.warning("%d retrieved slots hold a post with no bank neighbour within %g days: "
                        "their local popularity is the default 1.0", stats["num_no_neighbours"],
                        r.window_days)
    if stats["recall"] is not None and stats["recall"] < r.min_recall:
        logging.warning("ScaNN recall of the exact top K by W is %.4f < min_recall %g even with "
                        "the whole index as candidates", stats["recall"], r.min_recall)
    elif stats["recall"] is None:
        logging.warning("ScaNN results were not checked (recall_sample = 0): the top K by W may "
                        "miss posts")
    if stats.get("posts_without_caption"):
        logging.warning("%d posts have no caption file (captions/<post_id>.txt): their semantic "
                        "embedding is zero, so S_c = 0 against every post",
                        stats["posts_without_caption"])
    if stats["num_empty_slots"]:
        logging.warning("%d retrieval slots are empty (zero rows): banks too small for K=%d",
                        stats["num_empty_slots"], r.k)


def compute(raw_dir: str, posts, group_of: dict, train_groups: set,
            r: ml_collections.ConfigDict, cache_dir: str, *, progress: bool = True):
    """(f_ret [N, K, 5], retrieved [N, K] row indices or -1, stats) for every post; the
    aspects the dataset lacks are left out (`available_aspects`)."""
    r, aspect_stats = available_aspects(raw_dir, r)
    people = [people_of(raw_dir, p.post_id) for p in posts]
    boxes = [person_boxes(kp, r.person_margin) for kp in people]
    no_mask = [np.zeros((0, 4), np.float32)] * len(posts)
    embedder = functools.cache(
        lambda: features.file_embedder(embedding_spec(r), r.crop, r.normalize))
    background = _embeddings("background", raw_dir, posts, boxes, r, cache_dir, progress,
                             embedder)
    semantic = _embeddings("semantic", raw_dir, posts, no_mask, r, cache_dir, progress, embedder)
    group_ids = group_ids_of(posts, group_of)
    f_ret, retrieved, stats = retrieve(posts, group_ids, [g in train_groups for g in group_ids],
                                       background, semantic, people, r, raw_dir)
    warn_about(stats, r)
    return f_ret, retrieved, {**stats, **aspect_stats}


def semantic_source(raw_dir: str, r: ml_collections.ConfigDict) -> str:
    """"captions" or "image": what the semantic aspect embeds (`r.semantic_source`; auto =
    captions when `<raw>/captions/` has any)."""
    if r.semantic_source == "auto":
        return "captions" if captions_lib.has_captions(raw_dir) else "image"
    return r.semantic_source


def _resolve_semantic(raw_dir: str, r: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """r with semantic_source "captions" or "image" (never auto), warning once when a dataset
    without captions falls back to the image embedding."""
    source = semantic_source(raw_dir, r)
    if source == "captions" and not captions_lib.has_captions(raw_dir) and not r.semantic_vectors:
        raise config_lib.DataError(
            f"config.prep.retrieval.semantic_source='captions' but {raw_dir}/captions/ holds no "
            "caption (.txt) files: annotate them (python -m data_prep.annotate "
            "--what=captions), or use semantic_source='auto' or 'image'.")
    if r.semantic_source == "auto" and source == "image" and not r.semantic_vectors:
        logging.warning(
            "%s has no captions/*.txt: the semantic aspect S_c uses the frozen backbone's "
            "embedding of the whole image instead of the paper's generated-caption text "
            "embedding. Annotate captions (python -m data_prep.annotate --what=captions) to "
            "use them.", raw_dir)
    if source != r.semantic_source:
        r = ml_collections.ConfigDict(r.to_dict())
        r.semantic_source = source
    return r


def available_aspects(raw_dir: str, r: ml_collections.ConfigDict
                      ) -> tuple[ml_collections.ConfigDict, dict]:
    """(the retrieval settings to use, their stats) given the signals the dataset has: without
    a single `<raw>/keypoints/*.json`, pose is missing; its weight goes to 0 and the others are
    scaled to sum to 1, with one warning. The semantic source is resolved (`semantic_source`).
    Stats: `missing_aspects`, the `weights` used and the `semantic_source`."""
    r = _resolve_semantic(raw_dir, r)
    weights = {"pose": r.w_pose, "background": r.w_background, "semantic": r.w_semantic}
    missing = [] if instagram.has_sidecar_files(raw_dir, "keypoints", ".json") else ["pose"]
    lost = sum(weights[a] for a in missing)
    if lost:
        kept = sum(w for a, w in weights.items() if a not in missing)
        if kept <= 0:
            raise config_lib.DataError(
                f"config.prep.retrieval weighs only {missing} ({weights}), which {raw_dir} has "
                "no data for (no keypoints/*.json); give the other aspects weight, or annotate "
                "the photos first.")
        weights = {a: 0.0 if a in missing else w / kept for a, w in weights.items()}
        logging.warning(
            "%s has no keypoints/*.json: the pose aspect is missing for every post, so "
            "w_pose=%g is set to 0 and the other weights scaled to sum to 1: %s. Annotate the "
            "photos (COCO keypoint results per post) to use pose.", raw_dir, r.w_pose, weights)
        r = ml_collections.ConfigDict(r.to_dict())
        r.w_pose, r.w_background, r.w_semantic = (weights[a] for a in ("pose", "background",
                                                                        "semantic"))
    return r, {"missing_aspects": missing, "weights": weights,
               "semantic_source": "vectors" if r.semantic_vectors else r.semantic_source}


def group_ids_of(posts, group_of: dict) -> list[str]:
    """Each post's group id; a post in no group is a group of its own."""
    return [group_of.get(p.post_id, f"solo:{p.post_id}") for p in posts]
