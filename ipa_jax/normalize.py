# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""On-device input normalisation: the pipeline ships uint8, the model sees floats."""

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def preprocess(images: jax.Array, normalize: str, dtype=jnp.float32) -> jax.Array:
    """uint8 images -> model input: [0, 1] ('unit', the I2PA release) or ImageNet mean/std."""
    x = images.astype(jnp.float32)
    x = x / 255.0 if normalize == "unit" else (x - IMAGENET_MEAN) / IMAGENET_STD
    return x.astype(dtype)
