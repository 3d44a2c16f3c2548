# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Fusion of the backbone with the retrieval and 3D-aware branches (Ji et al. 2023, SPEC 2).

`AggregationBlock` is the paper's aggregation block: the backbone's feature map, the K rows of
`f_ret` and the five depth features become D-wide tokens, a learnable CLS token joins them, a
stack of pre-LN transformer encoder blocks mixes them and the CLS output gives the log-score.
`ConcatFusion` is the paper's "concatenation" ablation: pooled backbone features, flattened
`f_ret` and the depth features concatenated into an MLP. Both end in the same one-output float32
head and return `(logits [N, 1], out)` like the backbones, so scoring code reads the log-score
`o = logits[:, 0]` (score `s = exp(o) > 0`) whatever the model. `RetrievalAugmentedScorer`
runs a backbone (built with `num_classes=0`) and a fusion module as one model;
`fusion_from_config` builds the fusion module from `config.fusion`. Every module's `ops`
(`config.model.ops`, see `layers.op_set`) picks its dense layers; flax's attention is stock.

Inputs of the fusion modules:
  feature_map: [N, h, w, C] the backbone's `out["feature_map"]` (Swin-B at 224 px: 7x7x1024).
  f_ret: [N, K, 5] rows [p_r, W, S_b, S_p, S_c]; a row with W == 0 is padding (fewer than K
    posts retrieved) and counts for nothing. None or K = 0: no retrieval input.
  depth: [N, 5, F] pooled features of the five depth-masked images (near, middle, far,
    foreground, background; F = 2048 for ResNet-50), or None.
A branch is used when its `use_*` field says so (this fixes the parameters); an unused
branch's input is ignored, so every variant runs on the same batches.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from ipa_jax import config_lib
from ipa_jax.models import layers
from ipa_jax.models.layers import drop_path
from ipa_jax.models.swin import LN_EPSILON, Head, Mlp, dense_init

RETRIEVAL_COLUMNS = 5  # [p_r, W, S_b, S_p, S_c]
WEIGHT_COLUMN = 1  # W, the similarity: 0 marks a padding row


def retrieval_row_mask(f_ret: jnp.ndarray) -> jnp.ndarray:
    """[N, K] True for a real retrieved row, False for padding (W == 0)."""
    return f_ret[..., WEIGHT_COLUMN] != 0


def _check_inputs(module: nn.Module, f_ret, depth) -> None:
    """Fails when a branch the module uses has no input (a model trained with it needs it)."""
    if module.use_retrieval and f_ret is None:
        raise ValueError(f"{type(module).__name__} uses the retrieval branch but got f_ret=None "
                         "(prepare the data with retrieval, or set use_retrieval=False).")
    if module.use_retrieval and f_ret.shape[-1] != RETRIEVAL_COLUMNS:
        raise ValueError(f"f_ret must be [N, K, {RETRIEVAL_COLUMNS}], got {f_ret.shape}")
    if module.use_depth and depth is None:
        raise ValueError(f"{type(module).__name__} uses the depth branch but got depth=None "
                         "(prepare depth features, or set use_depth=False).")


class BranchTokens(nn.Module):
    """One branch's inputs [N, T, F] -> tokens [N, T, width]: a linear projection `proj`, plus
    the branch's learned `type_embedding` and, for `ordered` branches (whose slots mean
    something: a grid position, a depth interval), a learned `position_embedding` per slot,
    sized [T, width] from the input at initialisation (applying to another T fails)."""

    width: int
    ordered: bool
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = layers.op_set(self.ops).dense(self.width, kernel_init=dense_init, dtype=self.dtype,
                                          param_dtype=self.param_dtype, name="proj")(
            jnp.asarray(x, self.dtype))
        x = x + self.param("type_embedding", dense_init, (self.width,),
                           self.param_dtype).astype(self.dtype)
        if self.ordered:
            x = x + self.param("position_embedding", dense_init, (x.shape[1], self.width),
                               self.param_dtype).astype(self.dtype)
        return x


class EncoderBlock(nn.Module):
    """Pre-LN transformer encoder block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    `mask` [N, 1, L, L] (True = may attend) comes from `nn.make_attention_mask`. Dropout
    (`dropout_rate` after attention and in the MLP, `attention_dropout_rate` on the attention
    weights) and stochastic depth (`drop_path_rate`, on both residual branches) with train=True.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    sow_attention_weights: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        width = x.shape[-1]
        norm = dict(epsilon=LN_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype)
        y = nn.LayerNorm(name="norm1", **norm)(x)
        y = nn.MultiHeadDotProductAttention(
            self.num_heads,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            dropout_rate=self.attention_dropout_rate,
            kernel_init=dense_init,
            force_fp32_for_softmax=True,  # bf16 logits would blur small attention differences
            name="attn",
        )(y, mask=mask, deterministic=not train, sow_weights=self.sow_attention_weights)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        x = x + drop_path(y, self.drop_path_rate, module=self, train=train)
        y = nn.LayerNorm(name="norm2", **norm)(x)
        y = Mlp(int(width * self.mlp_ratio), self.dropout_rate, dtype=self.dtype,
                param_dtype=self.param_dtype, ops=self.ops, name="mlp")(y, train=train)
        return x + drop_path(y, self.drop_path_rate, module=self, train=train)


class AggregationBlock(nn.Module):
    """The aggregation block: backbone, retrieval and depth tokens plus CLS through a transformer.

    Tokens, in order: CLS (`cls_token`), the h*w feature-map positions (`backbone_tokens`, with
    a position embedding sized from the feature map at initialisation), the K `f_ret` rows
    (`retrieval_tokens`, an unordered set: W is in each row), the five depth features
    (`depth_tokens`, a position embedding per depth interval). Padding rows of `f_ret` (W == 0)
    are zeroed and masked out as attention keys, so whatever they hold changes nothing; CLS
    and the feature-map tokens are always valid, so every query has a key (no NaN when all
    rows are padding: the result equals K = 0). `num_layers` pre-LN `EncoderBlock`s
    (`blocks_i`, drop-path rising linearly from 0 to `drop_path_rate` as in timm), a final
    LayerNorm (`norm`), then `head/fc` on the CLS output.

    Returns `(logits [N, 1] float32, out)`: `out` holds `cls` (the CLS embedding after `norm`,
    float32 [N, width]), `tokens` (all outputs after `norm`, [N, L, width]), `token_mask`
    ([N, L], False for padding), `token_types` ([L] 0 CLS, 1 backbone, 2 retrieval, 3 depth)
    and `logits`. With `sow_attention_weights`, each block's attention weights are sown into
    the "intermediates" collection (apply with `mutable=["intermediates"]`).
    """

    width: int = 512
    num_layers: int = 2
    num_heads: int = 8
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_dropout_rate: float = 0.0
    use_retrieval: bool = True
    use_depth: bool = True
    sow_attention_weights: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, feature_map: jnp.ndarray, f_ret: jnp.ndarray | None = None,
                 depth: jnp.ndarray | None = None, *, train: bool
                 ) -> tuple[jnp.ndarray, dict]:
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} is not a multiple of num_heads={self.num_heads}")
        _check_inputs(self, f_ret, depth)
        n = feature_map.shape[0]
        tokens = dict(width=self.width, dtype=self.dtype, param_dtype=self.param_dtype,
                      ops=self.ops)
        cls = self.param("cls_token", dense_init, (self.width,), self.param_dtype)
        streams = [jnp.broadcast_to(cls.astype(self.dtype), (n, 1, self.width))]
        valid = [jnp.ones((n, 1), bool)]
        types = [0]
        grid = feature_map.reshape(n, -1, feature_map.shape[-1])
        streams.append(BranchTokens(ordered=True, name="backbone_tokens", **tokens)(grid))
        valid.append(jnp.ones(grid.shape[:2], bool))
        types += [1] * grid.shape[1]
        if self.use_retrieval:  # K = 0 gives no tokens, but the same parameters
            rows = retrieval_row_mask(f_ret)
            f_ret = jnp.where(rows[..., None], f_ret, 0)  # padding may hold anything, even NaN
            streams.append(BranchTokens(ordered=False, name="retrieval_tokens", **tokens)(f_ret))
            valid.append(rows)
            types += [2] * f_ret.shape[1]
        if self.use_depth:
            streams.append(BranchTokens(ordered=True, name="depth_tokens", **tokens)(depth))
            valid.append(jnp.ones(depth.shape[:2], bool))
            types += [3] * depth.shape[1]
        x = jnp.concatenate(streams, axis=1)
        token_mask = jnp.concatenate(valid, axis=1)
        mask = nn.make_attention_mask(jnp.ones_like(token_mask), token_mask)  # keys only
        # timm: torch.linspace(0, drop_path_rate, number of blocks).
        rates = np.linspace(0.0, self.drop_path_rate, self.num_layers).tolist()
        for i, rate in enumerate(rates):
            x = EncoderBlock(
                self.num_heads,
                mlp_ratio=self.mlp_ratio,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                drop_path_rate=rate,
                sow_attention_weights=self.sow_attention_weights,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                ops=self.ops,
                name=f"blocks_{i}",
            )(x, mask, train=train)
        x = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype,
                         name="norm")(x)
        cls_out = x[:, 0].astype(jnp.float32)
        logits = Head(1, self.head_dropout_rate, self.param_dtype, self.ops, name="head")(
            cls_out, train=train)
        out = {"cls": cls_out, "tokens": x, "token_mask": token_mask,
               "token_types": np.asarray(types, np.int32), "logits": logits}
        return logits, out


class ConcatFusion(nn.Module):
    """The concatenation ablation: [pooled feature map, f_ret flattened, depth flattened] -> MLP.

    The feature map is averaged over h, w (float32, like the backbones' `pooled`); padding rows
    of `f_ret` are zeroed; K and F are fixed at initialisation (they size the first layer).
    Each of `hidden_sizes` is `hidden_i` (Dense) -> exact GELU -> dropout; then `head/fc`, the
    same one-output head as `AggregationBlock`. Returns `(logits [N, 1] float32, out)` with
    `fused` (the concatenated input), `hidden` (the last hidden layer) and `logits`.
    """

    hidden_sizes: Sequence[int] = (1024,)
    dropout_rate: float = 0.0
    head_dropout_rate: float = 0.0
    use_retrieval: bool = True
    use_depth: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ops: str = "auto"

    @nn.compact
    def __call__(self, feature_map: jnp.ndarray, f_ret: jnp.ndarray | None = None,
                 depth: jnp.ndarray | None = None, *, train: bool
                 ) -> tuple[jnp.ndarray, dict]:
        _check_inputs(self, f_ret, depth)
        n = feature_map.shape[0]
        parts = [jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2))]
        if self.use_retrieval:
            f_ret = jnp.where(retrieval_row_mask(f_ret)[..., None], f_ret, 0)
            parts.append(f_ret.reshape(n, -1).astype(jnp.float32))
        if self.use_depth:
            parts.append(depth.reshape(n, -1).astype(jnp.float32))
        x = fused = jnp.concatenate(parts, axis=1)
        x = jnp.asarray(x, self.dtype)
        for i, size in enumerate(self.hidden_sizes):
            x = layers.op_set(self.ops).dense(size, kernel_init=dense_init, dtype=self.dtype,
                                              param_dtype=self.param_dtype, name=f"hidden_{i}")(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(
                nn.gelu(x, approximate=False))
        hidden = x.astype(jnp.float32)
        logits = Head(1, self.head_dropout_rate, self.param_dtype, self.ops, name="head")(
            hidden, train=train)
        return logits, {"fused": fused, "hidden": hidden, "logits": logits}


class RetrievalAugmentedScorer(nn.Module):
    """A backbone (built with `num_classes=0`) and a fusion module as one scorer.

    images [N, H, W, 3], f_ret [N, K, 5] or None, depth [N, 5, F] or None ->
    `(logits [N, 1], out)`: `out` is the backbone's (`feature_map`, `pooled`, stages) with
    `fusion` (the fusion module's out) and `logits` (the fused log-scores) added. Parameters
    sit under `backbone/` and `fusion/`, so per-group learning rates select by prefix.
    """

    backbone: nn.Module
    fusion: nn.Module

    @nn.compact
    def __call__(self, images: jnp.ndarray, f_ret: jnp.ndarray | None = None,
                 depth: jnp.ndarray | None = None, *, train: bool
                 ) -> tuple[jnp.ndarray, dict]:
        if getattr(self.backbone, "num_classes", 0):
            raise ValueError("Build the backbone with num_classes=0: the fusion module's head "
                             "gives the score, a backbone head would be dead weight.")
        _, out = self.backbone(images, train=train)
        logits, fusion_out = self.fusion(out["feature_map"], f_ret, depth, train=train)
        return logits, {**out, "fusion": fusion_out, "logits": logits}


def default_config() -> ml_collections.ConfigDict:
    """`config.fusion` for the paper's Swin-B setting: `config_lib.fusion_config()` (its
    docstring lists the fields; kept there so config files need no JAX)."""
    return config_lib.fusion_config()


KINDS = config_lib.FUSION_KINDS


def fusion_from_config(cfg: ml_collections.ConfigDict, *, dtype: Any = jnp.float32,
                       ops: str = "auto") -> nn.Module:
    """The fusion module `cfg` (fields: `default_config`) describes, computing in `dtype` with
    the dense layers of `ops` (`config.model.ops`; "auto" resolved here, as `get_model` does)."""
    if cfg.kind not in KINDS:
        raise ValueError(f"config.fusion.kind must be one of {KINDS}, got {cfg.kind!r}")
    branches = dict(use_retrieval=bool(cfg.use_retrieval), use_depth=bool(cfg.use_depth),
                    ops=layers.resolve_ops(ops))
    if cfg.kind == "concat":
        return ConcatFusion(hidden_sizes=tuple(cfg.concat_hidden_sizes),
                            dropout_rate=cfg.dropout_rate,
                            head_dropout_rate=cfg.head_dropout_rate, dtype=dtype, **branches)
    if cfg.width % cfg.num_heads:
        raise ValueError(f"config.fusion.width={cfg.width} is not a multiple of "
                         f"num_heads={cfg.num_heads}")
    return AggregationBlock(
        width=cfg.width, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio, dropout_rate=cfg.dropout_rate,
        attention_dropout_rate=cfg.attention_dropout_rate, drop_path_rate=cfg.drop_path_rate,
        head_dropout_rate=cfg.head_dropout_rate, dtype=dtype, **branches)
