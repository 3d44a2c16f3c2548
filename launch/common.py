# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""What launch/tpu_vm.py and launch/slurm.py share: the training command line, the meaning of
its exit statuses, the flags for it, input errors, and the executor that prints each step.

A launcher builds a plan, a list of steps (`Command`, `WriteFile`, `Note`), with small pure
functions; `execute` prints every step as a shell line and runs it unless `dry_run`. The
printed plan is itself a shell script (files are written with here-documents).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Exit statuses of `python -m ipa_jax.main` (ipa_jax.preemption.PREEMPTED_EXIT_CODE, ipa_jax.cli).
FINISHED_EXIT_CODE = 0
USER_ERROR_EXIT_CODE = 1
PREEMPTED_EXIT_CODE = 3
EXIT_STATUS_MEANINGS = {
    FINISHED_EXIT_CODE: "training finished",
    USER_ERROR_EXIT_CODE: "a user error (its one-line message is at the end of the log)",
    PREEMPTED_EXIT_CODE: "preempted: a checkpoint is saved and the same command resumes",
}


class LaunchError(ValueError):
    """Bad input or a failed step; the message says what is wrong and how to fix it."""


def describe_exit_status(status: int) -> str:
    """`status` of ipa_jax.main in words, e.g. 3 -> 'preempted: ...'."""
    return EXIT_STATUS_MEANINGS.get(status, f"a crash (exit status {status}): see the log")


def shell_join(argv: Sequence[str]) -> str:
    """argv as one shell line, quoted where needed."""
    return shlex.join(argv)


# ---- the training command


def parse_config_overrides(values: Sequence[str] | None) -> list[str]:
    """`--config_overrides` values (each may hold several, shell-quoted) as a list of flags.

    Only `--config.FIELD=VALUE` flags pass: the launcher sets --config and --workdir itself.
    """
    try:
        flags = [token for value in values or () for token in shlex.split(value)]
    except ValueError as e:  # e.g. an unbalanced quote
        raise LaunchError(f"--config_overrides={values}: {e}; quote each value once, e.g. "
                          "--config_overrides=\"--config.data.also_test_on=('groups',)\"") from e
    for flag in flags:
        if not re.fullmatch(r"--config\.[A-Za-z_][\w.]*=.*", flag, re.S):
            raise LaunchError(
                f"--config_overrides: {flag!r} is not a config override; give "
                "--config.FIELD=VALUE flags, e.g. "
                "--config_overrides='--config.batch_size=256 --config.num_epochs=3'.")
    return flags


def config_file(config: str) -> str:
    """The file part of `--config=FILE[:VARIANT]`."""
    return config.split(":", 1)[0]


def check_config_in_repo(config: str) -> None:
    """`--config` must name a config file of this checkout by its relative path."""
    path = config_file(config)
    if not path.endswith(".py") or os.path.isabs(path) or not os.path.isfile(
            os.path.join(REPO_ROOT, path)):
        raise LaunchError(
            f"--config={config}: no config file {path!r} in {REPO_ROOT}; give a path relative "
            "to the repository root, e.g. --config=configs/full.py (variant: "
            "--config=configs/full.py:demo).")


def training_command(python: str, config: str, workdir: str,
                     overrides: Sequence[str] = ()) -> list[str]:
    """`python -m ipa_jax.main --config=... --workdir=... [overrides]` as argv."""
    return [python, "-m", "ipa_jax.main", f"--config={config}", f"--workdir={workdir}",
            *overrides]


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """--config, --config_overrides and --dry_run, the same in every launcher."""
    parser.add_argument("--config", default=None,
                        help="config file relative to the repository root, e.g. "
                             "configs/full.py or configs/full.py:demo")
    parser.add_argument("--config_overrides", action="append", default=None,
                        metavar="'--config.FIELD=VALUE ...'",
                        help="config overrides passed through to ipa_jax.main; write "
                             "--config_overrides='--config.batch_size=256' (with '='); "
                             "may be repeated")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the commands (and files) without running anything")


def require(args: argparse.Namespace, names: Sequence[str], what: str,
            examples: dict[str, str]) -> None:
    """Every flag of `names` must be given for `what`; the error shows an example of each."""
    missing = [n for n in names if getattr(args, n) in (None, "")]
    if missing:
        flags = " ".join(f"--{n}={examples.get(n, '...')}" for n in missing)
        raise LaunchError(f"{what} needs {', '.join('--' + n for n in missing)}; e.g. {flags}")


def positive_int(name: str, value: int) -> int:
    if value is None or value < 1:
        raise LaunchError(f"--{name}={value}: must be 1 or more, e.g. --{name}=2.")
    return value


# ---- plans and the executor


@dataclasses.dataclass(frozen=True)
class Note:
    """A comment in the printed plan."""

    text: str

    def shell(self) -> str:
        return "\n".join(f"# {line}" if line else "#" for line in self.text.splitlines())

    def run(self) -> bool:
        return True


def not_found_message(program: str) -> str:
    where = {"gcloud": " (https://cloud.google.com/sdk/docs/install)",
             "sbatch": " (run this on the cluster's login node)"}.get(program, "")
    return f"{program} is not on PATH: install it{where} or fix PATH."


@dataclasses.dataclass(frozen=True)
class Command:
    """A program run with its arguments (no shell); a failure stops the plan unless
    `may_fail` (then it is reported and the plan goes on)."""

    argv: tuple[str, ...]
    may_fail: bool = False

    def shell(self) -> str:
        return shell_join(self.argv)

    def run(self) -> bool:
        """True if it succeeded."""
        try:
            status = subprocess.run(self.argv, check=False).returncode
        except FileNotFoundError as e:
            raise LaunchError(not_found_message(self.argv[0])) from e
        if status != 0 and not self.may_fail:
            raise LaunchError(f"this step failed with exit status {status}: {self.shell()}")
        if status != 0:
            print(f"# (exit status {status}; going on)", flush=True)
        return status == 0


@dataclasses.dataclass(frozen=True)
class WriteFile:
    """Writes `text` to a local file (printed as a here-document)."""

    path: str
    text: str
    executable: bool = False

    def shell(self) -> str:
        delimiter = "IPA_JAX_EOF"
        assert delimiter not in self.text
        lines = [f"mkdir -p {shlex.quote(os.path.dirname(self.path) or '.')}",
                 f"cat > {shlex.quote(self.path)} <<'{delimiter}'", self.text.rstrip("\n"),
                 delimiter]
        if self.executable:
            lines.append(f"chmod +x {shlex.quote(self.path)}")
        return "\n".join(lines)

    def run(self) -> bool:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "w") as f:
            f.write(self.text)
        if self.executable:
            os.chmod(self.path, 0o755)
        return True


Step = Note | Command | WriteFile


def command(*argv: str, may_fail: bool = False) -> Command:
    return Command(tuple(argv), may_fail)


def execute(steps: Sequence[Step], dry_run: bool, out=None) -> list[Step]:
    """Prints each step as shell and, unless `dry_run`, runs it before printing the next;
    returns the steps that failed (only `may_fail` commands can fail and go on)."""
    out = out or sys.stdout
    failed = []
    for step in steps:
        print(step.shell(), file=out, flush=True)
        if not dry_run and not step.run():
            failed.append(step)
    return failed


def cli_main(parser: argparse.ArgumentParser, dispatch: Callable[[argparse.Namespace], int],
             argv: Sequence[str] | None = None) -> int:
    """Parses `argv`, runs `dispatch(args)`; a `LaunchError` is one line (exit status 2)."""
    args = parser.parse_args(argv)
    try:
        return dispatch(args)
    except LaunchError as e:  # the subcommand's parser, if any, prints its own usage
        getattr(args, "parser", parser).error(str(e))
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
