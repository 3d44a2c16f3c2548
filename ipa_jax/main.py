# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Entry point: `python -m ipa_jax.main --config=configs/i2pa.py:demo --workdir=DIR`.

Any config field can be overridden, e.g. `--config.batch_size=128`. With no dataset configured
(`config.data.raw_dir="embedded"`) the embedded dataset is generated in the workdir first.
"""

import sys

import jax
import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

from ipa_jax import config_lib, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results are written.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # TensorFlow only feeds data: keep it off the accelerators JAX uses.
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
    logging.info("JAX process %d of %d, %d local / %d global devices (%s)",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.devices()[0].platform)
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except config_lib.ConfigError as e:
        sys.exit(f"Configuration error: {e}")


if __name__ == "__main__":
    app.run(main)
