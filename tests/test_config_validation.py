# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Bad configs stop before any work with one line naming the field and the fix (issue 10).

`config_validation.validate` and `cli.parse_flags` are checked in-process; a few subprocesses check
what a user sees from `python -m ipa_jax.main`: one line, exit status 1, no traceback, and no
data generated or prepared.
"""

import math
import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from ipa_jax import cli, config_lib, config_validation
from tests.conftest import REPO, load_config

# (config, field, bad value): every one must be rejected with a message naming the field.
BAD_VALUES = [
    ("i2pa", "checkpoint_every_steps", 0),
    ("i2pa", "log_every_steps", 0),
    ("i2pa", "log_every_steps", -5),
    ("i2pa", "eval_every_steps", 0),
    ("i2pa", "eval_every_steps", -2),
    ("i2pa", "keep_checkpoints", 0),
    ("i2pa", "debug_kill_after_step", 0),
    ("i2pa", "batch_size", -8),
    ("i2pa", "batch_size", 0),
    ("i2pa", "eval_batch_size", -16),
    ("i2pa", "num_epochs", math.inf),
    ("i2pa", "input.crop_size", 0),
    ("i2pa", "input.crop_size", -32),
    ("i2pa", "input.resize_short_side", 0),
    ("i2pa", "input.train_crop", "middle"),
    ("i2pa", "input.normalize", "imagenett"),
    ("i2pa", "input.shuffle_window_groups", 0),
    ("ratio", "input.shuffle_window_groups", -1),
    ("i2pa", "input.prefetch", -2),
    ("i2pa", "input.num_parallel_calls", 0),
    ("i2pa", "data.raw_dir", ""),
    ("i2pa", "data.embedded_size", "huge"),
    ("i2pa", "prep.top_users", -1),
    ("i2pa", "data.also_test_on", ("pdips",)),  # I2PA already tests on its PDIPs
    ("i2pa", "data.also_test_on", ("grups",)),
    ("latent_svm", "data.also_test_on", ("groups",)),
    ("i2pa", "optimizer.name", "lamb"),
    ("i2pa", "optimizer.lr", -1e-3),
    ("i2pa", "optimizer.lr", math.nan),
    ("i2pa", "optimizer.head_lr", -1e-4),
    ("i2pa", "optimizer.head_lr", math.inf),
    ("i2pa", "optimizer.l2", -1e-4),
    ("i2pa", "optimizer.b1", 1.0),
    ("i2pa", "optimizer.b2", -0.1),
    ("i2pa", "optimizer.eps", 0.0),
    ("i2pa", "optimizer.epoch_decay", 0.0),
    ("i2pa", "optimizer.epoch_decay", 1.5),
    ("i2pa", "model.dtype", "float33"),
    ("i2pa", "model.dropout_rate", 1.0),
    ("i2pa", "model.drop_path_rate", -0.1),
    ("i2pa", "init_dont_load", ("^params/(fc",)),
    ("ratio", "optimizer.weight_decay", -0.01),
    ("ratio", "optimizer.lr", -1e-6),
    ("latent_svm", "optimizer.lr", -1e-3),
    ("latent_svm", "optimizer.momentum", 1.0),
    ("latent_svm", "svm.num_popular", -1),
    ("latent_svm", "svm.num_unpopular", -1),
    ("latent_svm", "svm.alpha", -1.0),
    ("latent_svm", "svm.delta", math.nan),
    ("latent_svm", "svm.kmeans_top_k", 0),
    ("latent_svm", "svm.svr_c", 0.0),
    ("latent_svm", "svm.svr_epsilon", -0.1),
    ("latent_svm", "svm.svr_c_grid", (1e-4, 0.0)),
    ("latent_svm", "svm.svr_epsilon_grid", (-0.1,)),
    ("latent_svm", "svm.svr_tol", 0.0),
    ("latent_svm", "svm.binarised_draws", 0),
    ("latent_svm", "features.backbone", "resnet5"),
    ("latent_svm", "features.init_from", "/no/such/workdir"),
    # Preparation settings: rejected before any post is read (also by data_prep.prepare).
    ("i2pa", "prep.store_short_side", -1),
    ("i2pa", "prep.crawl_time", -5),
    ("i2pa", "prep.crawl_slack_days", -1.0),
    ("i2pa", "prep.groups.window_days", -7.0),
    ("i2pa", "prep.groups.min_size", 0),
    ("i2pa", "prep.groups.max_size", 1),
    ("i2pa", "prep.groups.min_rel_diff", 1.5),
    ("i2pa", "prep.groups.fractions", (0.8, 0.1, 0.2)),
    ("i2pa", "prep.images.fractions", (0.0, 0.5, 0.5)),
    ("i2pa", "prep.pdips.threshold", 1.0),
    ("i2pa", "prep.pdips.sigma", 0.0),
    ("i2pa", "prep.pdips.min_likes", 0),
    ("i2pa", "prep.pdips.validation", 1.5),
    ("i2pa", "prep.pdips.test", -0.1),
    ("ratio", "prep.retrieval.k", 0),
    ("ratio", "prep.retrieval.w_pose", 0.5),
    ("ratio", "prep.retrieval.mode", "per-user"),
    ("ratio", "prep.retrieval.candidates", 0),
    ("ratio", "prep.retrieval.resize", 16),
    ("ratio", "prep.retrieval.backbone", "resnet5"),
    ("ratio", "prep.retrieval.semantic_vectors", "/no/such/vectors.npz"),
]


def _set(config, path, value):
    *parents, leaf = path.split(".")
    for key in parents:
        config = config[key]
    config[leaf] = value


def _rejected(config, num_devices=1) -> str:
    with pytest.raises(config_lib.ConfigError) as e:
        config_validation.validate(config, num_devices=num_devices)
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name, arg", [(n, a) for n in ("i2pa", "ratio", "latent_svm")
                                       for a in (None, "demo", "tiny")])
def test_shipped_configs_are_valid(name, arg):
    config_validation.validate(load_config(name, arg), num_devices=1)


@pytest.mark.parametrize("name, field, value", BAD_VALUES,
                         ids=[f"{n}-{f}={v!r}" for n, f, v in BAD_VALUES])
def test_bad_value_is_rejected_naming_the_field(name, field, value):
    config = load_config(name, "tiny")
    _set(config, field, value)
    message = _rejected(config)
    assert f"config.{field}" in message
    assert "e.g." in message or "use" in message or "give" in message or "fix" in message


def test_prepare_rejects_bad_prep_settings_before_reading_posts(tmp_path):
    from ipa_jax.data import prepare

    prep = load_config("i2pa", "tiny").prep
    prep.groups.fractions = (0.5, 0.5, 0.5)
    with pytest.raises(config_lib.ConfigError, match=r"config\.prep\.groups\.fractions"):
        prepare.prepare(str(tmp_path / "no_raw"), str(tmp_path / "out"), prep, progress=False)
    assert not (tmp_path / "out").exists()


def test_negative_batch_gets_its_own_message_not_divisibility():
    config = load_config("i2pa", "tiny")
    config.batch_size = -8
    message = _rejected(config, num_devices=8)
    assert "must be > 0" in message and "divisible" not in message
    config.batch_size = 12
    assert "is not divisible by the 8 devices" in _rejected(config, num_devices=8)


def test_empty_raw_dir_is_called_empty_not_missing():
    config = load_config("i2pa", "tiny")
    config.data.raw_dir = ""
    assert "config.data.raw_dir='' is empty; point it at" in _rejected(config)


def test_both_or_neither_duration_is_rejected_before_work():
    config = load_config("i2pa", "tiny")  # num_steps=6, num_epochs=-1
    config.num_epochs = 2.0
    assert "Set exactly one of config.num_epochs and config.num_steps" in _rejected(config)
    config.num_epochs, config.num_steps = -1.0, -1
    assert "config.num_epochs" in _rejected(config)


def test_optimizer_that_needs_a_missing_field():
    config = load_config("i2pa", "tiny")  # adam_l2: has l2, not weight_decay
    config.optimizer.name = "adamw"
    assert "config.optimizer.weight_decay" in _rejected(config)


def test_model_ops_names_its_values_and_may_be_absent():
    config = load_config("i2pa", "tiny")
    assert config.model.ops == "auto"
    config.model.ops = "gpu"
    assert ("config.model.ops='gpu' is not one of ['auto', 'cpu_tuned', 'stock']"
            in _rejected(config))
    with config.unlocked():
        del config.model["ops"]  # a config saved before the field existed: "auto"
    config_validation.validate(config, num_devices=1)


def test_zero_rates_stay_valid():
    """lr 0 freezes a group (used to check init_from); only negative or non-finite is wrong."""
    config = load_config("i2pa", "tiny")
    config.optimizer.lr = config.optimizer.head_lr = 0.0
    config_validation.validate(config, num_devices=1)


def test_latent_svm_table_validates_before_preparing_data(tmp_path):
    from ipa_jax import latent_svm_table

    config = load_config("latent_svm", "tiny")  # the embedded dataset: generated if valid
    config.optimizer.lr = -1e-3
    with pytest.raises(config_lib.ConfigError, match="config.optimizer.lr=-0.001"):
        latent_svm_table.run_grid(config, str(tmp_path / "w"), senses=[0], unpopular_senses=[])
    with pytest.raises(config_lib.ConfigError, match="--senses"):
        latent_svm_table.run_grid(config, str(tmp_path / "w"), senses=[-1], unpopular_senses=[])
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("arg, message", [
    ("tinyy", "Unknown config variant 'tinyy'; did you mean 'tiny'?"),
    ("tiny,demo=maybe", "demo='maybe' is not a boolean"),
    ("demo=", "demo='' is not a boolean"),
])
def test_bad_variant_is_a_config_error(arg, message):
    with pytest.raises(config_lib.ConfigError, match=message.replace("?", r"\?")):
        load_config("i2pa", arg)


def test_non_integer_variant_is_a_config_error():
    with pytest.raises(config_lib.ConfigError, match="senses='x' is not an integer"):
        load_config("latent_svm", "senses=x")


# ---------------------------------------------------------------------------- flags, in-process
@pytest.fixture
def parse(monkeypatch):
    """`cli.parse_flags` on fresh flags shaped like ipa_jax.main's; returns the exit message."""

    def run(*args):
        fv = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "config", flag_values=fv,
                                        lock_config=True)
        flags.DEFINE_string("workdir", None, "workdir", flag_values=fv)
        flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
        cli.require_nonempty("workdir", "the run's directory", flag_values=fv)
        argv = ["main", *args]
        monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides from sys.argv
        monkeypatch.chdir(REPO)
        with pytest.raises(SystemExit) as e:
            cli.parse_flags(argv, fv)
        message = e.value.code
        assert isinstance(message, str) and "\n" not in message
        assert message.startswith("Configuration error: ")
        return message

    return run


@pytest.mark.parametrize("args, message", [
    (("--config=configs/i2pa.py:tinyy", "--workdir=w"),
     "--config=configs/i2pa.py:tinyy: Unknown config variant 'tinyy'; did you mean 'tiny'?"),
    (("--config=configs/i2pa.py:tiny,batch_size=8", "--workdir=w"),
     "Unknown config variant 'batch_size'"),
    (("--config=configs/nope.py", "--workdir=w"), "no config file 'configs/nope.py'"),
    (("--config", "configs/nope.py:tiny", "--workdir=w", "--config.batch_size=8"),
     "no config file 'configs/nope.py'"),
    (("--config=", "--workdir=w"), "no config file ''"),
    (("--config=configs/i2pa.py:tiny", "--workdir="), "--workdir=: must not be empty"),
    (("--config=configs/i2pa.py:tiny",), "--workdir must have a value"),
    (("--config=configs/i2pa.py:tiny", "--workdir=w", "--config.batch_size=abc"),
     "--config.batch_size=abc"),
    (("--config=configs/i2pa.py:tiny", "--workdir=w", "--config.optimizr.lr=1"),
     "'--config.optimizr.lr=1' names no field of the config"),
    (("--config=configs/i2pa.py:tiny", "--workdr=w"), "Unknown command line flag 'workdr'"),
])
def test_flag_mistakes_are_one_line(parse, args, message):
    assert message in parse(*args)


@pytest.mark.parametrize("error, prefix", [
    (config_lib.ConfigError("config.x=1 must be 2."), "Configuration error: "),
    (config_lib.DataError("raw/ has no influencers.txt;\ngive the dataset."), "Data error: "),
    (FloatingPointError("Loss is nan at step 3"), "Numerical error: "),
])
def test_user_errors_while_running_are_one_line(error, prefix):
    with pytest.raises(SystemExit) as e, cli.one_line_errors():
        raise error
    assert e.value.code.startswith(prefix) and "\n" not in e.value.code


def test_bugs_keep_their_traceback():
    with pytest.raises(KeyError), cli.one_line_errors():
        raise KeyError("a bug")


# ---------------------------------------------------------------------------- what a user sees
CLI_CASES = {
    # name: (module, args); WORKDIR is replaced by the case's workdir.
    "misspelled_variant": ("ipa_jax.main", ["--config=configs/i2pa.py:tinyy",
                                            "--workdir=WORKDIR"]),
    "missing_config_file": ("ipa_jax.main", ["--config=configs/i2pa_v2.py:tiny",
                                             "--workdir=WORKDIR"]),
    "empty_workdir": ("ipa_jax.main", ["--config=configs/i2pa.py:tiny", "--workdir="]),
    # The embedded dataset is the default: a late check would generate and prepare it first.
    "zero_log_interval": ("ipa_jax.main", ["--config=configs/i2pa.py:tiny", "--workdir=WORKDIR",
                                           "--config.log_every_steps=0"]),
    "table_misspelled_variant": ("ipa_jax.latent_svm_table", [
        "--config=configs/latent_svm.py:tinyy", "--workdir=WORKDIR"]),
    "table_bad_senses": ("ipa_jax.latent_svm_table", [
        "--config=configs/latent_svm.py:tiny", "--workdir=WORKDIR", "--senses=0,a"]),
}
CLI_MESSAGES = {
    "misspelled_variant": "Unknown config variant 'tinyy'",
    "missing_config_file": "no config file 'configs/i2pa_v2.py'",
    "empty_workdir": "--workdir=: must not be empty",
    "zero_log_interval": "config.log_every_steps=0 must be > 0",
    "table_misspelled_variant": "Unknown config variant 'tinyy'",
    "table_bad_senses": "--senses=['0', 'a']: must be whole numbers >= 0",
}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Every CLI case at once (they are independent): {name: (process, workdir)}."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    started = {}
    for name, (module, args) in CLI_CASES.items():
        workdir = str(tmp_path_factory.mktemp("cli") / name)
        cmd = [sys.executable, "-m", module, *(a.replace("WORKDIR", workdir) for a in args)]
        started[name] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True), workdir)
    results = {}
    for name, (proc, workdir) in started.items():
        _, stderr = proc.communicate(timeout=300)
        results[name] = (proc.returncode, stderr, workdir)
    return results


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_stops_before_any_work_with_one_line(cli_runs, name):
    returncode, stderr, workdir = cli_runs[name]
    assert returncode == 1, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Configuration error:")]
    assert len(errors) == 1 and errors[0] == stderr.strip().splitlines()[-1], stderr
    assert CLI_MESSAGES[name] in errors[0]
    for work in ("embedded", "prepared", "checkpoints"):
        assert not os.path.exists(os.path.join(workdir, work))
