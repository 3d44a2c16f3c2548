# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Swin Transformer in Flax linen, a port of timm's `swin_transformer.py` (timm >= 0.9 layout).

Module names mirror timm's state dict so that converting weights is a renaming table:
`layers.1.blocks.0.attn.qkv.weight` -> `layers_1/blocks_0/attn/qkv/kernel`, LayerNorm
`weight`/`bias` -> `scale`/`bias`. Tokens stay NHWC throughout. As in timm, the window of a
stage is clamped to its token grid when the grid is no larger than the window (and that stage
then does not shift), so the relative-position bias tables' shapes follow the input resolution
the model is initialised at (`ipa_jax.convert` resizes a checkpoint's tables like timm).
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ipa_jax.models import layers
from ipa_jax.models.layers import drop_path

# timm's trunc_normal_(std=.02) cuts at +-2 absolute, i.e. +-100 std: a plain normal.
dense_init = nn.initializers.normal(0.02)
# torch's default Conv2d init, kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in)).
conv_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
LN_EPSILON = 1e-5  # torch's LayerNorm default (flax's is 1e-6)
MASK_VALUE = -100.0  # timm's value for token pairs from different regions of a shifted window


def window_shift(
    resolution: Sequence[int], window: int, shift: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """timm's `_calc_window_shift`: a grid no larger than the window is one unshifted window.

    Returns ((window_h, window_w), (shift_h, shift_w)) for a token grid `resolution` (H, W).
    """
    windows = tuple(r if r <= window else window for r in resolution)
    shifts = tuple(0 if r <= w else shift for r, w in zip(resolution, windows, strict=True))
    return windows, shifts


def relative_position_index(win_h: int, win_w: int) -> np.ndarray:
    """[win_h * win_w, win_h * win_w] index into the bias table of each query/key offset."""
    coords = np.stack(np.meshgrid(np.arange(win_h), np.arange(win_w), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :]  # [2, area, area]
    return (rel[0] + win_h - 1) * (2 * win_w - 1) + (rel[1] + win_w - 1)


def window_partition(x: jnp.ndarray, window: Sequence[int]) -> jnp.ndarray:
    """[B, H, W, C] -> [B * num_windows, wh * ww, C], windows in row-major order per image."""
    b, h, w, c = x.shape
    wh, ww = window
    x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def window_reverse(windows: jnp.ndarray, window: Sequence[int], h: int, w: int) -> jnp.ndarray:
    """Inverse of `window_partition`: [B * num_windows, wh * ww, C] -> [B, H, W, C]."""
    wh, ww = window
    c = windows.shape[-1]
    x = windows.reshape(-1, h // wh, w // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shift_attention_mask(
    height: int, width: int, window: Sequence[int], shift: Sequence[int]
) -> np.ndarray | None:
    """timm's shifted-window mask [num_windows, area, area]: 0 within a region, -100 across.

    `height`, `width` are the padded grid (multiples of the window). None without a shift.
    """
    if not any(shift):
        return None
    regions = np.zeros((1, height, width, 1), np.float32)
    (wh, ww), (sh, sw) = window, shift
    # timm's slices, from the padded grid's end; along an unshifted axis (one whole window,
    # -0 == 0) the last slice covers it all, so that axis makes no regions.
    cnt = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            regions[:, hs, ws, :] = cnt
            cnt += 1
    ids = np.asarray(window_partition(regions, window))[..., 0]  # [num_windows, area]
    return np.where(ids[:, None, :] != ids[:, :, None], MASK_VALUE, 0.0).astype(np.float32)


def _symmetric_uniform(bound: float) -> nn.initializers.Initializer:
    """U(-bound, bound), torch's default for Conv2d biases."""
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound
    )


def _dense(features: int, name: str, dtype: Any, param_dtype: Any, ops: str,
           use_bias: bool = True) -> nn.Module:
    """The dense layer of `ops` (`layers.op_set`) with timm's initialisation."""
    return layers.op_set(ops).dense(
        features,
        use_bias=use_bias,
        kernel_init=dense_init,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def _layer_norm(name: str, dtype: Any, param_dtype: Any) -> nn.LayerNorm:
    # flax reduces in float32 even for bf16 inputs (force_float32_reductions).
    return nn.LayerNorm(epsilon=LN_EPSILON, dtype=dtype, param_dtype=param_dtype, name=name)


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows, with a learned relative-position bias."""

    num_heads: int
    window: tuple[int, int]
    attn_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: np.ndarray | None, *, train: bool) -> jnp.ndarray:
        """x: [B * num_windows, area, C]; mask: [num_windows, area, area] or None."""
        b, n, c = x.shape
        wh, ww = self.window
        head_dim = c // self.num_heads
        matmul = layers.op_set(self.ops).matmul
        qkv = _dense(3 * c, "qkv", self.dtype, self.param_dtype, self.ops)(x)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
        table = self.param(
            "relative_position_bias_table",
            dense_init,
            ((2 * wh - 1) * (2 * ww - 1), self.num_heads),
            self.param_dtype,
        )
        bias = table[relative_position_index(wh, ww).reshape(-1)].reshape(n, n, -1)
        # Softmax logits in float32 so that bf16 compute keeps the -100 mask and small biases.
        attn = matmul(q * head_dim**-0.5, k.swapaxes(-2, -1))
        attn = attn.astype(jnp.float32) + bias.transpose(2, 0, 1).astype(jnp.float32)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.reshape(-1, num_windows, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.reshape(-1, self.num_heads, n, n)
        attn = jax.nn.softmax(attn, axis=-1).astype(self.dtype)
        attn = nn.Dropout(self.attn_drop_rate, deterministic=not train)(attn)
        x = matmul(attn, v).transpose(0, 2, 1, 3).reshape(b, n, c)
        x = _dense(c, "proj", self.dtype, self.param_dtype, self.ops)(x)
        return nn.Dropout(self.proj_drop_rate, deterministic=not train)(x)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> dropout -> fc2 -> dropout (timm's `Mlp`)."""

    hidden: int
    drop_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        c = x.shape[-1]
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, ops=self.ops)
        x = nn.gelu(_dense(self.hidden, "fc1", **dense)(x), approximate=False)
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        x = _dense(c, "fc2", **dense)(x)
        return nn.Dropout(self.drop_rate, deterministic=not train)(x)


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention block; `shifted` blocks roll by half a window."""

    num_heads: int
    window_size: int
    shifted: bool
    mlp_ratio: float = 4.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        _, h, w, c = x.shape
        target_shift = self.window_size // 2 if self.shifted else 0
        window, shift = window_shift((h, w), self.window_size, target_shift)
        y = _layer_norm("norm1", self.dtype, self.param_dtype)(x)
        if any(shift):
            y = jnp.roll(y, (-shift[0], -shift[1]), axis=(1, 2))
        # Pad (after the shift, like timm) to whole windows; padded tokens take part unmasked.
        pad_h, pad_w = (-h) % window[0], (-w) % window[1]
        y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        mask = shift_attention_mask(h + pad_h, w + pad_w, window, shift)
        y = WindowAttention(
            self.num_heads,
            window,
            attn_drop_rate=self.attn_drop_rate,
            proj_drop_rate=self.proj_drop_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            ops=self.ops,
            name="attn",
        )(window_partition(y, window), mask, train=train)
        y = window_reverse(y, window, h + pad_h, w + pad_w)[:, :h, :w]
        if any(shift):
            y = jnp.roll(y, shift, axis=(1, 2))
        x = x + drop_path(y, self.drop_path_rate, module=self, train=train)
        y = _layer_norm("norm2", self.dtype, self.param_dtype)(x)
        y = Mlp(
            int(c * self.mlp_ratio),
            self.proj_drop_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            ops=self.ops,
            name="mlp",
        )(y, train=train)
        return x + drop_path(y, self.drop_path_rate, module=self, train=train)


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> LayerNorm -> Linear to `features` (zero-pads odd grids like timm)."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        h, w = h + h % 2, w + w % 2
        # timm orders the 4C channels (dw, dh, C): x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], ...
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
        x = _layer_norm("norm", self.dtype, self.param_dtype)(x.reshape(b, h // 2, w // 2, 4 * c))
        return _dense(self.features, "reduction", self.dtype, self.param_dtype, self.ops,
                      use_bias=False)(x)


class SwinStage(nn.Module):
    """Optional patch merging (timm >= 0.9: at the start of a stage), then the blocks."""

    features: int
    depth: int
    num_heads: int
    window_size: int
    downsample: bool
    drop_path_rates: Sequence[float]
    mlp_ratio: float = 4.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        if self.downsample:
            x = PatchMerging(
                self.features,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                ops=self.ops,
                name="downsample",
            )(x)
        for j in range(self.depth):
            x = SwinBlock(
                num_heads=self.num_heads,
                window_size=self.window_size,
                shifted=j % 2 == 1,
                mlp_ratio=self.mlp_ratio,
                proj_drop_rate=self.proj_drop_rate,
                attn_drop_rate=self.attn_drop_rate,
                drop_path_rate=self.drop_path_rates[j],
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                ops=self.ops,
                name=f"blocks_{j}",
            )(x, train=train)
        return x


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size conv to `features`, then LayerNorm."""

    patch_size: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        p = self.patch_size
        bound = 1 / math.sqrt(p * p * x.shape[-1])  # torch's Conv2d bias init
        x = nn.Conv(
            self.features,
            (p, p),
            strides=(p, p),
            padding="VALID",
            kernel_init=conv_init,
            bias_init=_symmetric_uniform(bound),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="proj",
            conv_general_dilated=layers.op_set(self.ops).conv_general_dilated,
        )(x)
        return _layer_norm("norm", self.dtype, self.param_dtype)(x)


class Head(nn.Module):
    """Dropout then the float32 linear classifier `fc` (timm's `ClassifierHead` after pooling)."""

    num_classes: int
    dropout_rate: float = 0.0
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return _dense(self.num_classes, "fc", jnp.float32, self.param_dtype, self.ops)(x)


class SwinTransformer(nn.Module):
    """Swin Transformer: images `[N, H, W, 3]` -> `(logits [N, num_classes], out)`.

    `out` holds `stem` (patch embedding after its norm), `stage1`..`stage4` (outputs of
    `layers_0..3`), `feature_map` (after the final `norm`, e.g. [N, 7, 7, 1024] for Swin-B at
    224 px), `pooled` (float32 mean over H, W) and `logits`. With `num_classes=0` the logits are
    the pooled features (timm's convention). `dtype` is the compute dtype; parameters stay in
    `param_dtype`; the pooled features and the head are computed in float32. Dropout
    (`dropout_rate` before the head, `proj_drop_rate`, `attn_drop_rate`) and stochastic depth
    (`drop_path_rate`, rising linearly over all blocks as in timm) are active with
    `train=True` and use the "dropout" rng. `ops` picks the convolution, dense layers and
    matmuls (`layers.op_set`).
    """

    patch_size: int = 4
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    dropout_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = PatchEmbed(self.patch_size, self.embed_dim, ops=self.ops, name="patch_embed",
                       **dtypes)(
            jnp.asarray(x, self.dtype)
        )
        out = {"stem": x}
        # timm: torch.linspace(0, drop_path_rate, sum(depths)) split by stage.
        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
        start = 0
        for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads, strict=True)):
            x = SwinStage(
                features=self.embed_dim * 2**i,
                depth=depth,
                num_heads=heads,
                window_size=self.window_size,
                downsample=i > 0,
                drop_path_rates=tuple(rates[start : start + depth]),
                mlp_ratio=self.mlp_ratio,
                proj_drop_rate=self.proj_drop_rate,
                attn_drop_rate=self.attn_drop_rate,
                ops=self.ops,
                name=f"layers_{i}",
                **dtypes,
            )(x, train=train)
            start += depth
            out[f"stage{i + 1}"] = x
        x = out["feature_map"] = _layer_norm("norm", **dtypes)(x)
        x = out["pooled"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if self.num_classes:  # timm's convention: num_classes=0 gives pooled features
            x = Head(self.num_classes, self.dropout_rate, self.param_dtype, self.ops,
                     name="head")(x, train=train)
        out["logits"] = x
        return x, out


def _variant(embed_dim: int, depths: tuple, num_heads: tuple, window_size: int) -> dict:
    return dict(embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size)


_SIZES = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}
# Keyed by timm's names. timm registers tiny/small only at 224; their window-12 / 384 px
# entries are `timm.create_model("swin_tiny_patch4_window7_224", img_size=384, window_size=12)`.
VARIANTS: dict[str, dict[str, Any]] = {
    f"swin_{size}_patch4_window{window}_{px}": _variant(*args, window)
    for window, px in ((7, 224), (12, 384))
    for size, args in _SIZES.items()
}
# Tiny variant for tests and demos on CPU.
VARIANTS["swin_mini"] = _variant(16, (1, 1, 2, 1), (1, 2, 2, 4), 7)

# Input resolution each variant is made for. swin_mini uses the real 224 px geometry (token
# grids 56/28/14/7, window 7 in every stage), so its bias tables have the full-size shapes; it
# runs at any multiple of 4 px, but small inputs clamp the windows and change those shapes.
INPUT_SIZE: dict[str, int] = {name: 384 if name.endswith("_384") else 224 for name in VARIANTS}
