# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The manifests a preparation writes (posts.csv, groups.csv, pdips.csv, images.csv,
retrieval.csv; `ipa_jax.data.prepare`'s docstring says what they hold): their columns and the
rows of each, built here for the local and the Beam path alike."""

from __future__ import annotations

import csv

POSTS_HEADER = ("post_index", "post_id", "user", "likes", "comments", "timestamp", "image_path")
GROUPS_HEADER = ("split", "group_id", "user", "post_id", "likes", "timestamp")
PDIPS_HEADER = ("split", "pair_id", "post_a", "post_b", "winner")
IMAGES_HEADER = ("split", "post_id", "user", "likes", "timestamp")
RETRIEVAL_HEADER = ("split", "post_id", "rank", "retrieved_post_id", "local_popularity",
                    "similarity", "s_background", "s_pose", "s_semantic")


def post_row(i: int, p) -> tuple:
    return (i, p.post_id, p.user, p.likes, p.comments, p.timestamp, p.image_path)


def group_rows(split: str, group) -> list[tuple]:
    return [(split, group.group_id, group.user, p.post_id, p.likes, p.timestamp)
            for p in group.posts]


def image_row(split: str, p) -> tuple:
    return (split, p.post_id, p.user, p.likes, p.timestamp)


def pdip_id(k: int) -> str:
    """The id of the k-th PDIP, counted over train, validation and test in turn."""
    return f"pdip-{k:07d}"


def pdip_row(split: str, k: int, winner, loser, winner_is_a: bool) -> tuple:
    """The k-th PDIP's row; its coin (`prepare.winner_first`) says whether post_a is the winner."""
    a, b = (winner, loser) if winner_is_a else (loser, winner)
    return (split, pdip_id(k), a.post_id, b.post_id, winner.post_id)


def retrieval_rows(split: str, post, f_ret, retrieved) -> list[tuple]:
    """retrieval.csv's rows of one query: its f_ret [K, 5] and the retrieved post of each
    filled slot (`retrieved`: K posts or None)."""
    return [(split, post.post_id, rank, hit.post_id, *(f"{v:.6f}" for v in f_ret[rank]))
            for rank, hit in enumerate(retrieved) if hit is not None]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
