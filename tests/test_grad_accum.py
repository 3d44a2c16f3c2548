# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Gradient accumulation: `config.grad_accum_steps` micro-batches give the large batch's step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ipa_jax import config_validation, train
from ipa_jax.config_lib import ConfigError
from tests.conftest import load_config


class _Regression:
    """A task whose loss is a batch mean, mean((x @ w + b - y)^2), with a running statistic
    in model_state (like BatchNorm's): `model_state['seen']` += rows."""

    def loss(self, params, model_state, batch, rng):
        del rng
        pred = batch["x"] @ params["w"] + params["b"]
        loss = jnp.mean((pred - batch["y"]) ** 2)
        seen = model_state["seen"] + batch["x"].shape[0]
        return loss, ({"seen": seen}, {"mean_y": batch["y"].mean()})


def _state(tx, rng):
    params = {"w": jnp.asarray(rng.normal(size=(5, 1)), jnp.float32),
              "b": jnp.zeros((1,), jnp.float32)}
    return train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            model_state={"seen": jnp.zeros((), jnp.int32)},
                            opt_state=tx.init(params))


@pytest.mark.parametrize("accum", [2, 4])
def test_micro_batches_give_the_large_batch_step(accum):
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(16, 5)), jnp.float32),
             "y": jnp.asarray(rng.normal(size=(16, 1)), jnp.float32)}
    tx = optax.adam(1e-2)
    key = jax.random.key(0)
    steps = {}
    for a in (1, accum):
        step = jax.jit(lambda s, b, a=a: train.train_step(s, b, task=_Regression(), tx=tx,
                                                           rng=key, accum=a))
        state = _state(tx, np.random.default_rng(1))
        for _ in range(3):
            state, metrics = step(state, batch)
        steps[a] = (state, metrics)
    (big, big_metrics), (small, small_metrics) = steps[1], steps[accum]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
                 big.params, small.params)
    for name in ("loss", "mean_y", "grad_norm"):
        np.testing.assert_allclose(small_metrics[name], big_metrics[name], rtol=1e-6)
    # The model state went through every micro-batch: all 16 rows per step, 3 steps.
    assert int(small.model_state["seen"]) == int(big.model_state["seen"]) == 48


def test_micro_batches_take_every_kth_row():
    batch = {"x": jnp.arange(12).reshape(6, 2)}
    micro = train.micro_batches(batch, 3)["x"]
    assert micro.shape == (3, 2, 2)
    np.testing.assert_array_equal(micro[1], [[2, 3], [8, 9]])  # rows 1 and 4


def test_bad_accumulation_is_refused():
    config = load_config("i2pa", "tiny")  # batch_size 8
    config.grad_accum_steps = 0
    with pytest.raises(ConfigError, match="grad_accum_steps=0 must be an integer >= 1"):
        config_validation.validate(config, num_devices=1)
    config.grad_accum_steps = 3
    with pytest.raises(ConfigError, match=r"batch_size=8 does not split into "
                       r"config.grad_accum_steps=3 micro-batches over the 2 devices; use a "
                       r"multiple of 6, e.g. --config.batch_size=6"):
        config_validation.validate(config, num_devices=2)
    config.grad_accum_steps = 2
    config_validation.validate(config, num_devices=2)
