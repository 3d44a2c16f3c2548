# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Preemption: a notice (SIGTERM, or SLURM's SIGUSR1) ends the run at a step every host agrees
on, after a complete checkpoint; the same command then resumes exactly.

One process watches its own signals. In a multi-process run JAX's preemption service (started
by `jax.distributed.initialize`) catches SIGTERM on any host and picks the first step all hosts
can still reach (`multihost_utils.reached_preemption_sync_point`); SIGUSR1 is forwarded to it
as SIGTERM.
"""

from __future__ import annotations

import os
import signal

from jax._src import distributed as _distributed
from jax.experimental import multihost_utils

PREEMPTED_EXIT_CODE = 3  # launch/ scripts rerun the command on this status
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):  # noqa: N818 - not an error: the run stopped as asked
    """The run saved a checkpoint at `step` and stops for a preemption notice."""

    def __init__(self, step: int, signal_name: str):
        self.step = step
        super().__init__(f"Preempted at step {step} ({signal_name}): its checkpoint is saved; "
                         "rerun the same command to resume.")


def _service_running() -> bool:
    return _distributed.global_state.preemption_sync_manager is not None


class Watch:
    """`with Watch() as watch: ... if watch.reached(step): save and stop`."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> Watch:
        for sig in SIGNALS:
            if sig == signal.SIGTERM and _service_running():
                continue  # JAX's preemption service listens for it
            self._previous[sig] = signal.signal(sig, self._notice)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _notice(self, signum, frame) -> None:
        del frame
        self.signal_name = signal.Signals(signum).name
        if _service_running():
            os.kill(os.getpid(), signal.SIGTERM)  # to the service, which tells every host

    def reached(self, step: int) -> bool:
        """True at the step to stop at (the same on every process); call it every step."""
        if _service_running():
            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_name = self.signal_name or "SIGTERM"
                return True
            return False
        return self.signal_name is not None
