# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The 3D-aware branch (Ji et al. 2023, SPEC 2): depth masks and a frozen backbone's features.

Conventions, the same wherever depth is used:
  - A depth map is normalised per image to [0, 1] by min-max, **0 = near, 1 = far**. Maps whose
    source says the opposite (disparity or inverse depth, e.g. MiDaS/DPT output: large = near)
    are inverted with `near_is="high"`. The embedded dataset's `depth/<post_id>.png` are
    16-bit PNGs of depth / 65535 with 0 = nearest (`ipa_jax/data/embedded_scenes.py`): "low".
  - A constant map (max == min) carries no depth; it normalises to `constant_value` everywhere
    and is flagged, so the caller counts it (data_prep treats it like a missing map).
  - The five masks are the SPEC intervals [lo, hi); an interval ending at 1 is closed, so
    depth 1 belongs to far and background: near [0, 1/3), middle [1/3, 2/3), far [2/3, 1],
    foreground [0, 0.5), background [0.5, 1].
  - Masked-out pixels are filled with the ImageNet mean colour (`fill="mean"`), i.e. exactly 0
    in the backbone's ImageNet-normalised input: the normalised image times the mask, as a
    PyTorch `img * mask` on the normalised tensor does. Masked areas are then the "no signal"
    input of a network trained on that normalisation, not a black region it has features
    for. `fill="black"` fills RGB 0 instead.
Features: each masked image through a frozen backbone (ResNet-50 at the paper's sizes) to its
pooled vector, [N, 5, F] per batch; `depth_features` is jittable, runs the 5N images in one
call, and stops gradients, so it serves data_prep (precomputed) and a training step
(on the fly, on the random crop) alike.

On the fly (`config.prep.depth.mode="on_the_fly"`), the frozen backbone's variables live in the
train state's `model_state[FROZEN]` (`tasks.ImagePairs.frozen_state`), not in `params`: no
gradient, no optimizer update and no optimizer state reach them, they are checkpointed (and
checksummed) with the state, and `config.init_from` never overwrites them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ipa_jax import config_lib, models, pretrained
from ipa_jax.normalize import IMAGENET_MEAN, preprocess

# The settings and their defaults live with every other config default (`config_lib`, JAX-free).
NAMES, INTERVALS = config_lib.DEPTH_NAMES, config_lib.DEPTH_INTERVALS
MODES, MISSING, FILLS = config_lib.DEPTH_MODES, config_lib.DEPTH_MISSING, config_lib.DEPTH_FILLS
default_config = config_lib.depth_config
FROZEN = "frozen_depth"  # the model_state key of the on-the-fly frozen backbone's variables


def normalize_depth(depth, *, near_is: str = "low", constant_value: float = 0.5):
    """Min-max per image to [0, 1] with 0 = near.

    Args:
      depth: [..., H, W] raw depth (numpy or jax). near_is: "low" when small values are near
        (depth), "high" when large values are (disparity, inverse depth).
      constant_value: the value of a constant map (max == min), which has no depth order.
    Returns:
      (depth01 float32 [..., H, W], constant bool [...]): the caller counts constant maps.
    """
    if near_is not in ("low", "high"):
        raise ValueError(f"near_is={near_is!r} must be 'low' or 'high'")
    d = jnp.asarray(depth, jnp.float32)
    lo = jnp.min(d, axis=(-2, -1), keepdims=True)
    hi = jnp.max(d, axis=(-2, -1), keepdims=True)
    constant = hi <= lo
    d01 = (d - lo) / jnp.where(constant, 1.0, hi - lo)
    if near_is == "high":
        d01 = 1.0 - d01
    d01 = jnp.where(constant, jnp.float32(constant_value), jnp.clip(d01, 0.0, 1.0))
    return d01, constant[..., 0, 0]


def depth_masks(depth01, intervals: Sequence[Sequence[float]] = INTERVALS):
    """Boolean masks [..., M, H, W] of depth01 [..., H, W], one per [lo, hi) interval.

    An interval whose upper end is 1 (or more) is closed, so depth 1 is in far and background.
    Jittable; works on a single map or a batch.
    """
    d = jnp.asarray(depth01, jnp.float32)[..., None, :, :]
    lo = jnp.asarray([a for a, _ in intervals], jnp.float32)[:, None, None]
    hi = jnp.asarray([b for _, b in intervals], jnp.float32)[:, None, None]
    return (d >= lo) & ((d < hi) | ((hi >= 1.0) & (d <= hi)))


def masked_images(images, depth01, intervals: Sequence[Sequence[float]] = INTERVALS, *,
                  normalize: str = "imagenet", fill: str = "mean", dtype=jnp.float32):
    """The backbone's input for each masked image: [N, M, H, W, 3] of uint8 images [N, H, W, 3].

    Pixels outside a mask hold `fill` ("mean": the ImageNet mean colour, 0 after "imagenet"
    normalisation; "black": RGB 0), then everything is normalised like the backbone's input.
    """
    if fill not in FILLS:
        raise ValueError(f"fill={fill!r} must be one of {FILLS}")
    masks = depth_masks(depth01, intervals)[..., None]  # [N, M, H, W, 1]
    colour = jnp.asarray(IMAGENET_MEAN if fill == "mean" else np.zeros(3, np.float32))
    x = jnp.where(masks, jnp.asarray(images, jnp.float32)[:, None], colour)
    return preprocess(x, normalize, dtype)


def depth_features(backbone_apply: Callable, variables, images, depth01,
                   intervals: Sequence[Sequence[float]] = INTERVALS, *,
                   normalize: str = "imagenet", fill: str = "mean"):
    """Pooled features [N, M, F] of the M masked images of each image, from a frozen backbone.

    Args:
      backbone_apply: (variables, normalised images [B, H, W, 3]) -> pooled [B, F], e.g.
        `frozen_backbone(cfg)[0]`. variables: its variables; no gradient reaches them.
      images: uint8 [N, H, W, 3] (a centre crop in data_prep, the training crop on the fly).
      depth01: [N, H, W] normalised depth of the same pixels.
    One backbone call on N * M images. Call it under jit (static `backbone_apply`, intervals,
    normalize, fill).
    """
    x = masked_images(images, depth01, intervals, normalize=normalize, fill=fill)
    n, m = x.shape[:2]
    pooled = backbone_apply(jax.lax.stop_gradient(variables), x.reshape(n * m, *x.shape[2:]))
    return jax.lax.stop_gradient(pooled.reshape(n, m, -1).astype(jnp.float32))


def frozen_backbone(cfg: ml_collections.ConfigDict, input_size: int | None = None
                    ) -> tuple[Callable, dict]:
    """(apply: (variables, normalised images) -> pooled [B, F], variables) of `cfg.backbone`.

    Weights from `cfg.init_from` (a converted torchvision checkpoint or a workdir; its
    classifier `fc` is not used), else initialised from `cfg.seed`. The variables are
    initialised for `input_size` x `input_size` images (default `cfg.crop`, data_prep's centre
    crop; on the fly: the training crop).
    """
    model = models.get_model(cfg.backbone, num_classes=0)
    size = input_size or cfg.crop
    dummy = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = jax.jit(lambda r: model.init(r, dummy, train=False))(jax.random.key(cfg.seed))
    if cfg.init_from:
        variables = pretrained.init_from(variables, cfg.init_from, dont_load=(r"^params/fc/",))

    def apply(v, x):
        return model.apply(v, x, train=False)[0]  # num_classes=0: the pooled features

    return apply, variables
