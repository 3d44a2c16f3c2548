# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""A scorer as a TensorFlow SavedModel for TF Serving, through jax2tf (native serialization).

  python -m ipa_jax.export --model=/tmp/i2pa --output=/tmp/i2pa_savedmodel
  saved_model_cli run --dir=/tmp/i2pa_savedmodel --tag_set=serve \
      --signature_def=serving_default --input_exprs='image_bytes=[open("a.jpg","rb").read()]'

`--model` is a training workdir or a `python -m ipa_jax.convert` output (see
`scoring.load_scorer`). The SavedModel has two signatures, so that clients need nothing of
ipa_jax:
  serving_default: `image_bytes` tf.string [N] (JPEG, PNG, GIF, BMP, WebP) -> {"score":
      float32 [N] (the log-score), "popularity": float32 [N] (exp(score)), "valid": bool [N]}.
      An image that cannot be used (not decodable, not one of those formats, or above
      `--max_pixels` by its header, which is then never decoded) does not fail the batch: its
      `valid` is false and its score and popularity NaN; the others are scored as usual.
      Images are decoded as `ipa_jax.images` says (alpha dropped, 16-bit PNG by its high byte,
      the first GIF frame) and prepared as ipa_jax evaluates: "crop" specs by
      `input_pipeline.resize_and_crop`; "squash" specs resize both sides with
      `tf.image.resize` (bilinear, antialiased) and round to uint8. The released I2PA code
      squashes with PIL, so squashing in TF is close to it but not bit-identical; TF decodes
      CMYK and greyscale JPEGs a few levels apart from PIL (`ipa_jax.images`).
  score_pixels: `images` tf.uint8 [N, S, S, 3], already prepared -> {"score", "popularity"}.
The batch dimension is polymorphic (one serialized module for every N >= 0). The variables are
tf.Variables, stored in the SavedModel's `variables/` rather than as graph constants (graphs
are limited to 2 GB, and the weights stay inspectable). `ipa_jax_export.json` beside the
SavedModel records the model name, its source, the input spec, the training objective and the
pixel limit; the model card (`model_card.json`, `MODEL_CARD.md`) is copied beside it, so that
`ipa-score --model=<export>` (`scoring.load_scorer`) reports percentiles and levels as the
source model does.

`--overwrite` replaces only an earlier export (a folder holding `ipa_jax_export.json`), never a
filesystem root, the home directory, the working directory or a folder above it, nor the
folder of the model being exported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Sequence

import jax
import ml_collections
import tensorflow as tf
from jax.experimental import jax2tf

from ipa_jax import convert, images, input_pipeline, model_card, pretrained, scoring

EXPORT_METADATA = scoring.EXPORT_METADATA  # "ipa_jax_export.json"
# The StableHLO is serialized for each platform the SavedModel may be served on.
PLATFORMS = ("cpu", "cuda")


def prepare_image(encoded: tf.Tensor, spec: scoring.InputSpec,
                  max_pixels: int = images.MAX_PIXELS) -> tf.Tensor:
    """Encoded image bytes -> uint8 [size, size, 3], as ipa_jax evaluates with `spec`.

    Fails (InvalidArgumentError) without decoding when the header says more than `max_pixels`
    pixels or no JPEG, PNG, GIF, BMP or WebP.
    """
    image = images.tf_decode_rgb(images.tf_check_pixels(encoded, max_pixels))
    if spec.resize == "crop":
        return input_pipeline.resize_and_crop(
            image, short_side=spec.resize_short_side, crop=spec.size)
    image = tf.image.resize(image, (spec.size, spec.size), method="bilinear", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.ensure_shape(image, (spec.size, spec.size, 3))


def build_module(scorer: scoring.Scorer, *, batch_polymorphic: bool = True,
                 batch_size: int = 1, platforms: Sequence[str] = PLATFORMS,
                 max_pixels: int = images.MAX_PIXELS) -> tf.Module:
    """A tf.Module holding the scorer's variables and the two signature functions.

    Args:
      scorer: from `scoring.load_scorer`.
      batch_polymorphic: one module for any batch size; else `batch_size` only.
      batch_size: the fixed batch size when not `batch_polymorphic`.
      platforms: the platforms the serialized module runs on (jax2tf `native_serialization_
        platforms`).
      max_pixels: `serving_default` marks larger images invalid, from their header.
    Returns:
      A module with tf.functions `serving_default(image_bytes)` and `score_pixels(images)`.
    """
    size = scorer.spec.size
    batch = None if batch_polymorphic else batch_size
    poly = f"(b, {size}, {size}, 3)" if batch_polymorphic else None
    # A plain function: jax2tf jits what it converts, and a Scorer (holding dicts) is unhashable.
    score_tf = jax2tf.convert(lambda variables, images: scorer(variables, images),
                              polymorphic_shapes=[None, poly], with_gradient=False,
                              native_serialization_platforms=tuple(platforms))
    module = tf.Module()
    variables = jax.tree.map(lambda x: tf.Variable(x, trainable=False), scorer.variables)
    module.flat_variables = jax.tree.leaves(variables)  # tracked, hence saved

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([batch, size, size, 3], tf.uint8, name="images")])
    def score_pixels(images):
        if batch_polymorphic:  # the module's shape check rejects b = 0; answer it here
            score = tf.cond(tf.shape(images)[0] > 0, lambda: score_tf(variables, images),
                            lambda: tf.zeros([0], tf.float32))
        else:
            score = score_tf(variables, images)
        return {"score": score, "popularity": tf.exp(score)}

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([batch], tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        # Each image is prepared in a tf.data pipeline whose failures (undecodable, too large)
        # are dropped, not raised; the prepared ones go back to their rows by index.
        n = tf.shape(image_bytes, out_type=tf.int64)[0]
        prepared = tf.data.Dataset.from_tensor_slices(image_bytes).enumerate().map(
            lambda i, x: (i, prepare_image(x, scorer.spec, max_pixels)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        prepared = prepared.ignore_errors(log_warning=True).batch(tf.maximum(n, 1))
        index, pixels = prepared.reduce(
            (tf.zeros([0], tf.int64), tf.zeros([0, size, size, 3], tf.uint8)),
            lambda acc, x: (tf.concat([acc[0], x[0]], 0), tf.concat([acc[1], x[1]], 0)))
        rows = index[:, None]
        valid = tf.scatter_nd(rows, tf.ones_like(index, tf.int32), tf.reshape(n, [1])) > 0
        pixels = tf.ensure_shape(
            tf.scatter_nd(rows, pixels, tf.stack([n, size, size, 3])), [batch, size, size, 3])
        score = score_pixels(pixels)["score"]  # the one serialized JAX module serves both
        score = tf.where(valid, score, tf.constant(float("nan"), tf.float32))
        return {"score": score, "popularity": tf.exp(score), "valid": valid}

    module.score_pixels = score_pixels
    module.serving_default = serving_default
    return module


def model_name(path: str) -> str:
    """The registered model name of a workdir or converted checkpoint (as `load_scorer` reads)."""
    if pretrained.is_converted(path):
        with open(os.path.join(path, convert.METADATA)) as f:
            return json.load(f)["model"]
    with open(os.path.join(path, "config.json")) as f:
        return ml_collections.ConfigDict(json.load(f)).model.name


def _check_output(output_dir: str, source: str, overwrite: bool) -> None:
    """Refuses an output that exists and is not empty unless `overwrite` and it is an export.

    `--overwrite` empties the folder, so it only ever replaces an earlier export (a folder
    holding `ipa_jax_export.json`), and never a filesystem root, the home directory, the
    working directory or a folder above it, nor one that holds the model being exported.
    """
    out = os.path.realpath(output_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--output={output_dir} is a file, not a directory.")
    if not (os.path.isdir(out) and os.listdir(out)):
        return
    if not overwrite:
        raise FileExistsError(f"--output={output_dir} exists and is not empty; pass "
                              "--overwrite to replace an earlier export there.")

    def within(path: str) -> bool:
        return path == out or path.startswith(out.rstrip(os.sep) + os.sep)

    refuse = "--overwrite never empties it; choose a new or empty output directory."
    if out == os.path.dirname(out):
        raise ValueError(f"--output={output_dir} is a filesystem root; {refuse}")
    if out == os.path.realpath(os.path.expanduser("~")):
        raise ValueError(f"--output={output_dir} is the home directory; {refuse}")
    if within(os.path.realpath(os.getcwd())):
        raise ValueError(f"--output={output_dir} is the working directory or a folder above "
                         f"it; {refuse}")
    if within(os.path.realpath(source)):
        raise ValueError(f"--output={output_dir} holds the model being exported ({source}); "
                         "choose another output directory.")
    if not os.path.isfile(os.path.join(out, EXPORT_METADATA)):
        raise ValueError(f"--output={output_dir} is not an earlier export (it has no "
                         f"{EXPORT_METADATA}); {refuse}")


def _move_contents(src: str, dst: str) -> None:
    """Replaces everything in `dst` (created if needed) by the contents of `src`."""
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(dst):
        path = os.path.join(dst, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    for name in os.listdir(src):
        os.replace(os.path.join(src, name), os.path.join(dst, name))


def export(path: str, output_dir: str, *, batch_polymorphic: bool = True, batch_size: int = 1,
           platforms: Sequence[str] = PLATFORMS, overwrite: bool = False,
           max_pixels: int = images.MAX_PIXELS) -> None:
    """Writes the SavedModel of the scorer at `path` and `ipa_jax_export.json` to `output_dir`.

    Raises ValueError for a path that is no workdir or converted checkpoint (or a damaged
    one), FileExistsError for a non-empty `output_dir` unless `overwrite`, ValueError when
    `overwrite` would empty a folder that is not an earlier export. A failed export leaves
    `output_dir` as it was: the SavedModel is written beside it first.
    """
    _check_output(output_dir, path, overwrite)
    scorer = scoring.load_scorer(path)
    if isinstance(scorer, scoring.ExportedScorer):
        raise ValueError(f"{path} is already an export; export its source "
                         f"({scorer.metadata.get('source', 'the workdir or checkpoint')}).")
    if not isinstance(scorer, scoring.Scorer):  # e.g. a retrieval-augmented model's
        raise ValueError(f"{path} holds a {type(scorer).__name__}: only an image scorer "
                         "(pixels -> log-score) can be exported; a retrieval-augmented model "
                         "reads each image's f_ret and depth from a creator's history: score "
                         "it with `ipa-score --history` (ipa_jax.history).")
    module = build_module(scorer, batch_polymorphic=batch_polymorphic, batch_size=batch_size,
                          platforms=platforms, max_pixels=max_pixels)
    out = os.path.realpath(output_dir)  # the folder checked; staged beside it, same filesystem
    os.makedirs(os.path.dirname(out), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=os.path.dirname(out))
    try:
        tf.saved_model.save(module, staging, signatures={
            "serving_default": module.serving_default.get_concrete_function(),
            "score_pixels": module.score_pixels.get_concrete_function()})
        metadata = {
            "model": model_name(path), "source": os.path.abspath(path),
            "input": dataclasses.asdict(scorer.spec),
            "objective": scorer.objective,
            "batch_size": None if batch_polymorphic else batch_size,
            "platforms": list(platforms), "variables": "tf.Variable", "max_pixels": max_pixels,
            "signatures": {
                "serving_default": "image_bytes: string [N] -> score, popularity: float32 [N] "
                                   "(NaN where not valid), valid: bool [N]",
                "score_pixels": f"images: uint8 [N, {scorer.spec.size}, {scorer.spec.size}, 3]"
                                " -> score, popularity: float32 [N]"},
            "score": "log-score (logits[:, 0]); popularity = exp(score)"}
        with open(os.path.join(staging, EXPORT_METADATA), "w") as f:
            json.dump(metadata, f, indent=2)
        for name in (model_card.CARD_JSON, model_card.CARD_MD):  # what a score means
            if os.path.isfile(os.path.join(path, name)):
                shutil.copyfile(os.path.join(path, name), os.path.join(staging, name))
        _move_contents(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv) -> None:
    if len(argv) > 1:
        raise SystemExit(f"Unexpected arguments: {argv[1:]}")
    from absl import flags  # noqa: PLC0415

    f = flags.FLAGS
    try:
        export(f.model, f.output, batch_polymorphic=f.batch_polymorphic,
               batch_size=f.batch_size, platforms=f.platforms, overwrite=f.overwrite,
               max_pixels=f.max_pixels)
    except (ValueError, OSError) as e:
        raise SystemExit("Export failed: " + " ".join(str(e).split())) from None
    print(f"Wrote {os.path.abspath(f.output)}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("model", None, "An ipa_jax workdir or a `python -m ipa_jax.convert` "
                        "output directory.")
    flags.DEFINE_string("output", None, "Directory of the SavedModel.")
    flags.DEFINE_bool("overwrite", False, "Replace an earlier export in --output.")
    flags.DEFINE_integer("max_pixels", images.MAX_PIXELS,
                         "serving_default marks larger images invalid, from their header.")
    flags.DEFINE_bool("batch_polymorphic", True, "Any batch size; else --batch_size only.")
    flags.DEFINE_integer("batch_size", 1, "The fixed batch size without --batch_polymorphic.")
    flags.DEFINE_list("platforms", list(PLATFORMS),
                      "Platforms to serve on: any of cpu, cuda, rocm, tpu.")
    flags.mark_flags_as_required(["model", "output"])
    app.run(main)
