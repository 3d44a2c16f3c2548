# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The Keras Hub annotators (`ipa_jax.annotate.keras_hub_backends`) on tiny random models.

Each model is a real Keras Hub architecture (Depth Anything on a DINOv2 backbone, DeepLabV3 on a
ResNet, PaliGemma with a sentencepiece vocabulary trained here) built from a tiny config and
saved with `save_to_preset` once per session; the annotators load them from those folders
through `backends.load`, offline. XLA optimisations are off while this file builds and compiles
(tiny models, compile bound on CPU) and restored afterwards.
"""

import io
import os
import sys

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")  # as the backend module does, before keras
keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402

if keras.backend.backend() != "jax":  # `import tensorflow` imports keras, on its default backend
    pytest.skip(f"keras was imported with the {keras.backend.backend()!r} backend before this "
                f"module; set KERAS_BACKEND=jax before anything imports tensorflow or keras",
                allow_module_level=True)

from ipa_jax.annotate import backends  # noqa: E402
from tests.conftest import fast_compiles  # noqa: E402

layers, models = keras_hub.layers, keras_hub.models

SIZES = [(40, 30), (33, 47), (28, 28)]  # the last one is the depth model's input size
DEPTH_SIZE, SEGMENT_SIZE, CAPTION_SIZE = 28, 32, 16
NUM_CLASSES = 3


@pytest.fixture(scope="module", autouse=True)
def unoptimised_xla():
    with fast_compiles():
        yield


def _depth_preset(folder) -> str:
    encoder = models.DINOV2Backbone(
        patch_size=14, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
        image_shape=(DEPTH_SIZE, DEPTH_SIZE, 3), position_embedding_shape=(DEPTH_SIZE, DEPTH_SIZE))
    backbone = models.DepthAnythingBackbone(
        image_encoder=encoder, reassemble_factors=[4, 2], neck_hidden_dims=[8, 8],
        fusion_hidden_dim=8, head_hidden_dim=8, head_in_index=-1,
        feature_keys=["stage1", "stage2"])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as the presets
    converter = layers.DepthAnythingImageConverter(
        image_size=(DEPTH_SIZE, DEPTH_SIZE), scale=[1 / 255 / s for s in std],
        offset=[-m / s for m, s in zip(mean, std, strict=True)], interpolation="bicubic")
    preprocessor = models.DepthAnythingDepthEstimatorPreprocessor(converter)
    task = models.DepthAnythingDepthEstimator(backbone, depth_estimation_type="relative",
                                              preprocessor=preprocessor)
    task.save_to_preset(str(folder))
    return str(folder)


def _segment_preset(folder) -> str:
    """DeepLabV3+ on a tiny ResNet, 3 classes; its converter leaves the input size open."""
    encoder = models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 8, 8],
        stackwise_num_blocks=[1, 1, 1], stackwise_num_strides=[1, 2, 2],
        block_type="basic_block")
    backbone = models.DeepLabV3Backbone(
        image_encoder=encoder, low_level_feature_key="P2", spatial_pyramid_pooling_key="P4",
        dilation_rates=[1, 2], upsampling_size=4, projection_filters=8)
    converter = layers.DeepLabV3ImageConverter(scale=1 / 255)
    task = models.DeepLabV3ImageSegmenter(
        backbone, num_classes=NUM_CLASSES,
        preprocessor=models.DeepLabV3ImageSegmenterPreprocessor(converter))
    # Random features barely vary across pixels, so every pixel would get one class. Classes 0
    # and 1 instead score +-(the features' main variation on the probe), class 2 scores 0.
    features = np.asarray(backbone.predict_on_batch(_probe()[None] / 255.0))
    features = features.reshape(-1, features.shape[-1])
    mean = features.mean(0)
    direction = np.linalg.svd(features - mean, full_matrices=False)[2][0]
    direction -= direction @ mean / (mean @ mean) * mean
    kernel = np.stack([direction, -direction, np.zeros_like(direction)], -1)
    task.output_conv.kernel.assign(100 * kernel[None, None])
    task.save_to_preset(str(folder))
    return str(folder)


def _probe() -> np.ndarray:
    """An image at the segmenter's input size."""
    return np.random.default_rng(1).integers(0, 256, (SEGMENT_SIZE, SEGMENT_SIZE, 3), np.uint8)


def _vocabulary() -> bytes:
    spm = pytest.importorskip("sentencepiece")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["caption en", "a photo of a cat", "a dog on the grass"]),
        model_writer=proto, vocab_size=14, model_type="WORD", pad_id=0, bos_id=1, eos_id=2,
        unk_id=3, pad_piece="<pad>", bos_piece="<bos>", eos_piece="<eos>", unk_piece="<unk>",
        minloglevel=2)
    return proto.getvalue()


def _caption_preset(folder) -> str:
    tokenizer = models.PaliGemmaTokenizer(proto=_vocabulary())
    converter = layers.PaliGemmaImageConverter(
        image_size=(CAPTION_SIZE, CAPTION_SIZE), scale=1 / 127.5, offset=-1.0)
    preprocessor = models.PaliGemmaCausalLMPreprocessor(tokenizer, converter, sequence_length=16)
    backbone = models.PaliGemmaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), image_size=CAPTION_SIZE, num_layers=1,
        num_query_heads=2, num_key_value_heads=1, hidden_dim=8, intermediate_dim=16, head_dim=4,
        vit_patch_size=8, vit_num_heads=2, vit_hidden_dim=8, vit_num_layers=1,
        vit_intermediate_dim=16)
    task = models.PaliGemmaCausalLM(preprocessor=preprocessor, backbone=backbone)
    task.save_to_preset(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def presets(tmp_path_factory) -> dict[str, str]:
    """signal -> a tiny random preset folder."""
    root = tmp_path_factory.mktemp("keras_hub")
    keras.utils.set_random_seed(0)
    with fast_compiles():
        return {"depth": _depth_preset(root / "depth"),
                "background": _segment_preset(root / "background"),
                "captions": _caption_preset(root / "captions")}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def _load(presets, signal, **options):
    return backends.load(signal, "keras_hub:" + presets[signal], **options)


@pytest.fixture(scope="module")
def depth3(presets):
    return _load(presets, "depth", batch_size=3)


@pytest.fixture(scope="module")
def depth1(presets):
    """One image a batch, and the model's output taken as depth: not negated."""
    return _load(presets, "depth", batch_size=1, output="depth")


@pytest.fixture(scope="module")
def background3(presets):
    return _load(presets, "background", batch_size=3, image_size=(SEGMENT_SIZE, SEGMENT_SIZE))


@pytest.fixture(scope="module")
def background1(presets):
    """One image a batch, classes 1 and 2 as background: the complement of class 0."""
    return _load(presets, "background", batch_size=1, background_classes=(1, 2),
                 image_size=(SEGMENT_SIZE, SEGMENT_SIZE))


def _model_output(task, image):
    """The task's own prediction for one image already at its input size."""
    out = task.predict_on_batch(image[None].astype(np.float32))
    return np.asarray(out["depths"] if isinstance(out, dict) else out)[0]


def test_depth_contract_and_info(depth3, images, presets):
    maps = depth3(images)
    assert len(maps) == 3
    for m in maps:
        assert m.dtype == np.float32 and m.shape == (DEPTH_SIZE, DEPTH_SIZE)
        assert np.all(np.isfinite(m)) and np.all(m <= 0)  # negated ReLU disparity
    info = depth3.info
    assert info["library"] == "keras_hub" and info["backend"] == "jax"
    assert info["architecture"] == "DepthAnythingDepthEstimator"
    assert info["weights"] == os.path.abspath(presets["depth"])
    assert info["settings"]["output"] == "disparity" and info["settings"]["negated"]
    assert info["keras_hub_version"] and info["keras_version"]


def test_depth_batch_independent(depth3, depth1, images):
    for a, b in zip(depth3(images), depth1(images), strict=True):
        np.testing.assert_allclose(a, -b, atol=1e-5)
    # A short batch is padded to batch_size; the padding does not leak into the outputs.
    np.testing.assert_allclose(depth3(images[1:2])[0], depth3(images)[1], atol=1e-5)


def test_depth_negates_the_model_disparity(depth3, depth1, presets, images):
    task = models.DepthAnythingDepthEstimator.from_preset(presets["depth"])
    image = images[2]  # already at the input size: resizing leaves it as is
    disparity = _model_output(task, image)[..., 0]
    assert np.ptp(disparity) > 0
    np.testing.assert_allclose(depth3([image])[0], -disparity, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(depth1([image])[0], disparity, rtol=1e-5, atol=1e-5)
    assert depth1.info["settings"]["output"] == "depth" and not depth1.info["settings"]["negated"]


def test_depth_pad_crops_back_to_the_image(depth3, presets, images):
    maps = _load(presets, "depth", batch_size=3, resize="pad")(images)
    for (h, w), m in zip(SIZES, maps, strict=True):
        assert m.dtype == np.float32 and max(m.shape) == DEPTH_SIZE
        assert abs(m.shape[0] / m.shape[1] - h / w) < 0.1
    np.testing.assert_allclose(maps[2], depth3(images[2:])[0], atol=1e-5)  # square: no padding


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_geometry_is_keras_resizing_without_crop(images, resize):
    """The host-side resize equals the converter's own, with padding instead of cropping."""
    from ipa_jax.annotate import keras_hub_backends

    converter = layers.DepthAnythingImageConverter(
        image_size=(DEPTH_SIZE, DEPTH_SIZE), crop_to_aspect_ratio=False,
        pad_to_aspect_ratio=resize == "pad")
    for image in images:
        batch, _ = keras_hub_backends._prepare([image], converter.image_size, converter, resize)
        expected = np.asarray(converter(image.astype(np.float32)))
        np.testing.assert_allclose(batch[0], expected, atol=1e-3)


def test_background_contract_and_batches(background3, background1, images):
    masks = background3(images)
    assert len(masks) == 3
    for m in masks:
        assert m.dtype == np.bool_ and m.shape == (SEGMENT_SIZE, SEGMENT_SIZE)
    for a, b in zip(masks, background1(images), strict=True):
        np.testing.assert_array_equal(a, ~b)  # classes {0} and {1, 2} split every pixel
    info = background3.info
    assert info["architecture"] == "DeepLabV3ImageSegmenter"
    assert info["settings"]["background_classes"] == [0]
    assert info["settings"]["image_size"] == [SEGMENT_SIZE, SEGMENT_SIZE]


def test_background_is_the_class_rule(background3, background1, presets):
    task = models.DeepLabV3ImageSegmenter.from_preset(presets["background"])
    image = _probe()
    classes = np.argmax(_model_output(task, image), axis=-1)
    assert set(np.unique(classes)) == {0, 1}
    np.testing.assert_array_equal(background3([image])[0], classes == 0)
    np.testing.assert_array_equal(background1([image])[0], np.isin(classes, (1, 2)))


def test_captions(presets, images):
    captions = _load(presets, "captions", batch_size=3, max_length=10)
    texts = captions(images)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert captions(images[1:2]) == texts[1:2]  # alone, padded to batch_size 3
    assert captions.info["architecture"] == "PaliGemmaCausalLM"
    assert captions.info["settings"]["prompt"] == "caption en\n"

    task = models.PaliGemmaCausalLM.from_preset(presets["captions"])
    task.compile(sampler="greedy")
    image = images[2][:CAPTION_SIZE, :CAPTION_SIZE]
    full = task.generate({"images": image[None].astype(np.float32), "prompts": ["caption en\n"]},
                         max_length=10)[0]
    assert full.startswith("caption en")
    assert captions([image])[0] == full[len("caption en"):].strip()


def test_bad_options(presets):
    with pytest.raises(ValueError, match="resize"):
        _load(presets, "depth", resize="crop")
    with pytest.raises(ValueError, match="output"):
        _load(presets, "depth", output="inverse")
    with pytest.raises(ValueError, match="background_classes"):
        _load(presets, "background", background_classes=(NUM_CLASSES,), image_size=(32, 32))
    with pytest.raises(ValueError, match="no keypoints"):
        backends.load("keypoints", "keras_hub:" + presets["depth"])


def test_other_backend_is_an_error(monkeypatch):
    from ipa_jax.annotate import keras_hub_backends

    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(RuntimeError, match="need the JAX backend"):
        keras_hub_backends._require_jax_backend()


def test_missing_keras_hub_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    monkeypatch.delitem(sys.modules, "ipa_jax.annotate.keras_hub_backends", raising=False)
    with pytest.raises(backends.MissingExtra, match="annotate-jax"):
        backends.load("depth", "keras_hub:depth_anything_v2_small")


def test_the_command_annotates_the_tiny_dataset(presets, tiny_raw, tmp_path):
    """`data_prep.annotate` with the Keras Hub models (the command's defaults for depth and
    background) on the embedded tiny dataset, its own sidecars removed: every readable post
    gets each sidecar at the image's size. One influencer's posts (`--top_users=1`): the tiny
    models run without XLA's optimisations here."""
    import shutil

    from PIL import Image

    from data_prep import annotate as annotate_cli

    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw, ignore=shutil.ignore_patterns(
        "depth", "keypoints", "background", "captions"))
    segmenter = models.DeepLabV3ImageSegmenter.from_preset(presets["background"])
    segmenter.preprocessor.image_converter.image_size = (SEGMENT_SIZE, SEGMENT_SIZE)
    segmenter.save_to_preset(str(tmp_path / "segmenter"))  # a preset with its input size
    specs = {**presets, "background": str(tmp_path / "segmenter")}
    summary = annotate_cli.main([
        f"--raw_dir={raw}", "--what=depth,background,captions", "--quiet", "--batch_size=8",
        "--top_users=1",
        *(f"--{s}_model=keras_hub:{specs[s]}" for s in ("depth", "background", "captions"))])
    for signal in ("depth", "background", "captions"):
        entry = summary[signal]
        assert entry["failed"] == {}, signal
        assert entry["written"] == entry["posts"] > 10 and entry["model"]["library"] == "keras_hub"
        assert len(os.listdir(raw / signal)) == entry["written"]
    for name in os.listdir(raw / "depth"):
        with Image.open(raw / "depth" / name) as d, Image.open(raw / "background" / name) as b:
            assert d.mode.startswith("I") and d.size == b.size == (48, 48) and b.mode == "L"
        caption = (raw / "captions" / (name[:-4] + ".txt")).read_text(encoding="utf-8")
        assert "\n" not in caption and not caption.startswith("caption en")  # prompt stripped
