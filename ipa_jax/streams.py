# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""A training stream read in Python and decoded by tf.data, without Python inside tf.data.

Reading a position's example is Python (`records`, `train_order`); decoding and cropping are
TensorFlow ops, parallel in tf.data. A Python function inside a tf.data pipeline (py_function,
numpy_function, from_generator) deadlocks when the iterator is destroyed while one of tf.data's
threads waits for the GIL that the destroying thread holds. So a background Python thread reads
chunks of `chunk_steps` steps ahead (numpy arrays, this process's positions of each global
batch), and each chunk becomes its own tf.data pipeline of tensors (`decode`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import jax
import numpy as np
import tensorflow as tf

from ipa_jax import train_order

# Examples a chunk holds per process: bounds the memory of the chunks read ahead (2 queued,
# 1 decoding) while a chunk switch, one cold batch, stays rare.
CHUNK_EXAMPLES = 1024


class TrainStream:
    """Endless numpy batches of this process from global step `start_step` on.

    `read(positions)` gives the examples at these global positions as numpy arrays (leading
    axis: the positions); `decode(raw)` turns a chunk into a tf.data pipeline of its
    `chunk_steps` batches.
    """

    def __init__(self, read: Callable[[np.ndarray], dict],
                 decode: Callable[[dict], tf.data.Dataset], *, global_batch: int,
                 start_step: int, chunk_steps: int):
        self._read, self._decode = read, decode
        self._global_batch, self._chunk_steps = global_batch, chunk_steps
        self._chunks: queue.Queue = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._batches = iter(())
        self._thread = threading.Thread(target=self._produce, args=(start_step,),
                                        name="train_stream", daemon=True)
        self._thread.start()

    def positions(self, step: int) -> np.ndarray:
        """This process's global positions of `chunk_steps` steps from `step`."""
        return np.concatenate([
            train_order.process_positions(s, self._global_batch, jax.process_index(),
                                          jax.process_count())
            for s in range(step, step + self._chunk_steps)])

    def _produce(self, step: int) -> None:
        while not self._stop.is_set():
            try:
                chunk = self._read(self.positions(step))
            except Exception as e:  # noqa: BLE001 - raised in the consumer, where it is seen
                chunk = e
            while not self._stop.is_set():
                try:
                    self._chunks.put(chunk, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(chunk, Exception):
                return
            step += self._chunk_steps

    def __iter__(self) -> TrainStream:
        return self

    def as_numpy_iterator(self) -> TrainStream:
        return self

    def __next__(self) -> dict:
        for _ in range(2):
            batch = next(self._batches, None)
            if batch is not None:
                return batch
            chunk = self._chunks.get()
            if isinstance(chunk, Exception):
                raise chunk
            self._batches = self._decode(chunk).as_numpy_iterator()
        raise RuntimeError("a chunk of the training stream gave no batch")

    def close(self) -> None:
        """Stops the reading thread (it also stops with the process: a daemon)."""
        self._stop.set()

    def __del__(self):
        self._stop.set()
