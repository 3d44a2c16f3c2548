# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Several processes, preemption and a death during a save, as users run them.

Every run is `python -m ipa_jax.main` in subprocesses on the tiny dataset: 2 processes on
localhost (gloo CPU collectives, `--coordinator_address=127.0.0.1:PORT`) with 2 devices each
must train, evaluate, pick the best checkpoint and test exactly as 1 process with 4 devices;
a SIGTERM (to one process of two, or to the only one) ends a run with a saved checkpoint and
status 3, and the same command resumes it to the uninterrupted run's parameters; a process
killed while its checkpoint is being written resumes from the previous complete one.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from ipa_jax import preemption
from tests.conftest import REPO
from tests.test_train import latest_params, train_losses

STEPS = 12  # long enough that a notice sent at step 2 lands mid-training
# The tiny config's learning rates (1e-3) make its 12 steps chaotic: the last-bit differences
# between an in-process and a gloo all-reduce grow to 1e-3 in the loss by step 12 (as between 1
# and 8 devices, test_train). A tenth of them, and Adam's eps at 1e-3 (at 1e-8 a gradient that
# is rounding noise, e.g. a stem BatchNorm bias's, becomes a full step: 2e-3 apart by step 8 on
# the canonical example order), keep every step comparable to 1e-5.
TAME = ("--config.optimizer.lr=1e-4", "--config.optimizer.head_lr=1e-4",
        "--config.optimizer.eps=1e-3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """`ipa_jax.main` in `processes` processes of `devices` CPU devices each, stderr
    collected live (so a test can act on a line)."""

    def __init__(self, cache, tiny_raw, tiny_prepared, workdir, *, processes=1, devices=1,
                 overrides=()):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        cmd = [sys.executable, "-m", "ipa_jax.main", "--config=configs/i2pa.py:tiny",
               f"--workdir={workdir}", f"--config.data.raw_dir={tiny_raw}",
               f"--config.data.prepared_dir={tiny_prepared}", "--config.log_every_steps=1",
               f"--config.num_steps={STEPS}", *TAME, *overrides]
        port = _free_port()
        self.procs, self.stderr, self.stdout = [], [], []
        self._seen = threading.Condition()
        for i in range(processes):
            extra = ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                      f"--process_id={i}"] if processes > 1 else [])
            proc = subprocess.Popen(cmd + extra, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            self.procs.append(proc)
            self.stderr.append([])
            threading.Thread(target=self._collect, args=(proc, self.stderr[-1]),
                             daemon=True).start()

    def _collect(self, proc, lines):
        for line in proc.stderr:
            with self._seen:
                lines.append(line)
                self._seen.notify_all()

    def wait_for(self, text: str, process: int = 0, timeout: float = 300) -> None:
        with self._seen:
            found = self._seen.wait_for(
                lambda: any(text in line for line in self.stderr[process])
                or self.procs[process].poll() is not None, timeout)
        assert found and any(text in line for line in self.stderr[process]), (
            f"{text!r} never appeared:\n{''.join(self.stderr[process])[-3000:]}")

    def finish(self, expect: int = 0) -> list[str]:
        """Waits for every process; each must exit with `expect`. Returns their stderr."""
        outs = []
        for i, proc in enumerate(self.procs):
            self.stdout.append(proc.stdout.read())
            proc.wait(timeout=600)
            proc.stderr.close()
            text = "".join(self.stderr[i])
            assert proc.returncode == expect, (
                f"process {i} exited {proc.returncode}, not {expect}:\n{text[-5000:]}")
            outs.append(text)
        return outs


@pytest.fixture(scope="module")
def launch(tiny_raw, tiny_prepared, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("jax_cache_multihost"))
    return lambda workdir, **kw: Run(cache, tiny_raw, tiny_prepared, str(workdir), **kw)


@pytest.fixture(scope="module")
def four_devices(launch, tmp_path_factory) -> str:
    """The reference: 1 process with 4 devices, uninterrupted."""
    workdir = tmp_path_factory.mktemp("one_process_four_devices")
    launch(workdir, devices=4).finish()
    return str(workdir)


def _assert_same_run(workdir, reference, rtol=2e-5, loss_rtol=1e-4):
    """Losses to loss_rtol (gloo against an in-process sum: 4.8e-5 apart by step 12, measured),
    the final parameters and statistics to rtol, the best step and metrics."""
    losses, expected = train_losses(workdir), train_losses(reference)
    assert sorted(losses) == sorted(expected) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                               [expected[s] for s in sorted(expected)], rtol=loss_rtol)
    step, params, stats = latest_params(workdir)
    ref_step, ref_params, ref_stats = latest_params(reference)
    assert step == ref_step == STEPS
    # Each leaf to rtol, and to 1e-5 of the tree's largest value: 12 steps of lr 1e-4 move a
    # weight by up to ~1e-3, a wrong reduction across processes by as much; the gloo and
    # in-process sums' last bits leave at most 1.3e-6 (a bias of ~1e-4 values, 1.5e-3 of its
    # own largest, measured), so a leaf's own scale is too tight a yardstick for its small ones.
    for tree, ref in ((params, ref_params), (stats, ref_stats)):
        atol = 1e-5 * max(np.abs(x).max() for x in jax.tree.leaves(ref))
        jax.tree.map(lambda a, b, atol=atol: np.testing.assert_allclose(a, b, rtol=rtol,
                                                                        atol=atol), tree, ref)
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(reference, "metrics.json")) as f:
        ref_metrics = json.load(f)
    assert metrics["best_step"] == ref_metrics["best_step"]
    for split in ("validation", "test"):
        for name, value in ref_metrics[split].items():
            np.testing.assert_allclose(metrics[split][name], value, rtol=1e-4, err_msg=name)


@pytest.mark.slow
def test_two_processes_preempted_and_resumed_match_one_process(launch, four_devices,
                                                                 tmp_path):
    """2 processes x 2 devices, SIGTERM to process 1 only mid-training: both stop at the same
    step after one complete save (status 3); the same command resumes; losses, final
    parameters, best step and test metrics are those of 1 process with 4 devices."""
    workdir = tmp_path / "two"
    run = launch(workdir, processes=2, devices=2)
    run.wait_for("train/loss", process=1)  # training, on both processes
    run.procs[1].send_signal(signal.SIGTERM)
    errs = run.finish(expect=preemption.PREEMPTED_EXIT_CODE)
    stops = [[line for line in err.splitlines() if line.startswith("Preempted at step ")]
             for err in errs]
    assert all(len(s) == 1 for s in stops), errs[0][-3000:]
    assert stops[0][0].split(" (")[0] == stops[1][0].split(" (")[0]  # the same step
    stopped = int(stops[0][0].split()[3])
    assert 1 <= stopped < STEPS
    assert latest_params(str(workdir))[0] == stopped  # saved before exiting
    assert not os.path.exists(workdir / "metrics.json")

    resumed = launch(workdir, processes=2, devices=2)
    errs = resumed.finish()
    assert f"Resumed from step {stopped}" in errs[0]
    assert "Test metrics of the best checkpoint" in resumed.stdout[0]
    assert "Test metrics" not in resumed.stdout[1]  # reports are written once
    _assert_same_run(str(workdir), four_devices)


@pytest.mark.slow
def test_sigterm_and_a_kill_during_a_save_resume_exactly(launch, four_devices, tmp_path):
    """1 process: a SIGTERM mid-training saves and exits 3; the rerun is killed (-9) while it
    writes step 8's checkpoint; the next rerun resumes from step 6, the newest complete one,
    and ends with the uninterrupted run's parameters."""
    workdir = tmp_path / "one"
    run = launch(workdir, devices=4)
    run.wait_for("train/loss")
    run.procs[0].send_signal(signal.SIGTERM)
    (err,) = run.finish(expect=preemption.PREEMPTED_EXIT_CODE)
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Preempted at step ") and "(SIGTERM)" in last, last
    assert last.endswith("its checkpoint is saved; rerun the same command to resume.")
    stopped = int(last.split()[3])
    assert stopped < 8 and latest_params(str(workdir))[0] == stopped

    run = launch(workdir, devices=4, overrides=("--config.debug_kill_during_save_at_step=8",))
    run.finish(expect=-signal.SIGKILL)
    assert f"Resumed from step {stopped}" in "".join(run.stderr[0])
    checkpoints = os.listdir(workdir / "checkpoints")
    assert any(name.startswith("8.orbax-checkpoint-tmp") for name in checkpoints), checkpoints
    assert "8" not in checkpoints and latest_params(str(workdir))[0] == 6
    (err,) = launch(workdir, devices=4).finish()
    assert "Resumed from step 6" in err
    _assert_same_run(str(workdir), four_devices)
