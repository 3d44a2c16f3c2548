# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The one training loop: any task (`ipa_jax.tasks`), checkpoints, evaluation, reports.

One code path for 1 CPU, 8 GPUs or a TPU pod: `jax.jit` over a mesh with a `data` axis,
batches sharded `P('data')`, the train state replicated. A mean over the sharded batch is
global, so BatchNorm statistics and losses are the same on any number of devices.
`config.fsdp` > 1 adds an `fsdp` mesh axis over which the large parameter and optimizer-state
arrays are sharded (`sharding.state_shardings`); the step computes the same values.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
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

from ipa_jax import (
    checkpointing,
    config_lib,
    config_validation,
    evaluation,
    model_card,
    optim,
    preemption,
    pretrained,
    sharding,
    tasks,
    workdir_lock,
)
from ipa_jax.data import prepare as prepare_lib


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: flax.core.FrozenDict
    model_state: dict  # non-trained collections, e.g. {"batch_stats": ...}; may be empty
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
            from ipa_jax.data import embedded  # noqa: PLC0415 - only when generating

            # An interrupted earlier generation is emptied by `generate` itself, which refuses
            # (config_lib.DataError) a folder it did not write; nothing else is removed here.
            logging.info("Generating the embedded %r dataset in %s", config.data.embedded_size,
                         raw_dir)
            embedded.generate(raw_dir, size=config.data.embedded_size,
                              seed=config.data.embedded_seed)
        if not prepare_lib.is_prepared(prepared_dir, raw_dir, config.prep):
            if os.path.exists(os.path.join(prepared_dir, prepare_lib.SUMMARY)):
                raise config_lib.ConfigError(
                    f"{prepared_dir} was prepared from other data, settings or an older "
                    "ipa_jax; delete it, or set --config.data.prepared_dir to a new folder.")
            summary = prepare_lib.prepare(raw_dir, prepared_dir, config.prep)
            logging.info("Prepared %s:\n%s", prepared_dir, prepare_lib.format_report(summary))
    multihost_utils.sync_global_devices("data prepared")
    return raw_dir, prepared_dir


# ---------------------------------------------------------------------------- steps
def micro_batches(batch: dict, count: int) -> dict:
    """[B, ...] leaves as [count, B / count, ...]: micro-batch k takes rows k, k + count, ...,
    so each device's rows split evenly over the micro-batches (no data moves between them)."""
    return jax.tree.map(lambda x: jnp.moveaxis(
        x.reshape(x.shape[0] // count, count, *x.shape[1:]), 1, 0), batch)


def accumulated_grads(loss_fn, params, model_state, batch: dict, count: int):
    """((loss, (model_state, aux)), grads) of `loss_fn(params, model_state, batch, k)` as
    `jax.value_and_grad` gives them for the whole batch, computed over `count` equal
    micro-batches in turn: loss, aux and gradients averaged (the whole batch's mean, up to
    float rounding), model_state (BatchNorm statistics) carried from one to the next."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if count == 1:
        return grad_fn(params, model_state, batch, 0)

    def one(carry, inputs):
        model_state, sums = carry
        k, micro = inputs
        (loss, (model_state, aux)), grads = grad_fn(params, model_state, micro, k)
        sums = jax.tree.map(jnp.add, sums, (loss, aux, grads))
        return (model_state, sums), None

    (loss, (_, aux)), grads = jax.eval_shape(grad_fn, params, model_state, batch, 0)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (loss, aux, grads))
    (model_state, sums), _ = jax.lax.scan(
        one, (model_state, zeros), (jnp.arange(count), micro_batches(batch, count)))
    loss, aux, grads = jax.tree.map(lambda x: x / count, sums)
    return (loss, (model_state, aux)), grads


def train_step(state: TrainState, batch: dict, *, task, tx, rng, accum: int = 1):
    """One optimizer step over `accum` micro-batches; returns the new state and metrics.

    `rng` is the run's dropout key; each step folds in its step number (and each micro-batch
    its index), so a resumed run draws the same masks as an uninterrupted one.
    """

    def loss_of(params, model_state, micro, k):
        key = jax.random.fold_in(rng, state.step)
        return task.loss(params, model_state, micro,
                         key if accum == 1 else jax.random.fold_in(key, k))

    (loss, (model_state, aux)), grads = accumulated_grads(loss_of, state.params,
                                                          state.model_state, batch, accum)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step_metrics = {"loss": loss, **aux, "grad_norm": optax.global_norm(grads),
                    "param_norm": optax.global_norm(params)}
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state)
    return new_state, step_metrics


def first_nonfinite(tree) -> tuple[str, str] | None:
    """(path, what) of the first leaf with a NaN or inf, e.g. ("params/fc/kernel", "inf in
    3 of 16 values"), or None. Reads the arrays to the host (gathered across processes: every
    process calls it), so call it once `all_finite` failed."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(sharding.to_host(tree)):
        array = np.asarray(leaf)
        if not np.issubdtype(array.dtype, np.inexact):
            continue
        bad = ~np.isfinite(array)
        if bad.any():
            kinds = " and ".join(k for k, m in (("nan", np.isnan), ("inf", np.isposinf),
                                                ("-inf", np.isneginf)) if m(array).any())
            return checkpointing.path_name(path), f"{kinds} in {bad.sum()} of {array.size} values"
    return None


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every float of `tree` is finite: one fused reduction on the devices."""
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


DIVERGED_HINT = ("nothing of this step was saved or reported. Lower config.optimizer.lr and "
                 "head_lr (or check the data) and train in a new workdir.")


def check_metrics(step: int, metrics: dict, *, allow_nan: bool = False) -> None:
    """Raises FloatingPointError for a metric that is inf, NaN (unless `allow_nan`: a metric
    undefined for the split, e.g. the correlation of constant scores) or beyond float32, where
    TensorBoard's summaries would fail or read inf."""
    limit = float(np.finfo(np.float32).max)
    for name, value in metrics.items():
        value = float(value)
        if np.isnan(value) and allow_nan:
            continue
        if not np.isfinite(value) or abs(value) > limit:
            what = "not finite" if not np.isfinite(value) else "beyond float32's range"
            raise FloatingPointError(f"step {step}: {name} = {value:g} is {what}; "
                                     f"{DIVERGED_HINT}")


def _init_state(task, tx, rng, frozen: dict) -> TrainState:
    params, model_state = task.init(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      model_state={**model_state, **frozen}, opt_state=tx.init(params))


def fresh_state(task, tx, seed: int, frozen: dict, out_sharding) -> TrainState:
    """A new train state, made by one jitted init straight into `out_sharding` (one sharding,
    or a TrainState of them: `state_shardings`), never on one device first. Frozen variables
    (`task.frozen_state()`: the on-the-fly depth backbone) join model_state, never params: no
    optimizer update or state. An argument, not a constant baked into the compiled init."""
    return jax.jit(functools.partial(_init_state, task, tx),
                   out_shardings=out_sharding)(jax.random.key(seed), frozen)


def state_shapes(task, tx) -> TrainState:
    """The TrainState `fresh_state` makes, as `jax.ShapeDtypeStruct`s: nothing computed."""
    frozen = getattr(task, "frozen_state", dict)()
    return jax.eval_shape(functools.partial(_init_state, task, tx), jax.random.key(0), frozen)


def state_shardings(task, tx, config: ml_collections.ConfigDict, mesh,
                    shapes: TrainState | None = None) -> TrainState:
    """The TrainState's shardings over `mesh`, from its shapes alone (`state_shapes`, or
    `shapes`): params and opt_state by `sharding.state_shardings` (on a mesh with an `fsdp`
    axis, arrays of at least `config.fsdp_min_size` elements sharded over it), the step and
    model_state (BatchNorm statistics, frozen variables) replicated."""
    abstract = state_shapes(task, tx) if shapes is None else shapes
    replicated = sharding.replicated(mesh)
    min_size = config.get("fsdp_min_size", sharding.FSDP_MIN_SIZE)
    return TrainState(
        step=replicated,
        params=sharding.state_shardings(abstract.params, mesh, min_size),
        model_state=jax.tree.map(lambda _: replicated, abstract.model_state),
        opt_state=sharding.state_shardings(abstract.opt_state, mesh, min_size))


def describe_shardings(tree) -> str:
    """'12 of 40 arrays (92.1% of 1.2 MB) sharded over fsdp', for the arrays of `tree`."""
    leaves = jax.tree.leaves(tree)
    sharded = [x for x in leaves if sharding.FSDP in tuple(x.sharding.spec)]
    nbytes = lambda xs: sum(x.size * x.dtype.itemsize for x in xs)  # noqa: E731
    return (f"{len(sharded)} of {len(leaves)} arrays "
            f"({100 * nbytes(sharded) / max(1, nbytes(leaves)):.1f}% of "
            f"{nbytes(leaves) / 1e6:.1f} MB) sharded over {sharding.FSDP}")


def jit_train_step(task, tx, config: ml_collections.ConfigDict, mesh, shardings=None):
    """`train_step` as the loop runs it: jitted over `mesh`, the state in `shardings` (default
    `state_shardings(task, tx, config, mesh)`: replicated, or large arrays sharded over an
    `fsdp` axis), the batch by `sharding.data_sharding`, metrics replicated; the state donated,
    the run's dropout key, `config.grad_accum_steps`."""
    if shardings is None:
        shardings = state_shardings(task, tx, config, mesh)
    dropout_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
    return jax.jit(functools.partial(train_step, task=task, tx=tx, rng=dropout_rng,
                                     accum=config.get("grad_accum_steps", 1)),
                   in_shardings=(shardings, sharding.data_sharding(mesh)),
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)


def _kill_while_saving(workdir: str, step: int) -> None:
    """SIGKILLs this process once orbax is writing `step` into its temporary folder."""
    pattern = os.path.join(workdir, "checkpoints", f"{step}.orbax-checkpoint-tmp*")
    deadline = time.time() + 30
    while not glob.glob(pattern) and time.time() < deadline:
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------- main
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, keeps the best checkpoint by a validation metric, tests it; returns metrics.

    The workdir is locked for the run (`workdir_lock.WorkdirLock`): a second run on it stops
    with `workdir_lock.WorkdirLockedError` before touching anything.
    """
    config_validation.validate(config, num_devices=jax.device_count())
    with workdir_lock.hold(workdir), contextlib.ExitStack() as cleanup:
        return _train_and_evaluate(config, workdir, cleanup)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        cleanup: contextlib.ExitStack) -> dict:
    # ---- mesh: ("data",), or ("data", "fsdp") with config.fsdp > 1
    mesh = sharding.make_mesh(fsdp=config.get("fsdp", 1))
    data_sharding = sharding.data_sharding(mesh)
    to_global = functools.partial(sharding.to_global, mesh)
    os.makedirs(workdir, exist_ok=True)
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    # ---- input and task
    raw_dir, prepared_dir = ensure_data(config, workdir)
    with open(os.path.join(prepared_dir, prepare_lib.SUMMARY)) as f:
        prepared_summary = json.load(f)
    all_counts = prepared_summary["counts"]
    # What scoring new images must reproduce (`ipa_jax.history`): the retrieval weights and
    # semantic source the features were computed with (pose is 0 without keypoints).
    retrieval_used = {k: v for k, v in prepared_summary.get("retrieval", {}).items()
                      if k in ("weights", "semantic_source", "missing_aspects")}
    task = tasks.TASKS[config.task](config, prepared_dir, all_counts[config.data.pairs], mesh)
    # A step takes config.batch_size examples, or as many as the task says (the per-image
    # log-likes loss: 2 * batch_size images, the images of batch_size pairs).
    per_step = getattr(task, "examples_per_step", config.batch_size)
    if task.num_train_examples < per_step:
        raise config_lib.ConfigError(
            f"Only {task.num_train_examples} training {task.unit} but config.batch_size="
            f"{config.batch_size}" + (f" ({per_step} {task.unit} per step)"
                                      if per_step != config.batch_size else "")
            + "; use a smaller batch or more data.")
    steps_per_epoch = task.num_train_examples // per_step
    num_steps = config_lib.total_steps(config, steps_per_epoch)
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
    logging.info("%d train %s, %d steps per epoch, %d steps", task.num_train_examples,
                 task.unit, steps_per_epoch, num_steps)

    # ---- optimizer and state (created in place, replicated or sharded over fsdp; never on
    # one device first)
    tx, schedules = optim.make_optimizer(config, steps_per_epoch)

    frozen = getattr(task, "frozen_state", dict)()
    shardings = state_shardings(task, tx, config, mesh)
    state = fresh_state(task, tx, config.seed, frozen, shardings)
    # Restores (resume, best) land in these shardings, whatever a checkpoint was saved with.
    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("%s: %d parameters on %d devices, %d processes", config.task, num_params,
                 jax.device_count(), jax.process_count())
    if sharding.FSDP in mesh.axis_names:
        logging.info("fsdp=%d, mesh %s: %s", config.fsdp, dict(mesh.shape),
                     describe_shardings({"params": state.params, "opt_state": state.opt_state}))

    # ---- checkpoints: resume from the workdir when it has one
    # Saves in flight complete however the run ends (an error included).
    ckpt = cleanup.enter_context(
        checkpointing.Checkpointer(workdir, config.keep_checkpoints, config.best_metric))
    restored = ckpt.restore_latest(abstract_state)
    start_step = 0
    if restored is not None:
        state, start_step = restored
        logging.info("Resumed from step %d", start_step)
    elif config.init_from:  # pretrained backbone, fresh heads
        fresh = sharding.to_host({"params": state.params, **state.model_state})
        # A fused model's backbone/ takes a plain backbone's arrays; fusion/ stays fresh.
        into = "backbone" if config.get("fusion") is not None else None
        dont_load = (*config.init_dont_load, *(f"^{k}/" for k in frozen))  # frozen: kept
        loaded = pretrained.init_from(fresh, config.init_from, dont_load, into=into)
        params = loaded.pop("params")
        state = jax.jit(lambda p, ms: TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                                 model_state=ms, opt_state=tx.init(p)),
                        out_shardings=shardings)(params, loaded)

    # The input position is the step: the order is `train_order`'s, on any number of hosts.
    train_iter = iter(task.train_dataset(start_step))
    step_fn = jit_train_step(task, tx, config, mesh, shardings)
    # Evaluation sends the images and the task's `eval_keys` (a fused model's f_ret, depth).
    eval_keys = tuple(getattr(task, "eval_keys", ()))
    score_fn = jax.jit(lambda st, x, *extra: task.score(st.params, st.model_state, x, *extra),
                       in_shardings=(shardings, data_sharding, *[data_sharding] * len(eval_keys)),
                       out_shardings=data_sharding)
    manifest = evaluation.Manifest(prepared_dir, config.data.pairs)
    evaluator = evaluation.Evaluator(task.eval_dataset, task.count, score_fn, to_global,
                                     config.eval_batch_size, extra_keys=eval_keys)

    def evaluate(split):
        rows, scores = evaluator.predict(state, split)
        expected = manifest.indices(split)
        if not np.array_equal(rows, expected):
            raise AssertionError(f"{split}: scored {len(rows)} images, manifest has "
                                 f"{len(expected)}")
        bad = ~np.isfinite(scores)
        if bad.any():  # never a metric from NaN scores (NaN pairs all "win": accuracy 1.0)
            raise FloatingPointError(
                f"step {int(state.step)}: {bad.sum()} of {bad.size} {split} scores are not "
                f"finite, though the parameters are; {DIVERGED_HINT}")
        return rows, scores, evaluation.split_metrics(scores, manifest, rows)

    checked_step = None

    def check_state(step):
        """Parameters, model state and optimizer state all finite, before any save or write:
        one jitted reduction per logged step; the first bad array is named."""
        nonlocal checked_step
        if checked_step != step and not bool(all_finite(state)):
            name, what = first_nonfinite(state)
            raise FloatingPointError(f"step {step}: {name} is not finite ({what}); "
                                     f"{DIVERGED_HINT}")
        checked_step = step

    # ---- loop
    report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
    history = []
    watch = cleanup.enter_context(preemption.Watch())
    for step in range(start_step + 1, num_steps + 1):
        batch = to_global(jax.tree.map(np.asarray, next(train_iter)))
        state, step_metrics = step_fn(state, batch)
        history.append(step_metrics)
        report(step)
        if step % config.log_every_steps == 0 or step == num_steps:
            summary = {k: float(np.mean([m[k] for m in history])) for k in history[0]}
            history = []
            summary.update({f"lr_{g}": float(s(step - 1)) for g, s in schedules.items()})
            summary = {f"train/{k}": v for k, v in summary.items()}
            check_state(step)
            check_metrics(step, summary)
            writer.write_scalars(step, summary)
        if step % eval_every == 0 or step == num_steps:
            check_state(step)
            t0 = time.time()
            *_, val = evaluate("validation")
            val["eval_seconds"] = time.time() - t0
            val = {f"validation/{k}": v for k, v in val.items()}
            check_metrics(step, val, allow_nan=True)
            writer.write_scalars(step, val)
            ckpt.save_best(step, state, {k.split("/", 1)[1]: v for k, v in val.items()})
        preempted = watch.reached(step)
        if step % config.checkpoint_every_steps == 0 or step == num_steps or preempted:
            check_state(step)
            ckpt.save(step, state)
        if step == config.debug_kill_after_step:
            # A preemption right after the last checkpoint completed: no clean-up at all.
            ckpt.wait_until_finished()
            os.kill(os.getpid(), signal.SIGKILL)
        if step == config.debug_kill_during_save_at_step:
            # A process killed while its save is being written: no clean-up at all.
            _kill_while_saving(workdir, step)
        if preempted and step < num_steps:
            ckpt.wait_until_finished()
            raise preemption.Preempted(step, watch.signal_name)
    ckpt.wait_until_finished()

    # ---- test the best checkpoint
    state, best_step = ckpt.restore_best(abstract_state)
    results, predictions = {}, {}
    for split in ("validation", "test"):
        rows, scores, results[split] = evaluate(split)
        predictions[split] = (rows, scores)
    oracle = evaluation.read_oracle_scores(raw_dir, manifest)
    f_ret = evaluation.read_retrieval(prepared_dir)

    def references(split_manifest, rows) -> dict:
        """Scorers that need no training, on the same posts: the planted oracle (embedded
        data) and the retrieval branch's signal on its own (data with f_ret)."""
        out = {}
        if oracle is not None:
            out["oracle"] = evaluation.split_metrics(oracle[rows], split_manifest, rows)
        if f_ret is not None:
            out["retrieval_only"] = evaluation.split_metrics(
                evaluation.retrieval_only_scores(f_ret[rows]), split_manifest, rows)
        return out

    results.update({f"test_{k}": v
                    for k, v in references(manifest, predictions["test"][0]).items()})
    for kind in config.data.also_test_on:  # e.g. I2PA, trained on PDIPs, tested on groups
        other = config.copy_and_resolve_references()
        other.data.pairs = kind
        other_task = tasks.TASKS[config.task](other, prepared_dir, all_counts[kind], mesh)
        other_manifest = evaluation.Manifest(prepared_dir, kind)
        rows, scores = evaluation.Evaluator(
            other_task.eval_dataset, other_task.count, score_fn, to_global,
            config.eval_batch_size, extra_keys=eval_keys).predict(state, "test")
        if not np.array_equal(rows, other_manifest.indices("test")):
            raise AssertionError(f"{kind} test: scored {len(rows)} images, manifest has "
                                 f"{len(other_manifest.indices('test'))}")
        results[f"test_on_{kind}"] = evaluation.split_metrics(scores, other_manifest, rows)
        results.update({f"test_{k}_on_{kind}": v
                        for k, v in references(other_manifest, rows).items()})
    if hasattr(task, "finish"):  # task-specific results and reports
        task.finish(state=state, evaluate=evaluate, predictions=predictions, results=results,
                    workdir=workdir, raw_dir=raw_dir, manifest=manifest)
    check_metrics(best_step, {f"test/{k}": v for k, v in results["test"].items()},
                  allow_nan=True)
    if jax.process_index() == 0:
        evaluation.write_predictions(os.path.join(workdir, "predictions.csv"), manifest,
                                     predictions)
        with open(os.path.join(workdir, "metrics.json"), "w") as f:
            json.dump({**results, "best_step": best_step}, f, indent=2, default=float)
        model = (config.model.name if "model" in config  # latent_svm: senses on features
                 else f"{config.task} on frozen {config.features.backbone} features")
        if config.get("fusion") is not None:  # Ji et al.'s model: which branches it fuses
            f = config.fusion
            model += (f" + {f.kind} fusion of " + " and ".join(
                [b for b, used in (("retrieval", f.use_retrieval), ("depth", f.use_depth))
                 if used] or ["the backbone's tokens alone"]))
        model_card.write(workdir, model_card.build(
            model=model, objective=config.get("loss", ""),
            preprocessing={"size": config.input.crop_size, "resize": "crop",
                           "resize_short_side": config.input.resize_short_side,
                           "normalize": config.input.normalize},
            trained_on={"raw_dir": os.path.abspath(raw_dir), "task": config.task,
                        "pairs": config.data.get("pairs", ""), "best_step": best_step,
                        **({"retrieval": retrieval_used} if retrieval_used else {})},
            test_metrics=results["test"], test_scores=predictions["test"][1]))
        print(f"\nTest metrics of the best checkpoint (step {best_step}, by validation "
              f"{config.best_metric}):\n{evaluation.format_table(results)}", flush=True)
    writer.write_scalars(num_steps, {f"test/{k}": v for k, v in results["test"].items()})
    writer.flush()
    return results
