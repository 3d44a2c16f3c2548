# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Launch scripts a user runs from a laptop or a login node, not installed with ipa_jax.

  python -m launch.tpu_vm {create,install,run,fetch,delete,long_run} ...   # Cloud TPU VMs
  python -m launch.slurm ...                                               # a SLURM cluster

Both print every command they run; `--dry_run` prints them and runs nothing.
"""
