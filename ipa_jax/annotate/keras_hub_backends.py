# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Keras Hub annotators on the JAX backend: depth, background and captions.

Each builder takes `weights`, a Keras Hub preset (a built-in name such as
"depth_anything_v2_small", "deeplab_v3_plus_resnet50_pascalvoc" or "pali_gemma_3b_mix_224", a
"kaggle://" or "hf://" handle, or a local folder written by `save_to_preset`), loads it with
`from_preset` and returns an `ipa_jax.annotate.backends.Annotator`. Keras Hub has no keypoint
model, so there is no `keypoints` builder.

Choices:
  * Backend. KERAS_BACKEND defaults to "jax" here, in case keras is not imported yet. Keras
    picks its backend once per process, and `import tensorflow` imports keras: a process that
    uses TensorFlow (tf.data, which works beside JAX-backed Keras) must set KERAS_BACKEND=jax
    before importing it. Keras on another backend is a RuntimeError, not a silent switch.
  * Geometry. Every image is resized to the model's input size, as the preset's image converter
    does, but never centre-cropped (the converters' default): the output must cover the whole
    image, since the writer resizes it onto the image. `resize="stretch"` (default) resizes
    the whole image to the input size; `resize="pad"` keeps the aspect ratio, pads with black
    like `keras.layers.Resizing(pad_to_aspect_ratio=True)` and crops the padding back off the
    output map. Resizing runs on the host with `tf.image.resize`, the op Keras Hub's own
    tf.data `predict()` pipeline runs for these converters; resizing with JAX would compile
    once per distinct image size. The preset's preprocessor then rescales the fixed-size batch.
  * Batches are padded to `batch_size` with black images so that every call runs the same
    compiled function; outputs do not depend on the other images of a batch.
  * Depth. Depth Anything (V2) predicts relative inverse depth (disparity, larger = nearer);
    the annotator returns its negation so that larger is farther. A task saved with
    `depth_estimation_type="metric"` predicts depth and is returned as is. `output=` overrides
    what the model is taken to predict ("disparity" or "depth").
  * Background. DeepLabV3 labels each pixel with a class; the pixel is background when its
    class is in `background_classes`, by default (0,): PASCAL VOC's "background" class, class 0
    of the 21 the Keras Hub DeepLabV3 presets predict.
  * Captions. PaliGemma with the prompt "caption en\\n", greedy decoding, `max_length` text
    tokens (prompt included); the prompt is stripped from the output. Keras Hub tokenizes
    with the `sentencepiece` package outside tf.data, so tensorflow-text is not needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ipa_jax.annotate.backends import Annotator

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is first imported

import keras  # noqa: E402
import keras_hub  # noqa: E402

RESIZE_MODES = ("stretch", "pad")
DEPTH_OUTPUTS = ("disparity", "depth")
VOC_BACKGROUND = 0  # PASCAL VOC class 0, "background"
CAPTION_PROMPT = "caption en\n"
DEFAULT_SEGMENT_SIZE = (512, 512)  # DeepLabV3 input size when neither option nor preset sets one


def _require_jax_backend() -> None:
    backend = keras.backend.backend()
    if backend != "jax":
        raise RuntimeError(
            f"the keras_hub annotators need the JAX backend, but keras was already imported "
            f"with the {backend!r} backend (`import tensorflow` imports keras too): set "
            f"KERAS_BACKEND=jax in the environment, or in os.environ before anything imports "
            f"tensorflow or keras")


_require_jax_backend()


# ----------------------------------------------------------------------------- loading


def _weights_id(weights: str) -> str:
    """The preset as recorded in `info`: a local folder becomes absolute."""
    return os.path.abspath(weights) if os.path.isdir(weights) else weights


def _has_task_config(weights: str) -> bool:
    """Whether the preset holds a whole task (task.json), not only a backbone."""
    from keras_hub.src.utils.preset_utils import check_file_exists

    return check_file_exists(weights, "task.json")


def _info(task, weights: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {"library": "keras_hub", "keras_hub_version": keras_hub.__version__,
            "keras_version": keras.__version__, "backend": keras.backend.backend(),
            "architecture": type(task).__name__, "weights": _weights_id(weights),
            "settings": settings}


def _converter(task):
    """The preset's image converter; it fixes the model's input size."""
    converter = getattr(task.preprocessor, "image_converter", None)
    if converter is None:
        raise ValueError(f"{type(task).__name__} preset has no image converter")
    return converter


def _input_size(converter, size: Sequence[int] | None = None) -> tuple[int, int]:
    """The model's input size: `size`, else the converter's; the converter is set to it."""
    size = size or converter.image_size
    if size is None:
        raise ValueError("the preset's image converter has no image_size")
    converter.image_size = (int(size[0]), int(size[1]))
    return converter.image_size


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {choices}")


# ----------------------------------------------------------------------------- geometry


def _pad_to_aspect(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple]:
    """Pads `image` with black to the aspect ratio of `size`, as keras' `Resizing` does.
    Returns the padded image and the image's box in it, as fractions (y0, x0, y1, x1)."""
    height, width = image.shape[:2]
    top = max(0, (max(height, int(width * size[0] / size[1])) - height) // 2)
    left = max(0, (max(width, int(height * size[1] / size[0])) - width) // 2)
    padded = np.pad(image, ((top, top), (left, left), (0, 0)))
    rows, cols = padded.shape[:2]
    return padded, (top / rows, left / cols, (top + height) / rows, (left + width) / cols)


def _resize(image: np.ndarray, size: tuple[int, int], converter) -> np.ndarray:
    import tensorflow as tf

    resized = tf.image.resize(image.astype(np.float32), size, method=converter.interpolation,
                              antialias=converter.antialias)
    return resized.numpy()


def _prepare(images, size, converter, resize: str) -> tuple[np.ndarray, list]:
    """float32 [len(images), *size, 3] pixels and each image's box in them (None: all)."""
    batch, boxes = [], []
    for image in images:
        image, box = np.asarray(image), None
        if resize == "pad":
            image, box = _pad_to_aspect(image, size)
        batch.append(_resize(image, size, converter))
        boxes.append(box)
    return np.stack(batch), boxes


def _pad_batch(batch: np.ndarray, batch_size: int) -> np.ndarray:
    """`batch` with black images appended up to `batch_size`."""
    missing = batch_size - len(batch)
    if missing <= 0:
        return batch
    return np.concatenate([batch, np.zeros((missing, *batch.shape[1:]), batch.dtype)])


def _crop(output: np.ndarray, box) -> np.ndarray:
    """The part of a model-resolution map that covers the image (drops the padding)."""
    if box is None:
        return output
    rows, cols = output.shape[:2]
    y0, x0 = round(box[0] * rows), round(box[1] * cols)
    y1, x1 = max(y0 + 1, round(box[2] * rows)), max(x0 + 1, round(box[3] * cols))
    return output[y0:y1, x0:x1]


def _batched(run, batch_size: int):
    """`predict` over chunks of at most `batch_size` images."""

    def predict(images: Sequence[np.ndarray]) -> list:
        out = []
        for start in range(0, len(images), batch_size):
            out.extend(run(list(images[start:start + batch_size])))
        return out

    return predict


def _map_predictor(task, batch_size, resize, postprocess):
    """predict for dense tasks: maps of model outputs, cropped to the images, postprocessed."""
    converter = _converter(task)
    size = converter.image_size

    def run(images):
        batch, boxes = _prepare(images, size, converter, resize)
        outputs = task.predict_on_batch(_pad_batch(batch, batch_size))
        if isinstance(outputs, dict):
            outputs = next(iter(outputs.values()))
        outputs = np.asarray(outputs)[: len(images)]
        return [postprocess(_crop(output, box)) for output, box in zip(outputs, boxes, strict=True)]

    return _batched(run, batch_size)


# ----------------------------------------------------------------------------- builders


def _depth_kind(task, output: str | None) -> str:
    if output is None:
        return "depth" if task.depth_estimation_type == "metric" else "disparity"
    _check_choice("output", output, DEPTH_OUTPUTS)
    return output


def depth(weights: str, *, batch_size: int = 8, output: str | None = None,
          resize: str = "stretch") -> Annotator:
    """Depth Anything (`DepthAnythingDepthEstimator`): float32 [h, w] at the model's input
    resolution, larger = farther. output: what the model predicts, "disparity" (negated; the
    default for relative models such as Depth Anything V2) or "depth" (kept; the default for
    tasks saved with depth_estimation_type="metric")."""
    _check_choice("resize", resize, RESIZE_MODES)
    kwargs = {} if _has_task_config(weights) else {"depth_estimation_type": "relative"}
    task = keras_hub.models.DepthAnythingDepthEstimator.from_preset(weights, **kwargs)
    kind = _depth_kind(task, output)
    sign = np.float32(-1.0 if kind == "disparity" else 1.0)
    size = _input_size(_converter(task))

    def postprocess(output_map):
        return (sign * output_map[..., 0]).astype(np.float32)

    settings = {"output": kind, "negated": kind == "disparity", "resize": resize,
                "image_size": list(size)}
    return Annotator("depth", _info(task, weights, settings),
                     _map_predictor(task, batch_size, resize, postprocess), batch_size)


def _background_classes(classes, num_classes: int) -> tuple[int, ...]:
    classes = (classes,) if np.isscalar(classes) else tuple(classes)
    classes = tuple(int(c) for c in classes)
    if not classes or any(not 0 <= c < num_classes for c in classes):
        raise ValueError(f"background_classes={classes} must be classes in [0, {num_classes})")
    return classes


def background(weights: str, *, batch_size: int = 8,
               background_classes: int | Sequence[int] = (VOC_BACKGROUND,),
               image_size: Sequence[int] | None = None, resize: str = "stretch") -> Annotator:
    """DeepLabV3 (`DeepLabV3ImageSegmenter`): bool [h, w] at the model's input resolution, True
    where the predicted class is in `background_classes` (default: 0, PASCAL VOC's
    "background"). image_size: (height, width) to resize to, DeepLabV3 being fully
    convolutional (multiples of its output stride, 32 for the ResNet-50 presets); default: the
    preset converter's size, else 512 x 512."""
    _check_choice("resize", resize, RESIZE_MODES)
    task = keras_hub.models.DeepLabV3ImageSegmenter.from_preset(weights)
    classes = np.asarray(_background_classes(background_classes, task.num_classes))
    converter = _converter(task)
    size = _input_size(converter, image_size or converter.image_size or DEFAULT_SEGMENT_SIZE)

    def postprocess(logits):
        return np.isin(np.argmax(logits, axis=-1), classes)

    settings = {"background_classes": classes.tolist(), "num_classes": int(task.num_classes),
                "resize": resize, "image_size": list(size)}
    return Annotator("background", _info(task, weights, settings),
                     _map_predictor(task, batch_size, resize, postprocess), batch_size)


def captions(weights: str, *, batch_size: int = 8, prompt: str = CAPTION_PROMPT,
             max_length: int = 64, resize: str = "stretch") -> Annotator:
    """PaliGemma (`PaliGemmaCausalLM`): a str per image, greedily decoded after `prompt`, at
    most `max_length` text tokens including the prompt, with the prompt stripped."""
    _check_choice("resize", resize, RESIZE_MODES)
    task = keras_hub.models.PaliGemmaCausalLM.from_preset(weights)
    task.compile(sampler="greedy")
    converter = _converter(task)
    size = _input_size(converter)

    def run(images):
        batch, _ = _prepare(images, size, converter, resize)
        batch = _pad_batch(batch, batch_size)
        texts = task.generate({"images": batch, "prompts": [prompt] * len(batch)},
                              max_length=max_length, strip_prompt=True)
        return [str(text).strip() for text in texts[: len(images)]]

    settings = {"prompt": prompt, "max_length": max_length, "sampler": "greedy",
                "resize": resize, "image_size": list(size)}
    return Annotator("captions", _info(task, weights, settings), _batched(run, batch_size),
                     batch_size)
