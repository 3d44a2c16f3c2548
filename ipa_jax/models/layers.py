# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Layers shared by the backbones, and the choice between their two op sets (`op_set`).

The convolutions, dense layers and batched matmuls below are drop-ins for lax's and flax's with
custom gradients tuned for XLA:CPU ("cpu_tuned"). Models take an `ops` field, `config.model.ops`:
"cpu_tuned", "stock" (plain `lax.conv_general_dilated`, `nn.Dense`, `jnp.matmul`, what GPUs and
TPUs get unless a measurement there says otherwise: `benchmarks/backbones.py --ops`) or "auto"
(`resolve_ops`). Both sets have the same parameters and compute the same values.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ipa_jax.config_lib import MODEL_OPS


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
    [*window, in, out] kernel, is a reshape and one `dot_general` (below). XLA:CPU
    differentiates such a dot 3-7x faster than the convolution (its filter gradient is a plain
    GEMM rather than a convolution over the batch), which is most of ResNet-50's backward pass
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
    return dot_general(
        x,
        kernel,
        (((x.ndim - 1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def dot_general(
    lhs: jnp.ndarray,
    rhs: jnp.ndarray,
    dimension_numbers: lax.DotDimensionNumbers,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jnp.ndarray:
    """`lax.dot_general` whose dense-layer form is faster to train on CPU; same values.

    A drop-in for `nn.Dense(dot_general=...)`. The form `x [..., K] @ kernel [K, N]` gets a
    custom gradient with two changes, other forms go to `lax.dot_general`:
    - The kernel's gradient contracts every leading axis of `x` and `dy`, so XLA:CPU (whose
      YNNPACK GEMMs contract the minor dimension) copies one of them transposed first. JAX's
      rule always transposes `dy`; this one transposes `x` when K < N (a bottleneck's expanding
      1x1 conv, an MLP's fc1): 4x less data moved in those layers.
    - 16-bit inputs are multiplied with float32 accumulation in all three GEMMs, the result
      rounded to the input dtype (what bfloat16 "compute" means on every accelerator). XLA:CPU
      runs such GEMMs on AMX / AVX512-BF16 units, about 7x its bf16-output GEMM.
    """
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    dense = (tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,)
             and rhs.ndim == 2 and lhs.ndim >= 2 and not lhs_batch and not rhs_batch
             and lhs.dtype == rhs.dtype and preferred_element_type in (None, lhs.dtype))
    if not dense:
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
    return _dense_dot(lhs, rhs, None, precision)


def matmul(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Batched `a @ b` ([..., n, k] @ [..., k, m], equal batch shapes), float32-accumulated.

    Like `dot_general`'s dense form: for 16-bit inputs all GEMMs, forward and backward,
    accumulate in float32 and round to the input dtype; float32 inputs give `a @ b` exactly.
    """
    if a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2] or a.dtype != b.dtype:
        raise ValueError(f"matmul needs equal batch shapes and dtypes, got {a.shape} {a.dtype} "
                         f"and {b.shape} {b.dtype}")
    return _batched_matmul(a, b)


def _accumulate(dtype) -> Any:
    """Accumulation dtype of a GEMM on `dtype` inputs: float32 for 16-bit floats, else None."""
    return jnp.float32 if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else None


def _dot(a, b, contract, batch=((), ()), precision=None, out_dtype=None):
    """`lax.dot_general` accumulated per `_accumulate`, the result in `out_dtype` (a's)."""
    out = lax.dot_general(a, b, (contract, batch), precision=precision,
                          preferred_element_type=_accumulate(a.dtype))
    return out.astype(out_dtype or a.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _dense_dot(x, kernel, bias, precision):
    """x @ kernel (+ bias, added before rounding to x's dtype)."""
    acc = _accumulate(x.dtype) or x.dtype
    y = _dot(x, kernel, ((x.ndim - 1,), (0,)), precision=precision, out_dtype=acc)
    return (y if bias is None else y + bias.astype(acc)).astype(x.dtype)


def _dense_dot_fwd(x, kernel, bias, precision):
    return _dense_dot(x, kernel, bias, precision), (x, kernel, bias)


def _dense_dot_bwd(precision, residuals, dy):
    x, kernel, bias = residuals
    dy = dy.astype(x.dtype)
    dx = _dot(dy, kernel, ((dy.ndim - 1,), (1,)), precision=precision)
    leading = tuple(range(x.ndim - 1))
    if x.shape[-1] < dy.shape[-1]:  # transpose the smaller of x and dy (see dot_general)
        dkernel = _dot(x, dy, (leading, leading), precision=precision, out_dtype=kernel.dtype)
    else:
        dkernel = _dot(dy, x, (leading, leading), precision=precision, out_dtype=kernel.dtype).T
    dbias = None if bias is None else jnp.sum(dy, leading, dtype=jnp.float32).astype(bias.dtype)
    return dx, dkernel, dbias


_dense_dot.defvjp(_dense_dot_fwd, _dense_dot_bwd)


class Dense(nn.Module):
    """`nn.Dense` (same parameters and initialisers) as one custom-gradient op: `dot_general`'s
    dense form plus a bias that is added in the accumulation dtype and whose gradient is summed
    in float32 (XLA:CPU runs a bias gradient summed in bfloat16 as a slow reduce-window loop)."""

    features: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        dtype = self.dtype or jnp.result_type(x, kernel)
        return _dense_dot(jnp.asarray(x, dtype), kernel.astype(dtype), bias, self.precision)


@jax.custom_vjp
def _batched_matmul(a, b):
    batch = tuple(range(a.ndim - 2))
    return _dot(a, b, ((a.ndim - 1,), (b.ndim - 2,)), (batch, batch))


def _batched_matmul_fwd(a, b):
    return _batched_matmul(a, b), (a, b)


def _batched_matmul_bwd(residuals, g):
    a, b = residuals
    g = g.astype(a.dtype)
    n, batch = a.ndim, tuple(range(a.ndim - 2))
    da = _dot(g, b, ((n - 1,), (n - 1,)), (batch, batch))  # g @ b^T: [..., n, k]
    db = _dot(a, g, ((n - 2,), (n - 2,)), (batch, batch))  # a^T @ g: [..., k, m]
    return da, db


_batched_matmul.defvjp(_batched_matmul_fwd, _batched_matmul_bwd)


class OpSet(NamedTuple):
    """The ops a model is built from; the two sets have the same signatures and parameters."""

    conv_general_dilated: Callable  # for nn.Conv(conv_general_dilated=...)
    dense: type[nn.Module]  # nn.Dense's fields
    matmul: Callable  # batched [..., n, k] @ [..., k, m]


_OP_SETS = {
    "cpu_tuned": OpSet(conv_general_dilated, Dense, matmul),
    "stock": OpSet(lax.conv_general_dilated, nn.Dense, jnp.matmul),
}


def resolve_ops(ops: str) -> str:
    """"cpu_tuned" or "stock": what `ops` (one of `MODEL_OPS`) means on this platform.

    "auto" is "cpu_tuned" when JAX's default backend is the CPU, where the custom gradients
    were measured faster, and "stock" on GPU and TPU.
    """
    if ops not in MODEL_OPS:
        raise ValueError(f"ops must be one of {list(MODEL_OPS)}, got {ops!r}")
    if ops == "auto":
        return "cpu_tuned" if jax.default_backend() == "cpu" else "stock"
    return ops


def op_set(ops: str) -> OpSet:
    """The convolution, dense layer and matmul of `ops` (resolved by `resolve_ops`)."""
    return _OP_SETS[resolve_ops(ops)]


def _channels_last(ndim: int) -> tuple[str, str, str]:
    """("NHWC", "HWIO", "NHWC") for ndim 4, with as many spatial letters as needed."""
    spatial = "".join("HWDXYZ"[i] for i in range(ndim - 2))
    return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"
