# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Scoring images with a trained, converted or exported scorer: the one log-score function.

A scorer is a backbone with a one-output head; its log-score is `logits[:, 0]` of the
preprocessed uint8 image. `load_scorer` builds one from an ipa_jax workdir (the best
checkpoint and the run's own input settings), from a `python -m ipa_jax.convert` output
(e.g. the released I2PA model: 224x224 squashed, pixels in [0, 1]), or from a
`python -m ipa_jax.export` SavedModel: an `ExportedScorer`, which calls the SavedModel's
`score_pixels` signature on pixels prepared on the host exactly as for the JAX scorer (the
export's recorded `InputSpec`), so that a workdir and its export score files alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


class _ScoresInputs:
    """`score`, shared by the JAX `Scorer` and the `ExportedScorer` (both have a `spec`)."""

    spec: InputSpec

    def score(self, inputs, batch_size: int = 32):
        """Log-scores of image files (paths; unreadable ones are skipped and reported) or of
        pixels (uint8 [N, H, W, 3], or a list of [H, W, 3] arrays of any size), prepared as the
        spec says. Returns (the items scored: paths or indices, float32 log-scores,
        [(item, reason)] skipped)."""
        from ipa_jax import score as score_lib  # noqa: PLC0415 - score imports this module

        if len(inputs) and not isinstance(inputs[0], (str, os.PathLike)):
            return score_lib.score_pixels(self, inputs, batch_size)
        return score_lib.score_files(self, [os.fspath(p) for p in inputs], batch_size)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: `jax.jit(scorer)` works
class Scorer(_ScoresInputs):
    """A model, its variables (numpy) and its input spec."""

    model: nn.Module
    variables: dict
    spec: InputSpec
    dtype: Any = jnp.float32
    objective: str = ""  # the training loss (i2pa_bce, likes_ratio, log_likes_mse), "" unknown
    card: dict | None = None  # `ipa_jax.model_card`: what a score means (percentiles, levels)

    @classmethod
    def from_dir(cls, path: str) -> Scorer | ExportedScorer:
        """`load_scorer`: a training workdir, a converted checkpoint or an export folder."""
        return load_scorer(path)

    def __call__(self, variables, images: jax.Array) -> jax.Array:
        """Pure and jittable: uint8 `[N, size, size, 3]` -> log-scores `[N]`."""
        return log_scores(self.model, variables, images, self.spec.normalize, self.dtype)


EXPORT_METADATA = "ipa_jax_export.json"  # = `ipa_jax.export.EXPORT_METADATA` (TF-free here)


@dataclasses.dataclass(frozen=True, eq=False)
class ExportedScorer(_ScoresInputs):
    """A `python -m ipa_jax.export` SavedModel as a scorer: a host function, not jittable.

    Called on uint8 `[N, size, size, 3]` pixels already prepared as `spec` says (by
    `ipa_jax.score`, as for a JAX `Scorer`), it runs the SavedModel's `score_pixels` signature:
    the same serialized StableHLO that TF Serving runs. The normalisation and the image size
    are inside the SavedModel; only the host-side resize (`resize`, `resize_short_side`) may be
    overridden (`with_input`).
    """

    path: str
    loaded: Any  # what `tf.saved_model.load` returned: it owns the signature's variables
    spec: InputSpec
    metadata: dict  # the export's `ipa_jax_export.json`
    objective: str = ""
    card: dict | None = None

    def __post_init__(self):
        exported = InputSpec(**self.metadata["input"])
        if (self.spec.size, self.spec.normalize) != (exported.size, exported.normalize):
            raise ValueError(
                f"{self.path} is an export: its image size ({exported.size}) and pixel "
                f"normalisation ({exported.normalize!r}) are inside the SavedModel and cannot "
                f"be changed to {self.spec.size} and {self.spec.normalize!r}; export again.")

    @property
    def batch_size(self) -> int | None:
        """The export's fixed batch size, or None for a batch-polymorphic export."""
        return self.metadata.get("batch_size")

    def __call__(self, images) -> np.ndarray:
        """uint8 `[N, size, size, 3]` -> float32 log-scores `[N]` (numpy), any N: a fixed-batch
        export is called on zero-padded chunks of its batch size."""
        import tensorflow as tf  # noqa: PLC0415 - only exports need TensorFlow

        images = np.asarray(images, np.uint8)
        signature = self.loaded.signatures["score_pixels"]
        n, step = len(images), self.batch_size
        if step is None:
            return signature(images=tf.constant(images))["score"].numpy()
        scores = []
        for start in range(0, n, step):
            chunk = np.zeros((step, *images.shape[1:]), np.uint8)
            chunk[:min(step, n - start)] = images[start:start + step]
            scores.append(signature(images=tf.constant(chunk))["score"].numpy())
        return np.concatenate(scores)[:n] if scores else np.zeros(0, np.float32)


def is_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, EXPORT_METADATA))


def load_exported(path: str) -> ExportedScorer:
    """An `ExportedScorer` of a `python -m ipa_jax.export` folder (SavedModel + metadata)."""
    metadata_path = os.path.join(path, EXPORT_METADATA)
    try:
        with open(metadata_path) as f:
            metadata = json.load(f)
        spec = InputSpec(**metadata["input"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{metadata_path} is not what `python -m ipa_jax.export` writes "
                         f"({type(e).__name__}: {e}); export again.") from None
    import tensorflow as tf  # noqa: PLC0415 - only exports need TensorFlow

    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, tf.errors.*
        raise ValueError(f"{path} holds no loadable SavedModel ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]}); export again.") from None
    if "score_pixels" not in loaded.signatures:
        raise ValueError(f"{path}: the SavedModel has no score_pixels signature; export again.")
    card = model_card.read(path)
    objective = metadata.get("objective") or (card or {}).get("objective", "")
    return ExportedScorer(path, loaded, spec, metadata, objective=objective, card=card)


def with_input(scorer: Scorer | ExportedScorer, **overrides) -> Scorer | ExportedScorer:
    """`scorer` with its input spec's fields replaced (`resize`, `normalize`, ...; a None or ""
    value keeps the stored one), e.g. to score a converted model with other preprocessing.
    Raises ValueError for an export's size or normalisation (inside its SavedModel)."""
    changes = {k: v for k, v in overrides.items() if v not in (None, "")}
    return dataclasses.replace(scorer, spec=dataclasses.replace(scorer.spec, **changes))


def load_scorer(path: str) -> Scorer | ExportedScorer:
    """A scorer from a training workdir, a converted checkpoint or an export directory."""
    if is_export(path):
        return load_exported(path)
    if pretrained.is_workdir(path) and not pretrained.is_converted(path):
        config, variables, _ = pretrained.load_workdir(path)
        if config.get("task", "image_pairs") != "image_pairs":
            raise ValueError(f"{path} trained {config.task!r}, not an image scorer.")
        if config.get("fusion") is not None:  # needs each image's f_ret and depth
            from ipa_jax import history  # noqa: PLC0415 - history imports this module

            return history.HistoryScorer(path)
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
    raise ValueError(f"{path!r} is neither an ipa_jax workdir (best/), a converted "
                     f"checkpoint (ipa_jax_model.json) nor an export ({EXPORT_METADATA}).")
