# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Checkpoints: the latest train state with its input position, and the best by validation.

`workdir/checkpoints` holds the latest `keep_checkpoints` states (orbax, async) and, beside
each, every host's tf.data iterator (`input_state/<step>/process_<i>`), so a restarted job
resumes mid-epoch exactly where the stream stopped. `workdir/best` keeps the one state with
the highest validation `best_metric` (pairwise accuracy, Spearman rho, ...): the one tested.
"""

from __future__ import annotations

import os
import shutil

import jax
import orbax.checkpoint as ocp
import tensorflow as tf


class Checkpointer:
    """The two checkpoint managers of a run and the input iterator beside them."""

    def __init__(self, workdir: str, keep: int, best_metric: str):
        self._best_metric = best_metric
        self._dir = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.latest = ocp.CheckpointManager(
            self._dir, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self.best = ocp.CheckpointManager(
            os.path.join(os.path.abspath(workdir), "best"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode="max", create=True))

    def _input_prefix(self, step: int) -> str:
        return os.path.join(self._dir, "input_state", str(step),
                            f"process_{jax.process_index()}", "iterator")

    def save(self, step: int, state, data_iterator) -> None:
        # The iterator is written first and synchronously: an orbax step that completed
        # always has its input position beside it.
        tf.train.Checkpoint(iterator=data_iterator).write(self._input_prefix(step))
        self.latest.save(step, args=ocp.args.StandardSave(state))
        kept = set(self.latest.all_steps()) | {step}
        root = os.path.join(self._dir, "input_state")
        for name in os.listdir(root):
            if name.isdigit() and int(name) < min(kept) and jax.process_index() == 0:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    def restore_latest(self, abstract_state, data_iterator):
        """Returns (state, step) of the latest checkpoint, or None when there is none."""
        step = self.latest.latest_step()
        if step is None:
            return None
        state = self.latest.restore(step, args=ocp.args.StandardRestore(abstract_state))
        tf.train.Checkpoint(iterator=data_iterator).read(
            self._input_prefix(step)).assert_consumed()
        return state, step

    def save_best(self, step: int, state, metrics: dict) -> None:
        self.best.save(step, args=ocp.args.StandardSave(state),
                       metrics={self._best_metric: float(metrics[self._best_metric])})

    def restore_best(self, abstract_state):
        step = self.best.best_step()
        if step is None:
            raise ValueError("No best checkpoint was saved; was validation ever run?")
        return self.best.restore(step, args=ocp.args.StandardRestore(abstract_state)), step

    def wait_until_finished(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
