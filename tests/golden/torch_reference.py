# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""PyTorch reference models with random weights in a trained-like regime (needs torch).

Random weights with default BatchNorm statistics blow activations up to thousands after
50 layers, where float32 rounding alone differs by more than 1e-4 between any two
implementations (torch against torch in float64 included). Trained networks keep
activations O(1): BatchNorm statistics match their inputs and the last BN of each residual
branch has small gammas. `trained_like_` reproduces that with random weights.
"""

import torch

# The last BatchNorm of a residual branch: small gammas keep the residual stream O(1).
RESIDUAL_BN = ("bn3",)
BASIC_RESIDUAL_BN = ("bn2",)


@torch.no_grad()
def trained_like_(model: torch.nn.Module, *, seed: int = 0, image_size: int = 224,
                  batches: int = 1, batch_size: int = 8) -> torch.nn.Module:
    """Draws BN affine parameters, calibrates running statistics on noise; returns eval model.

    Gammas U(0.5, 1.5) and betas N(0, 0.2), except the last BN of each residual branch
    (gammas U(0.1, 0.3), betas N(0, 0.05)); running statistics are the exact mean/variance
    of the activations on `batches` standard-normal inputs (momentum=None).
    """
    gen = torch.Generator().manual_seed(seed)
    is_basic = any(type(m).__name__ == "BasicBlock" for m in model.modules())
    last = BASIC_RESIDUAL_BN if is_basic else RESIDUAL_BN
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the calibration batches
            small = name.split(".")[-1] in last and name.startswith("layer")
            lo, hi, beta = (0.1, 0.3, 0.05) if small else (0.5, 1.5, 0.2)
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * (hi - lo) + lo)
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * beta)
    model.train()
    for _ in range(batches):
        model(torch.randn(batch_size, 3, image_size, image_size, generator=gen))
    return model.eval()


def stage_outputs(model: torch.nn.Module, x: torch.Tensor, names: dict) -> dict:
    """{our name: numpy output} of the submodules `names` ({torch name: our name}) and the
    logits; 4-d (NCHW) outputs are returned NHWC, like ipa_jax's."""
    outputs, hooks = {}, []
    for torch_name, ours in names.items():
        module = model.get_submodule(torch_name)
        hooks.append(module.register_forward_hook(
            lambda m, i, o, ours=ours: outputs.__setitem__(ours, o.detach())))
    try:
        with torch.no_grad():
            outputs["logits"] = model(x)
    finally:
        for h in hooks:
            h.remove()
    return {k: (v.permute(0, 2, 3, 1) if v.ndim == 4 else v).numpy()
            for k, v in outputs.items()}


TORCHVISION_RESNET_STAGES = {"maxpool": "stem", "layer1": "stage1", "layer2": "stage2",
                             "layer3": "stage3", "layer4": "stage4"}
