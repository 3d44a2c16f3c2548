# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The transformers annotators (`ipa_jax.annotate.hf_backends`) on tiny random models.

Each model is a real architecture (Depth Anything, RT-DETR + ViTPose, MobileViT-DeepLabV3, BLIP,
BERT) built from a tiny config and saved with its processor into a local folder once per
session; everything loads from those folders through `backends.load`, offline.
"""

import importlib
import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ipa_jax.annotate import backends  # noqa: E402

SIZES = [(64, 48), (60, 45), (50, 70)]  # the first two preprocess to one shape: a real batch
VOC = {0: "background", 1: "aeroplane", 2: "person"}
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "dog",
         "cat", "person", "on", "the", "beach", "##s"]


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No network: the Hub client's offline switch (read at import) and its variable."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def _save(folder, model, *processors) -> str:
    for obj in (model, *processors):
        obj.save_pretrained(folder)
    return str(folder)


def _relabel(src: str, dst, id2label: dict) -> str:
    """A copy of the model folder `src` whose config names its labels `id2label`."""
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
            g.write(f.read())
    with open(os.path.join(dst, "config.json")) as f:
        config = json.load(f)
    config["id2label"] = {str(i): name for i, name in id2label.items()}
    config["label2id"] = {name: i for i, name in id2label.items()}
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return str(dst)


def _depth(folder):
    backbone = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=28,
        patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 8, 16, 16],
        fusion_hidden_size=8, head_hidden_size=8)
    processor = transformers.DPTImageProcessorPil(
        size={"height": 42, "width": 42}, keep_aspect_ratio=True, ensure_multiple_of=14,
        resize_method="lower_bound")
    return _save(folder, transformers.DepthAnythingForDepthEstimation(config), processor)


def _detector(folder):
    labels = {0: "person", 1: "dog"}
    backbone = transformers.RTDetrResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic",
        out_features=["stage2", "stage3", "stage4"])
    config = transformers.RTDetrConfig(
        backbone_config=backbone, encoder_hidden_dim=16, encoder_in_channels=[16, 16, 32],
        encoder_ffn_dim=16, encoder_attention_heads=2, d_model=16, num_queries=10,
        decoder_in_channels=[16, 16, 16], decoder_ffn_dim=16, decoder_layers=1,
        decoder_attention_heads=2, decoder_n_points=2, num_denoising=0,
        id2label=labels, label2id={v: k for k, v in labels.items()})
    processor = transformers.RTDetrImageProcessorPil(size={"height": 64, "width": 64})
    return _save(folder, transformers.RTDetrForObjectDetection(config), processor)


def _pose(folder, num_keypoints=17):
    backbone = transformers.VitPoseBackboneConfig(
        image_size=[32, 24], patch_size=[8, 8], hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, mlp_ratio=2, out_indices=[1])
    config = transformers.VitPoseConfig(backbone_config=backbone, num_labels=num_keypoints)
    processor = transformers.VitPoseImageProcessorPil(size={"height": 32, "width": 24})
    return _save(folder, transformers.VitPoseForPoseEstimation(config), processor)


def _segmenter(folder):
    config = transformers.MobileViTConfig(
        image_size=64, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32],
        num_attention_heads=2, aspp_out_channels=16, atrous_rates=[1, 2, 3], output_stride=16,
        id2label=VOC, label2id={v: k for k, v in VOC.items()})
    processor = transformers.MobileViTImageProcessorPil(  # crops by default, as MobileViT's does
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    return _save(folder, transformers.MobileViTForSemanticSegmentation(config), processor)


def _tokenizer(folder):
    vocab = os.path.join(folder, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(WORDS) + "\n")
    return transformers.BertTokenizer(vocab=vocab, model_max_length=40, bos_token="[DEC]")


def _captioner(folder, tokenizer):
    text = transformers.BlipTextConfig(
        vocab_size=len(WORDS), hidden_size=16, encoder_hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=40,
        bos_token_id=WORDS.index("[DEC]"), eos_token_id=3, pad_token_id=0, sep_token_id=3)
    vision = transformers.BlipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8)
    config = transformers.BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                     projection_dim=16, image_text_hidden_size=16)
    processor = transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer)
    return _save(folder, transformers.BlipForConditionalGeneration(config), processor)


def _text(folder, tokenizer):
    config = transformers.BertConfig(
        vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=40)
    return _save(folder, transformers.BertModel(config), tokenizer)


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, str]:
    """name -> local folder of each tiny model (with its processor)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf_models")
    tokenizer = _tokenizer(str(root))
    out = {"depth": _depth(root / "depth"), "detector": _detector(root / "detector"),
           "pose": _pose(root / "pose"), "pose5": _pose(root / "pose5", num_keypoints=5),
           "segmenter": _segmenter(root / "segmenter"),
           "captioner": _captioner(root / "captioner", tokenizer),
           "text": _text(root / "text", tokenizer)}
    out["segmenter_no_bg"] = _relabel(out["segmenter"], root / "segmenter_no_bg",
                                      {0: "road", 1: "person", 2: "sky"})
    out["detector_no_person"] = _relabel(out["detector"], root / "detector_no_person",
                                         {0: "cat", 1: "dog"})
    return out


def _load(signal, folder, **options):
    return backends.load(signal, "transformers:" + folder, **options)


def _check_info(annotator, folder):
    info = annotator.info
    assert info["library"] == "transformers"
    assert info["weights"] == os.path.abspath(folder)
    assert info["transformers_version"] == transformers.__version__
    assert info["torch_version"] == torch.__version__
    assert json.loads(json.dumps(info)) == info  # the runner compares it with the recorded one


def _assert_same(a, b):
    """Outputs equal within 1e-5, recursively (arrays, lists, dicts, str)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, str):
        assert a == b
    else:
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   atol=1e-5)


def _batch_independent(signal, folder, images, **options):
    """Outputs of one batch of 3 == those of batches of 1; returns them."""
    together = _load(signal, folder, batch_size=3, **options)(images)
    alone = _load(signal, folder, batch_size=1, **options)
    _assert_same(together, [alone([image])[0] for image in images])
    return together


def test_depth(folders, images):
    annotator = _load("depth", folders["depth"])
    _check_info(annotator, folders["depth"])
    assert annotator.info["architecture"] == "DepthAnythingForDepthEstimation"
    assert annotator.info["output"] == "disparity"
    maps = _batch_independent("depth", folders["depth"], images)
    assert len(maps) == 3
    for m in maps:
        assert m.dtype == np.float32 and m.ndim == 2 and np.isfinite(m).all()
    assert maps[0].shape == maps[1].shape != maps[2].shape  # aspect ratio kept


def test_depth_negates_disparity(folders, images):
    processor = transformers.AutoImageProcessor.from_pretrained(folders["depth"])
    model = transformers.AutoModelForDepthEstimation.from_pretrained(folders["depth"]).eval()
    with torch.inference_mode():
        own = model(**processor(images=[images[2]], return_tensors="pt")).predicted_depth[0]
    np.testing.assert_allclose(_load("depth", folders["depth"])([images[2]])[0], -own.numpy(),
                               atol=1e-6)
    kept = _load("depth", folders["depth"], output="depth")
    assert kept.info["output"] == "depth"
    np.testing.assert_allclose(kept([images[2]])[0], own.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="disparity"):
        _load("depth", folders["depth"], output="inverse")


def test_keypoints(folders, images):
    options = {"detector": folders["detector"], "person_threshold": 0.0}
    annotator = _load("keypoints", folders["pose"], **options)
    _check_info(annotator, folders["pose"])
    assert annotator.info["architecture"] == "VitPoseForPoseEstimation"
    assert annotator.info["detector"] == {"architecture": "RTDetrForObjectDetection",
                                          "weights": os.path.abspath(folders["detector"])}
    people = _batch_independent("keypoints", folders["pose"], images, **options)
    assert len(people) == 3 and all(people)  # every image has a "person" at threshold 0
    for person in (p for found in people for p in found):  # (random heatmaps: x, y anywhere)
        kp = person["keypoints"]
        assert kp.dtype == np.float32 and kp.shape == (17, 3) and np.isfinite(kp).all()
        assert isinstance(person["score"], float) and person["score"] > 0.0
    best = _load("keypoints", folders["pose"], max_people=1, **options)(images)
    assert [len(found) for found in best] == [1, 1, 1]
    assert [b[0]["score"] for b in best] == [max(p["score"] for p in found) for found in people]


def test_keypoints_threshold_and_errors(folders, images):
    nobody = _load("keypoints", folders["pose"], detector=folders["detector"],
                   person_threshold=1.1)
    assert nobody(images) == [[], [], []]
    assert nobody.info["person_threshold"] == 1.1
    with pytest.raises(ValueError, match="'person' label"):
        _load("keypoints", folders["pose"], detector=folders["detector_no_person"])
    with pytest.raises(ValueError, match="5 keypoints"):
        _load("keypoints", folders["pose5"], detector=folders["detector"])
    with pytest.raises(ValueError, match="detector="):
        _load("keypoints", folders["pose"])


def test_background(folders, images):
    annotator = _load("background", folders["segmenter"])
    _check_info(annotator, folders["segmenter"])
    assert annotator.info["architecture"] == "MobileViTForSemanticSegmentation"
    assert annotator.info["background_labels"] == ["background"]  # VOC: only "background"
    masks = _batch_independent("background", folders["segmenter"], images)
    assert len(masks) == 3
    for image, mask in zip(images, masks, strict=True):
        assert mask.dtype == np.bool_ and mask.ndim == 2
        h, w = image.shape[:2]  # not center-cropped: the mask keeps the image's aspect ratio
        assert abs(mask.shape[0] / mask.shape[1] - h / w) < 0.05
    # Same weights, labels without "background": all but "person" is background, so a pixel
    # labelled 0 ("background" before, "road" now) is background in both.
    others = _load("background", folders["segmenter_no_bg"])
    assert others.info["background_labels"] == ["road", "sky"]
    for mask, other in zip(masks, others(images), strict=True):
        assert (other | ~mask).all()


def test_background_labels_option():
    from ipa_jax.annotate import hf_backends

    assert hf_backends.background_label_ids(VOC, ["Aeroplane", 0]) == [0, 1]
    assert hf_backends.background_label_ids({0: "person", 1: "car", 2: "sky"}, None) == [1, 2]
    with pytest.raises(ValueError, match="not among"):
        hf_backends.background_label_ids(VOC, ["sky"])
    with pytest.raises(ValueError, match="neither"):
        hf_backends.background_label_ids({0: "car", 1: "sky"}, None)


def test_captions(folders, images):
    annotator = _load("captions", folders["captioner"], max_new_tokens=5)
    _check_info(annotator, folders["captioner"])
    assert annotator.info["architecture"] == "BlipForConditionalGeneration"
    assert annotator.info["max_new_tokens"] == 5
    texts = _batch_independent("captions", folders["captioner"], images, max_new_tokens=5)
    assert len(texts) == 3
    assert all(isinstance(t, str) and t == t.strip() and "[" not in t for t in texts)


def test_text_embedder(folders):
    from ipa_jax.annotate import hf_backends

    embed = hf_backends.text_embedder(folders["text"])
    texts = ["a photo of a dog", "a cat on the beach", "a photo of a dog", "person"]
    rows = embed(texts)
    assert rows.dtype == np.float32 and rows.shape == (4, embed.dim) == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert rows[0] @ rows[2] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(hf_backends.text_embedder(folders["text"], batch_size=1)(texts),
                               rows, atol=1e-5)  # padding does not change a row
    assert embed([]).shape == (0, 16)
    assert embed.info["weights"] == os.path.abspath(folders["text"])


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    monkeypatch.delitem(sys.modules, "ipa_jax.annotate.hf_backends", raising=False)
    importlib.invalidate_caches()
    with pytest.raises(backends.MissingExtra, match="annotate-torch"):
        backends.load("depth", "transformers:/nowhere")


def test_the_command_end_to_end_resumes_after_a_kill(folders, tiny_raw, tmp_path, capsys):
    """`python -m data_prep.annotate` on the embedded tiny dataset (its own sidecars removed)
    with every signal's tiny model: killed (SIGKILL) while writing captions, the last signal,
    then rerun (in this process): the finished files are kept untouched and not recomputed,
    every sidecar is written in its format at the image's size, the broken image is counted."""
    import shutil
    import signal
    import subprocess
    import time

    from PIL import Image

    from ipa_jax.annotate import runner, sidecars
    from ipa_jax.retrieval import pose
    from tests.conftest import REPO

    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw, ignore=shutil.ignore_patterns(
        "depth", "keypoints", "background", "captions"))
    cmd = [sys.executable, "-m", "data_prep.annotate", f"--raw_dir={raw}", "--quiet",
           "--batch_size=4", f"--depth_model=transformers:{folders['depth']}",
           f"--keypoints_model=transformers:{folders['pose']}",
           f"--person_detector={folders['detector']}",
           f"--background_model=transformers:{folders['segmenter']}",
           f"--captions_model=transformers:{folders['captioner']}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    captions = raw / "captions"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
            captions.is_dir() and len(os.listdir(captions)) >= 8):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {os.path.join(d, n): os.stat(raw / d / n).st_mtime_ns
              for d in ("depth", "keypoints", "background", "captions")
              for n in os.listdir(raw / d)}
    assert runner.read_summary(str(raw))["captions"]["status"] == "running"

    from data_prep import annotate as annotate_cli

    annotate_cli.main(cmd[3:])
    stdout = capsys.readouterr().out
    summary = runner.read_summary(str(raw))
    posts = summary["depth"]["posts"]
    for name in ("depth", "keypoints", "background"):
        assert summary[name]["already_done"] == posts - 1 and summary[name]["written"] == 0
    assert summary["captions"]["already_done"] >= 8
    assert summary["captions"]["written"] == posts - 1 - summary["captions"]["already_done"]
    for name in ("depth", "keypoints", "background", "captions"):
        assert summary[name]["failed"] == {"unreadable image": 1}, name
    for path, mtime in before.items():
        assert os.stat(raw / path).st_mtime_ns == mtime, path  # not recomputed
    assert "captions: " in stdout and "1 unreadable image" in stdout

    for name in os.listdir(raw / "depth"):  # formats, at the image's size (48 px)
        post_id = name[:-4]
        with Image.open(raw / "depth" / name) as d, \
                Image.open(sidecars.path_of(str(raw), "background", post_id)) as b:
            assert d.mode.startswith("I") and d.size == (48, 48)
            assert b.mode == "L" and b.size == (48, 48)
            assert set(np.unique(np.asarray(b))) <= {0, 255}
        people = pose.read_keypoints(sidecars.path_of(str(raw), "keypoints", post_id))
        assert all(kp.shape == (17, 3) for kp in people)
        with open(sidecars.path_of(str(raw), "captions", post_id), encoding="utf-8") as f:
            assert "\n" not in f.read()


def test_a_sentence_encoder_embeds_captions_for_s_c(folders):
    """caption_encoder="transformers:<folder>": unit rows, zero rows for missing captions, and
    the encoder's width even for a batch without any caption (Beam stacks batches)."""
    from ipa_jax.data import captions

    spec = "transformers:" + folders["text"]
    rows = captions.embed_captions(["a dog on the beach", None, "a dog on the beach"], spec)
    assert rows.shape == (3, 16) and not rows[1].any()
    np.testing.assert_allclose(np.linalg.norm(rows[0]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(rows[0], rows[2], atol=1e-6)
    assert captions.embed_captions([None, None], spec).shape == (2, 16)
