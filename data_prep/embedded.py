# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Writes the embedded dataset (`ipa_jax.data.embedded`): a small Instagram-Influencer-format
dataset with popularity planted in its images.

  python -m data_prep.embedded --out_dir=DIR [--size=demo] [--seed=0]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ipa_jax import config_lib
from ipa_jax.data import embedded


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--size", default="demo", choices=sorted(embedded.SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_users", type=int)
    parser.add_argument("--posts_per_user", type=int)
    parser.add_argument("--image_size", type=int)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        meta = embedded.generate(args.out_dir, size=args.size, seed=args.seed,
                                 num_users=args.num_users, posts_per_user=args.posts_per_user,
                                 image_size=args.image_size, progress=not args.quiet)
    except config_lib.DataError as e:
        parser.exit(1, f"data_prep.embedded: {e}\n")
    print(f"wrote {meta['counts']['posts']} posts of {meta['counts']['users']} users to "
          f"{args.out_dir}; defects: {meta['defect_counts']}")


if __name__ == "__main__":
    main()
