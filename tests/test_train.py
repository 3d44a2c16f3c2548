# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""End-to-end training on the tiny embedded dataset, run as a user runs it (`ipa_jax.main`).

Each run is a subprocess so that it can be killed, and so that 8 CPU devices can be simulated
(`--xla_force_host_platform_device_count` must be set before JAX starts). Runs share a
persistent compilation cache to keep the suite fast.
"""

import csv
import glob
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf


def train_losses(workdir) -> dict[int, float]:
    """Per-step `train/loss` from the TensorBoard events the clu writer left in the workdir."""
    losses = {}
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "train/loss":
                    losses[event.step] = float(tf.make_ndarray(value.tensor))
    return losses


def latest_params(workdir, step=None):
    """(step, params, batch_stats) of the latest checkpoint, or of `step`."""
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = manager.latest_step() if step is None else step
    # Restored onto this process's one device, whatever mesh the run saved from.
    restored = manager.restore(
        step, args=ocp.args.StandardRestore(
            fallback_sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])))
    return step, restored["params"], restored["model_state"]["batch_stats"]


def test_end_to_end_writes_metrics_and_predictions(baseline, tiny_prepared):
    with open(os.path.join(baseline, "metrics.json")) as f:
        metrics = json.load(f)
    for split in ("validation", "test", "test_oracle"):
        assert 0.0 <= metrics[split]["pairwise_accuracy"] <= 1.0
        assert metrics[split]["num_pairs"] > 0
    with open(os.path.join(tiny_prepared, "posts.csv")) as f:
        likes = {r["post_id"]: int(r["likes"]) for r in csv.DictReader(f)}
    with open(os.path.join(tiny_prepared, "pdips.csv")) as f:
        pdips = list(csv.DictReader(f))
    with open(os.path.join(baseline, "predictions.csv")) as f:
        predictions = list(csv.DictReader(f))
    # Every validation and test image is scored exactly once, with its manifest likes and pair.
    for split in ("validation", "test"):
        expected = {(r["pair_id"], p) for r in pdips if r["split"] == split
                    for p in (r["post_a"], r["post_b"])}
        got = [(r["group_id"], r["post_id"]) for r in predictions if r["split"] == split]
        assert len(got) == len(set(got)) == len(expected)
        assert set(got) == expected
        assert metrics[split]["num_images"] == len(expected)
    for r in predictions:
        assert int(r["likes"]) == likes[r["post_id"]]
        assert np.isfinite(float(r["score"]))
    # The test accuracy in metrics.json is the one the predictions give.
    by_pair = {}
    for r in predictions:
        if r["split"] == "test":
            by_pair.setdefault(r["group_id"], []).append((int(r["likes"]), float(r["score"])))
    wins = [(max(p)[1] > min(p)[1]) + 0.5 * (max(p)[1] == min(p)[1]) for p in by_pair.values()]
    assert metrics["test"]["pairwise_accuracy"] == pytest.approx(np.mean(wins))
    assert len(train_losses(baseline)) == 6


def test_also_test_on_scores_the_groups_test_split(baseline, tiny_raw, tiny_prepared):
    """I2PA (trained on PDIPs) is also tested on Ji 2023's groups: every test post of
    groups.csv, grouped as there (checked through the oracle, whose scores are known)."""
    from ipa_jax import metrics as metrics_lib
    from ipa_jax.data import embedded

    with open(os.path.join(baseline, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(tiny_prepared, "groups.csv")) as f:
        test = [r for r in csv.DictReader(f) if r["split"] == "test"]
    on_groups = metrics["test_on_groups"]
    assert on_groups["num_images"] == len(test) != metrics["test"]["num_images"]
    assert on_groups["num_groups"] == len({r["group_id"] for r in test})
    assert 0.0 <= on_groups["pairwise_accuracy"] <= 1.0 and on_groups["num_pairs"] > 0
    truth = embedded.read_planted_truth(tiny_raw)
    expected = metrics_lib.evaluate(np.array([truth[r["post_id"]] for r in test]),
                                    np.array([float(r["likes"]) for r in test]),
                                    np.array([r["group_id"] for r in test]))
    for name, value in expected.items():
        assert metrics["test_oracle_on_groups"][name] == pytest.approx(value), name


def test_killed_run_resumes_to_the_same_parameters(baseline, run_main, tmp_path):
    workdir = str(tmp_path / "preempted")
    killed = run_main(workdir, "--config.debug_kill_after_step=5", expect_ok=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))
    resumed = run_main(workdir)
    assert "Resumed from step 4" in resumed.stderr
    step, params, batch_stats = latest_params(workdir)
    base_step, base_params, base_stats = latest_params(baseline)
    assert step == base_step == 6
    tf.nest.map_structure(np.testing.assert_array_equal, params, base_params)
    tf.nest.map_structure(np.testing.assert_array_equal, batch_stats, base_stats)
    # Steps 5 and 6 were trained again after the restart, on the same data as the baseline.
    base_losses, losses = train_losses(baseline), train_losses(workdir)
    for s in (5, 6):
        assert losses[s] == base_losses[s]


def test_eight_devices_give_the_same_losses(baseline, run_main, tmp_path):
    workdir = str(tmp_path / "eight")
    run_main(workdir, devices=8)
    base_losses, losses = train_losses(baseline), train_losses(workdir)
    assert sorted(losses) == sorted(base_losses) == list(range(1, 7))
    # The first step starts from the same parameters: only the summation order differs.
    np.testing.assert_allclose(losses[1], base_losses[1], rtol=1e-5)
    # Later steps start from parameters that differ as bounded below (up to ~lr per weight).
    # The tiny run's loss then jumps (0.13 at step 4, 1.8 at step 5: a hard batch), which
    # amplifies those differences: on the tiny data of 2026-12-02 the losses differ by 5e-5,
    # 2e-5 and 2.9e-4 (relative) at steps 2-4, then 4.8e-3 and 4.0e-2 at steps 5 and 6, and 5%
    # of the weights by more than 2e-4 at step 6 (0.03% at step 4). So steps 1-4 are compared.
    for s in (2, 3, 4):
        np.testing.assert_allclose(losses[s], base_losses[s], rtol=1e-3, err_msg=f"step {s}")
    # Parameters: summation order differs across 8 shards, and Adam divides each gradient by
    # its own running RMS, so a weight whose gradient is at rounding level can take a step of up
    # to ~lr in either direction. Bound every weight by that, and nearly all of them tightly.
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    steps, lr = 4, max(config["optimizer"]["lr"], config["optimizer"]["head_lr"])
    _, params, _ = latest_params(workdir, steps)
    _, base_params, _ = latest_params(baseline, steps)
    diffs = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() for a, b in zip(
        jax.tree.leaves(params), jax.tree.leaves(base_params), strict=True)])
    assert diffs.max() <= 2 * lr * steps
    assert np.mean(diffs > 2e-4) < 1e-3, f"{np.sum(diffs > 2e-4)} of {diffs.size} weights differ"
    assert np.median(diffs) < 1e-6


@pytest.mark.parametrize("loss", ["likes_ratio", "log_likes_mse"])
def test_group_pairs_train_with_the_other_losses(run_main, tiny_prepared, tmp_path, loss):
    workdir = str(tmp_path / loss)
    proc = run_main(workdir, "--config.data.pairs=groups", f"--config.loss={loss}",
                    "--config.num_steps=2", "--config.eval_every_steps=2")
    with open(os.path.join(tiny_prepared, "summary.json")) as f:
        train = json.load(f)["counts"]["groups"]["train"]
    # The log-likes baseline is per image (SPEC 2): an epoch is every training image, groups
    # without a valid pair included, 2 x batch_size (8) images a step.
    unit, per_step = ("images", 16) if loss == "log_likes_mse" else ("pairs", 8)
    assert f"{train[unit]} train {unit}, {train[unit] // per_step} steps per epoch" in proc.stderr
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(workdir, "predictions.csv")) as f:
        groups = {r["group_id"] for r in csv.DictReader(f) if r["split"] == "test"}
    assert metrics["test"]["num_groups"] + metrics["test"]["num_groups_skipped"] == len(groups)
    # The model card: the objective, the test metrics and the test scores' distribution.
    from ipa_jax import model_card

    card = model_card.read(workdir)
    assert card["objective"] == loss and card["test_metrics"] == pytest.approx(metrics["test"],
                                                                              nan_ok=True)
    with open(os.path.join(workdir, "predictions.csv")) as f:
        test_scores = [float(r["score"]) for r in csv.DictReader(f) if r["split"] == "test"]
    np.testing.assert_allclose(card["test_distribution"]["quantiles"],
                               np.percentile(test_scores, np.arange(101)), atol=2e-6)
    assert os.path.exists(os.path.join(workdir, model_card.CARD_MD))
    assert metrics["test"]["num_pairs"] > 0 and np.isfinite(metrics["test"]["ratio_mse"])
    assert all(np.isfinite(v) for v in train_losses(workdir).values())


@pytest.mark.parametrize("overrides, devices, message", [
    (("--config.optimizr.lr=1",), 1, "'--config.optimizr.lr=1' names no field of the config"),
    (("--config.input.cropsize=16",), 1, 'did you mean "crop_size"?'),
    (("--config.data.raw_dir=/no/such/dir",), 1,
     "config.data.raw_dir='/no/such/dir' does not exist"),
    (("--config.batch_size=12",), 8,
     "config.batch_size=12 is not divisible by the 8 devices; use a multiple of 8, "
     "e.g. --config.batch_size=8"),
    (("--config.loss=hinge",), 1, "config.loss='hinge' is not a known loss"),
])
def test_bad_config_stops_with_one_clear_message(run_main, tmp_path, overrides, devices,
                                                 message):
    proc = run_main(str(tmp_path), *overrides, devices=devices, expect_ok=False)
    assert proc.returncode == 1
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("Configuration error:")
    assert message in last_line
    assert "Traceback" not in proc.stderr


def test_init_from_restores_the_backbone_and_keeps_a_fresh_head(run_main, tmp_path):
    """A converted 1000-class checkpoint initialises the scorer; lr 0 keeps it visible."""
    import jax.numpy as jnp

    from ipa_jax import convert, models, pretrained

    model = models.get_model("resnet_mini", num_classes=1000)
    variables = jax.device_get(jax.jit(lambda: model.init(
        jax.random.key(7), jnp.zeros((1, 32, 32, 3)), train=False))())
    converted = str(tmp_path / "converted")
    convert.write(converted, variables, {"model": "resnet_mini", "num_classes": 1000,
                                         "input": {}})
    workdir = str(tmp_path / "run")
    proc = run_main(workdir, f"--config.init_from={converted}", "--config.optimizer.lr=0",
                    "--config.optimizer.head_lr=0", "--config.model.drop_path_rate=0.2",
                    "--config.model.dropout_rate=0.1")
    assert "freshly initialised: params/fc/bias, params/fc/kernel" in proc.stderr
    _, trained, _ = pretrained.load_workdir(workdir)
    backbone = {k: v for k, v in trained["params"].items() if k != "fc"}
    jax.tree.map(np.testing.assert_array_equal, backbone,
                 {k: v for k, v in variables["params"].items() if k != "fc"})
    assert trained["params"]["fc"]["kernel"].shape == (512, 1)
