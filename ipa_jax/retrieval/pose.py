# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Pose similarity S_p: COCO Object Keypoint Similarity (OKS) between detected human poses.

A pose is a [17, 3] array of COCO keypoints (x, y, v); v > 0 marks a visible keypoint. OKS follows
pycocotools' `COCOeval.computeOks`, with one difference: the COCO ground-truth area is the area of
the person's segmentation mask, which detector outputs do not have, so the reference person's area
is the area of the bounding box of its visible keypoints (`person_area`).

OKS is asymmetric: the reference ("ground truth") sets the scale (its area) and which keypoints
count (its visible ones), so swapping two people can change it a lot (by up to 0.29 on the demo
data). Retrieval has no ground truth, so S_p uses the symmetric OKS, the mean of both directions
(`symmetric_oks`): S_p(x0, xr) = S_p(xr, x0).
"""

import json
import os

import numpy as np

NUM_KEYPOINTS = 17
# Per-keypoint standard deviations of human annotators (nose, eyes, ears, shoulders, elbows, wrists,
# hips, knees, ankles), as in pycocotools.
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                        .87, .87, .89, .89]) / 10.0
_VARS = (2.0 * COCO_SIGMAS) ** 2
_EPS = np.spacing(1)  # pycocotools adds it to the area, so a zero area still divides


def person_area(kp: np.ndarray) -> np.ndarray:
    """Area [...] of the bounding box of the visible keypoints of `kp` [..., 17, 3] (0 if none)."""
    kp = np.asarray(kp, np.float64)
    vis = kp[..., 2] > 0
    any_vis = vis.any(-1)

    def extent(c: np.ndarray) -> np.ndarray:
        hi = np.where(vis, c, -np.inf).max(-1, initial=-np.inf)
        lo = np.where(vis, c, np.inf).min(-1, initial=np.inf)
        return np.where(any_vis, hi - lo, 0.0)

    return extent(kp[..., 0]) * extent(kp[..., 1])


def oks_batch(dt: np.ndarray, gt: np.ndarray, area: np.ndarray) -> np.ndarray:
    """OKS of detections `dt` [..., 17, 3] against references `gt` [..., 17, 3] of area [...].

    Shapes broadcast. The mean of exp(-d^2 / (2 (area + eps) (2 sigma)^2)) over keypoints visible
    in `gt`; 0 where `gt` has no visible keypoint.
    """
    dt, gt = np.asarray(dt, np.float64), np.asarray(gt, np.float64)
    area = np.asarray(area, np.float64)
    d2 = (dt[..., 0] - gt[..., 0]) ** 2 + (dt[..., 1] - gt[..., 1]) ** 2
    e = d2 / _VARS / (area[..., None] + _EPS) / 2.0
    vis = gt[..., 2] > 0
    n = vis.sum(-1)
    total = np.where(vis, np.exp(-e), 0.0).sum(-1)
    return np.where(n > 0, total / np.maximum(n, 1), 0.0)


def oks(dt: np.ndarray, gt: np.ndarray, area: float) -> float:
    """COCO OKS of one detected pose `dt` [17, 3] against a reference pose `gt` [17, 3]."""
    return float(oks_batch(dt, gt, area))


def symmetric_oks(a: np.ndarray, b: np.ndarray, area_a=None, area_b=None) -> np.ndarray:
    """(OKS(a against b) + OKS(b against a)) / 2 for poses a, b [..., 17, 3] (shapes broadcast).

    Areas default to `person_area`; each direction uses its reference's area and visible keypoints.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    area_a = person_area(a) if area_a is None else np.asarray(area_a, np.float64)
    area_b = person_area(b) if area_b is None else np.asarray(area_b, np.float64)
    # `oks_batch` both ways, sharing the distances.
    d2 = ((a[..., 0] - b[..., 0]) ** 2 + (a[..., 1] - b[..., 1]) ** 2) / _VARS

    def one_way(ref: np.ndarray, area: np.ndarray) -> np.ndarray:
        vis = ref[..., 2] > 0
        n = vis.sum(-1)
        total = np.where(vis, np.exp(-d2 / (area[..., None] + _EPS) / 2.0), 0.0).sum(-1)
        return np.where(n > 0, total / np.maximum(n, 1), 0.0)

    return (one_way(b, area_b) + one_way(a, area_a)) / 2.0


def pose_similarity(query_people: list[np.ndarray], ref_people: list[np.ndarray]) -> float:
    """Best symmetric OKS over all (query person, retrieved person) pairs; symmetric in its inputs.

    Returns 0 when either image shows no person.
    """
    if len(query_people) == 0 or len(ref_people) == 0:
        return 0.0
    q, r = np.asarray(query_people), np.asarray(ref_people)
    return float(symmetric_oks(q[:, None], r[None, :]).max())


def read_keypoints(path: str) -> list[np.ndarray]:
    """The persons ([17, 3] float32 each) of a COCO keypoint results JSON file; [] when missing."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        results = json.load(f)
    return [np.asarray(r["keypoints"], np.float32).reshape(NUM_KEYPOINTS, 3)
            for r in results if r.get("category_id", 1) == 1]


def pack_people(people: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flattens per-post person lists for `pair_pose_similarity`.

    Returns (keypoints [T, 17, 3], areas [T], offsets [N + 1]): post i owns rows
    offsets[i]:offsets[i + 1]. Flat rather than padded, so one crowded image costs no memory for
    the others.
    """
    counts = np.array([len(p) for p in people], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    flat = [np.asarray(kp, np.float32).reshape(NUM_KEYPOINTS, 3) for p in people for kp in p]
    kp = np.stack(flat) if flat else np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
    return kp, person_area(kp), offsets


def pair_pose_similarity(packed: tuple[np.ndarray, np.ndarray, np.ndarray],
                         query_rows: np.ndarray, ref_rows: np.ndarray) -> np.ndarray:
    """`pose_similarity` of post query_rows[m] against post ref_rows[m] for every m, vectorised.

    Args: packed: `pack_people` output; query_rows, ref_rows: [M] post indices.
    Returns: [M] float64.
    """
    kp, areas, offsets = packed
    query_rows, ref_rows = np.asarray(query_rows), np.asarray(ref_rows)
    out = np.zeros(query_rows.shape[0])
    nq = offsets[query_rows + 1] - offsets[query_rows]
    nr = offsets[ref_rows + 1] - offsets[ref_rows]
    pairs = np.flatnonzero((nq > 0) & (nr > 0))
    if pairs.size == 0:
        return out
    # Enumerate every (query person, reference person) combination of every pair, then take the
    # max within each pair's contiguous run.
    sizes = nq[pairs] * nr[pairs]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    owner = np.repeat(np.arange(pairs.size), sizes)
    within = np.arange(sizes.sum()) - starts[owner]
    a = offsets[query_rows[pairs]][owner] + within // nr[pairs][owner]
    b = offsets[ref_rows[pairs]][owner] + within % nr[pairs][owner]
    values = symmetric_oks(kp[a], kp[b], areas[a], areas[b])
    out[pairs] = np.maximum.reduceat(values, starts)
    return out
