# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Ji et al. 2023 groups and likes-ratio loss, with the retrieval branch's features prepared.

  python -m ipa_jax.main --config=configs/ratio.py:demo --workdir=/tmp/ratio

Trains a Swin-B scorer (ImageNet-pretrained weights: convert timm's
`swin_base_patch4_window7_224` with `python -m ipa_jax.convert` and pass
`--config.init_from=<that directory>`) on same-user pairs inside 7-day groups with the ratio
loss: the paper's "backbone only" row; the fusion transformer is later work. Data preparation
also computes `f_ret` (K x [p_r, W, S_b, S_p, S_c] per image: per-user memory banks, the exact
top K by W (ScaNN with a checked recall for large indices), local popularity) into the
TFRecords and `retrieval.csv`; the final table has a `test_retrieval_only` column: the
similarity-weighted mean local popularity of the retrieved posts, no training at all.

Variants: demo / tiny (the embedded dataset); loss=log_likes_mse or i2pa_bce for the baselines.
"""

from ipa_jax import config_lib


def get_config(arg=None):
    """Returns the locked config; `arg` picks a variant (see the module docstring)."""
    arg = config_lib.parse_arg(arg, demo=False, tiny=False, loss="likes_ratio")
    c = config_lib.base_config()
    c.data.pairs = "groups"
    c.loss = arg.loss
    c.prep.retrieval.enabled = True
    c.model = config_lib.model_config("swin_base_patch4_window7_224")
    c.optimizer = dict(name="adamw", weight_decay=1e-2, b1=0.9, b2=0.999, eps=1e-8,
                       lr=1e-6,  # the pretrained Swin-B
                       head_lr=1e-5,  # everything else
                       head_params=("head", "fc"), epoch_decay=1.0)
    c.batch_size = 12  # the paper's batch
    c.input.normalize = "imagenet"

    if arg.demo or arg.tiny:
        config_lib.use_embedded_groups(c, "tiny" if arg.tiny else "demo")
    c.lock()
    return c
