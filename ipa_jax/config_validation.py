# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Config validation: `validate` (the whole config) and `validate_prep` (data preparation).

Each raises `config_lib.ConfigError` with one line naming the field and a fix. They read only
the config and the file system, so entry points call them before any work (data generation,
preparation, compilation). Defaults live in `config_lib`; this module only checks values.
"""

from __future__ import annotations

import math
import os
import re

import ml_collections

from ipa_jax.config_lib import (
    DEPTH_FILLS,
    DEPTH_MISSING,
    DEPTH_MODES,
    EMBEDDED,
    FUSION_KINDS,
    MODEL_OPS,
    ConfigError,
)

DTYPES = ("float32", "bfloat16", "float16")  # config.model.dtype: the compute dtype
BEST_METRICS = ("pairwise_accuracy", "spearman_rho", "plcc", "srcc")


def _field(config: ml_collections.ConfigDict, path: str):
    for key in path.split("."):
        config = config[key]
    return config


def _finite(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _require(config: ml_collections.ConfigDict, path: str, ok, rule: str) -> None:
    """Raises "config.<path>=<value> <rule>" unless `ok(value)`; `rule` states the fix."""
    value = _field(config, path)
    if not ok(value):
        raise ConfigError(f"config.{path}={value!r} {rule}")


def _positive(config, path: str, example, what: str) -> None:
    _require(config, path, lambda v: _finite(v) and v > 0,
             f"must be > 0 ({what}); e.g. --config.{path}={example}.")


def _non_negative(config, path: str, example, what: str) -> None:
    _require(config, path, lambda v: _finite(v) and v >= 0,
             f"must be a finite number >= 0 ({what}); e.g. --config.{path}={example}.")


def _fraction(config, path: str, example, what: str) -> None:
    _require(config, path, lambda v: _finite(v) and 0 <= v < 1,
             f"must be in [0, 1) ({what}); e.g. --config.{path}={example}.")


def _steps_or_off(config, path: str, off: str, example) -> None:
    _require(config, path, lambda v: v == -1 or v >= 1,
             f"must be a positive number of steps, or -1 for {off}; "
             f"e.g. --config.{path}={example}.")


def _one_of(config, path: str, choices) -> None:
    _require(config, path, lambda v: v in choices,
             f"is not one of {list(choices)}; e.g. --config.{path}={choices[0]}.")


def validate_duration(config: ml_collections.ConfigDict) -> None:
    _require(config, "num_epochs", _finite,
             "must be finite; e.g. --config.num_epochs=10 (or -1 with a positive num_steps).")
    if (config.num_epochs > 0) == (config.num_steps > 0):
        raise ConfigError(
            "Set exactly one of config.num_epochs and config.num_steps to a positive value "
            f"(got num_epochs={config.num_epochs}, num_steps={config.num_steps}); "
            "e.g. --config.num_steps=-1 to train by epochs.")


def _validate_data(config: ml_collections.ConfigDict) -> None:
    raw = config.data.raw_dir
    where = (f"point it at an Instagram-Influencer-format directory (influencers.txt, info/, "
             f"image/), or set it to {EMBEDDED!r} to generate and use the embedded dataset.")
    if not raw.strip():
        raise ConfigError(f"config.data.raw_dir={raw!r} is empty; {where}")
    if raw != EMBEDDED and not os.path.isdir(raw):
        raise ConfigError(f"config.data.raw_dir={raw!r} does not exist. {where[0].upper()}"
                          f"{where[1:]}")
    if raw == EMBEDDED:
        from ipa_jax.data import embedded  # noqa: PLC0415 - numpy only; keeps this module light

        _one_of(config, "data.embedded_size", tuple(embedded.SIZES))
    if config.data.pairs not in ("pdips", "groups", "images"):
        raise ConfigError(f"config.data.pairs={config.data.pairs!r}; use 'pdips' (I2PA), 'groups' "
                          "(Ji 2023) or 'images' (single images, for the latent SVM).")
    for kind in config.data.also_test_on:
        if kind not in ("pdips", "groups", "images") or kind == config.data.pairs:
            raise ConfigError(
                f"config.data.also_test_on={tuple(config.data.also_test_on)!r}: {kind!r} must be "
                f"another prepared dataset than data.pairs={config.data.pairs!r} ('pdips', "
                "'groups' or 'images'); e.g. --config.data.also_test_on='(\"groups\",)'.")
        if config.task != "image_pairs":
            raise ConfigError(f"config.data.also_test_on needs task='image_pairs' (it scores "
                              f"images), not {config.task!r}; use --config.data.also_test_on='()'.")


def _validate_batches(config: ml_collections.ConfigDict, num_devices: int) -> None:
    for field, example in (("batch_size", 8 * num_devices), ("eval_batch_size", 16 * num_devices)):
        value = config[field]
        if value <= 0:
            raise ConfigError(
                f"config.{field}={value} must be > 0 (the global batch over all devices); "
                f"e.g. --config.{field}={example}.")
        if value % num_devices:
            fixed = max(num_devices, value // num_devices * num_devices)
            raise ConfigError(
                f"config.{field}={value} is not divisible by the {num_devices} devices; "
                f"use a multiple of {num_devices}, e.g. --config.{field}={fixed}.")
    accum = config.get("grad_accum_steps", 1)
    if not isinstance(accum, int) or accum < 1:
        raise ConfigError(f"config.grad_accum_steps={accum!r} must be an integer >= 1 "
                          "(micro-batches per step; 1: none); e.g. --config.grad_accum_steps=1.")
    unit = accum * num_devices
    if config.batch_size % unit:
        raise ConfigError(
            f"config.batch_size={config.batch_size} does not split into "
            f"config.grad_accum_steps={accum} micro-batches over the {num_devices} devices; "
            f"use a multiple of {unit}, e.g. "
            f"--config.batch_size={max(1, config.batch_size // unit) * unit}.")
    fsdp = config.get("fsdp", 1)
    whole = isinstance(fsdp, int) and not isinstance(fsdp, bool) and fsdp >= 1
    if not whole or num_devices % fsdp:
        fixed = max(d for d in range(1, min(fsdp if whole else 1, num_devices) + 1)
                    if num_devices % d == 0)
        raise ConfigError(
            f"config.fsdp={fsdp!r} must be an integer >= 1 that divides the {num_devices} "
            f"devices (large parameter and optimizer arrays are split over that many; 1: none); "
            f"e.g. --config.fsdp={fixed}.")
    min_size = config.get("fsdp_min_size", 1)
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 1:
        raise ConfigError(f"config.fsdp_min_size={min_size!r} must be an integer >= 1 (arrays "
                          "with fewer elements stay replicated); e.g. "
                          "--config.fsdp_min_size=16384.")


def _validate_schedule(config: ml_collections.ConfigDict) -> None:
    validate_duration(config)
    _positive(config, "log_every_steps", 50, "steps between training logs")
    _positive(config, "checkpoint_every_steps", 500, "steps between checkpoints")
    _steps_or_off(config, "eval_every_steps", "once per epoch", -1)
    _require(config, "keep_checkpoints", lambda v: v >= 1,
             "must be >= 1 (how many of the latest checkpoints are kept; 0 would delete them "
             "all); e.g. --config.keep_checkpoints=2.")
    _steps_or_off(config, "debug_kill_after_step", "never", -1)
    _steps_or_off(config, "debug_kill_during_save_at_step", "never", -1)


def _validate_input(config: ml_collections.ConfigDict) -> None:
    _positive(config, "input.resize_short_side", 256, "pixels")
    _positive(config, "input.crop_size", 224, "pixels")
    if config.input.crop_size > config.input.resize_short_side:
        raise ConfigError(
            f"config.input.crop_size={config.input.crop_size} exceeds "
            f"config.input.resize_short_side={config.input.resize_short_side}; lower the crop.")
    _one_of(config, "input.train_crop", ("random", "center"))
    _one_of(config, "input.normalize", ("unit", "imagenet"))
    _positive(config, "input.shuffle_window_groups", 256, "groups")
    _require(config, "input.prefetch", lambda v: v >= -1,
             "must be >= 0 (batches prefetched) or -1 (tf.data.AUTOTUNE); "
             "e.g. --config.input.prefetch=2.")
    _require(config, "input.num_parallel_calls", lambda v: v == -1 or v >= 1,
             "must be >= 1 or -1 (tf.data.AUTOTUNE); e.g. --config.input.num_parallel_calls=2.")


def _validate_optimizer(config: ml_collections.ConfigDict) -> None:
    from ipa_jax import optim  # noqa: PLC0415 - keeps configs importable without jax

    o = config.optimizer
    _one_of(config, "optimizer.name", sorted(optim.FIELDS))
    needed = ("lr", "head_lr", "head_params", "epoch_decay", *optim.FIELDS[o.name])
    missing = [f for f in needed if f not in o]
    if missing:
        raise ConfigError(
            f"config.optimizer.name={o.name!r} needs config.optimizer.{missing[0]}, which this "
            "config does not have; use the optimizer the config file was written for, or add "
            "the field in the config file.")
    for rate in ("lr", "head_lr"):
        _non_negative(config, f"optimizer.{rate}", 1e-3,
                      "a learning rate; negative climbs the loss, 0 freezes")
    for decay in ("l2", "weight_decay"):
        if decay in o:
            _non_negative(config, f"optimizer.{decay}", 1e-4, "weight decay; 0: none")
    for beta, example in (("b1", 0.9), ("b2", 0.999), ("momentum", 0.9)):
        if beta in o:
            _fraction(config, f"optimizer.{beta}", example, "a moving-average decay")
    if "eps" in o:
        _positive(config, "optimizer.eps", 1e-8, "Adam's denominator epsilon")
    _require(config, "optimizer.epoch_decay", lambda v: _finite(v) and 0 < v <= 1,
             "must be in (0, 1] (the rates are multiplied by it after each epoch; 1: "
             "constant); e.g. --config.optimizer.epoch_decay=1.0.")


def _validate_model(config: ml_collections.ConfigDict) -> None:
    from ipa_jax import losses, models  # noqa: PLC0415 - keeps configs importable without jax

    if config.model.name not in models.VARIANTS:
        raise ConfigError(f"config.model.name={config.model.name!r} is not a known model; use "
                          f"one of {sorted(models.VARIANTS)}.")
    _one_of(config, "model.dtype", DTYPES)
    if "ops" in config.model:  # configs saved before it existed mean "auto"
        _one_of(config, "model.ops", MODEL_OPS)
    _fraction(config, "model.dropout_rate", 0.0, "a drop probability")
    _fraction(config, "model.drop_path_rate", 0.0, "a drop probability")
    if config.loss not in losses.LOSSES:
        raise ConfigError(f"config.loss={config.loss!r} is not a known loss; use one of "
                          f"{sorted(losses.LOSSES)}.")


def _validate_fusion(config: ml_collections.ConfigDict) -> None:
    """`config.fusion` (a retrieval-augmented scorer: backbone/ + fusion/ parameters)."""
    f = config.fusion
    _one_of(config, "fusion.kind", FUSION_KINDS)
    if f.kind == "aggregation":
        for field, example in (("width", 512), ("num_layers", 2), ("num_heads", 8)):
            _require(config, f"fusion.{field}", lambda v: isinstance(v, int) and v >= 1,
                     f"must be a whole number >= 1; e.g. --config.fusion.{field}={example}.")
        if f.width % f.num_heads:
            raise ConfigError(f"config.fusion.width={f.width} is not a multiple of "
                              f"config.fusion.num_heads={f.num_heads}; e.g. "
                              "--config.fusion.num_heads=8 with width=512.")
        _positive(config, "fusion.mlp_ratio", 4.0, "the MLP's width over the token width")
    else:
        _require(config, "fusion.concat_hidden_sizes",
                 lambda v: all(isinstance(h, int) and h >= 1 for h in v),
                 "must hold whole numbers >= 1 (the MLP's hidden layers); "
                 "e.g. --config.fusion.concat_hidden_sizes='(1024,)'.")
    for rate in ("dropout_rate", "attention_dropout_rate", "drop_path_rate",
                 "head_dropout_rate"):
        _fraction(config, f"fusion.{rate}", 0.0, "a drop probability")
    if f.use_retrieval and not config.prep.retrieval.enabled:
        raise ConfigError("config.fusion.use_retrieval=True needs f_ret: set "
                          "--config.prep.retrieval.enabled=true, or "
                          "--config.fusion.use_retrieval=false.")
    if f.use_depth and not config.prep.depth.enabled:
        raise ConfigError("config.fusion.use_depth=True needs depth features: set "
                          "--config.prep.depth.enabled=true, or --config.fusion.use_depth=false.")
    if tuple(config.optimizer.head_params) != ("fusion",):
        raise ConfigError(
            f"config.optimizer.head_params={tuple(config.optimizer.head_params)!r}: a fused "
            "model's parameters sit under backbone/ (optimizer.lr) and fusion/ "
            "(optimizer.head_lr); use --config.optimizer.head_params='(\"fusion\",)'.")


def _validate_svm(config: ml_collections.ConfigDict) -> None:
    from ipa_jax import models  # noqa: PLC0415 - keeps configs importable without jax

    if config.data.pairs != "images":
        raise ConfigError("The latent SVM trains on single images: set "
                          "--config.data.pairs=images.")
    choices = {"margin": ("fixed", "soft"), "init": ("kmeans", "random"),
               "target_transform": ("log1p", "none"), "target_column": ("likes", "comments")}
    for field, allowed in choices.items():
        if config.svm[field] not in allowed:
            raise ConfigError(f"config.svm.{field}={config.svm[field]!r}; use one of {allowed}.")
    for senses in ("num_popular", "num_unpopular"):
        _require(config, f"svm.{senses}", lambda v: v >= 0,
                 f"must be >= 0 (0: none); e.g. --config.svm.{senses}=5.")
    _non_negative(config, "svm.alpha", 1.0, "the soft margin's floor")
    _non_negative(config, "svm.delta", 1.0, "the fixed margin")
    _positive(config, "svm.kmeans_top_k", 1000, "images clustered per side")
    _positive(config, "svm.svr_c", 1.0, "the SVR's regularisation constant")
    _non_negative(config, "svm.svr_epsilon", 0.1, "the SVR's insensitive zone")
    _require(config, "svm.svr_c_grid", lambda v: all(_finite(c) and c > 0 for c in v),
             "must hold only values > 0 (the SVR's C, chosen on validation; empty: svr_c); "
             "e.g. --config.svm.svr_c_grid='(1e-4, 1e-2, 1.0)'.")
    _require(config, "svm.svr_epsilon_grid", lambda v: all(_finite(e) and e >= 0 for e in v),
             "must hold only values >= 0 (empty: svr_epsilon); "
             "e.g. --config.svm.svr_epsilon_grid='(0.1, 0.5)'.")
    _positive(config, "svm.svr_tol", 1e-6, "the SVR's relative duality gap")
    _require(config, "svm.binarised_draws", lambda v: isinstance(v, int) and v >= 1,
             "must be a whole number >= 1 (draws of the negatives); "
             "e.g. --config.svm.binarised_draws=20.")
    if config.features.backbone not in models.VARIANTS:
        raise ConfigError(f"config.features.backbone={config.features.backbone!r} is not a known "
                          f"model; use one of {sorted(models.VARIANTS)}.")
    init = config.features.init_from
    if init and not os.path.isdir(os.path.join(init, "best")):
        raise ConfigError(f"config.features.init_from={init!r} has no best/ checkpoint; give "
                          "the workdir of a finished ipa_jax run, or '' for random weights.")
    if config.init_from:
        raise ConfigError("config.init_from loads image models; the latent SVM's frozen "
                          "backbone is set with config.features.init_from.")


def _split_fractions(config, path: str) -> None:
    _require(config, path, lambda v: len(v) == 3 and all(_finite(x) and x >= 0 for x in v)
             and v[0] > 0 and abs(sum(v) - 1) < 1e-6,
             "must be 3 numbers >= 0 (train > 0) summing to 1: train, validation, test; "
             f"e.g. --config.{path}='(0.8, 0.1, 0.1)'.")


def _count_or_fraction(config, path: str) -> None:
    _require(config, path, lambda v: _finite(v) and (0 <= v < 1 or (v >= 1 and v == int(v))),
             f"must be a fraction in [0, 1) or a whole count >= 1; e.g. --config.{path}=0.1.")


def validate_prep(prep: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` for `config.prep` settings data preparation cannot use.

    Called by `validate` and by `ipa_jax.data.prepare.prepare`, before any post is read.
    """
    config = ml_collections.ConfigDict({"prep": prep})  # messages name `config.prep.<field>`
    _non_negative(config, "prep.store_short_side", 256, "pixels; 0 stores images as they are")
    _non_negative(config, "prep.crawl_time", 0, "unix seconds; 0: estimated")
    _non_negative(config, "prep.crawl_slack_days", 30.0, "days")
    _non_negative(config, "prep.min_timestamp", 1286323200, "unix seconds")
    _non_negative(config, "prep.top_users", 3000, "influencers with the most followers; 0: all")
    _non_negative(config, "prep.groups.window_days", 7.0, "days")
    _positive(config, "prep.groups.min_size", 2, "posts")
    g = config.prep.groups
    if g.max_size < g.min_size:
        raise ConfigError(f"config.prep.groups.max_size={g.max_size} is below min_size="
                          f"{g.min_size}; e.g. --config.prep.groups.max_size=30.")
    _non_negative(config, "prep.groups.min_likes", 1, "likes")
    _require(config, "prep.groups.min_rel_diff", lambda v: _finite(v) and 0 <= v <= 1,
             "must be in [0, 1] (|l_a - l_b| / max of a training pair); "
             "e.g. --config.prep.groups.min_rel_diff=0.5.")
    _split_fractions(config, "prep.groups.fractions")
    _split_fractions(config, "prep.images.fractions")
    _require(config, "prep.pdips.threshold", lambda v: _finite(v) and 0 < v < 1,
             "must be in (0, 1) (the PDIP probability T); e.g. --config.prep.pdips.threshold=0.95.")
    _positive(config, "prep.pdips.sigma", 0.3, "the PDIP noise scale")
    _non_negative(config, "prep.pdips.max_days", 10.0, "days between a pair's posts")
    _non_negative(config, "prep.pdips.min_age_days", 30.0, "days before the crawl")
    _non_negative(config, "prep.pdips.max_caption_words", 6, "words")
    _positive(config, "prep.pdips.min_likes", 50, "likes; ln(likes) must be defined")
    _count_or_fraction(config, "prep.pdips.validation")
    _count_or_fraction(config, "prep.pdips.test")
    _require(config, "prep.pdips.fallback",
             lambda v: len(v) == 0 or (len(v) == 2 and all(_finite(x) and 0 <= x < 1 for x in v)
                                       and sum(v) < 1),
             "must be () or 2 fractions in [0, 1) summing below 1: the validation and test "
             "shares used when the counts asked for do not fit the data; "
             "e.g. --config.prep.pdips.fallback='(0.1, 0.1)'.")
    if config.prep.retrieval.enabled:
        _validate_retrieval(config)
    if config.prep.depth.enabled:
        _validate_depth(config)


def _validate_retrieval(config: ml_collections.ConfigDict) -> None:
    r = config.prep.retrieval
    _positive(config, "prep.retrieval.k", 8, "retrieved posts per image")
    weights = (r.w_pose, r.w_background, r.w_semantic)
    if not all(_finite(w) and w >= 0 for w in weights) or abs(sum(weights) - 1) > 1e-6:
        raise ConfigError(
            f"config.prep.retrieval.w_pose, w_background, w_semantic = {weights} must be >= 0 "
            "and sum to 1; e.g. 0.2, 0.4, 0.4.")
    _one_of(config, "prep.retrieval.cosine", ("clip", "affine"))
    _positive(config, "prep.retrieval.window_days", 30.0, "days of the local popularity window")
    _one_of(config, "prep.retrieval.mode", ("fallback", "per_user", "cross_user"))
    _non_negative(config, "prep.retrieval.min_bank_size", 20, "posts")
    _non_negative(config, "prep.retrieval.exact_threshold", 2000, "posts")
    _require(config, "prep.retrieval.candidates", lambda v: v >= r.k,
             f"must be >= config.prep.retrieval.k={r.k}; e.g. "
             "--config.prep.retrieval.candidates=64.")
    _require(config, "prep.retrieval.min_recall", lambda v: _finite(v) and 0 < v <= 1,
             "must be in (0, 1]; e.g. --config.prep.retrieval.min_recall=0.99.")
    _non_negative(config, "prep.retrieval.recall_sample", 200, "queries")
    _positive(config, "prep.retrieval.crop", 224, "pixels")
    _require(config, "prep.retrieval.resize", lambda v: v >= r.crop,
             f"must be >= config.prep.retrieval.crop={r.crop}; e.g. "
             "--config.prep.retrieval.resize=256.")
    _one_of(config, "prep.retrieval.normalize", ("imagenet", "unit"))
    _non_negative(config, "prep.retrieval.person_margin", 0.1, "a fraction of the box")
    from ipa_jax import models  # noqa: PLC0415 - keeps configs importable without jax

    _one_of(config, "prep.retrieval.backbone", sorted(models.VARIANTS))
    _one_of(config, "prep.retrieval.semantic_source", ("auto", "captions", "image"))
    _require(config, "prep.retrieval.caption_encoder",
             lambda v: v == "hashing" or (v.startswith("transformers:") and len(v) > 13),
             "must be 'hashing' or 'transformers:<name or folder>' (a sentence encoder).")
    for field in ("background_vectors", "semantic_vectors", "init_from"):
        _require(config, f"prep.retrieval.{field}", lambda v: not v or os.path.exists(v),
                 "does not exist; give an existing path, or '' for the default.")


def _validate_depth(config: ml_collections.ConfigDict) -> None:
    from ipa_jax import models  # noqa: PLC0415 - keeps configs importable without jax

    d = config.prep.depth
    _one_of(config, "prep.depth.mode", DEPTH_MODES)
    _one_of(config, "prep.depth.missing", DEPTH_MISSING)
    _one_of(config, "prep.depth.near_is", ("low", "high"))
    _one_of(config, "prep.depth.fill", DEPTH_FILLS)
    _one_of(config, "prep.depth.normalize", ("imagenet", "unit"))
    _require(config, "prep.depth.constant_value", lambda v: _finite(v) and 0 <= v <= 1,
             "must be in [0, 1] (the normalised depth of a constant map; 0 = near); "
             "e.g. --config.prep.depth.constant_value=0.5.")
    _require(config, "prep.depth.intervals",
             lambda v: len(v) > 0 and all(len(iv) == 2 and all(_finite(x) for x in iv)
                                          and 0 <= iv[0] < iv[1] <= 1 for iv in v),
             "must be one or more (lo, hi) with 0 <= lo < hi <= 1 (normalised depth, 0 = near); "
             "e.g. --config.prep.depth.intervals='((0, 0.5), (0.5, 1))'.")
    if len(d.names) != len(d.intervals):
        raise ConfigError(f"config.prep.depth.names has {len(d.names)} names for "
                          f"{len(d.intervals)} intervals; give one name per interval.")
    if d.mode == "precomputed":  # data_prep's backbone input; on the fly: the training crop
        _positive(config, "prep.depth.crop", 224, "pixels")
        _require(config, "prep.depth.resize", lambda v: _finite(v) and v >= d.crop,
                 f"must be >= config.prep.depth.crop={d.crop}; e.g. "
                 "--config.prep.depth.resize=256.")
        _positive(config, "prep.depth.batch_size", 32, "images per backbone call")
    _one_of(config, "prep.depth.backbone", sorted(models.VARIANTS))
    _require(config, "prep.depth.init_from", lambda v: not v or os.path.exists(v),
             "does not exist; give a converted checkpoint or a workdir, or '' for random "
             "weights (tests and demos only).")
    _require(config, "prep.depth.depth_dir", lambda v: not v or os.path.isdir(v),
             "is not a folder; give the folder of the <post_id>.png / .npy maps, or '' for "
             "<raw_dir>/depth.")


def _validate_depth_on_the_fly(config: ml_collections.ConfigDict) -> None:
    """prep.depth.mode="on_the_fly": the features are computed in a fused model's training
    step (`tasks.ImagePairs`), on the training crop; anything else would never read the maps."""
    if config.task != "image_pairs" or config.get("fusion") is None:
        raise ConfigError(
            "config.prep.depth.mode='on_the_fly' computes the depth features in the training "
            "step of a retrieval-augmented scorer (config.fusion, configs/full.py), which this "
            f"config (task={config.task!r}, no config.fusion) does not train; use "
            "--config.prep.depth.mode=precomputed, or --config.prep.depth.enabled=false.")


def validate(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
    """Raises `ConfigError` naming the field and the fix for configs that cannot run.

    Reads only the config and the file system, so entry points call it before any work (data
    generation, preparation, compilation).
    """
    _validate_data(config)
    validate_prep(config.prep)
    _validate_batches(config, num_devices)
    _validate_schedule(config)
    _validate_input(config)
    _validate_optimizer(config)
    if config.task == "image_pairs":
        _validate_model(config)
        if config.get("fusion") is not None:
            _validate_fusion(config)
    elif config.task == "latent_svm":
        _validate_svm(config)
    else:
        raise ConfigError(f"config.task={config.task!r}; use 'image_pairs' or 'latent_svm'.")
    if config.prep.depth.enabled and config.prep.depth.mode == "on_the_fly":
        _validate_depth_on_the_fly(config)
    if config.init_from and not os.path.isdir(config.init_from):
        raise ConfigError(f"config.init_from={config.init_from!r} does not exist; give a "
                          "`python -m ipa_jax.convert` output directory or an ipa_jax workdir.")
    for pattern in config.init_dont_load:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"config.init_dont_load has an invalid regex {pattern!r} ({e}); "
                              "fix it (Python `re` syntax, e.g. '^params/fc/').") from None
    if config.best_metric not in BEST_METRICS:
        raise ConfigError(f"config.best_metric={config.best_metric!r}; use pairwise_accuracy, "
                          "spearman_rho, plcc or srcc.")
