# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Entry point: `python -m ipa_jax.main --config=configs/i2pa.py:demo --workdir=DIR`.

Any config field can be overridden, e.g. `--config.batch_size=128`. With no dataset configured
(`config.data.raw_dir="embedded"`) the embedded dataset is generated in the workdir first.

Several processes (hosts) run the same command with the same shared `--workdir`; Cloud TPU
VMs and SLURM are detected, elsewhere add `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I` (`ipa_jax.distributed`). A preemption notice (SIGTERM, SIGUSR1) saves a
checkpoint and exits with status 3 (`preemption.PREEMPTED_EXIT_CODE`); the same command
resumes.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from ipa_jax import cli, distributed, preemption, runtime, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results are written.")
flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0, for a multi-process run outside Cloud TPU and "
                    "SLURM (which are detected).")
flags.DEFINE_integer("num_processes", None, "Processes in the run (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
flags.mark_flags_as_required(["config", "workdir"])
cli.require_nonempty("workdir", "the directory for checkpoints, logs and results")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    runtime.setup()
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except preemption.Preempted as e:
        print(e, file=sys.stderr, flush=True)
        sys.exit(preemption.PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    cli.run(main)  # ConfigError, DataError, FloatingPointError: one line, exit status 1
