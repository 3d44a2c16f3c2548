# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""What the one training loop trains: a task supplies data, model, loss and scores.

  ImagePairs: image scorers on pairs (I2PA BCE, likes ratio), or on single images for the
              log-likes regression baseline (log-likes MSE).
  LatentSvm:  latent ranking SVM senses on frozen, cached backbone features (Cappallo 2015).

Every task yields evaluation batches of {'input', 'post_index'} and log-scores `[N]`, so the
loop, checkpoints, evaluation and metric writers are shared.
"""

from __future__ import annotations

import functools
import itertools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from ipa_jax import depth as depth_lib
from ipa_jax import (
    evaluation,
    input_pipeline,
    losses,
    metrics,
    models,
    report,
    scoring,
    sharding,
    svr,
    train_order,
)
from ipa_jax import features as features_lib
from ipa_jax.models import latent_svm
from ipa_jax.normalize import preprocess


class ImagePairs:
    """A backbone with a one-output head, trained on (A, B) image pairs of one user, or, for
    a per-image loss (`losses.IMAGE_LOSSES`, the log-likes baseline), on every image of the
    training groups once per epoch, `2 * config.batch_size` images per step."""

    def __init__(self, config: ml_collections.ConfigDict, prepared_dir: str | None,
                 counts: dict, mesh, *, aux_shapes: dict | None = None):
        """`prepared_dir` None (benchmarks): no data, and a fused model's f_ret and depth
        shapes come from `aux_shapes` ({'f_ret': (K, 5), 'depth': (M, F)})."""
        del mesh  # images are fed by tf.data; nothing to compute ahead
        self.config = config
        self.per_image = losses.is_per_image(config.loss)
        # What an epoch counts and a step takes (train.py): pairs, or images, as many as the
        # pairs' two images.
        self.unit = "images" if self.per_image else "pairs"
        self.num_train_examples = counts["train"][self.unit] if counts else 0
        self.examples_per_step = config.batch_size * (2 if self.per_image else 1)
        self.builder = (None if prepared_dir is None
                        else input_pipeline.get_builder(prepared_dir, config.data.pairs))
        self.dtype = jnp.dtype(config.model.dtype)
        # config.fusion: a retrieval-augmented scorer (backbone/ + fusion/ parameters) that
        # also reads each image's f_ret [K, 5] and depth [M, F]; absent or None: a plain scorer.
        self.fused = config.get("fusion") is not None
        backbone = models.get_model(
            config.model.name, num_classes=0 if self.fused else 1, dtype=self.dtype,
            dropout_rate=config.model.dropout_rate, drop_path_rate=config.model.drop_path_rate,
            ops=config.model.get("ops", "auto"))
        if self.fused:
            from ipa_jax.models import fusion  # noqa: PLC0415 - only for fused models

            self.model = fusion.RetrievalAugmentedScorer(backbone, fusion.fusion_from_config(
                config.fusion, dtype=self.dtype, ops=config.model.get("ops", "auto")))
            # K and F of the stored f_ret and depth
            self.aux_shapes = aux_shapes if self.builder is None else _aux_shapes(self.builder)
        else:
            self.model = backbone
        # prep.depth.mode="on_the_fly": the fusion's depth features are computed in the step,
        # from the batch's depth_map, on the training (or evaluation) crop.
        d = config.prep.depth
        self.depth_on_the_fly = bool(self.fused and config.fusion.use_depth and d.enabled
                                     and d.mode == "on_the_fly")
        # What evaluation sends to the devices besides the images (`score`'s extra inputs).
        self.eval_keys = (("f_ret", "depth_map" if self.depth_on_the_fly else "depth")
                          if self.fused else ())
        self.loss_fn = losses.get_loss(config.loss)

    @functools.cached_property
    def _frozen_depth(self) -> tuple:
        """(apply, variables as numpy) of the on-the-fly depth backbone, built when first used.
        On the host: a train state made from them owns its own device copies (and may donate
        them) while these stay intact."""
        apply, variables = depth_lib.frozen_backbone(self.config.prep.depth,
                                                     input_size=self.config.input.crop_size)
        return apply, jax.device_get(variables)

    def frozen_state(self) -> dict:
        """Variables the training loop keeps in `model_state` but never trains: the on-the-fly
        depth backbone's ({depth.FROZEN: variables}), or {}. Not in `params`, so they get no
        gradient, no optimizer update and no optimizer state; they are checkpointed with the
        state, and `config.init_from` leaves them alone."""
        return {depth_lib.FROZEN: self._frozen_depth[1]} if self.depth_on_the_fly else {}

    def _depth_shape(self) -> tuple[int, int]:
        """(M, F) of the depth features the fusion reads."""
        if not self.depth_on_the_fly:
            return self.aux_shapes["depth"]
        apply, variables = self._frozen_depth
        crop = self.config.input.crop_size
        pooled = jax.eval_shape(apply, variables, jax.ShapeDtypeStruct((1, crop, crop, 3),
                                                                       jnp.float32))
        return len(self.config.prep.depth.intervals), pooled.shape[-1]

    def train_dataset(self, start_step: int = 0):
        """This process's numpy batches from global step `start_step` on
        (`input_pipeline.train_dataset`)."""
        make = (input_pipeline.train_images_dataset if self.per_image
                else input_pipeline.train_dataset)
        return make(self.builder, self.config, start_step=start_step)

    def eval_dataset(self, split: str) -> tf.data.Dataset:
        ds = input_pipeline.eval_dataset(self.builder, self.config, split)
        if self.fused:  # static K and F: a host's padding batches need the shapes
            shapes = {k: [None, *shape] for k, shape in self.aux_shapes.items()}
            ds = ds.map(lambda b: {**b, **{k: tf.ensure_shape(b[k], s)
                                           for k, s in shapes.items()}})
        return ds

    def count(self, split: str) -> int:
        return input_pipeline.count_images(self.builder, split)

    def init(self, rng):
        """(params, model_state) of a fresh model; `frozen_state()` joins model_state apart
        (the training loop passes it into its jitted init as an argument, not a constant)."""
        crop = self.config.input.crop_size
        images = jnp.zeros((1, crop, crop, 3), self.dtype)
        if self.fused:  # K and F size the fusion's first layers
            f_ret = jnp.zeros((1, *self.aux_shapes["f_ret"]), jnp.float32)
            depth = jnp.zeros((1, *self._depth_shape()), jnp.float32)
            variables = self.model.init(rng, images, f_ret, depth, train=False)
        else:
            variables = self.model.init(rng, images, train=False)
        return variables["params"], {"batch_stats": variables.get("batch_stats", {})}

    def _fusion_inputs(self, frozen, images, aux) -> tuple:
        """(f_ret [N, K, 5], depth [N, M, F]) for the fusion, from `aux` (a batch, or the
        `eval_keys` of an evaluation batch) laid out like the uint8 `images` [N, H, W, 3]
        (pairs: [B, 2, ...], flattened here). On the fly, depth comes from the frozen backbone
        (`frozen`: its model_state entry) on these very crops and their depth_map."""
        def flat(key):  # [N, ...] of f_ret [.., K, 5], depth [.., M, F], depth_map [.., H, W]
            return aux[key].reshape(images.shape[0], *aux[key].shape[-2:])

        if not self.depth_on_the_fly:
            return flat("f_ret"), flat("depth")
        d = self.config.prep.depth
        intervals = tuple(tuple(float(v) for v in iv) for iv in d.intervals)
        depth = depth_lib.depth_features(self._frozen_depth[0], frozen[depth_lib.FROZEN], images,
                                         flat("depth_map"), intervals, normalize=d.normalize,
                                         fill=d.fill)
        return flat("f_ret"), depth

    def _apply(self, params, model_state, images, batch, rng):
        """(logits, model_state) in training mode of uint8 images [N, H, W, 3]; fused models
        also read the batch's f_ret and depth (or depth_map, on the fly)."""
        trained, frozen = _split_frozen(model_state)
        x = preprocess(images, self.config.input.normalize, self.dtype)
        extra = self._fusion_inputs(frozen, images, batch) if self.fused else ()
        (logits, _), model_state = self.model.apply(
            {"params": params, **trained}, x, *extra, train=True, mutable=["batch_stats"],
            rngs={"dropout": rng})
        if self.fused:  # the same tree as `init` gives, also for a backbone without BatchNorm
            model_state = {"batch_stats": model_state.get("batch_stats", {})}
        return logits, {**model_state, **frozen}

    def loss(self, params, model_state, batch, rng):
        if self.per_image:
            return self._image_loss(params, model_state, batch, rng)
        images = batch["image"]  # [B, 2, H, W, 3]: pairs stay whole on one device
        b = images.shape[0]
        likes = batch["likes"]
        logits, model_state = self._apply(params, model_state,
                                          images.reshape(b * 2, *images.shape[2:]), batch, rng)
        o = logits[:, 0].astype(jnp.float32).reshape(b, 2)
        a_wins = likes[:, 0] > likes[:, 1]
        correct = jnp.where(a_wins, o[:, 0] > o[:, 1], o[:, 1] > o[:, 0])
        loss = self.loss_fn(o[:, 0], o[:, 1], likes[:, 0], likes[:, 1]).mean()
        return loss, (model_state, {"pairwise_accuracy": correct.mean()})

    def _image_loss(self, params, model_state, batch, rng):
        """Mean over the batch's images of the per-image loss, e.g. (o - ln(likes))^2."""
        logits, model_state = self._apply(params, model_state, batch["image"], batch, rng)
        o = logits[:, 0].astype(jnp.float32)
        return self.loss_fn(o, batch["likes"]).mean(), (model_state, {})

    def score(self, params, model_state, images, *extra):
        """Log-scores [N] of uint8 images [N, H, W, 3]; a fused model also needs the images'
        `eval_keys`: f_ret [N, K, 5] and depth [N, M, F], or depth_map [N, H, W] on the fly."""
        if not self.fused:
            return scoring.log_scores(self.model, {"params": params, **model_state}, images,
                                      self.config.input.normalize, self.dtype)
        variables, inputs = self.eval_inputs(params, model_state, images, *extra)
        logits, _ = self.model.apply(variables, *inputs, train=False)
        return logits[:, 0].astype(jnp.float32)

    def eval_inputs(self, params, model_state, images, *extra) -> tuple[dict, tuple]:
        """(variables, inputs) of the fused model in eval mode: `self.model.apply(variables,
        *inputs, train=False)` scores uint8 `images` with their `eval_keys` `extra`
        (preprocessed images, f_ret, depth features; on the fly, these come from the frozen
        backbone). Also what Grad-CAM differentiates (`ipa_jax.history`)."""
        trained, frozen = _split_frozen(model_state)
        x = preprocess(images, self.config.input.normalize, self.dtype)
        aux = dict(zip(self.eval_keys, extra, strict=True))
        return ({"params": params, **trained}, (x, *self._fusion_inputs(frozen, images, aux)))


def _split_frozen(model_state: dict) -> tuple[dict, dict]:
    """(the model's own collections, e.g. batch_stats; the frozen entries, `depth.FROZEN`)."""
    frozen = {k: v for k, v in model_state.items() if k == depth_lib.FROZEN}
    return {k: v for k, v in model_state.items() if k not in frozen}, frozen


def _aux_shapes(builder) -> dict:
    """{'f_ret': (K, 5), 'depth': (M, F)} of the prepared images (K = 0 without retrieval,
    F = 0 without depth features), read from the first training group."""
    for group in builder.as_dataset(split="train", shuffle_files=False).take(1):
        return {k: tuple(int(d) for d in group[k].shape[1:]) for k in ("f_ret", "depth")}
    raise ValueError("The prepared training split is empty.")


class LatentSvm:
    """Latent popular/unpopular senses on frozen features; minibatch SGD on in-batch pairs."""

    unit = "images"

    def __init__(self, config: ml_collections.ConfigDict, prepared_dir: str, counts: dict,
                 mesh):
        del counts  # one example per image: the split sizes come with the features
        self.config = config
        post_index, feats = features_lib.load_or_extract(config, prepared_dir, mesh)
        manifest = evaluation.Manifest(prepared_dir, "images")
        self.split_of = manifest.split
        svm = config.svm
        y = getattr(manifest, svm.target_column).astype(np.float64)
        if np.any(y[post_index] < 0):
            raise ValueError(f"config.svm.target_column={svm.target_column!r} is unknown (-1) for "
                             f"{int(np.sum(y[post_index] < 0))} posts; use 'likes'.")
        if svm.target_transform == "log1p":
            y = np.log1p(y)
        is_train = self.split_of[post_index] == "train"
        train = post_index[is_train]
        # Standardised with training statistics, then L2-normalised per image: one scale for
        # the margins and SGD whatever the backbone.
        mean = feats[is_train].mean(0)
        std = feats[is_train].std(0) + 1e-6
        z = (feats - mean) / std
        self.features = np.zeros((len(y), feats.shape[1]), np.float32)
        self.features[post_index] = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True),
                                                   1e-6)
        self.y = y.astype(np.float32)
        self.train_rows = train
        self.num_train_examples = len(train)
        self.model = latent_svm.LatentSenses(num_popular=svm.num_popular,
                                             num_unpopular=svm.num_unpopular)
        # k-means runs once, eagerly, in numpy; `init` hands the result to the jitted state.
        self._initial_params = latent_svm.init_params(
            jax.random.key(config.seed), feats.shape[1], svm.num_popular, svm.num_unpopular,
            init=svm.init, features=self.features[train], y=self.y[train],
            top_k=svm.kmeans_top_k)

    def train_dataset(self, start_step: int = 0):
        """This process's numpy batches from global step `start_step` on: every training
        image once per epoch, in `train_order` (one window: a full shuffle)."""
        rows = self.train_rows
        order = train_order.TrainOrder(np.ones(len(rows), np.int64), seed=self.config.seed,
                                       window=len(rows))
        for step in itertools.count(start_step):
            positions = train_order.process_positions(
                step, self.config.batch_size, jax.process_index(), jax.process_count())
            chosen = rows[order.at(positions)[0]]
            yield {"features": self.features[chosen], "y": self.y[chosen]}

    def _rows(self, split):
        rows = np.flatnonzero(self.split_of == split)
        return rows[jax.process_index()::jax.process_count()]

    def eval_dataset(self, split: str) -> tf.data.Dataset:
        rows = self._rows(split)
        ds = tf.data.Dataset.from_tensor_slices(
            {"input": self.features[rows], "post_index": rows.astype(np.int64)})
        return ds.batch(self.config.eval_batch_size // jax.process_count())

    def count(self, split: str) -> int:
        return len(self._rows(split))

    def init(self, rng):
        del rng  # the initial senses were drawn from config.seed in __init__
        return self._initial_params, {}

    def loss(self, params, model_state, batch, rng):
        del rng  # nothing random in the senses' loss
        out = self.model.apply({"params": params}, batch["features"])
        svm = self.config.svm
        loss = losses.latent_ranking_hinge(
            out["f_pop"], out["f_unpop"], batch["y"], margin=svm.margin, alpha=svm.alpha,
            delta=svm.delta, use_unpopular=svm.num_unpopular > 0)
        return loss, (model_state, {})

    def score(self, params, model_state, features):
        return self.model.apply({"params": params}, features)["score"]

    def finish(self, *, state, evaluate, predictions, results, workdir, raw_dir, manifest):
        """Binarised accuracy over draws of the negatives, the linear SVR baseline (C and
        epsilon chosen on validation, solved to `svr_tol`), and the sense report.

        `binarised_accuracy` is the mean over `svm.binarised_draws` draws of the negatives,
        `binarised_accuracy_std` their standard deviation (ddof=1; 0 for one draw); the
        per-draw values of the model and the SVR go to `<workdir>/binarised_accuracy.json`.
        """
        svm = self.config.svm
        train_rows, train_scores, _ = evaluate("train")
        val_rows = predictions["validation"][0]
        test_rows, test_scores = predictions["test"]
        y_train, y_test = self.y[train_rows], self.y[test_rows]

        def binarised(train_s, test_s, out):
            draws = metrics.binarised_accuracy_draws(train_s, y_train, test_s, y_test,
                                                     num_draws=svm.binarised_draws)
            out["binarised_accuracy"] = float(draws.mean())
            out["binarised_accuracy_std"] = float(draws.std(ddof=1)) if draws.size > 1 else 0.0
            return [float(a) for a in draws]

        draws = {"test": binarised(train_scores, test_scores, results["test"])}
        # Khosla et al.'s baseline on the same features: linear SVR on the target.
        selection = svr.select_linear_svr(
            self.features[train_rows], y_train, self.features[val_rows], self.y[val_rows],
            c_grid=svm.svr_c_grid or (svm.svr_c,),
            epsilon_grid=svm.svr_epsilon_grid or (svm.svr_epsilon,), tol=svm.svr_tol)
        sol = selection.best
        svr_train = svr.predict_linear(self.features[train_rows], sol.w, sol.b)
        svr_test = svr.predict_linear(self.features[test_rows], sol.w, sol.b)
        results["test_svr"] = evaluation.split_metrics(svr_test, manifest, test_rows)
        draws["test_svr"] = binarised(svr_train, svr_test, results["test_svr"])
        results["test_svr"].update(
            svr_c=sol.c, svr_epsilon=sol.epsilon, svr_validation_rho=selection.validation_rho,
            svr_objective=sol.objective, svr_dual_objective=sol.dual_objective,
            svr_relative_gap=sol.gap, svr_iterations=sol.iterations)
        params = sharding.to_host(state.params)  # every process: gathered under fsdp
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "binarised_accuracy.json"), "w") as f:
                json.dump({"num_draws": svm.binarised_draws, "top_fraction": 0.2, **draws,
                           "svr_grid": list(selection.grid)}, f, indent=2)
            out = self.model.apply({"params": params},
                                   self.features[test_rows])
            senses = {"popular": np.asarray(out["pop_senses"]),
                      "unpopular": np.asarray(out["unpop_senses"])}
            report.write_sense_report(os.path.join(workdir, "report.html"), senses, test_rows,
                                      manifest, raw_dir,
                                      title=f"Latent senses ({svm.num_popular} popular, "
                                            f"{svm.num_unpopular} unpopular)")


TASKS = {"image_pairs": ImagePairs, "latent_svm": LatentSvm}
