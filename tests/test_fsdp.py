# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""`config.fsdp`: parameters and optimizer state sharded over an `fsdp` mesh axis.

The rule (`sharding.fsdp_spec`) and the validation run in-process. What needs several devices
runs in subprocesses with simulated CPU devices (`--xla_force_host_platform_device_count` is
read when JAX starts): `_device_worker` (4 devices: the rule on a made-up tree, 3 train steps
at fsdp 1, 2 and 4, a checkpoint saved at fsdp 1 restored at fsdp 2) writes its results to
files the tests read, and `python -m ipa_jax.main` trains at fsdp 2 on 2 devices.

The tiny config's Adam (eps 1e-8) turns a gradient that is rounding noise (the stem
BatchNorm's bias here) into a step of ~lr in either direction, so runs whose sums differ in
the last bits drift apart by ~lr per such weight. The comparisons use lr 1e-4 (as
test_multihost) and eps 1e-3, which keep such weights near rounding differences.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ipa_jax import config_validation, sharding
from ipa_jax.config_lib import ConfigError
from tests.conftest import REPO, load_config
from tests.test_train import latest_params

TAME = {"optimizer.lr": 1e-4, "optimizer.head_lr": 1e-4, "optimizer.eps": 1e-3}
MIN_SIZE = 256  # resnet_mini's conv kernels are small: shard most of them
STEPS = 3
TRAINED = (1, 2, 4)  # fsdp values trained in `_device_worker` (4 devices)
# The made-up tree of the rule's test: name -> shape, and the sharded dimension at fsdp 2
# and 4 (None: replicated) with min_size 1024.
MADE_UP = {
    "kernel": ((3, 3, 64, 128), 3, 3),  # the largest divisible dimension
    "tie": ((256, 256), 1, 1),  # a tie: the last
    "rows": ((512, 3), 0, 0),  # 3 does not divide
    "by4_the_smaller": ((12, 1022), 1, 0),  # 1022 = 2 x 511: by 4 only 12 divides
    "indivisible": ((127, 129), None, None),  # large, but no dimension divides
    "at_min": ((1024,), 0, 0),  # exactly min_size elements: sharded
    "bias": ((512,), None, None),  # below min_size
    "count": ((), None, None),  # Adam's step counter
}


def _spec(dim) -> tuple:
    return () if dim is None else (None,) * dim + ("fsdp",)


@pytest.mark.parametrize("name", sorted(MADE_UP))
def test_the_rule_shards_large_arrays_on_their_largest_divisible_dimension(name):
    shape, by2, by4 = MADE_UP[name]
    assert tuple(sharding.fsdp_spec(shape, 1, 1024)) == ()
    assert tuple(sharding.fsdp_spec(shape, 2, 1024)) == _spec(by2)
    assert tuple(sharding.fsdp_spec(shape, 4, 1024)) == _spec(by4)


@pytest.mark.parametrize("fsdp, devices, message", [
    (3, 4, "config.fsdp=3 must be an integer >= 1 that divides the 4 devices (large parameter "
           "and optimizer arrays are split over that many; 1: none); e.g. --config.fsdp=2."),
    (8, 4, "config.fsdp=8 must be an integer >= 1 that divides the 4 devices"),
    (0, 8, "config.fsdp=0 must be an integer >= 1 that divides the 8 devices"),
    (True, 2, "config.fsdp=True must be an integer"),  # a bool is not a device count
    (4, 6, "e.g. --config.fsdp=3."),
])
def test_bad_fsdp_is_refused_with_one_line(fsdp, devices, message):
    def config_with(value):
        config = load_config("i2pa", "tiny")
        config.batch_size, config.eval_batch_size = 24, 48  # divisible by 2, 4, 6 and 8
        config.fsdp = value
        return config

    with pytest.raises(ConfigError) as e:
        config_validation.validate(config_with(fsdp), num_devices=devices)
    assert message in str(e.value) and "\n" not in str(e.value)
    # The suggested value and fsdp = all devices pass.
    suggested = int(str(e.value).rsplit("=", 1)[1].rstrip("."))
    config_validation.validate(config_with(suggested), num_devices=devices)
    config_validation.validate(config_with(devices), num_devices=devices)


@pytest.mark.parametrize("value", [0, -1])
def test_bad_fsdp_min_size_is_refused(value):
    config = load_config("i2pa", "tiny")
    config.fsdp_min_size = value
    with pytest.raises(ConfigError, match=rf"^config.fsdp_min_size={value} must be an integer "
                       r">= 1 \(arrays with fewer elements stay replicated\); e.g. "
                       r"--config.fsdp_min_size=16384.$"):
        config_validation.validate(config, num_devices=1)


# ---------------------------------------------------------------------------- 4 devices
def _device_worker(out: str) -> None:
    """Run by `device_runs` with 4 CPU devices; writes `result.json` and `state<f>.npz`."""
    from benchmarks import scaling
    from ipa_jax import checkpointing, optim, tasks, train

    assert jax.device_count() == 4
    result = {"rule": {}, "runs": {}}
    tree = {name: jax.ShapeDtypeStruct(shape, np.float32)
            for name, (shape, _, _) in MADE_UP.items()}
    for f in (1, 2, 4):
        mesh = sharding.make_mesh(fsdp=f)
        result["rule"][f] = {
            "mesh": dict(mesh.shape), "data": list(sharding.data_sharding(mesh).spec),
            "specs": {k: list(s.spec) for k, s in sharding.state_shardings(
                tree, mesh, 1024).items()}}

    config = load_config("i2pa", "tiny")  # resnet_mini (BatchNorm), Adam, 32 px, batch 8
    config.optimizer.update({k.split(".")[1]: v for k, v in TAME.items()})
    config.fsdp_min_size = MIN_SIZE
    task = tasks.ImagePairs(config, None, None, None)
    tx, _ = optim.make_optimizer(config, steps_per_epoch=100)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.integers(0, 256, (8, 2, 32, 32, 3), dtype=np.uint8),
                "likes": rng.integers(1, 1000, (8, 2)).astype(np.float32)}
               for _ in range(STEPS + 1)]  # the last: one more step after the checkpoint
    # One init (its compile costs as much as a step's; the end-to-end test makes a fresh
    # sharded state), laid out for each fsdp from the host.
    initial = sharding.to_host(train.fresh_state(task, tx, config.seed, {}, train.state_shardings(
        task, tx, config, sharding.make_mesh())))
    states, steps, meshes = {}, {}, {}
    for f in TRAINED:
        config.fsdp = f
        mesh = meshes[f] = sharding.make_mesh(fsdp=f)
        shardings = train.state_shardings(task, tx, config, mesh)
        state = jax.device_put(initial, shardings)
        step = steps[f] = train.jit_train_step(task, tx, config, mesh, shardings)
        metrics = []
        for batch in batches[:STEPS]:
            state, m = step(state, sharding.to_global(mesh, batch))
            metrics.append({k: float(v) for k, v in m.items()})
        states[f] = state
        leaves = {checkpointing.path_name(p): x
                  for p, x in jax.tree_util.tree_leaves_with_path(state)}
        result["runs"][f] = {
            "metrics": metrics,
            "specs": {k: list(x.sharding.spec) for k, x in leaves.items()},
            "shapes": {k: list(x.shape) for k, x in leaves.items()},
            "shard_shapes": {k: list(x.addressable_shards[0].data.shape)
                             for k, x in leaves.items()},
            "device_bytes": {part: sum(x.addressable_shards[0].data.nbytes
                                       for x in jax.tree.leaves(getattr(state, part)))
                             for part in ("params", "opt_state", "model_state")}}
        np.savez(os.path.join(out, f"state{f}.npz"), **sharding.to_host(leaves))
    result["memory"] = scaling.fsdp_memory(config, (1, 2, 4))

    # Resume: fsdp=1's state saved (replicated), restored into fsdp=2's layout as train.py
    # restores (`abstract_state` from its live state), then one more step in each layout.
    with checkpointing.Checkpointer(os.path.join(out, "workdir"), 2,
                                    "pairwise_accuracy") as ckpt:
        ckpt.save(STEPS, states[1])
        ckpt.wait_until_finished()
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), states[2])
        restored, step = ckpt.restore_latest(abstract)
    saved = sharding.to_host(states[1])
    result["resume"] = {
        "step": step,
        "same_values": all(jax.tree.leaves(jax.tree.map(
            np.array_equal, sharding.to_host(restored), saved))),
        "same_shardings": all(jax.tree.leaves(jax.tree.map(
            lambda x, y: x.sharding == y.sharding, restored, states[2])))}
    last = batches[STEPS]
    for f, state in ((1, states[1]), (2, restored)):
        _, m = steps[f](state, sharding.to_global(meshes[f], last))
        result["resume"][f] = {k: float(v) for k, v in m.items()}
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)


@pytest.fixture(scope="module")
def device_runs(tmp_path_factory) -> tuple[dict, dict]:
    """The worker's result.json, and its states at each fsdp of TRAINED (path -> array)."""
    out = str(tmp_path_factory.mktemp("fsdp_devices"))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    code = "import sys; from tests.test_fsdp import _device_worker; _device_worker(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, out], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    with open(os.path.join(out, "result.json")) as f:
        result = json.load(f)
    states = {f: dict(np.load(os.path.join(out, f"state{f}.npz"))) for f in TRAINED}
    return result, states


def test_mesh_and_the_rule_on_four_devices(device_runs):
    rule = device_runs[0]["rule"]
    assert rule["1"]["mesh"] == {"data": 4} and rule["1"]["data"] == ["data"]
    for f in (2, 4):
        assert rule[str(f)]["mesh"] == {"data": 4 // f, "fsdp": f}
        # Every device still takes its own rows of a batch.
        assert rule[str(f)]["data"] == [["data", "fsdp"]]
    for name, (_, by2, by4) in MADE_UP.items():
        assert rule["1"]["specs"][name] == []
        assert tuple(rule["2"]["specs"][name]) == _spec(by2), name
        assert tuple(rule["4"]["specs"][name]) == _spec(by4), name


@pytest.mark.parametrize("f", TRAINED[1:])
def test_sharded_steps_give_the_replicated_steps_values(device_runs, f):
    """3 Adam steps of resnet_mini on 4 devices: fsdp=f gives fsdp=1's metrics, parameters,
    BatchNorm statistics and optimizer state to float rounding. The gradients' sums run in
    another order (reduce-scatter, not all-reduce): a leaf's small entries (a bias's) differ
    by up to 5e-5 of its largest at fsdp 2 (7e-5 at fsdp 4; 8e-4 of their own size), so each
    leaf is compared to rtol and to 1e-4 of its largest value, as in test_multihost."""
    result, states = device_runs
    base, run = result["runs"]["1"], result["runs"][str(f)]
    for step, (m, ref) in enumerate(zip(run["metrics"], base["metrics"], strict=True)):
        assert m.keys() == ref.keys() >= {"loss", "grad_norm", "param_norm"}
        for name in ref:
            np.testing.assert_allclose(m[name], ref[name], rtol=1e-5, err_msg=f"{step} {name}")
    assert states[f].keys() == states[1].keys()
    for name, ref in states[1].items():
        np.testing.assert_allclose(states[f][name], ref, rtol=1e-5,
                                   atol=1e-4 * np.abs(ref).max(), err_msg=name)
    assert int(states[f]["step"]) == STEPS


@pytest.mark.parametrize("f", TRAINED[1:])
def test_parameters_and_adam_moments_are_really_sharded(device_runs, f):
    result, _ = device_runs
    run = result["runs"][str(f)]
    specs, shapes, shards = run["specs"], run["shapes"], run["shard_shapes"]
    params = [k for k in specs if k.startswith("params/")]
    sharded = [k for k in params if "fsdp" in specs[k]]
    # Every parameter at or above the minimum with a divisible dimension, and no other.
    for k in params:
        expected = tuple(sharding.fsdp_spec(shapes[k], f, MIN_SIZE))
        assert tuple(specs[k]) == expected, k
    assert len(sharded) > len(params) // 3 and "params/conv1/kernel" in sharded
    for k in sharded:  # each device holds 1/f of the array
        dim = specs[k].index("fsdp")
        assert shards[k][dim] * f == shapes[k][dim], k
        assert np.prod(shards[k]) * f == np.prod(shapes[k])
        # Adam's first and second moments of that parameter lie the same way.
        moments = [o for o in specs if o.startswith("opt_state/")
                   and o.endswith((f"/mu{k[6:]}", f"/nu{k[6:]}"))]
        assert len(moments) == 2 and all(specs[o] == specs[k] for o in moments), (k, moments)
    for k, spec in specs.items():
        if not k.startswith(("params/", "opt_state/")):  # step, BatchNorm statistics
            assert spec == [] and shards[k] == shapes[k], k
    # Per device, parameters and optimizer state shrink by nearly f (biases stay replicated),
    # as benchmarks/scaling.py's section 5 computes from shapes alone.
    bytes_1, bytes_f = result["runs"]["1"]["device_bytes"], run["device_bytes"]
    for part in ("params", "opt_state"):
        assert bytes_f[part] < 1.1 * bytes_1[part] / f
    assert bytes_f["model_state"] == bytes_1["model_state"]
    memory = {row["fsdp"]: row for row in result["memory"]}
    for g, device_bytes in ((1, bytes_1), (f, bytes_f)):
        for part in ("params", "opt_state", "model_state"):
            assert memory[g][part] == device_bytes[part], (g, part)


def test_a_checkpoint_saved_replicated_restores_sharded(device_runs):
    """train.py's restore (orbax, into `abstract_state`'s shardings): fsdp=1's saved state comes
    back in fsdp=2's layout with the same values, and the next step at fsdp=2 gives fsdp=1's."""
    resume = device_runs[0]["resume"]
    assert resume["step"] == STEPS and resume["same_values"] and resume["same_shardings"]
    for name, value in resume["1"].items():
        np.testing.assert_allclose(resume["2"][name], value, rtol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_trains_and_tests_end_to_end_with_fsdp(run_main, tmp_path):
    """`python -m ipa_jax.main` on 2 devices at fsdp=2: the sharded run trains, keeps the best
    checkpoint, tests it and writes finite metrics; its checkpoints read back on 1 device."""
    workdir = str(tmp_path / "fsdp2")
    proc = run_main(workdir, *[f"--config.{k}={v}" for k, v in TAME.items()],
                    "--config.fsdp=2", f"--config.fsdp_min_size={MIN_SIZE}", devices=2)
    assert "fsdp=2, mesh {'data': 1, 'fsdp': 2}: 78 of 163 arrays" in proc.stderr
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    for split in ("validation", "test"):
        assert 0 <= metrics[split]["pairwise_accuracy"] <= 1 and metrics[split]["num_pairs"] > 0
        assert np.isfinite(metrics[split]["ratio_mse"])
    step, params, stats = latest_params(workdir)  # saved sharded over 2 devices
    assert step == 6 and params["conv1"]["kernel"].shape == (7, 7, 3, 16)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves((params, stats)))
