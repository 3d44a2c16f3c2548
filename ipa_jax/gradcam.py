# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Grad-CAM heatmaps: where in an image a scorer's log-score comes from.

Grad-CAM (Selvaraju et al., ICCV 2017) weighs each channel c of the backbone's last feature map
A [N, h, w, C] by the spatial mean of the log-score's gradient with respect to it,
alpha_c = mean_ij dO/dA_ijc, and keeps the positive part of the weighted sum of the channels:
cam = ReLU(sum_c alpha_c A_c), [N, h, w]. Each image's cam is then divided by its maximum, so
it lies in [0, 1] with 0 meaning "no positive evidence" (an all-zero cam stays 0: nothing in
the image raises its score), and upsampled bilinearly to the input size for display.

How the gradient is taken, without touching any model: every model in `ipa_jax.models` (and
`RetrievalAugmentedScorer`) returns its last feature map as `out["feature_map"]`, the output
of one module call (ResNet: the last residual block; Swin: the final `norm`). A first trace
(`jax.eval_shape`: nothing is computed) records every module method's output through flax's
`nn.intercept_methods` and finds the call whose output *is* `out["feature_map"]` (the same
traced array). The second pass adds a zero `delta` to that call's output, through another
interceptor, and differentiates the summed log-scores with respect to `delta`: dO/d delta =
dO/dA at A, with everything downstream of the feature map on the gradient's path (the pooling
and head of a backbone, or the fusion module with its `f_ret` and `depth`). No `sow`, no
`perturb`: variable trees, checkpoints and weight conversion see the models unchanged.
Images are independent in eval mode (BatchNorm uses its running statistics), so the gradient
of the sum is each image's own gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ipa_jax.normalize import preprocess


@dataclasses.dataclass(frozen=True)
class Source:
    """The module call whose output is the feature map: its position among the intercepted
    calls (in the order they return), the module's path and the method's name."""

    index: int
    path: tuple[str, ...]
    method: str

    def __str__(self) -> str:
        return f"{'/'.join(self.path) or '<top>'}.{self.method} (call {self.index})"


def _apply(model: nn.Module, variables, x: jax.Array, extra: tuple):
    """`(logits, out)` of `model` in eval mode; `extra` (e.g. f_ret, depth) follow the images."""
    return model.apply(variables, x, *extra, train=False)


def find_source(model: nn.Module, variables, x: jax.Array, *extra) -> tuple[Source, Any]:
    """(which module call outputs `out["feature_map"]`, its `jax.ShapeDtypeStruct`), found
    from one abstract trace (`jax.eval_shape`: no computation)."""
    found: list[Source] = []

    def trace(variables, x, extra):
        calls: list[tuple[tuple[str, ...], str, Any]] = []

        def record(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            calls.append((tuple(context.module.path), context.method_name, y))
            return y

        with nn.intercept_methods(record):
            _, out = _apply(model, variables, x, extra)
        feature_map = out.get("feature_map") if isinstance(out, dict) else None
        if feature_map is None:
            raise ValueError(f"{type(model).__name__} returns no out['feature_map']: Grad-CAM "
                             "needs the last feature map.")
        # The first (innermost) call that returned this very array; an enclosing call that
        # returns it unchanged would be equivalent.
        found.extend(Source(i, path, name) for i, (path, name, y) in enumerate(calls)
                     if y is feature_map)
        if not found:
            raise ValueError(f"{type(model).__name__}'s out['feature_map'] is not the output "
                             "of a module call, so Grad-CAM cannot reach it.")
        return feature_map

    shape = jax.eval_shape(trace, variables, x, tuple(extra))
    return found[0], shape


def _perturbed(source: Source, delta: jax.Array):
    """An interceptor that adds `delta` to the output of the call `source` names."""
    count = itertools.count()

    def add(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        if next(count) != source.index:
            return y
        if (tuple(context.module.path), context.method_name) != (source.path, source.method):
            raise RuntimeError(f"module calls changed order between traces: expected {source}, "
                               f"got {'/'.join(context.module.path)}.{context.method_name}")
        return y + delta.astype(y.dtype)

    return add


def feature_map_grads(model: nn.Module, variables, x: jax.Array, *extra
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(feature map A, dO/dA, log-scores O), float32 `[N, h, w, C]`, `[N, h, w, C]`, `[N]`:
    the gradient of each image's log-score `logits[:, 0]` at its last feature map. Traceable
    (jit it, or use `heatmaps`); `extra` are the model's further inputs (f_ret, depth)."""
    source, shape = find_source(model, variables, x, *extra)

    def total(delta):
        with nn.intercept_methods(_perturbed(source, delta)):
            logits, out = _apply(model, variables, x, extra)
        scores = logits[:, 0].astype(jnp.float32)
        return jnp.sum(scores), (out["feature_map"], scores)

    delta = jnp.zeros(shape.shape, jnp.float32)
    grads, (feature_map, scores) = jax.grad(total, has_aux=True)(delta)
    return feature_map.astype(jnp.float32), grads, scores


def grad_cam(feature_map: jax.Array, grads: jax.Array) -> jax.Array:
    """Grad-CAM of `[N, h, w, C]` activations and gradients -> float32 `[N, h, w]` in [0, 1]:
    ReLU(sum_c mean_ij(grads)_c * feature_map_c), divided by each image's maximum (0 stays 0)."""
    feature_map = jnp.asarray(feature_map, jnp.float32)
    weights = jnp.mean(jnp.asarray(grads, jnp.float32), axis=(1, 2))  # [N, C]
    cam = nn.relu(jnp.einsum("nhwc,nc->nhw", feature_map, weights))
    peak = jnp.max(cam, axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)


def upsample(cams: jax.Array, size: tuple[int, int]) -> jax.Array:
    """`[N, h, w]` -> `[N, *size]`, bilinear (convex weights: values stay in [0, 1])."""
    if tuple(cams.shape[1:]) == tuple(size):
        return cams
    return jnp.clip(jax.image.resize(cams, (cams.shape[0], *size), "bilinear"), 0.0, 1.0)


def cams(model: nn.Module, variables, x: jax.Array, *extra, full_size: bool) -> jax.Array:
    """`heatmaps`, traceable: for callers that jit it inside their own function."""
    maps = grad_cam(*feature_map_grads(model, variables, x, *extra)[:2])
    return upsample(maps, x.shape[1:3]) if full_size else maps


_heatmaps = functools.partial(jax.jit, static_argnums=0, static_argnames="full_size")(cams)


def heatmaps(model: nn.Module, variables, x: jax.Array, *extra,
             full_size: bool = True) -> np.ndarray:
    """Grad-CAM of each image's log-score: float32 `[N, H, W]` in [0, 1] at the input's size
    (`full_size=False`: the feature map's `[N, h, w]`). Jitted, one compilation per model and
    shapes.

    Args:
      model: any `ipa_jax.models` backbone with a one-output head, or a
        `RetrievalAugmentedScorer`: `model.apply(variables, x, *extra, train=False)` gives
        `(logits [N, 1], out)` with `out["feature_map"]`.
      x: the preprocessed images `[N, H, W, 3]` (see `ipa_jax.normalize.preprocess`).
      extra: further inputs after the images, e.g. `f_ret, depth`.
    """
    return np.asarray(_heatmaps(model, variables, x, *extra, full_size=full_size))


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _scorer_heatmaps(model, variables, pixels, normalize, dtype, full_size) -> jax.Array:
    return cams(model, variables, preprocess(pixels, normalize, dtype), full_size=full_size)


def for_scorer(scorer, pixels, *, full_size: bool = True) -> np.ndarray:
    """`heatmaps` of an `ipa_jax.scoring.Scorer` on prepared uint8 pixels `[N, S, S, 3]`
    (`ipa_jax.score.load_images`), normalised as its spec says: float32 `[N, S, S]` in [0, 1]
    (`full_size=False`: the feature map's grid)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"pixels must be uint8 [N, S, S, 3], got {pixels.dtype} {pixels.shape}")
    return np.asarray(_scorer_heatmaps(scorer.model, scorer.variables, pixels,
                                       scorer.spec.normalize, scorer.dtype, full_size))
