# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Ji et al. 2023's full model: Swin-B, the retrieval branch and the 3D-aware branch fused by
the aggregation block (Table 2), trained with the likes-ratio loss on same-user groups.

  python -m ipa_jax.main --config=configs/full.py:demo --workdir=/tmp/full
  python -m ipa_jax.main --config=configs/full.py:variant=concat,demo --workdir=/tmp/concat
  python -m ipa_jax.full_model_tables --workdir=/tmp/tables   # every variant, I2PA, 3 seeds

The scorer is `RetrievalAugmentedScorer`: Swin-B (parameters under `backbone/`, optimizer.lr
1e-6; ImageNet weights: convert timm's `swin_base_patch4_window7_224` and pass
`--config.init_from=<that directory>`, which loads into `backbone/`) and the fusion module
(`fusion/`, optimizer.head_lr 1e-5, always freshly initialised). Data preparation computes
`f_ret` (K = 8 retrieved posts) and the five depth features (a frozen ResNet-50: convert
torchvision's and pass `--config.prep.depth.init_from`; the maps in `<raw_dir>/depth`).

Depth features are precomputed by default, on each image's centre crop. The paper computes them
on the training crop; `--config.prep.depth.mode=on_the_fly` does so: data preparation stores
each image's normalised depth map (16-bit PNG) instead, and the training step runs the frozen
ResNet-50 on the five masked crops (five extra forward passes per image; its variables sit in
`model_state/frozen_depth`, untrained and checkpointed), e.g.
  python -m ipa_jax.main --config=configs/full.py:tiny --config.prep.depth.mode=on_the_fly \
      --workdir=/tmp/full_on_the_fly

Variants (Table 2's rows; every variant prepares the same data):
  variant=full (default): aggregation block with retrieval and depth;
  variant=retrieval: retrieval only; variant=backbone_only: the aggregation block over the
  backbone's tokens alone; variant=concat: the concatenation ablation with both branches;
  variant=log_likes: full, trained with the per-image log-likes MSE.
  demo / tiny: the embedded dataset, resnet_mini from scratch, a 64-wide 1-layer fusion, depth
  features from a random resnet_mini at the input crop size (tiny: for tests); precomputed
  unless --config.prep.depth.mode=on_the_fly.
Scoring new images with a trained full model (`ipa_jax.history`): each image needs its f_ret
from a creator's past posts and its depth map, computed with data_prep's own code:
  ipa-score --model=/tmp/full --history=<the creator's posts: Instagram folder or CSV> \
      --sidecars=<folder of the drafts' depth/, keypoints/, captions/, background/> drafts/
Without --history the model scores with an empty memory bank (said on stderr). A SavedModel
export of the full model is not supported (its inputs need the history and the annotators).
"""

from ipa_jax import config_lib

VARIANTS = ("full", "retrieval", "backbone_only", "concat", "log_likes")


def get_config(arg=None):
    """Returns the locked config; `arg` picks a variant (see the module docstring)."""
    arg = config_lib.parse_arg(arg, demo=False, tiny=False, variant="full")
    if arg.variant not in VARIANTS:
        raise config_lib.ConfigError(f"Unknown variant={arg.variant!r}; use one of "
                                     f"{list(VARIANTS)}.")
    c = config_lib.base_config()
    c.data.pairs = "groups"
    c.loss = "log_likes_mse" if arg.variant == "log_likes" else "likes_ratio"
    c.prep.retrieval.enabled = True
    c.prep.depth.enabled = True  # ResNet-50 features of the five depth-masked images
    c.model = config_lib.model_config("swin_base_patch4_window7_224")
    c.fusion = config_lib.fusion_config()
    c.fusion.use_retrieval = arg.variant != "backbone_only"
    c.fusion.use_depth = arg.variant not in ("backbone_only", "retrieval")
    if arg.variant == "concat":
        c.fusion.kind = "concat"
    c.optimizer = dict(name="adamw", weight_decay=1e-2, b1=0.9, b2=0.999, eps=1e-8,
                       lr=1e-6,  # backbone/: the pretrained Swin-B
                       head_lr=1e-5,  # fusion/: everything else
                       head_params=("fusion",), epoch_decay=1.0)
    c.init_dont_load = (r"^params/fusion/",)  # a converted backbone loads into backbone/
    c.batch_size = 12  # the paper's batch
    c.input.normalize = "imagenet"

    if arg.demo or arg.tiny:
        config_lib.use_embedded_groups(c, "tiny" if arg.tiny else "demo")
        c.fusion.update(width=64, num_layers=1, num_heads=4, dropout_rate=0.0,
                        attention_dropout_rate=0.0, drop_path_rate=0.0,
                        concat_hidden_sizes=(64,))
        config_lib.small_random_backbone(c, c.prep.depth)
    if arg.tiny:
        c.prep.depth.batch_size = 16
    c.lock()
    return c
