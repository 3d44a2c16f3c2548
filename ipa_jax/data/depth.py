# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The 3D-aware branch's data step (Ji et al. 2023): depth maps in, [5, F] features per post out.

Depth maps live in `<depth_dir>/<post_id>.png` (8- or 16-bit grey, or 32-bit int/float) or
`.npy` (a finite 2-D array); `depth_dir` defaults to `<raw_dir>/depth`, where the embedded
dataset writes them. Conventions (0 = near, intervals, fill) are `ipa_jax.depth`'s.

Every post gets one counted outcome:
  ok                     the map was read, has the image's size and is not constant;
  resized depth map      another size than the image: resized to it (bilinear, antialiased,
                         like the images; another aspect ratio is stretched). Kept.
  missing depth map      no .png or .npy for the post;
  unreadable depth map   not an image PIL reads, not a finite 2-D array, a colour image, ...;
  constant depth map     max == min: no depth order.
The last three follow `cfg.missing`: "drop" (the post has no features; `compute_features`
lists it among the dropped) or "constant" (a map of `cfg.constant_value` everywhere).
Nothing is silently zeroed: the counts are returned and logged.

Both modes (`cfg.mode`) read, normalise and count the maps by these same rules:
  precomputed  `compute_features` runs the frozen backbone on each kept post's centre crop and
               returns [M, F] features;
  on_the_fly   `compute_features` returns [M, 0] (no backbone runs) and `encode_map` stores each
               kept post's normalised map, resized to the stored image, as a 16-bit PNG
               (`tfds_builder.DEPTH_MAP_LEVELS`) for the training step to mask its own crops.
"""

from __future__ import annotations

import collections
import functools
import io
import os
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image
from tqdm import tqdm

from ipa_jax import depth, features, images, input_pipeline
from ipa_jax.data import tfds_builder

OK, RESIZED, MISSING = "ok", "resized depth map", "missing depth map"
UNREADABLE, CONSTANT = "unreadable depth map", "constant depth map"
OUTCOMES = (OK, RESIZED, MISSING, UNREADABLE, CONSTANT)
_NO_DEPTH = (MISSING, UNREADABLE, CONSTANT)  # these follow cfg.missing
_GREY_MODES = ("L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class DepthMapError(ValueError):
    """A depth map file that cannot be used; the message says why."""


def read_depth_map(path: str) -> np.ndarray:
    """The raw values float32 [H, W] of a .png (any grey PIL mode) or .npy depth map.

    Raises DepthMapError with the reason for a file that is not a finite 2-D map.
    """
    if path.endswith(".npy"):
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DepthMapError(f"{path}: not a .npy array ({e})") from None
        if value.ndim != 2 or not (np.issubdtype(value.dtype, np.number)
                                   and not np.iscomplexobj(value)):
            raise DepthMapError(f"{path}: a {value.ndim}-D {value.dtype} array, not a 2-D "
                                "real [H, W] map")
        value = value.astype(np.float32)
    else:
        try:
            with images.open_image(path) as im:
                im.load()
                mode = im.mode
                value = np.asarray(im)
        except (OSError, ValueError) as e:  # ImageTooLarge is a ValueError
            raise DepthMapError(f"{path}: not an image PIL reads ({e})") from None
        if mode in ("RGB", "RGBA") and (value[..., 0] == value[..., 1]).all() and (
                value[..., 1] == value[..., 2]).all():
            value = value[..., 0]  # grey saved as RGB
        elif mode not in _GREY_MODES:
            raise DepthMapError(f"{path}: a {mode} image, not a grey depth map (a colour-"
                                "mapped visualisation carries no depth values)")
        value = value.astype(np.float32)
    if value.size == 0 or not np.isfinite(value).all():
        raise DepthMapError(f"{path}: empty, or holds NaN or infinite values")
    return value


def find_depth_map(depth_dir: str, post_id: str) -> str | None:
    """`<depth_dir>/<post_id>.png`, else `.npy`, else None."""
    for ext in (".png", ".npy"):
        path = os.path.join(depth_dir, post_id + ext)
        if os.path.isfile(path):
            return path
    return None


def _resize(value: np.ndarray, hw) -> np.ndarray:
    resized = tf.image.resize(value[..., None], tuple(hw), method="bilinear", antialias=True)
    return np.clip(resized.numpy()[..., 0], 0.0, 1.0)


def load_for_image(depth_dir: str, post_id: str, image_hw, cfg: ml_collections.ConfigDict):
    """(depth01 float32 [H, W] of the image's size or None when dropped, outcome).

    The map is normalised (`ipa_jax.depth.normalize_depth`: min-max, 0 = near) on its own
    pixels, then resized to `image_hw` when its size differs. Outcomes: the module docstring.
    """
    path = find_depth_map(depth_dir, post_id)
    outcome, d01 = MISSING, None
    if path is not None:
        try:
            raw = read_depth_map(path)
        except DepthMapError as e:
            logging.info("Depth map of %s unreadable: %s", post_id, e)
            outcome = UNREADABLE
        else:
            d01, constant = depth.normalize_depth(raw, near_is=cfg.near_is,
                                                  constant_value=cfg.constant_value)
            d01 = np.asarray(d01)
            if bool(constant):
                outcome, d01 = CONSTANT, None
            elif d01.shape != tuple(image_hw):
                outcome, d01 = RESIZED, _resize(d01, image_hw)
            else:
                outcome = OK
    if d01 is None and cfg.missing == "constant":
        d01 = np.full(tuple(image_hw), cfg.constant_value, np.float32)
    return d01, outcome


def crop_like_image(image: np.ndarray, depth01: np.ndarray, *, resize: int, crop: int):
    """(uint8 [crop, crop, 3], float32 [crop, crop]): the image as `resize_and_crop` centre-crops
    it (short side to `resize`, the retrieval embeddings' input), its depth map identically."""
    out, d = input_pipeline.resize_and_crop_with_depth(image, depth01, short_side=resize,
                                                       crop=crop)
    return out.numpy(), d.numpy()


def encode_map(depth01: np.ndarray, hw) -> bytes:
    """The stored `depth_map`: depth01 [H, W] resized to `hw` (as `load_for_image` resizes),
    as a 16-bit grey PNG of round(depth01 * DEPTH_MAP_LEVELS), at most 7.6e-6 off."""
    if depth01.shape != tuple(hw):
        depth01 = _resize(depth01, hw)
    levels = np.round(np.clip(depth01, 0.0, 1.0) * tfds_builder.DEPTH_MAP_LEVELS)
    buf = io.BytesIO()
    Image.fromarray(levels.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def stored_map(raw_dir: str, depth_dir: str, post_id: str, image_path: str, stored_image: bytes,
               cfg: ml_collections.ConfigDict) -> bytes:
    """`encode_map` of a kept post's map (read and normalised by `load_for_image` for the raw
    image), at the size of `stored_image`, the encoded image the TFRecords hold."""
    depth_dir = depth_dir or os.path.join(raw_dir, "depth")
    with images.open_image(os.path.join(raw_dir, image_path)) as im:
        raw_hw = (im.height, im.width)
    with images.open_image(stored_image) as im:
        stored_hw = (im.height, im.width)
    d01, outcome = load_for_image(depth_dir, post_id, raw_hw, cfg)
    if d01 is None:
        raise ValueError(f"The depth map of post {post_id} is no longer usable ({outcome}); was "
                         f"{depth_dir} changed during the preparation? Prepare again.")
    return encode_map(d01, stored_hw)


def summary(outcomes, cfg: ml_collections.ConfigDict, raw_dir: str, shape) -> tuple:
    """(drops by reason, summary.json's `depth`) from the depth-map outcomes of every post
    ({outcome: count}, `OUTCOMES`) and the features' [M, F] shape: posts
    without a usable map are drops under their outcome with missing="drop", else kept with a
    constant map."""
    outcomes = {o: int(outcomes[o]) for o in OUTCOMES if outcomes.get(o)}
    no_map = {o: n for o, n in outcomes.items() if o not in (OK, RESIZED)}
    dropped = sum(no_map.values()) if cfg.missing == "drop" else 0
    return (no_map if cfg.missing == "drop" else {}), {
        "outcomes": outcomes, "missing": cfg.missing,
        "kept": sum(outcomes.values()) - dropped, "dropped": dropped,
        "kept_resized": outcomes.get(RESIZED, 0),
        "kept_constant": 0 if cfg.missing == "drop" else sum(no_map.values()),
        "shape": list(shape),
        "depth_dir": cfg.depth_dir or os.path.join(os.path.abspath(raw_dir), "depth")}


class DepthFeatures(NamedTuple):
    features: np.ndarray  # float32 [P, M, F]; NaN rows for dropped posts (never zeros)
    outcomes: collections.Counter  # outcome -> number of posts
    kept: np.ndarray  # int indices of the posts with features
    dropped: np.ndarray  # int indices of the posts dropped by cfg.missing="drop"


def _items(raw_dir: str, posts_or_paths):
    """(post_id, image path) of posts (`.post_id`, `.image_path` under raw_dir) or pairs."""
    return [(p.post_id, os.path.join(raw_dir, p.image_path)) if hasattr(p, "post_id")
            else (p[0], os.path.join(raw_dir, p[1])) for p in posts_or_paths]


def _stat(path: str | None):
    if path is None:
        return None
    s = os.stat(path)
    return path, s.st_size, s.st_mtime_ns


def map_for_image(depth_dir: str, post_id: str, image_path: str,
                  cfg: ml_collections.ConfigDict):
    """`load_for_image` at the size of the image file `image_path`: (depth01 or None,
    outcome)."""
    with images.open_image(image_path) as im:
        hw = (im.height, im.width)
    return load_for_image(depth_dir, post_id, hw, cfg)


def features_of(cfg: ml_collections.ConfigDict, image_paths, maps) -> np.ndarray:
    """[n, M, F] frozen-backbone features of n images' centre crops and their depth maps
    (`crop_like_image`), in padded batches of cfg.batch_size: a row does not depend on its
    batch."""
    crops = [crop_like_image(images.read_rgb(path), d, resize=cfg.resize, crop=cfg.crop)
             for path, d in zip(image_paths, maps, strict=True)]
    return _run_backbone(cfg, [c for c, _ in crops], [m for _, m in crops], cfg.batch_size)


def _run_backbone(cfg, crops, maps, batch_size: int) -> np.ndarray:
    """[n, M, F] features of n centre crops and their depth maps, in padded batches."""
    fn = _jitted(cfg)
    out = []
    for i in range(0, len(crops), batch_size):
        x, d = np.stack(crops[i:i + batch_size]), np.stack(maps[i:i + batch_size])
        n = len(x)
        x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
        d = np.concatenate([d, np.zeros((batch_size - n, *d.shape[1:]), d.dtype)])
        out.append(np.asarray(fn(x, d))[:n])
    return np.concatenate(out).astype(np.float32)


_FEATURE_FNS: dict = {}
_BACKBONE_FIELDS = ("backbone", "init_from", "seed", "crop", "intervals", "normalize", "fill")


def _jitted(cfg):
    """(uint8 crops, depth01) -> features, of `cfg`'s frozen backbone; built once per setting."""
    key = features.cache_key(*(cfg[k] for k in _BACKBONE_FIELDS))
    if key not in _FEATURE_FNS:
        _FEATURE_FNS.clear()  # one backbone's variables held at a time
        apply, variables = depth.frozen_backbone(cfg)
        intervals = tuple(tuple(float(v) for v in iv) for iv in cfg.intervals)
        fn = jax.jit(functools.partial(depth.depth_features, apply, intervals=intervals,
                                       normalize=cfg.normalize, fill=cfg.fill))
        _FEATURE_FNS[key] = functools.partial(fn, variables)
    return _FEATURE_FNS[key]


def _chunk_features(cfg, chunk, start: int, kept, maps, depth_dir: str,
                    cache_dir: str) -> np.ndarray:
    """[len(kept), M, F] features of a chunk's kept posts (indices from `start`, their maps),
    read from the chunk's cache file when a run wrote it, else computed and written."""
    skip = ("enabled", "depth_dir", "mode", "batch_size")  # no effect on the features
    spec = {k: v for k, v in cfg.to_dict().items() if k not in skip}
    key = features.cache_key("depth", spec, [(pid, _stat(path), _stat(
        find_depth_map(depth_dir, pid))) for pid, path in chunk])
    path = os.path.join(cache_dir, f"depth-{cfg.backbone}-{key}.npz")

    return features.cached_array(path, lambda: features_of(
        cfg, [chunk[i - start][1] for i in kept], maps))


def compute_features(raw_dir: str, depth_dir: str, posts_or_paths,
                     cfg: ml_collections.ConfigDict, cache_dir: str, *, progress: bool = True,
                     chunk_size: int = 256) -> DepthFeatures:
    """The [M, F] depth features of every post's centre crop, cached by chunks.

    Args:
      raw_dir: the raw dataset; image paths are relative to it. depth_dir: the maps ("" =
        `<raw_dir>/depth`). posts_or_paths: posts (`.post_id`, `.image_path`) or
        (post_id, image path) pairs. cfg: `config.prep.depth`. cache_dir: where finished chunks
        are kept (`depth-<backbone>-<key>.npz`): a rerun, or a run resumed after a kill,
        reads them instead of running the backbone.
    Returns:
      DepthFeatures(features [P, M, F] with NaN rows for dropped posts, outcome counts, kept
      and dropped post indices). With `cfg.mode="on_the_fly"` no backbone runs and F = 0;
      the outcomes, kept and dropped posts are the same as precomputed's.
    """
    depth_dir = depth_dir or os.path.join(raw_dir, "depth")
    if not os.path.isdir(depth_dir):
        logging.warning("Depth map folder %s does not exist: every post's map is missing",
                        depth_dir)
    items = _items(raw_dir, posts_or_paths)
    precomputed = cfg.mode == "precomputed"
    rows: dict[int, np.ndarray] = {}
    outcome_of: list[str] = []
    bar = tqdm(total=len(items), desc=f"{cfg.backbone} depth features" if precomputed
               else "depth maps", disable=not progress)
    for start in range(0, len(items), chunk_size):
        chunk = items[start:start + chunk_size]
        kept, maps = [], []
        for i, (pid, image_path) in enumerate(chunk, start):
            d01, outcome = map_for_image(depth_dir, pid, image_path, cfg)
            outcome_of.append(outcome)
            if d01 is not None:
                kept.append(i)
                maps.append(d01)
        if kept and precomputed:
            value = _chunk_features(cfg, chunk, start, kept, maps, depth_dir, cache_dir)
        else:  # on the fly: the training step computes them
            value = np.zeros((len(kept), len(cfg.intervals), 0), np.float32)
        rows.update(zip(kept, value, strict=True))
        bar.update(len(chunk))
    bar.close()
    width = next(iter(rows.values())).shape if rows else (len(cfg.intervals), 0)
    out = np.full((len(items), *width), np.nan, np.float32)
    for i, row in rows.items():
        out[i] = row
    counts = collections.Counter(outcome_of)
    kept_idx = np.array(sorted(rows), np.int64)
    dropped = np.array(sorted(set(range(len(items))) - set(rows)), np.int64)
    _report(counts, items, outcome_of, cfg, len(dropped))
    return DepthFeatures(out, counts, kept_idx, dropped)


def _report(counts, items, outcome_of, cfg, num_dropped: int) -> None:
    for outcome in OUTCOMES[1:]:
        if counts[outcome]:
            examples = [pid for (pid, _), o in zip(items, outcome_of, strict=True)
                        if o == outcome][:3]
            then = ("resized to the image" if outcome == RESIZED else
                    "dropped" if cfg.missing == "drop" else
                    f"given a constant map of {cfg.constant_value}")
            logging.warning("%d posts: %s, %s (config.prep.depth.missing=%r), e.g. %s",
                            counts[outcome], outcome, then, cfg.missing, examples)
    if num_dropped:
        logging.warning("%d of %d posts dropped for want of a usable depth map", num_dropped,
                        len(items))
