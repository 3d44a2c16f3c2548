# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Model registry: named ResNet variants and the `Scorer` wrapper that yields log-scores."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ipa_jax.models.resnet import ResNet

VARIANTS: dict[str, dict[str, Any]] = {
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic"),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), block="basic"),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck"),
    "resnet101": dict(stage_sizes=(3, 4, 23, 3), block="bottleneck"),
    # Tiny variant for tests and demos on CPU.
    "resnet_mini": dict(stage_sizes=(1, 1, 1, 1), block="bottleneck", num_filters=16),
}


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a registered backbone; `kwargs` (num_classes, dtype, ...) override the variant."""
    if name not in VARIANTS:
        raise ValueError(f"Unknown model {name!r}; known models: {sorted(VARIANTS)}")
    return ResNet(**{**VARIANTS[name], **kwargs})


class Scorer(nn.Module):
    """Maps images `[N, H, W, 3]` to log-scores `o` of shape `[N]` (popularity `s = exp(o)`).

    The backbone must have `num_classes=1`; its parameters live under the `backbone` key.
    """

    backbone: nn.Module

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        logits = self.backbone(x, train=train)
        if logits.shape[-1] != 1:
            raise ValueError(f"Scorer needs a backbone with num_classes=1, got {logits.shape}")
        return logits[:, 0]


def get_scorer(name: str, **kwargs: Any) -> Scorer:
    """A `Scorer` around `get_model(name, num_classes=1, **kwargs)`."""
    return Scorer(backbone=get_model(name, num_classes=1, **kwargs))
