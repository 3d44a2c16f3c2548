# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: the tiny embedded dataset, generated and prepared once per session."""

import os
import subprocess
import sys

import pytest

try:  # Optional torch references: triton (via torchvision) segfaults if loaded after TF.
    import triton  # noqa: F401
except ImportError:
    pass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
    """Loads `configs/<name>.py` like `--config=configs/<name>.py:<arg>` does."""
    from ipa_jax import config_lib

    return config_lib.load_config_file(os.path.join(REPO, "configs", f"{name}.py"), arg)


def read_tree(root) -> dict[str, bytes]:
    """relative path -> bytes of every file under `root` (to assert a folder is untouched)."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> str:
    """The embedded `tiny` dataset in Instagram Influencer format."""
    from ipa_jax.data import embedded

    out = str(tmp_path_factory.mktemp("tiny") / "raw")
    embedded.generate(out, size="tiny", seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_prepared(tiny_raw, tmp_path_factory) -> str:
    """`tiny_raw` prepared with the settings of `configs/i2pa.py:tiny`."""
    from ipa_jax.data import prepare

    out = str(tmp_path_factory.mktemp("tiny") / "prepared")
    prepare.prepare(tiny_raw, out, load_config("i2pa", "tiny").prep, progress=False)
    return out


@pytest.fixture(scope="session")
def run_main(tiny_raw, tiny_prepared, tmp_path_factory):
    """Runs `python -m ipa_jax.main` (configs/i2pa.py:tiny) on the tiny dataset in a subprocess.

    Each run is a subprocess so that it can be killed and so that 8 CPU devices can be
    simulated; runs share a persistent compilation cache.
    """
    cache = str(tmp_path_factory.mktemp("jax_cache"))

    def run(workdir, *overrides, devices=1, expect_ok=True):
        env = dict(os.environ,
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   JAX_PLATFORMS="cpu",
                   JAX_COMPILATION_CACHE_DIR=cache,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        cmd = [sys.executable, "-m", "ipa_jax.main", "--config=configs/i2pa.py:tiny",
               f"--workdir={workdir}", f"--config.data.raw_dir={tiny_raw}",
               f"--config.data.prepared_dir={tiny_prepared}", "--config.log_every_steps=1",
               *overrides]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        if expect_ok and proc.returncode != 0:
            raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
        return proc

    return run


@pytest.fixture(scope="session")
def baseline(run_main, tmp_path_factory) -> str:
    """Workdir of one default tiny training run, shared by the training and export tests."""
    workdir = str(tmp_path_factory.mktemp("baseline"))
    run_main(workdir, "--config.data.also_test_on=('groups',)")
    return workdir
