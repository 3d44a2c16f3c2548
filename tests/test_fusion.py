# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests for the aggregation block, the concatenation ablation and the fused scorer (tiny sizes)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipa_jax.models import fusion

N, H, W, C = 2, 2, 2, 8  # feature map [N, h, w, C]
K, F = 3, 8  # f_ret rows, depth feature width
D, HEADS, MLP_RATIO, LAYERS = 16, 2, 4.0, 1
CONCAT_HIDDEN = (32,)

# Table 2's rows as fusion configs (the `config.fusion` fields, tiny sizes).
VARIANTS = {
    "backbone_only": dict(kind="aggregation", use_retrieval=False, use_depth=False),
    "retrieval": dict(kind="aggregation", use_retrieval=True, use_depth=False),
    "full": dict(kind="aggregation", use_retrieval=True, use_depth=True),
    "concat": dict(kind="concat", use_retrieval=True, use_depth=True),
}


def _config(kind, use_retrieval, use_depth, **overrides):
    cfg = fusion.default_config()
    cfg.update(dict(kind=kind, use_retrieval=use_retrieval, use_depth=use_depth, width=D,
                    num_layers=LAYERS, num_heads=HEADS, mlp_ratio=MLP_RATIO,
                    concat_hidden_sizes=CONCAT_HIDDEN, dropout_rate=0.0,
                    attention_dropout_rate=0.0, drop_path_rate=0.0, head_dropout_rate=0.0))
    cfg.update(overrides)
    return cfg


def _model(name, **overrides):
    return fusion.fusion_from_config(_config(**VARIANTS[name], **overrides))


def _inputs(seed=0, k=K):
    r = np.random.default_rng(seed)
    feature_map = r.normal(size=(N, H, W, C)).astype(np.float32)
    f_ret = r.uniform(0.1, 1.0, size=(N, k, 5)).astype(np.float32)
    depth = r.uniform(0.0, 2.0, size=(N, 5, F)).astype(np.float32)
    return feature_map, f_ret, depth


def _abstract_variables(model, inputs=None):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *(inputs or _inputs()),
                                             train=False))


@functools.cache
def _init(model):
    """The model's variables, initialised once per configuration (modules hash by fields).

    Every aggregation variant's parameters are a subset of `full`'s (same names and shapes),
    so they are cut from one initialisation: compiling an init costs seconds on CPU.
    """
    abstract = _abstract_variables(model)
    if isinstance(model, fusion.AggregationBlock) and model != _model("full"):
        full = _init(_model("full"))["params"]
        variables = {"params": {name: full[name] for name in abstract["params"]}}
        assert jax.tree.map(lambda x: (x.shape, x.dtype), variables) == jax.tree.map(
            lambda x: (x.shape, x.dtype), abstract)
        return variables
    return jax.jit(lambda: model.init(jax.random.key(0), *_inputs(), train=False))()


@functools.cache
def _jitted_apply(model, train):
    # One compile per configuration and mode: op-by-op dispatch or a compile per call would
    # make this file several times slower.
    def apply(variables, feature_map, f_ret, depth, rng):
        return model.apply(variables, feature_map, f_ret, depth, train=train,
                           rngs={"dropout": rng})
    return jax.jit(apply)


def _apply(model, variables, inputs, *, train=False, seed=0):
    return _jitted_apply(model, train)(variables, *inputs, jax.random.key(seed))


def _num_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------- shapes and sizes

def _expected_params(name) -> int:
    """The parameter count from the field sizes (not read back from the model)."""
    hidden = int(D * MLP_RATIO)
    dense = lambda fan_in, fan_out: fan_in * fan_out + fan_out  # noqa: E731
    norm = 2 * D
    head = dense(D, 1)
    if name == "concat":
        fused = C + K * 5 + 5 * F  # pooled map, flattened f_ret, flattened depth
        return dense(fused, CONCAT_HIDDEN[0]) + dense(CONCAT_HIDDEN[0], 1)
    block = norm + 4 * dense(D, D) + norm + dense(D, hidden) + dense(hidden, D)  # q k v out
    total = D + LAYERS * block + norm + head  # CLS, blocks, final norm, head
    total += dense(C, D) + D + H * W * D  # backbone: proj, type, position per grid cell
    if VARIANTS[name]["use_retrieval"]:
        total += dense(5, D) + D  # proj, type (rows are a set: no position)
    if VARIANTS[name]["use_depth"]:
        total += dense(F, D) + D + 5 * D  # proj, type, position per depth interval
    return total


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_shapes_and_parameter_counts(name):
    model = _model(name)
    variables = _init(model)
    assert set(variables) == {"params"}
    assert _num_params(variables) == _expected_params(name)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    logits, out = _apply(model, variables, _inputs(1), train=False)
    assert logits.shape == (N, 1) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    np.testing.assert_array_equal(out["logits"], logits)
    if name == "concat":
        assert out["fused"].shape == (N, C + K * 5 + 5 * F)
        return
    num_tokens = 1 + H * W + K * VARIANTS[name]["use_retrieval"] + 5 * VARIANTS[name]["use_depth"]
    assert out["tokens"].shape == (N, num_tokens, D)
    assert out["token_mask"].shape == (N, num_tokens) and bool(out["token_mask"].all())
    assert out["cls"].shape == (N, D)
    assert len(out["token_types"]) == num_tokens


def test_missing_branch_input_fails_loudly():
    feature_map, f_ret, depth = _inputs()
    variables = _init(_model("full"))
    with pytest.raises(ValueError, match="f_ret=None"):
        _model("full").apply(variables, feature_map, None, depth, train=False)
    with pytest.raises(ValueError, match="depth=None"):
        _model("full").apply(variables, feature_map, f_ret, None, train=False)
    with pytest.raises(ValueError, match="kind"):
        fusion.fusion_from_config(_config("sum", True, True))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        fusion.fusion_from_config(_config("aggregation", True, True, num_heads=3))


# ---------------------------------------------------------------- padding

@pytest.mark.parametrize("name", ["full", "concat"])
def test_padding_rows_change_nothing(name):
    model = _model(name)
    variables = _init(model)
    feature_map, f_ret, depth = _inputs(2)
    f_ret[0, 1:, fusion.WEIGHT_COLUMN] = 0.0  # post 0 retrieved one post, post 1 two
    f_ret[1, 2, fusion.WEIGHT_COLUMN] = 0.0
    reference, _ = _apply(model, variables, (feature_map, f_ret, depth), train=False)
    junk = f_ret.copy()
    pad = junk[..., fusion.WEIGHT_COLUMN] == 0
    for column in (0, 2, 3, 4):
        junk[..., column] = np.where(pad, np.random.default_rng(3).normal(size=pad.shape) * 100,
                                     junk[..., column])
    junk[1, 2, 0] = np.nan  # even NaN in a padding row
    logits, out = _apply(model, variables, (feature_map, junk, depth), train=False)
    np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-6)
    if name == "full":
        np.testing.assert_array_equal(out["token_mask"][:, 1 + H * W:1 + H * W + K], ~pad)


def test_all_padding_is_finite_and_equals_no_retrieval():
    model = _model("full")
    variables = _init(model)
    feature_map, f_ret, depth = _inputs(4)
    f_ret[..., fusion.WEIGHT_COLUMN] = 0.0
    logits, _ = _apply(model, variables, (feature_map, f_ret, depth), train=False)
    assert np.all(np.isfinite(logits))
    empty, out = _apply(model, variables, (feature_map, f_ret[:, :0], depth), train=False)
    assert out["tokens"].shape[1] == 1 + H * W + 5
    np.testing.assert_allclose(logits, empty, rtol=0, atol=1e-5)


def test_attention_weights_ignore_padding_keys():
    model = fusion.AggregationBlock(width=D, num_layers=1, num_heads=HEADS,
                                    sow_attention_weights=True)
    feature_map, f_ret, depth = _inputs(5)
    f_ret[:, -1, fusion.WEIGHT_COLUMN] = 0.0
    variables = _init(model)
    (_, out), state = jax.jit(lambda v, *x: model.apply(v, *x, train=False, mutable=[
        "intermediates"]))(variables, feature_map, f_ret, depth)
    (weights,) = state["intermediates"]["blocks_0"]["attn"]["attention_weights"]
    assert weights.shape == (N, HEADS, out["tokens"].shape[1], out["tokens"].shape[1])
    padding_key = 1 + H * W + K - 1
    np.testing.assert_array_equal(weights[..., padding_key], 0.0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- branches

def test_branches_reach_the_score_only_where_used():
    feature_map, f_ret, depth = _inputs(6)
    other_f_ret = f_ret.copy()
    other_f_ret[..., 0] *= 3.0  # local popularity p_r of the retrieved posts
    other_depth = depth + 0.5
    cases = {  # variant -> (f_ret changes the score, depth changes the score)
        "backbone_only": (False, False),
        "retrieval": (True, False),
        "full": (True, True),
        "concat": (True, True),
    }
    for name, (sees_f_ret, sees_depth) in cases.items():
        model = _model(name)
        variables = _init(model)  # the same configurations as above: no new compiles
        base, _ = _apply(model, variables, (feature_map, f_ret, depth), train=False)
        by_f_ret, _ = _apply(model, variables, (feature_map, other_f_ret, depth), train=False)
        by_depth, _ = _apply(model, variables, (feature_map, f_ret, other_depth), train=False)
        assert (np.abs(by_f_ret - base).max() > 1e-6) == sees_f_ret, name
        assert (np.abs(by_depth - base).max() > 1e-6) == sees_depth, name


# ---------------------------------------------------------------- train mode, jit, bfloat16

@pytest.mark.parametrize("name", ["full", "concat"])
def test_dropout_and_drop_path_only_in_training(name):
    inputs = _inputs(7)
    rates = dict(dropout_rate=0.3, attention_dropout_rate=0.3, drop_path_rate=0.5,
                 head_dropout_rate=0.3)
    model = _model(name, **rates)
    variables = _init(_model(name))  # rates do not change the parameters

    def run(seed, train):
        return _apply(model, variables, inputs, train=train, seed=seed)[0]

    eval_logits = run(0, False)  # the rng is passed and unused
    np.testing.assert_array_equal(run(1, False), eval_logits)
    assert np.abs(run(0, True) - run(1, True)).max() > 1e-6
    assert np.abs(run(0, True) - eval_logits).max() > 1e-6
    np.testing.assert_array_equal(_apply(_model(name), variables, inputs)[0], eval_logits)


def test_drop_path_rises_linearly_over_blocks():
    model = fusion.AggregationBlock(width=D, num_layers=3, num_heads=HEADS, drop_path_rate=0.2)
    rates = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, fusion.EncoderBlock) and context.method_name == "__call__":
            rates.append(context.module.drop_path_rate)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):  # shapes only: nothing is computed
        _abstract_variables(model)
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2])


@pytest.mark.parametrize("name", ["full", "concat"])
def test_bfloat16_compute_with_float32_parameters(name):
    inputs = _inputs(8)
    model = _model(name)
    variables = _init(model)
    model_bf16 = fusion.fusion_from_config(_config(**VARIANTS[name]), dtype=jnp.bfloat16)
    abstract = jax.eval_shape(lambda: model_bf16.init(jax.random.key(0), *inputs, train=False))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(abstract))
    logits, out = _apply(model_bf16, variables, inputs, train=False)
    assert logits.dtype == jnp.float32
    if name == "full":
        assert out["tokens"].dtype == jnp.bfloat16
    reference, _ = _apply(model, variables, inputs, train=False)
    np.testing.assert_allclose(logits, reference, atol=0.02)
    if name == "concat":
        return
    # A training gradient in bf16 is finite and float32 like the parameters.
    grads = jax.jit(jax.grad(lambda p: model_bf16.apply(
        {"params": p}, *inputs, train=True, rngs={"dropout": jax.random.key(0)})[0].sum()))(
        variables["params"])
    assert all(g.dtype == jnp.float32 and np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------- the fused scorer

class TinyBackbone(nn.Module):
    """A stand-in backbone: [N, 32, 32, 3] -> feature_map [N, 2, 2, 8], as the real ones out."""

    num_classes: int = 0

    @nn.compact
    def __call__(self, x, *, train):
        del train
        feature_map = nn.Conv(C, (16, 16), strides=(16, 16), name="proj")(x)
        pooled = feature_map.mean((1, 2))
        return pooled, {"feature_map": feature_map, "pooled": pooled}


def test_scorer_runs_backbone_and_fusion():
    scorer = fusion.RetrievalAugmentedScorer(TinyBackbone(), _model("full"))
    images = jnp.asarray(np.random.default_rng(9).normal(size=(N, 32, 32, 3)), jnp.float32)
    _, f_ret, depth = _inputs(9)
    abstract = _abstract_variables(scorer, (images, f_ret, depth))
    assert set(abstract["params"]) == {"backbone", "fusion"}
    assert _num_params(abstract["params"]["fusion"]) == _expected_params("full")
    backbone = TinyBackbone().init(jax.random.key(0), images, train=False)["params"]
    variables = {"params": {"backbone": backbone, "fusion": _init(_model("full"))["params"]}}
    assert jax.tree.structure(variables) == jax.tree.structure(abstract)
    logits, out = jax.jit(lambda v, *x: scorer.apply(v, *x, train=False))(
        variables, images, f_ret, depth)
    assert logits.shape == (N, 1)
    o = logits[:, 0]  # what the scoring code reads
    assert o.shape == (N,) and np.all(np.isfinite(o))
    assert out["feature_map"].shape == (N, H, W, C) and out["fusion"]["cls"].shape == (N, D)
    with pytest.raises(ValueError, match="num_classes=0"):
        _abstract_variables(fusion.RetrievalAugmentedScorer(TinyBackbone(num_classes=1),
                                                            _model("full")),
                            (images, f_ret, depth))
