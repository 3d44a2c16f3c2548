# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Model registry: named backbone variants (torchvision's ResNets, timm's Swin names).

Every model maps images `[N, H, W, 3]` to `(logits, out)`, `out` holding each stage's output,
`feature_map`, `pooled` and `logits`. A scorer is a backbone built with `num_classes=1`; its
log-score is `logits[:, 0]`. Parameter trees keep the reference implementation's names
(`conv1`, ..., `fc` for ResNets; `patch_embed`, `layers_i`, ..., `head/fc` for Swin), so
`ipa_jax.convert` loads timm and torchvision checkpoints with a table.
"""

from typing import Any

import flax.linen as nn

from ipa_jax.models import layers, swin
from ipa_jax.models.resnet import ResNet

RESNETS: dict[str, dict[str, Any]] = {
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic"),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), block="basic"),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck"),
    "resnet101": dict(stage_sizes=(3, 4, 23, 3), block="bottleneck"),
    # Tiny variant for tests and demos on CPU.
    "resnet_mini": dict(stage_sizes=(1, 1, 1, 1), block="bottleneck", num_filters=16),
}
VARIANTS: dict[str, dict[str, Any]] = {**RESNETS, **swin.VARIANTS}
INPUT_SIZE: dict[str, int] = {**{name: 224 for name in RESNETS}, **swin.INPUT_SIZE}


def input_size(name: str) -> int:
    """The image size a variant is built for (its pretrained checkpoints' resolution)."""
    if name not in VARIANTS:
        raise ValueError(f"Unknown model {name!r}; known models: {sorted(VARIANTS)}")
    return INPUT_SIZE[name]


def get_model(name: str, ops: str = "auto", **kwargs: Any) -> nn.Module:
    """Builds a registered backbone; `kwargs` (num_classes, dtype, ...) override the variant.

    `ops` (`config.model.ops`) picks its convolutions, dense layers and matmuls; "auto" is
    resolved here, for this platform (`layers.resolve_ops`), so `model.ops` says which ran.
    """
    if name not in VARIANTS:
        raise ValueError(f"Unknown model {name!r}; known models: {sorted(VARIANTS)}")
    cls = ResNet if name in RESNETS else swin.SwinTransformer
    return cls(**{**VARIANTS[name], **kwargs, "ops": layers.resolve_ops(ops)})
