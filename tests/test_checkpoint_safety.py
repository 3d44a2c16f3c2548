# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Nothing lost, nothing silently wrong: broken and corrupt checkpoints, the workdir lock,
diverged training.

`Checkpointer` and `WorkdirLock` are tested in-process on a small state; the end-to-end tests
corrupt copies of the shared `baseline` workdir (never the baseline itself) and run
`python -m ipa_jax.main` on them as a user does.
"""

import errno
import fcntl
import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipa_jax import checkpointing, orbax_errors, pretrained, train, workdir_lock
from tests.test_train import latest_params, train_losses


# ---------------------------------------------------------------------------- helpers
def small_state(seed: int) -> dict:
    """A train-state-like tree: random weights (incompressible, like real ones) and a step."""
    rng = np.random.default_rng(seed)
    return {"step": jnp.int32(seed),
            "params": {"dense": {"kernel": jnp.asarray(rng.normal(size=(96, 64)), jnp.float32),
                                 "bias": jnp.asarray(rng.normal(size=64), jnp.float32)}},
            "model_state": {"batch_stats": {"var": jnp.ones(64)}}}


def abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)


def save_steps(workdir, steps=(1, 2, 3)) -> dict:
    """Saves `steps` (2 kept)."""
    ckpt = checkpointing.Checkpointer(workdir, keep=2, best_metric="pairwise_accuracy")
    states = {}
    for step in steps:
        states[step] = small_state(step)
        ckpt.save(step, states[step])
    ckpt.wait_until_finished()
    return states


def restore(workdir):
    """(state, step), as a restarted run restores, or None."""
    ckpt = checkpointing.Checkpointer(workdir, keep=2, best_metric="pairwise_accuracy")
    return ckpt.restore_latest(abstract(small_state(0)))


def biggest_file(pattern: str) -> str:
    return max(glob.glob(pattern, recursive=True), key=os.path.getsize)


def flip_bits(path: str, count: int = 8) -> None:
    """Flips `count` bits in the middle of a file: what a bad disk or cable does."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        for i in range(count):
            data[(len(data) // 2 + 97 * i) % len(data)] ^= 1 << (i % 8)
        f.seek(0)
        f.write(data)


def state_data(workdir: str, step: int, where: str = "checkpoints") -> str:
    """The largest array data file of a saved step."""
    return biggest_file(os.path.join(workdir, where, str(step), "default", "**", "d", "*"))


CORRUPTIONS = {
    "truncated data file": lambda w: os.truncate(state_data(w, 3), 100),
    "deleted data file": lambda w: os.remove(state_data(w, 3)),
    "deleted array metadata": lambda w: shutil.rmtree(
        os.path.join(w, "checkpoints", "3", "default")),
    "8 flipped bits": lambda w: flip_bits(state_data(w, 3)),
}


# ---------------------------------------------------------------------------- 5 and 6
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_broken_latest_step_falls_back_to_the_newest_intact_one(tmp_path, caplog, corruption):
    workdir = str(tmp_path)
    states = save_steps(workdir)
    assert restore(workdir)[1] == 3
    CORRUPTIONS[corruption](workdir)
    with caplog.at_level(logging.WARNING):
        state, step = restore(workdir)
    assert step == 2
    jax.tree.map(np.testing.assert_array_equal, state, states[2])
    warnings = [r.getMessage() for r in caplog.records if "is broken" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert warnings[0].startswith("Checkpoint step 3 is broken (")
    assert "resuming from step 2" in warnings[0] and "\n" not in warnings[0]
    # Moved aside, not deleted, so that the rerun can save step 3 again.
    moved = os.path.join(workdir, "checkpoints", "broken", "3")
    with open(os.path.join(moved, "REASON.txt")) as f:
        assert "step 3" in f.read()
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "3"))
    save_steps(workdir, steps=(3,))
    assert restore(workdir)[1] == 3


def test_flipped_bits_name_the_corrupt_array(tmp_path, caplog):
    workdir = str(tmp_path)
    save_steps(workdir)
    flip_bits(state_data(workdir, 3))
    with caplog.at_level(logging.WARNING):
        assert restore(workdir)[1] == 2
    assert "params/dense/kernel differs from the checksum saved with it" in caplog.text


def test_no_intact_step_raises_one_line_and_moves_nothing(tmp_path):
    workdir = str(tmp_path)
    save_steps(workdir)
    flip_bits(state_data(workdir, 3))
    os.truncate(state_data(workdir, 2), 10)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    with pytest.raises(checkpointing.CheckpointError) as e:
        restore(workdir)
    message = str(e.value)
    assert "\n" not in message and len(message) < 1000
    assert message.startswith(f"no intact checkpoint in {workdir}/checkpoints (step 3: ")
    assert "; step 2: " in message
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_a_checkpoint_of_another_model_is_not_called_broken(tmp_path):
    workdir = str(tmp_path)
    save_steps(workdir)
    other = small_state(0)
    other["params"]["dense"]["kernel"] = jnp.zeros((96, 32))
    ckpt = checkpointing.Checkpointer(workdir, keep=2, best_metric="pairwise_accuracy")
    with pytest.raises(checkpointing.CheckpointError, match=r"another model .*params/dense/"
                       r"kernel has shape \(96, 64\) there, \(96, 32\) in this config"):
        ckpt.restore_latest(abstract(other))
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "broken"))


def test_checksums_match_between_train_state_and_untargeted_restores():
    state = train.TrainState(step=jnp.int32(1), params={"fc": {"kernel": jnp.ones((2, 1))}},
                             model_state={}, opt_state=(jnp.zeros(3), {"mu": jnp.ones(2)}))
    assert checkpointing.array_checksums(state).keys() == {
        "step", "params/fc/kernel", "opt_state/0", "opt_state/1/mu"}
    assert checkpointing.array_checksums(state) == checkpointing.array_checksums(
        {"step": np.int32(1), "params": {"fc": {"kernel": np.ones((2, 1), np.float32)}},
         "opt_state": {"0": np.zeros(3, np.float32), "1": {"mu": np.ones(2, np.float32)}}})


def test_corrupt_best_checkpoint_is_refused(baseline, tmp_path):
    workdir = str(tmp_path / "copy")
    shutil.copytree(baseline, workdir)
    pretrained.load_workdir(workdir)  # intact: loads
    (best_step,) = [int(s) for s in os.listdir(os.path.join(workdir, "best")) if s.isdigit()]
    flip_bits(state_data(workdir, best_step, "best"))
    # The flipped bits land in a raw array (its checksum differs) or in a zstd-compressed
    # chunk (decompression fails) depending on the trained values: either way, refused with
    # the reason on one line. test_flipped_bits_name_the_corrupt_array pins the checksum path.
    with pytest.raises(checkpointing.CheckpointError,
                       match=rf"best checkpoint .*best/{best_step} is broken \(.+\)") as e:
        pretrained.load_workdir(workdir)
    assert "\n" not in str(e.value)


def test_corrupt_latest_checkpoint_resumes_from_the_one_before(baseline, run_main, tmp_path):
    """Issue 10 (5, 6): eight flipped bits were loaded and the run ended elsewhere, exit 0."""
    workdir = str(tmp_path / "copy")
    shutil.copytree(baseline, workdir)
    flip_bits(state_data(workdir, 6))
    proc = run_main(workdir)
    assert "Traceback" not in proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "is broken" in line]
    assert len(warning) == 1 and "Checkpoint step 6 is broken (" in warning[0]
    assert "differs from the checksum saved with it" in warning[0]
    assert "resuming from step 4" in warning[0]
    assert "Resumed from step 4" in proc.stderr
    # Steps 5 and 6 trained again: the same parameters and losses as the uninterrupted run.
    step, params, batch_stats = latest_params(workdir)
    _, base_params, base_stats = latest_params(baseline)
    assert step == 6
    jax.tree.map(np.testing.assert_array_equal, (params, batch_stats), (base_params, base_stats))
    assert train_losses(workdir)[6] == train_losses(baseline)[6]
    assert os.path.exists(os.path.join(workdir, "checkpoints", "broken", "6", "REASON.txt"))


def test_no_intact_checkpoint_stops_with_one_line(baseline, run_main, tmp_path):
    workdir = str(tmp_path / "copy")
    shutil.copytree(baseline, workdir)
    os.truncate(state_data(workdir, 6), 100)
    os.truncate(state_data(workdir, 4), 10)
    proc = run_main(workdir, expect_ok=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert sum("orbax" in line for line in proc.stderr.splitlines()) == 0, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "no intact checkpoint in" in last
    assert "step 6: OUT_OF_RANGE: cannot read " in last
    assert "; step 4: OUT_OF_RANGE: cannot read " in last


# ---------------------------------------------------------------------------- 7
def test_second_lock_on_a_workdir_is_refused_until_released(tmp_path):
    workdir = str(tmp_path)
    with workdir_lock.WorkdirLock(workdir):
        with pytest.raises(workdir_lock.WorkdirLockedError,
                           match=rf"in use by another run \(pid {os.getpid()} on "
                                 rf"{socket.gethostname()}, started "):
            workdir_lock.WorkdirLock(workdir).acquire()
    with workdir_lock.WorkdirLock(workdir):  # released on exit
        pass


def test_lock_of_a_killed_run_is_taken_over(tmp_path):
    """kill -9 leaves the record behind; the kernel released the flock, so it is stale."""
    workdir = str(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, json, os, signal, socket, sys\n"
        f"fd = os.open({os.path.join(workdir, '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, json.dumps({'host': socket.gethostname(), 'pid': os.getpid()}).encode())\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {holder.pid} on"):
        workdir_lock.WorkdirLock(workdir).acquire()
    holder.kill()
    holder.wait()
    with workdir_lock.WorkdirLock(workdir):
        with open(os.path.join(workdir, ".lock")) as f:
            assert json.load(f)["pid"] == os.getpid()


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
    """A filesystem without flock: a live holder on this host refuses, a dead one is stale."""
    def no_flock(fd, op):
        if op & fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(workdir_lock.fcntl, "flock", no_flock)
    workdir = str(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid, refused in ((os.getppid(), True), (dead.pid, False)):
        with open(os.path.join(workdir, ".lock"), "w") as f:
            json.dump({"host": socket.gethostname(), "pid": pid, "started": "earlier"}, f)
        if refused:
            with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {pid} on"):
                workdir_lock.WorkdirLock(workdir).acquire()
        else:
            workdir_lock.WorkdirLock(workdir).acquire().release()


def test_second_run_on_a_workdir_stops_with_one_line(run_main, tmp_path):
    workdir = str(tmp_path / "run")
    with workdir_lock.WorkdirLock(workdir):
        proc = run_main(workdir, expect_ok=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{workdir} is in use by another run (pid {os.getpid()} on " in last
    assert os.listdir(workdir) == [".lock"]  # nothing else was touched


# ---------------------------------------------------------------------------- 8
def test_finite_checks():
    state = {"params": {"w": jnp.ones(3)}, "model_state": {"var": jnp.array([1.0, jnp.inf])},
             "step": jnp.int32(2)}
    assert not bool(train.all_finite(state))
    assert train.first_nonfinite(state) == ("model_state/var", "inf in 1 of 2 values")
    assert bool(train.all_finite({"params": {"w": jnp.ones(3)}, "step": jnp.int32(2)}))
    train.check_metrics(3, {"validation/plcc": float("nan")}, allow_nan=True)  # undefined
    for value, what in ((float("nan"), "not finite"), (float("inf"), "not finite"),
                        (3.4e47, "beyond float32's range")):
        with pytest.raises(FloatingPointError, match=f"step 3: train/loss = .* is {what}"):
            train.check_metrics(3, {"train/loss": value})
    with pytest.raises(FloatingPointError, match="beyond float32"):
        train.check_metrics(3, {"validation/ratio_mse": 3.4e47}, allow_nan=True)


def test_diverged_training_stops_before_saving_or_reporting(run_main, tmp_path):
    """Issue 10 (8): finite loss, inf BatchNorm variances; saved, reported, then a crash."""
    workdir = str(tmp_path / "diverged")
    proc = run_main(workdir, "--config.optimizer.lr=1e8", "--config.optimizer.head_lr=1e8",
                    expect_ok=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Numerical error: step 3: model_state/batch_stats/"), last
    assert "is not finite (inf in " in last
    # Only the finite step 2 was saved (completely); step 3 was neither saved nor reported.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    assert [s for s in os.listdir(os.path.join(workdir, "best")) if s.isdigit()] == []
    assert sorted(train_losses(workdir)) == [1, 2]
    step, params, batch_stats = latest_params(workdir)
    assert step == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves((params, batch_stats)))


def test_abandoned_checkpoint_reads_are_not_reported_at_exit():
    """After a failed restore, tensorstore completes reads orbax abandoned; asyncio reports a
    future's exception when the future is collected, often after the one-line error (it made
    test_no_intact_checkpoint_stops_with_one_line fail 1 run in 3). Such reports are dropped;
    any other stays."""
    drop = orbax_errors._DropAbandonedOrbaxTasks()

    def record(error):
        return logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1771,
                                 "Future exception was never retrieved\nfuture: %s", (None,),
                                 (type(error), error, None))

    read = ValueError('OUT_OF_RANGE: Error reading "params.fc.kernel/0" in OCDBT database at '
                      'local file "/w/checkpoints/4/default/": Requested byte range [1, 2) is '
                      "not valid for value of size 1")
    assert not drop.filter(record(read))
    assert drop.filter(record(ValueError("something else went wrong")))
