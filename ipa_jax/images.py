# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Reading images: one pixel limit and one RGB loader for data_prep, scoring, export, reports.

Every image file becomes uint8 `[H, W, 3]` by the same rules wherever ipa_jax reads it. They
are those of `tf.io.decode_image(channels=3)`, the decoder of the training pipeline and of the
exported SavedModel, so that PIL (`load_rgb`) and TensorFlow give the same pixels for every
format both read (PNG, GIF, BMP, WebP: bit for bit; JPEG: see below):

  1                  0 or 255.
  L                  grey, repeated in the three channels.
  P                  its palette colours (a transparent entry keeps its colour).
  LA, PA, RGBA       the alpha channel is dropped, not composited: the colour under it.
  GIF                the first frame; transparent pixels black (as TF's GIF decoder).
  CMYK               (255 - C)(255 - K) / 255 per channel (PIL's conversion; Adobe's inverted
                     JPEG CMYK is undone by PIL's reader). TF's JPEG decoder converts CMYK by
                     another rule (a few levels apart), so data_prep and scoring re-read CMYK
                     JPEGs with PIL; only the SavedModel decodes them with TF.
  I;16, I;16B, ...   16-bit: the high byte, v >> 8 (what TF does to a 16-bit PNG).
  I (32-bit int)     clipped to 0..65535, then as I;16: mode I holds 16-bit data in practice
                     (16-bit PGM and TIFF; 16-bit PNG in older Pillow).
  F (32-bit float)   on a 0..1 scale (float images of image editors, scikit-image and
                     `tf.image.convert_image_dtype`): round(clip(v, 0, 1) * 255), NaN -> 0.
  other modes        PIL's `convert("RGB")` (YCbCr, HSV, RGBX, ...); one it cannot convert
                     is unreadable.

EXIF orientation is not applied (TF does not apply it): every path sees the stored pixel grid.

JPEG: PIL decodes with libjpeg's accurate integer IDCT, TF with its fast one; the two differ by
a few levels. An RGB JPEG is the one file data_prep stores byte for byte (`stored_as_is`), so
`read_rgb`, the pixels training sees, decodes it with TF; `load_rgb` (PIL) is for the rest and
for the squash path, which reproduces the released I2PA code's PIL pipeline.

Decompression bombs: every loader reads the image's size from its header first and refuses
more than `max_pixels` (default `MAX_PIXELS`) with `ImageTooLarge`, before decoding anything.
PIL refuses above twice its own `Image.MAX_IMAGE_PIXELS` (179 MP) whatever `max_pixels` says.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator

import numpy as np
from PIL import Image

# 89,478,485 pixels (about 89.5 MP, e.g. 10,000 x 8,900): PIL's own warning threshold, so that
# no image accepted here makes PIL warn. A 24-bit image this large is 268 MB decoded.
MAX_PIXELS = 89_478_485

Source = str | os.PathLike | bytes


class ImageTooLarge(ValueError):
    """The image has more pixels than the limit; nothing was decoded."""


class UnreadableImage(ValueError):
    """The image cannot be decoded by the decoder that has to read it."""


def check_pixels(width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    """Raises `ImageTooLarge` when `width x height` is above `max_pixels`."""
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{width} x {height} = {width * height / 1e6:.1f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.1f} megapixels (ipa_jax.images.MAX_PIXELS)")


@contextlib.contextmanager
def open_image(source: Source, *, max_pixels: int = MAX_PIXELS) -> Iterator[Image.Image]:
    """PIL's lazy open of a file or its bytes (the header only), the pixel limit checked."""
    try:
        im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as e:  # above 2 x Image.MAX_IMAGE_PIXELS
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "too many pixels"
        raise ImageTooLarge(f"{pixels}, above the limit of {max_pixels / 1e6:.1f} megapixels "
                            "(ipa_jax.images.MAX_PIXELS)") from None
    with im:
        check_pixels(im.width, im.height, max_pixels)
        yield im


def to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image (lazily opened, its size already checked) -> uint8 [H, W, 3] by the rules
    of the module docstring. Decodes it; raises what PIL raises for a broken file."""
    im.load()
    mode = im.mode
    if im.format == "GIF":
        rgba = np.asarray(im.convert("RGBA"))
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 0
        return rgb
    if mode.startswith("I;16"):
        grey = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
    elif mode == "I":
        grey = (np.clip(np.asarray(im, np.int64), 0, 65535) >> 8).astype(np.uint8)
    elif mode == "F":
        value = np.nan_to_num(np.asarray(im, np.float32), nan=0.0)
        grey = np.round(np.clip(value, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def load_rgb(source: Source, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file (path or bytes) -> uint8 [H, W, 3] with PIL, by the module's rules.

    Raises `ImageTooLarge` above `max_pixels` (before decoding) and what PIL raises for a file
    it cannot read (`PIL.UnidentifiedImageError`, `OSError`, ...).
    """
    with open_image(source, max_pixels=max_pixels) as im:
        return to_rgb(im)


def stored_as_is(im: Image.Image) -> bool:
    """Whether data_prep keeps this file's own bytes (an RGB JPEG) rather than re-encoding it."""
    return im.format == "JPEG" and im.mode == "RGB"


def decode_tf(data: bytes) -> np.ndarray:
    """`tf.io.decode_image(channels=3)` of encoded bytes, the training pipeline's decoder.

    Raises `UnreadableImage` when TensorFlow cannot decode them (e.g. a truncated JPEG that
    PIL reads with a libjpeg warning).
    """
    import tensorflow as tf  # noqa: PLC0415 - only for the files TF decodes

    try:
        return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except tf.errors.OpError as e:
        raise UnreadableImage(f"TensorFlow cannot decode it: {_op_message(e)}") from None


def read_rgb(source: Source, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The pixels ipa_jax trains on for an image file (path or bytes): uint8 [H, W, 3].

    An RGB JPEG, which data_prep stores byte for byte, is decoded by TensorFlow like the
    training pipeline decodes it (bit-identical to training-time evaluation); any other file
    is `load_rgb`, the pixels data_prep re-encodes. Raises `ImageTooLarge` above `max_pixels`
    (before decoding), `UnreadableImage` or PIL's errors for a file that cannot be read.
    """
    if not isinstance(source, bytes):
        with open(source, "rb") as f:
            source = f.read()
    with open_image(source, max_pixels=max_pixels) as im:
        if stored_as_is(im):
            return decode_tf(source)
        return to_rgb(im)


def _op_message(error) -> str:
    """A TensorFlow error's message on one line, without its `{{function_node ...}}` tag."""
    lines = re.sub(r"\{\{.*?\}\}\s*", "", error.message).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------------------- in a TF graph
def tf_header_size(encoded):
    """(height, width) int64 of encoded image bytes, read from the header without decoding.

    JPEG (its SOF marker), PNG (IHDR), GIF (logical screen), BMP (DIB header) and WebP (VP8,
    VP8L, VP8X) are understood, the formats `tf.io.decode_image` reads; anything else gives
    (-1, -1). A pure graph function (no Python), for the SavedModel and tf.data.
    """
    import tensorflow as tf  # noqa: PLC0415

    raw = tf.io.decode_raw(tf.strings.substr(encoded, 0, 32), tf.uint8)
    head = tf.cast(tf.pad(raw, [[0, 32 - tf.size(raw)]]), tf.int64)

    def little(start, n):
        return sum(head[start + k] * (1 << (8 * k)) for k in range(n))

    def big(start, n):
        return sum(head[start + k] * (1 << (8 * (n - 1 - k))) for k in range(n))

    def starts(offset, magic: bytes):
        return tf.reduce_all(tf.equal(head[offset:offset + len(magic)], list(magic)))

    def jpeg():
        return tf.image.extract_jpeg_shape(encoded, output_type=tf.int64)[:2]

    def png():
        return tf.stack([big(20, 4), big(16, 4)])

    def gif():
        return tf.stack([little(8, 2), little(6, 2)])

    def bmp():
        def signed(v):
            return tf.abs(tf.where(v >= 1 << 31, v - (1 << 32), v))

        core = tf.equal(little(14, 4), 12)  # BITMAPCOREHEADER: 16-bit sizes
        return tf.where(core, tf.stack([little(20, 2), little(18, 2)]),
                        tf.stack([signed(little(22, 4)), signed(little(18, 4))]))

    def webp():
        vp8l = little(21, 4)
        return tf.where(
            starts(12, b"VP8X"), tf.stack([little(27, 3) + 1, little(24, 3) + 1]),
            tf.where(starts(12, b"VP8L"),
                     tf.stack([vp8l // (1 << 14) % (1 << 14) + 1, vp8l % (1 << 14) + 1]),
                     tf.where(starts(12, b"VP8 "),
                              tf.stack([little(28, 2) % (1 << 14), little(26, 2) % (1 << 14)]),
                              tf.constant([-1, -1], tf.int64))))

    def unknown():
        return tf.constant([-1, -1], tf.int64)

    kinds = [(starts(0, b"\xff\xd8\xff"), jpeg), (starts(0, b"\x89PNG"), png),
             (starts(0, b"GIF8"), gif), (starts(0, b"BM"), bmp),
             (starts(0, b"RIFF") & starts(8, b"WEBP"), webp)]
    index = tf.constant(len(kinds), tf.int32)
    for i, (match, _) in reversed(list(enumerate(kinds))):
        index = tf.where(match, i, index)
    return tf.switch_case(index, [fn for _, fn in kinds] + [unknown])


def tf_decode_rgb(encoded):
    """`tf.io.decode_image(channels=3)`, in a graph, that also reads a WebP with alpha.

    TF refuses 3 channels of a 4-channel WebP; its alpha is dropped here, as everywhere.
    """
    import tensorflow as tf  # noqa: PLC0415

    def webp():
        return tf.io.decode_image(encoded, channels=0, expand_animations=False)[..., :3]

    def other():
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)

    is_webp = tf.equal(tf.strings.substr(encoded, 0, 4), "RIFF") & tf.equal(
        tf.strings.substr(encoded, 8, 4), "WEBP")
    return tf.ensure_shape(tf.cond(is_webp, webp, other), [None, None, 3])


def tf_read_rgb(encoded, max_pixels: int = MAX_PIXELS):
    """`read_rgb` in a tf.data pipeline: uint8 [H, W, 3] of encoded bytes.

    An RGB JPEG is decoded by TF in the graph (its header checked against `max_pixels`);
    anything else goes to `load_rgb` through `tf.numpy_function`, so a function using this
    cannot be serialized into a SavedModel. Fails the element, like a decode error, for an
    image above the limit or unreadable.
    """
    import tensorflow as tf  # noqa: PLC0415

    def tf_jpeg():
        return tf.io.decode_image(tf_check_pixels(encoded, max_pixels), channels=3,
                                  expand_animations=False)

    def pil():
        return tf.numpy_function(lambda data: load_rgb(bytes(data), max_pixels=max_pixels),
                                 [encoded], tf.uint8, stateful=False)

    rgb_jpeg = tf.cond(tf.io.is_jpeg(encoded),
                       lambda: tf.equal(tf.image.extract_jpeg_shape(encoded)[2], 3),
                       lambda: tf.constant(False))
    return tf.ensure_shape(tf.cond(rgb_jpeg, tf_jpeg, pil), [None, None, 3])


def tf_check_pixels(encoded, max_pixels: int = MAX_PIXELS):
    """`encoded`, once its header says a known format of at most `max_pixels` pixels.

    In a graph: the returned tensor carries the check, so a decode of it runs only after the
    check passed and an image above the limit fails (InvalidArgumentError) without decoding.
    """
    import tensorflow as tf  # noqa: PLC0415

    size = tf_header_size(encoded)
    capped = tf.minimum(size, 1 << 31)  # no int64 overflow in the product
    ok = tf.reduce_all(size > 0) & (capped[0] * capped[1] <= max_pixels)
    check = tf.debugging.Assert(ok, [
        "Not a JPEG, PNG, GIF, BMP or WebP image of at most", max_pixels,
        "pixels; (height, width) from its header:", size])
    with tf.control_dependencies([check]):
        return tf.identity(encoded)
