# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Golden file for tests/test_i2pa_release.py: the released I2PA model's scores on photos.

The I2PA authors released a torchvision ResNet-50 state dict with `fc` 2048 -> 1, scored by
`Resize((224, 224))` + `ToTensor()` on `PIL.Image.open(p).convert("RGB")`. The reference here
has that layout with random weights in a trained-like regime: conv and fc weights drawn in
numpy from the seed (so the test rebuilds them without torch), BatchNorm parameters and
statistics from `torch_reference.trained_like_` (stored: 0.4 MB). The golden file holds those
BatchNorm tensors, the seed, the photo names and torch's scores, never the 94 MB weights.
Needs torch, torchvision and scikit-image. From the repository root:

    python -m tests.golden.make_i2pa_release               # writes the golden file
    python -m tests.golden.make_i2pa_release OUT_DIR SEED  # the live test's reference
"""

import hashlib
import json
import os
import sys
import tempfile

import numpy as np

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "i2pa_release.npz")
SEED = 0
SIZE = 224
# Real photographs bundled with scikit-image (no network).
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg")
BN_PREFIX = "bn."
# The live test's partial checkpoint: one tensor removed, one foreign tensor added.
PARTIAL_MISSING, PARTIAL_EXTRA = "layer3.2.conv2.weight", "head.extra.weight"


def photo_paths(names=PHOTOS) -> list[str]:
    """The photos' paths inside the installed scikit-image."""
    import skimage.data  # noqa: PLC0415

    return [os.path.join(skimage.data.data_dir, n) for n in names]


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def numpy_weights(layout, seed: int) -> dict[str, np.ndarray]:
    """Conv and fc tensors for `layout` ([(torch key, shape)], in that order), numpy only.

    Convs: torchvision's kaiming normal (fan_out, relu). fc: He normal (fan_in), as I2PA; its
    bias is drawn too (not zero) so that a lost bias would shift every score.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in layout:
        shape = tuple(shape)
        if len(shape) == 4:
            std = np.sqrt(2.0 / (shape[0] * shape[2] * shape[3]))
        elif len(shape) == 2:
            std = np.sqrt(2.0 / shape[1])
        else:
            std = 0.5
        out[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    return out


def rebuild_state_dict(golden) -> dict[str, np.ndarray]:
    """The reference state dict (float32 numpy) from a loaded golden file, without torch."""
    layout = json.loads(str(golden["layout"]))
    state = numpy_weights(layout, int(golden["seed"]))
    sums = np.array([state[k].astype(np.float64).sum() for k, _ in layout])
    if not np.allclose(sums, golden["weight_sums"], rtol=1e-6, atol=1e-6):
        raise ValueError("numpy drew other weights than when the golden file was written (its "
                         "random stream changed); regenerate with make_i2pa_release.")
    for key in golden.files:
        if key.startswith(BN_PREFIX):
            state[key[len(BN_PREFIX):]] = golden[key]
    return state


# ------------------------------------------------------------------------ torch side
def _owned_keys(model, kinds) -> list[str]:
    """State-dict keys of the modules of `kinds`, in state-dict order."""
    owners = {name for name, m in model.named_modules() if isinstance(m, kinds)}
    return [k for k in model.state_dict() if k.rsplit(".", 1)[0] in owners]


def release_layout(model) -> list[tuple[str, list[int]]]:
    """[(key, shape)] of the conv and linear tensors of a torch model, in state-dict order."""
    import torch  # noqa: PLC0415

    state = model.state_dict()
    return [(k, list(state[k].shape))
            for k in _owned_keys(model, (torch.nn.Conv2d, torch.nn.Linear))]


def release_model(seed: int = SEED, calibration_batches: int = 3):
    """torchvision's `resnet50(num_classes=1)`, numpy weights, trained-like BatchNorm, eval."""
    import torch  # noqa: PLC0415
    import torchvision  # noqa: PLC0415

    from tests.golden import torch_reference  # noqa: PLC0415

    model = torchvision.models.resnet50(num_classes=1)
    weights = numpy_weights(release_layout(model), seed)
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    batch_norm = {k for k in _owned_keys(model, torch.nn.BatchNorm2d)
                  if not k.endswith("num_batches_tracked")}  # torch never reports it missing
    assert not unexpected and set(missing) == batch_norm, (unexpected, missing)
    return torch_reference.trained_like_(model, seed=seed, image_size=SIZE,
                                         batches=calibration_batches)


def released_scores(model, paths) -> np.ndarray:
    """Scores exactly as the released inference code computes them, one image at a time."""
    import torch  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415
    from torchvision import transforms  # noqa: PLC0415

    transform = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor()])
    scores = []
    with torch.no_grad():
        for path in paths:
            x = transform(Image.open(path).convert("RGB")).unsqueeze(0)
            scores.append(model(x).item())
    return np.array(scores, np.float32)


def write_live_reference(out_dir: str, seed: int) -> None:
    """For the live test, in its own process (torchvision segfaults once TensorFlow is loaded):
    `i2pa.pth` as released, torch's `scores.npy` on the photos, and `partial.pth` without
    `PARTIAL_MISSING` and with the foreign `PARTIAL_EXTRA`."""
    import torch  # noqa: PLC0415

    model = release_model(seed, calibration_batches=1)
    torch.save(model.state_dict(), os.path.join(out_dir, "i2pa.pth"))
    np.save(os.path.join(out_dir, "scores.npy"), released_scores(model, photo_paths()))
    state = model.state_dict()
    del state[PARTIAL_MISSING]
    state[PARTIAL_EXTRA] = torch.zeros(3)
    torch.save(state, os.path.join(out_dir, "partial.pth"))


def main() -> None:
    import torch  # noqa: PLC0415
    import torchvision  # noqa: PLC0415

    model = release_model(SEED)
    layout = release_layout(model)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    with tempfile.TemporaryDirectory() as tmp:  # the released format, loaded back as released
        path = os.path.join(tmp, "i2pa.pth")
        torch.save(model.state_dict(), path)
        released = torchvision.models.resnet50(num_classes=1)
        released.load_state_dict(torch.load(path, map_location="cpu"))
        scores = released_scores(released.eval(), photo_paths())
    layout_keys = {k for k, _ in layout}
    golden = {
        "seed": np.int64(SEED), "photos": np.array(PHOTOS),
        "photo_sha256": np.array([sha256(p) for p in photo_paths()]), "scores": scores,
        "layout": np.array(json.dumps(layout)),
        "weight_sums": np.array([state[k].double().sum().item() for k, _ in layout]),
        **{BN_PREFIX + k: v.numpy() for k, v in state.items() if k not in layout_keys}}
    np.savez_compressed(GOLDEN, **golden)
    # The file must rebuild the exact state dict without torch.
    with np.load(GOLDEN) as loaded:
        rebuilt = rebuild_state_dict(loaded)
    assert sorted(rebuilt) == sorted(state)
    for k, v in state.items():
        np.testing.assert_array_equal(rebuilt[k], v.numpy(), err_msg=k)
    print(f"{GOLDEN}: {os.path.getsize(GOLDEN) / 1e3:.0f} kB; scores {np.round(scores, 4)}")


if __name__ == "__main__":
    if len(sys.argv) == 3:  # `OUT_DIR SEED`: the live test's reference
        write_live_reference(sys.argv[1], int(sys.argv[2]))
    else:
        main()
