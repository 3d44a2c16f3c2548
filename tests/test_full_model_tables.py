# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""`python -m ipa_jax.full_model_tables`: Ji et al.'s Tables 1 and 2 over seeds."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ipa_jax import config_lib
from ipa_jax import full_model_tables as tables
from tests.conftest import REPO, fast_compiles


def _summary(rows=tables.ROWS, seed_values=None):
    rng = np.random.default_rng(0)
    out = {}
    for i, r in enumerate(rows):
        out[r] = {m: tables.summarize(seed_values or (0.6 + 0.05 * i + 0.01 * rng.normal(size=3)))
                  for m in tables.METRICS}
    return out


FIXED = {"oracle (planted, noise-free)": {m: 0.9 for m in tables.METRICS}}


def test_summaries_and_comparisons_match_numpy():
    s = tables.summarize([0.80, 0.82, 0.87])
    assert s["mean"] == pytest.approx(np.mean([0.80, 0.82, 0.87]))
    assert s["std"] == pytest.approx(np.std([0.80, 0.82, 0.87], ddof=1))
    assert tables.summarize([0.5])["std"] == 0.0
    a, b = tables.summarize([0.90, 0.91, 0.92]), tables.summarize([0.80, 0.81, 0.82])
    c = tables.compare(a, b)
    assert c["difference"] == pytest.approx(0.1)
    assert c["standard_error"] == pytest.approx(np.sqrt(2 * 0.01**2 / 3))
    assert c["beyond_spread"] and c["better"]
    noisy = tables.summarize([0.75, 0.85, 0.95])  # same mean gap, spread 10x larger
    assert not tables.compare(noisy, b)["beyond_spread"]
    # Lower is better for ratio MSE: a smaller error is "better".
    assert tables.compare(b, a, higher_is_better=False)["beyond_spread"]
    assert not tables.compare(a, b, higher_is_better=False)["better"]


def test_markdown_csv_and_plot(tmp_path):
    summary = _summary()
    md = tables.tables_markdown(summary, FIXED, "header line")
    assert md.startswith("header line")
    assert md.count("| + retrieval + 3D (full) |") == 2  # in Table 1 and Table 2
    assert "| I2PA (Ding et al.), BCE on PDIPs |" in md and "79.48%" in md
    assert md.count("| oracle (planted, noise-free) |") == 2
    for _, _, question in tables.COMPARISONS:
        assert f"| {question} |" in md
    tables.write_csv(tmp_path / "t.csv", summary, FIXED)
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == (len(tables.ROWS) + 1) * len(tables.METRICS)
    full_acc = next(r for r in rows if r["row"] == "full" and r["metric"] == "pairwise_accuracy")
    values = [float(v) for v in full_acc["values"].split()]
    assert float(full_acc["mean"]) == pytest.approx(np.mean(values), abs=1e-6)
    tables.plot_table2(tmp_path / "t.png", summary, FIXED)
    img = np.asarray(Image.open(tmp_path / "t.png").convert("RGB"))
    assert img.shape == (420, 760, 3)
    bars = np.all(img == (90, 130, 200), axis=-1)
    columns = np.flatnonzero(bars.any(axis=0))
    assert len(np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)) == len(tables.TABLE2)


def test_references_are_taken_on_the_groups_also_from_an_i2pa_run():
    """An I2PA run's own oracle and retrieval-only scorer are on PDIPs; the tables take the
    ones on the groups' test split, which `also_test_on` adds."""
    def metrics(v):
        return {m: v for m in tables.METRICS}

    i2pa = {"test": metrics(0.1), "test_on_groups": metrics(0.2),
            "test_oracle": metrics(0.3), "test_oracle_on_groups": metrics(0.4),
            "test_retrieval_only": metrics(0.5), "test_retrieval_only_on_groups": metrics(0.6)}
    full = {"test": metrics(0.7), "test_oracle": metrics(0.4),
            "test_retrieval_only": metrics(0.6)}
    assert tables.on_groups(i2pa) == metrics(0.2) and tables.on_groups(full) == metrics(0.7)
    expected = {"oracle (planted, noise-free)": metrics(0.4),
                "retrieval only (no training)": metrics(0.6)}
    assert tables.references({("i2pa", 0): i2pa}) == expected
    assert tables.references({("i2pa", 0): i2pa, ("full", 0): full}) == expected
    assert tables.references({("x", 0): {"test": metrics(0.1)}}) == {}


def test_overrides_are_typed_and_checked():
    c = config_lib.base_config()
    tables.apply_overrides(c, ["num_epochs=2", "data.raw_dir=/data/ig", "input.crop_size=96",
                               "data.also_test_on=['groups']"])
    assert c.num_epochs == 2.0 and isinstance(c.num_epochs, float)
    assert c.data.raw_dir == "/data/ig" and c.input.crop_size == 96
    assert c.data.also_test_on == ("groups",)
    for bad, message in (("num_epochs", "FIELD=VALUE"), ("nope.x=1", "no field 'nope.x'"),
                         ("input.crop_size=big", "is a int")):
        with pytest.raises(config_lib.ConfigError, match=message):
            tables.apply_overrides(c, [bad])


def test_every_row_shares_one_preparation_and_i2pa_is_tested_on_groups():
    base = tables.load_config("full.py", "tiny")
    per_row = tables.split_row_overrides(["i2pa:num_epochs=3", "full:batch_size=4"])
    configs = {r: tables.run_config(r, "tiny", 3, ["num_steps=5"], base.prep, "RAW", "PREP",
                                    per_row.get(r, ()))
               for r in tables.ROWS}
    assert configs["i2pa"].num_epochs == 3.0 and configs["full"].batch_size == 4
    assert configs["concat"].num_epochs != 3.0 and configs["concat"].batch_size != 4
    assert all(c.num_steps == 5 for c in configs.values())
    with pytest.raises(config_lib.ConfigError, match="ROW:FIELD=VALUE"):
        tables.split_row_overrides(["i3pa:num_epochs=3"])
    for r, c in configs.items():
        assert c.prep.to_dict() == base.prep.to_dict(), r
        assert (c.seed, c.data.raw_dir, c.data.prepared_dir) == (3, "RAW", "PREP")
    assert configs["i2pa"].data.pairs == "pdips" and configs["i2pa"].loss == "i2pa_bce"
    assert configs["i2pa"].data.also_test_on == ("groups",)
    assert configs["full"].data.also_test_on == ()
    assert configs["concat"].fusion.kind == "concat"
    assert configs["log_likes"].loss == "log_likes_mse"


@pytest.mark.parametrize("args, message", [
    (["--rows=full,bogus"], "--rows"),
    (["--set=num_epochs"], "FIELD=VALUE"),
    (["--seeds="], "--seeds is empty"),
])
def test_bad_flags_stop_with_one_line(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "ipa_jax.full_model_tables", f"--workdir={tmp_path / 'w'}",
         "--size=tiny", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "w" / "runs")


@pytest.mark.slow
def test_tables_end_to_end_on_tiny(tiny_raw, tmp_path):
    """Two rows, two seeds through the real loop; the tables hold what the runs wrote."""
    workdir = str(tmp_path / "tables")
    with fast_compiles():
        out = tables.run_all(workdir, "tiny", [0, 1], ["i2pa", "full"],
                             [f"data.raw_dir={tiny_raw}"])
    runs = out["runs"]
    assert set(runs) == {("i2pa", 0), ("i2pa", 1), ("full", 0), ("full", 1)}
    i2pa = [runs["i2pa", s]["test_on_groups"]["pairwise_accuracy"] for s in (0, 1)]
    assert out["summary"]["i2pa"]["pairwise_accuracy"]["values"] == pytest.approx(i2pa)
    assert runs["i2pa", 0]["test_on_groups"]["num_images"] == runs["full", 0]["test"][
        "num_images"]
    assert runs["full", 0]["test"] != runs["full", 1]["test"]  # the seed reaches the run
    assert set(out["fixed"]) == {"oracle (planted, noise-free)", "retrieval only (no training)"}
    # A second call reads the finished runs back instead of training them again.
    again = tables.run_all(workdir, "tiny", [0, 1], ["i2pa", "full"],
                           [f"data.raw_dir={tiny_raw}"])
    assert again["summary"] == out["summary"]
    assert all("seconds" not in r for r in again["runs"].values())
