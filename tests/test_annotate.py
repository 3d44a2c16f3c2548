# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Issue 14: `ipa_jax.annotate` writes sidecars data_prep reads; resumes after a kill without
recomputing; counts every failure by reason; never mixes two models' outputs. The models here
are oracles that give the embedded dataset's own sidecar values (found by the image's pixels),
so annotated data must prepare into exactly the same examples; the real architectures run in
tests/test_annotate_hf.py and tests/test_annotate_keras_hub.py."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data_prep import annotate as annotate_cli
from ipa_jax import config_lib, images
from ipa_jax.annotate import backends, runner, sidecars
from ipa_jax.data import depth as depth_data
from ipa_jax.data import instagram, prepare, tfds_builder
from ipa_jax.retrieval import pose
from tests.conftest import assert_same_examples, load_config


def _key(pixels: np.ndarray) -> str:
    return hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()


@pytest.fixture(scope="module")
def post_of_pixels(tiny_raw) -> dict:
    """The post id of every readable tiny image, by its pixels."""
    posts, _ = instagram.read_posts(tiny_raw, check_images=False, progress=False)
    out = {}
    for p in posts:
        try:
            out[_key(images.read_rgb(os.path.join(tiny_raw, p.image_path)))] = p.post_id
        except Exception:  # noqa: BLE001 - the planted broken images
            pass
    return out


def _truth(raw: str, signal: str, post_id: str):
    """The embedded dataset's own sidecar value, in the annotator output contract."""
    path = sidecars.path_of(raw, signal, post_id)
    if signal == "depth":
        return depth_data.read_depth_map(path)  # 0 = near: larger is farther
    if signal == "keypoints":
        with open(path) as f:
            return [{"keypoints": np.reshape(r["keypoints"], (17, 3)), "score": r["score"]}
                    for r in json.load(f)]
    if signal == "background":
        with Image.open(path) as im:
            return np.asarray(im) > 127
    with open(path, encoding="utf-8") as f:
        return f.read()


def _oracle(signal, tiny_raw, post_of_pixels, calls=None, fail_on=(), batch_size=4, info=None):
    """An annotator giving `tiny_raw`'s own sidecars; records the post ids it was asked for;
    raises for the posts in fail_on."""
    def predict(batch):
        ids = [post_of_pixels[_key(x)] for x in batch]
        if calls is not None:
            calls.extend(ids)
        if bad := [i for i in ids if i in fail_on]:
            raise RuntimeError(f"cannot annotate {bad}")
        return [_truth(tiny_raw, signal, i) for i in ids]

    return backends.Annotator(signal, info or {"library": "oracle", "signal": signal}, predict,
                              batch_size)


def _bare_copy(tiny_raw, dst) -> str:
    shutil.copytree(tiny_raw, dst, ignore=shutil.ignore_patterns(
        *(sidecars.FOLDERS[s][0] for s in backends.SIGNALS)))
    return str(dst)


def test_annotated_sidecars_prepare_into_the_same_examples(tiny_raw, full_prepared,
                                                           post_of_pixels, tmp_path):
    """data_prep reads annotator output: sidecars written from the same values as the embedded
    dataset's own give the same retrieval features (f_ret, retrieved posts) and every field of
    every example but the depth features; the depth maps data_prep reads are the same to the
    16-bit quantisation (the writer stores the min-max normalised map, so regions lying exactly
    on an interval's boundary can fall on either side, which moves the masked features)."""
    raw = _bare_copy(tiny_raw, tmp_path / "raw")
    summary = runner.annotate(raw, [_oracle(s, tiny_raw, post_of_pixels)
                                    for s in backends.SIGNALS], progress=False)
    for signal in backends.SIGNALS:  # every post data_prep reads, and only those
        written = os.listdir(os.path.join(raw, sidecars.FOLDERS[signal][0]))
        assert sorted(written) == sorted(os.path.basename(sidecars.path_of(raw, signal, p))
                                         for p in post_of_pixels.values()), signal
        assert summary[signal]["failed"] == {"unreadable image": 1}
    out = str(tmp_path / "prepared")
    ours = prepare.prepare(raw, out, load_config("full", "tiny").prep, progress=False)
    with open(os.path.join(full_prepared, prepare.SUMMARY)) as f:
        theirs = json.load(f)
    assert ours["retrieval"] == theirs["retrieval"]
    assert ours["retrieval"]["semantic_source"] == "captions"
    assert ours["depth"]["outcomes"] == theirs["depth"]["outcomes"]
    with np.load(os.path.join(out, "retrieval.npz")) as a, \
            np.load(os.path.join(full_prepared, "retrieval.npz")) as b:
        np.testing.assert_array_equal(a["f_ret"], b["f_ret"])
        np.testing.assert_array_equal(a["retrieved"], b["retrieved"])
    assert_same_examples(out, full_prepared, skip=("depth",))
    cfg = load_config("full", "tiny").prep.depth
    for post_id in post_of_pixels.values():
        ours, theirs = (depth_data.load_for_image(os.path.join(r, "depth"), post_id, (48, 48),
                                                  cfg)[0] for r in (raw, tiny_raw))
        np.testing.assert_allclose(ours, theirs, atol=1.0 / tfds_builder.DEPTH_MAP_LEVELS, rtol=0)


def test_formats_of_each_sidecar(tmp_path):
    """What each writer puts on disk, read back by data_prep's own readers."""
    hw = (6, 8)
    depth = np.linspace(5.0, -1.0, 48).reshape(hw)  # larger = farther
    path = tmp_path / "d.png"
    path.write_bytes(sidecars.depth_png(depth, hw))
    raw = depth_data.read_depth_map(str(path))
    levels = tfds_builder.DEPTH_MAP_LEVELS
    np.testing.assert_allclose(raw / levels, (depth - depth.min()) / 6.0, atol=0.5 / levels)
    people = [{"keypoints": np.tile([[3.0, 4.0, 0.9]], (17, 1)), "score": 0.8},
              {"keypoints": np.tile([[1.0, 2.0, 0.1]], (17, 1)), "score": 0.6}]
    (tmp_path / "k.json").write_bytes(sidecars.keypoints_json("p1", people))
    read = pose.read_keypoints(str(tmp_path / "k.json"))
    assert len(read) == 2 and (read[0][:, 2] > 0).all() and (read[1][:, 2] == 0).all()
    np.testing.assert_allclose(read[0][:, :2], [[3.0, 4.0]] * 17)
    mask = np.zeros((3, 4), bool)
    mask[0] = True
    (tmp_path / "b.png").write_bytes(sidecars.background_png(mask, hw))
    with Image.open(tmp_path / "b.png") as im:
        assert im.mode == "L" and im.size == (8, 6)
        assert set(np.unique(np.asarray(im))) == {0, 255}
        assert (np.asarray(im)[:2] == 255).all() and (np.asarray(im)[2:] == 0).all()
    assert sidecars.caption_txt(" a  dog\non grass ") == b"a dog on grass"
    for bad in ((np.zeros((2, 2, 2)), hw), (np.full((2, 2), np.nan), hw)):
        with pytest.raises(ValueError):
            sidecars.depth_png(*bad)
    with pytest.raises(ValueError):
        sidecars.keypoints_json("p", [{"keypoints": np.zeros((16, 3)), "score": 1.0}])


def test_resumes_after_a_kill_without_recomputing(tiny_raw, post_of_pixels, tmp_path):
    """A run killed after some batches keeps its finished files (a partial file of the kill is
    removed) and the rerun computes only the rest."""
    raw = _bare_copy(tiny_raw, tmp_path / "raw")
    first = []
    killer = _oracle("captions", tiny_raw, post_of_pixels, calls=first)
    predict = killer.predict

    def killed_after_two_batches(batch):
        if len(first) >= 8:
            raise KeyboardInterrupt  # what a kill leaves: no summary update, no cleanup
        return predict(batch)

    killer.predict = killed_after_two_batches
    with pytest.raises(KeyboardInterrupt):
        runner.annotate(raw, [killer], progress=False)
    done = {p[:-4]: os.stat(os.path.join(raw, "captions", p)).st_mtime_ns
            for p in os.listdir(os.path.join(raw, "captions"))}
    assert sorted(done) == sorted(first) and len(done) == 8
    assert runner.read_summary(raw)["captions"]["status"] == "running"
    partial = os.path.join(raw, "captions", "x.txt.123" + sidecars._TMP)
    open(partial, "w").close()

    second = []
    summary = runner.annotate(raw, [_oracle("captions", tiny_raw, post_of_pixels,
                                            calls=second)], progress=False)
    assert not set(second) & set(done) and second
    assert summary["captions"]["already_done"] == 8
    assert summary["captions"]["partial_files_removed"] == 1 and not os.path.exists(partial)
    for post_id, mtime in done.items():
        assert os.stat(sidecars.path_of(raw, "captions", post_id)).st_mtime_ns == mtime
    third = []
    summary = runner.annotate(raw, [_oracle("captions", tiny_raw, post_of_pixels,
                                            calls=third)], progress=False)
    assert third == [] and summary["captions"]["written"] == 0


def test_failures_are_counted_by_reason_and_the_rest_written(tiny_raw, post_of_pixels,
                                                             tmp_path):
    raw = _bare_copy(tiny_raw, tmp_path / "raw")
    posts, _ = instagram.read_posts(raw, check_images=False, progress=False)
    readable = sorted(post_of_pixels.values())
    broken = [p.post_id for p in posts if p.post_id not in readable]
    assert broken  # the embedded dataset plants unreadable images
    fail_on = set(readable[:2])
    oracle = _oracle("background", tiny_raw, post_of_pixels, fail_on=fail_on)
    bad_output = _oracle("depth", tiny_raw, post_of_pixels)
    truth = bad_output.predict
    bad_output.predict = lambda batch: [np.zeros(3) if i == 0 else x
                                        for i, x in enumerate(truth(batch))]
    summary = runner.annotate(raw, [oracle, bad_output], progress=False)
    failed = summary["background"]["failed"]
    assert failed == {"unreadable image": len(broken), "model error (RuntimeError)": 2}
    assert sorted(summary["background"]["failed_examples"]["model error (RuntimeError)"]) == \
        sorted(fail_on)
    assert summary["background"]["written"] == len(posts) - len(broken) - 2
    assert summary["background"]["status"] == "incomplete"
    written = {n[:-4] for n in os.listdir(os.path.join(raw, "background"))}
    assert written == set(readable) - fail_on  # one bad image does not fail its batch
    n_batches = -(-len(readable) // bad_output.batch_size)
    assert summary["depth"]["failed"]["bad model output"] >= n_batches - 1
    with open(os.path.join(raw, runner.SUMMARY_FILE)) as f:
        assert json.load(f)["background"]["failed"] == failed
    # A rerun retries exactly the failed images.
    calls = []
    again = runner.annotate(raw, [_oracle("background", tiny_raw, post_of_pixels, calls=calls)],
                            progress=False)
    assert sorted(calls) == sorted(fail_on)
    assert again["background"]["failed"] == {"unreadable image": len(broken)}


def test_another_model_is_not_mixed_in_and_redo_recomputes(tiny_raw, post_of_pixels, tmp_path):
    raw = _bare_copy(tiny_raw, tmp_path / "raw")
    runner.annotate(raw, [_oracle("captions", tiny_raw, post_of_pixels)], progress=False)
    other = _oracle("captions", tiny_raw, post_of_pixels,
                    info={"library": "oracle", "weights": "another"})
    with pytest.raises(config_lib.ConfigError, match="--redo=captions"):
        runner.annotate(raw, [other], progress=False)
    # A redo killed half way: the rerun (same model) recomputes the old files, not the new.
    calls = []
    killer = _oracle("captions", tiny_raw, post_of_pixels, calls=calls, info=other.info)
    predict = killer.predict

    def killed(batch):
        if len(calls) >= 8:
            raise KeyboardInterrupt
        return predict(batch)

    killer.predict = killed
    with pytest.raises(KeyboardInterrupt):
        runner.annotate(raw, [killer], redo=("captions",), progress=False)
    rest = []
    summary = runner.annotate(raw, [_oracle("captions", tiny_raw, post_of_pixels, calls=rest,
                                            info=other.info)], progress=False)
    assert not set(rest) & set(calls) and len(rest) + len(calls) == len(post_of_pixels)
    # Until every image is redone (the broken one never is), older files stay unfinished.
    assert summary["captions"]["failed"] == {"unreadable image": 1}
    assert summary["captions"]["redo_since"] > 0
    last = []
    runner.annotate(raw, [_oracle("captions", tiny_raw, post_of_pixels, calls=last,
                                  info=other.info)], progress=False)
    assert last == []


def test_unrecorded_sidecars_are_kept_and_counted(tiny_raw, post_of_pixels, tmp_path, caplog):
    """The embedded dataset's own captions (no annotate record) are kept, with a warning."""
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    calls = []
    with caplog.at_level("WARNING"):
        summary = runner.annotate(str(raw), [_oracle("captions", tiny_raw, post_of_pixels,
                                                     calls=calls)], progress=False)
    assert calls == [] and summary["captions"]["kept_unrecorded"] == len(post_of_pixels)
    assert any("annotate did not write" in m for m in caplog.messages)


def test_cli_mistakes_stop_with_one_line(tiny_raw, tmp_path, capsys, monkeypatch):
    def run(*args):
        with pytest.raises(SystemExit) as e:
            annotate_cli.main([f"--raw_dir={tiny_raw}", *args])
        assert e.value.code == 2
        return capsys.readouterr().err.strip()

    assert "unknown signals ['pose']" in run("--what=pose")
    assert "unknown signals" in run("--redo=depht")
    assert "must be <library>:<preset or folder>" in run("--what=depth", "--depth_model=dpt")
    assert "is not a folder" in run(f"--raw_dir={tmp_path / 'nope'}")
    assert "--batch_size=0 must be >= 1" in run("--batch_size=0")

    def not_found(*a, **k):
        raise OSError("x is not a local folder and is not a valid model identifier\nmore")

    with monkeypatch.context() as m:
        m.setattr(backends, "load", not_found)
        message = run("--what=depth", "--depth_model=transformers:x")
    assert message == ("data_prep.annotate: --depth_model=transformers:x: cannot load the "
                       "weights: x is not a local folder and is not a valid model identifier")

    def missing(name, *a, **k):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(backends.importlib, "import_module", missing)
    message = run("--what=depth", "--depth_model=keras_hub:x")
    assert 'pip install -e ".[annotate-jax]"' in message and "\n" not in message
    assert "pip install --no-deps keras-hub==0.32.0" in message
    assert "annotate-torch" in run("--what=captions", "--captions_model=transformers:x")
