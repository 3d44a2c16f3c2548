# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Golden files for tests/test_swin.py, and the torch-side helpers of its live parity tests.

Builds timm Swin Transformers with seeded random weights, moved away from their init where the
init would hide a mapping error (LayerNorms, biases, relative-position bias tables), and records
their outputs at every stage. Needs torch and timm, imported lazily so that the tests can import
this module's constants without them. Run from the repository root:

    python -m tests.golden.make_swin
"""

import json
import os

import numpy as np

from ipa_jax.normalize import IMAGENET_MEAN, IMAGENET_STD

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
STAGES = ("stem", "stage1", "stage2", "stage3", "stage4", "feature_map", "pooled", "logits")
# The two full-resolution maps are stored at every STRIDE-th token along H and W to keep the
# files small; the later stages and logits, stored in full, depend on every token anyway.
STRIDE = {"stem": 2, "stage1": 2}
# timm's entry point whose architecture kwargs are overridden for the unregistered models.
_BASE = "swin_tiny_patch4_window7_224"

# Tiny models at the real geometries; embed 8 keeps each weights file near 0.6 MB.
# w7: token grids 56/28/14/7 at 224 px (shifted windows in 3 stages, the last stage one clamped
# unshifted window) and 50/25/13/7 at 200 px (padding to whole windows, odd patch merging).
# w12: 96/48/24/12 at 384 px.
GOLDEN = {
    "swin_w7": dict(
        model=dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7,
                   num_classes=10),
        sizes=(224, 200),
        seed=0,
    ),
    "swin_w12": dict(
        model=dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=12,
                   num_classes=10),
        sizes=(384,),
        seed=1,
    ),
}


def weights_path(name: str) -> str:
    return os.path.join(GOLDEN_DIR, f"{name}.safetensors")


def outputs_path(name: str, size: int) -> str:
    return os.path.join(GOLDEN_DIR, f"{name}_{size}.npz")


def test_image(size: int, seed: int) -> np.ndarray:
    """A [1, size, size, 3] uint8 image: flat shapes on gradients (compresses well), one noisy
    square (fine detail for the patch conv)."""
    rng = np.random.default_rng(seed)
    i, j = np.mgrid[:size, :size]
    image = np.stack([i * 255 // size, j * 255 // size, np.full_like(i, 90)], axis=-1)
    for _ in range(12):
        colour = rng.integers(0, 256, 3)
        cy, cx = rng.integers(0, size, 2)
        r = rng.integers(size // 16, size // 4)
        if rng.random() < 0.5:
            image[(i - cy) ** 2 + (j - cx) ** 2 < r * r] = colour
        else:
            image[(abs(i - cy) < r) & (abs(j - cx) < r // 2)] = colour
    image[8:40, -40:-8] = rng.integers(0, 256, (32, 32, 3))
    return image[None].astype(np.uint8)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 ImageNet-normalised NHWC, the formula of ipa_jax.normalize."""
    return (images.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD


def build_timm(img_size: int, seed: int, name: str = _BASE, **kwargs):
    """A seeded random timm Swin in eval mode, perturbed by `perturb_`.

    `name` is a timm model name; for one timm does not register (e.g. swin_tiny at 384 px)
    pass its architecture as `kwargs` (they override the `_BASE` entry point's).
    """
    import timm
    import torch

    if name not in timm.list_models(name):
        name = _BASE
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, img_size=img_size, **kwargs).eval()
    perturb_(model, seed)
    return model


def perturb_(model, seed: int) -> None:
    """Moves LayerNorms, biases and bias tables off their init (ones, zeros, ~0) in place."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=gen))
            elif "norm" in name or name.endswith(".bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def timm_outputs(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every entry of `STAGES` for uint8 NHWC `images`, NHWC, recorded with forward hooks."""
    import torch

    outs = {}

    def record(key):
        return lambda module, inputs, output: outs.__setitem__(key, output)

    hooks = [model.patch_embed.register_forward_hook(record("stem"))]
    for i, layer in enumerate(model.layers):
        hooks.append(layer.register_forward_hook(record(f"stage{i + 1}")))
    hooks.append(model.norm.register_forward_hook(record("feature_map")))
    hooks.append(model.head.global_pool.register_forward_hook(record("pooled")))
    x = torch.from_numpy(normalize(images)).permute(0, 3, 1, 2)
    with torch.no_grad():
        outs["logits"] = model(x)
    for hook in hooks:
        hook.remove()
    outs["pooled"] = outs["pooled"].reshape(len(images), -1)
    return {k: v.numpy() for k, v in outs.items()}


def main() -> None:
    from safetensors.torch import save_file

    for name, spec in GOLDEN.items():
        state_dict = None
        for size in spec["sizes"]:
            model = build_timm(size, spec["seed"], **spec["model"])
            if state_dict is None:
                state_dict = model.state_dict()
                save_file({k: v.contiguous() for k, v in state_dict.items()}, weights_path(name))
            else:  # one set of weights for every size (the bias tables' shapes agree)
                model.load_state_dict(state_dict)
            image = test_image(size, spec["seed"])
            outs = timm_outputs(model, image)
            outs = {k: v[:, :: STRIDE[k], :: STRIDE[k]] if k in STRIDE else v
                    for k, v in outs.items()}
            config = json.dumps(spec["model"])
            np.savez_compressed(outputs_path(name, size), image=image, config=config, **outs)
            print(outputs_path(name, size), {k: v.shape for k, v in outs.items()})
    for f in sorted(os.listdir(GOLDEN_DIR)):
        if f.startswith("swin_"):
            print(f, os.path.getsize(os.path.join(GOLDEN_DIR, f)))


if __name__ == "__main__":
    main()
