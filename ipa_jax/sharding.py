# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The device mesh, and how batches and the train state lie on it.

`make_mesh(fsdp=1)`: one axis `data` over every device; batches are sharded on it and the
state is replicated (plain data parallelism). `make_mesh(fsdp=f)`, f > 1: axes
("data", "fsdp") of shape (devices / f, f), from the process-major device list (so an `fsdp`
group stays within a process whenever f divides its devices). Batches are then sharded over
both axes together, every device still taking its own rows, and `state_shardings` shards each
large array (parameters, optimizer moments) over `fsdp` on one dimension: a device keeps 1/f
of it, XLA gathers the parameters for the step and reduce-scatters the gradients.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

FSDP = "fsdp"
FSDP_MIN_SIZE = 2**14  # config.fsdp_min_size's default: smaller arrays stay replicated


def make_mesh(devices=None, fsdp: int = 1) -> Mesh:
    """A ("data",) mesh over `devices` (default: every device of every process, process-major),
    or ("data", "fsdp") of shape (len(devices) / fsdp, fsdp) when fsdp > 1."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    if fsdp == 1:
        return Mesh(devices, ("data",))
    if devices.size % fsdp:
        raise ValueError(f"fsdp={fsdp} does not divide the {devices.size} devices")
    return Mesh(devices.reshape(devices.size // fsdp, fsdp), ("data", FSDP))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading dimension sharded over every mesh axis: each device its own rows."""
    axes = mesh.axis_names
    return NamedSharding(mesh, P(axes[0] if len(axes) == 1 else tuple(axes)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape, fsdp: int, min_size: int = FSDP_MIN_SIZE) -> P:
    """The rule: an array of at least `min_size` elements is sharded over `fsdp` on its
    largest dimension divisible by `fsdp` (ties: the last); anything else is replicated."""
    if fsdp == 1 or math.prod(shape) < min_size:
        return P()
    dims = [d for d, n in enumerate(shape) if n % fsdp == 0]
    if not dims:
        return P()
    dim = max(dims, key=lambda d: (shape[d], d))
    return P(*[None] * dim, FSDP)


def state_shardings(tree, mesh: Mesh, min_size: int = FSDP_MIN_SIZE):
    """NamedShardings for the arrays (or `jax.ShapeDtypeStruct`s) of `tree` by `fsdp_spec`:
    all replicated on a mesh without an `fsdp` axis."""
    fsdp = dict(mesh.shape).get(FSDP, 1)
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp, min_size)), tree)


def to_global(mesh: Mesh, batch):
    """This host's numpy batch -> global arrays sharded over the mesh (`data_sharding`)."""
    sharding = data_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def to_host(tree):
    """numpy copies of `tree`'s arrays, however they are sharded. An array sharded over
    several processes' devices is gathered first: a collective, so every process must call
    this (with the same tree)."""
    def gathered(x):
        if (isinstance(x, jax.Array) and not x.is_fully_addressable
                and not x.is_fully_replicated):
            return multihost_utils.process_allgather(x, tiled=True)
        return x

    return jax.device_get(jax.tree.map(gathered, tree))
