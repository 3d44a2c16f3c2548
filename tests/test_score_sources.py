# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""One model, three ways to score files: `ipa-score` on a workdir, the Python API on the same
workdir, and `ipa-score` on its SavedModel export (`scoring.ExportedScorer`). They must give
the same log-scores, the same order, the same skipped files and the same percentiles.

The workdir is the shared tiny training run (`conftest.baseline`: a "crop" spec and a model
card with a test distribution); it is exported once for the module.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from ipa_jax import export, model_card, score, scoring

ATOL = 2e-5  # the SavedModel runs the same StableHLO through TF's XlaCallModule


@pytest.fixture(scope="module")
def sources(baseline, tmp_path_factory) -> dict[str, str]:
    """{"workdir": the tiny trained run, "export": its SavedModel (any batch size)}."""
    out = str(tmp_path_factory.mktemp("sources") / "export")
    export.export(baseline, out, platforms=("cpu",))
    return {"workdir": baseline, "export": out}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[str]:
    """Five pictures of different sizes and formats, and a broken file in the middle."""
    directory = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w, ext) in enumerate([(48, 64, "jpg"), (90, 40, "png"), (33, 33, "png"),
                                     (120, 80, "jpg"), (50, 150, "png")]):
        yy, xx = np.mgrid[:h, :w] / max(h, w)
        base = np.stack([yy, xx, (yy + xx) / 2], -1) * rng.uniform(60, 255, 3)
        pixels = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        path = str(directory / f"p{i}.{ext}")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    broken = directory / "broken.jpg"
    with open(paths[0], "rb") as f:
        broken.write_bytes(f.read()[:60])  # a JPEG header, then nothing
    paths.insert(2, str(broken))
    return paths


def _cli_json(model: str, paths: list[str], out) -> dict:
    score.main([f"--model={model}", "--format=json", f"--output={out}", "--quiet",
                "--batch_size=4", *paths])  # batches of 4: the last one is padded
    return json.loads(out.read_text())


def test_cli_api_and_export_give_the_same_scores(sources, files, tmp_path):
    cli = _cli_json(sources["workdir"], files, tmp_path / "workdir.json")
    exported = _cli_json(sources["export"], files, tmp_path / "export.json")
    api = scoring.Scorer.from_dir(sources["workdir"])
    kept, scores, skipped = api.score(files)
    assert isinstance(scoring.Scorer.from_dir(sources["export"]), scoring.ExportedScorer)

    broken = files[2]
    assert kept == [p for p in files if p != broken]
    assert [p for p, _ in skipped] == [broken] and skipped[0][1]
    assert np.ptp(scores) > 1e-4  # the pictures are told apart: the comparison means something
    api_best_first = [kept[i] for i in np.argsort(-scores, kind="stable")]
    for result in (cli, exported):
        assert [r["path"] for r in result["scores"]] == api_best_first
        assert [r["rank"] for r in result["scores"]] == list(range(1, len(kept) + 1))
        assert result["skipped"] == [{"path": broken, "reason": skipped[0][1]}]
        got = {r["path"]: r["log_score"] for r in result["scores"]}
        np.testing.assert_allclose([got[p] for p in kept], scores, rtol=0, atol=ATOL)
    diff = max(abs(a["log_score"] - b["log_score"])
               for a, b in zip(cli["scores"], exported["scores"], strict=True))
    print(f"workdir vs export: max |log-score diff| = {diff:.2e}")


def test_export_reports_the_same_percentiles_and_levels(sources, files, tmp_path):
    card = model_card.read(sources["workdir"])
    assert card and card["test_distribution"]["quantiles"]  # the run's test distribution
    assert model_card.read(sources["export"]) == card  # copied beside the SavedModel
    cli = _cli_json(sources["workdir"], files, tmp_path / "workdir.json")
    exported = _cli_json(sources["export"], files, tmp_path / "export.json")
    for a, b in zip(cli["scores"], exported["scores"], strict=True):
        assert a["path"] == b["path"]
        assert b["percentile"] == pytest.approx(a["percentile"], abs=0.02)
        assert b["level"] == a["level"]
    assert all(r["level"] in model_card.LEVELS for r in exported["scores"])


def test_compare_overrides_and_a_fixed_batch_export(sources, files, tmp_path, capsys):
    workdir, exported = (scoring.load_scorer(sources[k]) for k in ("workdir", "export"))
    assert exported.objective == workdir.objective != ""
    assert exported.spec == workdir.spec
    said = []
    for model in (sources["workdir"], sources["export"]):  # `ipa-score compare`
        score.main(["compare", f"--model={model}", files[0], files[1]])
        said.append(capsys.readouterr().out.strip().splitlines())
    assert [line.split(" = ")[0] for line in said[1]] == [line.split(" = ")[0]
                                                         for line in said[0]]
    assert len(said[1]) == 3  # one reading: the objective the run recorded
    assert float(said[1][-1].split(" = ")[-1]) == pytest.approx(
        float(said[0][-1].split(" = ")[-1]), abs=2e-4)
    # The host-side resize can be overridden; the normalisation is inside the SavedModel.
    squash = [scoring.with_input(s, resize="squash") for s in (workdir, exported)]
    (_, want, _), (_, got, _) = (s.score(files) for s in squash)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    other = "imagenet" if exported.spec.normalize == "unit" else "unit"
    with pytest.raises(ValueError, match="inside the SavedModel"):
        scoring.with_input(exported, normalize=other)
    with pytest.raises(ValueError, match="already an export"):
        export.export(sources["export"], str(tmp_path / "again"))
    # A fixed-batch export (2 images a call) scores any number: zero-padded chunks.
    fixed = str(tmp_path / "fixed")
    export.export(sources["workdir"], fixed, batch_polymorphic=False, batch_size=2,
                  platforms=("cpu",))
    kept, got, skipped = scoring.load_scorer(fixed).score(files, batch_size=3)
    _, want, _ = workdir.score(files)
    assert len(kept) == 5 and len(skipped) == 1
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    assert os.path.isfile(os.path.join(fixed, model_card.CARD_MD))
