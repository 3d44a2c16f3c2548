# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""benchmarks/backbones.py runs end to end on a tiny model: rows, FLOPs, MFU and the profile."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Smoke tests: the scripts run and print every row; their numbers are not what is tested, so XLA
# skips most optimisations (compiles take a fraction of the time).
SMOKE_ENV = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")


def test_backbones_benchmark_prints_rows_flops_and_a_labelled_profile():
    cmd = [sys.executable, "benchmarks/backbones.py", "--models=resnet_mini",
           "--precisions=float32", "--notorch", "--steps=1", "--warmup=1", "--size=32",
           "--batch=2", "--peak_tflops=0.5", "--profile", "--top=40"]
    proc = subprocess.run(cmd, cwd=REPO, env=SMOKE_ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for mode in ("infer", "train"):
        numbers = r"\s+(\S+)\s+-\s+-\s+(\S+)\s+(\S+)\s+(\S+)%"  # img/s, compile s, TFLOP/s, MFU
        # The default --ops=auto is the CPU-tuned op set on the CPU backend.
        row = re.search(rf"^resnet_mini\s+{mode}\s+float32\s+cpu_tuned{numbers}", out, re.M)
        assert row, out
        images_per_s, compile_s, tflops, mfu = map(float, row.groups())
        assert images_per_s > 0 and compile_s > 0 and tflops > 0
        assert abs(mfu - 100 * tflops / 0.5) < 0.1 + 1e-3 * mfu
    # The profile splits the step and labels XLA's instructions by phase and op.
    assert re.search(r"JAX\s+forward\s+\d+ ms\s+backward\s+-?\d+ ms", out), out
    labels = set(re.findall(r"\d+x  (fwd|bwd|opt) +(ynn|xla) +(conv fwd|conv bwd-filter|dot)", out))
    assert ("fwd", "conv fwd") in {(p, o) for p, _, o in labels}, out
    assert ("bwd", "conv bwd-filter") in {(p, o) for p, _, o in labels}, out
    assert {"fwd", "bwd"} <= {p for p, _, o in labels if o == "dot"}, out


@pytest.mark.slow
def test_full_model_benchmark_prints_every_row_and_the_ratios():
    cmd = [sys.executable, "benchmarks/full_model.py", "--backbone=resnet_mini",
           "--depth_backbone=resnet_mini", "--size=32", "--batch=2", "--steps=1", "--warmup=1",
           "--fusion_width=32", "--rows=plain,backbone_only,full,full_on_the_fly"]
    proc = subprocess.run(cmd, cwd=REPO, env=SMOKE_ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    params = {}
    for row in ("plain", "backbone_only", "full", "full_on_the_fly"):
        for mode in ("train", "infer"):
            m = re.search(rf"^{row}\s+{mode}\s+([\d,]+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)", out, re.M)
            assert m, out
            params[row] = int(m.group(1).replace(",", ""))
            assert float(m.group(2)) > 0 and float(m.group(4)) > 0
    # The fused rows add the fusion; on the fly adds no trained parameter (the depth backbone
    # is frozen, outside `params`).
    assert params["plain"] < params["backbone_only"] < params["full"] == params["full_on_the_fly"]
    for mode in ("train", "infer"):
        assert re.search(rf"^{mode}: full \(aggregation block, precomputed branches\) / "
                         r"backbone_only = \d+\.\d{3} \(goal <= 1\.10\)$", out, re.M), out


@pytest.mark.slow
def test_scoring_benchmark_prints_every_row_and_the_ratio_to_i2pa():
    cmd = [sys.executable, "benchmarks/scoring.py", "--i2pa_backbone=resnet_mini",
           "--backbone=resnet_mini", "--depth_backbone=resnet_mini", "--fusion_width=32",
           "--size=32", "--batch=2", "--steps=1", "--bank=40", "--dim=16"]
    proc = subprocess.run(cmd, cwd=REPO, env=SMOKE_ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for row in ("i2pa", "fusion", "draft", "retrieval"):
        for batch in (2, 1):  # batch, img/s, ms/img, compile s ("-": no compile), vs 450 ms
            m = re.search(rf"^{row}\s+{batch}\s+\S+\s+([\d.]+)\s+([\d.]+)\s+(\S+)\s+([\d.]+)$",
                          out, re.M)
            assert m, out
            images_per_s, ms, compile_s, ratio = m.groups()
            assert float(images_per_s) > 0 and float(ms) > 0
            assert (compile_s == "-") == (row == "retrieval")
            assert abs(float(ratio) - float(ms) / 450) < 1e-3 + 1e-3 * float(ratio)
    assert re.search(r"^one new draft alone: draft \+ retrieval of 1 query = \d+ ms", out, re.M)
    assert "Not timed: the depth map annotator" in out


@pytest.mark.slow  # 4 worker processes, each starting JAX
def test_scaling_benchmark_prints_every_section_with_the_two_process_row(tmp_path):
    cmd = [sys.executable, "benchmarks/scaling.py", "--quick", "--devices=2",
           f"--workdir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=SMOKE_ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # 1. Step time: per-device batch, ms/step, images/s, compile s; 2 processes x 1 device.
    numbers = r"\s+([\d.]+) pairs\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$"
    for label, devices in (("1x2", 2), ("2x1 gloo", 2)):
        row = re.search(rf"^{label}\s+{devices}{numbers}", out, re.M)
        assert row, out
        per_device, ms, images_per_s, compile_s = map(float, row.groups())
        assert per_device == 8 / devices and ms > 0 and images_per_s > 0 and compile_s > 0
    assert re.search(r"^cross-process cost: 2x1 / 1x2 step time = \d+\.\d\dx$", out, re.M), out
    # 2. Outside the model: every part in ms, both fractions in [0, 100] %.
    for part in (r"\(a\) input: next\(iterator\)", r"\(b\) host-to-device: to_global",
                 r"\(c\) step on device-resident data", "loop as train.py runs it"):
        row = re.search(rf"^{part}.*?\s([\d.]+)$", out, re.M)
        assert row and float(row.group(1)) > 0, out
    for fraction in (r"serial: \(a\+b\)/\(a\+b\+c\)", r"in the loop: 1 - c/loop"):
        row = re.search(rf"^outside the model, {fraction}\s+([\d.]+)%$", out, re.M)
        assert row and 0 <= float(row.group(1)) <= 100, out
    # 3. Input pipeline against the step, and the verdict on the 4x goal.
    delivered = re.search(r"^input pipeline alone\s+([\d.]+)$", out, re.M)
    consumed = re.search(r"^step consumes \(c\)\s+([\d.]+)$", out, re.M)
    assert delivered and consumed, out
    delivered, consumed = float(delivered.group(1)), float(consumed.group(1))
    assert delivered > 0 and consumed > 0
    verdict = re.search(r"^pipeline / step = ([\d.]+)x \(goal >= 4x: (met|NOT met)\)$", out, re.M)
    assert verdict and abs(float(verdict.group(1)) - delivered / consumed) < 0.01, out
    assert (verdict.group(2) == "met") == (float(verdict.group(1)) >= 4)
    # 4. Data preparation: the local path and the Beam pipeline, the same posts read and kept.
    counts = set()
    for path in (r"local \(data_prep\.prepare\)", r"Beam \(DirectRunner\)"):
        row = re.search(rf"^{path}\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
        assert row, out
        posts, kept, seconds, posts_per_s = map(float, row.groups())
        assert posts >= kept > 0 and seconds > 0  # seconds printed to 0.01
        # seconds and posts/s are each printed rounded (to 0.01 and 0.1)
        assert (posts / (seconds + 0.006) - 0.06 <= posts_per_s
                <= posts / max(seconds - 0.006, 1e-3) + 0.06)
        counts.add((posts, kept))
    assert len(counts) == 1, out
