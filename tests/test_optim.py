# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The I2PA optimizer: Adam with L2 in the gradient, head/backbone rates, x0.95 per epoch."""

import jax
import jax.numpy as jnp
import numpy as np

from ipa_jax import optim
from tests.conftest import load_config


def _adam_l2_reference(p, grads, lr, l2, steps, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adam(weight_decay=l2) written out in numpy, one rate per step."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, (g, rate) in enumerate(zip(grads, lr, strict=True), start=1):
        g = g + l2 * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - rate * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


def test_head_and_backbone_rates_decay_per_epoch_with_coupled_l2():
    config = load_config("i2pa")  # the paper's rates: 1e-5 backbone, 1e-4 head, l2 1e-4
    steps_per_epoch = 2
    tx, schedules = optim.make_optimizer(config, steps_per_epoch)
    np.testing.assert_allclose([schedules["head"](s) for s in range(5)],
                               [1e-4, 1e-4, 0.95e-4, 0.95e-4, 0.95**2 * 1e-4], rtol=1e-6)
    rng = np.random.default_rng(0)
    params = {"conv1": {"kernel": rng.normal(size=(3, 3)).astype(np.float32)},
              "fc": {"kernel": rng.normal(size=(3, 1)).astype(np.float32)}}
    assert optim.param_groups(params, ("fc",)) == {
        "conv1": {"kernel": "backbone"}, "fc": {"kernel": "head"}}
    grads = [{k: {"kernel": rng.normal(size=v["kernel"].shape).astype(np.float32)}
              for k, v in params.items()} for _ in range(5)]
    state = tx.init(params)
    p = {k: {"kernel": jnp.asarray(v["kernel"])} for k, v in params.items()}
    for g in grads:
        updates, state = tx.update(g, state, p)
        p = {k: {"kernel": p[k]["kernel"] + updates[k]["kernel"]} for k in p}
    for name, lr0 in (("conv1", 1e-5), ("fc", 1e-4)):
        rates = [lr0 * 0.95 ** (s // steps_per_epoch) for s in range(5)]
        expected = _adam_l2_reference(params[name]["kernel"].astype(np.float64),
                                      [g[name]["kernel"] for g in grads], rates, 1e-4, 5)
        np.testing.assert_allclose(p[name]["kernel"], expected, rtol=1e-5, atol=1e-9)


def test_adamw_decouples_weight_decay_like_torch():
    """configs/ratio.py: AdamW (decay 1e-2), 1e-6 for the Swin backbone, 1e-5 for the head."""
    config = load_config("ratio")
    o = config.optimizer
    assert (o.name, o.weight_decay, o.lr, o.head_lr) == ("adamw", 1e-2, 1e-6, 1e-5)
    tx, _ = optim.make_optimizer(config, steps_per_epoch=10)
    rng = np.random.default_rng(1)
    params = {"layers_0": {"kernel": rng.normal(size=(4,)).astype(np.float32)},
              "head": {"kernel": rng.normal(size=(4,)).astype(np.float32)}}
    grads = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
             for _ in range(4)]
    state, p = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
    for name, lr in (("layers_0", 1e-6), ("head", 1e-5)):
        # torch.optim.AdamW: p -= lr * wd * p, then the Adam step on the raw gradient.
        q = params[name]["kernel"].astype(np.float64)
        m = v = np.zeros_like(q)
        for t, g in enumerate(grads, start=1):
            g = g[name]["kernel"]
            q = q - lr * 1e-2 * q
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            q = q - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        np.testing.assert_allclose(p[name]["kernel"], q, rtol=1e-6, atol=1e-12)
