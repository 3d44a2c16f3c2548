# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Weight conversion (`ipa_jax.convert`) and loading (`ipa_jax.pretrained`)."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipa_jax import convert, pretrained
from ipa_jax.models.resnet import ResNet
from tests.conftest import REPO
from tests.golden import make_resnet

HEADS = (r"^params/fc/", r"^params/head/")


def _abstract(model, size=32):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def _tiny_state():
    return dict(convert.read_state_dict(make_resnet.WEIGHTS))


def test_table_transforms_each_kind_of_leaf():
    w = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    path, kernel = convert.torch_to_flax("layer1.0.downsample.0.weight", w)
    assert path == "params/layer1_0/downsample_0/kernel"
    np.testing.assert_array_equal(kernel[1, 2, 0, 1], w[1, 0, 1, 2])  # OIHW -> HWIO
    path, dense = convert.torch_to_flax("layers.2.blocks.11.mlp.fc1.weight", w[0, 0])
    assert path == "params/layers_2/blocks_11/mlp/fc1/kernel" and dense.shape == (5, 4)
    assert convert.torch_to_flax("bn1.weight", w[0, 0, 0])[0] == "params/bn1/scale"
    assert convert.torch_to_flax("bn1.running_var", w[0, 0, 0])[0] == "batch_stats/bn1/var"
    assert convert.torch_to_flax("head.fc.bias", w[0, 0, 0])[0] == "params/head/fc/bias"
    for buffer in ("bn1.num_batches_tracked", "layers.0.blocks.0.attn.relative_position_index",
                   "layers.0.blocks.1.attn_mask"):
        assert convert.torch_to_flax(buffer, w) is None


def test_legacy_swin_layout_is_upgraded():
    old = {"layers.0.downsample.reduction.weight": 1, "layers.2.downsample.norm.bias": 2,
           "layers.0.blocks.0.norm1.weight": 3, "head.weight": 4, "head.bias": 5}
    assert convert.upgrade_legacy_keys(old) == {
        "layers.1.downsample.reduction.weight": 1, "layers.3.downsample.norm.bias": 2,
        "layers.0.blocks.0.norm1.weight": 3, "head.fc.weight": 4, "head.fc.bias": 5}
    current = {"layers.1.downsample.reduction.weight": 1, "head.fc.weight": 2}
    assert convert.upgrade_legacy_keys(current) == current


def test_conversion_reports_every_problem():
    model = ResNet(**make_resnet.TINY)
    state = _tiny_state()
    assert convert.convert_state_dict(state, _abstract(model)).ok
    state["extra.weight"] = np.zeros(3, np.float32)
    state["fc.weight"] = np.zeros((7, 256), np.float32)  # 7 classes, the model has 10
    del state["layer3.1.bn2.running_mean"]
    result = convert.convert_state_dict(state, _abstract(model))
    assert not result.ok
    assert result.unplaced == ["extra.weight"]
    assert result.mismatched == ["fc.weight: checkpoint (7, 256) vs model (10, 256) (torch "
                                 "layout)"]
    assert result.missing == ["batch_stats/layer3_1/bn2/mean", "params/fc/kernel"]
    report = result.report()
    assert "extra.weight" in report and "fc.weight" in report and "layer3_1/bn2/mean" in report


def test_relative_position_table_resize():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(13 * 13, 3)).astype(np.float32)
    np.testing.assert_array_equal(convert.resize_relative_position_table(table, 7), table)
    big = convert.resize_relative_position_table(table, 12)
    assert big.shape == (23 * 23, 3)
    # The source offsets 0 and +-1 stay at 0 and +-1, so those entries are copied exactly.
    src, dst = table.reshape(13, 13, 3), big.reshape(23, 23, 3)
    np.testing.assert_allclose(dst[10:13, 10:13], src[5:8, 5:8], atol=1e-6)
    # Interpolation stays within the source's range; the outermost offsets nearly coincide.
    assert dst.min() >= src.min() - 1e-6 and dst.max() <= src.max() + 1e-6
    np.testing.assert_allclose(dst[[0, 0, -1, -1], [0, -1, 0, -1]],
                               src[[0, 0, -1, -1], [0, -1, 0, -1]], atol=1e-4)
    with pytest.raises(ValueError, match="square"):
        convert.resize_relative_position_table(table[:-1], 12)


@pytest.mark.torch
def test_relative_position_table_resize_matches_timm():
    torch = pytest.importorskip("torch")
    pos_embed_rel = pytest.importorskip("timm.layers.pos_embed_rel")
    table = np.random.default_rng(1).normal(size=(13 * 13, 4)).astype(np.float32)
    for window in (12, 5):
        theirs = pos_embed_rel.resize_rel_pos_bias_table(
            torch.from_numpy(table), new_window_size=(window, window),
            new_bias_shape=((2 * window - 1) ** 2, 4)).numpy()
        ours = convert.resize_relative_position_table(table, window)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_convert_checkpoint_refuses_a_partial_model(tmp_path):
    from safetensors.numpy import save_file

    state = _tiny_state()
    del state["layer2.0.conv2.weight"]
    path = str(tmp_path / "partial.safetensors")
    save_file(state, path)
    model_name = "resnet_mini"  # width 16: nothing of the width-8 golden fits
    with pytest.raises(ValueError, match="nothing written"):
        convert.convert_checkpoint(path, model_name, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, "-m", "ipa_jax.convert", f"--checkpoint={path}",
         f"--model={model_name}", f"--output={tmp_path / 'cli'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Conversion failed" in proc.stderr
    assert "--allow_partial" in proc.stderr and "Traceback" not in proc.stderr


def test_convert_writes_and_pretrained_loads(tmp_path):
    """The tiny golden model through write/load, then `merge` with a fresh model."""
    model = ResNet(**make_resnet.TINY)
    result = convert.convert_state_dict(_tiny_state(), _abstract(model))
    out = str(tmp_path / "converted")
    convert.write(out, result.variables, {"model": "tiny", "num_classes": 10, "input": {}})
    assert pretrained.is_converted(out) and not pretrained.is_workdir(out)
    metadata, loaded = pretrained.load_converted(out)
    assert metadata["num_classes"] == 10
    jax.tree.map(np.testing.assert_array_equal, loaded, result.variables)

    # A 3-class model of the same backbone: the backbone loads, the head stays fresh.
    new = ResNet(**{**make_resnet.TINY, "num_classes": 3})
    fresh = jax.jit(lambda: new.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)),
                                     train=False))()
    merged, done = pretrained.merge(fresh, pretrained.load(out), HEADS)
    assert "params/layer3_1/conv2/kernel" in done and "batch_stats/bn1/var" in done
    assert not any(p.startswith("params/fc/") for p in done)
    np.testing.assert_array_equal(merged["params"]["fc"]["kernel"],
                                  fresh["params"]["fc"]["kernel"])
    np.testing.assert_array_equal(merged["batch_stats"]["layer1_0"]["bn1"]["mean"],
                                  loaded["batch_stats"]["layer1_0"]["bn1"]["mean"])
    # Without dont_load, the 10-class head does not fit and every problem is named.
    with pytest.raises(ValueError, match=r"params/fc/kernel has shape \(256, 10\)"):
        pretrained.merge(fresh, loaded, ())
    del loaded["params"]["layer2_0"]
    with pytest.raises(ValueError, match="params/layer2_0/conv1/kernel is missing"):
        pretrained.merge(fresh, loaded, HEADS)
    with pytest.raises(ValueError, match="neither"):
        pretrained.load(str(tmp_path))


def test_merge_resizes_relative_position_tables():
    table = np.random.default_rng(0).normal(size=(13 * 13, 2)).astype(np.float32)
    fresh = {"params": {"attn": {"relative_position_bias_table": np.zeros((23 * 23, 2))}}}
    merged, _ = pretrained.merge(
        fresh, {"params": {"attn": {"relative_position_bias_table": table}}}, ())
    np.testing.assert_allclose(merged["params"]["attn"]["relative_position_bias_table"],
                               convert.resize_relative_position_table(table, 12))


@pytest.mark.torch
def test_pth_is_read_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(v) for k, v in _tiny_state().items()}
    path = str(tmp_path / "model.pth")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = convert.read_state_dict(path)  # unwrapped, `module.` stripped
    assert sorted(loaded) == sorted(state)
    np.testing.assert_array_equal(loaded["fc.weight"], state["fc.weight"].numpy())

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, str(tmp_path / "evil.pth"))
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        convert.read_state_dict(str(tmp_path / "evil.pth"))


# ---------------------------------------------------------------------------- damaged inputs
def _one_line_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_damaged_safetensors_is_one_line_naming_the_fix(tmp_path):
    from safetensors.numpy import save_file

    path = str(tmp_path / "good.safetensors")
    save_file({"fc.weight": np.zeros((4, 8), np.float32), "fc.bias": np.ones(4, np.float32)},
              path)
    data = open(path, "rb").read()
    for name, content in {"truncated": data[:-10], "header cut": data[:20],
                          "garbage": os.urandom(600), "empty": b""}.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(ValueError) as e:
            convert.read_state_dict(str(bad))
        _one_line_error(e, str(bad), "not a readable .safetensors file", "again")
    # The CLI prints it as its one last line, no traceback (it fails before importing JAX).
    proc = subprocess.run(
        [sys.executable, "-m", "ipa_jax.convert", "--model=resnet_mini",
         f"--checkpoint={tmp_path / 'garbage.safetensors'}", f"--output={tmp_path / 'out'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "Conversion failed: ") and "not a readable .safetensors" in proc.stderr
    assert not os.path.exists(tmp_path / "out")


class _FakeTorch:
    """Just enough of torch for `read_state_dict`: `load` returns or raises what it is given."""

    class Tensor:
        pass

    def __init__(self, result):
        self.result = result

    def load(self, path, map_location=None, weights_only=None):
        assert weights_only is True
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def test_pth_without_a_state_dict_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    import pickle

    path = str(tmp_path / "model.pth")
    open(path, "wb").close()
    refused = pickle.UnpicklingError(
        "Weights only load failed. This file can still be loaded, to do so you have two "
        "options...\n\tWeightsUnpickler error: Unsupported global: GLOBAL __main__.Net")
    cases = {"holds a list, not a state dict": [1, 2],
             "holds a mapping without tensors": {"epoch": 3},
             "refuses to unpickle": refused,
             "not a readable torch checkpoint": RuntimeError(
                 "PytorchStreamReader failed reading zip archive: failed finding central "
                 "directory"),
             "not a readable torch checkpoint (Ran out": EOFError("Ran out of input")}
    for needle, result in cases.items():
        monkeypatch.setitem(sys.modules, "torch", _FakeTorch(result))
        with pytest.raises(ValueError) as e:
            convert.read_state_dict(path)
        message = _one_line_error(e, path, needle)
        assert "state_dict()" in message or "again" in message
    monkeypatch.setitem(sys.modules, "torch", _FakeTorch(FileNotFoundError(path)))
    with pytest.raises(FileNotFoundError):  # the CLI's own message for a missing file
        convert.read_state_dict(path)


@pytest.mark.torch
def test_pth_list_refused_pickle_and_truncation_with_torch(tmp_path):
    torch = pytest.importorskip("torch")

    torch.save([torch.zeros(2)], str(tmp_path / "list.pth"))
    with pytest.raises(ValueError) as e:
        convert.read_state_dict(str(tmp_path / "list.pth"))
    _one_line_error(e, "holds a list, not a state dict", "state_dict()")

    torch.save(torch.nn.Linear(2, 2), str(tmp_path / "whole.pth"))  # a pickled module
    with pytest.raises(ValueError) as e:
        convert.read_state_dict(str(tmp_path / "whole.pth"))
    _one_line_error(e, "refuses to unpickle", "weights_only=False")

    torch.save({"fc.weight": torch.zeros(3, 3)}, str(tmp_path / "good.pth"))
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as e:
        convert.read_state_dict(str(tmp_path / "cut.pth"))
    _one_line_error(e, "not a readable torch checkpoint")


def _damaged_converted_folders(root) -> dict:
    """A converted resnet_mini scorer and damaged copies of it: name -> folder."""
    import glob
    import shutil

    from ipa_jax import models

    model = models.get_model("resnet_mini", num_classes=1)
    abstract = _abstract(model)
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    good = str(root / "good")
    convert.write(good, variables, {"model": "resnet_mini", "num_classes": 1,
                                    "input": {"size": 32, "resize": "squash"}})

    def data_files(d):
        return glob.glob(os.path.join(d, convert.VARIABLES, "d", "*"))

    damage = {
        "metadata not JSON": lambda d: open(os.path.join(d, convert.METADATA), "w").write("{"),
        "metadata lacks num_classes": lambda d: open(
            os.path.join(d, convert.METADATA), "w").write('{"model": "resnet_mini"}'),
        "metadata input spec wrong": lambda d: open(
            os.path.join(d, convert.METADATA), "w").write(
            '{"model": "resnet_mini", "num_classes": 1, "input": {"size": "big"}}'),
        "data file truncated": lambda d: [open(p, "r+b").truncate(40) for p in data_files(d)],
        "data file garbage": lambda d: [open(p, "wb").write(os.urandom(os.path.getsize(p)))
                                        for p in data_files(d)],
        "orbax metadata truncated": lambda d: open(
            os.path.join(d, convert.VARIABLES, "_METADATA"), "r+b").truncate(50),
        "variables missing": lambda d: shutil.rmtree(os.path.join(d, convert.VARIABLES)),
    }
    out = {}
    for name, fn in damage.items():
        folder = str(root / name.replace(" ", "_"))
        shutil.copytree(good, folder)
        assert name.startswith(("metadata", "variables")) or data_files(folder)
        fn(folder)
        out[name] = folder
    return good, out


def test_damaged_converted_folder_is_one_line(tmp_path):
    from ipa_jax import scoring

    good, damaged = _damaged_converted_folders(tmp_path)
    assert scoring.load_scorer(good).spec.size == 32
    for name, folder in damaged.items():
        with pytest.raises(ValueError) as e:
            scoring.load_scorer(folder)
        message = _one_line_error(e, folder)
        assert "ipa_jax.convert" in message or "conversion again" in message, (name, message)


def test_one_output_resnet_gets_the_i2pa_preprocessing_with_a_notice(tmp_path):
    """The released I2PA layout (a ResNet with one output) is not given ImageNet's crop and
    normalisation silently: the i2pa preset with a notice, flags given win; the CLI prints the
    notice and the report, none of orbax's INFO lines."""
    from safetensors.numpy import save_file

    state = _tiny_state()
    state["fc.weight"], state["fc.bias"] = state["fc.weight"][:1], state["fc.bias"][:1]
    path = str(tmp_path / "one.safetensors")
    save_file(state, path)
    assert convert.preprocessing("resnet50", 1, "", {}) == (
        convert.PRESETS["i2pa"], convert.preprocessing("resnet50", 1, "", {})[1])
    assert "--preset=i2pa" in convert.preprocessing("resnet50", 1, "", {})[1]
    assert convert.preprocessing("resnet50", 1, "", {"normalize": "imagenet"}) == (
        {"normalize": "imagenet"}, "")
    assert convert.preprocessing("resnet50", 1000, "", {}) == ({}, "")
    assert convert.preprocessing("resnet50", 1000, "i2pa", {"resize": "crop"}) == (
        {"resize": "crop", "normalize": "unit"}, "")
    proc = subprocess.run(
        [sys.executable, "-m", "ipa_jax.convert", f"--checkpoint={path}", "--model=resnet_mini",
         f"--output={tmp_path / 'out'}", "--allow_partial"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "converting with --preset=i2pa" in proc.stdout
    assert not [line for line in proc.stderr.splitlines() if line.startswith("I")], proc.stderr
    with open(tmp_path / "out" / convert.METADATA) as f:
        spec = json.load(f)["input"]
    assert spec["resize"] == "squash" and spec["normalize"] == "unit"
    from ipa_jax import model_card

    card = model_card.read(str(tmp_path / "out"))
    assert card["objective"] == "i2pa_bce" and card["test_distribution"] is None
    assert card["preprocessing"]["resize"] == "squash" and card["trained_on"]["source"] == path
    assert re.search(r"conv1\.weight: checkpoint \(8, 3, 7, 7\) vs model \(\d+, 3, \d+, \d+\) "
                     r"\(torch layout\)", proc.stdout), proc.stdout
