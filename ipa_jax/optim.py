# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Optimizers by name, with per-parameter-group learning rates and per-epoch decay."""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
import optax


def epoch_decay_schedule(lr: float, decay: float, steps_per_epoch: int) -> optax.Schedule:
    """`lr * decay ** epoch`: the rate is multiplied by `decay` after each epoch (SPEC 1)."""
    return optax.exponential_decay(lr, transition_steps=steps_per_epoch, decay_rate=decay,
                                   staircase=True)


def adam_l2(o: ml_collections.ConfigDict, schedule: optax.Schedule):
    """Adam with an L2 penalty added to the gradient (torch.optim.Adam's weight_decay)."""
    return optax.chain(optax.add_decayed_weights(o.l2), optax.scale_by_adam(o.b1, o.b2, o.eps),
                       optax.scale_by_learning_rate(schedule))


def adamw(o: ml_collections.ConfigDict, schedule: optax.Schedule):
    """AdamW: weight decay decoupled from the gradient, scaled by the rate (torch.optim.AdamW)."""
    return optax.adamw(schedule, o.b1, o.b2, o.eps, weight_decay=o.weight_decay)


def sgd(o: ml_collections.ConfigDict, schedule: optax.Schedule):
    """SGD with momentum and an L2 penalty in the gradient (the latent SVM's regulariser)."""
    return optax.chain(optax.add_decayed_weights(o.l2), optax.trace(o.momentum),
                       optax.scale_by_learning_rate(schedule))


OPTIMIZERS: dict[str, Callable] = {"adam_l2": adam_l2, "adamw": adamw, "sgd": sgd}
# The config.optimizer fields each optimizer reads besides lr, head_lr, head_params and
# epoch_decay (checked by config_validation.validate before any work).
FIELDS: dict[str, tuple[str, ...]] = {
    "adam_l2": ("l2", "b1", "b2", "eps"), "adamw": ("weight_decay", "b1", "b2", "eps"),
    "sgd": ("l2", "momentum")}


def param_groups(params, head_params) -> dict:
    """Labels each leaf 'head' when its top-level name is in `head_params`, else 'backbone'."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "head" if path[0].key in head_params else "backbone", params)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
    """The optimizer of `config.optimizer`; returns (tx, {group: schedule})."""
    o = config.optimizer
    if o.name not in OPTIMIZERS:
        raise ValueError(f"Unknown config.optimizer.name {o.name!r}; known: {sorted(OPTIMIZERS)}")
    schedules = {
        "backbone": epoch_decay_schedule(o.lr, o.epoch_decay, steps_per_epoch),
        "head": epoch_decay_schedule(o.head_lr, o.epoch_decay, steps_per_epoch),
    }
    transforms = {g: OPTIMIZERS[o.name](o, s) for g, s in schedules.items()}
    tx = optax.multi_transform(transforms, lambda p: param_groups(p, tuple(o.head_params)))
    return tx, schedules
