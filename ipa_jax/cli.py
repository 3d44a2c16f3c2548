# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Command-line plumbing shared by the entry points: a user's mistake is one line, not a trace.

  from ipa_jax import cli
  cli.require_nonempty("workdir", "the directory for checkpoints, logs and results")
  ...
  if __name__ == "__main__":
      cli.run(main)  # = app.run(main, flags_parser=cli.parse_flags) + cli.one_line_errors

A misspelled config field or variant, a missing config file, an empty or bad flag, and a
`ConfigError`, `DataError` or `FloatingPointError` raised while running print one line on
stderr and exit with status 1. Every other exception keeps its traceback: it is a bug.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys

from absl import app, flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from ipa_jax import config_lib

# What each exception type means to a user; the message itself says what and the fix.
ONE_LINE_ERRORS = {
    config_lib.ConfigError: "Configuration error",
    config_lib.DataError: "Data error",
    FloatingPointError: "Numerical error",
}


def _exit(prefix: str, message: str):
    """Exits with status 1 after printing `prefix: message` on one line."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    sys.exit(f"{prefix}: {line}")


@contextlib.contextmanager
def one_line_errors():
    """Turns the exceptions of `ONE_LINE_ERRORS` into one line on stderr and exit status 1."""
    try:
        yield
    except tuple(ONE_LINE_ERRORS) as e:
        prefix = next(p for t, p in ONE_LINE_ERRORS.items() if isinstance(e, t))
        _exit(prefix, str(e))


def require_nonempty(name: str, what: str, flag_values=flags.FLAGS) -> None:
    """Rejects `--<name>=""` at parse time; `what` says what the flag is, for the message."""
    flags.register_validator(
        name, lambda value: value is None or bool(str(value).strip()),
        message=f"must not be empty; give {what}, e.g. --{name}=/tmp/run.",
        flag_values=flag_values)


def _config_file_flags(flag_values) -> list[str]:
    return sorted({flag_values[n].name for n in flag_values
                   if isinstance(flag_values[n].parser, ConfigFileFlagParser)})


def _check_config_files(argv, flag_values) -> None:
    """One line for `--config=PATH[:variant]` naming no file (config_flags defers that error)."""
    for name in _config_file_flags(flag_values):
        for i, arg in enumerate(argv[1:], 1):
            match = re.fullmatch(rf"--?{re.escape(name)}(=(.*))?", arg)
            if not match:
                continue
            value = match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv)
                                                           else "")
            path = value.split(":", 1)[0]
            if not os.path.isfile(path):
                _exit("Configuration error",
                      f"--{name}={value}: no config file {path!r} (relative to {os.getcwd()}); "
                      "give one of the files in configs/, e.g. "
                      f"--{name}=configs/i2pa.py:demo.")


def _innermost_config_error(error: BaseException) -> config_lib.ConfigError | None:
    """The ConfigError that config_flags re-raised (as a traceback string) and wrapped, if any."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, config_lib.ConfigError):
            found = error
        error = error.__cause__ or error.__context__
    return found


def parse_flags(argv: list[str], flag_values=flags.FLAGS) -> list[str]:
    """absl flag parsing (`app.run(..., flags_parser=parse_flags)`) with one-line errors.

    One line for: a misspelled config field (`--config.optimizr.lr=1`), a misspelled or bad
    variant (`--config=configs/i2pa.py:tinyy`), a missing config file, and any flag absl
    rejects (unknown flag, bad value, empty `require_nonempty` flag, missing required flag).
    A config file that itself raises something else keeps its traceback: that is a bug.
    """
    _check_config_files(argv, flag_values)
    try:
        remaining = flag_values(argv)
        for name in _config_file_flags(flag_values):
            getattr(flag_values[name].value, "lock", None)  # a config that failed to load raises
        return remaining
    except (AttributeError, KeyError) as e:  # config_flags' error for an unknown field
        text = str(e).replace("\\", "")
        field = (re.findall(r"'(\w+)'", text) or [text])[0]
        suggestion = re.findall(r'Did you mean "(\w+)"', text)
        culprit = next((a for a in argv if re.match(r"--?\w+\.", a) and field in a), field)
        hint = f"did you mean \"{suggestion[0]}\"?" if suggestion else "check its spelling."
        _exit("Configuration error",
              f"{culprit!r} names no field of the config; {hint} The fields and their "
              "defaults are in the config file and ipa_jax/config_lib.py.")
    except OSError as e:  # config_flags' deferred "failed loading config file"
        _exit("Configuration error", str(e).splitlines()[0])
    except flags.Error as e:
        inner = _innermost_config_error(e)
        if inner is not None:  # raised by get_config, e.g. a misspelled variant
            flag = str(e).split(": Error whilst parsing config file", 1)[0]
            _exit("Configuration error", f"{flag.removeprefix('flag ')}: {inner}")
        if "Error whilst parsing config file" in str(e):
            raise  # a bug in the config file: keep its traceback
        _exit("Configuration error",
              f"{str(e).splitlines()[0].removeprefix('flag ')} (--helpfull lists the flags)")


def run(main) -> None:
    """`app.run(main)` with `parse_flags` and `one_line_errors` around `main`."""

    @functools.wraps(main)
    def wrapped(argv):
        with one_line_errors():
            return main(argv)

    app.run(wrapped, flags_parser=parse_flags)
