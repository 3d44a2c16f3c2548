# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Annotates real photos with what the full model reads: depth maps, keypoints, background masks
and captions (`ipa_jax.annotate`), written as sidecars beside the images.

  python -m data_prep.annotate --raw_dir=RAW [--what=depth,keypoints,background,captions]
      [--depth_model=keras_hub:PRESET|transformers:NAME] [--keypoints_model=...]
      [--person_detector=NAME] [--background_model=...] [--captions_model=...]
      [--batch_size=8] [--redo=SIGNAL,...] [--top_users=0]

A model is "<library>:<preset name or local folder>"; each library is an extra (keras_hub:
annotate-jax, transformers: annotate-torch). Rerunning continues where a killed run stopped.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # keras_hub annotators: before tensorflow loads

import argparse  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from ipa_jax import config_lib  # noqa: E402
from ipa_jax.annotate import backends, runner  # noqa: E402
from ipa_jax.data import prepare  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw_dir", required=True, help="the raw dataset folder")
    parser.add_argument("--what", default=",".join(backends.SIGNALS),
                        help="signals to annotate, comma-separated")
    backends.add_model_flags(parser)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--redo", default="", help="signals to recompute from scratch")
    parser.add_argument("--top_users", type=int, default=0,
                        help="only the posts of the N influencers with most followers (0: all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def build_annotators(args) -> list[backends.Annotator]:
    return backends.from_flags(args, backends.parse_signals(args.what, "what"), args.batch_size)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if not os.path.isdir(args.raw_dir):
            raise config_lib.DataError(f"--raw_dir={args.raw_dir} is not a folder")
        if args.batch_size < 1:
            raise ValueError(f"--batch_size={args.batch_size} must be >= 1")
        redo = backends.parse_signals(args.redo, "redo")
        users = prepare.top_users(args.raw_dir, args.top_users)
        annotators = build_annotators(args)
        summary = runner.annotate(args.raw_dir, annotators, redo=redo, users=users,
                                  progress=not args.quiet)
    except (ValueError, backends.MissingExtra) as e:  # ConfigError, DataError are ValueErrors
        parser.exit(2, f"data_prep.annotate: {e}\n")
    for a in annotators:
        e = summary[a.signal]
        failed = ", ".join(f"{n} {why}" for why, n in e["failed"].items()) or "none failed"
        print(f"{a.signal}: {e['written']} written, {e['already_done']} already done; "
              f"{failed}", file=sys.stdout)
    print(f"summary: {os.path.join(args.raw_dir, runner.SUMMARY_FILE)}")
    return summary


if __name__ == "__main__":
    main()
