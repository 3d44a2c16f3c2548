# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests for the torchvision-layout ResNet and the model registry."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipa_jax import convert
from ipa_jax.models import get_model
from ipa_jax.models.resnet import ResNet

BASIC_MINI = dict(stage_sizes=(1, 1, 1, 1), block="basic", num_filters=8)


def _abstract_variables(model, size=64):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )


def _num_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _apply(model, variables, x, **kwargs):
    """The logits (and the mutated collections when `mutable` is given), under jit."""
    # One XLA compile of the whole net is much cheaper on CPU than op-by-op eager dispatch.
    result = jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)
    if "mutable" in kwargs:
        (logits, _), state = result
        return logits, state
    return result[0]


def _torchvision_state_dict_shapes(stage_sizes, block, num_classes=1000):
    """Keys and shapes of torchvision's `resnetXX().state_dict()`, from the architecture."""
    expansion = 4 if block == "bottleneck" else 1
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{leaf}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    inplanes = 64
    for i, num_blocks in enumerate(stage_sizes):
        planes = 64 * 2**i
        for j in range(num_blocks):
            stride = 2 if i > 0 and j == 0 else 1
            p = f"layer{i + 1}.{j}"
            if block == "bottleneck":
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            for k, (cout, cin, ks) in enumerate(convs, start=1):
                shapes[f"{p}.conv{k}.weight"] = (cout, cin, ks, ks)
                bn(f"{p}.bn{k}", cout)
            if stride != 1 or inplanes != planes * expansion:
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (num_classes, inplanes)
    shapes["fc.bias"] = (num_classes,)
    return shapes


@pytest.mark.parametrize(
    "name,expected",
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
    ],
)
def test_parameter_counts_match_torchvision(name, expected):
    variables = _abstract_variables(get_model(name))
    assert _num_params(variables["params"]) == expected


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_variable_names_and_shapes_match_torchvision_table(name):
    model = get_model(name)
    # The converter's own table, applied to torchvision's keys and shapes.
    mapped = (convert.torch_to_flax(k, np.zeros(s, np.float32))
              for k, s in _torchvision_state_dict_shapes(model.stage_sizes, model.block).items())
    expected = {path: value.shape for path, value in filter(None, mapped)}
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(_abstract_variables(model)), sep="/")
    actual = {k: tuple(v.shape) for k, v in flat.items()}
    assert actual == expected


def test_registry_errors_and_overrides():
    with pytest.raises(ValueError, match="resnet50"):
        get_model("resnet51")
    model = get_model("resnet18", num_classes=7, dtype=jnp.bfloat16)
    assert (model.num_classes, model.dtype, model.stage_sizes) == (7, jnp.bfloat16, (2, 2, 2, 2))


# ---------------------------------------------------------------- numerics vs numpy reference


def _np_conv(x, kernel, stride, pad):
    """Direct NHWC convolution with symmetric zero padding (torch Conv2d semantics)."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            patch = x[
                :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
            out = out + patch @ kernel[i, j]
    return out


def _np_maxpool(x):
    """torch MaxPool2d(kernel_size=3, stride=2, padding=1)."""
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    windows = [
        x[:, i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2] for i in range(3) for j in range(3)
    ]
    return np.max(windows, axis=0)


def _np_resnet(variables, x, stage_sizes, block):
    """Eval-mode torchvision ResNet v1.5 forward written from the paper/torchvision source."""
    p, s = variables["params"], variables["batch_stats"]

    def bn(x, path):
        pp, ss = p, s
        for k in path:
            pp, ss = pp[k], ss[k]
        return (x - ss["mean"]) / np.sqrt(ss["var"] + 1e-5) * pp["scale"] + pp["bias"]

    def conv(x, path, stride, pad):
        pp = p
        for k in path:
            pp = pp[k]
        return _np_conv(x, pp["kernel"], stride, pad)

    relu = lambda x: np.maximum(x, 0)
    x = _np_maxpool(relu(bn(conv(x, ["conv1"], 2, 3), ["bn1"])))
    for i, num_blocks in enumerate(stage_sizes):
        for j in range(num_blocks):
            b, stride = f"layer{i + 1}_{j}", (2 if i > 0 and j == 0 else 1)
            if block == "bottleneck":
                y = relu(bn(conv(x, [b, "conv1"], 1, 0), [b, "bn1"]))
                y = relu(bn(conv(y, [b, "conv2"], stride, 1), [b, "bn2"]))
                y = bn(conv(y, [b, "conv3"], 1, 0), [b, "bn3"])
            else:
                y = relu(bn(conv(x, [b, "conv1"], stride, 1), [b, "bn1"]))
                y = bn(conv(y, [b, "conv2"], 1, 1), [b, "bn2"])
            if "downsample_0" in p[b]:
                x = bn(conv(x, [b, "downsample_0"], stride, 0), [b, "downsample_1"])
            x = relu(x + y)
    return x.mean(axis=(1, 2)) @ p["fc"]["kernel"] + p["fc"]["bias"]


def _random_variables(model, x_shape, seed=0):
    """Random variables of the model's shapes, drawn with numpy.

    Real `init` is avoided where the values do not matter: compiling threefry random kernels
    for every parameter shape costs seconds each on CPU. BN parameters and running statistics
    are random too, so eval-mode BatchNorm is not the identity.
    """
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(x_shape), train=False)
    )

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
            return rng.normal(0, std, leaf.shape).astype(leaf.dtype)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype)
        return rng.normal(0, 0.2, leaf.shape).astype(leaf.dtype)  # bias, mean

    return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.mark.parametrize(
    "config",
    [
        dict(stage_sizes=(1, 1, 1, 1), block="bottleneck", num_filters=64, num_classes=5),
        dict(stage_sizes=(2, 1, 1, 1), block="basic", num_filters=64, num_classes=5),
    ],
    ids=["bottleneck", "basic"],
)
def test_eval_forward_matches_numpy_reference(config):
    # num_filters 64 so the reference can hard-code torchvision's stem width; 30 px is even
    # (flax "SAME" would pad asymmetrically) and odd after the stem, exercising both paddings.
    model = ResNet(**config)
    x = np.random.default_rng(1).normal(size=(2, 30, 30, 3)).astype(np.float32)
    variables = _random_variables(model, x.shape)
    out = np.asarray(_apply(model, variables, x, train=False))
    ref = _np_resnet(
        jax.tree.map(lambda a: np.asarray(a, np.float64), variables),
        x.astype(np.float64),
        config["stage_sizes"],
        config["block"],
    )
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# ---------------------------------------------------------------- behaviour on a tiny model


@pytest.fixture(scope="module")
def mini():
    model = get_model("resnet_mini", num_classes=3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
    return model, x, _random_variables(model, x.shape)


@pytest.mark.parametrize("size", [32, 64])
def test_output_shapes(mini, size):
    model, _, variables = mini
    out = _apply(model, variables, jnp.zeros((2, size, size, 3)), train=False)
    assert out.shape == (2, 3) and out.dtype == jnp.float32
    resnet50 = get_model("resnet50")
    big = jax.eval_shape(
        lambda v: resnet50.apply(v, jnp.zeros((2, size, size, 3)), train=False),
        _abstract_variables(resnet50),
    )
    logits, out = big
    assert logits.shape == (2, 1000)
    s = -(-size // 32)  # the stride-32 map, rounded up like torch's padded convs
    assert out["feature_map"].shape == out["stage4"].shape == (2, s, s, 2048)
    assert out["stem"].shape == (2, -(-size // 4), -(-size // 4), 64)
    assert out["stage1"].shape[-1] == 256 and out["pooled"].shape == (2, 2048)


def test_num_classes_zero_returns_the_pooled_features(mini):
    model, x, variables = mini
    features_model = get_model("resnet_mini", num_classes=0)
    no_head = {"params": {k: v for k, v in variables["params"].items() if k != "fc"},
               "batch_stats": variables["batch_stats"]}
    features = _apply(features_model, no_head, x, train=False)
    assert features.shape == (x.shape[0], 16 * 8 * 4)  # width 16, last stage x8, bottleneck x4
    logits = _apply(model, variables, x, train=False)
    fc = variables["params"]["fc"]
    np.testing.assert_allclose(logits, features @ fc["kernel"] + fc["bias"], rtol=1e-5,
                               atol=1e-5)


def test_train_updates_batch_stats_with_torch_momentum(mini):
    model, x, variables = mini
    _, state = _apply(
        model,
        variables,
        x,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda mdl, _: mdl.scope.path == ("conv1",),
    )
    conv1_out = np.asarray(state["intermediates"]["conv1"]["__call__"][0], np.float64)
    batch_mean = conv1_out.mean(axis=(0, 1, 2))
    batch_var = conv1_out.var(axis=(0, 1, 2))  # flax uses the biased variance.
    old, new = variables["batch_stats"]["bn1"], state["batch_stats"]["bn1"]
    np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * batch_mean, rtol=1e-4)
    np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * batch_var, rtol=1e-4)
    changed = jax.tree.map(
        lambda a, b: bool(np.all(a != b)), variables["batch_stats"], state["batch_stats"]
    )
    assert all(jax.tree.leaves(changed))

    _, eval_state = _apply(model, variables, x, train=False, mutable=["batch_stats"])
    same = jax.tree.map(np.array_equal, variables["batch_stats"], eval_state["batch_stats"])
    assert all(jax.tree.leaves(same))


def test_bfloat16_compute_keeps_float32_params(mini):
    _, x, variables = mini
    model = get_model("resnet_mini", num_classes=3, dtype=jnp.bfloat16)
    abstract = _abstract_variables(model, size=32)
    assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
    out, state = _apply(
        model, variables, x, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    assert state["intermediates"]["layer1_0"]["conv2"]["__call__"][0].dtype == jnp.bfloat16
    ref = _apply(get_model("resnet_mini", num_classes=3), variables, x, train=False)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=0.1, atol=0.05 * float(jnp.abs(ref).max()))


def test_initialisation_matches_torchvision():
    # The one real init; an rbg key compiles its random kernels far faster than threefry.
    model = ResNet(stage_sizes=(1, 1), block="bottleneck", num_filters=32, num_classes=256)
    x = jnp.zeros((1, 16, 16, 3))
    init = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))
    params = init(x)["params"]
    kernel = np.asarray(params["layer2_0"]["conv2"]["kernel"])  # 3x3x64x64.
    fan_out = 3 * 3 * kernel.shape[-1]
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / fan_out), rtol=0.05)
    assert abs(kernel.mean()) < 0.05 * kernel.std()
    assert np.abs(kernel).max() > 3.5 * kernel.std()  # Plain normal, not truncated at 2 std.
    fc = np.asarray(params["fc"]["kernel"])  # 256x256, He-normal on fan_in.
    np.testing.assert_allclose(fc.std(), np.sqrt(2.0 / fc.shape[0]), rtol=0.05)
    np.testing.assert_array_equal(params["fc"]["bias"], 0.0)
    for name in ("bn1", "bn2", "bn3", "downsample_1"):
        np.testing.assert_array_equal(params["layer2_0"][name]["scale"], 1.0)
        np.testing.assert_array_equal(params["layer2_0"][name]["bias"], 0.0)
