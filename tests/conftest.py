# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: the tiny embedded dataset, generated and prepared once per session."""

import importlib.util
import os

import pytest

try:  # Optional torch references: triton (via torchvision) segfaults if loaded after TF.
    import triton  # noqa: F401
except ImportError:
    pass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
    """Loads `configs/<name>.py` like `--config=configs/<name>.py:<arg>` does."""
    spec = importlib.util.spec_from_file_location(
        f"configs_{name}", os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> str:
    """The embedded `tiny` dataset in Instagram Influencer format."""
    from data_prep import embedded

    out = str(tmp_path_factory.mktemp("tiny") / "raw")
    embedded.generate(out, size="tiny", seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_prepared(tiny_raw, tmp_path_factory) -> str:
    """`tiny_raw` prepared with the settings of `configs/i2pa.py:tiny`."""
    from data_prep import prepare

    out = str(tmp_path_factory.mktemp("tiny") / "prepared")
    prepare.prepare(tiny_raw, out, load_config("i2pa", "tiny").prep, progress=False)
    return out
