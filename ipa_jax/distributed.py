# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Joining a multi-process run: `jax.distributed.initialize` where it is needed.

Cloud TPU VMs (a pod slice is several hosts), SLURM job steps and the other clusters JAX knows
describe themselves, and `initialize()` reads them. Anywhere else the processes are given
explicitly: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on every
process (CPU processes then talk through gloo collectives). A single process needs nothing.
"""

from __future__ import annotations

import jax
from absl import flags, logging

from ipa_jax import config_lib


def detected_cluster() -> str | None:
    """The name of the cluster environment JAX detects (e.g. 'SlurmCluster'), or None."""
    try:
        from jax._src import clusters  # noqa: PLC0415 - JAX's own detection, private API
    except ImportError:
        return None
    for env in getattr(clusters.ClusterEnv, "_cluster_types", ()):
        if getattr(env, "opt_in_only_method", False):
            continue
        try:
            if env.is_env_present():
                return env.__name__
        except Exception:  # noqa: BLE001 - a detection that fails means "not this one"
            continue
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str:
    """Joins the run's other processes, if any; returns how ("explicit", a cluster's name,
    or "single process"). Call before anything touches the devices."""
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    if any(v is not None for v in given.values()):
        missing = [f"--{k}" for k, v in given.items() if v is None]
        if missing:
            raise config_lib.ConfigError(
                f"{', '.join(missing)} missing: an explicit multi-process run needs "
                "--coordinator_address=HOST:PORT, --num_processes and --process_id on every "
                "process (Cloud TPU VMs and SLURM need none of them).")
        if not 0 <= process_id < num_processes:
            raise config_lib.ConfigError(
                f"--process_id={process_id} is not in [0, --num_processes={num_processes}).")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        how = "explicit"
    else:
        cluster = detected_cluster()
        if cluster is None:
            return "single process"
        jax.distributed.initialize()
        how = cluster
    _orbax_barriers_through_the_coordinator()
    logging.info("Joined a %d-process run (%s) as process %d.", jax.process_count(), how,
                 jax.process_index())
    return how


def _orbax_barriers_through_the_coordinator() -> None:
    """Orbax's barriers as coordination-service barriers, not device collectives: its save
    threads (latest and best, async) would otherwise issue collectives from several threads
    in an order that differs between processes, which deadlocks the run."""
    from orbax.checkpoint._src.multihost import multihost  # noqa: PLC0415 - its absl flag

    flag = multihost.EXPERIMENTAL_ORBAX_USE_DISTRIBUTED_BARRIER
    flags.FLAGS[flag.name].value = True
