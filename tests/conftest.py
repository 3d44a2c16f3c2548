# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: the tiny embedded dataset, generated and prepared once per session."""

import contextlib
import os
import subprocess
import sys

import pytest

# The keras_hub annotators run on JAX; keras picks its backend when first imported (tensorflow
# imports it), so before any test module imports tensorflow.
os.environ.setdefault("KERAS_BACKEND", "jax")

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


@contextlib.contextmanager
def fast_compiles():
    """XLA skips most optimisations inside (compiles dominate tiny models on 2 CPUs); for tests
    of behaviour, never for numbers compared with another compile."""
    import jax

    saved = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", saved)


def prepared_records(out: str, dataset: str, split: str) -> list[bytes]:
    """The serialized examples of one split of a preparation, in the record index's order."""
    import tensorflow_datasets as tfds

    from ipa_jax import records
    from ipa_jax.data import tfds_builder

    builder = tfds.builder_from_directory(tfds_builder.dataset_dir(out, dataset))
    index = records.load_index(builder, split)
    reader = records.GroupReader(builder, index)
    try:
        return [reader.raw(i) for i in range(len(index))]
    finally:
        reader.close()


def assert_same_examples(prepared_a: str, prepared_b: str, skip=()) -> None:
    """Every TFRecord example of two preparations, field by field (but those in `skip`), in
    order (a tf.train.Example's feature map is serialized in an order that can change from one
    process to the next)."""
    import numpy as np

    from ipa_jax import records
    from ipa_jax.data import prepare, tfds_builder

    def examples(out, dataset, split):
        return [records.parse_group(r) for r in prepared_records(out, dataset, split)]

    for dataset in tfds_builder.CONFIGS:
        for split in prepare.SPLITS:
            ours, theirs = (examples(x, dataset, split) for x in (prepared_a, prepared_b))
            assert len(ours) == len(theirs) > 0, (dataset, split)
            for a, b in zip(ours, theirs, strict=True):
                assert a.keys() == b.keys(), (dataset, split)
                for key in a.keys() - set(skip):
                    np.testing.assert_array_equal(a[key], b[key], err_msg=f"{dataset} {key}")


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
def full_prepared(tiny_raw, tmp_path_factory) -> str:
    """`tiny_raw` prepared with the settings every `configs/full.py:tiny` variant shares."""
    from ipa_jax.data import prepare

    variants = ("full", "retrieval", "backbone_only", "concat", "log_likes")
    preps = [load_config("full", f"tiny,variant={v}").prep for v in variants]
    assert all(p.to_dict() == preps[0].to_dict() for p in preps)
    out = str(tmp_path_factory.mktemp("full") / "prepared")
    prepare.prepare(tiny_raw, out, preps[0], progress=False)
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


def random_variables(model, *inputs, seed: int = 0, other_std: float = 0.0) -> dict:
    """Random variables of `model.init(key, *inputs, train=False)` in numpy, without a compiled
    init (seconds faster on CPU): He-normal kernels, unit BatchNorm scales and variances, every
    other leaf (biases, means, tables) normal with `other_std` (0: zeros)."""
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs, train=False))

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) * std).astype(np.float32)
        if name in ("scale", "var"):
            return np.ones(leaf.shape, np.float32)
        return (rng.standard_normal(leaf.shape) * other_std).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract)
