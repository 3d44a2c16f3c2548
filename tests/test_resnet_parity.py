# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""ResNet parity with torchvision: golden files in CI, live comparisons when torch imports.

Every stage's output, the pooled features and the logits must agree within 1e-4 (max abs,
float32) with the same weights converted by `ipa_jax.convert`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipa_jax import convert, models
from ipa_jax.models.resnet import ResNet
from ipa_jax.normalize import preprocess
from tests.golden import make_resnet

OUTPUTS = ("stem", "stage1", "stage2", "stage3", "stage4", "pooled", "logits")
TOLERANCE = 1e-4


def _convert(model, state, size):
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    result = convert.convert_state_dict(state, abstract)
    assert result.ok, result.report()
    return result.variables


def _run(model, variables, images):
    x = preprocess(jnp.asarray(images), "imagenet")
    logits, out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    return {k: np.asarray(out[k]) for k in OUTPUTS}


def _assert_parity(ours: dict, reference: dict) -> dict:
    diffs = {k: float(np.abs(ours[k] - reference[k]).max()) for k in OUTPUTS}
    for k in OUTPUTS:
        assert ours[k].shape == reference[k].shape, k
    assert max(diffs.values()) <= TOLERANCE, diffs
    return diffs


def test_golden_tiny_resnet_matches_torchvision_blocks():
    state = convert.read_state_dict(make_resnet.WEIGHTS)
    model = ResNet(**make_resnet.TINY)
    variables = _convert(model, state, make_resnet.SIZE)
    reference = dict(np.load(make_resnet.OUTPUTS))
    diffs = _assert_parity(_run(model, variables, make_resnet.test_images()), reference)
    # Not a trivially small model: the outputs are O(1) and a wrong leaf would show.
    assert np.abs(reference["logits"]).max() > 0.1 and diffs["stage4"] < TOLERANCE


def test_golden_detects_a_wrong_transform():
    """The golden comparison fails when one conv kernel is transposed the wrong way."""
    state = dict(convert.read_state_dict(make_resnet.WEIGHTS))
    model = ResNet(**make_resnet.TINY)
    w = state["layer2.0.conv2.weight"]
    state["layer2.0.conv2.weight"] = np.ascontiguousarray(w.transpose(0, 1, 3, 2))  # H<->W
    ours = _run(model, _convert(model, state, make_resnet.SIZE), make_resnet.test_images())
    reference = dict(np.load(make_resnet.OUTPUTS))
    assert np.abs(ours["stage2"] - reference["stage2"]).max() > 100 * TOLERANCE


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
def test_live_parity_with_torchvision(name):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from tests.golden import torch_reference

    torch.manual_seed(0)
    reference_model = torch_reference.trained_like_(getattr(torchvision.models, name)())
    state = {k: v.numpy() for k, v in reference_model.state_dict().items()}
    images = make_resnet.test_images(224, seed=1)
    reference = make_resnet.reference_outputs(reference_model, images)
    model = models.get_model(name)
    diffs = _assert_parity(_run(model, _convert(model, state, 224), images), reference)
    print(name, diffs)
