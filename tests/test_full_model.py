# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""configs/full.py: the retrieval-augmented scorer trained end to end on the tiny dataset.

Every variant of `full.py:tiny` prepares the same data (retrieval and depth on), so one
prepared folder serves them all; one variant runs through the CLI, the others in-process.
"""

import csv
import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipa_jax import (
    config_lib,
    config_validation,
    history,
    models,
    optim,
    pretrained,
    scoring,
    tasks,
    train,
)
from tests.conftest import REPO, fast_compiles, load_config

VARIANTS = ("full", "retrieval", "backbone_only", "concat", "log_likes")


def _config(variant, tiny_raw, prepared, steps=1):
    config = load_config("full", f"tiny,variant={variant}")
    config.data.raw_dir, config.data.prepared_dir = tiny_raw, prepared
    config.num_steps, config.log_every_steps = steps, 1
    return config


def _check_workdir(workdir):
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["test"]["num_pairs"] > 0
    assert 0.0 <= metrics["test"]["pairwise_accuracy"] <= 1.0
    return metrics


# Through train_and_evaluate: `full` by the CLI, `concat` (ConcatFusion) and `log_likes` (the
# per-image loss) in-process; `retrieval` and `backbone_only` differ from `full` only in the
# fusion's flags and take one jitted train step below (the suite stays under 90 s on 2 CPUs).
END_TO_END = ("full", "concat", "log_likes")


@pytest.fixture(scope="module")
def trained(tiny_raw, full_prepared, tmp_path_factory) -> dict:
    """variant -> workdir of a one-step run."""
    workdirs = {}
    for variant in END_TO_END:
        workdir = str(tmp_path_factory.mktemp(variant))
        if variant == "full":
            cmd = [sys.executable, "-m", "ipa_jax.main", "--config=configs/full.py:tiny",
                   f"--workdir={workdir}", f"--config.data.raw_dir={tiny_raw}",
                   f"--config.data.prepared_dir={full_prepared}", "--config.num_steps=1",
                   "--config.log_every_steps=1"]
            proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                                  capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr[-5000:]
        else:
            train.train_and_evaluate(_config(variant, tiny_raw, full_prepared), workdir)
        workdirs[variant] = workdir
    return workdirs


@pytest.mark.parametrize("variant", END_TO_END)
def test_variants_train_and_evaluate_end_to_end(trained, variant):
    from tests.test_train import train_losses

    _check_workdir(trained[variant])
    losses = train_losses(trained[variant])
    assert losses and all(np.isfinite(v) for v in losses.values())


def _groups_rows(prepared):
    with open(os.path.join(prepared, "groups.csv")) as f:
        return list(csv.DictReader(f))


def _history_csv(path, tiny_raw, posts_csv_rows, post_ids):
    """A history CSV of `post_ids` (image, likes, timestamp, post_id) from posts.csv's rows."""
    rows = {r["post_id"]: r for r in posts_csv_rows}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "likes", "timestamp", "post_id"])
        for pid in post_ids:
            r = rows[pid]
            w.writerow([os.path.join(tiny_raw, r["image_path"]), r["likes"], r["timestamp"], pid])
    return str(path)


def test_history_scores_equal_the_full_models_scores_on_the_prepared_posts(
        trained, tiny_raw, full_prepared, tmp_path):
    """Each user's training-split posts as the history, its test posts as drafts: scoring from
    the image files and sidecars gives the scores the trained model gave the prepared test
    posts (the same f_ret, depth features, stored image and crop)."""
    with open(os.path.join(full_prepared, "posts.csv")) as f:
        posts = list(csv.DictReader(f))
    with open(os.path.join(trained["full"], "predictions.csv")) as f:
        predicted = {r["post_id"]: float(r["score"]) for r in csv.DictReader(f)
                     if r["split"] == "test"}
    groups = _groups_rows(full_prepared)
    scorer = scoring.load_scorer(trained["full"])
    assert isinstance(scorer, history.HistoryScorer)
    assert scorer.card["trained_on"]["retrieval"]["weights"]  # recorded by training
    assert scorer.card["model"] == "resnet_mini + aggregation fusion of retrieval and depth"
    image_of = {r["post_id"]: os.path.join(tiny_raw, r["image_path"]) for r in posts}
    checked = 0
    for user in sorted({r["user"] for r in groups}):
        bank = [r["post_id"] for r in groups if r["user"] == user and r["split"] == "train"]
        tests = [r["post_id"] for r in groups if r["user"] == user and r["split"] == "test"]
        if not tests:
            continue
        scorer.use_history(_history_csv(tmp_path / f"{user}.csv", tiny_raw, posts, bank),
                           sidecar_dir=tiny_raw)
        notes = []
        kept, scores, skipped = scorer.score([image_of[p] for p in tests], sidecar_dir=tiny_raw,
                                             batch_size=4, notes=notes)
        assert not skipped and len(kept) == len(tests)
        np.testing.assert_allclose(scores, [predicted[p] for p in tests], atol=2e-5, rtol=0)
        checked += len(tests)
    assert checked >= 10


def test_history_cli_fallback_and_bad_drafts(trained, tiny_raw, full_prepared, tmp_path,
                                             capsys, monkeypatch):
    """Without --history: the fallback is said, scores equal an empty bank's; a draft without a
    depth map and a broken file are skipped with their reasons; --history through the CLI
    equals the API."""
    with fast_compiles():  # behaviour, and numbers compared within these settings
        _history_cli_checks(trained, tiny_raw, full_prepared, tmp_path, capsys, monkeypatch)


def _history_cli_checks(trained, tiny_raw, full_prepared, tmp_path, capsys, monkeypatch):
    from ipa_jax import score

    groups = _groups_rows(full_prepared)
    user = next(r["user"] for r in groups if r["split"] == "test")
    tests = [r["post_id"] for r in groups if r["user"] == user and r["split"] == "test"][:3]
    drafts = [os.path.join(tiny_raw, "image", f"{p}.jpg") for p in tests]
    lonely = tmp_path / "no_depth.jpg"  # its folder has no depth/
    lonely.write_bytes(open(drafts[0], "rb").read())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "scores.json"
    args = [f"--model={trained['full']}", f"--sidecars={tiny_raw}", "--format=json",
            f"--output={out}", "--quiet", *drafts]
    score.main(args)
    err = capsys.readouterr().err
    assert "NOTE:" in err and "empty memory bank" in err and "--history=" in err
    no_history = {r["path"]: r["log_score"] for r in json.loads(out.read_text())["scores"]}
    scorer = scoring.load_scorer(trained["full"])
    kept, scores, _ = scorer.score(drafts, sidecar_dir=tiny_raw)
    np.testing.assert_allclose([no_history[p] for p in kept], scores, atol=1e-6)

    monkeypatch.chdir(tmp_path)
    kept, _, skipped = scorer.score(["no_depth.jpg", str(broken), drafts[1]],
                                    sidecar_dir=tiny_raw)
    assert kept == [drafts[1]]
    reasons = dict(skipped)
    assert "missing depth map" in reasons["no_depth.jpg"]  # reported as given
    from ipa_jax.data import prepare

    with monkeypatch.context() as m:  # an error without a message is still a reason
        m.setattr(prepare, "encode_image", lambda *_: (_ for _ in ()).throw(OSError()))
        assert scorer.score([drafts[1]])[2] == [(drafts[1], "OSError: unreadable")]
    assert "UnidentifiedImageError" in reasons[str(broken)]

    with open(os.path.join(full_prepared, "posts.csv")) as f:
        posts_rows = list(csv.DictReader(f))
    bank = [r["post_id"] for r in groups if r["user"] == user and r["split"] == "train"]
    hist = _history_csv(tmp_path / "h.csv", tiny_raw, posts_rows, bank)
    report = tmp_path / "report.html"
    score.main([*args[:-len(drafts)], f"--history={hist}", f"--history_sidecars={tiny_raw}",
                f"--report={report}", *drafts])
    err = capsys.readouterr().err
    assert f"history: {len(bank)} posts" in err and "empty memory bank" not in err
    page = report.read_text()  # Grad-CAM through the fusion with each draft's f_ret and depth
    assert page.count("data:image/png;base64") >= len(drafts)
    assert not re.search(r"(src|href)=[\"']?https?:", page)
    with_history = {r["path"]: r["log_score"] for r in json.loads(out.read_text())["scores"]}
    api = scorer.use_history(hist, sidecar_dir=tiny_raw).score(drafts, sidecar_dir=tiny_raw)
    np.testing.assert_allclose([with_history[p] for p in api[0]], api[1], atol=1e-6)
    assert not np.allclose([with_history[p] for p in api[0]], [no_history[p] for p in api[0]])
    # a history post scored as a draft never retrieves itself (S_b = S_c = 1: its own likes
    # would leak into its score)
    own, _ = scorer.inputs([os.path.join(tiny_raw, "image", f"{bank[0]}.jpg")],
                           sidecar_dir=tiny_raw)
    rows = own.f_ret[0][own.f_ret[0, :, 1] > 0]
    assert len(own.paths) == 1 and len(rows)
    assert not ((rows[:, 2] > 0.9999) & (rows[:, 4] > 0.9999)).any(), rows
    with pytest.raises(SystemExit, match="retrieval-augmented.*--resize"):
        score.main([f"--model={trained['full']}", "--resize=squash", *drafts])
    from ipa_jax import export
    with pytest.raises(ValueError, match="HistoryScorer.*ipa-score --history"):
        export.export(trained["full"], str(tmp_path / "export"))

    # --annotate writes a new draft's missing depth map first (data_prep.annotate's runner)
    from ipa_jax.annotate import backends

    def ramp(signal, spec, **_):
        assert (signal, spec) == ("depth", "transformers:ramp")
        return backends.Annotator("depth", {"library": "test", "weights": "ramp"}, lambda xs: [
            np.repeat(np.linspace(0, 1, x.shape[0], dtype=np.float32)[:, None], x.shape[1], 1)
            for x in xs], 2)

    monkeypatch.setattr(backends, "load", ramp)
    new = tmp_path / "new"
    new.mkdir()
    (new / "draft.jpg").write_bytes(open(drafts[0], "rb").read())
    base = [f"--model={trained['full']}", f"--history={hist}", f"--history_sidecars={tiny_raw}",
            "--format=json", f"--output={out}", "--quiet", str(new / "draft.jpg")]
    score.main([*base, "--annotate=depth", "--depth_model=transformers:ramp"])
    annotated = json.loads(out.read_text())
    assert [r["path"] for r in annotated["scores"]] == [str(new / "draft.jpg")]
    assert (new / "depth" / "draft.png").is_file()
    assert json.loads((new / "annotations.json").read_text())["depth"]["written"] == 1
    # the written map is read back (no annotator now): the same score
    _, again, _ = scorer.score([str(new / "draft.jpg")])
    np.testing.assert_allclose(again, [annotated["scores"][0]["log_score"]], atol=1e-6)


@pytest.fixture(scope="module")
def tasks_and_batch(tiny_raw, full_prepared):
    """variant -> (task, params, model_state) for backbone_only and full, and one eval batch."""
    with open(os.path.join(full_prepared, "summary.json")) as f:
        counts = json.load(f)["counts"]["groups"]
    out = {}
    for variant in ("backbone_only", "retrieval", "full"):
        config = _config(variant, tiny_raw, full_prepared)
        task = tasks.ImagePairs(config, full_prepared, counts, mesh=None)
        params, model_state = task.init(jax.random.key(0))
        out[variant] = (task, params, model_state)
    batch = next(out["full"][0].eval_dataset("validation").as_numpy_iterator())
    out["train_batch"] = next(out["full"][0].train_dataset().as_numpy_iterator())
    return out, batch


@pytest.mark.parametrize("variant", ("backbone_only", "retrieval"))
def test_other_variants_take_a_finite_train_step(tasks_and_batch, variant):
    task, params, model_state = tasks_and_batch[0][variant]
    tx, _ = optim.make_optimizer(task.config, steps_per_epoch=10)
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             model_state=model_state, opt_state=tx.init(params))
    batch = tasks_and_batch[0]["train_batch"]
    step = jax.jit(functools.partial(train.train_step, task=task, tx=tx,
                                     rng=jax.random.key(1)))
    new, metrics = step(state, batch)
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), new.params, params)
    assert any(jax.tree.leaves(moved["backbone"])) and any(jax.tree.leaves(moved["fusion"]))


def test_parameter_groups_split_backbone_and_fusion(tasks_and_batch):
    task, params, _ = tasks_and_batch[0]["full"]
    config = task.config
    assert set(params) == {"backbone", "fusion"}
    groups = optim.param_groups(params, tuple(config.optimizer.head_params))
    assert set(jax.tree.leaves(groups["backbone"])) == {"backbone"}
    assert set(jax.tree.leaves(groups["fusion"])) == {"head"}
    _, schedules = optim.make_optimizer(config, steps_per_epoch=10)
    assert float(schedules["backbone"](0)) == pytest.approx(config.optimizer.lr)
    assert float(schedules["head"](0)) == pytest.approx(config.optimizer.head_lr)
    paper = load_config("full")
    assert (paper.optimizer.lr, paper.optimizer.head_lr) == (1e-6, 1e-5)


def test_scores_read_f_ret_and_depth_only_when_the_branches_are_on(tasks_and_batch):
    variants, batch = tasks_and_batch
    assert batch["f_ret"].shape[1:] == (4, 5) and batch["depth"].shape[1] == 5
    assert batch["depth"].shape[2] > 0
    rng = np.random.default_rng(0)
    f_ret = batch["f_ret"].copy()
    f_ret[..., 0] += rng.uniform(1, 2, f_ret.shape[:-1])  # p_r of the real rows
    depth = batch["depth"] + rng.normal(size=batch["depth"].shape).astype(np.float32)
    for variant, changes in (("backbone_only", False), ("full", True)):
        task, params, model_state = variants[variant]
        score = jax.jit(task.score)
        base = score(params, model_state, batch["input"], batch["f_ret"], batch["depth"])
        moved = score(params, model_state, batch["input"], f_ret, depth)
        assert np.all(np.isfinite(base))
        assert (not np.allclose(base, moved, atol=1e-6)) == changes, variant


def test_init_from_a_plain_backbone_loads_into_backbone(tasks_and_batch):
    task, params, model_state = tasks_and_batch[0]["full"]
    crop = task.config.input.crop_size
    plain = models.get_model("resnet_mini", num_classes=1).init(
        jax.random.key(1), jnp.zeros((1, crop, crop, 3)), train=False)
    plain = jax.tree.map(np.asarray, plain)
    fresh = jax.tree.map(np.asarray, {"params": params, **model_state})
    merged, loaded = pretrained.merge(fresh, pretrained.nest_under(plain, "backbone"),
                                      task.config.init_dont_load)
    assert loaded and all(p.startswith(("params/backbone/", "batch_stats/backbone/"))
                          for p in loaded)
    np.testing.assert_array_equal(merged["params"]["backbone"]["conv1"]["kernel"],
                                  plain["params"]["conv1"]["kernel"])
    np.testing.assert_array_equal(merged["batch_stats"]["backbone"]["bn1"]["mean"],
                                  plain["batch_stats"]["bn1"]["mean"])
    jax.tree.map(np.testing.assert_array_equal, merged["params"]["fusion"],
                 fresh["params"]["fusion"])
    # A fused model's own checkpoint is already nested.
    assert pretrained.nest_under(fresh, "backbone") == fresh


@pytest.mark.parametrize("field, value, message", [
    ("fusion.kind", "mlp", r"config\.fusion\.kind='mlp' is not one of"),
    ("fusion.num_heads", 3, r"width=64 is not a multiple of config\.fusion\.num_heads=3"),
    ("fusion.dropout_rate", 1.0, r"config\.fusion\.dropout_rate=1\.0 must be in \[0, 1\)"),
    ("prep.depth.enabled", False, r"use_depth=True needs depth features"),
    ("prep.retrieval.enabled", False, r"use_retrieval=True needs f_ret"),
    ("optimizer.head_params", ("head", "fc"), r"head_params=.*backbone/.*fusion/"),
])
def test_fusion_config_is_validated(field, value, message):
    config = load_config("full", "tiny")
    node = config
    *parents, leaf = field.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    with pytest.raises(config_lib.ConfigError, match=message):
        config_validation.validate(config, num_devices=1)


def test_variant_names_are_checked():
    with pytest.raises(config_lib.ConfigError, match="Unknown variant='both'"):
        load_config("full", "variant=both")
    for variant in VARIANTS:
        config_validation.validate(load_config("full", f"variant={variant}"), num_devices=1)
