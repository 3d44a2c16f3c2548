# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The sidecar files of a raw dataset folder: one per post and signal, in the layout data_prep
reads.

  depth/<post_id>.png        16-bit grey, the map min-max normalised to [0, 65520] with 0 = near
                             (read with the default `config.prep.depth.near_is="low"`), at the
                             image's size;
  keypoints/<post_id>.json   COCO keypoint results: [{"image_id", "category_id": 1,
                             "keypoints": 17 x (x, y, v), "score"}], one per detected person
                             ([] for none); v is the keypoint's confidence, 0 below
                             `min_keypoint_score` (data_prep counts v > 0 as visible);
  background/<post_id>.png   8-bit grey at the image's size, 255 = background, 0 = subject;
  captions/<post_id>.txt     UTF-8, the generated caption.

Every file is written to a temporary name and renamed into place, so a file that exists is
finished: a killed run leaves no partial sidecar, and a rerun skips what exists.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

from ipa_jax.data import depth as depth_data

FOLDERS = {"depth": ("depth", ".png"), "keypoints": ("keypoints", ".json"),
           "background": ("background", ".png"), "captions": ("captions", ".txt")}
MIN_KEYPOINT_SCORE = 0.2
_TMP = ".annotate-tmp"


def path_of(raw_dir: str, signal: str, post_id: str) -> str:
    folder, ext = FOLDERS[signal]
    return os.path.join(raw_dir, folder, post_id + ext)


def remove_partial(raw_dir: str, signal: str) -> int:
    """Deletes the temporary files a killed run left in `signal`'s folder (only ours, by their
    suffix); returns how many."""
    folder = os.path.join(raw_dir, FOLDERS[signal][0])
    if not os.path.isdir(folder):
        return 0
    stale = [e.path for e in os.scandir(folder) if e.name.endswith(_TMP)]
    for path in stale:
        os.remove(path)
    return len(stale)


def depth_png(depth: np.ndarray, hw) -> bytes:
    """A depth map (larger = farther, any size) as its 16-bit PNG at `hw`, 0 = near."""
    d = np.asarray(depth, np.float64)
    if d.ndim != 2 or not np.isfinite(d).all():
        raise ValueError(f"a depth map must be a finite 2-D array, got shape {d.shape}")
    lo, hi = d.min(), d.max()
    d01 = ((d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)).astype(np.float32)
    return depth_data.encode_map(d01, hw)


def keypoints_json(post_id: str, people, min_score: float = MIN_KEYPOINT_SCORE) -> bytes:
    """COCO keypoint results of one image's people ({"keypoints": [17, 3], "score"})."""
    results = []
    for person in people:
        kp = np.asarray(person["keypoints"], np.float64)
        if kp.shape != (17, 3):
            raise ValueError(f"a person's keypoints must be [17, 3], got {kp.shape}")
        v = np.where(kp[:, 2] >= min_score, np.maximum(kp[:, 2], 1e-4), 0.0)
        flat = [round(float(x), 4) for row in zip(kp[:, 0], kp[:, 1], v, strict=True)
                for x in row]
        results.append({"image_id": post_id, "category_id": 1, "keypoints": flat,
                        "score": round(float(person["score"]), 4)})
    return json.dumps(results).encode()


def background_png(mask: np.ndarray, hw) -> bytes:
    """A background mask (True = background, any size) as its 8-bit PNG at `hw` (nearest)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a background mask must be 2-D, got shape {m.shape}")
    im = Image.fromarray(np.where(m.astype(bool), 255, 0).astype(np.uint8), mode="L")
    if im.size != (hw[1], hw[0]):
        im = im.resize((hw[1], hw[0]), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def caption_txt(caption: str) -> bytes:
    if not isinstance(caption, str):
        raise ValueError(f"a caption must be a str, got {type(caption).__name__}")
    return " ".join(caption.split()).encode("utf-8")


def encode(signal: str, post_id: str, output, hw) -> bytes:
    """The file contents of one annotator output for an image of size hw = (H, W)."""
    if signal == "depth":
        return depth_png(output, hw)
    if signal == "keypoints":
        return keypoints_json(post_id, output)
    if signal == "background":
        return background_png(output, hw)
    return caption_txt(output)


def write(path: str, data: bytes) -> None:
    """`data` into `path` atomically (a temporary file renamed into place)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}{_TMP}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
