# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""layers: the CPU-tuned convolution, dense layer and matmul equal lax's and flax's (values and
gradients), and the `ops` switch (`config.model.ops`) that picks between the two op sets."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ipa_jax import config_lib, models
from ipa_jax.models import fusion, layers
from tests.test_resnet import _random_variables

NHWC = ("NHWC", "HWIO", "NHWC")


def _both(x, w, strides, padding, dimension_numbers=NHWC, **kw):
    def loss(conv, x, w):
        y = conv(x, w, strides, padding, dimension_numbers=dimension_numbers, **kw)
        return jnp.sum(jnp.sin(y)), y

    grad = jax.grad(loss, argnums=(1, 2), has_aux=True)
    ours = jax.jit(lambda x, w: grad(layers.conv_general_dilated, x, w))(x, w)
    ref = jax.jit(lambda x, w: grad(lax.conv_general_dilated, x, w))(x, w)
    return ours, ref


@pytest.mark.parametrize(
    "window, strides, size",
    [
        ((1, 1), (1, 1), 9),
        ((1, 1), (2, 2), 9),
        ((1, 1), (2, 1), 8),
        ((4, 4), (4, 4), 18),
        ((2, 3), (2, 3), 11),
        ((1, 2), (3, 2), 10),
    ],
)
def test_matmul_path_matches_convolution(window, strides, size):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, size, size + 1, 5)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((*window, 5, 7)), jnp.float32)
    (grads, y), (ref_grads, ref_y) = _both(x, w, strides, ((0, 0), (0, 0)))
    assert y.shape == ref_y.shape
    np.testing.assert_allclose(y, ref_y, atol=2e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=5e-5)
    # The matmul path has no convolution left to run.
    hlo = (
        jax.jit(
            lambda x, w: layers.conv_general_dilated(x, w, strides, "VALID", dimension_numbers=NHWC)
        )
        .lower(x, w)
        .as_text()
    )
    assert "convolution" not in hlo and "dot_general" in hlo


@pytest.mark.parametrize(
    "window, strides, padding, kw",
    [
        ((3, 3), (1, 1), ((1, 1), (1, 1)), {}),  # overlapping windows
        ((1, 1), (1, 1), ((1, 1), (0, 0)), {}),  # padded
        ((2, 2), (2, 2), ((0, 0), (0, 0)), {"rhs_dilation": (2, 2)}),
        ((1, 1), (1, 1), ((0, 0), (0, 0)), {"feature_group_count": 5}),
    ],
)
def test_other_convolutions_fall_back_to_lax(window, strides, padding, kw):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 5)), jnp.float32)
    w = jnp.asarray(
        rng.standard_normal((*window, 5 // kw.get("feature_group_count", 1), 10)), jnp.float32
    )
    (grads, y), (ref_grads, ref_y) = _both(x, w, strides, padding, **kw)
    np.testing.assert_array_equal(y, ref_y)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_array_equal(g, r)


def test_channels_first_falls_back_to_lax():
    x = jnp.ones((2, 5, 8, 8))
    w = jnp.ones((7, 5, 1, 1))
    nchw = ("NCHW", "OIHW", "NCHW")
    y = layers.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=nchw)
    assert y.shape == (2, 7, 8, 8)
    np.testing.assert_array_equal(y, 5.0)


def test_flax_conv_with_it_has_the_same_parameters_and_output():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 12, 12, 3)), jnp.float32)
    plain = nn.Conv(8, (4, 4), strides=(4, 4), padding="VALID")
    fast = nn.Conv(
        8, (4, 4), strides=(4, 4), padding="VALID", conv_general_dilated=layers.conv_general_dilated
    )
    variables = plain.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, fast.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, variables
    )
    np.testing.assert_allclose(fast.apply(variables, x), plain.apply(variables, x), atol=1e-5)


def _outputs_and_grads(fn, *args):
    """((loss, fn(*args)), gradients of the loss), loss = sum(sin(fn(*args))) in float32, jitted."""

    def loss(*a):
        out = fn(*a)
        return jnp.sum(jnp.sin(out.astype(jnp.float32))), out

    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args))), has_aux=True))(*args)


def _grads(fn, *args):
    """(value, gradients) of sum(sin(fn(*args))) in float32, jitted."""
    (value, _), grads = _outputs_and_grads(fn, *args)
    return value, grads


@pytest.mark.parametrize("shape, features", [((2, 5, 6, 8), 32), ((2, 5, 6, 32), 8), ((7, 3), 3)])
def test_dense_dot_general_matches_lax_in_float32(shape, features):
    """Both branches of the kernel gradient (x or dy transposed) give lax's values."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((shape[-1], features)) / 4, jnp.float32)
    dims = (((x.ndim - 1,), (0,)), ((), ()))
    ours = _grads(lambda x, w: layers.dot_general(x, w, dims), x, w)
    ref = _grads(lambda x, w: lax.dot_general(x, w, dims), x, w)
    chex.assert_trees_all_close(ours, ref, atol=2e-5, rtol=1e-5)


def test_dense_dot_general_is_what_nn_dense_computes():
    x = jnp.asarray(np.random.default_rng(4).standard_normal((3, 4, 16)), jnp.float32)
    plain, fast = nn.Dense(24), nn.Dense(24, dot_general=layers.dot_general)
    variables = plain.init(jax.random.key(0), x)
    grad = lambda m: jax.grad(lambda v: jnp.sum(m.apply(v, x) ** 2))(variables)
    chex.assert_trees_all_close(fast.apply(variables, x), plain.apply(variables, x), atol=1e-5)
    chex.assert_trees_all_close(grad(fast), grad(plain), atol=1e-4, rtol=1e-5)


def test_other_dot_generals_fall_back_to_lax():
    rng = np.random.default_rng(5)
    a = jnp.asarray(rng.standard_normal((3, 4, 5)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((3, 5, 6)), jnp.float32)
    dims = (((2,), (1,)), ((0,), (0,)))  # batched: not the dense form
    np.testing.assert_array_equal(layers.dot_general(a, b, dims), lax.dot_general(a, b, dims))
    hlo = jax.jit(lambda a, b: layers.dot_general(a, b, dims)).lower(a, b).as_text()
    assert "custom_vjp" not in hlo and "dot_general" in hlo


def test_matmul_matches_matmul_in_float32():
    rng = np.random.default_rng(6)
    a = jnp.asarray(rng.standard_normal((2, 3, 7, 5)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((2, 3, 5, 4)), jnp.float32)
    chex.assert_trees_all_close(_grads(layers.matmul, a, b), _grads(jnp.matmul, a, b),
                                atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="equal batch shapes"):
        layers.matmul(a, b[:1])


@pytest.mark.parametrize("op", ["dense", "matmul"])
def test_bfloat16_products_accumulate_in_float32(op):
    """bf16 in, bf16 out, every GEMM (forward and both gradients) accumulated in float32.

    The reference rounds the inputs to bf16, multiplies in float64 and rounds the result to
    bf16: a float32-accumulated GEMM lands on it to within one bf16 rounding step, where
    summing 512 products in bf16 would drift far further.
    """
    rng = np.random.default_rng(7)
    k = 512
    if op == "dense":
        a = rng.standard_normal((4, 6, k)).astype(np.float32)
        b = rng.standard_normal((k, 8)).astype(np.float32) / np.sqrt(k)
        fn = lambda a, b: layers.dot_general(a, b, (((2,), (0,)), ((), ())))
    else:
        a = rng.standard_normal((3, 6, k)).astype(np.float32)
        b = rng.standard_normal((3, k, 8)).astype(np.float32) / np.sqrt(k)
        fn = layers.matmul
    ab, bb = jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
    out = jax.jit(fn)(ab, bb)
    assert out.dtype == jnp.bfloat16
    exact = np.matmul(np.asarray(ab, np.float64), np.asarray(bb, np.float64))
    np.testing.assert_allclose(np.asarray(out, np.float64), exact, rtol=2**-7, atol=1e-6)
    # Gradients: dy = 1 everywhere, so da sums b's rows and db sums a's rows (over 6-24 rows).
    da, db = jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b).astype(jnp.float32)),
                              argnums=(0, 1)))(ab, bb)
    assert da.dtype == db.dtype == jnp.bfloat16
    a64, b64 = np.asarray(ab, np.float64), np.asarray(bb, np.float64)
    ref_da = np.broadcast_to(b64.sum(-1)[..., None, :], a.shape)
    ref_db = (np.broadcast_to(a64.sum(-2)[..., :, None], b64.shape) if op == "matmul"
              else np.broadcast_to(a64.reshape(-1, k).sum(0)[:, None], b64.shape))
    np.testing.assert_allclose(np.asarray(da, np.float64), ref_da, rtol=2**-7, atol=1e-6)
    np.testing.assert_allclose(np.asarray(db, np.float64), ref_db, rtol=2**-7, atol=1e-6)
    # The compiled GEMMs take bf16 operands and produce float32.
    hlo = jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b).astype(jnp.float32)),
                           argnums=(0, 1))).lower(ab, bb).as_text()
    dots = [line for line in hlo.splitlines() if "dot_general" in line and "stablehlo" in line]
    assert len(dots) >= 2 and all("bf16>) -> tensor<" in d and "xf32>" in d.split("->")[-1]
                                  for d in dots), dots


def test_dense_has_nn_dense_parameters_values_and_gradients():
    x = jnp.asarray(np.random.default_rng(8).standard_normal((3, 4, 16)), jnp.float32)
    for use_bias in (True, False):
        ours, ref = layers.Dense(24, use_bias=use_bias), nn.Dense(24, use_bias=use_bias)
        variables = ref.init(jax.random.key(0), x)
        chex.assert_trees_all_equal(ours.init(jax.random.key(0), x), variables)
        grad = lambda m, v: jax.grad(lambda v, x: jnp.sum(jnp.sin(m.apply(v, x))),
                                     argnums=(0, 1))(v, x)
        chex.assert_trees_all_close(ours.apply(variables, x), ref.apply(variables, x), atol=1e-6)
        chex.assert_trees_all_close(grad(ours, variables), grad(ref, variables), atol=1e-5,
                                    rtol=1e-5)


def test_dense_in_bfloat16_adds_the_bias_before_rounding_and_sums_its_gradient_in_float32():
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.standard_normal((64, 32, 8)), jnp.float32)
    dense = layers.Dense(4, dtype=jnp.bfloat16)
    variables = jax.tree.map(lambda v: v + 256.0, dense.init(jax.random.key(0), x))
    y = dense.apply(variables, x)
    assert y.dtype == jnp.bfloat16 and variables["params"]["bias"].dtype == jnp.float32
    xb = np.asarray(x.astype(jnp.bfloat16), np.float64)
    kb = np.asarray(variables["params"]["kernel"].astype(jnp.bfloat16), np.float64)
    exact = xb @ kb + np.asarray(variables["params"]["bias"], np.float64)
    np.testing.assert_array_equal(y, jnp.asarray(exact, jnp.float32).astype(jnp.bfloat16))
    # The bias gradient sums the bf16 cotangents of 2,048 rows: in float32 it matches a float64
    # sum to ~1e-7; summed in bf16 (8-bit mantissa) it would be off by ~1e-2.
    w = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    grads = jax.grad(lambda v: jnp.sum(dense.apply(v, x).astype(jnp.float32) * w))(variables)
    assert grads["params"]["bias"].dtype == jnp.float32
    exact = np.asarray(w.astype(jnp.bfloat16), np.float64).reshape(-1, 4).sum(0)
    np.testing.assert_allclose(grads["params"]["bias"], exact, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------- the ops switch (config.model.ops)
OP_SETS = ("cpu_tuned", "stock")


@pytest.mark.parametrize("backend, auto", [("cpu", "cpu_tuned"), ("gpu", "stock"),
                                           ("tpu", "stock")])
def test_auto_ops_follow_the_platform(monkeypatch, backend, auto):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert layers.resolve_ops("auto") == auto
    assert [layers.resolve_ops(ops) for ops in OP_SETS] == list(OP_SETS)
    assert models.get_model("swin_mini").ops == auto  # get_model resolves "auto"
    assert fusion.fusion_from_config(fusion.default_config()).ops == auto
    assert layers.op_set("auto") is layers.op_set(auto)
    with pytest.raises(ValueError, match="'auto', 'cpu_tuned', 'stock'"):
        layers.resolve_ops("gpu")


class _Matmul(nn.Module):
    """x [2, 3, 7, 5] @ a [2, 3, 5, 4] parameter, by the matmul of `ops`."""

    ops: str

    @nn.compact
    def __call__(self, x):
        return layers.op_set(self.ops).matmul(
            x, self.param("a", nn.initializers.normal(1.0), (2, 3, 5, 4)))


def _conv(ops, window, strides):
    return nn.Conv(8, window, strides=strides, padding="VALID",
                   conv_general_dilated=layers.op_set(ops).conv_general_dilated)


# kind: (module of an op set, input shape)
LAYER_KINDS = {
    "patch_conv": (lambda ops: _conv(ops, (4, 4), (4, 4)), (2, 12, 12, 3)),  # Swin's stem
    "strided_1x1_conv": (lambda ops: _conv(ops, (1, 1), (2, 2)), (2, 9, 9, 5)),  # downsample
    "dense": (lambda ops: layers.op_set(ops).dense(24), (3, 4, 16)),
    "matmul": (_Matmul, (2, 3, 7, 5)),
}


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_both_op_sets_give_the_same_parameters_values_and_gradients(kind):
    make, shape = LAYER_KINDS[kind]
    x = jnp.asarray(np.random.default_rng(10).standard_normal(shape), jnp.float32)
    variables = [make(ops).init(jax.random.key(0), x) for ops in OP_SETS]
    chex.assert_trees_all_equal(*variables)
    tuned, stock = (_outputs_and_grads(make(ops).apply, variables[0], x) for ops in OP_SETS)
    chex.assert_trees_all_close(tuned, stock, atol=5e-5, rtol=1e-5)


def _assert_close_to_scale(actual, desired, tol):
    """Each leaf within `tol` times its largest magnitude: float32 sums in another order."""
    for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired), strict=True):
        np.testing.assert_allclose(a, d, rtol=0, atol=tol * float(np.abs(d).max()) + 1e-7)


# Two stages of each (every layer kind; compiling the full minis would double the time).
TINY = {"resnet_mini": dict(stage_sizes=(1, 1)), "swin_mini": dict(depths=(1, 1), num_heads=(1, 2))}


@pytest.mark.parametrize("name", TINY)
def test_models_built_from_a_config_agree_on_both_op_sets(name):
    """Same parameter tree (names, shapes, dtypes), outputs and gradients."""
    config = config_lib.model_config(name)
    built = []
    for ops in OP_SETS:
        config.ops = ops
        built.append(models.get_model(config.name, num_classes=3, ops=config.ops, **TINY[name]))
        assert built[-1].ops == ops
    shape = (2, 32, 32, 3)
    trees = [jax.eval_shape(lambda m=m: m.init(jax.random.key(0), jnp.zeros(shape), train=False))
             for m in built]
    chex.assert_trees_all_equal_shapes_and_dtypes(*trees)
    assert jax.tree.structure(trees[0]) == jax.tree.structure(trees[1])
    variables = _random_variables(built[0], shape)  # numpy draws: no init to compile
    x = jnp.asarray(np.random.default_rng(11).standard_normal(shape), jnp.float32)
    tuned, stock = (_outputs_and_grads(lambda v, x, m=m: m.apply(v, x, train=False)[0],
                                       variables, x) for m in built)
    _assert_close_to_scale(tuned, stock, 2e-5)
