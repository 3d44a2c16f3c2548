# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Scoring drafts with the retrieval-augmented model against a creator's own history.

Ji et al.'s full model scores an image from its pixels, its depth (the 3D-aware branch) and
`f_ret`: the K posts of the same creator's memory bank most similar to it, with their local
popularity. `HistoryScorer` builds all of them for new images with data_prep's own code, so a
draft scored here gets the features a test post of the prepared data gets:

  the image     `prepare.encode_image` (the stored bytes) and the evaluation centre crop;
  depth         the draft's depth map (`<sidecars>/depth/<stem>.png`, as data_prep reads them)
                through the frozen depth backbone (`data.depth.compute_features`), or, for a
                model trained with depth on the fly, the map cropped with the image;
  f_ret         the history's posts are the bank, the drafts queries outside it, exactly like
                validation and test posts (`data.retrieval.embed`, `people_of`, `person_boxes`,
                `retrieval.retrieve.retrieve` in per_user mode): background and semantic
                embeddings (captions when the model used them), keypoints, local popularity.

History (`read_history`): an Instagram-format folder (the dataset's layout, with its sidecar
folders; `user=` picks one creator when it holds several), or a CSV with the columns `image`
(a path, relative to the CSV's folder), `likes` and `timestamp` (seconds since the epoch, or
an ISO 8601 date), and optionally `post_id` (default: the image's file name without its
extension). A CSV post's sidecars are `<sidecars>/keypoints/<post_id>.json`,
`background/<post_id>.png` and `captions/<post_id>.txt`, `<sidecars>` being the CSV's folder
unless given. Rows that cannot be used are counted by reason and reported, never dropped
silently. Drafts' sidecars are found by file name without extension in `sidecar_dir` (default:
each draft's own folder); `annotators` (`ipa-score --annotate=depth,...`) write the missing ones
there first, with the code of `python -m data_prep.annotate` (the same files and
`annotations.json`).

Without history, the model scores with an empty memory bank: every `f_ret` row is padding,
which the aggregation block masks out (what a creator with no past posts gets), so the scores
come from the image and its depth alone; `fallback_notice` says so.

The retrieval weights are those the model was trained with (recorded in its model card by
training: the pose weight is 0 when the training data had no keypoints); a model card without
them falls back to the history's own sidecars (`data.retrieval.available_aspects`).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import os
import sys
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from ipa_jax import images, model_card, pretrained, scoring, tasks
from ipa_jax.data import instagram

CREATOR = "creator"  # the one user of a history scoring: per_user retrieval over its bank
Skipped = list[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class PostSet:
    """Posts whose image paths are absolute and whose sidecars live under `root`."""

    root: str
    posts: tuple[instagram.Post, ...]


def _post(post_id: str, path: str, likes: int = 0, timestamp: int = 0) -> instagram.Post:
    return instagram.Post(post_id=post_id, user=CREATOR, timestamp=timestamp, likes=likes,
                          caption="", typename="GraphImage", is_video=False,
                          image_paths=(os.path.abspath(path),))


def _timestamp(text: str) -> int:
    """Seconds since the epoch of an integer or an ISO 8601 date (UTC unless it says)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp())


def _csv_history(path: str, sidecar_dir: str | None) -> tuple[PostSet, collections.Counter]:
    folder = os.path.dirname(os.path.abspath(path))
    skipped, posts, seen = collections.Counter(), [], set()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"image", "likes", "timestamp"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"history CSV {path} lacks the columns {sorted(missing)}; it needs "
                             "image, likes, timestamp (and optionally post_id)")
        for row in reader:
            image = os.path.join(folder, (row["image"] or "").strip())
            post_id = (row.get("post_id") or "").strip() or os.path.splitext(
                os.path.basename(image))[0]
            try:
                likes, timestamp = int(row["likes"]), _timestamp(row["timestamp"] or "")
            except (TypeError, ValueError):
                skipped["bad likes or timestamp"] += 1
                continue
            if likes < 0:
                skipped["bad likes or timestamp"] += 1
            elif not os.path.isfile(image):
                skipped["missing image file"] += 1
            elif post_id in seen:
                skipped["duplicate post_id"] += 1
            else:
                seen.add(post_id)
                posts.append(_post(post_id, image, likes, timestamp))
    return PostSet(os.path.abspath(sidecar_dir or folder), tuple(posts)), skipped


def _instagram_history(root: str, user: str | None) -> tuple[PostSet, collections.Counter]:
    posts, skipped = instagram.read_posts(root, progress=False,
                                          users=frozenset([user]) if user else None)
    users = sorted({p.user for p in posts})
    if len(users) > 1:
        raise ValueError(f"{root} holds the posts of {len(users)} creators ({users[:5]}...): "
                         "pick one (--user=NAME)")
    posts = [dataclasses.replace(p, user=CREATOR, image_paths=(
        os.path.abspath(os.path.join(root, p.image_path)),)) for p in posts]
    if user:  # the other creators' rows are not skipped posts of this one
        skipped.pop(instagram.NOT_A_TOP_USER, None)
    return PostSet(os.path.abspath(root), tuple(posts)), skipped


def read_history(path: str, *, user: str | None = None, sidecar_dir: str | None = None
                 ) -> tuple[PostSet, collections.Counter]:
    """(the creator's posts, rows skipped by reason) of an Instagram-format folder or a CSV."""
    if os.path.isdir(path):
        history, skipped = _instagram_history(path, user)
    elif os.path.isfile(path):
        history, skipped = _csv_history(path, sidecar_dir)
    else:
        raise ValueError(f"history {path!r} is neither an Instagram-format folder nor a CSV file")
    if not history.posts:
        raise ValueError(f"history {path} has no usable post (skipped: {dict(skipped)})")
    return history, skipped


def fallback_notice(model: str) -> str:
    return (f"{model} is the retrieval-augmented model; no --history was given, so it scores "
            "with an empty memory bank (every retrieved row is padding, as for a creator with no "
            "past posts): the scores come from each image and its depth alone. Pass "
            "--history=<the creator's Instagram-format folder or CSV of image,likes,timestamp> "
            "to rank drafts against that creator's own posts.")


@dataclasses.dataclass(frozen=True)
class Draft:
    path: str
    stored: bytes  # the image as data preparation stores it


@dataclasses.dataclass(frozen=True)
class DraftInputs:
    """What the model reads for N images: uint8 crops [N, S, S, 3], f_ret [N, K, 5] and the
    depth features [N, M, F] (or, for a model trained with depth on the fly, the maps cropped
    with the images [N, S, S])."""

    paths: list[str]
    images: np.ndarray
    f_ret: np.ndarray
    second: np.ndarray


class HistoryScorer:
    """A trained retrieval-augmented model (a workdir with `config.fusion`) and what it needs
    to score new images: `score(paths, history=...)`."""

    def __init__(self, workdir: str):
        config, variables, _ = pretrained.load_workdir(workdir)
        if config.get("fusion") is None:
            raise ValueError(f"{workdir} is not a retrieval-augmented model (no config.fusion)")
        self.workdir, self.config = workdir, config
        self.card = model_card.read(workdir)
        self.objective = str(config.get("loss", ""))
        self.spec = scoring.InputSpec(size=config.input.crop_size, resize="crop",
                                      resize_short_side=config.input.resize_short_side,
                                      normalize=config.input.normalize)
        r, d = config.prep.retrieval, config.prep.depth
        for aspect in ("background", "semantic"):
            if r.get(f"{aspect}_vectors"):
                raise ValueError(
                    f"{workdir} was trained on your own {aspect} vectors "
                    f"(prep.retrieval.{aspect}_vectors): new drafts have none, so their f_ret "
                    "cannot be computed here")
        self.use_retrieval = bool(config.fusion.use_retrieval)
        self.use_depth = bool(config.fusion.use_depth and d.enabled)
        self.on_the_fly = self.use_depth and d.mode == "on_the_fly"
        self.history: PostSet | None = None  # `use_history`
        self.history_skipped: collections.Counter = collections.Counter()
        self.params = variables["params"]
        self.model_state = {k: v for k, v in variables.items() if k != "params"}
        self._tasks, self._embedders, self._bank_aspects = {}, {}, {}

    def use_history(self, path: str, *, user: str | None = None,
                    sidecar_dir: str | None = None) -> HistoryScorer:
        """Makes `read_history(path)` the memory bank of every later `score`; returns self."""
        self.history, self.history_skipped = read_history(path, user=user,
                                                          sidecar_dir=sidecar_dir)
        return self

    # ---- the pieces, each data_prep's own code
    def retrieval_settings(self, history: PostSet | None) -> ml_collections.ConfigDict:
        """config.prep.retrieval with the weights and semantic source the model was trained
        with (its card), per_user over the creator's bank."""
        from ipa_jax.data import retrieval as data_retrieval  # noqa: PLC0415

        r = ml_collections.ConfigDict(self.config.prep.retrieval.to_dict())
        used = ((self.card or {}).get("trained_on") or {}).get("retrieval")
        if used:
            w = used["weights"]
            r.w_pose, r.w_background, r.w_semantic = w["pose"], w["background"], w["semantic"]
            r.semantic_source = used["semantic_source"]
        elif history is not None:
            r, _ = data_retrieval.available_aspects(history.root, r)
        r.mode = "per_user"
        return r

    def _aspects(self, posts: PostSet, r, embedder):
        """(background [N, Db], semantic [N, Dc], people) of `posts`, as data_prep computes
        them (`data.retrieval.compute`)."""
        from ipa_jax.data import retrieval as data_retrieval  # noqa: PLC0415

        people = [data_retrieval.people_of(posts.root, p.post_id) for p in posts.posts]
        boxes = [data_retrieval.person_boxes(kp, r.person_margin) for kp in people]
        no_mask = [np.zeros((0, 4), np.float32)] * len(people)
        background = data_retrieval.embed("background", posts.root, posts.posts, boxes, r,
                                          embedder=embedder)
        semantic = data_retrieval.embed("semantic", posts.root, posts.posts, no_mask, r,
                                        embedder=embedder)
        return background, semantic, people

    def f_ret(self, drafts: list[PostSet], history: PostSet | None, notes: list[str]
              ) -> np.ndarray:
        """[N, K, 5] retrieval features of the drafts (in order) from `history`'s bank."""
        k = self.config.prep.retrieval.k
        n = sum(len(s.posts) for s in drafts)
        if not self.use_retrieval or history is None:
            return np.zeros((n, k, 5), np.float32)
        from ipa_jax import features  # noqa: PLC0415
        from ipa_jax.data import captions as captions_lib  # noqa: PLC0415
        from ipa_jax.data import retrieval as data_retrieval  # noqa: PLC0415
        from ipa_jax.retrieval import retrieve as retrieve_lib  # noqa: PLC0415

        r = self.retrieval_settings(history)
        key = (data_retrieval.embedding_spec(r).to_json(), r.crop, r.normalize)
        if key not in self._embedders:  # built (and compiled) once per scorer
            self._embedders[key] = features.file_embedder(data_retrieval.embedding_spec(r),
                                                          r.crop, r.normalize)
        backbone = self._embedders[key]
        sets = [history, *drafts]
        bank_key = (history, r.to_json())  # the history's aspects, once per bank and settings
        if bank_key not in self._bank_aspects:
            self._bank_aspects = {bank_key: self._aspects(history, r, backbone)}
        parts = [self._bank_aspects[bank_key], *(self._aspects(s, r, backbone) for s in drafts)]
        posts = [p for s in sets for p in s.posts]
        in_bank = np.arange(len(posts)) < len(history.posts)
        f_ret, _, stats = retrieve_lib.retrieve(
            # a draft that is also a history post (the same file name) never retrieves itself:
            # its own likes would leak into its score
            post_ids=[p.post_id for p in posts],
            users=[CREATOR] * len(posts), likes=np.array([p.likes for p in posts], np.float64),
            timestamps=np.array([p.timestamp for p in posts], np.int64),
            group_ids=[f"g{i}" for i in range(len(posts))], in_bank=in_bank,
            background=np.concatenate([b for b, _, _ in parts]),
            semantic=np.concatenate([c for _, c, _ in parts]),
            keypoints=[kp for _, _, people in parts for kp in people],
            config=data_retrieval.config_of(r), queries=~in_bank)
        if r.semantic_source == "captions":
            for s in sets:
                absent = sum(c is None for c in captions_lib.read_captions(
                    s.root, [p.post_id for p in s.posts]))
                if absent:
                    what = "history posts" if s is history else "drafts"
                    notes.append(f"{absent} of {len(s.posts)} {what} have no caption in "
                                 f"{s.root}/captions/: their S_c is 0 (annotate captions)")
        if r.w_pose and not any(people for _, _, people in parts[1:] for people in people):
            notes.append("no draft shows a person by its keypoints sidecar: S_p = 0 for every "
                         "draft (annotate keypoints to use pose)")
        if stats["num_empty_slots"]:
            notes.append(f"the history has {len(history.posts)} posts: "
                         f"{stats['num_empty_slots']} of the drafts' {n * k} retrieval rows "
                         "are empty")
        return f_ret[~in_bank]

    def _depth(self, drafts: list[PostSet], stored: dict[str, bytes], skipped: Skipped,
               notes: list[str]):
        """(per kept draft: depth features [M, F], or its encoded map on the fly; kept [N]
        bool over the drafts in order). `stored`: image path -> the stored image bytes."""
        d = ml_collections.ConfigDict(self.config.prep.depth.to_dict())
        d.depth_dir = ""  # each set's own <root>/depth
        m = len(d.intervals)
        posts = [(s, p) for s in drafts for p in s.posts]
        if not self.use_depth:
            return np.zeros((len(posts), m, 0), np.float32), np.ones(len(posts), bool)
        from ipa_jax.data import depth as depth_data  # noqa: PLC0415

        usable, maps, kept, constant = [], [], [], 0
        for s in drafts:
            for post in s.posts:
                d01, outcome = depth_data.map_for_image(os.path.join(s.root, "depth"),
                                                        post.post_id, post.image_path, d)
                kept.append(d01 is not None)
                if d01 is None:
                    skipped.append((post.image_path, f"{outcome}: no usable "
                                    f"{s.root}/depth/{post.post_id}.png (annotate depth)"))
                    continue
                constant += outcome not in (depth_data.OK, depth_data.RESIZED)
                usable.append(post)
                maps.append(d01)
        if self.on_the_fly:  # the map at the stored image's size, as the TFRecords hold it
            out = [depth_data.encode_map(d01, _hw(stored[p.image_path]))
                   for p, d01 in zip(usable, maps, strict=True)]
        else:  # the frozen backbone on the centre crops, in batches (data_prep's own step)
            out = list(depth_data.features_of(d, [p.image_path for p in usable], maps)) \
                if usable else []
        if constant:
            notes.append(f"{constant} drafts have no usable depth map: scored with a constant "
                         f"map of {d.constant_value} (prep.depth.missing='constant')")
        return out, np.asarray(kept, bool)

    def _compiled(self, f_shape, depth_shape):
        """(task, jitted score, jitted Grad-CAM) for these f_ret and depth shapes, built once."""
        key = (tuple(f_shape), tuple(depth_shape))
        if key not in self._tasks:
            from ipa_jax import gradcam  # noqa: PLC0415

            task = tasks.ImagePairs(self.config, None, {}, None, aux_shapes={
                "f_ret": key[0], "depth": key[1]})

            def heat(params, model_state, images, f_ret, second):
                variables, inputs = task.eval_inputs(params, model_state, images, f_ret, second)
                return gradcam.cams(task.model, variables, *inputs, full_size=True)

            self._tasks[key] = (task, jax.jit(task.score), jax.jit(heat))
        return self._tasks[key]

    # ---- scoring
    def inputs(self, paths: Sequence[str], *, history: PostSet | str | None = None,
               sidecar_dir: str | None = None, max_pixels: int = images.MAX_PIXELS,
               notes: list[str] | None = None, annotators: Sequence = ()
               ) -> tuple[DraftInputs, Skipped]:
        """What the model reads for each usable image file, and [(path, reason)] skipped
        (see `score` for the arguments)."""
        from ipa_jax import input_pipeline  # noqa: PLC0415
        from ipa_jax import score as score_lib  # noqa: PLC0415 - score imports this module
        from ipa_jax.data import prepare  # noqa: PLC0415

        notes = [] if notes is None else notes
        if isinstance(history, (str, os.PathLike)):
            history, _ = read_history(os.fspath(history))
        history = self.history if history is None else history
        if history is None and self.use_retrieval:
            notes.append(fallback_notice(self.workdir))
        skipped: Skipped = []
        readable = []
        for path in paths:
            try:
                with images.open_image(path, max_pixels=max_pixels):
                    pass
                readable.append(Draft(path, prepare.encode_image(
                    path, self.config.prep.store_short_side)))
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                skipped.append((path, f"{type(e).__name__}: {score_lib.error_line(e)}"))
        sets, drafts = [], []
        for root, members in _draft_sets(readable, sidecar_dir, skipped):
            sets.append(PostSet(root, tuple(
                _post(os.path.splitext(os.path.basename(x.path))[0], x.path,
                      timestamp=int(time.time())) for x in members)))
            drafts += members
        for s in sets:
            annotate_missing(s, annotators, notes)
        depth_skipped: Skipped = []
        depth, kept = self._depth(sets, {os.path.abspath(x.path): x.stored for x in drafts},
                                  depth_skipped, notes)
        given = {os.path.abspath(x.path): x.path for x in drafts}  # report paths as given
        skipped += [(given.get(path, path), why) for path, why in depth_skipped]
        keep = iter(kept)
        sets = [dataclasses.replace(s, posts=tuple(p for p in s.posts if next(keep)))
                for s in sets]
        drafts = [x for x, ok in zip(drafts, kept, strict=True) if ok]
        k, m = self.config.prep.retrieval.k, len(self.config.prep.depth.intervals)
        crops, maps = [], []
        for x, d in zip(drafts, depth, strict=True):
            if self.on_the_fly:  # the map is cropped with the image, as evaluation does
                image, d01 = input_pipeline.resize_and_crop_with_depth(
                    input_pipeline.decode_rgb(x.stored), input_pipeline.decode_depth_map(d),
                    short_side=self.spec.resize_short_side, crop=self.spec.size)
                maps.append(np.asarray(d01))
            else:
                image = input_pipeline.decode_and_crop(
                    x.stored, short_side=self.spec.resize_short_side, crop=self.spec.size)
            crops.append(np.asarray(image))
        size = self.spec.size
        if self.on_the_fly:
            second = np.stack(maps) if maps else np.zeros((0, size, size), np.float32)
        else:
            second = np.stack(depth) if drafts else np.zeros((0, m, 0), np.float32)
        return DraftInputs(
            paths=[x.path for x in drafts],
            images=np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
            f_ret=(self.f_ret(sets, history, notes) if drafts
                   else np.zeros((0, k, 5), np.float32)),
            second=second), skipped

    def score(self, paths: Sequence[str], *, history: PostSet | str | None = None,
              sidecar_dir: str | None = None, batch_size: int = 32,
              max_pixels: int = images.MAX_PIXELS, progress: bool = False,
              notes: list[str] | None = None, annotators: Sequence = ()
              ) -> tuple[list[str], np.ndarray, Skipped]:
        """(paths scored, log-scores, [(path, reason)] skipped) of image files.

        history: the memory bank (a `read_history` result or its path; default: the one of
        `use_history`, else none: `fallback_notice`). sidecar_dir: the drafts' sidecars (by
        file stem; default: each draft's folder). notes: a list that receives what the user
        should know (the fallback, missing sidecars). annotators: `ipa_jax.annotate.backends`
        annotators that first write the drafts' missing sidecars (`annotate_missing`)."""
        x, skipped = self.inputs(paths, history=history, sidecar_dir=sidecar_dir,
                                 max_pixels=max_pixels, notes=notes, annotators=annotators)
        return x.paths, self.run(x, batch_size, progress=progress), skipped

    def _depth_shape(self, x: DraftInputs) -> tuple[int, int]:
        return ((len(self.config.prep.depth.intervals), 0) if self.on_the_fly
                else x.second.shape[1:])

    def run(self, x: DraftInputs, batch_size: int = 32, *, progress: bool = False,
            heatmaps: bool = False) -> np.ndarray:
        """Log-scores [N] of `inputs` (or, `heatmaps=True`, their Grad-CAM heatmaps [N, S, S]
        on the backbone's last feature map) in jitted batches of one padded size."""
        if not x.paths:
            return np.zeros((0, *((self.spec.size,) * 2 if heatmaps else ())), np.float32)
        _, score, heat = self._compiled(x.f_ret.shape[1:], self._depth_shape(x))
        fn = heat if heatmaps else score
        size = max(1, min(batch_size, len(x.paths)))
        params, state = jax.device_put(self.params), jax.device_put(self.model_state)
        out = []
        for start in tqdm(range(0, len(x.paths), size), disable=not progress, file=sys.stderr,
                          unit="batch"):
            n = min(size, len(x.paths) - start)
            batch = [_pad(a[start:start + n], size) for a in (x.images, x.f_ret, x.second)]
            out.append(np.asarray(fn(params, state, *batch))[:n])
        return np.concatenate(out)


def annotate_missing(posts: PostSet, annotators: Sequence, notes: list[str]) -> None:
    """Writes the sidecars `posts` lack under `posts.root` with each annotator
    (`ipa_jax.annotate.runner`, as `python -m data_prep.annotate` does: files already there are
    kept, `annotations.json` records the model, failures are counted); failures go to `notes`."""
    if not annotators:
        return
    from ipa_jax.annotate import runner  # noqa: PLC0415

    for annotator in annotators:
        entry = runner.annotate_signal(posts.root, list(posts.posts), annotator,
                                       runner.read_summary(posts.root), progress=False)
        for reason, n in entry["failed"].items():
            notes.append(f"{annotator.signal}: {n} drafts could not be annotated ({reason}), "
                         f"e.g. {entry['failed_examples'][reason][:3]}")


def _hw(encoded: bytes) -> tuple[int, int]:
    with images.open_image(encoded) as im:
        return im.height, im.width


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)]) \
        if len(x) < size else x


def _draft_sets(drafts: list[Draft], sidecar_dir: str | None, skipped: Skipped):
    """[(sidecar root, drafts)]: each draft's sidecars by its file stem under `sidecar_dir`
    (default: its own folder); a second draft of the same stem under one root is skipped."""
    groups: dict[str, list[Draft]] = {}
    stems: dict[str, set] = collections.defaultdict(set)
    for x in drafts:
        root = os.path.abspath(sidecar_dir or os.path.dirname(os.path.abspath(x.path)))
        stem = os.path.splitext(os.path.basename(x.path))[0]
        if stem in stems[root]:
            skipped.append((x.path, f"another draft is named {stem} too: their sidecars "
                                    f"({root}/depth/{stem}.png, ...) would be shared"))
            continue
        stems[root].add(stem)
        groups.setdefault(root, []).append(x)
    return list(groups.items())
