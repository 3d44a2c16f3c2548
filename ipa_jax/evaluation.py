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
    """The posts of a prepared dataset and their group in one builder config."""

    def __init__(self, prepared_dir: str, pairs: str):
        with open(os.path.join(prepared_dir, "posts.csv")) as f:
            rows = list(csv.DictReader(f))
        self.post_id = np.array([r["post_id"] for r in rows])
        self.likes = np.array([float(r["likes"]) for r in rows])
        index = {p: i for i, p in enumerate(self.post_id)}
        self.group_id = np.full(len(rows), "", dtype=object)
        self.split = np.full(len(rows), "", dtype=object)
        if pairs == "groups":
            with open(os.path.join(prepared_dir, "groups.csv")) as f:
                for r in csv.DictReader(f):
                    i = index[r["post_id"]]
                    self.group_id[i], self.split[i] = r["group_id"], r["split"]
        else:
            with open(os.path.join(prepared_dir, "pdips.csv")) as f:
                for r in csv.DictReader(f):
                    for post in (r["post_a"], r["post_b"]):
                        i = index[post]
                        self.group_id[i], self.split[i] = r["pair_id"], r["split"]

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def read_oracle_scores(raw_dir: str, manifest: Manifest) -> np.ndarray | None:
    """Planted expected log-likes per post (embedded dataset only), else None."""
    path = os.path.join(raw_dir, "planted_truth.csv")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        truth = {r["post_id"]: float(r["expected_log_likes"]) for r in csv.DictReader(f)}
    return np.array([truth.get(p, np.nan) for p in manifest.post_id])


def split_metrics(scores: np.ndarray, manifest: Manifest, rows: np.ndarray) -> dict:
    """Built-in metrics of `scores` (log-scores of the posts `rows`) over their groups."""
    return metrics.evaluate(scores, manifest.likes[rows], manifest.group_id[rows].astype(str))


class Evaluator:
    """Scores whole splits with a jitted `score_fn(state, images) -> [N]` log-scores."""

    def __init__(self, builder, config, score_fn: Callable, to_global: Callable):
        self._builder, self._config = builder, config
        self._score_fn, self._to_global = score_fn, to_global
        self._num_batches = {}

    def _batches_for(self, split: str) -> int:
        """Batches every host runs for `split`: the most any host needs (all step together)."""
        if split not in self._num_batches:
            local = sum(len(g["post_index"]) for g in input_pipeline.host_split(
                self._builder, split).as_numpy_iterator())
            local_batch = self._config.eval_batch_size // jax.process_count()
            counts = multihost_utils.process_allgather(np.array(math.ceil(local / local_batch)))
            self._num_batches[split] = int(np.max(counts))
        return self._num_batches[split]

    def predict(self, state, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns (post_index, log-score) for every image of `split`, in a fixed order."""
        local_batch = self._config.eval_batch_size // jax.process_count()
        batches = input_pipeline.eval_dataset(self._builder, self._config, split)
        it = batches.as_numpy_iterator()
        empty = {k: np.zeros((0, *spec.shape[1:]), spec.dtype.as_numpy_dtype)
                 for k, spec in batches.element_spec.items()}
        indices, scores = [], []
        for _ in range(self._batches_for(split)):
            # A host that has run out keeps stepping with padding: all hosts step together.
            batch = input_pipeline.pad_batch(next(it, empty), local_batch)
            glob = self._to_global(batch)
            out = self._score_fn(state, glob["image"])
            indices.append(multihost_utils.process_allgather(glob["post_index"], tiled=True))
            scores.append(multihost_utils.process_allgather(out, tiled=True))
        index, score = np.concatenate(indices), np.concatenate(scores).astype(np.float64)
        keep = index >= 0
        order = np.argsort(index[keep], kind="stable")
        index, score = index[keep][order], score[keep][order]
        if len(np.unique(index)) != len(index):
            raise AssertionError(f"Evaluation of {split!r} saw an image twice.")
        return index, score


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
    names = ("pairwise_accuracy", "plcc", "srcc", "ratio_mse", "spearman_rho",
             "num_pairs", "num_images", "num_groups", "num_groups_skipped")
    cols = list(results)
    lines = [f"{'metric':20s}" + "".join(f"{c:>14s}" for c in cols)]
    for n in names:
        cells = []
        for c in cols:
            v = results[c].get(n, float("nan"))
            cells.append(f"{v:14d}" if isinstance(v, (int, np.integer)) else f"{v:14.4f}")
        lines.append(f"{n:20s}" + "".join(cells))
    return "\n".join(lines)
