# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""`ipa_jax.images`: one loader (every PIL mode, the same pixels as TensorFlow), the pixel
limit, and data_prep keeping only what the training pipeline can decode."""

import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ipa_jax import images
from ipa_jax.data import instagram, prepare

H, W = 6, 10


def _encode(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def _grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def _mode_cases():
    """mode -> (encoded file, expected uint8 [H, W, 3], computed here with numpy)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
    cases = {}

    bits = rng.integers(0, 2, (H, W)).astype(bool)
    cases["1"] = (_encode(Image.fromarray(bits), "PNG"), _grey3(bits * 255))
    grey = rng.integers(0, 256, (H, W), dtype=np.uint8)
    cases["L"] = (_encode(Image.fromarray(grey), "PNG"), _grey3(grey))

    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (H, W), dtype=np.uint8)
    p = Image.frombytes("P", (W, H), index.tobytes())
    p.putpalette(palette.reshape(-1).tolist())
    cases["P"] = (_encode(p, "PNG"), palette[index])
    # A transparent palette entry keeps its colour: alpha is dropped, not composited.
    cases["P with tRNS"] = (_encode(p, "PNG", transparency=int(index[0, 0])), palette[index])
    # GIF: transparent pixels black, as TF's GIF decoder leaves them.
    gif = palette[index].copy()
    gif[index == index[0, 0]] = 0
    cases["P in a GIF"] = (_encode(p, "GIF", transparency=int(index[0, 0])), gif)

    la = np.stack([grey, alpha], -1)
    cases["LA"] = (_encode(Image.frombytes("LA", (W, H), la.tobytes()), "PNG"), _grey3(grey))
    rgba = np.concatenate([rgb, alpha[..., None]], -1)
    cases["RGBA"] = (_encode(Image.frombytes("RGBA", (W, H), rgba.tobytes()), "PNG"), rgb)

    cmyk = rng.integers(0, 256, (H, W, 4), dtype=np.uint8).astype(np.float64)
    expected = np.round((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255)
    cases["CMYK"] = (_encode(Image.frombytes("CMYK", (W, H), cmyk.astype(np.uint8).tobytes()),
                             "TIFF"), expected.astype(np.uint8))

    v16 = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    v16[0, :5] = [0, 255, 256, 32767, 65535]
    cases["I;16"] = (_encode(Image.fromarray(v16), "PNG"), _grey3(v16 >> 8))
    cases["I;16B"] = (_encode(Image.frombytes("I;16B", (W, H), v16.astype(">u2").tobytes()),
                              "TIFF"), _grey3(v16 >> 8))

    v32 = rng.integers(-70000, 140000, (H, W)).astype(np.int32)
    v32[0, :4] = [-5, 0, 65535, 70000]
    cases["I"] = (_encode(Image.fromarray(v32), "TIFF"), _grey3(np.clip(v32, 0, 65535) >> 8))

    f = rng.uniform(-0.5, 1.5, (H, W)).astype(np.float32)
    f[0, :5] = [np.nan, 0.0, 0.5, 1.0, 2.0]
    expected = np.round(np.clip(np.nan_to_num(f, nan=0.0), 0, 1) * 255)
    cases["F"] = (_encode(Image.fromarray(f), "TIFF"), _grey3(expected))
    return cases


MODE_CASES = _mode_cases()


@pytest.mark.parametrize("mode", list(MODE_CASES))
def test_every_mode_gives_the_expected_pixels(mode):
    data, expected = MODE_CASES[mode]
    with Image.open(io.BytesIO(data)) as im:  # the file holds the mode under test
        assert im.mode == mode.split()[0]
    got = images.load_rgb(data)
    assert got.dtype == np.uint8 and got.shape == (H, W, 3)
    np.testing.assert_array_equal(got, expected)


def test_tensorflow_decodes_the_same_pixels():
    """Training and serving decode with TF: for every format both read, PIL's pixels agree."""
    for mode, (data, _) in MODE_CASES.items():
        if mode in ("CMYK", "I;16B", "I", "F"):  # TIFF: TF does not read it
            continue
        want = images.load_rgb(data)
        np.testing.assert_array_equal(
            tf.io.decode_image(data, channels=3, expand_animations=False).numpy(), want, mode)
        np.testing.assert_array_equal(images.tf_decode_rgb(tf.constant(data)).numpy(), want)
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, (H, W, 3), dtype=np.uint16)  # 48-bit PNG
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    others = {"RGB 16-bit PNG": tf.io.encode_png(rgb16).numpy(),
              "BMP": _encode(Image.fromarray(rgba[..., :3]), "BMP"),
              "WebP": _encode(Image.fromarray(rgba[..., :3]), "WEBP", lossless=True),
              "WebP with alpha": _encode(Image.frombytes("RGBA", (W, H), rgba.tobytes()),
                                         "WEBP", lossless=True)}
    for name, data in others.items():
        np.testing.assert_array_equal(
            images.tf_decode_rgb(tf.constant(data)).numpy(), images.load_rgb(data), name)
    np.testing.assert_array_equal(images.load_rgb(others["RGB 16-bit PNG"]), rgb16 >> 8)
    np.testing.assert_array_equal(images.load_rgb(others["WebP with alpha"]), rgba[..., :3])


def test_read_rgb_in_a_tf_data_pipeline_matches_read_rgb():
    """Retrieval features read raw files in tf.data: TF for RGB JPEGs, PIL for the rest."""
    rgb = Image.fromarray(np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8))
    files = [_encode(rgb, "JPEG"), _encode(rgb.convert("L"), "JPEG"), MODE_CASES["CMYK"][0],
             MODE_CASES["I;16"][0], MODE_CASES["F"][0], MODE_CASES["P in a GIF"][0]]
    ds = tf.data.Dataset.from_tensor_slices(files).map(images.tf_read_rgb)
    for data, got in zip(files, ds.as_numpy_iterator(), strict=True):
        np.testing.assert_array_equal(got, images.read_rgb(data))
    bomb = tf.data.Dataset.from_tensors(_bomb_png(20000, 20000)).map(images.tf_read_rgb)
    with pytest.raises(tf.errors.InvalidArgumentError, match="ImageTooLarge"):
        next(iter(bomb))


def test_16_bit_png_is_the_same_picture_in_data_prep_scoring_and_tensorflow(tmp_path):
    """It used to be stored solid white by data_prep (`convert("RGB")` on I;16)."""
    yy, xx = np.mgrid[:48, :64]
    v16 = (yy * 1000 + xx * 300).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(v16).save(path)
    want = _grey3(v16 >> 8)
    np.testing.assert_array_equal(tf.io.decode_image(path.read_bytes(), channels=3).numpy(),
                                  want)
    np.testing.assert_array_equal(images.load_rgb(str(path)), want)
    np.testing.assert_array_equal(images.read_rgb(str(path)), want)
    stored = tf.io.decode_image(prepare.encode_image(str(path), 0), channels=3).numpy()
    assert np.abs(stored.astype(float) - want).mean() < 1.0  # JPEG at quality 95
    assert instagram._image_problem(str(path), decode=True) is None


def test_cmyk_jpeg_adobe_inverted():
    """PIL undoes Adobe's inverted CMYK; flat patches survive JPEG nearly exactly."""
    cmyk = np.zeros((32, 32, 4), np.uint8)
    cmyk[:16, :16] = (0, 0, 0, 0)
    cmyk[:16, 16:] = (255, 0, 0, 0)
    cmyk[16:, :16] = (100, 50, 20, 60)
    cmyk[16:, 16:] = (0, 0, 0, 128)
    data = _encode(Image.frombytes("CMYK", (32, 32), cmyk.tobytes()), "JPEG", quality=100)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK" and im.info.get("adobe")
    c = cmyk.astype(float)
    want = np.round((255 - c[..., :3]) * (255 - c[..., 3:]) / 255)
    got = images.load_rgb(data)
    assert np.abs(got[4:12, 4:12] - want[4:12, 4:12]).max() <= 2
    assert np.abs(got[20:28, 20:28] - want[20:28, 20:28]).max() <= 2


def test_exif_orientation_is_not_applied():
    """Like tf.io.decode_image: every path sees the stored pixel grid, so they agree."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = _encode(Image.new("RGB", (40, 20), (200, 30, 30)), "JPEG", exif=exif.tobytes())
    assert images.load_rgb(data).shape == images.read_rgb(data).shape == (20, 40, 3)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of zeros: tiny on disk, width x height pixels decoded."""
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(compressor.compress(row * 500) for _ in range(height // 500))
    idat += compressor.compress(row * (height % 500)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0,
                                                                0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_refuses_before_decoding(tmp_path):
    small = _encode(Image.new("RGB", (100, 60)), "PNG")
    assert images.load_rgb(small, max_pixels=6000).shape == (60, 100, 3)
    for load in (images.load_rgb, images.read_rgb):
        with pytest.raises(images.ImageTooLarge, match=r"100 x 60 = 0.0 megapixels"):
            load(small, max_pixels=5999)

    bomb = _bomb_png(20000, 20000)  # 400 megapixels: 1.2 GB as RGB
    assert len(bomb) < 200_000
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    for load in (images.load_rgb, images.read_rgb):
        start = time.perf_counter()
        with pytest.raises(images.ImageTooLarge, match="400.0 megapixels"):
            load(str(path))
        assert time.perf_counter() - start < 1.0
    # Between the limit and PIL's own (179 MP): refused by ours.
    with pytest.raises(images.ImageTooLarge, match="100.0 megapixels"):
        images.load_rgb(_bomb_png(10000, 10000))
    # In a graph (the SavedModel): from the header, before any decoding.
    np.testing.assert_array_equal(images.tf_header_size(tf.constant(bomb)).numpy(),
                                  [20000, 20000])
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most"):
        images.tf_check_pixels(tf.constant(bomb))


def test_header_sizes_in_a_graph_match_pil():
    rng = np.random.default_rng(2)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 91, 3), dtype=np.uint8))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (37, 91), dtype=np.uint8)))
    files = {"jpeg": _encode(rgb, "JPEG"), "progressive jpeg": _encode(rgb, "JPEG",
                                                                       progressive=True),
             "png": _encode(rgb, "PNG"), "gif": _encode(rgb.convert("P"), "GIF"),
             "bmp": _encode(rgb, "BMP"), "webp VP8": _encode(rgb, "WEBP"),
             "webp VP8L": _encode(rgb, "WEBP", lossless=True),
             "webp VP8X": _encode(rgba, "WEBP")}
    header_size = tf.function(images.tf_header_size)
    for name, data in files.items():
        np.testing.assert_array_equal(header_size(tf.constant(data)).numpy(), [37, 91], name)
    assert files["webp VP8X"][12:16] == b"VP8X"
    for data in (b"", b"garbage", _encode(rgb, "TIFF")):  # not a format TF decodes
        np.testing.assert_array_equal(header_size(tf.constant(data)).numpy(), [-1, -1])
    np.testing.assert_array_equal(header_size(tf.constant(b"\x89PNG")).numpy(), [0, 0])
    for data in (b"", b"garbage", b"\x89PNG"):
        with pytest.raises(tf.errors.InvalidArgumentError):
            images.tf_check_pixels(tf.constant(data))


# ---------------------------------------------------------------------------- data_prep
def _truncated_jpeg_pil_reads_but_tf_refuses() -> bytes:
    """A JPEG cut just before its end: PIL decodes it (libjpeg only warns), TF refuses it.

    Whether the cut bites depends on where the entropy-coded data ends, so a few noise
    images are tried.
    """
    for seed in range(50):
        pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        data = _encode(Image.fromarray(pixels), "JPEG", quality=95)
        for cut in (2, 1, 3):
            truncated = data[:-cut]
            try:
                with Image.open(io.BytesIO(truncated)) as im:
                    im.load()
            except OSError:
                continue
            try:
                tf.io.decode_image(truncated, channels=3)
            except tf.errors.InvalidArgumentError:
                return truncated
    raise AssertionError("no truncation that PIL reads and TF refuses")


def _raw_dir(root, files: dict[str, bytes]):
    """An Instagram-format raw directory: one post per image file."""
    (root / "info").mkdir()
    (root / "image").mkdir()
    rows = ["Influencer_name\tJSON_PostMetadata_file_name\tImage_file_name"]
    for i, (name, data) in enumerate(files.items()):
        rows.append(f"u\t{i}.info\t['{name}']")
        (root / "image" / f"u-{name}").write_bytes(data)
        (root / "info" / f"u-{i}.info").write_text(json.dumps({
            "owner": {"id": "1", "username": "u"}, "taken_at_timestamp": 1_500_000_000 + i,
            "edge_media_preview_like": {"count": 10 + i},
            "edge_media_to_caption": {"edges": []}, "is_video": False,
            "__typename": "GraphImage", "shortcode": f"s{i}"}))
    (root / instagram.MAPPING_FILE).write_text("\n".join(rows) + "\n")


def test_data_prep_keeps_only_what_the_training_decoder_reads(tmp_path):
    truncated = _truncated_jpeg_pil_reads_but_tf_refuses()
    good = _encode(Image.fromarray(np.full((32, 48, 3), 90, np.uint8)), "JPEG")
    deep = _encode(Image.fromarray(np.full((8, 8), 40000, np.uint16)), "PNG")
    _raw_dir(tmp_path, {"good.jpg": good, "truncated.jpg": truncated, "deep.png": deep,
                        "bomb.png": _bomb_png(20000, 20000)})
    posts, dropped = instagram.read_posts(tmp_path, check_images=True, progress=False,
                                          num_threads=1)
    assert sorted(p.image_path for p in posts) == ["image/u-deep.png", "image/u-good.jpg"]
    assert dropped == {instagram.UNREADABLE_IMAGE: 2}
    # What is kept decodes in the training pipeline; a good RGB JPEG is kept byte for byte.
    assert prepare.encode_image(str(tmp_path / "image" / "u-good.jpg"), 0) == good
    for post in posts:
        tf.io.decode_image(prepare.encode_image(str(tmp_path / post.image_path), 0),
                           channels=3)
    # Without check_images, encode_image still never stores what TF cannot decode.
    with pytest.raises(images.UnreadableImage, match="u-truncated.jpg.*check_images"):
        prepare.encode_image(str(tmp_path / "image" / "u-truncated.jpg"), 0)
    with pytest.raises(images.ImageTooLarge, match="u-bomb.png.*400.0 megapixels"):
        prepare.encode_image(str(tmp_path / "image" / "u-bomb.png"), 256)
