# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Entry point: `python -m ipa_jax.main --config=configs/i2pa.py:demo --workdir=DIR`.

Any config field can be overridden, e.g. `--config.batch_size=128`. With no dataset configured
(`config.data.raw_dir="embedded"`) the embedded dataset is generated in the workdir first.
"""

from absl import app, flags
from ml_collections import config_flags

from ipa_jax import cli, runtime, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results are written.")
flags.mark_flags_as_required(["config", "workdir"])
cli.require_nonempty("workdir", "the directory for checkpoints, logs and results")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runtime.setup()
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)  # ConfigError, DataError, FloatingPointError: one line, exit status 1
