# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The training order as a pure function of (seed, epoch, position), whatever the hosts.

The training examples of a split are the items (pairs, or images) of its groups. Epoch `e`
visits each item once: the groups in a seeded random order, cut into windows of `window`
groups, and the items of each window in a seeded random order (`window` sets how many users a
batch mixes, like a shuffle buffer, without a buffer to save). Position `p` of the endless
stream is item `p % N` of epoch `p // N` (`N` items per epoch). Global batch `s` is positions
`[s * B, (s + 1) * B)`, and process `i` of `P` takes its `B / P` consecutive positions of each
batch, so the batches are the same on 1 host or 64 and a run resumes at step `s` from `s`
alone: the input position is the step number.
"""

from __future__ import annotations

import functools

import numpy as np


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


class TrainOrder:
    """Which (group, item) each position of the stream is; `counts[g]` items in group g."""

    def __init__(self, counts: np.ndarray, *, seed: int, window: int):
        if window < 1:
            raise ValueError(f"window must be at least 1 group, got {window}")
        self.counts = np.asarray(counts, np.int64)
        self.seed = int(seed)
        self.window = int(window)
        self.epoch_length = int(self.counts.sum())
        if self.epoch_length == 0:
            raise ValueError("The training split has no examples.")
        self._groups = np.flatnonzero(self.counts > 0)

    @functools.lru_cache(maxsize=2)  # noqa: B019 - a few epochs' tables, freed with the order
    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(group [N], item [N]) of epoch `e`, in stream order."""
        groups = _rng(self.seed, e).permutation(self._groups)
        counts = self.counts[groups]
        group_of = np.repeat(groups, counts)
        starts = np.cumsum(counts) - counts
        item_of = np.arange(self.epoch_length) - np.repeat(starts, counts)
        order = np.empty(self.epoch_length, np.int64)
        bounds = np.concatenate([[0], np.cumsum(counts)[self.window - 1::self.window]])
        if bounds[-1] != self.epoch_length:
            bounds = np.append(bounds, self.epoch_length)
        for w, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            order[lo:hi] = lo + _rng(self.seed, e, w).permutation(hi - lo)
        return group_of[order], item_of[order]

    def at(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(group, item) of each global position."""
        positions = np.asarray(positions, np.int64)
        epochs, within = np.divmod(positions, self.epoch_length)
        group, item = np.empty_like(positions), np.empty_like(positions)
        for e in np.unique(epochs):
            g, i = self.epoch(int(e))
            sel = epochs == e
            group[sel], item[sel] = g[within[sel]], i[within[sel]]
        return group, item


def process_positions(step: int, batch_size: int, process_index: int,
                      process_count: int) -> np.ndarray:
    """The global positions process `process_index` feeds at `step` (0-based)."""
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} is not divisible by {process_count} "
                         "processes")
    local = batch_size // process_count
    start = step * batch_size + process_index * local
    return np.arange(start, start + local, dtype=np.int64)
