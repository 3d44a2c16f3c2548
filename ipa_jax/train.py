# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Training and evaluation of pairwise popularity scorers (I2PA and its relatives).

One code path for 1 CPU, 8 GPUs or a TPU pod: `jax.jit` over a mesh with a `data` axis,
batches sharded `P('data')`, the train state replicated. A mean over the sharded batch is
global, so BatchNorm statistics and losses are the same on any number of devices.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from data_prep import prepare as prepare_lib
from ipa_jax import checkpointing, config_lib, evaluation, input_pipeline, losses, models, optim

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: flax.core.FrozenDict
    batch_stats: flax.core.FrozenDict
    opt_state: optax.OptState


# ---------------------------------------------------------------------------- data
def ensure_data(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, str]:
    """Generates the embedded dataset if asked, prepares TFRecords; returns (raw, prepared)."""
    raw_dir = config.data.raw_dir
    if raw_dir == config_lib.EMBEDDED:
        raw_dir = os.path.join(
            workdir, "embedded", f"{config.data.embedded_size}-seed{config.data.embedded_seed}")
    prepared_dir = config.data.prepared_dir or os.path.join(workdir, "prepared")
    if jax.process_index() == 0:
        if config.data.raw_dir == config_lib.EMBEDDED and not os.path.exists(
                os.path.join(raw_dir, "dataset.json")):
            from data_prep import embedded  # noqa: PLC0415 - only when generating

            shutil.rmtree(raw_dir, ignore_errors=True)  # an interrupted earlier generation
            logging.info("Generating the embedded %r dataset in %s", config.data.embedded_size,
                         raw_dir)
            embedded.generate(raw_dir, size=config.data.embedded_size,
                              seed=config.data.embedded_seed)
        if not prepare_lib.is_prepared(prepared_dir, raw_dir, config.prep):
            summary = prepare_lib.prepare(raw_dir, prepared_dir, config.prep)
            logging.info("Prepared %s:\n%s", prepared_dir, prepare_lib.format_report(summary))
    multihost_utils.sync_global_devices("data prepared")
    return raw_dir, prepared_dir


# ---------------------------------------------------------------------------- steps
def preprocess(images: jax.Array, normalize: str, dtype) -> jax.Array:
    """uint8 images -> model input: [0, 1] ('unit', the I2PA release) or ImageNet mean/std."""
    x = images.astype(jnp.float32)
    x = x / 255.0 if normalize == "unit" else (x - IMAGENET_MEAN) / IMAGENET_STD
    return x.astype(dtype)


def train_step(state: TrainState, batch: dict, *, model, tx, loss_fn, normalize, dtype):
    """One optimizer step on a batch of pairs; returns the new state and scalar metrics."""
    images = batch["image"]  # [B, 2, H, W, 3]: pairs stay whole on one device
    b = images.shape[0]
    x = preprocess(images.reshape(b * 2, *images.shape[2:]), normalize, dtype)
    likes = batch["likes"]

    def loss_of(params):
        out, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                   train=True, mutable=["batch_stats"])
        o = out[:, 0].astype(jnp.float32).reshape(b, 2)
        per_pair = loss_fn(o[:, 0], o[:, 1], likes[:, 0], likes[:, 1])
        return per_pair.mean(), (updates["batch_stats"], o)

    (loss, (batch_stats, o)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    a_wins = likes[:, 0] > likes[:, 1]
    correct = jnp.where(a_wins, o[:, 0] > o[:, 1], o[:, 1] > o[:, 0])
    step_metrics = {
        "loss": loss,
        "pairwise_accuracy": correct.mean(),
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(params),
    }
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, step_metrics


def score_step(state: TrainState, images: jax.Array, *, model, normalize, dtype) -> jax.Array:
    x = preprocess(images, normalize, dtype)
    out = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                      train=False)
    return out[:, 0].astype(jnp.float32)


def first_nonfinite(tree) -> str | None:
    """The path of the first leaf with a NaN or inf, or None."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not np.all(np.isfinite(np.asarray(leaf))):
            return jax.tree_util.keystr(path)
    return None


# ---------------------------------------------------------------------------- main
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, keeps the best checkpoint by validation accuracy, tests it; returns metrics."""
    # ---- mesh and config
    devices = jax.devices()
    config_lib.validate(config, num_devices=len(devices))
    mesh = Mesh(np.asarray(devices), ("data",))
    data_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    to_global = functools.partial(jax.tree.map, lambda x: jax.make_array_from_process_local_data(
        data_sharding, x))
    os.makedirs(workdir, exist_ok=True)
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    # ---- input
    raw_dir, prepared_dir = ensure_data(config, workdir)
    with open(os.path.join(prepared_dir, prepare_lib.SUMMARY)) as f:
        counts = json.load(f)["counts"][config.data.pairs]
    if counts["train"]["pairs"] < config.batch_size:
        raise config_lib.ConfigError(
            f"Only {counts['train']['pairs']} training pairs but config.batch_size="
            f"{config.batch_size}; use a smaller batch or more data.")
    steps_per_epoch = counts["train"]["pairs"] // config.batch_size
    num_steps = config_lib.total_steps(config, steps_per_epoch)
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
    builder = input_pipeline.get_builder(prepared_dir, config.data.pairs)
    train_iter = iter(input_pipeline.train_dataset(builder, config))
    logging.info("%d train pairs, %d steps per epoch, %d steps", counts["train"]["pairs"],
                 steps_per_epoch, num_steps)

    # ---- model, optimizer, state (created replicated, never on one device first)
    dtype = jnp.dtype(config.model.dtype)
    model = models.get_model(config.model.name, num_classes=1, dtype=dtype)
    tx, schedules = optim.make_optimizer(config, steps_per_epoch)
    loss_fn = losses.get_loss(config.loss)
    crop = config.input.crop_size

    def init(rng):
        variables = model.init(rng, jnp.zeros((1, crop, crop, 3), dtype), train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables["batch_stats"], opt_state=tx.init(params))

    state = jax.jit(init, out_shardings=replicated)(jax.random.key(config.seed))
    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("%s: %d parameters on %d devices, %d processes", config.model.name, num_params,
                 len(devices), jax.process_count())

    # ---- checkpoints: resume from the workdir when it has one
    ckpt = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
    restored = ckpt.restore_latest(abstract_state, train_iter)
    start_step = 0
    if restored is not None:
        state, start_step = restored
        logging.info("Resumed from step %d", start_step)

    step_fn = jax.jit(
        functools.partial(train_step, model=model, tx=tx, loss_fn=loss_fn,
                          normalize=config.input.normalize, dtype=dtype),
        in_shardings=(replicated, data_sharding), out_shardings=(replicated, replicated),
        donate_argnums=0)
    score_fn = jax.jit(
        functools.partial(score_step, model=model, normalize=config.input.normalize,
                          dtype=dtype),
        in_shardings=(replicated, data_sharding), out_shardings=data_sharding)
    manifest = evaluation.Manifest(prepared_dir, config.data.pairs)
    evaluator = evaluation.Evaluator(builder, config, score_fn, to_global)

    def evaluate(split):
        rows, scores = evaluator.predict(state, split)
        expected = manifest.indices(split)
        if not np.array_equal(rows, expected):
            raise AssertionError(f"{split}: scored {len(rows)} images, manifest has "
                                 f"{len(expected)}")
        return rows, scores, evaluation.split_metrics(scores, manifest, rows)

    # ---- loop
    report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
    history = []
    for step in range(start_step + 1, num_steps + 1):
        batch = to_global(jax.tree.map(np.asarray, next(train_iter)))
        state, step_metrics = step_fn(state, batch)
        history.append(step_metrics)
        report(step)
        if step % config.log_every_steps == 0 or step == num_steps:
            summary = {k: float(np.mean([m[k] for m in history])) for k in history[0]}
            history = []
            if not np.isfinite(summary["loss"]):
                bad = first_nonfinite(state.params)
                raise FloatingPointError(f"Loss is {summary['loss']} at step {step}; first "
                                         f"non-finite parameter: {bad}")
            summary.update({f"lr_{g}": float(s(step - 1)) for g, s in schedules.items()})
            writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
        if step % eval_every == 0 or step == num_steps:
            t0 = time.time()
            *_, val = evaluate("validation")
            val["eval_seconds"] = time.time() - t0
            writer.write_scalars(step, {f"validation/{k}": v for k, v in val.items()})
            ckpt.save_best(step, state, val)
        if step % config.checkpoint_every_steps == 0 or step == num_steps:
            ckpt.save(step, state, train_iter)
        if step == config.debug_kill_after_step:
            # A preemption right after the last checkpoint completed: no clean-up at all.
            ckpt.wait_until_finished()
            os.kill(os.getpid(), signal.SIGKILL)
    ckpt.wait_until_finished()

    # ---- test the best checkpoint
    state, best_step = ckpt.restore_best(abstract_state)
    results, predictions = {}, {}
    for split in ("validation", "test"):
        rows, scores, results[split] = evaluate(split)
        predictions[split] = (rows, scores)
    oracle = evaluation.read_oracle_scores(raw_dir, manifest)
    if oracle is not None:
        rows = predictions["test"][0]
        results["test_oracle"] = evaluation.split_metrics(oracle[rows], manifest, rows)
    results["best_step"] = best_step
    if jax.process_index() == 0:
        evaluation.write_predictions(os.path.join(workdir, "predictions.csv"), manifest,
                                     predictions)
        with open(os.path.join(workdir, "metrics.json"), "w") as f:
            json.dump(results, f, indent=2, default=float)
        table = evaluation.format_table({k: v for k, v in results.items() if k != "best_step"})
        print(f"\nTest metrics of the best checkpoint (step {best_step}, by validation "
              f"pairwise accuracy):\n{table}", flush=True)
    writer.write_scalars(num_steps, {f"test/{k}": v for k, v in results["test"].items()})
    writer.flush()
    return results
