# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Orbax and tensorstore failures as one line, without the pages of noise they print.

A damaged checkpoint makes orbax raise an exception whose message runs to pages, log from
every thread, and (tensorstore completing the reads orbax abandoned) print hundreds of
tracebacks later, some at exit. `short_reason` gives the one line that matters; `quiet`
mutes orbax's logs while a possibly broken checkpoint is tried and drops the late tracebacks
of the reads it abandoned, nothing else.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import re
import sys
import traceback
import warnings

from absl import logging


def short_reason(error: BaseException, limit: int = 240) -> str:
    """A short reason from an orbax/tensorstore/TF exception (their messages run to pages).

    The innermost cause says what failed (tensorstore: which array, which byte range); the
    outer ones wrap it in slices and bound methods.
    """
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    text = re.sub(r' in OCDBT database at local file "[^"]*"', "", text)
    text = re.sub(r'Error opening "\w+" driver: ', "", text)
    text = re.sub(r" \[tensorstore_spec.*", "", text)
    text = re.sub(r'Error reading "([^"/]+)[^"]*"',
                  lambda m: "cannot read " + m.group(1).replace(".", "/"), text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _DropOrbaxLogs(std_logging.Filter):
    def filter(self, record):
        return "/orbax/" not in record.pathname


def _from_orbax_reads(unraisable) -> bool:
    """An error that orbax's abandoned reads report after a failed restore has returned."""
    if isinstance(unraisable.exc_value, RuntimeError) and (
            str(unraisable.exc_value) == "Event loop is closed"):
        return True
    code = getattr(unraisable.object, "cr_code", None)  # a coroutine left unfinished
    return code is not None and "/orbax/" in code.co_filename


class _DropAbandonedOrbaxTasks(std_logging.Filter):
    """asyncio's "Task/Future exception was never retrieved" for orbax's abandoned reads: a
    task's traceback runs through orbax; a future's holds no Python frame (tensorstore set its
    exception), so it is told by its message, a read from a checkpoint's OCDBT database."""

    def filter(self, record):
        if "exception was never retrieved" not in str(record.msg) or not record.exc_info:
            return True
        frames = traceback.extract_tb(record.exc_info[2])
        return not (any("/orbax/" in frame.filename for frame in frames)
                    or "OCDBT database" in str(record.exc_info[1]))


def _install_read_error_filters() -> None:
    """Drops the reports of reads orbax abandoned (see `quiet`); installed once, before any
    restore, since tensorstore may report them while the failed restore is still unwinding."""
    previous = sys.unraisablehook
    if getattr(previous, "_ipa_jax", False):
        return

    def hook(unraisable):
        if not _from_orbax_reads(unraisable):
            previous(unraisable)

    hook._ipa_jax = True
    sys.unraisablehook = hook
    std_logging.getLogger("asyncio").addFilter(_DropAbandonedOrbaxTasks())


@contextlib.contextmanager
def quiet():
    """Tries a possibly broken checkpoint without orbax's noise; its error is reported once.

    Inside: no orbax log lines. After a failed restore, tensorstore completes the reads orbax
    abandoned and reports each (hundreds of tracebacks: "Event loop is closed", "Task exception
    was never retrieved", and at exit "coroutine ... was never awaited"): those are dropped,
    nothing else.
    """
    _install_read_error_filters()
    handlers = [logging.get_absl_handler(), *std_logging.getLogger().handlers]
    drop = _DropOrbaxLogs()
    for h in handlers:
        h.addFilter(drop)
    try:
        yield
    except Exception:
        warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)
        raise
    finally:
        for h in handlers:
            h.removeFilter(drop)
