# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Golden files for tests/test_resnet_parity.py: a tiny torchvision-block ResNet's outputs.

torchvision's `ResNet` fixes its stem at 64 channels, so the tiny reference is assembled from
torchvision's own `Bottleneck` blocks exactly as `ResNet._make_layer` assembles them, at width
8 (ipa_jax's `num_filters=8`). Weights are random in a trained-like regime
(`torch_reference.trained_like_`). Needs torch and torchvision. From the repository root:

    python -m tests.golden.make_resnet
"""

import os

import numpy as np

from ipa_jax.normalize import IMAGENET_MEAN, IMAGENET_STD

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(GOLDEN_DIR, "resnet_tiny.safetensors")
OUTPUTS = os.path.join(GOLDEN_DIR, "resnet_tiny_96.npz")
# ipa_jax.models.resnet.ResNet kwargs of the same architecture.
TINY = dict(stage_sizes=(1, 1, 2, 1), block="bottleneck", num_filters=8, num_classes=10)
SIZE, SEED = 96, 0


def test_images(size: int = SIZE, seed: int = SEED) -> np.ndarray:
    """Two [size, size, 3] uint8 images of noise (the input of every golden output)."""
    return np.random.default_rng(seed).integers(0, 256, (2, size, size, 3), dtype=np.uint8)


def normalise(images: np.ndarray) -> np.ndarray:
    """ipa_jax's 'imagenet' preprocessing, in numpy, float32."""
    return ((images.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def tiny_torchvision_resnet(stage_sizes, num_filters: int, num_classes: int):
    """torchvision's ResNet forward at a chosen width, from torchvision's Bottleneck."""
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415
    from torchvision.models.resnet import Bottleneck, conv1x1  # noqa: PLC0415

    class TinyResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.inplanes = num_filters
            self.conv1 = nn.Conv2d(3, num_filters, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(num_filters)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            for i, n in enumerate(stage_sizes):
                setattr(self, f"layer{i + 1}", self._make_layer(num_filters * 2**i, n, 1 + (i > 0)))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(self.inplanes, num_classes)

        def _make_layer(self, planes, blocks, stride):  # torchvision's, without dilation
            downsample = None
            if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
                downsample = nn.Sequential(conv1x1(self.inplanes, planes * 4, stride),
                                           nn.BatchNorm2d(planes * 4))
            layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * Bottleneck.expansion
            layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for i in range(len(stage_sizes)):
                x = getattr(self, f"layer{i + 1}")(x)
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return TinyResNet()


def reference_outputs(model, images: np.ndarray) -> dict:
    """The torch model's stage outputs (NHWC), pooled features and logits on `images`."""
    import torch  # noqa: PLC0415

    from tests.golden import torch_reference  # noqa: PLC0415

    x = torch.from_numpy(normalise(images).transpose(0, 3, 1, 2).copy())
    out = torch_reference.stage_outputs(
        model, x, {**torch_reference.TORCHVISION_RESNET_STAGES, "avgpool": "pooled"})
    out["pooled"] = out["pooled"].reshape(len(images), -1)
    return out


def main() -> None:
    import torch  # noqa: PLC0415
    from safetensors.torch import save_file  # noqa: PLC0415

    from tests.golden import torch_reference  # noqa: PLC0415

    torch.manual_seed(SEED)
    model = tiny_torchvision_resnet(TINY["stage_sizes"], TINY["num_filters"],
                                    TINY["num_classes"])
    torch_reference.trained_like_(model, seed=SEED, image_size=SIZE)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, WEIGHTS)
    np.savez_compressed(OUTPUTS, **reference_outputs(model, test_images()))
    for path in (WEIGHTS, OUTPUTS):
        print(f"{path}: {os.path.getsize(path) / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
