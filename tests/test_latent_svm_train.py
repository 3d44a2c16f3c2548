# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The latent SVM through the shared loop: cached features, the Table 3/5 grid, the report."""

import csv
import json
import os
import re
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

from ipa_jax import features, latent_svm_table, sharding, train
from tests.conftest import load_config


@pytest.fixture(scope="module")
def grid(tiny_raw, tmp_path_factory):
    # Prepared here with the latent SVM's own settings (tiny_prepared has configs/i2pa.py's).
    workdir = str(tmp_path_factory.mktemp("svm_table"))
    prepared = os.path.join(workdir, "prepared")  # prepared by run_grid; features cached in it
    config = load_config("latent_svm", "tiny")
    config.data.raw_dir, config.data.prepared_dir = tiny_raw, prepared
    table = latent_svm_table.run_grid(config, workdir, senses=[0, 2], unpopular_senses=[2])
    return workdir, config, table


def test_table_has_every_cell_and_the_baseline(grid):
    _, _, table = grid
    cell = r"-?\d\.\d{3} / \d\.\d{3} ± \d\.\d{3}"
    diff = r"[+-]\d\.\d{3} / [+-]\d\.\d{3} ± \d\.\d{3}"
    for row in ("0", "2"):
        assert re.search(rf"\| {row} \| {cell} \| {cell} \|", table), table
    # k = 2: 4 popular (the same total), 2 popular, 2 + 2, and the two differences.
    assert re.search(rf"\| 2 \| {cell} \| {cell} \| {cell} \| {diff} \| {diff} \|", table), table
    assert re.search(rf"\| linear SVR \(Khosla et al.\) \| {cell} \|", table), table
    assert re.search(r"Linear SVR: C = [\d.e+-]+, epsilon = [\d.]+, chosen by validation", table)


def test_run_reports_binarised_accuracy_svr_and_senses(grid):
    workdir, config, _ = grid
    run = os.path.join(workdir, "runs", "pop2-unpop2-soft")
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(run, "binarised_accuracy.json")) as f:
        draws = json.load(f)
    from ipa_jax import model_card  # its card: the senses on the backbone's frozen features

    card = model_card.read(run)
    assert card["model"] == f"latent_svm on frozen {config.features.backbone} features"
    assert card["test_distribution"]["num_images"] == metrics["test"]["num_images"]
    for key in ("test", "test_svr"):
        assert -1.0 <= metrics[key]["spearman_rho"] <= 1.0
        # The mean and std over the draws of the negatives, per draw in binarised_accuracy.json.
        assert len(draws[key]) == draws["num_draws"] == 20
        assert metrics[key]["binarised_accuracy"] == pytest.approx(np.mean(draws[key]))
        assert metrics[key]["binarised_accuracy_std"] == pytest.approx(np.std(draws[key], ddof=1))
        assert metrics[key]["binarised_accuracy_std"] > 0
    # The SVR: chosen on validation from the config's grid, solved to the stated tolerance.
    svr = metrics["test_svr"]
    grid = {(g["c"], g["epsilon"]): g for g in draws["svr_grid"]}
    assert (svr["svr_c"], svr["svr_epsilon"]) in grid
    assert len(grid) == len(config.svm.svr_c_grid) * len(config.svm.svr_epsilon_grid)
    assert svr["svr_validation_rho"] == max(g["validation_rho"] for g in grid.values())
    assert all(g["relative_gap"] <= config.svm.svr_tol for g in grid.values())
    assert svr["svr_relative_gap"] <= config.svm.svr_tol
    assert svr["svr_dual_objective"] <= svr["svr_objective"]
    with open(os.path.join(run, "report.html")) as f:
        report = f.read()
    # 2 popular + 2 unpopular senses, 12 top test images each, inlined.
    assert report.count("<h2>") == 4
    assert report.count("<figure><img src='data:image/jpeg;base64,") == 4 * 12


def test_features_are_cached_and_reused(grid, monkeypatch):
    workdir, config, _ = grid
    path = features.cache_path(config, config.data.prepared_dir)
    mtime = os.path.getmtime(path)

    def fail(*args, **kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(features, "extract", fail)
    post_index, feats = features.load_or_extract(config, config.data.prepared_dir, mesh=None)
    assert os.path.getmtime(path) == mtime
    assert feats.shape == (len(post_index), 2048) and np.all(np.isfinite(feats))
    assert len(np.unique(post_index)) == len(post_index)


def test_features_from_a_trained_workdir_are_its_backbone(tiny_raw, tiny_prepared, tmp_path):
    prepared = str(tmp_path / "prepared")
    shutil.copytree(tiny_prepared, prepared)
    i2pa = load_config("i2pa", "tiny")
    i2pa.data.raw_dir, i2pa.data.prepared_dir = tiny_raw, prepared
    workdir = str(tmp_path / "i2pa")
    train.train_and_evaluate(i2pa, workdir)

    config = load_config("latent_svm", "tiny")
    config.features.backbone, config.features.init_from = "resnet_mini", workdir
    config.input.normalize = i2pa.input.normalize
    post_index, feats = features.extract(config, prepared, sharding.make_mesh())
    # The trained head on these features gives back the trained model's own scores.
    manager = ocp.CheckpointManager(os.path.join(workdir, "best"))
    fc = manager.restore(manager.best_step())["params"]["fc"]
    with open(os.path.join(prepared, "posts.csv")) as f:
        index = {r["post_id"]: int(r["post_index"]) for r in csv.DictReader(f)}
    with open(os.path.join(workdir, "predictions.csv")) as f:
        scores = {index[r["post_id"]]: float(r["score"]) for r in csv.DictReader(f)}
    row = {p: k for k, p in enumerate(post_index)}
    got = np.array([feats[row[p]] @ np.asarray(fc["kernel"])[:, 0] + float(fc["bias"][0])
                    for p in scores])
    np.testing.assert_allclose(got, list(scores.values()), atol=1e-4)
