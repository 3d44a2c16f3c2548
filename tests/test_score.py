# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Scoring files (`ipa_jax.score`): preparation per input spec, skipped files, batching, CLI."""

import dataclasses
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ipa_jax import convert, models, score, scoring
from tests.conftest import REPO, random_variables

SIZE = 32
SQUASH = scoring.InputSpec(SIZE, "squash", normalize="unit")
CROP = scoring.InputSpec(SIZE, "crop", resize_short_side=40)


def _write(path, pixels: np.ndarray, mode: str = "RGB") -> str:
    image = Image.fromarray(pixels)
    image = image if mode == "RGB" else image.convert(mode)
    image.save(path)
    return str(path)


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth-ish random RGB (upsampled noise), at a brightness that varies with the seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
    big = np.repeat(np.repeat(coarse, 4, 0), 4, 1)[:h, :w]
    return np.clip(big * (0.3 + 0.1 * (seed % 7)), 0, 255).astype(np.uint8)


def _bands(h: int, w: int) -> np.ndarray:
    """A wide image: red left quarter, green middle, blue right quarter."""
    x = np.zeros((h, w, 3), np.uint8)
    x[:, : w // 4, 0] = 255
    x[:, w // 4: 3 * w // 4, 1] = 255
    x[:, 3 * w // 4:, 2] = 255
    return x


def test_crop_is_the_training_evaluation_path(tmp_path):
    from ipa_jax import input_pipeline

    paths = [_write(tmp_path / "a.jpg", _noise(60, 90, 1)),
             _write(tmp_path / "b.png", _noise(75, 41, 2), mode="L")]
    images, kept, skipped = score.load_images(paths, CROP)
    assert images.shape == (2, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert kept == paths and skipped == []
    for image, path in zip(images, paths, strict=True):
        with open(path, "rb") as f:
            expected = input_pipeline.decode_and_crop(f.read(), short_side=40, crop=SIZE)
        np.testing.assert_array_equal(image, expected.numpy())
    # A 2:1 image: the central square holds only the green middle band.
    (cropped,), _, _ = score.load_images([_write(tmp_path / "c.png", _bands(40, 80))], CROP)
    assert cropped[..., 1].min() == 255 and cropped[..., [0, 2]].max() == 0


def test_squash_is_the_released_pil_resize(tmp_path):
    paths = [_write(tmp_path / "rgb.jpg", _noise(60, 90, 3)),
             _write(tmp_path / "gray.png", _noise(50, 70, 4), mode="L"),
             _write(tmp_path / "rgba.png", _noise(40, 40, 5), mode="RGBA"),
             _write(tmp_path / "palette.png", _noise(33, 64, 6), mode="P")]
    images, kept, _ = score.load_images(paths, SQUASH)
    assert kept == paths
    for image, path in zip(images, paths, strict=True):
        expected = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        np.testing.assert_array_equal(image, np.asarray(expected))
    # Aspect not kept: all three bands of a 2:1 image survive, in order.
    (squashed,), _, _ = score.load_images([_write(tmp_path / "c.png", _bands(40, 80))], SQUASH)
    assert (squashed[:, :6] == [255, 0, 0]).all() and (squashed[:, -6:] == [0, 0, 255]).all()
    assert (squashed[:, 12:20] == [0, 255, 0]).all()


def test_squash_is_antialiased_bilinear(tmp_path):
    """A 2x reduction is the [1, 3, 3, 1] / 8 triangle filter (torchvision on PIL images)."""
    columns = np.random.default_rng(0).integers(0, 256, 2 * SIZE).astype(np.float64)
    pixels = np.repeat(np.tile(columns, (2 * SIZE, 1))[..., None], 3, -1).astype(np.uint8)
    (image,), _, _ = score.load_images([_write(tmp_path / "cols.png", pixels)], SQUASH)
    np.testing.assert_array_equal(image, image[:1, :, :1].repeat(SIZE, 0).repeat(3, 2))
    c = columns
    interior = np.arange(1, SIZE - 1)
    expected = (c[2 * interior - 1] + 3 * c[2 * interior] + 3 * c[2 * interior + 1]
                + c[2 * interior + 2]) / 8
    got = image[0, interior, 0].astype(np.float64)
    assert np.abs(got - expected).max() <= 1.0  # fixed-point rounding
    naive = (c[2 * interior] + c[2 * interior + 1]) / 2  # bilinear without antialiasing
    assert np.abs(got - naive).max() > 10


@pytest.mark.parametrize("spec", [SQUASH, CROP], ids=["squash", "crop"])
def test_unreadable_files_are_skipped_and_counted(tmp_path, spec):
    good = [_write(tmp_path / f"{i}.jpg", _noise(48, 64, i)) for i in range(3)]
    with open(good[0], "rb") as f:
        data = f.read()
    bad = {"truncated.jpg": data[: len(data) // 2], "garbage.jpg": b"not an image" * 10,
           "empty.png": b"", "notes.txt": b"hello"}
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    missing = str(tmp_path / "missing.jpg")
    paths = [good[0], *(str(tmp_path / n) for n in bad), good[1], missing, good[2]]
    images, kept, skipped = score.load_images(paths, spec)
    assert kept == good and images.shape == (3, SIZE, SIZE, 3)
    assert [p for p, _ in skipped] == [*(str(tmp_path / n) for n in bad), missing]
    assert all(why and "function_node" not in why for _, why in skipped)
    assert "FileNotFoundError" in dict(skipped)[missing]
    # Nothing readable: an empty batch, not a crash.
    images, kept, skipped = score.load_images([missing], spec)
    assert images.shape == (0, SIZE, SIZE, 3) and kept == [] and len(skipped) == 1


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("spec", [SQUASH, CROP], ids=["squash", "crop"])
def test_16_bit_read_like_training_and_bombs_refused_undecoded(tmp_path, spec):
    from tests.test_images import _bomb_png

    yy, xx = np.mgrid[:48, :64]
    v16 = (yy * 1200 + xx * 200).astype(np.uint16)
    deep = str(tmp_path / "deep.png")
    Image.fromarray(v16).save(deep)
    eight = _write(tmp_path / "eight.png", np.repeat((v16 >> 8).astype(np.uint8)[..., None], 3, 2))
    bomb = str(tmp_path / "bomb.png")
    with open(bomb, "wb") as f:
        f.write(_bomb_png(20000, 20000))  # 400 MP in 60 KB
    start = time.perf_counter()
    images, kept, skipped = score.load_images([deep, bomb, eight], spec)
    assert time.perf_counter() - start < 5
    assert kept == [deep, eight]
    # The 16-bit PNG is its high byte, as TF (training, serving) reads it; it was solid white.
    np.testing.assert_array_equal(images[0], images[1])
    assert images[0].std() > 20
    (path, why), = skipped
    assert path == bomb and why.startswith("ImageTooLarge: 400.0 megapixels, above the limit")
    _, kept, skipped = score.load_images([eight], spec, max_pixels=48 * 64 - 1)
    assert kept == [] and "ImageTooLarge" in skipped[0][1]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> str:
    """A random `resnet_mini` scorer written as `python -m ipa_jax.convert` writes one."""
    variables = random_variables(models.get_model("resnet_mini", num_classes=1),
                                 jnp.zeros((1, SIZE, SIZE, 3)))
    out = str(tmp_path_factory.mktemp("score") / "mini")
    convert.write(out, variables, {
        "model": "resnet_mini", "num_classes": 1,
        "input": {"size": SIZE, "resize": "squash", "normalize": "unit"}})
    return out


def _photos(directory, n: int) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    return [_write(os.path.join(directory, f"p{i}.png"), _noise(40 + 3 * i, 56, i))
            for i in range(n)]


def test_score_files_in_padded_batches(tmp_path, converted):
    scorer = scoring.load_scorer(converted)
    assert scorer.spec == SQUASH
    paths = _photos(tmp_path, 5)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    paths.insert(2, str(tmp_path / "bad.png"))
    images, _, _ = score.load_images(paths, scorer.spec)
    expected = np.asarray(jax.jit(scoring.log_scores, static_argnums=(0, 3))(
        scorer.model, scorer.variables, images, "unit"))
    assert np.ptp(expected) > 1e-3  # the photos score differently
    for batch_size in (2, 32):  # 2: batches of 2, the last one padded; 32: one of 6
        kept, scores, skipped = score.score_files(scorer, paths, batch_size=batch_size)
        assert kept == [p for p in paths if not p.endswith("bad.png")]
        assert [p for p, _ in skipped] == [str(tmp_path / "bad.png")]
        np.testing.assert_allclose(scores, expected, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        score.score_files(scorer, paths, batch_size=0)


def test_cli_prints_scores_best_first(tmp_path, converted):
    photos = _photos(tmp_path / "dir", 4)
    (tmp_path / "dir" / "readme.txt").write_text("not an image")
    (tmp_path / "dir" / ".hidden.png").write_bytes(b"")
    extra = _photos(tmp_path / "more", 1)
    proc = subprocess.run(  # the stored squash, unit preprocessing overridden by a crop
        [sys.executable, "-m", "ipa_jax.score", f"--model={converted}", "--batch_size=2",
         "--resize=crop", f"--images_dir={tmp_path / 'dir'}", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    *lines, summary = proc.stdout.strip().splitlines()
    printed = [line.split("\t") for line in lines]
    values = [float(v) for _, v in printed]
    assert values == sorted(values, reverse=True)
    cropped = scoring.with_input(scoring.load_scorer(converted), resize="crop", normalize="")
    assert cropped.spec == dataclasses.replace(SQUASH, resize="crop")
    _, scores, _ = score.score_files(cropped, extra + photos)
    np.testing.assert_allclose([float(dict(printed)[p]) for p in extra + photos], scores,
                               atol=2e-6)
    _, stored, _ = score.score_files(scoring.load_scorer(converted), extra + photos)
    assert np.abs(stored - scores).max() > 1e-4  # the override changed the pixels
    with pytest.raises(ValueError):
        scoring.with_input(cropped, resize="stretch")
    readme = str(tmp_path / "dir" / "readme.txt")
    assert summary.startswith(f"# skipped 1 of 6 files: {readme} (UnidentifiedImageError")

    proc = subprocess.run([sys.executable, "-m", "ipa_jax.score", f"--model={tmp_path}", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Cannot load a scorer" in proc.stderr


def test_cli_damaged_model_is_one_line(tmp_path, converted):
    """A truncated checkpoint file: one line, none of orbax's parallel-read tracebacks."""
    import glob
    import shutil

    damaged = str(tmp_path / "damaged")
    shutil.copytree(converted, damaged)
    files = glob.glob(os.path.join(damaged, convert.VARIABLES, "d", "*"))
    assert files
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(40)
    photo = _photos(tmp_path / "p", 1)
    proc = subprocess.run([sys.executable, "-m", "ipa_jax.score", f"--model={damaged}", *photo],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Traceback" not in proc.stderr and "Event loop" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Cannot load a scorer: {os.path.join(damaged, 'variables')} cannot "
                           "be restored") and "ipa_jax.convert" in last


def test_ipa_score_takes_folders_globs_and_writes_csv_and_json(tmp_path, converted, capsys):
    """Folders recursively (hidden files left out), `**` globs, each file once; what matches
    nothing is reported with the unreadable files; csv and json hold the rank and popularity."""
    import csv as csv_lib
    import importlib.metadata
    import json

    top = _photos(tmp_path / "a", 2)
    nested = _photos(tmp_path / "a" / "b", 2)
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    (tmp_path / "a" / "b" / "notes.txt").write_text("not an image")
    paths, missing = score.expand_inputs([str(tmp_path / "a"), str(tmp_path / "a/**/p0.png"),
                                          str(tmp_path / "nope*.jpg")])
    assert paths == [*top, str(tmp_path / "a" / "b" / "notes.txt"), *nested]
    assert missing == [(str(tmp_path / "nope*.jpg"), "no such file, folder or match")]

    out = tmp_path / "scores.json"
    score.main([f"--model={converted}", "--format=json", f"--output={out}", "--quiet",
                str(tmp_path / "a"), str(tmp_path / "nope*.jpg")])
    result = json.loads(out.read_text())
    _, expected, _ = score.score_files(scoring.load_scorer(converted), top + nested)
    by_path = {r["path"]: r for r in result["scores"]}
    np.testing.assert_allclose([by_path[p]["log_score"] for p in top + nested], expected,
                               atol=2e-6)
    assert [r["rank"] for r in result["scores"]] == [1, 2, 3, 4]
    assert all(r["popularity"] == pytest.approx(np.exp(r["log_score"]))
               for r in result["scores"])
    assert [s["path"] for s in result["skipped"]] == [str(tmp_path / "nope*.jpg"),
                                                      str(tmp_path / "a" / "b" / "notes.txt")]
    score.main([f"--model={converted}", "--format=csv", "--quiet", *top])
    rows = list(csv_lib.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["path"] for r in rows] == [r["path"] for r in result["scores"] if r["path"] in top]
    assert rows[0]["rank"] == "1" and float(rows[0]["log_score"]) >= float(rows[1]["log_score"])
    # With a model card holding a test distribution: each score's percentile and level.
    import shutil

    from ipa_jax import model_card

    carded = str(tmp_path / "carded")
    shutil.copytree(converted, carded)
    model_card.write(carded, model_card.build(
        model="resnet_mini", objective="", preprocessing={}, trained_on={},
        test_scores=np.linspace(expected.min() - 1, expected.max() + 1, 50)))
    score.main([f"--model={carded}", "--format=json", "--quiet", *top])
    scored = json.loads(capsys.readouterr().out)["scores"]
    card = model_card.read(carded)
    for r in scored:
        assert r["percentile"] == pytest.approx(model_card.percentiles(card, [r["log_score"]])[0],
                                                abs=0.01)
        assert [r["level"]] == model_card.levels([r["percentile"]])
    assert 0 < scored[-1]["percentile"] <= scored[0]["percentile"] < 100
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert any(e.name == "ipa-score" and e.value == "ipa_jax.score:main" for e in scripts)


def test_compare_gives_the_formula_and_the_api_scores_files_and_pixels(tmp_path, converted,
                                                                       capsys):
    import ipa_jax

    a, b = _photos(tmp_path, 2)
    scorer = ipa_jax.Scorer.from_dir(converted)
    kept, (o_a, o_b), skipped = scorer.score([a, b])
    assert kept == [a, b] and not skipped
    score.main(["compare", f"--model={converted}", a, b])
    out = capsys.readouterr().out  # the model does not record its objective: both readings
    assert f"= {1 / (1 + np.exp(-(o_a - o_b))):.4f}" in out
    assert f"s_A / s_B = exp(o_A - o_B) = {np.exp(o_a - o_b):.4g}" in out
    i2pa = dataclasses.replace(scorer, objective="i2pa_bce")
    assert "likes ratio" not in score.compare_text(i2pa, a, b, o_a, o_b)
    ratio = dataclasses.replace(scorer, objective="likes_ratio")
    assert "sigmoid" not in score.compare_text(ratio, a, b, o_a, o_b)
    far = score.compare_text(scorer, a, b, -800.0, 800.0)  # no overflow either way
    assert "= 0.0000" in far and "= 0\n" in far
    # Pixels of any size, prepared like the files (PNG: the same pixels); a bad array skipped.
    pixels = [np.asarray(Image.open(p).convert("RGB")) for p in (a, b)]
    items, from_pixels, bad = scorer.score([pixels[0], np.zeros((4, 4), np.uint8), pixels[1]])
    assert items == [0, 2] and bad[0][0] == 1 and "uint8 [H, W, 3]" in bad[0][1]
    np.testing.assert_allclose(from_pixels, [o_a, o_b], atol=1e-6)


def _write_video(path, frames) -> str:
    """A lossless (FFV1) video of uint8 [H, W, 3] frames at 25 fps."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "bgr0"
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def test_video_best_frame_thumbnail_and_plot(tmp_path, converted, capsys):
    """Every 25th frame of 75 is scored; the best of frames 0, 25, 50 is the thumbnail. The
    frames in between hold the image that would score highest, so sampling them would show."""
    pytest.importorskip("av")
    from ipa_jax import video

    scorer = scoring.load_scorer(converted)
    candidates = [_noise(48, 64, seed) for seed in range(4)]
    _, scores, _ = scorer.score(candidates)
    order = np.argsort(scores)
    top, sampled = candidates[order[-1]], [candidates[i] for i in order[:3][::-1]]
    sampled = [sampled[1], sampled[0], sampled[2]]  # the best sampled frame is frame 25
    frames = [sampled[i // 25] if i % 25 == 0 else top for i in range(75)]
    path = _write_video(tmp_path / "clip.mkv", frames)
    result = video.score_video(scorer, path, every=25, batch_size=2)
    assert result.frames == [0, 25, 50] and result.times == pytest.approx([0.0, 1.0, 2.0])
    np.testing.assert_allclose(result.scores, scorer.score(sampled)[1], atol=1e-6)
    assert result.best == 1 and np.array_equal(result.best_pixels, sampled[1])
    score.main([f"--model={converted}", f"--video={path}", f"--video_out={tmp_path / 'out'}"])
    out = capsys.readouterr().out
    assert "3 frames scored (every 25); best: frame 25 at 1.00 s" in out
    with Image.open(tmp_path / "out" / "clip_best.jpg") as thumb:
        assert thumb.format == "JPEG" and thumb.size == (64, 48)
    with Image.open(tmp_path / "out" / "clip_scores.png") as plot:
        assert plot.format == "PNG" and plot.size == (640, 320)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(SystemExit, match="Cannot score the video: .*broken.mp4 is not a "
                                         "readable video"):
        score.main([f"--model={converted}", f"--video={tmp_path / 'broken.mp4'}"])
