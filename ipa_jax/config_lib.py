# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Shared config defaults, strict variant parsing, validation and duration helpers.

Every file under `configs/` builds on `base_config()` and returns a locked `ConfigDict`,
so a misspelled field (in a file or on the command line) is an error, never a silent no-op.
"""

from __future__ import annotations

import os

import ml_collections

EMBEDDED = "embedded"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field and the fix."""


def parse_arg(arg: str | None, **defaults):
    """Parses a config string `"demo,batch_size=8"` strictly against `defaults`.

    A bare word sets a boolean default to True; `key=value` is cast to the default's type.
    Unknown keys raise, listing the known ones.
    """
    result = dict(defaults)
    for part in filter(None, (arg or "").split(",")):
        key, eq, value = part.partition("=")
        if key not in defaults:
            raise ConfigError(f"Unknown config variant {key!r}; known: {sorted(defaults)}.")
        if not eq:
            if not isinstance(defaults[key], bool):
                raise ConfigError(f"Config variant {key!r} needs a value: {key}=...")
            result[key] = True
        elif isinstance(defaults[key], bool):
            result[key] = value.lower() in ("1", "true", "yes")
        else:
            result[key] = type(defaults[key])(value)
    return ml_collections.ConfigDict(result)


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every config: data, preparation, input, logging, checkpoints."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "image_pairs"  # image_pairs | latent_svm (ipa_jax.tasks.TASKS)
    # The validation metric that picks the checkpoint to test (higher is better).
    c.best_metric = "pairwise_accuracy"

    c.data = ml_collections.ConfigDict()
    # Instagram-Influencer-format directory (SPEC 4). "embedded": generate the embedded
    # dataset under workdir/embedded (or reuse it) and train on that.
    c.data.raw_dir = EMBEDDED
    c.data.embedded_size = "demo"  # tiny | demo | small | medium (data_prep.embedded.SIZES)
    c.data.embedded_seed = 0
    # Where data_prep writes TFRecords and manifests; "" means workdir/prepared.
    c.data.prepared_dir = ""
    # Which prepared dataset trains and evaluates: "pdips" (I2PA pairs, SPEC 1), "groups"
    # (Ji 2023 groups, SPEC 2) or "images" (single images split 70/10/20, SPEC 3).
    c.data.pairs = "pdips"

    c.prep = ml_collections.ConfigDict()
    c.prep.split_seed = 0
    c.prep.store_short_side = 256  # images are stored resized to this short side (0: as is)
    c.prep.check_images = True
    c.prep.crawl_time = 0  # unix seconds of the crawl; 0: the newest post's timestamp
    c.prep.groups = ml_collections.ConfigDict(dict(
        window_days=7.0, min_size=2, max_size=30, min_likes=1, min_rel_diff=0.5,
        fractions=(0.8, 0.1, 0.1)))
    c.prep.pdips = ml_collections.ConfigDict(dict(
        threshold=0.95, sigma=0.3, max_days=10.0, min_age_days=30.0, max_caption_words=6,
        min_likes=50,
        # A float in (0, 1) is a fraction of all pairs, an int >= 1 a count (paper: 50,000).
        validation=0.1, test=0.1))

    c.prep.images = ml_collections.ConfigDict(dict(fractions=(0.7, 0.1, 0.2)))
    # The retrieval branch (Ji 2023): f_ret = K x [p_r, W, S_b, S_p, S_c] per image.
    c.prep.retrieval = ml_collections.ConfigDict(dict(
        enabled=False,
        k=8,
        w_pose=0.2, w_background=0.4, w_semantic=0.4,  # W's weights, summing to 1
        window_days=30.0,  # local popularity window (+-)
        mode="fallback",  # per_user | cross_user | fallback (cross-user for small banks)
        min_bank_size=20,  # fallback: banks smaller than this fill their slots cross-user
        exact_threshold=2000,  # indices with more rows use ScaNN, others exact search
        candidates=64,  # embedding neighbours re-ranked with the full W (pose included)
        recall_sample=200,  # queries checked against exact search; recall is reported
        backbone="resnet50", init_from="", seed=0,  # frozen embedding backbone
        resize=256, crop=224, normalize="imagenet",
        person_margin=0.1,  # people's keypoint boxes grow by this fraction when masked
        background_vectors="", semantic_vectors="",  # the user's own vectors (npz/parquet)
    ))

    # Pretrained weights for the model: a `python -m ipa_jax.convert` output or an ipa_jax
    # workdir (its best checkpoint). Used when the run does not resume from its own workdir.
    c.init_from = ""
    # Regexes of `collection/module/.../leaf` paths that keep their fresh initialisation.
    c.init_dont_load = (r"^params/fc/", r"^params/head/")  # new heads

    c.input = ml_collections.ConfigDict()
    c.input.resize_short_side = 256
    c.input.crop_size = 224
    c.input.train_crop = "random"  # random | center
    c.input.group_shuffle_buffer = 1_000  # groups (or PDIPs) shuffled before pairing
    c.input.pair_shuffle_buffer = 2_000
    c.input.normalize = "unit"  # unit: pixels in [0, 1] (I2PA release) | imagenet: mean/std
    c.input.prefetch = 2
    c.input.num_parallel_calls = 2

    c.batch_size = 64  # global, in pairs (each pair is two images)
    c.eval_batch_size = 128  # global, in images
    # Training length: set exactly one of these to a positive value (see `total_steps`).
    c.num_epochs = 10.0
    c.num_steps = -1
    c.log_every_steps = 50
    c.eval_every_steps = -1  # -1: once per epoch
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 2
    # Test hook: SIGKILL the process right after this step (simulates a preemption).
    c.debug_kill_after_step = -1
    return c


def model_config(name: str) -> ml_collections.ConfigDict:
    """The backbone of an image scorer: a registered name (`ipa_jax.models.VARIANTS`)."""
    return ml_collections.ConfigDict(dict(
        name=name,
        dtype="float32",  # compute dtype (bfloat16: mixed precision); parameters stay float32
        dropout_rate=0.0,  # before the head
        drop_path_rate=0.0,  # stochastic depth, rising linearly to this over the blocks
    ))


def use_embedded(c: ml_collections.ConfigDict, size: str) -> None:
    """Settings shared by the `demo` and `tiny` variants: the embedded dataset, small crops.

    `tiny` is also a seconds-long schedule (6 steps, evaluating and checkpointing often) for
    the tests; `demo` keeps the config's own schedule.
    """
    c.data.embedded_size = size
    c.prep.store_short_side = 0  # embedded images are already small
    c.input.resize_short_side, c.input.crop_size = (36, 32) if size == "tiny" else (72, 64)
    if size == "tiny":
        c.input.group_shuffle_buffer = c.input.pair_shuffle_buffer = 64
        c.num_epochs, c.num_steps = -1.0, 6
        c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 2, 3, 2


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """The one place where epochs become steps."""
    if (config.num_epochs > 0) == (config.num_steps > 0):
        raise ConfigError(
            "Set exactly one of config.num_epochs and config.num_steps to a positive value "
            f"(got num_epochs={config.num_epochs}, num_steps={config.num_steps}); "
            "e.g. --config.num_steps=-1 to train by epochs.")
    if config.num_steps > 0:
        return int(config.num_steps)
    return max(1, int(round(config.num_epochs * steps_per_epoch)))


def _validate_svm(config: ml_collections.ConfigDict) -> None:
    if config.data.pairs != "images":
        raise ConfigError("The latent SVM trains on single images: set "
                          "--config.data.pairs=images.")
    choices = {"margin": ("fixed", "soft"), "init": ("kmeans", "random"),
               "target_transform": ("log1p", "none"), "target_column": ("likes", "comments")}
    for field, allowed in choices.items():
        if config.svm[field] not in allowed:
            raise ConfigError(f"config.svm.{field}={config.svm[field]!r}; use one of {allowed}.")
    if config.svm.num_popular < 0 or config.svm.num_unpopular < 0:
        raise ConfigError("config.svm.num_popular and num_unpopular must be >= 0.")


def validate(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
    """Raises `ConfigError` naming the field and the fix for configs that cannot run."""
    raw = config.data.raw_dir
    if raw != EMBEDDED and not os.path.isdir(raw):
        raise ConfigError(
            f"config.data.raw_dir={raw!r} does not exist. Point it at an Instagram-Influencer-"
            f"format directory (influencers.txt, info/, image/), or set it to {EMBEDDED!r} to "
            "generate and use the embedded dataset.")
    for field in ("batch_size", "eval_batch_size"):
        value = config[field]
        if value <= 0 or value % num_devices:
            fixed = max(num_devices, value // num_devices * num_devices)
            raise ConfigError(
                f"config.{field}={value} is not divisible by the {num_devices} devices; "
                f"use a multiple of {num_devices}, e.g. --config.{field}={fixed}.")
    from ipa_jax import losses, models  # noqa: PLC0415 - keeps configs importable without jax

    if config.task not in ("image_pairs", "latent_svm"):
        raise ConfigError(f"config.task={config.task!r}; use 'image_pairs' or 'latent_svm'.")
    if config.task == "image_pairs" and config.model.name not in models.VARIANTS:
        raise ConfigError(f"config.model.name={config.model.name!r} is not a known model; use "
                          f"one of {sorted(models.VARIANTS)}.")
    if config.task == "image_pairs" and config.loss not in losses.LOSSES:
        raise ConfigError(f"config.loss={config.loss!r} is not a known loss; use one of "
                          f"{sorted(losses.LOSSES)}.")
    if config.task == "latent_svm":
        _validate_svm(config)
        if config.init_from:
            raise ConfigError("config.init_from loads image models; the latent SVM's frozen "
                              "backbone is set with config.features.init_from.")
    if config.init_from and not os.path.isdir(config.init_from):
        raise ConfigError(f"config.init_from={config.init_from!r} does not exist; give a "
                          "`python -m ipa_jax.convert` output directory or an ipa_jax workdir.")
    if config.best_metric not in ("pairwise_accuracy", "spearman_rho", "plcc", "srcc"):
        raise ConfigError(f"config.best_metric={config.best_metric!r}; use pairwise_accuracy, "
                          "spearman_rho, plcc or srcc.")
    if config.data.pairs not in ("pdips", "groups", "images"):
        raise ConfigError(f"config.data.pairs={config.data.pairs!r}; use 'pdips' (I2PA), 'groups' "
                          "(Ji 2023) or 'images' (single images, for the latent SVM).")
    if config.input.crop_size > config.input.resize_short_side:
        raise ConfigError(
            f"config.input.crop_size={config.input.crop_size} exceeds "
            f"config.input.resize_short_side={config.input.resize_short_side}; lower the crop.")
    if config.input.train_crop not in ("random", "center"):
        raise ConfigError("config.input.train_crop must be 'random' or 'center'.")
    if config.input.normalize not in ("unit", "imagenet"):
        raise ConfigError("config.input.normalize must be 'unit' or 'imagenet'.")
