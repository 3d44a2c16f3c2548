# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Scoring images with a trained or converted scorer: the one log-score function.

A scorer is a backbone with a one-output head; its log-score is `logits[:, 0]` of the
preprocessed uint8 image. `load_scorer` builds one from an ipa_jax workdir (the best
checkpoint and the run's own input settings) or from a `python -m ipa_jax.convert` output
(e.g. the released I2PA model: 224x224 squashed, pixels in [0, 1]).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ipa_jax import convert, model_card, models, pretrained
from ipa_jax.normalize import preprocess


def log_scores(model: nn.Module, variables, images: jax.Array, normalize: str,
               dtype: Any = jnp.float32) -> jax.Array:
    """uint8 images `[N, H, W, 3]` -> float32 log-scores `[N]` (eval mode)."""
    logits, _ = model.apply(variables, preprocess(images, normalize, dtype), train=False)
    return logits[:, 0].astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """How a scorer's images are prepared: what serving and file scoring must reproduce.

    resize: "crop" (short side to `resize_short_side`, then the central `size` square, as
            ipa_jax evaluates) or "squash" (both sides to `size`, the released I2PA code).
    normalize: "imagenet" (mean/std) or "unit" (pixels in [0, 1]).
    """

    size: int
    resize: str = "crop"
    resize_short_side: int = 256
    normalize: str = "imagenet"

    def __post_init__(self):
        if self.resize not in ("crop", "squash"):
            raise ValueError(f"resize must be 'crop' or 'squash', got {self.resize!r}")
        if self.normalize not in ("imagenet", "unit"):
            raise ValueError(f"normalize must be 'imagenet' or 'unit', got {self.normalize!r}")
        if self.resize == "crop" and self.resize_short_side < self.size:
            raise ValueError(f"resize_short_side={self.resize_short_side} < size={self.size}")


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: `jax.jit(scorer)` works
class Scorer:
    """A model, its variables (numpy) and its input spec."""

    model: nn.Module
    variables: dict
    spec: InputSpec
    dtype: Any = jnp.float32
    objective: str = ""  # the training loss (i2pa_bce, likes_ratio, log_likes_mse), "" unknown
    card: dict | None = None  # `ipa_jax.model_card`: what a score means (percentiles, levels)

    @classmethod
    def from_dir(cls, path: str) -> Scorer:
        """`load_scorer`: a training workdir or a converted checkpoint folder."""
        return load_scorer(path)

    def score(self, inputs, batch_size: int = 32):
        """Log-scores of image files (paths; unreadable ones are skipped and reported) or of
        pixels (uint8 [N, H, W, 3], or a list of [H, W, 3] arrays of any size), prepared as the
        spec says. Returns (the items scored: paths or indices, float32 log-scores,
        [(item, reason)] skipped)."""
        from ipa_jax import score as score_lib  # noqa: PLC0415 - score imports this module

        if len(inputs) and not isinstance(inputs[0], (str, os.PathLike)):
            return score_lib.score_pixels(self, inputs, batch_size)
        return score_lib.score_files(self, [os.fspath(p) for p in inputs], batch_size)

    def __call__(self, variables, images: jax.Array) -> jax.Array:
        """Pure and jittable: uint8 `[N, size, size, 3]` -> log-scores `[N]`."""
        return log_scores(self.model, variables, images, self.spec.normalize, self.dtype)


def with_input(scorer: Scorer, **overrides) -> Scorer:
    """`scorer` with its input spec's fields replaced (`resize`, `normalize`, ...; a None or ""
    value keeps the stored one), e.g. to score a converted model with other preprocessing."""
    changes = {k: v for k, v in overrides.items() if v not in (None, "")}
    return dataclasses.replace(scorer, spec=dataclasses.replace(scorer.spec, **changes))


def load_scorer(path: str) -> Scorer:
    """A scorer from a training workdir or a converted checkpoint directory."""
    if pretrained.is_workdir(path) and not pretrained.is_converted(path):
        config, variables, _ = pretrained.load_workdir(path)
        if config.get("task", "image_pairs") != "image_pairs":
            raise ValueError(f"{path} trained {config.task!r}, not an image scorer.")
        if config.get("fusion") is not None:
            raise ValueError(f"{path} is a retrieval-augmented model (config.fusion): its "
                             "scores need f_ret and depth from a user's history: not yet "
                             "supported; see issue 15.")
        try:
            dtype = jnp.dtype(config.model.dtype)
            name = config.model.name
            spec = InputSpec(size=config.input.crop_size, resize="crop",
                             resize_short_side=config.input.resize_short_side,
                             normalize=config.input.normalize)
        except (AttributeError, KeyError, TypeError) as e:
            raise ValueError(f"{os.path.join(path, 'config.json')} is not the config of an "
                             f"ipa_jax run ({type(e).__name__}: {e}).") from None
        model = models.get_model(name, num_classes=1, dtype=dtype,
                                 ops=config.model.get("ops", "auto"))
        return Scorer(model, variables, spec, dtype, objective=str(config.get("loss", "")),
                      card=model_card.read(path))
    if pretrained.is_converted(path):
        metadata, variables = pretrained.load_converted(path)
        try:
            name, num_classes = metadata["model"], metadata["num_classes"]
            spec = InputSpec(**metadata["input"])
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"{os.path.join(path, convert.METADATA)} is not what `python -m ipa_jax.convert`"
                f" writes ({type(e).__name__}: {e}); run the conversion again.") from None
        if num_classes != 1:
            raise ValueError(f"{path} holds a {num_classes}-class {name}; a scorer has one "
                             "output (num_classes=1).")
        model = models.get_model(name, num_classes=1)
        return Scorer(model, variables, spec, objective=metadata.get("objective", ""),
                      card=model_card.read(path))
    raise ValueError(f"{path!r} is neither an ipa_jax workdir (best/) nor a converted "
                     "checkpoint (ipa_jax_model.json).")
