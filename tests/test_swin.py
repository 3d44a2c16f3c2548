# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests for the timm-compatible Swin Transformer.

Parity with timm runs in CI from golden files (tests/golden/make_swin.py writes them) and, for
every registered variant, live against timm when torch and timm import (`-m torch`).
"""

import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipa_jax import convert
from ipa_jax.models import swin
from ipa_jax.models.swin import INPUT_SIZE, VARIANTS, SwinTransformer
from ipa_jax.normalize import preprocess
from tests.golden import make_swin

MINI = VARIANTS["swin_mini"]
TOLERANCE = 1e-4  # max abs difference to timm, float32


def _abstract_variables(model, size):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )


def _num_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _apply(model, variables, x, **kwargs):
    # One XLA compile of the whole net is much cheaper on CPU than op-by-op dispatch.
    return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


# ---------------------------------------------------------------- registry and sizes

# From timm 1.0.31: sum(p.numel() for p in timm.create_model(name).parameters()), for the
# names timm registers; tiny/small at 384 px are
# timm.create_model("swin_{tiny,small}_patch4_window7_224", img_size=384, window_size=12) and
# swin_mini is swin_tiny_patch4_window7_224 with swin_mini's kwargs (all 1000 classes).
PARAM_COUNTS = {
    "swin_tiny_patch4_window7_224": 28_288_354,
    "swin_small_patch4_window7_224": 49_606_258,
    "swin_base_patch4_window7_224": 87_768_224,
    "swin_large_patch4_window7_224": 196_532_476,
    "swin_tiny_patch4_window12_384": 28_338_034,
    "swin_small_patch4_window12_384": 49_707_778,
    "swin_base_patch4_window12_384": 87_903_584,
    "swin_large_patch4_window12_384": 196_735_516,
    "swin_mini": 490_059,
}


def test_every_variant_has_a_pinned_count_and_input_size():
    assert set(PARAM_COUNTS) == set(VARIANTS) == set(INPUT_SIZE)
    assert {INPUT_SIZE[n] for n in VARIANTS if "window12_384" in n} == {384}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts_match_timm(name):
    model = SwinTransformer(**VARIANTS[name])
    variables = _abstract_variables(model, INPUT_SIZE[name])
    assert set(variables) == {"params"}
    assert _num_params(variables) == PARAM_COUNTS[name]


# ---------------------------------------------------------------- windows, shifts and masks


def test_window_shift_clamps_like_timm():
    assert swin.window_shift((56, 56), 7, 3) == ((7, 7), (3, 3))
    assert swin.window_shift((7, 7), 7, 3) == ((7, 7), (0, 0))  # grid == window: no shift
    assert swin.window_shift((4, 4), 7, 3) == ((4, 4), (0, 0))
    assert swin.window_shift((5, 9), 7, 3) == ((5, 7), (0, 3))  # per axis
    assert swin.window_shift((25, 25), 7, 0) == ((7, 7), (0, 0))


def test_relative_position_index_by_hand():
    # 2x2 window, tokens (0,0), (0,1), (1,0), (1,1): index (dy + 1) * 3 + (dx + 1).
    expected = [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    np.testing.assert_array_equal(swin.relative_position_index(2, 2), expected)
    index = swin.relative_position_index(3, 4)
    assert index.shape == (12, 12) and index.min() == 0 and index.max() == 5 * 7 - 1
    assert np.all(np.diag(index) == 2 * 7 + 3)  # the zero offset is the table's centre


def _paper_mask(height, width, window, shift):
    """The Swin paper's rule, window by window: after the cyclic shift by -shift, two tokens
    of a window attend iff both or neither wrapped around, along each axis."""
    (wh, ww), (sh, sw) = window, shift
    masks = []
    for top in range(0, height, wh):
        for left in range(0, width, ww):
            rows, cols = np.meshgrid(range(top, top + wh), range(left, left + ww), indexing="ij")
            wrapped = zip((rows >= height - sh).ravel(), (cols >= width - sw).ravel(), strict=True)
            label = list(wrapped)
            masks.append([[0.0 if a == b else -100.0 for b in label] for a in label])
    return np.array(masks, np.float32)


@pytest.mark.parametrize(
    "height,width,window,shift",
    [(14, 14, (7, 7), (3, 3)), (14, 21, (7, 7), (3, 3)), (24, 24, (12, 12), (6, 6)),
     (7, 14, (7, 7), (0, 3))],
)
def test_shift_mask_matches_the_paper(height, width, window, shift):
    mask = swin.shift_attention_mask(height, width, window, shift)
    np.testing.assert_array_equal(mask, _paper_mask(height, width, window, shift))
    assert mask.shape == ((height // window[0]) * (width // window[1]), *(2 * (np.prod(window),)))


def test_shift_mask_by_hand():
    mask = swin.shift_attention_mask(14, 14, (7, 7), (3, 3))
    assert not mask[0].any()  # the top-left window does not wrap
    last = mask[3]  # bottom-right: 4 regions split after 4 rows and 4 columns
    assert last[0, 0] == 0 and last[0, 6 * 7 + 6] == -100 and last[0, 3 * 7 + 3] == 0
    assert last[0, 4] == -100 and last[0, 4 * 7] == -100
    assert (last == 0).sum(axis=1)[0] == 16  # the 4x4 unwrapped corner
    assert swin.shift_attention_mask(14, 14, (7, 7), (0, 0)) is None


def test_window_partition_round_trip():
    x = jnp.arange(2 * 6 * 4 * 3, dtype=jnp.float32).reshape(2, 6, 4, 3)
    windows = swin.window_partition(x, (3, 2))
    assert windows.shape == (2 * 2 * 2, 6, 3)
    np.testing.assert_array_equal(windows[1], x[0, :3, 2:4].reshape(6, 3))  # row-major windows
    np.testing.assert_array_equal(swin.window_reverse(windows, (3, 2), 6, 4), x)


def test_small_inputs_clamp_windows_and_bias_tables():
    # 64 px: token grids 16, 8, 4, 2 -> windows 7, 7, 4, 2.
    params = _abstract_variables(SwinTransformer(**MINI), 64)["params"]
    heads = MINI["num_heads"]
    for i, window in enumerate((7, 7, 4, 2)):
        table = params[f"layers_{i}"]["blocks_0"]["attn"]["relative_position_bias_table"]
        assert table.shape == ((2 * window - 1) ** 2, heads[i])


# ---------------------------------------------------------------- behaviour on swin_mini


def _random_variables(model, size, seed=0):
    """Random variables of the model's shapes, drawn with numpy: compiling `init`'s random
    kernels costs far more on CPU than a forward pass. Norms and biases are off their init."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
        if name == "scale":
            return 1 + 0.2 * rng.normal(size=leaf.shape)
        return rng.normal(0, 0.2 if name == "bias" else 1.0, leaf.shape)  # biases, tables

    abstract = _abstract_variables(model, size)
    return jax.tree_util.tree_map_with_path(lambda p, a: draw(p, a).astype(np.float32), abstract)


@pytest.fixture(scope="module")
def mini():
    model = SwinTransformer(**MINI, num_classes=3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 224, 224, 3)), jnp.float32)
    variables = _random_variables(model, 224)
    logits, out = _apply(model, variables, x, train=False)
    return model, x, variables, logits, out


def test_output_shapes(mini):
    _, _, _, logits, out = mini
    expected = {
        "stem": (2, 56, 56, 16), "stage1": (2, 56, 56, 16), "stage2": (2, 28, 28, 32),
        "stage3": (2, 14, 14, 64), "stage4": (2, 7, 7, 128), "feature_map": (2, 7, 7, 128),
        "pooled": (2, 128), "logits": (2, 3),
    }
    assert {k: v.shape for k, v in out.items()} == expected
    assert logits.dtype == out["pooled"].dtype == jnp.float32
    np.testing.assert_allclose(out["pooled"], out["feature_map"].mean(axis=(1, 2)), atol=1e-6)
    assert np.isfinite(logits).all()

    model12 = SwinTransformer(**{**MINI, "window_size": 12}, num_classes=0)
    _, out12 = jax.eval_shape(
        lambda v: model12.apply(v, jnp.zeros((1, 384, 384, 3)), train=False),
        _abstract_variables(model12, 384),
    )
    expected12 = {
        "stem": (1, 96, 96, 16), "stage1": (1, 96, 96, 16), "stage2": (1, 48, 48, 32),
        "stage3": (1, 24, 24, 64), "stage4": (1, 12, 12, 128), "feature_map": (1, 12, 12, 128),
        "pooled": (1, 128), "logits": (1, 128),
    }
    assert {k: v.shape for k, v in out12.items()} == expected12


def test_num_classes_zero_returns_the_pooled_features(mini):
    model, x, variables, logits, out = mini
    no_head = {"params": {k: v for k, v in variables["params"].items() if k != "head"}}
    features_model = SwinTransformer(**MINI, num_classes=0)
    assert set(_abstract_variables(features_model, 224)["params"]) == set(no_head["params"])
    features, _ = _apply(features_model, no_head, x, train=False)
    np.testing.assert_allclose(features, out["pooled"], rtol=1e-6)
    fc = variables["params"]["head"]["fc"]
    np.testing.assert_allclose(logits, features @ fc["kernel"] + fc["bias"], rtol=1e-5,
                               atol=1e-5)


def test_bfloat16_compute_keeps_float32_params(mini):
    _, x, variables, logits, out = mini
    model = SwinTransformer(**MINI, num_classes=3, dtype=jnp.bfloat16)
    abstract = _abstract_variables(model, 224)
    assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
    logits16, out16 = _apply(model, variables, x, train=False)
    assert out16["stage3"].dtype == out16["feature_map"].dtype == jnp.bfloat16
    assert logits16.dtype == out16["pooled"].dtype == jnp.float32
    for key in ("pooled", "logits"):
        ref = np.asarray(out[key])
        np.testing.assert_allclose(out16[key], ref, rtol=0.05, atol=0.05 * np.abs(ref).max())


def test_drop_path_rates_rise_linearly_over_all_blocks():
    model = SwinTransformer(**MINI, drop_path_rate=0.4)  # depths (1, 1, 2, 1): 5 blocks
    rates = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, swin.SwinBlock) and context.method_name == "__call__":
            rates.append(context.module.drop_path_rate)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _abstract_variables(model, 64)
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2, 0.3, 0.4], atol=1e-7)


def test_train_mode_uses_the_dropout_rng(mini):
    _, x, variables, logits, _ = mini
    model = SwinTransformer(**MINI, num_classes=3, drop_path_rate=0.5)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v: model.apply(v, x, train=True), variables)
    train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key})[0])
    a, b, a_again = (train(variables, x, jax.random.key(seed)) for seed in (0, 1, 0))
    np.testing.assert_array_equal(a, a_again)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    assert np.abs(np.asarray(a) - np.asarray(logits)).max() > 1e-3
    # Eval mode needs no rng and ignores the rates: the fixture's logits had none.
    eval_logits, _ = _apply(model, variables, x, train=False)
    np.testing.assert_allclose(eval_logits, logits, rtol=1e-6, atol=1e-6)


def test_initialisation_matches_timm():
    # The one real init, of a one-block model (compiling init's random kernels is slow).
    model = SwinTransformer(embed_dim=64, depths=(1,), num_heads=(2,), num_classes=300)
    init = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))
    params = init(jnp.zeros((1, 32, 32, 3)))["params"]
    block = params["layers_0"]["blocks_0"]
    for kernel in (block["attn"]["qkv"]["kernel"], block["mlp"]["fc1"]["kernel"],
                   params["head"]["fc"]["kernel"]):
        np.testing.assert_allclose(np.std(kernel), 0.02, rtol=0.05)
        assert abs(np.mean(kernel)) < 0.002
    table = block["attn"]["relative_position_bias_table"]
    assert table.shape == (169, 2) and 0.015 < np.std(table) < 0.025
    for bias in (block["attn"]["qkv"]["bias"], block["mlp"]["fc2"]["bias"],
                 params["head"]["fc"]["bias"], block["norm1"]["bias"], params["norm"]["bias"]):
        assert not np.any(bias)
    np.testing.assert_array_equal(block["norm1"]["scale"], np.ones(64))
    conv = params["patch_embed"]["proj"]
    bound = 1 / np.sqrt(4 * 4 * 3)  # torch's Conv2d: U(+-1/sqrt(fan_in)) for kernel and bias
    assert np.abs(conv["kernel"]).max() <= bound and np.abs(conv["bias"]).max() <= bound
    np.testing.assert_allclose(np.std(conv["kernel"]), bound / np.sqrt(3), rtol=0.05)


# ---------------------------------------------------------------- parity with timm


def _max_diffs(model, state_dict, images, reference, stride=None):
    """Converts `state_dict`, runs `model` on uint8 `images`; max abs diff to `reference`."""
    size = images.shape[1]
    conversion = convert.convert_state_dict(state_dict, _abstract_variables(model, size))
    assert conversion.ok, conversion.report()
    assert not conversion.resized
    x = preprocess(jnp.asarray(images), "imagenet")
    _, out = _apply(model, conversion.variables, x, train=False)
    diffs = {}
    for key in make_swin.STAGES:
        s = (stride or {}).get(key, 1)
        ours = np.asarray(out[key])[:, ::s, ::s] if np.ndim(out[key]) == 4 else out[key]
        assert ours.shape == reference[key].shape, key
        diffs[key] = float(np.abs(ours - reference[key]).max())
    return diffs


GOLDEN_CASES = [(n, s) for n, spec in make_swin.GOLDEN.items() for s in spec["sizes"]]


@pytest.mark.parametrize("name,size", GOLDEN_CASES)
def test_golden_parity_with_timm(name, size):
    golden = np.load(make_swin.outputs_path(name, size))
    config = json.loads(str(golden["config"]))
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    model = SwinTransformer(**config)
    state_dict = convert.read_state_dict(make_swin.weights_path(name))
    diffs = _max_diffs(model, state_dict, golden["image"], golden, make_swin.STRIDE)
    print(f"{name} @ {size}px max abs diff: {diffs}")
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_live_parity_with_timm(name):
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    size = INPUT_SIZE[name]
    start = time.perf_counter()
    timm_model = make_swin.build_timm(size, seed=0, name=name, **VARIANTS[name])
    image = make_swin.test_image(size, seed=0)
    reference = make_swin.timm_outputs(timm_model, image)
    state_dict = make_swin.state_dict_numpy(timm_model)
    del timm_model
    diffs = _max_diffs(SwinTransformer(**VARIANTS[name]), state_dict, image, reference)
    print(f"{name} @ {size}px ({time.perf_counter() - start:.0f} s) max abs diff: {diffs}")
    assert max(diffs.values()) <= TOLERANCE, diffs
