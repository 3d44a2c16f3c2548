# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""One run per workdir: `workdir/.lock`, held with flock for the whole run.

The kernel releases the lock however the run ends (kill -9 included). The file records the
holder's host, pid and start time for the one line a second run gets
(`WorkdirLockedError`, a `config_lib.DataError`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

import jax
from absl import logging

from ipa_jax import config_lib

LOCK = ".lock"


class WorkdirLockedError(config_lib.DataError):
    """Another live run holds the workdir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """An exclusive lock on a workdir for one run: `workdir/.lock`, held with flock.

    The kernel releases it however the run ends (kill -9 included). The file records the
    holder's host and pid for the message a second run gets. On a filesystem without flock
    the record alone decides: a holder on this host whose process is gone is stale.
    """

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK)
        self._fd = None

    def _holder(self, fd) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return json.loads(os.read(fd, 4096).decode() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, fd, holder: dict):
        os.close(fd)
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
               f"{holder.get('started', '?')}") if holder else "a process that is starting"
        raise WorkdirLockedError(
            f"{self.workdir} is in use by another run ({who}); wait for it to finish, stop it, "
            "or use another --workdir.")

    def acquire(self) -> WorkdirLock:
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._refuse(fd, self._holder(fd))
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            holder = self._holder(fd)  # no flock here: trust the record unless it is stale
            stale = holder.get("host") == socket.gethostname() and not _pid_alive(
                int(holder.get("pid", 0)))
            if holder and not stale:
                self._refuse(fd, holder)
        old = self._holder(fd)
        if old:
            logging.info("Taking over the lock of pid %s on %s (that run ended without "
                         "releasing it).", old.get("pid"), old.get("host"))
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # an empty record: released cleanly
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def hold(workdir: str):
    """Holds `WorkdirLock(workdir)` on process 0 (the one that writes the workdir's files)."""
    if jax.process_index() != 0:
        yield None
        return
    with WorkdirLock(workdir) as lock:
        yield lock
