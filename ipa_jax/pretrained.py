# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Loading weights: converted checkpoints, trained workdirs, and `config.init_from`.

Two sources are understood wherever weights are loaded:
  - a directory written by `python -m ipa_jax.convert` (`ipa_jax_model.json` + `variables/`);
  - an ipa_jax training workdir (its `best/` checkpoint and `config.json`).
`merge` puts loaded arrays into freshly initialised variables: every backbone variable must
be found with the right shape (relative position tables are resized from another window);
variables matching `dont_load` (the heads, by default) keep their fresh initialisation.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ipa_jax import checkpointing, convert, orbax_errors


def is_converted(path: str) -> bool:
    return os.path.exists(os.path.join(path, convert.METADATA))


def is_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "best"))


_RECONVERT = "the folder is damaged: run `python -m ipa_jax.convert` again to rewrite it"


def load_converted(path: str) -> tuple[dict, dict]:
    """(metadata, variables as numpy) of a `python -m ipa_jax.convert` output directory.

    Raises ValueError, one line, for a damaged folder: metadata that is not JSON, a variables/
    checkpoint that is missing, truncated or garbled.
    """
    metadata_path = os.path.join(path, convert.METADATA)
    try:
        with open(metadata_path) as f:
            metadata = json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError: ValueErrors
        raise ValueError(f"{metadata_path} is unreadable ({type(e).__name__}: "
                         f"{orbax_errors.short_reason(e)}); {_RECONVERT}.") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{metadata_path} holds no JSON object; {_RECONVERT}.")
    directory = os.path.abspath(os.path.join(path, convert.VARIABLES))
    if not os.path.isdir(directory):
        raise ValueError(f"{path} has no {convert.VARIABLES}/ checkpoint; {_RECONVERT}.")
    try:
        with orbax_errors.quiet(), ocp.StandardCheckpointer() as ckpt:
            variables = ckpt.restore(directory)
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many types
        raise ValueError(f"{directory} cannot be restored ({orbax_errors.short_reason(e)}); "
                         f"{_RECONVERT}.") from None
    return metadata, jax.tree.map(np.asarray, variables)


def load_workdir(workdir: str) -> tuple[ml_collections.ConfigDict, dict, int]:
    """(config, variables as numpy, step) of a training workdir's best checkpoint."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    # Checksums verified: a corrupt best/ raises checkpointing.CheckpointError.
    state, step = checkpointing.restore_best_checkpoint(workdir)
    variables = {"params": state["params"], **state["model_state"]}
    return config, jax.tree.map(np.asarray, variables), step


def load(path: str) -> dict:
    """The variables of a converted checkpoint or a workdir's best state."""
    if is_converted(path):
        return load_converted(path)[1]
    if is_workdir(path):
        return load_workdir(path)[1]
    raise ValueError(f"init_from={path!r} is neither a `python -m ipa_jax.convert` output "
                     f"(no {convert.METADATA}) nor an ipa_jax workdir (no best/).")


def merge(fresh: Mapping, loaded: Mapping, dont_load: Sequence[str]) -> tuple[dict, list[str]]:
    """Loaded arrays in place of freshly initialised ones.

    Args:
      fresh: the model's initialised variables (nested dict, any array type).
      loaded: variables to load (nested dict of arrays), e.g. from `load`.
      dont_load: regexes of `collection/module/.../leaf` paths that keep their fresh values.
    Returns:
      (variables, the paths that were loaded). Raises ValueError naming every variable that
      the checkpoint lacks or has in another shape.
    """
    skip = [re.compile(p) for p in dont_load]
    flat_loaded = convert.flatten(loaded)
    out, done, problems = {}, [], []
    for path, value in convert.flatten(fresh).items():
        if any(p.search(path) for p in skip):
            out[path] = value
            continue
        if path not in flat_loaded:
            problems.append(f"{path} is missing")
            continue
        array = np.asarray(flat_loaded[path])
        if array.shape != value.shape and path.endswith(convert.RELATIVE_TABLE):
            window = (int(round(np.sqrt(value.shape[0]))) + 1) // 2
            array = convert.resize_relative_position_table(array, window)
        if array.shape != value.shape:
            problems.append(f"{path} has shape {array.shape}, the model {value.shape}")
            continue
        out[path] = array.astype(value.dtype)
        done.append(path)
    if problems:
        raise ValueError("The checkpoint does not fit the model: " + "; ".join(problems))
    unused = sorted(set(flat_loaded) - set(done) - {p for p in flat_loaded
                                                     if any(s.search(p) for s in skip)})
    if unused:
        logging.warning("Checkpoint arrays not used by the model: %s", ", ".join(unused))
    return convert.unflatten(out), done


def nest_under(loaded: Mapping, into: str) -> dict:
    """A plain backbone's variables moved under `into/` in every collection (params/conv1/...
    becomes params/backbone/conv1/...); variables already there (a fused model's own
    checkpoint) are returned as they are."""
    if into in loaded.get("params", {}):
        return dict(loaded)
    return {collection: {into: tree} for collection, tree in loaded.items()}


def init_from(variables: Mapping, path: str, dont_load: Sequence[str],
              into: str | None = None) -> dict:
    """`variables` with everything but `dont_load` restored from `path`; logs what loaded.

    `into`: the submodule a plain backbone checkpoint loads into (`"backbone"` for a
    retrieval-augmented scorer, whose `fusion/` then matches `dont_load`)."""
    source = load(path)
    if into:
        source = nest_under(source, into)
    merged, loaded = merge(variables, source, dont_load)
    kept = sorted(set(convert.flatten(variables)) - set(loaded))
    logging.info("init_from %s: loaded %d arrays: %s", path, len(loaded), ", ".join(loaded))
    logging.info("init_from %s: freshly initialised: %s", path, ", ".join(kept) or "nothing")
    return merged
