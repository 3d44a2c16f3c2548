# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Annotating a raw dataset folder: every post data_prep would read gets one sidecar per signal.

`annotate` lists the posts with `ipa_jax.data.instagram.read_posts` (the rows it cannot use are
reported, not annotated), and for each signal:
  - skips the posts whose sidecar exists (a finished file: `sidecars.write` renames complete
    files into place), so a rerun after a kill computes only what is missing;
  - reads images on threads while the model runs on the previous batch;
  - counts every image that fails, by reason (unreadable image, image too large, model error,
    bad model output), and keeps going; a batch that raises is retried image by image, so one
    bad image does not fail its batch;
  - records in `<raw>/annotations.json` which model and weights wrote the sidecars, with the
    counts, before it starts (status "running") and when it ends ("complete" or "incomplete").
Sidecars of another model are never mixed in silently: a run whose model (its info, library
versions aside) differs from the one recorded stops with an error naming `redo`; `redo`
recomputes every sidecar of a signal (files older than the redo's start count as unfinished
until every image is redone, across kills).
Sidecars that exist without any record (a user's own, the embedded dataset's) are kept and
counted, with a warning.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import json
import os
import time

from absl import logging
from tqdm import tqdm

from ipa_jax import config_lib, images
from ipa_jax.annotate import backends, sidecars
from ipa_jax.data import instagram

SUMMARY_FILE = "annotations.json"
_EXAMPLES = 20  # post ids kept per failure reason


def read_summary(raw_dir: str) -> dict:
    path = os.path.join(raw_dir, SUMMARY_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write_summary(raw_dir: str, summary: dict) -> None:
    sidecars.write(os.path.join(raw_dir, SUMMARY_FILE),
                   json.dumps(summary, indent=2, sort_keys=True).encode())


def _read_image(raw_dir: str, post) -> tuple:
    """(pixels, None) or (None, failure reason)."""
    try:
        return images.read_rgb(os.path.join(raw_dir, post.image_path)), None
    except images.ImageTooLarge:
        return None, "image too large"
    except Exception:  # noqa: BLE001 - any decoder error is the image's, counted by reason
        return None, "unreadable image"


class _Tally:
    """Counts of one signal's run: written, failed by reason (with example post ids)."""

    def __init__(self):
        self.written = 0
        self.failed = collections.Counter()
        self.examples = collections.defaultdict(list)

    def fail(self, post_id: str, reason: str) -> None:
        self.failed[reason] += 1
        if len(self.examples[reason]) < _EXAMPLES:
            self.examples[reason].append(post_id)


def _predict(annotator: backends.Annotator, pixels: list, posts: list, tally: _Tally) -> list:
    """Outputs for `pixels` (None where the model failed on that image, counted)."""
    try:
        return annotator(pixels)
    except Exception as batch_error:  # noqa: BLE001 - retried image by image below
        if len(pixels) == 1:
            tally.fail(posts[0].post_id, f"model error ({type(batch_error).__name__})")
            logging.warning("%s failed on %s: %s", annotator.signal, posts[0].post_id,
                            batch_error)
            return [None]
    return [_predict(annotator, [x], [p], tally)[0] for x, p in zip(pixels, posts, strict=True)]


def _model(info: dict) -> dict:
    """What decides an annotator's outputs: its info without library versions (an upgrade
    does not make a half-annotated folder two models' work)."""
    return {k: v for k, v in info.items() if not k.endswith("_version")}


def _is_finished(path: str, redo_since: int | None) -> bool:
    if not os.path.exists(path):
        return False
    return redo_since is None or os.stat(path).st_mtime_ns >= redo_since


def _start_entry(raw_dir: str, summary: dict, signal: str, annotator, redo: bool,
                 existing: int) -> int | None:
    """Checks the recorded model against `annotator`, records the run; returns redo_since."""
    before = summary.get(signal)
    if redo:
        redo_since = time.time_ns()
    elif before is None:
        redo_since = None
        if existing:
            logging.warning("%s/ already holds %d files that annotate did not write: they are "
                            "kept as they are (redo=%s recomputes them)",
                            sidecars.FOLDERS[signal][0], existing, signal)
    elif _model(before["model"]) != _model(annotator.info):
        raise config_lib.ConfigError(
            f"{raw_dir}/{sidecars.FOLDERS[signal][0]}/ was annotated by {before['model']}; "
            f"annotating with {annotator.info} would mix two models' outputs. Use the same "
            f"model, or redo the signal (--redo={signal}) to recompute every file.")
    else:
        redo_since = before.get("redo_since")
    summary[signal] = {"model": annotator.info, "status": "running",
                       **({"redo_since": redo_since} if redo_since else {}),
                       **({"kept_unrecorded": existing} if before is None and existing else {})}
    _write_summary(raw_dir, summary)
    return redo_since


def _batches(raw_dir: str, todo: list, batch_size: int, pool):
    """(posts, [(pixels, failure)]) per batch; the next batch is read while one is used."""
    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    pending = None
    for i, chunk in enumerate(chunks):
        current = pending or [pool.submit(_read_image, raw_dir, p) for p in chunk]
        if i + 1 < len(chunks):
            pending = [pool.submit(_read_image, raw_dir, p) for p in chunks[i + 1]]
        yield chunk, [f.result() for f in current]


def annotate_signal(raw_dir: str, posts: list, annotator: backends.Annotator, summary: dict, *,
                    redo: bool = False, progress: bool = True, num_threads: int = 4) -> dict:
    """Writes `annotator.signal`'s missing sidecars for `posts`; returns its summary entry."""
    signal, start = annotator.signal, time.time()
    removed = sidecars.remove_partial(raw_dir, signal)
    paths = {p.post_id: sidecars.path_of(raw_dir, signal, p.post_id) for p in posts}
    existing = sum(os.path.exists(path) for path in paths.values())
    redo_since = _start_entry(raw_dir, summary, signal, annotator, redo, existing)
    todo = [p for p in posts if not _is_finished(paths[p.post_id], redo_since)]
    tally = _Tally()
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool, tqdm(
            total=len(todo), desc=signal, disable=not progress, unit="img") as bar:
        for chunk, read in _batches(raw_dir, todo, annotator.batch_size, pool):
            ok = []
            for post, (pixels, why) in zip(chunk, read, strict=True):
                if why is None:
                    ok.append((post, pixels))
                else:
                    tally.fail(post.post_id, why)
            outputs = _predict(annotator, [x for _, x in ok], [p for p, _ in ok], tally) if ok \
                else []
            for (post, pixels), output in zip(ok, outputs, strict=True):
                if output is None:
                    continue
                try:
                    data = sidecars.encode(signal, post.post_id, output, pixels.shape[:2])
                except (ValueError, TypeError, KeyError) as e:
                    tally.fail(post.post_id, "bad model output")
                    logging.warning("%s gave a bad output for %s: %s", signal, post.post_id, e)
                    continue
                sidecars.write(paths[post.post_id], data)
                tally.written += 1
            bar.update(len(chunk))
    seconds = time.time() - start
    entry = {"model": annotator.info, "posts": len(posts), "written": tally.written,
             "already_done": len(posts) - len(todo), "failed": dict(tally.failed),
             "failed_examples": dict(tally.examples), "partial_files_removed": removed,
             "seconds": round(seconds, 2),
             "images_per_second": round(len(todo) / seconds, 2) if todo and seconds else None,
             "status": "incomplete" if tally.failed else "complete",
             "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    if summary[signal].get("kept_unrecorded"):
        entry["kept_unrecorded"] = summary[signal]["kept_unrecorded"]
    if redo_since and tally.failed:  # an image that failed may still hold the old model's file
        entry["redo_since"] = redo_since
    summary[signal] = entry
    _write_summary(raw_dir, summary)
    return entry


def annotate(raw_dir: str, annotators: list[backends.Annotator], *, redo=(),
             users: frozenset[str] | None = None, progress: bool = True) -> dict:
    """Annotates every post of `raw_dir` (of `users`, when given) with each annotator in turn;
    returns the whole summary (also in `<raw>/annotations.json`)."""
    posts, not_read = instagram.read_posts(raw_dir, check_images=False, progress=progress,
                                           users=users)
    summary = read_summary(raw_dir)
    summary["posts_not_annotated"] = dict(not_read)
    for annotator in annotators:
        annotate_signal(raw_dir, posts, annotator, summary, redo=annotator.signal in redo,
                        progress=progress)
    report(summary, [a.signal for a in annotators])
    return summary


def report(summary: dict, signals) -> None:
    """Logs what was written and every failure, by reason."""
    if summary.get("posts_not_annotated"):
        logging.warning("rows the dataset reader could not use (not annotated): %s",
                        summary["posts_not_annotated"])
    for signal in signals:
        e = summary[signal]
        logging.info("%s: %d written, %d already done, %s/s, %s", signal, e["written"],
                     e["already_done"], e["images_per_second"], e["status"])
        for reason, n in e["failed"].items():
            logging.warning("%s: %d images failed (%s), e.g. %s", signal, n, reason,
                            e["failed_examples"][reason][:3])
