# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Process set-up shared by the command-line entry points."""

import logging as std_logging

import jax
import tensorflow as tf
from absl import logging


class _QuietLibraries(std_logging.Filter):
    """Drops the INFO chatter of orbax and TFDS (one line per file and thread); keeps warnings."""

    def filter(self, record):
        noisy = any(f"/{lib}/" in record.pathname for lib in ("orbax", "tensorflow_datasets"))
        return record.levelno >= std_logging.WARNING or not noisy


def setup() -> None:
    """Quiet library logs, keep TensorFlow (data only) off the accelerators, log the topology."""
    logging.get_absl_handler().addFilter(_QuietLibraries())
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
    logging.info("JAX process %d of %d, %d local / %d global devices (%s)",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.devices()[0].platform)
