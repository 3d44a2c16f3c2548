# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Layers shared by the backbones."""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def drop_path(x: jnp.ndarray, rate: float, *, module: nn.Module, train: bool) -> jnp.ndarray:
    """Stochastic depth (timm's DropPath): zeroes whole samples, scales the kept by 1/keep.

    Draws from `module`'s "dropout" rng; the identity when not training or `rate` is 0.
    """
    if not train or rate == 0.0:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


def conv_general_dilated(
    lhs: jnp.ndarray,
    rhs: jnp.ndarray,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: lax.ConvDimensionNumbers | None = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jnp.ndarray:
    """`lax.conv_general_dilated` that runs a convolution without overlapping windows as a matmul.

    A drop-in for `nn.Conv(conv_general_dilated=...)`: same parameters, same result. A kernel
    of size 1 (any stride: the input is subsampled first) or equal to its stride (Swin's
    patch embedding), unpadded, undilated and ungrouped, on channels-last input with an
    [*window, in, out] kernel, is a reshape and one `dot_general`. XLA:CPU differentiates such
    a dot 3-7x faster than the convolution (its filter gradient is a plain GEMM rather than a
    convolution over the batch), which is most of ResNet-50's backward pass
    (benchmarks/backbones.py). Every other convolution goes to `lax.conv_general_dilated`.
    """
    conv = functools.partial(
        lax.conv_general_dilated,
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    spatial = lhs.ndim - 2
    window = rhs.shape[:spatial]
    strides = tuple(window_strides)
    channels_last = lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, dimension_numbers
    ) == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _channels_last(lhs.ndim))
    unpadded = padding == "VALID" or all(tuple(p) == (0, 0) for p in padding)
    plain = all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    as_matmul = (
        channels_last
        and unpadded
        and plain
        and feature_group_count == 1
        and batch_group_count == 1
        and all(k == 1 or k == s for k, s in zip(window, strides, strict=True))
    )
    if not as_matmul:
        return conv()
    # Windows that do not overlap: subsample a 1-wide axis, cut the others into patches.
    index = tuple(
        slice(None, None, s) if k == 1 else slice(None)
        for k, s in zip(window, strides, strict=True)
    )
    x = lhs[(slice(None), *index)]
    out = tuple(x.shape[1 + i] // k for i, k in enumerate(window))  # VALID drops a remainder
    if any(k > 1 for k in window):
        x = x[(slice(None), *(slice(0, o * k) for o, k in zip(out, window, strict=True)))]
        x = x.reshape(
            x.shape[0], *(d for o, k in zip(out, window, strict=True) for d in (o, k)), x.shape[-1]
        )
        # [N, o1, k1, o2, k2, ..., C] -> [N, o1, o2, ..., k1, k2, ..., C]
        order = (0, *range(1, 2 * spatial, 2), *range(2, 2 * spatial + 1, 2), 2 * spatial + 1)
        x = x.transpose(order).reshape(x.shape[0], *out, -1)
    kernel = rhs.reshape(-1, rhs.shape[-1])
    return lax.dot_general(
        x,
        kernel,
        (((x.ndim - 1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _channels_last(ndim: int) -> tuple[str, str, str]:
    """("NHWC", "HWIO", "NHWC") for ndim 4, with as many spatial letters as needed."""
    spatial = "".join("HWDXYZ"[i] for i in range(ndim - 2))
    return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"
