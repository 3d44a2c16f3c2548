# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Issue 10 items 1, 3, 9 and 11: data_prep never deletes what it did not write, a few bad
timestamps cannot move the crawl time, hostile text is read or counted, and bad input ends in
one line. Every test works on a copy of the embedded `tiny` dataset or of its preparation.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ipa_jax import config_lib
from ipa_jax.data import instagram, prepare
from tests.conftest import REPO, load_config, read_tree

DAY = 86400


def _prep():
    return load_config("i2pa", "tiny").prep


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _json(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture
def raw_copy(tiny_raw, tmp_path):
    path = tmp_path / "raw"
    shutil.copytree(tiny_raw, path)
    return path


# ---------------------------------------------------------------- 1. only deletes its own files

def test_prepare_refuses_a_folder_it_did_not_write(tiny_raw, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "posts.csv").write_text("my own posts")  # even a name that prepare writes
    with pytest.raises(config_lib.DataError, match=r"not empty .*posts\.csv, thesis\.tex"):
        prepare.prepare(tiny_raw, str(mine), _prep(), progress=False)
    assert read_tree(mine) == {"thesis.tex": b"years of work", "posts.csv": b"my own posts"}
    with pytest.raises(config_lib.DataError, match="is a file"):
        prepare.prepare(tiny_raw, str(mine / "thesis.tex"), _prep(), progress=False)


@pytest.mark.parametrize("where", ["the raw dataset", "inside it", "a link to it", "around it"])
def test_prepare_never_writes_into_or_around_the_raw_dataset(raw_copy, tmp_path, where):
    out = {"the raw dataset": raw_copy, "inside it": raw_copy / "prepared",
           "a link to it": tmp_path / "link", "around it": tmp_path}[where]
    if where == "a link to it":
        out.symlink_to(raw_copy)
    before = read_tree(raw_copy)
    with pytest.raises(config_lib.DataError, match="raw dataset"):
        prepare.prepare(str(raw_copy), str(out), _prep(), progress=False)
    assert read_tree(raw_copy) == before
    assert not (raw_copy / "prepared").exists()


def test_interrupted_preparation_starts_over_and_removes_only_its_own(
        tiny_prepared, tiny_raw, tmp_path):
    out = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, out)
    assert (out / prepare.MARKER).exists()
    os.remove(out / prepare.SUMMARY)  # as if killed before the end
    (out / "posts.csv").write_text("half written")
    (out / "cache").mkdir()
    (out / "cache" / "embeddings.npz").write_bytes(b"kept")
    (out / "features").mkdir()  # derived from the old images by ipa_jax.features: stale now
    (out / "features" / "resnet50-x.npz").write_bytes(b"stale")
    summary = prepare.prepare(tiny_raw, str(out), _prep(), progress=False)
    assert summary == _json(os.path.join(tiny_prepared, prepare.SUMMARY))
    assert (out / "cache" / "embeddings.npz").read_bytes() == b"kept"
    assert not (out / "features").exists()
    for name in ("posts.csv", "pdips.csv", "groups.csv", "drops.json"):
        assert (out / name).read_bytes() == (open(os.path.join(tiny_prepared, name), "rb")
                                             .read()), name
    # A file of the user's in an unfinished preparation: refused, nothing deleted.
    os.remove(out / prepare.SUMMARY)
    (out / "notes.txt").write_text("mine")
    before = read_tree(out)
    with pytest.raises(config_lib.DataError, match=r"notes\.txt"):
        prepare.prepare(tiny_raw, str(out), _prep(), progress=False)
    assert read_tree(out) == before


def test_prepare_killed_midway_resumes_to_the_same_files(tiny_raw, tiny_prepared, tmp_path):
    out = tmp_path / "prepared"
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_prep.prepare", "--config=configs/i2pa.py:tiny",
         f"--config.data.raw_dir={tiny_raw}", f"--out_dir={out}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "drops.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "finished before it could be killed"
    assert (out / prepare.MARKER).exists() and not (out / prepare.SUMMARY).exists()
    summary = prepare.prepare(tiny_raw, str(out), _prep(), progress=False)
    assert summary == _json(os.path.join(tiny_prepared, prepare.SUMMARY))
    for name in ("posts.csv", "pdips.csv", "groups.csv", "images.csv", "drops.json"):
        assert (out / name).read_bytes() == (open(os.path.join(tiny_prepared, name), "rb")
                                             .read()), name


def test_training_never_deletes_a_folder_it_did_not_generate(tmp_path):
    from ipa_jax import train  # noqa: PLC0415 - pulls in JAX

    config = load_config("i2pa", "tiny")
    assert config.data.raw_dir == "embedded"
    target = tmp_path / "embedded" / "tiny-seed0"  # where the embedded dataset would go
    target.mkdir(parents=True)
    (target / "influencers.txt").write_text("my own dataset")
    with pytest.raises(config_lib.DataError, match="non-empty"):
        train.ensure_data(config, str(tmp_path))
    assert read_tree(target) == {"influencers.txt": b"my own dataset"}
    assert not (tmp_path / "prepared").exists()


# ---------------------------------------------------------------- 3. bad timestamps

def _set_timestamp(raw, post_id, timestamp):
    path = raw / "info" / f"{post_id}.info"
    meta = json.loads(path.read_text())
    meta["taken_at_timestamp"] = timestamp
    path.write_text(json.dumps(meta))


def test_bad_timestamps_cannot_move_the_crawl_time(raw_copy, tiny_prepared, tmp_path):
    base = _json(os.path.join(tiny_prepared, prepare.SUMMARY))
    posts = _csv(os.path.join(tiny_prepared, "posts.csv"))
    crawl = max(int(p["timestamp"]) for p in posts)
    # Two posts that are too recent for a PDIP anyway (and not the newest): one in milliseconds,
    # one a year after the crawl. Today the first would become the crawl time.
    recent = sorted((p for p in posts if crawl - 30 * DAY < int(p["timestamp"]) < crawl),
                    key=lambda p: p["post_id"])[:2]
    _set_timestamp(raw_copy, recent[0]["post_id"], int(recent[0]["timestamp"]) * 1000)
    _set_timestamp(raw_copy, recent[1]["post_id"], crawl + 365 * DAY)
    out = tmp_path / "prepared"
    summary = prepare.prepare(str(raw_copy), str(out), _prep(), progress=False)
    # The same PDIPs, in the same splits.
    assert len(_csv(out / "pdips.csv")) == len(_csv(os.path.join(tiny_prepared, "pdips.csv"))) > 0
    assert (out / "pdips.csv").read_bytes() == open(
        os.path.join(tiny_prepared, "pdips.csv"), "rb").read()
    drops = _json(out / "drops.json")
    assert drops["read"] == {**base["drops"]["read"], "implausible timestamp": 1,
                             "after crawl time": 1}
    assert drops["pdips"] == {**base["drops"]["pdips"],
                              "too recent": base["drops"]["pdips"]["too recent"] - 2}
    assert summary["crawl_time"] == base["crawl_time"]
    assert summary["crawl_time"]["timestamp"] == crawl
    utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(crawl))
    assert summary["crawl_time"]["utc"] == utc and utc.startswith("2019-02-2")
    assert f"crawl time: {utc}" in prepare.format_report(summary)


def test_explicit_crawl_time_is_used_and_drops_later_posts(raw_copy, tmp_path):
    prep = _prep()
    prep.crawl_time = 1548979200  # 2019-02-01
    summary = prepare.prepare(str(raw_copy), str(tmp_path / "out"), prep, progress=False)
    assert summary["crawl_time"] == {"timestamp": 1548979200, "utc": "2019-02-01T00:00:00Z",
                                     "source": "config.prep.crawl_time"}
    kept = _csv(tmp_path / "out" / "posts.csv")
    assert max(int(p["timestamp"]) for p in kept) <= 1548979200
    assert summary["drops"]["read"]["after crawl time"] > 0
    assert summary["num_posts_read"] == len(kept)


# ---------------------------------------------------------------- 9. hostile text

def test_bom_latin1_names_and_separator_lines_are_read_or_counted(
        raw_copy, tiny_prepared, tmp_path):
    mapping = raw_copy / instagram.MAPPING_FILE
    lines = mapping.read_bytes().splitlines(keepends=True)
    # A copy of a kept post under a Latin-1 user name (its files on disk under the same bytes).
    kept = _csv(os.path.join(tiny_prepared, "posts.csv"))[0]
    user, info, images = next(line.decode().rstrip("\n").split("\t") for line in lines[1:]
                              if line.decode().startswith(kept["user"] + "\t")
                              and kept["post_id"] == f"{kept['user']}-{line.decode().split()[1]}"
                              .removesuffix(".info"))
    latin = b"caf\xe9"
    name = lambda rest: (latin + rest.encode()).decode("utf-8", "surrogateescape")
    shutil.copy(raw_copy / "info" / f"{user}-{info}", raw_copy / "info" / name(f"-{info}"))
    image = images.strip("[]'")
    shutil.copy(raw_copy / "image" / f"{user}-{image}", raw_copy / "image" / name(f"-{image}"))
    mapping.write_bytes(b"\xef\xbb\xbf" + b"".join(lines)
                        + latin + f"\t{info}\t{images}\n".encode())
    influencers = raw_copy / instagram.INFLUENCERS_FILE
    header, *rows = influencers.read_bytes().splitlines(keepends=True)
    influencers.write_bytes(b"\xef\xbb\xbf" + header + b"=" * 70 + b"\n" + b"".join(rows))
    out = tmp_path / "prepared"
    summary = prepare.prepare(str(raw_copy), str(out), _prep(), progress=False)
    base = _json(os.path.join(tiny_prepared, prepare.SUMMARY))
    assert summary["drops"]["read"] == {**base["drops"]["read"], "non-utf-8 mapping row": 1}
    for name_ in ("posts.csv", "pdips.csv", "groups.csv", "images.csv"):
        assert (out / name_).read_bytes() == open(
            os.path.join(tiny_prepared, name_), "rb").read(), name_
    read, dropped = instagram.read_influencers(raw_copy)
    assert len(read) == 6 and not dropped


# ---------------------------------------------------------------- 11. one line, no traceback

def test_missing_empty_or_unusable_data_is_one_clear_error(raw_copy, tiny_raw, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(config_lib.DataError, match="raw dataset folder .*nowhere does not exist"):
        prepare.prepare(str(tmp_path / "nowhere"), str(out), _prep(), progress=False)
    mapping = raw_copy / instagram.MAPPING_FILE
    text = mapping.read_text()
    mapping.unlink()
    with pytest.raises(config_lib.DataError,
                       match=r"JSON-Image_files_mapping\.txt is missing.*config\.data\.raw_dir"):
        prepare.prepare(str(raw_copy), str(out), _prep(), progress=False)
    assert not out.exists()  # nothing is created for input that is not there
    mapping.write_text(text.splitlines()[0] + "\n\n")
    with pytest.raises(config_lib.DataError, match="lists no post"):
        prepare.prepare(str(raw_copy), str(out), _prep(), progress=False)
    mapping.write_text(text)
    shutil.rmtree(raw_copy / "info")
    with pytest.raises(config_lib.DataError,
                       match=r"None of the 300 rows .*'missing metadata file': 300"):
        prepare.prepare(str(raw_copy), str(out), _prep(), progress=False)
    assert os.listdir(out) == [prepare.MARKER]  # a rerun after the fix may use it
    shutil.rmtree(out)
    prep = _prep()
    prep.pdips.min_likes = 10**9  # every post dropped at the PDIP stage
    with pytest.raises(config_lib.DataError,
                       match=r"No example is left for pdips/train, pdips/validation, pdips/test"):
        prepare.prepare(tiny_raw, str(out), prep, progress=False)


def test_cli_prints_one_line_without_traceback(tmp_path):
    (tmp_path / "raw").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "data_prep.prepare", "--config=configs/i2pa.py:tiny",
         f"--config.data.raw_dir={tmp_path / 'raw'}", f"--out_dir={tmp_path / 'out'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Data error: ") and "JSON-Image_files_mapping.txt is missing" \
        in last, proc.stderr[-2000:]
