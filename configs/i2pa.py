# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""I2PA (Ding et al., MM 2019): ResNet-50 Siamese trained with BCE on PDIPs.

  python -m ipa_jax.main --config=configs/i2pa.py --workdir=/tmp/i2pa \
      --config.data.raw_dir=/data/instagram_influencers

Variants (`--config=configs/i2pa.py:demo`):
  demo: a small bottleneck ResNet on 64 px crops of the embedded `demo` dataset, learns in a
        few minutes on 2 CPU cores.
  tiny: a seconds-long smoke run on the embedded `tiny` dataset, for tests.
"""

from ipa_jax import config_lib


def get_config(arg=None):
    """Returns the locked config; `arg` picks a variant (see the module docstring)."""
    arg = config_lib.parse_arg(arg, demo=False, tiny=False)
    c = config_lib.base_config()
    c.data.pairs = "pdips"
    # The paper's evaluation sizes: 50,000 validation and 50,000 test PDIPs, the rest train.
    # Data too small for them (under 500,000 PDIPs) falls back to 0.1 / 0.1 of the PDIPs, with
    # a notice in the preparation report and summary.json; the embedded datasets always do.
    c.prep.pdips.validation = 50_000
    c.prep.pdips.test = 50_000
    c.prep.pdips.fallback = (0.1, 0.1)
    # | likes_ratio | log_likes_mse (ipa_jax.losses.LOSSES; log_likes_mse trains on the
    # images of the training split, 2 * batch_size per step, not on pairs)
    c.loss = "i2pa_bce"

    c.model = config_lib.model_config("resnet50")
    c.optimizer = dict(
        name="adam_l2",
        l2=1e-4,  # added to the gradient before Adam (torch.optim.Adam weight_decay), not AdamW
        b1=0.9, b2=0.999, eps=1e-8,
        lr=1e-5,  # pretrained layers
        head_lr=1e-4,  # the new Dense(2048 -> 1) head
        head_params=("fc",),  # top-level parameter names that get head_lr
        epoch_decay=0.95,  # both rates x0.95 after each epoch
    )
    c.batch_size = 64
    c.num_epochs = 10.0  # not stated in the paper (trained "about one day" on a V100)
    c.input.resize_short_side = 256
    c.input.crop_size = 224

    if arg.demo or arg.tiny:
        config_lib.use_embedded(c, "tiny" if arg.tiny else "demo")
        c.model.name = "resnet_mini"
        c.optimizer.lr = 1e-3  # trained from scratch: no pretrained layers to protect
        c.optimizer.head_lr = 1e-3
    if arg.demo:
        c.optimizer.l2 = 0.0
        c.batch_size = 32
        c.eval_batch_size = 128
        c.num_epochs = 12.0
        c.log_every_steps = 20
        c.checkpoint_every_steps = 100
    if arg.tiny:
        c.batch_size = 8
        c.eval_batch_size = 16
    c.lock()
    return c
