# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Shared config defaults, strict variant parsing and the duration helper.

The checks of a config's values are in `config_validation`.

Every file under `configs/` builds on `base_config()` and returns a locked `ConfigDict`,
so a misspelled field (in a file or on the command line) is an error, never a silent no-op.
"""

from __future__ import annotations

import difflib
import importlib.util
import os

import ml_collections

EMBEDDED = "embedded"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field and the fix."""


class DataError(ValueError):
    """Input data or a folder that cannot be used; the message says what, where and the fix.

    Entry points print it as one line (no traceback) and exit non-zero.
    """


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the config file at `path`, as `--config=PATH:ARG` loads it."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"ipa_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def parse_arg(arg: str | None, **defaults):
    """Parses a config string `"demo,batch_size=8"` strictly against `defaults`.

    A bare word sets a boolean default to True; `key=value` is cast to the default's type.
    Unknown keys raise, listing the known ones.
    """
    result = dict(defaults)
    for part in filter(None, (arg or "").split(",")):
        key, eq, value = part.partition("=")
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"Unknown config variant {key!r}; {hint}known: {sorted(defaults)}.")
        default = defaults[key]
        if not eq:
            if not isinstance(default, bool):
                raise ConfigError(f"Config variant {key!r} needs a value, e.g. {key}={default}.")
            result[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ConfigError(f"Config variant {key}={value!r} is not a boolean; use "
                                  f"{key}=true or {key}=false.")
            result[key] = value.lower() in ("1", "true", "yes")
        else:
            try:
                result[key] = type(default)(value)
            except ValueError:
                kind = "an integer" if isinstance(default, int) else "a number"
                raise ConfigError(f"Config variant {key}={value!r} is not {kind}; "
                                  f"e.g. {key}={default}.") from None
    return ml_collections.ConfigDict(result)


DEPTH_NAMES = ("near", "middle", "far", "foreground", "background")
DEPTH_INTERVALS = ((0.0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.0), (0.0, 0.5), (0.5, 1.0))
DEPTH_MODES = ("precomputed", "on_the_fly")
DEPTH_MISSING = ("drop", "constant")
DEPTH_FILLS = ("mean", "black")


def depth_config() -> ml_collections.ConfigDict:
    """`config.prep.depth`: the 3D-aware branch's settings (used by `ipa_jax.depth`)."""
    return ml_collections.ConfigDict(dict(
        # data_prep writes [M, F] features per image into the TFRecords (`depth`; [5, 0] when
        # off) and drops or keeps posts without a usable map by `missing`.
        enabled=False,
        # The maps, `<post_id>.png` or `.npy` (ipa_jax.data.depth); "" = `<raw_dir>/depth`, where
        # the embedded dataset writes them.
        depth_dir="",
        names=DEPTH_NAMES,  # one per interval, in the order of the features
        intervals=DEPTH_INTERVALS,  # [lo, hi) of normalised depth (0 = near); hi = 1 is closed
        # precomputed: data_prep runs the frozen backbone once per image (centre crop) and
        # writes [5, F] features to the TFRecords | on_the_fly: data_prep stores each image's
        # normalised map (16-bit PNG `depth_map`) and the training step computes the features
        # on the training crop (config.input.crop_size; the paper's way: five extra backbone
        # passes per image), with the backbone's variables frozen in model_state.
        mode="precomputed",
        # Posts with no usable map (missing, unreadable, constant): drop them, or give them a
        # constant map of `constant_value` (0.5: everything middle and background).
        missing="drop",
        constant_value=0.5,
        near_is="low",  # low: depth (0 = near, the embedded maps) | high: disparity (MiDaS)
        backbone="resnet50",  # the frozen network, 2048-d pooled features
        # A `python -m ipa_jax.convert` output (torchvision's ResNet-50) or an ipa_jax
        # workdir; "" = random weights from `seed` (tests and demos only).
        init_from="",
        seed=0,
        # The backbone's input, as retrieval's; resize and crop: precomputed only (on the fly
        # the backbone sees the training / evaluation crop, config.input).
        resize=256, crop=224, normalize="imagenet",
        fill="mean",  # masked-out pixels: mean (ImageNet mean colour = 0 normalised) | black
        batch_size=32,  # images per backbone call in data_prep (x5 masked images); precomputed
    ))


FUSION_KINDS = ("aggregation", "concat")
# config.model.ops: the convolutions, dense layers and matmuls the models run on
# (`ipa_jax.models.layers.resolve_ops`).
MODEL_OPS = ("auto", "cpu_tuned", "stock")


def fusion_config() -> ml_collections.ConfigDict:
    """`config.fusion` for the paper's Swin-B setting (the `full` row of Table 2); JAX-free, so
    config files can import it (`ipa_jax.models.fusion.default_config` returns it).

    kind: "aggregation" (the transformer block) or "concat" (the ablation's MLP).
    use_retrieval / use_depth: which auxiliary branches feed the fusion (Table 2's rows:
        backbone_only both False, retrieval only the first, full both).
    width, num_layers, num_heads, mlp_ratio: the aggregation block's sizes.
    dropout_rate, attention_dropout_rate, drop_path_rate: its regularisation (train only).
    head_dropout_rate: dropout before the one-output head (both kinds).
    concat_hidden_sizes: the concat MLP's hidden layers.
    A CPU demo (swin_mini or resnet_mini from scratch) wants width=64, num_layers=1,
    num_heads=4 and the three rates at 0.
    """
    return ml_collections.ConfigDict(dict(
        kind="aggregation",
        use_retrieval=True,
        use_depth=True,
        # 512 wide, 2 layers (7.9M parameters): 2.8% of Swin-B's forward FLOPs at 224 px
        # with K = 8 (768 wide: 6.1%), inside issue 11's 10% budget. The paper gives no size.
        width=512,
        num_layers=2,
        num_heads=8,
        mlp_ratio=4.0,
        dropout_rate=0.1,
        attention_dropout_rate=0.0,
        drop_path_rate=0.1,
        head_dropout_rate=0.0,
        concat_hidden_sizes=(1024,),
    ))



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
    c.data.embedded_size = "demo"  # tiny | demo | small | medium (ipa_jax.data.embedded.SIZES)
    c.data.embedded_seed = 0
    # Where data_prep writes TFRecords and manifests; "" means workdir/prepared.
    c.data.prepared_dir = ""
    # Which prepared dataset trains and evaluates: "pdips" (I2PA pairs, SPEC 1), "groups"
    # (Ji 2023 groups, SPEC 2) or "images" (single images split 70/10/20, SPEC 3).
    c.data.pairs = "pdips"
    # Other prepared datasets whose test split the best checkpoint is also scored on, as
    # results["test_on_<kind>"], e.g. ("groups",) for I2PA tested on Ji 2023's groups.
    c.data.also_test_on = ()

    c.prep = ml_collections.ConfigDict()
    c.prep.split_seed = 0
    c.prep.store_short_side = 256  # images are stored resized to this short side (0: as is)
    c.prep.check_images = True
    # Keep only the posts of the N influencers of influencers.txt with the most followers (the
    # paper's "Top3000": 3000); 0 keeps everyone. Others' rows are counted, never opened.
    c.prep.top_users = 0
    # Unix seconds of the crawl; 0: estimated, the newest timestamp at most crawl_slack_days
    # after the 99th percentile of all timestamps (a few wrong ones cannot move it). Posts taken
    # after it are dropped ("after crawl time"); the report and summary.json give the value used.
    c.prep.crawl_time = 0
    c.prep.crawl_slack_days = 30.0
    # Posts older than this (unix seconds; Instagram launched on 2010-10-06) or newer than the
    # time of preparation (e.g. in milliseconds) are dropped as "implausible timestamp".
    c.prep.min_timestamp = 1286323200
    c.prep.groups = ml_collections.ConfigDict(dict(
        window_days=7.0, min_size=2, max_size=30, min_likes=1, min_rel_diff=0.5,
        fractions=(0.8, 0.1, 0.1)))
    c.prep.pdips = ml_collections.ConfigDict(dict(
        threshold=0.95, sigma=0.3, max_days=10.0, min_age_days=30.0, max_caption_words=6,
        min_likes=50,
        # A float in (0, 1) is a fraction of all pairs, a whole number >= 1 a count (paper:
        # 50,000 each, configs/i2pa.py). Counts that would take more pairs than the `fallback`
        # fractions (validation, test) give way to those, with a notice in the report and
        # summary.json; () never falls back (counts that do not fit are an error).
        validation=0.1, test=0.1, fallback=(0.1, 0.1)))

    c.prep.images = ml_collections.ConfigDict(dict(fractions=(0.7, 0.1, 0.2)))
    # The retrieval branch (Ji 2023): f_ret = K x [p_r, W, S_b, S_p, S_c] per image.
    c.prep.retrieval = ml_collections.ConfigDict(dict(
        enabled=False,
        k=8,
        w_pose=0.2, w_background=0.4, w_semantic=0.4,  # W's weights, summing to 1
        cosine="clip",  # S_b, S_c: clip = max(cos, 0), the cosine (SPEC) | affine = (1 + cos) / 2
        window_days=30.0,  # local popularity window (+-)
        mode="fallback",  # per_user | cross_user | fallback (cross-user for small banks)
        min_bank_size=20,  # fallback: banks smaller than this fill their slots cross-user
        exact_threshold=2000,  # indices up to this many rows: exact top K by the full W
        candidates=64,  # ScaNN (larger indices): first candidates ranked by the full W per query
        min_recall=0.99,  # ScaNN: candidates double until the sampled top-K recall reaches this
        recall_sample=200,  # ScaNN: queries per index checked against the exact top K by W
        backbone="resnet50", init_from="", seed=0,  # frozen embedding backbone
        resize=256, crop=224, normalize="imagenet",
        person_margin=0.1,  # people's keypoint boxes grow by this fraction when masked
        background_vectors="", semantic_vectors="",  # the user's own vectors (npz/parquet)
        # S_c: auto = captions/<post_id>.txt when the dataset has them, else the backbone's
        # embedding of the whole image (with a warning) | captions | image.
        semantic_source="auto",
        caption_encoder="hashing",  # hashing (built in) | transformers:<name or folder>
    ))
    # The 3D-aware branch (Ji 2023): [5, F] frozen-backbone features of the depth-masked image,
    # written into the TFRecords as `depth` when enabled. Defaults: `ipa_jax.depth`; the maps
    # are read from `depth_dir` ("" = <raw_dir>/depth).
    c.prep.depth = depth_config()

    # Pretrained weights for the model: a `python -m ipa_jax.convert` output or an ipa_jax
    # workdir (its best checkpoint). Used when the run does not resume from its own workdir.
    c.init_from = ""
    # Regexes of `collection/module/.../leaf` paths that keep their fresh initialisation.
    c.init_dont_load = (r"^params/fc/", r"^params/head/")  # new heads

    c.input = ml_collections.ConfigDict()
    c.input.resize_short_side = 256
    c.input.crop_size = 224
    c.input.train_crop = "random"  # random | center
    # Training order (ipa_jax.train_order): each epoch shuffles the groups (or PDIPs), then the
    # pairs (or images) within windows of this many groups; a window's groups stay in memory.
    c.input.shuffle_window_groups = 256
    c.input.normalize = "unit"  # unit: pixels in [0, 1] (I2PA release) | imagenet: mean/std
    c.input.prefetch = 2
    c.input.num_parallel_calls = 2

    c.batch_size = 64  # global, in pairs (each pair is two images)
    # Each step's batch as this many micro-batches, their gradients averaged (train.py): the
    # large batch's update in the memory of one micro-batch. BatchNorm statistics are then
    # those of each micro-batch, updated in turn.
    c.grad_accum_steps = 1
    # Devices per `fsdp` mesh axis (ipa_jax/sharding.py): > 1 shards each parameter and
    # optimizer-state array of at least fsdp_min_size elements over that many devices (1/fsdp
    # of its memory each; XLA gathers it for the step); smaller ones (biases, norms) and
    # model_state stay replicated. Must divide the devices. 1: data parallel, all replicated.
    c.fsdp = 1
    c.fsdp_min_size = 2**14
    c.eval_batch_size = 128  # global, in images
    # Training length: set exactly one of these to a positive value (see `total_steps`).
    c.num_epochs = 10.0
    c.num_steps = -1
    c.log_every_steps = 50
    c.eval_every_steps = -1  # -1: once per epoch
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 2
    # Test hooks: SIGKILL the process right after this step's checkpoint completed (a
    # preemption without notice), or while this step's checkpoint is being written.
    c.debug_kill_after_step = -1
    c.debug_kill_during_save_at_step = -1
    return c


def model_config(name: str) -> ml_collections.ConfigDict:
    """The backbone of an image scorer: a registered name (`ipa_jax.models.VARIANTS`)."""
    return ml_collections.ConfigDict(dict(
        name=name,
        dtype="float32",  # compute dtype (bfloat16: mixed precision); parameters stay float32
        dropout_rate=0.0,  # before the head
        drop_path_rate=0.0,  # stochastic depth, rising linearly to this over the blocks
        # Convolutions, dense layers and matmuls: "cpu_tuned" (custom-gradient matmuls, faster
        # on XLA:CPU), "stock" (flax / lax ops, for GPU and TPU) or "auto" (cpu_tuned on the
        # CPU backend, stock elsewhere). Same parameters and values either way.
        ops="auto",
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
        c.input.shuffle_window_groups = 64
        c.num_epochs, c.num_steps = -1.0, 6
        c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 2, 3, 2


def use_embedded_groups(c: ml_collections.ConfigDict, size: str) -> None:
    """`demo` / `tiny` of the group-trained Ji 2023 configs (ratio.py, full.py): `use_embedded`,
    `resnet_mini` from scratch with plain Adam at 1e-3, retrieval embeddings from a random
    `resnet_mini` at the crop size; demo: 4 epochs of 32 pairs; tiny: 8 pairs, K = 4."""
    use_embedded(c, size)
    c.model.name = "resnet_mini"
    c.optimizer.weight_decay = 0.0  # plain Adam from scratch, as measured in the README
    c.optimizer.lr = c.optimizer.head_lr = 1e-3
    small_random_backbone(c, c.prep.retrieval)
    if size == "demo":
        c.batch_size = 32
        c.num_epochs = 4.0
        c.log_every_steps = 20
        c.checkpoint_every_steps = 100
    else:
        c.batch_size = 8
        c.eval_batch_size = 16
        c.prep.retrieval.k = 4
        # 5 of the 6 tiny users have banks under 40 posts and so may take cross-user slots,
        # but each of their banks fills all K = 4 slots: 0 queries fall back (the fallback
        # path is tested in tests/test_retrieval.py).
        c.prep.retrieval.min_bank_size = 40


def small_random_backbone(c: ml_collections.ConfigDict, branch: ml_collections.ConfigDict
                          ) -> None:
    """A frozen branch (`prep.retrieval`, `prep.depth`) on a random `resnet_mini` at the input
    crop size: the embedded datasets' stand-in for ResNet-50 at 224 px."""
    branch.backbone = "resnet_mini"
    branch.resize = c.input.resize_short_side
    branch.crop = c.input.crop_size


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """The one place where epochs become steps."""
    from ipa_jax import config_validation  # noqa: PLC0415 - it imports this module

    config_validation.validate_duration(config)
    if config.num_steps > 0:
        return int(config.num_steps)
    return max(1, int(round(config.num_epochs * steps_per_epoch)))
