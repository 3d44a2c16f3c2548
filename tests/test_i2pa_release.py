# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The released I2PA model (SPEC 1): converted, it scores real photos as the released code.

The golden test rebuilds the reference ResNet-50 without torch (numpy weights from the seed,
stored BatchNorm tensors), converts it like a user would (squash, unit) and compares the
log-scores of seven scikit-image photographs with torch's. The live test (`-m torch`) runs the
README's commands on a `.pth` saved by torch, and checks that a partial one is refused.
"""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ipa_jax import convert, score, scoring
from tests.conftest import REPO
from tests.golden import make_i2pa_release as release

TOLERANCE = 1e-4


def _photos(golden) -> list[str]:
    pytest.importorskip("skimage")
    paths = release.photo_paths(list(golden["photos"]))
    changed = [p for p, h in zip(paths, golden["photo_sha256"], strict=True)
               if release.sha256(p) != h]
    assert not changed, f"scikit-image ships other photos; regenerate the golden: {changed}"
    return paths


def _report(ours: np.ndarray, reference: np.ndarray) -> float:
    diff = float(np.abs(ours - reference).max())
    print(f"\nmax |ipa_jax - torch| = {diff:.2e} over scores {np.round(reference, 4)}")
    return diff


def test_golden_release_scores_match_torch(tmp_path):
    from safetensors.numpy import save_file

    with np.load(release.GOLDEN) as golden:
        paths = _photos(golden)
        state = release.rebuild_state_dict(golden)
        reference = golden["scores"]
    checkpoint = str(tmp_path / "i2pa.safetensors")
    save_file(state, checkpoint)
    out = str(tmp_path / "i2pa")
    result = convert.convert_checkpoint(checkpoint, "resnet50", out,
                                        input_spec={"resize": "squash", "normalize": "unit"})
    assert result.ok, result.report()
    with open(os.path.join(out, convert.METADATA)) as f:
        assert json.load(f)["num_classes"] == 1  # inferred from fc
    scorer = scoring.load_scorer(out)
    assert scorer.spec == scoring.InputSpec(224, "squash", 256, "unit")

    kept, scores, skipped = score.score_files(scorer, paths, batch_size=4)  # 4 + 3 padded
    assert kept == paths and not skipped
    assert _report(scores, reference) <= TOLERANCE
    # The photos score differently, so a swapped or constant output would show.
    assert np.ptp(reference) > 0.5 and np.argmax(scores) == np.argmax(reference)

    # The preprocessing matters at this tolerance: ipa_jax's crop is not the released squash.
    crop = dataclasses.replace(scorer, spec=scoring.InputSpec(224, "crop", 256, "unit"))
    _, cropped, _ = score.score_files(crop, paths, batch_size=4)
    crop_diff = float(np.abs(cropped - reference).max())
    print(f"max |ipa_jax crop - torch squash| = {crop_diff:.2e}")
    assert crop_diff > 100 * TOLERANCE


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.torch
@pytest.mark.slow
def test_live_release_pth_through_the_cli(tmp_path):
    for module in ("torch", "torchvision", "skimage"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    # torch runs in its own process: torchvision segfaults where TensorFlow is already loaded.
    proc = _run("tests.golden.make_i2pa_release", str(tmp_path), "1")
    assert proc.returncode == 0, proc.stderr
    reference = np.load(tmp_path / "scores.npy")
    paths = release.photo_paths()

    # The README's two commands.
    out = str(tmp_path / "i2pa")
    proc = _run("ipa_jax.convert", "--model=resnet50", f"--checkpoint={tmp_path / 'i2pa.pth'}",
                f"--output={out}", "--resize=squash", "--normalize=unit")
    assert proc.returncode == 0, proc.stderr
    proc = _run("ipa_jax.score", f"--model={out}", "--batch_size=4", *paths)
    assert proc.returncode == 0, proc.stderr
    *lines, summary = proc.stdout.strip().splitlines()
    assert summary == f"# skipped 0 of {len(paths)} files"
    printed = dict(line.split("\t") for line in lines)
    scores = np.array([float(printed[p]) for p in paths])
    assert _report(scores, reference) <= TOLERANCE
    assert [float(line.split("\t")[1]) for line in lines] == sorted(scores, reverse=True)

    # A partial state dict with a foreign key: refused, both named; written on request.
    partial, written = str(tmp_path / "partial.pth"), str(tmp_path / "partial")
    missing = "params/layer3_2/conv2/kernel"  # release.PARTIAL_MISSING in ipa_jax's names
    with pytest.raises(ValueError, match="--allow_partial") as refused:
        convert.convert_checkpoint(partial, "resnet50", written)
    assert missing in str(refused.value) and release.PARTIAL_EXTRA in str(refused.value)
    assert not os.path.exists(written)
    result = convert.convert_checkpoint(partial, "resnet50", written, allow_partial=True)
    assert result.missing == [missing] and result.unplaced == [release.PARTIAL_EXTRA]
    with open(os.path.join(written, convert.METADATA)) as f:
        assert json.load(f)["complete"] is False
