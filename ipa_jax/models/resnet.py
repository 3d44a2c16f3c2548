# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""ResNet v1.5 in Flax linen with torchvision's layout and parameter names.

Module names mirror `torchvision.models.resnet50().state_dict()` so that converting
PyTorch weights is a renaming table: `layer1.0.conv1.weight` -> `layer1_0/conv1/kernel`,
`downsample.0` -> `downsample_0`, BatchNorm `weight`/`bias` -> `scale`/`bias` and
`running_mean`/`running_var` -> `batch_stats` `mean`/`var`.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ipa_jax.models import layers
from ipa_jax.models.layers import drop_path

# torchvision's init: kaiming_normal_(mode="fan_out", nonlinearity="relu"), untruncated.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# He-normal head with zero bias, as in the I2PA paper (torchvision uses a uniform init here).
head_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

_EXPANSION = {"basic": 1, "bottleneck": 4}


def _conv(
    features: int, kernel: int, stride: int, name: str, dtype: Any, param_dtype: Any, ops: str
) -> nn.Conv:
    """Bias-free conv with torchvision's symmetric padding (kernel - 1) // 2 (`ops`: see
    `layers.op_set`)."""
    # Explicit padding: "SAME" would pad (2, 3) for even inputs with stride 2, unlike torch.
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=conv_init,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
        # cpu_tuned: 1x1 convolutions (3 of 4 in a bottleneck) run as matmuls, ~1.5x a
        # training step on CPU.
        conv_general_dilated=layers.op_set(ops).conv_general_dilated,
    )


def _norm(train: bool, name: str, dtype: Any, param_dtype: Any) -> nn.BatchNorm:
    """BatchNorm with torch defaults; scale 1 and bias 0 are flax's defaults too."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,  # torch momentum 0.1 weights the new batch.
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class Block(nn.Module):
    """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block, stride on the 3x3 conv."""

    filters: int
    strides: int = 1
    block: str = "bottleneck"
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        conv = partial(_conv, dtype=self.dtype, param_dtype=self.param_dtype, ops=self.ops)
        norm = partial(_norm, train, dtype=self.dtype, param_dtype=self.param_dtype)
        out_features = self.filters * _EXPANSION[self.block]
        if self.block == "basic":
            y = nn.relu(norm("bn1")(conv(self.filters, 3, self.strides, "conv1")(x)))
            y = norm("bn2")(conv(self.filters, 3, 1, "conv2")(y))
        else:
            y = nn.relu(norm("bn1")(conv(self.filters, 1, 1, "conv1")(x)))
            y = nn.relu(norm("bn2")(conv(self.filters, 3, self.strides, "conv2")(y)))
            y = norm("bn3")(conv(out_features, 1, 1, "conv3")(y))
        y = drop_path(y, self.drop_path_rate, module=self, train=train)
        if self.strides != 1 or x.shape[-1] != out_features:
            x = norm("downsample_1")(conv(out_features, 1, self.strides, "downsample_0")(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet: images `[N, H, W, C]` -> `(logits [N, num_classes], out)`.

    `out` holds every stage's output for parity checks and feature use: `stem` (after the max
    pool), `stage1`..`stage4`, `feature_map` (= `stage4`, e.g. [N, 7, 7, 2048] at 224 px),
    `pooled` and `logits`. With `num_classes=0` the logits are the pooled features (timm's
    convention). `dtype` is the compute dtype; parameters (and BN statistics) stay in
    `param_dtype`; the pooled features and the `fc` head are computed in float32.
    Stochastic depth (`drop_path_rate`, rising linearly over the blocks as in timm) and
    dropout before the head (`dropout_rate`) are active with `train=True` and the "dropout" rng.
    `ops` picks the convolutions (`layers.op_set`; the float32 head is always `nn.Dense`).
    """

    stage_sizes: Sequence[int]
    block: str
    num_filters: int = 64
    num_classes: int = 1000
    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        if self.block not in _EXPANSION:
            raise ValueError(f"block must be one of {sorted(_EXPANSION)}, got {self.block!r}")
        conv = partial(_conv, dtype=self.dtype, param_dtype=self.param_dtype, ops=self.ops)
        norm = partial(_norm, train, dtype=self.dtype, param_dtype=self.param_dtype)
        x = jnp.asarray(x, self.dtype)
        x = nn.relu(norm("bn1")(conv(self.num_filters, 7, 2, "conv1")(x)))
        # flax pads max_pool with -inf, matching torch's MaxPool2d(3, 2, padding=1).
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        out = {"stem": x}
        num_blocks_total, block_index = sum(self.stage_sizes), 0
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = Block(
                    filters=self.num_filters * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    block=self.block,
                    drop_path_rate=self.drop_path_rate * block_index / max(1, num_blocks_total - 1),
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    ops=self.ops,
                    name=f"layer{i + 1}_{j}",
                )(x, train=train)
                block_index += 1
            out[f"stage{i + 1}"] = x
        out["feature_map"] = x
        x = out["pooled"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if self.num_classes:  # timm's convention: num_classes=0 gives pooled features
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = nn.Dense(
                self.num_classes,
                kernel_init=head_init,
                bias_init=nn.initializers.zeros,
                dtype=jnp.float32,
                param_dtype=self.param_dtype,
                name="fc",
            )(x)
        out["logits"] = x
        return x, out
