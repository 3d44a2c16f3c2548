# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The `ipa-score --report` page (`ipa_jax.score_report`): self-contained, best first, names
escaped, the heatmaps of the pixels the model saw; and, in headless Chromium opened from disk
with no network, every thumbnail and heatmap loads and the page is not blank."""

import base64
import io
import os
import re
import shutil
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ipa_jax import gradcam, model_card, models, score, score_report, scoring
from tests.conftest import fast_compiles, random_variables

SIZE = 64  # resnet_mini's feature map is 2 x 2 at 64 px
ODD = 'a<&"b>.png'  # a file name that HTML must escape


def _photo(seed: int, shape=(72, 96)) -> np.ndarray:
    """Blocky random colours with a bright square somewhere: images that score differently."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (shape[0] // 8, shape[1] // 8, 3)).astype(np.uint8)
    pixels = np.repeat(np.repeat(coarse, 8, 0), 8, 1)
    y, x = rng.integers(0, shape[0] - 24), rng.integers(0, shape[1] - 24)
    pixels[y:y + 24, x:x + 24] = rng.integers(150, 256, 3)
    return pixels


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One report of four images (one with an odd name) and a broken file, scored by a tiny
    random resnet_mini with a model card; what `report_for_scorer` handed `write_report`."""
    root = tmp_path_factory.mktemp("report")
    names = ["p0.png", ODD, "p2.jpg", "p3.png"]
    paths = []
    for seed, name in enumerate(names):
        Image.fromarray(_photo(seed)).save(root / name)
        paths.append(str(root / name))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    paths.insert(2, str(root / "broken.jpg"))
    model = models.get_model("resnet_mini", num_classes=1)
    spec = scoring.InputSpec(SIZE, "squash", normalize="unit")
    variables = random_variables(model, jnp.zeros((1, SIZE, SIZE, 3)))
    scorer = scoring.Scorer(model, variables, spec, objective="likes_ratio")
    with fast_compiles():
        kept, scores, skipped = score.score_files(scorer, paths, batch_size=4)
        card = model_card.build(model="resnet_mini", objective="likes_ratio",
                                preprocessing={"size": SIZE}, trained_on={},
                                test_scores=np.linspace(scores.min() - 0.5,
                                                        scores.max() + 0.5, 200))
        scorer = scoring.Scorer(model, scorer.variables, spec, objective="likes_ratio",
                                card=card)
        out = str(root / "out" / "report.html")
        captured = {}
        original = score_report.write_report

        def capture(*args, **kwargs):
            captured.update(args=args, kwargs=kwargs)
            return original(*args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(score_report, "write_report", capture)
            score_report.report_for_scorer(scorer, kept, scores, skipped, out, batch_size=2)
        pixels, _, _ = score.load_images(kept, spec)
        expected_heat = gradcam.for_scorer(scorer, pixels)
    with open(out, encoding="utf-8") as f:
        text = f.read()
    return dict(html=text, path=out, kept=kept, scores=scores, skipped=skipped, card=card,
                captured=captured, pixels=pixels, heat=expected_heat, root=root)


def test_report_is_self_contained_sorted_and_escaped(report):
    text, kept, scores = report["html"], report["kept"], report["scores"]
    assert len(kept) == 4 and [os.path.basename(p) for p, _ in report["skipped"]] == [
        "broken.jpg"]
    # Nothing from the network: every src and href is inline, and no URL appears at all.
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert "http://" not in text and "https://" not in text
    sources = re.findall(r"""<img[^>]*\ssrc="([^"]*)\"""", text)
    assert len(sources) == 2 * len(kept) and text.count("<img") == len(sources)
    assert all(s.startswith(("data:image/jpeg;base64,", "data:image/png;base64,"))
               for s in sources)
    assert "Content-Security-Policy" in text and 'data-expected="8"' in text
    # The gallery, best first, in the scores' order.
    ranks = [int(r) for r in re.findall(r'class="item" data-rank="(\d+)"', text)]
    shown = [float(s) for s in re.findall(r'data-score="([-\d.e+]+)"', text)]
    names = re.findall(r'<span class="name" title="([^"]*)">', text)
    order = np.argsort(-scores, kind="stable")
    assert ranks == [1, 2, 3, 4] and np.ptp(scores) > 1e-4
    np.testing.assert_allclose(shown, scores[order], atol=1e-5)
    escaped = [p.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
               .replace('"', "&quot;") for p in kept]
    assert names == [escaped[i] for i in order]
    # Names escaped everywhere; the raw odd name nowhere.
    assert 'a&lt;&amp;&quot;b&gt;.png' in text and 'a<&"b>' not in text
    # Percentiles and levels against the card; the histogram with the test distribution.
    pct = model_card.percentiles(report["card"], scores[order])
    for p, level in zip(pct, model_card.levels(pct), strict=True):
        assert f'percentile {p:.1f} <span class="level">({level})</span>' in text
    assert '<svg id="histogram"' in text and 'id="test-distribution"' in text
    assert text.count('class="bar"') >= 1 and "the model card's test set (200 images)" in text
    assert "likes-ratio loss" in text and "resnet_mini" in text
    # The skipped file, with its reason.
    skipped = re.search(r'<table id="skipped">(.*?)</table>', text, re.S).group(1)
    assert "broken.jpg" in skipped and "Error" in skipped


def test_report_shows_the_heatmaps_of_the_pixels_the_model_saw(report):
    args, kwargs = report["captured"]["args"], report["captured"]["kwargs"]
    path, items, scores, heat = args
    assert path == report["path"] and items == report["kept"]
    np.testing.assert_allclose(scores, report["scores"])
    np.testing.assert_array_equal(np.stack(kwargs["pixels"]), report["pixels"])
    np.testing.assert_allclose(np.stack(heat), report["heat"], atol=1e-6)
    assert np.stack(heat).shape == (4, SIZE, SIZE) and 0 <= np.min(heat) <= np.max(heat) <= 1
    assert np.max(heat) == pytest.approx(1.0)  # some cell is hot: the overlays are not flat
    assert kwargs["card"] is report["card"] and kwargs["skipped"] == report["skipped"]
    # The best image's overlay, decoded: the thumbnail's size, its colours from the heatmap.
    first = re.search(r'class="heatmap" src="data:image/png;base64,([^"]+)"',
                      report["html"]).group(1)
    with Image.open(io.BytesIO(base64.b64decode(first))) as png:
        assert png.format == "PNG" and png.size == (score_report.THUMB, score_report.THUMB)


def test_colormap_and_overlay():
    np.testing.assert_array_equal(score_report.colormap(np.array([0.0, 1.0, np.nan])),
                                  [[0, 0, 143], [128, 0, 0], [0, 0, 143]])
    grey = np.full((8, 8, 3), 100, np.uint8)
    heat = np.zeros((2, 2))
    heat[0, 0] = 1.0  # the top-left quarter hot: dark red over it, dark blue elsewhere
    mixed = score_report.overlay(grey, heat)
    assert mixed.shape == (8, 8, 3)
    np.testing.assert_array_equal(mixed[0, 0], [114, 50, 50])
    np.testing.assert_array_equal(mixed[-1, -1], [50, 50, 122])


def test_report_without_card_or_images(tmp_path):
    out = tmp_path / "empty.html"
    score_report.write_report(str(out), [], [], [], skipped=[("x<y.jpg", "no such file")])
    text = out.read_text()
    assert "No model card" in text and "No image was scored" in text
    assert "x&lt;y.jpg" in text and "<img" not in text
    pixels = np.zeros((1, 16, 16, 3), np.uint8)
    card = model_card.build(model="m", objective="", preprocessing={}, trained_on={})
    score_report.write_report(str(out), ["/a/b.png"], [0.5], np.zeros((1, 2, 2)),
                              pixels=pixels, card=card)
    text = out.read_text()
    assert "no test distribution" in text and "percentile" not in text
    assert 'id="test-distribution"' not in text and text.count("<img") == 2
    with pytest.raises(ValueError, match="one of each"):
        score_report.write_report(str(out), ["a", "b"], [0.5], np.zeros((1, 2, 2)))


def _chromium() -> str:
    """The Chromium binary; skipped when absent, except on CI, which must run this test."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: CI must run the browser check "
                    "(apt-get install chromium).")
    pytest.skip("headless Chromium absent: apt-get install chromium")


def _headless(binary: str, profile, *args) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_every_image_loads_in_headless_chromium(report, tmp_path):
    binary = _chromium()
    url = "file://" + os.path.abspath(report["path"])
    proc = _headless(binary, tmp_path / "profile", "--dump-dom", url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = re.search(r'<p id="load-status"[^>]*>', proc.stdout)
    assert status, proc.stdout[:2000]
    attrs = dict(re.findall(r'(data-[a-z]+)="(\d+)"', status.group(0)))
    assert attrs == {"data-expected": "8", "data-total": "8", "data-loaded": "8"}, attrs
    shot = tmp_path / "shot.png"
    proc = _headless(binary, tmp_path / "profile", f"--screenshot={shot}",
                     "--window-size=1200,1600", url)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-3000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), np.float32)
    assert pixels.shape[:2] == (1600, 1200) and pixels.std() > 10
