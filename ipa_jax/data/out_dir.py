# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The prepared folder's contract: what preparation may write, claim and delete.

Only ever deletes what it wrote: `out_dir` must be new, empty, or marked as its own by `MARKER`
and hold nothing else (an interrupted preparation then starts over, keeping `cache/`). Any other
folder, one inside the raw dataset or one holding it is refused with `config_lib.DataError`, as
is a raw dataset without its mapping file. Shared by the local and the Beam preparation.
"""

from __future__ import annotations

import json
import os
import shutil

from ipa_jax import config_lib
from ipa_jax.data import instagram, tfds_builder

SUMMARY = "summary.json"  # written last: a folder with it is complete
CACHE = "cache"  # embeddings; kept when an interrupted preparation starts over
MARKER = ".ipa_jax_prepared"  # written first into a new or empty out_dir: the folder is ours
GENERATOR = "ipa_jax.data_prep.prepare"  # the marker's generator (unchanged since the first one)
# Everything written into out_dir (by preparation, and the features ipa_jax.features derives
# from its images); only these are removed when a preparation starts over.
OUTPUTS = frozenset({"posts.csv", "groups.csv", "pdips.csv", "images.csv", "retrieval.csv",
                     "retrieval.npz", "drops.json", SUMMARY, SUMMARY + ".tmp", tfds_builder.NAME,
                     ".tfds_downloads", ".beam_temp", "features"})
_KEPT = frozenset({MARKER, CACHE})  # the marker and the embeddings survive a restart


def read_summary(out_dir: str) -> dict | None:
    """The summary of a complete preparation in `out_dir`; None if absent or unreadable."""
    try:
        with open(os.path.join(out_dir, SUMMARY)) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and "settings" in summary else None


def write_summary(out_dir: str, summary: dict) -> None:
    """summary.json, written whole and last: from now on the folder is complete."""
    tmp = os.path.join(out_dir, SUMMARY + ".tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(out_dir, SUMMARY))


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it (both already real paths)."""
    return os.path.commonpath([path, folder]) == folder


def check_folders(raw_dir: str, out_dir: str) -> None:
    """Refuses an out_dir that is, lies in or holds the raw dataset (symlinks resolved)."""
    if not out_dir:
        raise config_lib.DataError("The output folder is empty; give --out_dir / "
                                   "config.data.prepared_dir a folder of its own.")
    raw_real, out_real = os.path.realpath(raw_dir), os.path.realpath(out_dir)
    if _inside(out_real, raw_real):
        raise config_lib.DataError(
            f"Refusing to prepare into {out_dir}: it is or lies inside the raw dataset {raw_dir}, "
            "which preparation never writes into; choose an --out_dir / "
            "config.data.prepared_dir outside it.")
    if _inside(raw_real, out_real):
        raise config_lib.DataError(
            f"Refusing to prepare into {out_dir}: the raw dataset {raw_dir} lies inside it; "
            "choose an --out_dir / config.data.prepared_dir of its own, outside the raw dataset.")


def check_raw(raw_dir: str) -> str:
    """The mapping file's path; DataError naming the fix when the raw dataset is not there."""
    if not os.path.isdir(raw_dir):
        raise config_lib.DataError(
            f"The raw dataset folder {raw_dir} does not exist; set --config.data.raw_dir to an "
            "Instagram-Influencer-format folder (JSON-Image_files_mapping.txt, info/, image/).")
    mapping = os.path.join(raw_dir, instagram.MAPPING_FILE)
    if not os.path.isfile(mapping):
        raise config_lib.DataError(
            f"{mapping} is missing: the raw dataset lists its posts in {instagram.MAPPING_FILE} "
            "(tab-separated Influencer_name, JSON_PostMetadata_file_name, Image_file_name); set "
            "--config.data.raw_dir to the dataset's root folder, the one holding that file, "
            "info/ and image/.")
    return mapping


def _is_ours(out_dir: str) -> bool:
    try:
        with open(os.path.join(out_dir, MARKER)) as f:
            return json.load(f).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def claim(out_dir: str, raw_dir: str, format_version: int) -> None:
    """Makes `out_dir` ready to write: a new or empty folder is marked as ours; in a marked one,
    an interrupted preparation's files are removed (cache/ kept); any other
    folder is refused and left as it is."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise config_lib.DataError(f"{out_dir} is a file, not a folder; choose another "
                                   "--out_dir / config.data.prepared_dir.")
    os.makedirs(out_dir, exist_ok=True)
    entries = set(os.listdir(out_dir))
    if entries and not _is_ours(out_dir):
        raise config_lib.DataError(
            f"Refusing to prepare into {out_dir}: it is not empty ({_names(entries)}) and holds no "
            f"{MARKER} marker, so data_prep did not create it and will not delete its files; "
            "choose a new or empty --out_dir / config.data.prepared_dir.")
    if foreign := entries - OUTPUTS - _KEPT:
        raise config_lib.DataError(
            f"Refusing to prepare into {out_dir}: besides an unfinished preparation it holds "
            f"files data_prep did not write ({_names(foreign)}); move them away or choose "
            "another --out_dir / config.data.prepared_dir.")
    for name in entries & OUTPUTS:  # an interrupted earlier run: start over, keeping the cache
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    if MARKER not in entries:
        with open(os.path.join(out_dir, MARKER), "w") as f:
            json.dump({"generator": GENERATOR, "format": format_version,
                       "raw_dir": os.path.abspath(raw_dir),
                       "note": "written by python -m data_prep.prepare; this folder is its own "
                               "and is emptied when a preparation starts over"}, f, indent=2)


def _names(entries) -> str:
    names = sorted(entries)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
