# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Grouped evaluation: score every image of a split once, join with the manifests, measure.

Only post indices and scores travel through the devices; likes, group ids and post ids come
from the manifests data_prep wrote, so per-group metrics are exact on any number of hosts.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from ipa_jax import input_pipeline, metrics


class Manifest:
    """The posts of a prepared dataset and their split and group in one builder config.

    With `pairs="images"` (single images) a post's group is its user, so the pairwise metrics
    compare each creator's posts with each other.
    """

    def __init__(self, prepared_dir: str, pairs: str):
        rows = _read_csv(os.path.join(prepared_dir, "posts.csv"))
        self.post_id = np.array([r["post_id"] for r in rows])
        self.likes = np.array([float(r["likes"]) for r in rows])
        self.comments = np.array([float(r["comments"]) for r in rows])
        self.image_path = np.array([r["image_path"] for r in rows])
        index = {p: i for i, p in enumerate(self.post_id)}
        self.group_id = np.full(len(rows), "", dtype=object)
        self.split = np.full(len(rows), "", dtype=object)
        for r in _read_csv(os.path.join(prepared_dir, f"{pairs}.csv")):
            if pairs == "pdips":
                members, group = (r["post_a"], r["post_b"]), r["pair_id"]
            else:
                members, group = (r["post_id"],), r.get("group_id", r["user"])
            for post in members:
                self.group_id[index[post]], self.split[index[post]] = group, r["split"]

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def _read_csv(path: str) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def read_oracle_scores(raw_dir: str, manifest: Manifest) -> np.ndarray | None:
    """Planted expected log-likes per post (embedded dataset only), else None."""
    path = os.path.join(raw_dir, "planted_truth.csv")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        truth = {r["post_id"]: float(r["expected_log_likes"]) for r in csv.DictReader(f)}
    return np.array([truth.get(p, np.nan) for p in manifest.post_id])


def retrieval_only_scores(f_ret: np.ndarray) -> np.ndarray:
    """Log-scores of the retrieval-only scorer: ln of the W-weighted mean local popularity.

    `f_ret` [N, K, 5] rows are [p_r, W, S_b, S_p, S_c]; empty rows have W = 0. A post with no
    retrieved neighbour scores ln(1) = 0, the local-popularity of an average post.
    """
    p, w = f_ret[..., 0].astype(np.float64), f_ret[..., 1].astype(np.float64)
    total = w.sum(-1)
    mean = np.divide((w * p).sum(-1), total, out=np.ones_like(total), where=total > 0)
    return np.log(np.maximum(mean, 1e-12))


def read_retrieval(prepared_dir: str) -> np.ndarray | None:
    """`f_ret` [N posts, K, 5] when the data was prepared with retrieval features, else None."""
    path = os.path.join(prepared_dir, "retrieval.npz")
    if not os.path.exists(path):
        return None
    with np.load(path) as data:
        return data["f_ret"]


def split_metrics(scores: np.ndarray, manifest: Manifest, rows: np.ndarray) -> dict:
    """Built-in metrics of `scores` (log-scores of the posts `rows`) over their groups."""
    return metrics.evaluate(scores.astype(np.float64), manifest.likes[rows],
                            manifest.group_id[rows].astype(str))


class Evaluator:
    """Runs a jitted `apply_fn(state, inputs) -> [N, ...]` over every example of a split once.

    `dataset_fn(split)` yields this host's batches of {'input', 'post_index'} (and the
    `extra_keys`, which travel to the devices too: `apply_fn(state, inputs, *extras)`);
    `count_fn(split)` is how many examples this host holds.
    """

    def __init__(self, dataset_fn: Callable, count_fn: Callable, apply_fn: Callable,
                 to_global: Callable, global_batch: int, extra_keys: tuple = ()):
        self._extra_keys = tuple(extra_keys)
        self._dataset_fn, self._count_fn = dataset_fn, count_fn
        self._apply_fn, self._to_global = apply_fn, to_global
        self._local_batch = global_batch // jax.process_count()
        self._num_batches = {}

    def _batches_for(self, split: str) -> int:
        """Batches every host runs for `split`: the most any host needs (all step together)."""
        if split not in self._num_batches:
            local = math.ceil(self._count_fn(split) / self._local_batch)
            self._num_batches[split] = int(np.max(multihost_utils.process_allgather(
                np.array(local))))
        return self._num_batches[split]

    def predict(self, state, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns (post_index, output) for every example of `split`, sorted by post index."""
        batches = self._dataset_fn(split)
        it = batches.as_numpy_iterator()
        keys = ("input", "post_index", *self._extra_keys)  # what travels to the devices
        spec = batches.element_spec
        empty = {k: np.zeros((0, *spec[k].shape[1:]), spec[k].dtype.as_numpy_dtype)
                 for k in keys}
        indices, outputs = [], []
        for _ in range(self._batches_for(split)):
            # A host that has run out keeps stepping with padding: all hosts step together.
            batch = next(it, empty)
            batch = input_pipeline.pad_batch({k: batch[k] for k in keys}, self._local_batch)
            glob = self._to_global(batch)
            out = self._apply_fn(state, glob["input"], *(glob[k] for k in self._extra_keys))
            indices.append(multihost_utils.process_allgather(glob["post_index"], tiled=True))
            outputs.append(multihost_utils.process_allgather(out, tiled=True))
        index, output = np.concatenate(indices), np.concatenate(outputs)
        keep = index >= 0
        order = np.argsort(index[keep], kind="stable")
        index, output = index[keep][order], output[keep][order]
        if len(np.unique(index)) != len(index):
            raise AssertionError(f"Evaluation of {split!r} saw an example twice.")
        return index, output


def write_predictions(path: str, manifest: Manifest, split_predictions: dict) -> None:
    """predictions.csv: split, group_id, post_id, likes, score (score = log-score o)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("split", "group_id", "post_id", "likes", "score"))
        for split, (rows, scores) in split_predictions.items():
            for i, s in zip(rows, scores, strict=True):
                w.writerow((split, manifest.group_id[i], manifest.post_id[i],
                            int(manifest.likes[i]), f"{s:.6f}"))


def format_table(results: dict) -> str:
    """A metrics table, one column per result (e.g. validation, test, oracle)."""
    names = ["pairwise_accuracy", "plcc", "srcc", "ratio_mse", "spearman_rho",
             "binarised_accuracy", "num_pairs", "num_images", "num_groups", "num_groups_skipped"]
    names = [n for n in names if any(n in r for r in results.values())]
    cols = list(results)
    width = {c: max(14, len(c) + 2) for c in cols}
    lines = [f"{'metric':20s}" + "".join(f"{c:>{width[c]}s}" for c in cols)]
    for n in names:
        cells = []
        for c in cols:
            v = results[c].get(n, float("nan"))
            w = width[c]
            cells.append(f"{v:{w}d}" if isinstance(v, (int, np.integer)) else f"{v:{w}.4f}")
        lines.append(f"{n:20s}" + "".join(cells))
    return "\n".join(lines)
