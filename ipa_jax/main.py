# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Entry point: `python -m ipa_jax.main --config=configs/i2pa.py:demo --workdir=DIR`.

Any config field can be overridden, e.g. `--config.batch_size=128`. With no dataset configured
(`config.data.raw_dir="embedded"`) the embedded dataset is generated in the workdir first.
"""

import re
import sys

from absl import app, flags
from ml_collections import config_flags

from ipa_jax import config_lib, runtime, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results are written.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl flag parsing, with a one-line message for a misspelled config field."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError) as e:  # config_flags' error for an unknown field
        text = str(e).replace("\\", "")
        field = (re.findall(r"'(\w+)'", text) or [text])[0]
        suggestion = re.findall(r'Did you mean "(\w+)"', text)
        culprit = next((a for a in argv if a.startswith("--config.") and field in a), field)
        hint = f"did you mean \"{suggestion[0]}\"?" if suggestion else "check its spelling."
        sys.exit(f"Configuration error: {culprit!r} names no field of the config; {hint} "
                 "The fields and their defaults are in the config file and "
                 "ipa_jax/config_lib.py.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runtime.setup()
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except config_lib.ConfigError as e:
        sys.exit(f"Configuration error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
