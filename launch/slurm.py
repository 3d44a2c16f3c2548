# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Training on a SLURM cluster: writes a batch script from launch/slurm_template.sh and submits it.

  python -m launch.slurm --nodes=2 --gpus_per_node=8 --time=24:00:00 --partition=gpu \
      --workdir=/shared/runs/full1 --config=configs/full.py [--dry_run]

Run it on a login node from this checkout, which (with its virtualenv, --venv) must be on a
filesystem every node sees, as must --workdir. One task per node runs `python -m ipa_jax.main
--config=CONFIG --workdir=WORKDIR`; jax.distributed.initialize() reads the SLURM environment.
SIGUSR1 comes --signal_seconds before the time limit: ipa_jax.main saves a checkpoint and exits
with status 3, and the script requeues the job (`scontrol requeue`), which resumes from the
workdir. Logs: WORKDIR/logs/slurm-JOBID.out (the script) and job-JOBID-node-N.log (each node).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

if __package__ in (None, ""):  # `python launch/slurm.py`: make `launch` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch import common  # noqa: E402
from launch.common import LaunchError, Note, command  # noqa: E402

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slurm_template.sh")
MAX_SIGNAL_SECONDS = 65535  # SLURM's limit for --signal=SIG@TIME
EXAMPLES = {"nodes": "2", "gpus_per_node": "8", "time": "24:00:00",
            "workdir": "/shared/runs/full1", "config": "configs/full.py"}


def time_limit_seconds(time: str) -> int:
    """SLURM's --time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in seconds."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", time or "")
    if not match:
        raise LaunchError(f"--time={time}: give SLURM's time limit, e.g. --time=24:00:00 "
                          "(HH:MM:SS) or --time=2-00:00:00 (D-HH:MM:SS).")
    days, a, b, c = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
    elif c is not None:  # HH:MM:SS
        hours, minutes, seconds = int(a), int(b), int(c)
    else:  # MM or MM:SS
        hours, minutes, seconds = 0, int(a), int(b or 0)
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def check_signal_seconds(signal_seconds: int, time: str) -> int:
    limit = time_limit_seconds(time)
    if not 1 <= signal_seconds <= min(MAX_SIGNAL_SECONDS, limit - 60):
        raise LaunchError(
            f"--signal_seconds={signal_seconds}: the checkpoint signal must come between 1 s and "
            f"{min(MAX_SIGNAL_SECONDS, limit - 60)} s (a minute before --time={time}) before "
            "the time limit, e.g. --signal_seconds=300.")
    return signal_seconds


def check_plain_path(flag: str, path: str) -> str:
    """An absolute path without spaces or shell characters (it goes into #SBATCH lines)."""
    path = os.path.abspath(path)
    if not re.fullmatch(r"[\w./+=@:,-]+", path):
        raise LaunchError(f"--{flag}={path}: use a path without spaces or shell characters "
                          "(#SBATCH lines cannot quote), e.g. /shared/runs/full1.")
    return path


def sbatch_option_lines(args: argparse.Namespace) -> list[str]:
    """The optional #SBATCH lines: --partition, --account, --cpus-per-task, --sbatch_option."""
    options = [f"--partition={args.partition}" if args.partition else None,
               f"--account={args.account}" if args.account else None,
               f"--cpus-per-task={args.cpus_per_task}" if args.cpus_per_task else None,
               *(args.sbatch_option or ())]
    for option in filter(None, options):
        if not option.startswith("--") or re.search(r"\s", option):
            raise LaunchError(f"--sbatch_option={option}: give one sbatch option as "
                              "--sbatch_option=--NAME=VALUE, e.g. --sbatch_option=--mem=0.")
    return [f"#SBATCH {option}" for option in options if option]


def render_template(template: str, values: dict[str, object]) -> str:
    """Fills in every {{NAME}} of `template` and drops its `##` lines."""
    text = "".join(line for line in template.splitlines(keepends=True)
                   if not line.startswith("##"))
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", str(value))
    leftover = sorted(set(re.findall(r"{{\w+}}", text)))
    assert not leftover, f"{TEMPLATE}: no value for {leftover}"
    return text


def batch_script(args: argparse.Namespace) -> str:
    """The sbatch script for the flags (validated)."""
    with open(TEMPLATE) as f:
        template = f.read()
    workdir, log_dir = args.workdir, args.log_dir
    overrides = common.parse_config_overrides(args.config_overrides)
    return render_template(template, {
        "JOB_NAME": args.job_name or f"ipa_jax-{os.path.basename(workdir)}",
        "NODES": common.positive_int("nodes", args.nodes),
        "GPUS_PER_NODE": common.positive_int("gpus_per_node", args.gpus_per_node),
        "TIME": args.time,
        "SIGNAL_SECONDS": check_signal_seconds(args.signal_seconds, args.time),
        "LOG_DIR": log_dir,
        "REPO": common.REPO_ROOT,
        "MORE_SBATCH_OPTIONS": "\n".join(sbatch_option_lines(args)),
        "VENV": args.venv,
        "LOCAL_DEVICE_IDS": ",".join(map(str, range(args.gpus_per_node))),
        "TRAINING_COMMAND": common.shell_join(
            common.training_command("python", args.config, workdir, overrides)),
        "WORKDIR": workdir,
        "PREEMPTED_EXIT_CODE": common.PREEMPTED_EXIT_CODE,
    })


def submit_plan(args: argparse.Namespace) -> list[common.Step]:
    script = args.script or os.path.join(args.workdir, "ipa_jax.sbatch")
    steps: list[common.Step] = [
        Note(f"the batch script, from {os.path.relpath(TEMPLATE, common.REPO_ROOT)}:"),
        common.WriteFile(script, batch_script(args)),
        command("mkdir", "-p", args.log_dir)]
    submit = command("sbatch", script)
    if args.write_only:
        return [*steps, Note(f"submit it with:\n{submit.shell()}")]
    return [*steps, submit, Note(
        f"watch: squeue --me; tail -f {args.log_dir}/job-JOBID-node-0.log\n"
        f"the job requeues itself when preempted (exit status {common.PREEMPTED_EXIT_CODE}); "
        "stop it: scancel JOBID")]


def dispatch(args: argparse.Namespace) -> int:
    common.require(args, ("nodes", "gpus_per_node", "time", "workdir", "config"),
                   "launch.slurm", EXAMPLES)
    common.check_config_in_repo(args.config)
    args.workdir = check_plain_path("workdir", args.workdir)
    args.log_dir = check_plain_path("log_dir", args.log_dir or os.path.join(args.workdir, "logs"))
    args.venv = check_plain_path("venv", args.venv)
    common.execute(submit_plan(args), args.dry_run)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launch.slurm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, help="nodes, one ipa_jax.main each")
    parser.add_argument("--gpus_per_node", type=int, help="GPUs per node, e.g. 8")
    parser.add_argument("--time", help="time limit, e.g. 24:00:00 or 2-00:00:00")
    parser.add_argument("--partition", help="partition (default: the cluster's)")
    parser.add_argument("--account", help="account to charge (if the cluster wants one)")
    parser.add_argument("--workdir", help="shared folder for checkpoints, logs and results")
    common.add_training_flags(parser)
    parser.add_argument("--venv", default=os.path.join(common.REPO_ROOT, ".venv"),
                        help="virtualenv with ipa_jax (and jax for CUDA) on the shared "
                             "filesystem (default: .venv of this checkout)")
    parser.add_argument("--signal_seconds", type=int, default=300,
                        help="SIGUSR1 this long before the time limit (default 300)")
    parser.add_argument("--cpus_per_task", type=int, help="CPUs per node's task (input pipeline)")
    parser.add_argument("--sbatch_option", action="append", metavar="--NAME=VALUE",
                        help="another #SBATCH option, e.g. --sbatch_option=--mem=0; repeatable")
    parser.add_argument("--job_name", help="default: ipa_jax-<workdir's name>")
    parser.add_argument("--log_dir", help="default: WORKDIR/logs")
    parser.add_argument("--script", help="where to write the batch script "
                                         "(default: WORKDIR/ipa_jax.sbatch)")
    parser.add_argument("--write_only", action="store_true",
                        help="write the batch script but do not submit it")
    return parser


def main(argv=None) -> int:
    return common.cli_main(build_parser(), dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
