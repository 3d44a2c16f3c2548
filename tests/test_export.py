# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""`python -m ipa_jax.export`: the SavedModel scores like the JAX scorer, from pixels and bytes.

Two sources are exported once per module: the workdir of a real tiny training run (shared
with the training tests), the path users export, with a "crop" spec; and a converted
checkpoint of a random `resnet_mini` with random BatchNorm statistics and a "squash" spec.
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ipa_jax import convert, export, images, input_pipeline, models, scoring
from tests.conftest import REPO

SQUASH = {"size": 40, "resize": "squash", "resize_short_side": 40, "normalize": "imagenet"}


def random_images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def photos(shapes, seed: int = 0) -> list[np.ndarray]:
    """Smooth random pictures (gradients plus noise): JPEG keeps them recognisable."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in shapes:
        yy, xx = np.mgrid[:h, :w] / max(h, w)
        base = np.stack([yy, xx, (yy + xx) / 2], -1) * rng.uniform(100, 255, 3)
        out.append(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


def encoded(images, formats) -> list[bytes]:
    encode = {"jpeg": tf.io.encode_jpeg, "png": tf.io.encode_png}
    return [encode[f](im).numpy() for im, f in zip(images, formats, strict=True)]


def jax_scorer(scorer: scoring.Scorer) -> Callable[[np.ndarray], np.ndarray]:
    """The reference: uint8 images -> log-scores by the JAX scorer, jitted."""
    # Through a lambda: a Scorer holds dicts, so it cannot be hashed as a jitted function.
    jitted = jax.jit(lambda v, x: scorer(v, x))
    return lambda images: np.asarray(jitted(scorer.variables, images))


class Exported(NamedTuple):
    scorer: scoring.Scorer
    jax_scores: Callable[[np.ndarray], np.ndarray]
    loaded: object  # the SavedModel, as tf.saved_model.load gives it
    path: str


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> str:
    """A converted `resnet_mini` scorer: random weights, random BatchNorm statistics."""
    model = models.get_model("resnet_mini", num_classes=1)
    variables = jax.jit(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, SQUASH["size"], SQUASH["size"], 3)), train=False))()
    rng = np.random.default_rng(1)
    flat = {}
    for path, value in convert.flatten(jax.tree.map(np.asarray, variables)).items():
        if path.endswith(("/mean", "/bias")):
            value = value + rng.normal(0, 0.1, value.shape).astype(np.float32)
        elif path.endswith(("/var", "/scale")):
            value = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        flat[path] = value
    out = str(tmp_path_factory.mktemp("converted"))
    convert.write(out, convert.unflatten(flat), {
        "model": "resnet_mini", "num_classes": 1, "source": "random", "input": SQUASH})
    return out


@pytest.fixture(scope="module")
def exported(baseline, converted, tmp_path_factory) -> dict:
    """Source kind -> its `Exported`; "workdir" is the training tests' run (`conftest.baseline`)."""
    out = {}
    for kind, path in (("workdir", baseline), ("converted", converted)):
        target = tmp_path_factory.mktemp(f"export_{kind}")
        if kind == "converted":  # an earlier export to replace
            (target / export.EXPORT_METADATA).write_text("{}")
            (target / "stale.txt").write_text("old")
            export.export(path, str(target), overwrite=True)
        else:
            export.export(path, str(target))
        scorer = scoring.load_scorer(path)
        out[kind] = Exported(scorer, jax_scorer(scorer), tf.saved_model.load(str(target)),
                             str(target))
    return out


@pytest.mark.parametrize("kind", ["workdir", "converted"])
def test_score_pixels_matches_the_jax_scorer(exported, kind):
    scorer, jax_scores, loaded, _ = exported[kind]
    score_pixels = loaded.signatures["score_pixels"]
    scores = []
    for n in (1, 3):  # one SavedModel, two batch sizes
        images = random_images(n, scorer.spec.size, seed=n)
        got = score_pixels(images=tf.constant(images))
        want = jax_scores(images)
        print(f"{kind} score_pixels batch {n}: max |diff| = "
              f"{np.abs(got['score'].numpy() - want).max():.2e}")
        assert got["score"].shape == (n,)
        np.testing.assert_allclose(got["score"].numpy(), want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got["popularity"].numpy(), np.exp(want), rtol=1e-5)
        scores.extend(want)
    assert np.std(scores) > 0  # the images are told apart: the comparison means something


def test_empty_batch_gives_empty_outputs(exported):
    scorer, _, loaded, _ = exported["converted"]
    got = loaded.signatures["score_pixels"](
        images=tf.zeros((0, scorer.spec.size, scorer.spec.size, 3), tf.uint8))
    assert got["score"].shape == got["popularity"].shape == (0,)


def test_serving_default_crops_like_ipa_jax_evaluation(exported):
    scorer, jax_scores, loaded, _ = exported["workdir"]
    spec = scorer.spec
    assert spec.resize == "crop" and (spec.size, spec.resize_short_side) == (32, 36)
    pictures = photos([(50, 40), (36, 90), (64, 64)])
    data = encoded(pictures, ["jpeg", "png", "jpeg"])
    got = loaded.signatures["serving_default"](image_bytes=tf.constant(data))
    prepared = np.stack([input_pipeline.decode_and_crop(
        b, short_side=spec.resize_short_side, crop=spec.size).numpy() for b in data])
    want = jax_scores(prepared)
    print(f"workdir serving_default: max |diff| = {np.abs(got['score'].numpy() - want).max():.2e}")
    np.testing.assert_allclose(got["score"].numpy(), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["popularity"].numpy(), np.exp(want), rtol=1e-5)
    # The PNG is lossless: decoding it in the pipeline gives back the very picture.
    np.testing.assert_array_equal(tf.io.decode_png(data[1]).numpy(), pictures[1])


def test_serving_default_scores_the_rest_and_flags_bad_images(exported):
    """An undecodable image, a bomb or a non-image no longer fails the whole batch."""
    from tests.test_images import _bomb_png, _truncated_jpeg_pil_reads_but_tf_refuses

    scorer, jax_scores, loaded, _ = exported["workdir"]
    spec = scorer.spec
    good = encoded(photos([(50, 40), (36, 90)], seed=5), ["jpeg", "png"])
    bad = {"garbage": b"not an image", "empty": b"",
           "truncated": _truncated_jpeg_pil_reads_but_tf_refuses(),
           "bomb": _bomb_png(20000, 20000),  # 400 MP: refused from its header
           "cut png": tf.io.encode_png(photos([(8, 8)])[0]).numpy()[:40]}
    batch = [bad["garbage"], good[0], bad["empty"], bad["truncated"], good[1], bad["bomb"],
             bad["cut png"]]
    serve = loaded.signatures["serving_default"]
    start = time.perf_counter()
    got = {k: v.numpy() for k, v in serve(image_bytes=tf.constant(batch)).items()}
    print(f"serving_default, 7 images of which 5 bad: {time.perf_counter() - start:.2f} s")
    np.testing.assert_array_equal(got["valid"], [False, True, False, False, True, False, False])
    assert np.isnan(got["score"][~got["valid"]]).all()
    assert np.isnan(got["popularity"][~got["valid"]]).all()
    prepared = np.stack([input_pipeline.decode_and_crop(
        b, short_side=spec.resize_short_side, crop=spec.size).numpy() for b in good])
    np.testing.assert_allclose(got["score"][got["valid"]], jax_scores(prepared), atol=1e-5)
    np.testing.assert_allclose(got["popularity"][got["valid"]],
                               np.exp(got["score"][got["valid"]]), rtol=1e-6)
    nothing = {k: v.numpy() for k, v in serve(image_bytes=tf.constant([b"x", b""])).items()}
    assert not nothing["valid"].any() and np.isnan(nothing["score"]).all()


def test_serving_default_squashes_both_sides(exported):
    scorer, jax_scores, loaded, _ = exported["converted"]
    size = scorer.spec.size
    data = encoded(photos([(80, 60), (30, 100), (40, 40)], seed=3), ["png", "png", "jpeg"])
    got = loaded.signatures["serving_default"](image_bytes=tf.constant(data))
    # The documented preparation: both sides to `size`, bilinear with antialiasing, rounded.
    decoded = [tf.io.decode_image(b, channels=3).numpy() for b in data]
    prepared = np.stack([np.clip(np.round(tf.image.resize(
        p, (size, size), method="bilinear", antialias=True).numpy()), 0, 255).astype(np.uint8)
        for p in decoded])
    want = jax_scores(prepared)
    print(f"converted serving_default: max |diff| = "
          f"{np.abs(got['score'].numpy() - want).max():.2e}")
    np.testing.assert_allclose(got["score"].numpy(), want, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(
        np.stack([export.prepare_image(b, scorer.spec).numpy() for b in data]), prepared)
    # Close to PIL's bilinear squash (the released I2PA code), though not bit-identical.
    for picture, ours in zip(decoded, prepared, strict=True):
        pil = np.asarray(Image.fromarray(picture).resize((size, size), Image.BILINEAR), float)
        print(f"squash vs PIL: mean |diff| = {np.abs(ours - pil).mean():.2f}")
        assert np.abs(ours - pil).mean() < 1.0


def test_signatures_and_metadata(exported, baseline):
    scorer, _, loaded, target = exported["workdir"]
    size = scorer.spec.size
    (_, pixels), = [loaded.signatures["score_pixels"].structured_input_signature]
    (_, blobs), = [loaded.signatures["serving_default"].structured_input_signature]
    assert pixels["images"].dtype == tf.uint8
    assert pixels["images"].shape.as_list() == [None, size, size, 3]
    assert blobs["image_bytes"].dtype == tf.string
    assert blobs["image_bytes"].shape.as_list() == [None]
    assert set(loaded.signatures["score_pixels"].structured_outputs) == {"score", "popularity"}
    assert set(loaded.signatures["serving_default"].structured_outputs) == {
        "score", "popularity", "valid"}
    with open(os.path.join(target, export.EXPORT_METADATA)) as f:
        metadata = json.load(f)
    assert metadata["model"] == "resnet_mini" and metadata["max_pixels"] == images.MAX_PIXELS
    assert metadata["source"] == os.path.abspath(baseline)
    assert scoring.InputSpec(**metadata["input"]) == scorer.spec
    assert not os.path.exists(os.path.join(exported["converted"].path, "stale.txt"))


def test_fixed_batch_export(converted, tmp_path):
    export.export(converted, str(tmp_path / "fixed"), batch_polymorphic=False, batch_size=2,
                  platforms=("cpu",))
    loaded = tf.saved_model.load(str(tmp_path / "fixed"))
    (_, pixels), = [loaded.signatures["score_pixels"].structured_input_signature]
    assert pixels["images"].shape.as_list() == [2, 40, 40, 3]
    images = random_images(2, 40, seed=7)
    got = loaded.signatures["score_pixels"](images=tf.constant(images))["score"].numpy()
    np.testing.assert_allclose(got, jax_scorer(scoring.load_scorer(converted))(images),
                               rtol=0, atol=1e-5)


def test_non_empty_output_is_refused(converted, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty; pass --overwrite"):
        export.export(converted, str(tmp_path))
    assert os.listdir(tmp_path) == ["keep.txt"]
    # Even with --overwrite, never the directory that holds the model being exported.
    with pytest.raises(ValueError, match="holds the model being exported"):
        export.export(converted, os.path.dirname(converted), overwrite=True)
    assert os.path.isdir(converted)


def test_overwrite_replaces_only_an_earlier_export(converted, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match="is not an earlier export"):
        export.export(converted, str(mine), overwrite=True)
    assert os.listdir(mine) == ["thesis.tex"]
    # Refused before anything is read or written, whatever they hold.
    for output, why in (("/", "filesystem root"), ("~", "home directory")):
        with pytest.raises(ValueError, match=why):
            export.export(converted, os.path.expanduser(output), overwrite=True)
    monkeypatch.chdir(mine)
    (mine / export.EXPORT_METADATA).write_text("{}")  # even if it looks like an export
    for output in (".", str(tmp_path)):
        with pytest.raises(ValueError, match="working directory or a folder above it"):
            export.export(converted, output, overwrite=True)
    assert sorted(os.listdir(mine)) == [export.EXPORT_METADATA, "thesis.tex"]


def test_cli_damaged_model_is_one_line(tmp_path, converted):
    import shutil

    damaged = str(tmp_path / "damaged")
    shutil.copytree(converted, damaged)
    with open(os.path.join(damaged, convert.METADATA), "w") as f:
        f.write('{"model": "resnet_mini", "input": {}}')  # no num_classes
    with pytest.raises(ValueError, match="is not what `python -m ipa_jax.convert` writes"):
        export.export(damaged, str(tmp_path / "out"))
    proc = subprocess.run(
        [sys.executable, "-m", "ipa_jax.export", f"--model={damaged}",
         f"--output={tmp_path / 'out'}"],
        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Export failed:") and "KeyError: 'num_classes'" in last
    assert not os.path.exists(tmp_path / "out")


def test_cli_unknown_model_path_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ipa_jax.export", f"--model={tmp_path / 'nothing'}",
         f"--output={tmp_path / 'out'}"],
        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Export failed:") and "neither an ipa_jax workdir" in last
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "out")
