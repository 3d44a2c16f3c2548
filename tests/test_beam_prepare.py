# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Issue 13 item 7: the Beam pipeline (DirectRunner) writes what the local path writes, the
manifests, drops and summary byte for byte and every TFRecord example in the same order; drops
come from Beam metrics; the CLI's --runner and its mistakes."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_prep import prepare as prepare_cli
from ipa_jax import config_lib, records
from ipa_jax.data import instagram, prepare, tfds_builder
from ipa_jax.data import out_dir as out_dir_lib
from tests.conftest import REPO, assert_same_examples, load_config, prepared_records

beam_pipeline = pytest.importorskip("data_prep.beam_pipeline")

FILES = ("posts.csv", "groups.csv", "pdips.csv", "images.csv", "drops.json", "summary.json")
DIRECT = ["--runner=DirectRunner"]


def _prep(**changes):
    prep = load_config("i2pa", "tiny").prep
    for key, value in changes.items():
        prep[key] = value
    return prep


def _assert_same(local, beam, extra=()):
    """Files byte for byte; examples field by field, in order."""
    for name in (*FILES, *extra):
        with open(os.path.join(local, name), "rb") as a, open(os.path.join(beam, name), "rb") as b:
            assert a.read() == b.read(), name
    assert_same_examples(local, beam)


def test_direct_runner_writes_what_the_local_path_writes(tiny_raw, tiny_prepared, tmp_path):
    out = str(tmp_path / "beam")
    # Small shards: several files per split, the same examples in the same order.
    summary = beam_pipeline.prepare(tiny_raw, out, _prep(), DIRECT, images_per_shard=24)
    assert summary == out_dir_lib.read_summary(tiny_prepared)
    _assert_same(tiny_prepared, out)
    builder = tfds.builder_from_directory(tfds_builder.dataset_dir(out, "groups"))
    train = builder.info.splits["train"]
    assert len(train.shard_lengths) > 1 and sum(train.shard_lengths) == train.num_examples
    # tf.data reads the shards in the same order as the record index (evaluation's reader).
    ids = [x["group_id"].numpy() for x in builder.as_dataset(split="train")]
    assert ids == [records.parse_group(r)["group_id"]
                   for r in prepared_records(out, "groups", "train")]
    assert not os.path.exists(os.path.join(out, beam_pipeline.stages.TEMP))
    # A complete folder is reused, like the local path's.
    assert beam_pipeline.prepare(tiny_raw, out, _prep(), DIRECT) == summary


def test_drops_by_every_read_rule_and_top_users_match(tiny_raw, tmp_path):
    """Duplicate, malformed and non-UTF-8 mapping rows, a post after the crawl time and the
    top-users rule: counted by Beam metrics as the local path counts them."""
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    mapping = raw / "JSON-Image_files_mapping.txt"
    lines = mapping.read_bytes().splitlines(keepends=True)
    with open(mapping, "ab") as f:
        f.write(b"".join(lines[1:]))  # every post again: duplicates
        f.write(b"not\ta row\n" + b"bad\xff\xfeuser\tx.info\t['x.jpg']\n")
    prep = _prep(top_users=2, crawl_time=1550000000)
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    summary = prepare.prepare(str(raw), local, prep, progress=False)
    assert beam_pipeline.prepare(str(raw), beam, prep, DIRECT) == summary
    read = summary["drops"]["read"]
    for reason in (instagram.DUPLICATE_POST, instagram.BAD_MAPPING_ROW, instagram.NON_UTF8_ROW,
                   instagram.NOT_A_TOP_USER, instagram.AFTER_CRAWL_TIME):
        assert read.get(reason, 0) > 0, reason
    _assert_same(local, beam)


@pytest.mark.parametrize("mode", ["per_user", "fallback"])
def test_retrieval_matches(tiny_raw, tmp_path, mode):
    """The retrieval branch, embeddings in batches inside the pipeline (background masks read
    where a post has one): per_user from each user's own bank (grouped by user), fallback with
    one index over every bank (its small banks fill their slots from other users):
    retrieval.csv byte for byte, f_ret and the retrieved rows exactly."""
    prep = load_config("full", "tiny").prep
    prep.retrieval.mode, prep.depth.enabled = mode, False
    if mode == "fallback":  # K above the ~30-post banks: their empty slots go cross-user
        prep.retrieval.k, prep.retrieval.min_bank_size = 40, 100
    raw = tmp_path / "raw"  # with background masks (an annotator's) for 12 posts only
    shutil.copytree(tiny_raw, raw, ignore=shutil.ignore_patterns("background"))
    (raw / "background").mkdir()
    mask = np.full((30, 30), 255, np.uint8)
    mask[10:25, 5:20] = 0
    for name in sorted(os.listdir(raw / "info"))[:12]:
        Image.fromarray(mask).save(raw / "background" / f"{name[:-len('.info')]}.png")
    tiny_raw = str(raw)
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    summary = prepare.prepare(tiny_raw, local, prep, progress=False)
    assert 0 < summary["retrieval"]["posts_with_background_mask"] <= 12
    assert summary["retrieval"]["num_pose_pairs"] > 0  # pose, background and semantic all count
    assert (summary["retrieval"]["num_cold_start_queries"] > 0) == (mode == "fallback")
    assert beam_pipeline.prepare(tiny_raw, beam, prep, DIRECT) == summary
    _assert_same(local, beam, extra=("retrieval.csv",))
    with np.load(os.path.join(local, "retrieval.npz")) as a, \
            np.load(os.path.join(beam, "retrieval.npz")) as b:
        assert a["f_ret"].shape == (summary["num_posts_read"], prep.retrieval.k, 5)
        np.testing.assert_array_equal(a["f_ret"], b["f_ret"])
        np.testing.assert_array_equal(a["retrieved"], b["retrieved"])


@pytest.fixture(scope="module")
def bad_maps(tiny_raw, tmp_path_factory) -> str:
    """The tiny maps with one missing, one unreadable, one constant and one half-size map."""
    out = tmp_path_factory.mktemp("maps") / "depth"
    shutil.copytree(os.path.join(tiny_raw, "depth"), out)
    names = sorted(os.listdir(out))
    os.remove(out / names[5])
    (out / names[50]).write_bytes(b"not a png at all")
    Image.fromarray(np.full((20, 30), 7000, np.uint16)).save(out / names[100])
    with Image.open(out / names[150]) as im:
        im.resize((im.width // 2, im.height // 2)).save(out / names[150])
    return str(out)


@pytest.mark.parametrize("mode,missing", [("precomputed", "drop"), ("on_the_fly", "constant")])
def test_depth_outcomes_features_and_maps_match(tiny_raw, bad_maps, tmp_path, mode, missing):
    """The 3D branch: every depth-map outcome counted (Beam metrics), posts dropped or given a
    constant map, precomputed features and stored maps as the local path writes them."""
    prep = load_config("full", "tiny").prep
    prep.retrieval.enabled = False
    prep.depth.mode, prep.depth.missing, prep.depth.depth_dir = mode, missing, bad_maps
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    summary = prepare.prepare(tiny_raw, local, prep, progress=False)
    outcomes = summary["depth"]["outcomes"]
    assert {o: outcomes[o] for o in outcomes if o != "ok"} == {
        "missing depth map": 1, "unreadable depth map": 1, "constant depth map": 1,
        "resized depth map": 1}
    assert beam_pipeline.prepare(tiny_raw, beam, prep, DIRECT, images_per_shard=24) == summary
    _assert_same(local, beam)


def test_cli_runner_and_its_mistakes(tiny_raw, tiny_prepared, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "data_prep.prepare", "--config=configs/i2pa.py:tiny",
         f"--config.data.raw_dir={tiny_raw}", f"--out_dir={out}", "--runner=DirectRunner",
         "--beam_options=direct_num_workers=1"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "posts kept after reading: 255" in proc.stdout
    _assert_same(tiny_prepared, str(out))

    with pytest.raises(config_lib.ConfigError, match="not key=value"):
        prepare_cli.run(tiny_raw, str(tmp_path / "a"), _prep(), runner="DirectRunner",
                        beam_options="direct_num_workers")
    with pytest.raises(config_lib.ConfigError, match="needs a Beam --runner"):
        prepare_cli.run(tiny_raw, str(tmp_path / "b"), _prep(), beam_options="x=1")


def test_without_beam_the_runner_names_the_extra(tiny_raw, tmp_path, monkeypatch):
    import data_prep  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "data_prep.beam_pipeline", None)  # import fails
    monkeypatch.delattr(data_prep, "beam_pipeline", raising=False)
    with pytest.raises(config_lib.ConfigError, match=r'pip install -e "\.\[beam\]"'):
        prepare_cli.run(tiny_raw, str(tmp_path / "x"), _prep(), runner="DirectRunner")
