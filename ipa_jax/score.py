# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Scoring image files with a trained or converted scorer.

  python -m ipa_jax.score --model=/ckpt/i2pa photo1.jpg photo2.png ...
  python -m ipa_jax.score --model=workdirs/i2pa_demo --images_dir=photos/

prints `path<TAB>log_score` lines, best first, then one line with the files that could not
be scored and why. Files are read by `ipa_jax.images` (every PIL mode, the same pixels as data
preparation; images above `--max_pixels` are refused from their header, undecoded) and
prepared exactly as the scorer's `InputSpec` says: "crop" runs ipa_jax's own evaluation path
(`images.read_rgb`, then `input_pipeline.resize_and_crop`: an RGB JPEG decoded by TensorFlow
as in training, so identical to training-time evaluation); "squash" is `images.load_rgb`
and PIL's bilinear resize of both sides, the pixels of the released I2PA code
(`torchvision.transforms.Resize((S, S))` on a PIL image).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

import jax
import numpy as np
from PIL import Image

from ipa_jax import images, scoring

Skipped = list[tuple[str, str]]  # (path, reason)


def load_image(path: str, spec: scoring.InputSpec, *,
               max_pixels: int = images.MAX_PIXELS) -> np.ndarray:
    """One file -> uint8 `[size, size, 3]` as `spec` prepares it; raises if unreadable.

    Raises `images.ImageTooLarge` above `max_pixels`, from the file's header (undecoded).
    """
    if spec.resize == "squash":
        pixels = images.load_rgb(path, max_pixels=max_pixels)
        image = Image.fromarray(pixels).resize((spec.size, spec.size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)
    # TensorFlow only for "crop": a converted squash model should not pay its import.
    from ipa_jax import input_pipeline  # noqa: PLC0415

    pixels = images.read_rgb(path, max_pixels=max_pixels)
    return input_pipeline.resize_and_crop(pixels, short_side=spec.resize_short_side,
                                          crop=spec.size).numpy()


def load_images(paths: Sequence[str], spec: scoring.InputSpec, *,
                max_pixels: int = images.MAX_PIXELS) -> tuple[np.ndarray, list[str], Skipped]:
    """Files -> (uint8 `[N, size, size, 3]`, the N paths kept, [(path, reason)] skipped)."""
    loaded, kept, skipped = [], [], []
    for path in paths:
        try:
            loaded.append(load_image(path, spec, max_pixels=max_pixels))
        # One unreadable file (missing, truncated, not an image, too large, a format the
        # decoder lacks) must not stop the others; its reason is reported instead.
        except Exception as e:  # noqa: BLE001
            skipped.append((path, f"{type(e).__name__}: {_first_line(e)}"))
            continue
        kept.append(path)
    array = np.stack(loaded) if loaded else np.zeros((0, spec.size, spec.size, 3), np.uint8)
    return array, kept, skipped


def _first_line(error: Exception) -> str:
    """The error's message on one line, without TensorFlow's `{{function_node ...}}` tag."""
    lines = re.sub(r"\{\{.*?\}\}\s*", "", str(error)).strip().splitlines()
    return lines[0] if lines else "unreadable"


def score_files(scorer: scoring.Scorer, paths: Sequence[str], batch_size: int = 32, *,
                max_pixels: int = images.MAX_PIXELS) -> tuple[list[str], np.ndarray, Skipped]:
    """Log-scores of image files in jitted batches of one fixed size.

    Args:
      scorer: from `scoring.load_scorer`.
      paths: image files; unreadable ones (and those above `max_pixels`) are skipped and
        reported.
      batch_size: images per device call (the last batch is padded, so one compilation).
      max_pixels: the largest image read, in pixels (its header is checked before decoding).
    Returns:
      (the paths scored, float32 log-scores in the same order, [(path, reason)] skipped).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    size = max(1, min(batch_size, len(paths)))
    apply = jax.jit(lambda v, x: scorer(v, x))  # a Scorer holds dicts: jit cannot hash it
    variables = jax.device_put(scorer.variables)
    kept, skipped, outputs = [], [], []
    for start in range(0, len(paths), size):
        batch, chunk_kept, chunk_skipped = load_images(paths[start:start + size], scorer.spec,
                                                       max_pixels=max_pixels)
        skipped += chunk_skipped
        if not chunk_kept:
            continue
        padded = np.zeros((size, *batch.shape[1:]), np.uint8)
        padded[:len(batch)] = batch
        # Dispatch is asynchronous: the next files decode while this batch runs.
        outputs.append((apply(variables, padded), len(batch)))
        kept += chunk_kept
    scores = [np.asarray(out)[:n] for out, n in outputs]
    return kept, np.concatenate(scores) if scores else np.zeros(0, np.float32), skipped


def list_images_dir(directory: str) -> list[str]:
    """The visible regular files of `directory`, sorted (non-images are reported skipped)."""
    names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
    return [p for p in (os.path.join(directory, n) for n in names) if os.path.isfile(p)]


def format_results(kept: Sequence[str], scores: np.ndarray, skipped: Skipped) -> str:
    """`path<TAB>log_score` lines, best first, then `# skipped N of M files[: why]`."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    lines = [f"{kept[i]}\t{float(scores[i]):.6f}" for i in order]
    total = len(kept) + len(skipped)
    summary = f"# skipped {len(skipped)} of {total} files"
    if skipped:
        summary += ": " + "; ".join(f"{p} ({why})" for p, why in skipped)
    return "\n".join([*lines, summary])


def main(argv: Sequence[str]) -> None:
    from absl import flags  # noqa: PLC0415

    f = flags.FLAGS
    paths = list(argv[1:])
    if f.images_dir:
        paths += list_images_dir(f.images_dir)
    if not paths:
        raise SystemExit("No images: pass files after the flags or --images_dir=DIR.")
    try:
        scorer = scoring.with_input(scoring.load_scorer(f.model), resize=f.resize,
                                    normalize=f.normalize)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"Cannot load a scorer: {e}") from None
    kept, scores, skipped = score_files(scorer, paths, f.batch_size, max_pixels=f.max_pixels)
    print(format_results(kept, scores, skipped))
    if not kept:
        sys.exit(1)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("model", None, "ipa_jax workdir or `python -m ipa_jax.convert` output.")
    flags.DEFINE_integer("batch_size", 32, "Images per device call.")
    flags.DEFINE_string("images_dir", None, "Score every file of this directory too.")
    flags.DEFINE_integer("max_pixels", images.MAX_PIXELS,
                         "Larger images are skipped, from their header, without decoding.")
    flags.DEFINE_enum("resize", "", ["", "crop", "squash"],
                      "Override the model's stored preprocessing: crop or squash ('': keep).")
    flags.DEFINE_enum("normalize", "", ["", "imagenet", "unit"],
                      "Override the model's stored pixel normalisation ('': keep).")
    flags.mark_flags_as_required(["model"])
    app.run(main)
