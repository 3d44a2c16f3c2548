# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Checkpoints: the latest train states and the best by validation.

`workdir/checkpoints` holds the latest `keep_checkpoints` states (orbax, async). The input
position needs nothing beside them: the training order is a pure function of the step
(`train_order`), so a restarted job resumes mid-epoch exactly where the stream stopped, on
any number of hosts. `workdir/best` keeps the one state with the highest validation
`best_metric` (pairwise accuracy, Spearman rho, ...): the one tested.

Nothing corrupt is ever loaded silently:
  - every saved step holds, beside the state (orbax item `default`), the SHA-256 of each of
    its arrays (item `checksums`); restoring recomputes and compares them;
  - a save is written to a temporary folder that orbax renames when complete: a process
    killed during a save leaves the previous complete step the newest;
  - resuming tries the kept steps newest first: a step that cannot be read or fails its
    checksums is moved to `checkpoints/broken/<step>` (with a `REASON.txt`) and the run
    resumes from the newest intact one, with one warning line; `CheckpointError` (one line)
    when none is intact;
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from ipa_jax import config_lib, orbax_errors, sharding

# Orbax item names. The state keeps the single-item name, so `ocp.CheckpointManager(dir)
# .restore(step)` (as any orbax user would) still reads it.
STATE, CHECKSUMS = "default", "checksums"
BROKEN = "broken"


class CheckpointError(config_lib.DataError):
    """A workdir's checkpoints cannot be used: none intact, a corrupt best, another model."""


class _Broken(Exception):
    """A checkpoint step that cannot be used; the message is the reason, one line."""


# ---------------------------------------------------------------------------- checksums
def path_name(path) -> str:
    """`params/fc/kernel` for a JAX key path (dict keys, attributes and indices alike)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    h.update(array.reshape(-1).view(np.uint8))
    return h.hexdigest()


def array_checksums(tree) -> dict[str, str]:
    """SHA-256 of every array of `tree` (its dtype, shape and bytes), by `path_name`.

    The same state gives the same checksums as a TrainState or as the nested dicts orbax
    restores without a target, saved and restored with any sharding (arrays sharded across
    processes are gathered: every process calls this). Arrays are hashed in parallel (hashlib
    releases the GIL).
    """
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    arrays = sharding.to_host([leaf for _, leaf in leaves])
    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        digests = list(pool.map(lambda a: _digest(np.asarray(a)), arrays))
    return {path_name(path): d for (path, _), d in zip(leaves, digests, strict=True)}


def _first_mismatch(actual: dict[str, str], expected: dict[str, str]) -> str | None:
    """The reason the restored arrays differ from the saved checksums, or None."""
    for name, digest in expected.items():
        if name not in actual:
            return f"{name} was saved but not restored"
        if actual[name] != digest:
            return f"{name} differs from the checksum saved with it"
    extra = sorted(set(actual) - set(expected))
    return f"{extra[0]} has no saved checksum" if extra else None


# ---------------------------------------------------------------------------- restoring
def _structure_mismatch(state_dir: str, abstract_state) -> str | None:
    """How a checkpoint's arrays differ from `abstract_state` (another model), or None.

    None also when the checkpoint's metadata cannot be read: then it is broken, not foreign.
    """
    try:
        with orbax_errors.quiet(), ocp.StandardCheckpointer() as checkpointer:
            metadata = checkpointer.metadata(state_dir)
        tree = getattr(metadata, "item_metadata", metadata)
        saved = {path_name(p): tuple(m.shape)
                 for p, m in jax.tree_util.tree_leaves_with_path(tree)}
    except Exception:  # noqa: BLE001 - unreadable metadata: the step is broken
        return None
    if not saved:  # orbax reads a damaged step's metadata as empty
        return None
    wanted = {path_name(p): tuple(x.shape)
              for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
    for name in sorted(set(saved) | set(wanted)):
        if name not in saved:
            return f"it has no {name}"
        if name not in wanted:
            return f"this config's model has no {name}"
        if saved[name] != wanted[name]:
            return f"{name} has shape {saved[name]} there, {wanted[name]} in this config"
    return None


def _all_processes_agree(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok, np.int32))))


def _restore_verified(manager: ocp.CheckpointManager, step: int, abstract_state,
                      fallback_sharding=None):
    """The state of `step`, its checksums verified; raises `_Broken` with the reason.

    `abstract_state` None restores orbax's own way (nested dicts, the saved shardings, or
    `fallback_sharding` (default: this process's first device) when those are unavailable).
    """
    step_dir = os.path.join(str(manager.directory), str(step))
    has_sums = os.path.isdir(os.path.join(step_dir, CHECKSUMS))
    if abstract_state is None:
        state_args = ocp.args.StandardRestore(fallback_sharding=fallback_sharding or (
            jax.sharding.SingleDeviceSharding(jax.local_devices()[0])))
    else:
        state_args = ocp.args.StandardRestore(abstract_state)
    args = {STATE: state_args, **({CHECKSUMS: ocp.args.JsonRestore()} if has_sums else {})}
    try:
        with orbax_errors.quiet():
            restored = manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
        if abstract_state is not None:
            mismatch = _structure_mismatch(os.path.join(step_dir, STATE), abstract_state)
            if mismatch is not None:
                raise CheckpointError(
                    f"{step_dir} was saved by another model or optimizer than this config's "
                    f"({mismatch}); use a new --workdir, or this workdir's config.json.") from e
        raise _Broken(orbax_errors.short_reason(e)) from e
    if has_sums:
        problem = _first_mismatch(array_checksums(restored[STATE]), dict(restored[CHECKSUMS]))
        if problem is not None:
            raise _Broken(problem)
    else:
        logging.warning("%s has no checksums (saved by an older ipa_jax): restored unverified.",
                        step_dir)
    return restored[STATE]


def _manager(directory: str, **options) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory, item_names=(STATE, CHECKSUMS),
        options=ocp.CheckpointManagerOptions(create=True, **options))


def _save_args(state) -> ocp.args.Composite:
    return ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                 CHECKSUMS: ocp.args.JsonSave(array_checksums(state))})


def restore_best_checkpoint(workdir: str, abstract_state=None, fallback_sharding=None):
    """(state, step) of a training workdir's `best/` checkpoint, its checksums verified.

    Without `abstract_state` the state comes back as orbax restores it untargeted (nested
    dicts of arrays, on `fallback_sharding` where the saved sharding is unavailable).
    Raises ValueError when the workdir has no best checkpoint and `CheckpointError` when it
    is corrupt.
    """
    directory = os.path.join(os.path.abspath(workdir), "best")
    if not os.path.isdir(directory):
        raise ValueError(f"{workdir} has no best/ checkpoint; did its training evaluate?")
    manager = ocp.CheckpointManager(directory, item_names=(STATE, CHECKSUMS))
    try:
        step = manager.best_step()
        if step is None:
            raise ValueError(f"{workdir} has no best/ checkpoint; did its training evaluate?")
        return _restore_best_step(manager, step, abstract_state, fallback_sharding), step
    finally:
        manager.close()


def _restore_best_step(manager, step, abstract_state, fallback_sharding=None):
    try:
        return _restore_verified(manager, step, abstract_state, fallback_sharding)
    except _Broken as e:
        raise CheckpointError(
            f"the best checkpoint {manager.directory}/{step} is broken ({e}); it cannot be "
            "used. Restore the workdir from a backup, or retrain.") from None


# ---------------------------------------------------------------------------- the run's
class Checkpointer:
    """The two checkpoint managers of a run and the input iterator beside them."""

    def __init__(self, workdir: str, keep: int, best_metric: str):
        self._best_metric = best_metric
        self._dir = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.latest = _manager(self._dir, max_to_keep=keep)
        self.best = _manager(os.path.join(os.path.abspath(workdir), "best"), max_to_keep=1,
                             best_fn=lambda m: m[best_metric], best_mode="max")

    def save(self, step: int, state) -> None:
        # The two managers' saves of one step must not overlap: orbax names some of its
        # multi-process barriers by the step alone, and two in flight fail the run.
        self.best.wait_until_finished()
        self.latest.save(step, args=_save_args(state))

    def _try_step(self, step: int, abstract_state):
        """(state, None) when `step` is intact, else (None, reason). Every process tries every
        step, so collective restores line up."""
        reason, state = None, None
        try:
            state = _restore_verified(self.latest, step, abstract_state)
        except _Broken as e:
            reason = str(e)
        if not _all_processes_agree(reason is None):
            return None, reason or "it is broken on another host"
        return state, None

    def _move_aside(self, step: int, reason: str) -> str:
        """Moves a broken step to `checkpoints/broken/<step>`."""
        dest = os.path.join(self._dir, BROKEN, str(step))
        if jax.process_index() == 0:
            n = 1
            while os.path.exists(dest):
                n += 1
                dest = os.path.join(self._dir, BROKEN, f"{step}-{n}")
            os.makedirs(dest)
            with open(os.path.join(dest, "REASON.txt"), "w") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: step {step}: {reason}\n")
            os.rename(os.path.join(self._dir, str(step)), os.path.join(dest, "state"))
        multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
        self.latest.reload()
        return os.path.relpath(dest, os.path.dirname(self._dir))

    def restore_latest(self, abstract_state):
        """Returns (state, step) of the newest intact checkpoint, or None when there is none.

        Broken newer steps are moved aside with a warning. Raises `CheckpointError` when
        checkpoints exist but none is intact (nothing is moved then).
        """
        steps = sorted(self.latest.all_steps(), reverse=True)
        broken = []
        for step in steps:
            state, reason = self._try_step(step, abstract_state)
            if reason is not None:
                broken.append((step, reason))
                continue
            for bad_step, bad_reason in broken:
                moved = self._move_aside(bad_step, bad_reason)
                logging.warning("Checkpoint step %d is broken (%s); moved it to %s; resuming "
                                "from step %d.", bad_step, bad_reason, moved, step)
            return state, step
        if broken:
            listed = "; ".join(f"step {s}: {r}" for s, r in broken)
            raise CheckpointError(
                f"no intact checkpoint in {self._dir} ({listed}). Move that folder away to "
                "train from scratch, or restore it from a backup.")
        return None

    def save_best(self, step: int, state, metrics: dict) -> None:
        self.latest.wait_until_finished()  # see `save`
        self.best.save(step, args=_save_args(state),
                       metrics={self._best_metric: float(metrics[self._best_metric])})

    def restore_best(self, abstract_state):
        step = self.best.best_step()
        if step is None:
            raise ValueError("No best checkpoint was saved; was validation ever run?")
        return _restore_best_step(self.best, step, abstract_state), step

    def wait_until_finished(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Completes the saves in flight, also when the run stops with an error: an exit
        during an async save would lose that checkpoint (and print orbax's thread dumps)."""
        for manager in (self.latest, self.best):
            try:
                manager.close()
            except Exception as e:  # noqa: BLE001 - keep the error that stopped the run
                if exc is None:
                    raise
                logging.error("A checkpoint save in flight failed: %s",
                              orbax_errors.short_reason(e))
