# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Training on Cloud TPU VMs, driven from a laptop with gcloud.

  python -m launch.tpu_vm create   --name=ipa --zone=us-central2-b --accelerator_type=v4-32
  python -m launch.tpu_vm install  --name=ipa --zone=us-central2-b --bucket=gs://B --run=full1
  python -m launch.tpu_vm run      --name=ipa --zone=us-central2-b --accelerator_type=v4-32 \
      --bucket=gs://B --run=full1 --config=configs/full.py
  python -m launch.tpu_vm fetch    --bucket=gs://B --run=full1
  python -m launch.tpu_vm delete   --name=ipa --zone=us-central2-b
  python -m launch.tpu_vm long_run ... (all of it, unattended, through preemptions)

Every worker (host) of the slice runs the same `python -m ipa_jax.main --config=CONFIG
--workdir=/gcs/B/RUN`: the bucket is mounted with gcsfuse at /gcs/B on every worker, and
ipa_jax.main finds the other workers itself. ipa_jax is installed on the workers from a
tarball of this checkout's HEAD (`git archive`, copied to gs://B/RUN/package/) or from
`--package` (a source tarball or a git URL), into /opt/ipa_jax/{src,venv}; training runs in
/opt/ipa_jax/src, so `--config` is a path inside the package, e.g. configs/full.py.

Every command is printed before it runs; `--dry_run` prints them and runs nothing. All
subcommands take the same flags, so one set of flags can be kept in a shell variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import threading
import time

if __package__ in (None, ""):  # `python launch/tpu_vm.py`: make `launch` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch import common  # noqa: E402
from launch.common import LaunchError, Note, command  # noqa: E402
from launch.tpu_worker import (  # noqa: E402
    PACKAGE_TARBALL,
    WORKER_VENV,
    Package,
    Run,
    setup_script,
    startup_script,
    worker_run_script,
)

# ---- where things are on a worker

POLL_SECONDS = 30  # create: how often to look at the queued resource's state
STOPPED_STATES = ("SUSPENDED", "FAILED")  # SUSPENDED: its TPU was deleted (preempted)
MAX_FAILED_REQUESTS = 3  # long_run: FAILED requests in a row before the watch gives up
EXAMPLES = {"name": "ipa-v4", "zone": "us-central2-b", "accelerator_type": "v4-32",
            "bucket": "gs://my-bucket", "run": "full-1", "config": "configs/full.py"}


# ---- accelerator types


@dataclasses.dataclass(frozen=True)
class TpuFamily:
    unit: str  # what N counts in "<family>-N"
    per_worker: int  # units per worker (host) in a multi-host slice
    single_worker_sizes: tuple[int, ...]  # sizes that are one worker
    runtime_version: str  # the default --runtime_version
    power_of_two: bool = False  # multi-worker sizes are powers of two


TPU_FAMILIES = {
    "v2": TpuFamily("TensorCores", 8, (8,), "tpu-ubuntu2204-base"),
    "v3": TpuFamily("TensorCores", 8, (8,), "tpu-ubuntu2204-base"),
    "v4": TpuFamily("TensorCores", 8, (8,), "tpu-ubuntu2204-base"),
    "v5p": TpuFamily("TensorCores", 8, (8,), "v2-alpha-tpuv5"),
    "v5litepod": TpuFamily("chips", 4, (1, 4, 8), "v2-alpha-tpuv5-lite", power_of_two=True),
    "v6e": TpuFamily("chips", 4, (1, 4, 8), "v2-alpha-tpuv6e", power_of_two=True),
}


def _family(accelerator_type: str) -> tuple[TpuFamily, int]:
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator_type or "")
    if not match or match.group(1) not in TPU_FAMILIES:
        raise LaunchError(
            f"--accelerator_type={accelerator_type}: unknown TPU type; known: "
            "v2-N, v3-N, v4-N, v5p-N (N TensorCores, 8 per worker), v5litepod-N, v6e-N "
            "(N chips: 1, 4 or 8 on one worker, else 4 per worker), e.g. "
            "--accelerator_type=v4-32 (4 workers). For another type add "
            "--num_workers=HOSTS (`gcloud compute tpus accelerator-types list --zone=ZONE`).")
    return TPU_FAMILIES[match.group(1)], int(match.group(2))


def num_workers(accelerator_type: str) -> int:
    """Workers (hosts, one ipa_jax.main each) of a slice: v4-8 -> 1, v4-32 -> 4,
    v5litepod-8 -> 1, v5litepod-16 -> 4."""
    family, size = _family(accelerator_type)
    if size in family.single_worker_sizes:
        return 1
    multiple = size % family.per_worker == 0 and (
        not family.power_of_two or size & (size - 1) == 0)
    if size > max(family.single_worker_sizes) and multiple:
        return size // family.per_worker
    name = accelerator_type.rsplit("-", 1)[0]
    above = "a power of two" if family.power_of_two else f"a multiple of {family.per_worker}"
    raise LaunchError(
        f"--accelerator_type={accelerator_type}: a {name} size counts {family.unit}: one of "
        f"{', '.join(map(str, family.single_worker_sizes))} or {above} above, e.g. "
        f"--accelerator_type={name}-{4 * family.per_worker}.")


def default_runtime_version(accelerator_type: str) -> str:
    return _family(accelerator_type)[0].runtime_version


# ---- what the flags describe


@dataclasses.dataclass(frozen=True)
class Tpu:
    """A queued resource and its TPU VM node (same name)."""

    name: str
    zone: str
    project: str | None = None
    accelerator_type: str | None = None
    runtime_version: str | None = None
    provisioning: str = "on-demand"
    workers: int | None = None

    def location(self) -> list[str]:
        return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])


def parse_bucket(bucket: str) -> str:
    """'gs://name' (or 'gs://name/') -> 'name'."""
    match = re.fullmatch(r"gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/?", bucket or "")
    if not match:
        raise LaunchError(
            f"--bucket={bucket}: give a Cloud Storage bucket as gs://NAME (the whole bucket is "
            "mounted; the run's folder is --run), e.g. --bucket=gs://my-bucket; create one with "
            "`gcloud storage buckets create gs://my-bucket --location=REGION`.")
    return match.group(1)


def check_name(flag: str, value: str, pattern: str, rule: str) -> str:
    if not re.fullmatch(pattern, value or ""):
        raise LaunchError(f"--{flag}={value}: {rule}, e.g. --{flag}={EXAMPLES[flag]}.")
    return value


def parse_package(package: str | None, local_dir: str) -> Package:
    """--package: None (this checkout's HEAD), a local .tar.gz, or git+URL[@REF]."""
    if not package:
        return Package(local_tarball=os.path.join(local_dir, PACKAGE_TARBALL),
                       build_from_checkout=True)
    if package.startswith("git+"):
        url, ref = package[len("git+"):], None
        if "@" in url and "/" not in url.rsplit("@", 1)[1]:
            url, ref = url.rsplit("@", 1)
        return Package(git_url=url, git_ref=ref)
    if package.endswith((".tar.gz", ".tgz")) and os.path.isfile(package):
        return Package(local_tarball=os.path.abspath(package))
    raise LaunchError(
        f"--package={package}: give a source tarball of ipa_jax with configs/ (e.g. "
        "`git archive --format=tar.gz --prefix=ipa_jax/ -o ipa_jax.tar.gz HEAD`) or "
        "git+https://HOST/REPO.git@REF; leave it out to pack this checkout's HEAD. "
        "(A wheel has no configs/.)")


# ---- gcloud commands


def gcloud_tpus(tpu: Tpu, *args: str) -> list[str]:
    return ["gcloud", "compute", "tpus", *args, *tpu.location()]


def provisioning_flags(provisioning: str) -> list[str]:
    """--provisioning: spot -> --spot, reserved -> --reserved, on-demand -> nothing."""
    return {"on-demand": [], "spot": ["--spot"], "reserved": ["--reserved"]}[provisioning]


def create_command(tpu: Tpu, startup_script: str | None = None) -> common.Command:
    metadata = [f"--metadata-from-file=startup-script={startup_script}"] if startup_script else []
    return command(*gcloud_tpus(tpu, "queued-resources", "create", tpu.name),
                   f"--node-id={tpu.name}", f"--accelerator-type={tpu.accelerator_type}",
                   f"--runtime-version={tpu.runtime_version}",
                   *provisioning_flags(tpu.provisioning), *metadata)


def describe_state_command(tpu: Tpu) -> common.Command:
    return command(*gcloud_tpus(tpu, "queued-resources", "describe", tpu.name),
                   "--format=value(state.state)")


def delete_command(tpu: Tpu) -> common.Command:
    """Deletes the queued resource and (--force) its TPU VM node; --quiet: no prompt."""
    return command(*gcloud_tpus(tpu, "queued-resources", "delete", tpu.name), "--force",
                   "--quiet")


def ssh_command(tpu: Tpu, worker: int | str, remote: str) -> common.Command:
    """`gcloud compute tpus tpu-vm ssh` running `remote` (bash) on `worker` (an index or all)."""
    return command(*gcloud_tpus(tpu, "tpu-vm", "ssh", tpu.name), f"--worker={worker}",
                   f"--command={remote}")


def upload_package_steps(run: Run) -> list[common.Step]:
    """Packs this checkout's HEAD (unless --package is given) and copies it to the bucket."""
    package = run.package
    if package.local_tarball is None:
        return []
    steps: list[common.Step] = []
    if package.build_from_checkout:
        steps += [Note("ipa_jax for the workers: this checkout's HEAD (commit your changes "
                       "first, or pass --package)"),
                  command("mkdir", "-p", os.path.dirname(package.local_tarball)),
                  command("git", "-C", common.REPO_ROOT, "archive", "--format=tar.gz",
                          "--prefix=ipa_jax/", "-o", package.local_tarball, "HEAD")]
    steps.append(command("gcloud", "storage", "cp", package.local_tarball,
                         run.uri(f"package/{PACKAGE_TARBALL}")))
    return steps


# ---- plans of the subcommands


def create_plan(tpu: Tpu, wait: bool) -> list[common.Step]:
    steps: list[common.Step] = [create_command(tpu)]
    if wait:
        steps.append(Note(f"then every {POLL_SECONDS} s until ACTIVE (SUSPENDED or FAILED: an "
                          f"error):\n{describe_state_command(tpu).shell()}"))
    return steps


def install_plan(tpu: Tpu, run: Run) -> list[common.Step]:
    return [*upload_package_steps(run),
            Note("on every worker: gcsfuse, Python, the bucket mounted at "
                 f"{run.mount}, ipa_jax in {WORKER_VENV}"),
            ssh_command(tpu, "all", setup_script(run))]


def run_commands(tpu: Tpu, run: Run) -> list[tuple[int, common.Command]]:
    """One ssh per worker, 0 .. workers - 1, each running the same training command."""
    return [(i, ssh_command(tpu, i, worker_run_script(run, i))) for i in range(tpu.workers)]


def local_log(run: Run, worker: int) -> str:
    return os.path.join(run.local_dir, "logs", f"worker-{worker}.log")


def fetch_plan(run: Run) -> list[common.Step]:
    """Copies the results, the best checkpoint, the logs and the markers from the bucket."""
    files = ["metrics.json", "predictions.csv", "config.json", "DONE", "FAILED",
             "events.out.tfevents.*"]
    return [command("mkdir", "-p", run.local_dir),
            *(command("gcloud", "storage", "cp", run.uri(f), f"{run.local_dir}/", may_fail=True)
              for f in files),
            *(command("gcloud", "storage", "cp", "-r", run.uri(d), f"{run.local_dir}/",
                      may_fail=True) for d in ("best", "logs"))]


def marker_command(run: Run) -> common.Command:
    return command("gcloud", "storage", "ls", run.uri("DONE"), run.uri("FAILED"))


def startup_script_path(run: Run) -> str:
    return os.path.join(run.local_dir, "startup-script.sh")


def long_run_plan(tpu: Tpu, run: Run, max_crashes: int, watch: bool,
                  poll_seconds: int) -> list[common.Step]:
    """long_run: the package, the startup script, and the TPU created with it; with `watch`
    the creation is left to `watch_long_run`, whose commands are shown as comments."""
    script = startup_script_path(run)
    steps = [*upload_package_steps(run),
             common.WriteFile(script, startup_script(run, max_crashes), executable=True)]
    if not watch:
        return [*steps, create_command(tpu, script)]
    return [*steps, Note(
        f"the watch, every {poll_seconds} s until {run.uri('DONE')} or FAILED exists:\n"
        f"{marker_command(run).shell()}\n"
        f"{describe_state_command(tpu).shell()}\n"
        "when there is no queued resource:\n"
        f"{create_command(tpu, script).shell()}\n"
        "when it is SUSPENDED (preempted) or FAILED: delete it, then create it as above\n"
        f"{delete_command(tpu).shell()}\n"
        "when DONE or FAILED exists: print it and delete the queued resource as above")]


# ---- running the plans


def run_on_workers(commands: list[tuple[int, common.Command]], run: Run, dry_run: bool) -> int:
    """Runs one ssh per worker at once; each output streamed here, prefixed with its worker,
    and appended to <local_dir>/logs/worker-<i>.log. Returns the worst exit status."""
    print(Note(f"on every worker at once, each output streamed here and appended to "
               f"{os.path.join(run.local_dir, 'logs')}/worker-<i>.log:").shell())
    for worker, cmd in commands:
        print(f"{cmd.shell()} 2>&1 | tee -a {shlex.quote(local_log(run, worker))} &")
    print("wait", flush=True)
    if dry_run:
        return 0
    os.makedirs(os.path.join(run.local_dir, "logs"), exist_ok=True)
    lock = threading.Lock()
    try:
        processes = {worker: subprocess.Popen(cmd.argv, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                              text=True, bufsize=1)
                     for worker, cmd in commands}
    except FileNotFoundError as e:
        raise LaunchError(common.not_found_message("gcloud")) from e

    def stream(worker: int, process: subprocess.Popen) -> None:
        with open(local_log(run, worker), "a") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                with lock:
                    print(f"[worker {worker}] {line}", end="", flush=True)

    threads = [threading.Thread(target=stream, args=item, daemon=True)
               for item in processes.items()]
    for thread in threads:
        thread.start()
    try:
        statuses = {worker: process.wait() for worker, process in processes.items()}
    except KeyboardInterrupt:
        for process in processes.values():
            process.terminate()
        raise
    for thread in threads:
        thread.join()
    return report_statuses(statuses)


def report_statuses(statuses: dict[int, int]) -> int:
    """Prints each worker's exit status; returns the first that is neither 0 nor 3, else 3 if
    a worker was preempted, else 0."""
    for worker, status in sorted(statuses.items()):
        print(f"worker {worker}: exit status {status}, {common.describe_exit_status(status)}")
    preempted = common.PREEMPTED_EXIT_CODE in statuses.values()
    if preempted:
        print("Run the same command again to resume from the workdir.")
    return next((s for _, s in sorted(statuses.items())
                 if s not in (0, common.PREEMPTED_EXIT_CODE)),
                common.PREEMPTED_EXIT_CODE if preempted else 0)


def queued_resource_state(tpu: Tpu) -> str | None:
    """ACTIVE, WAITING_FOR_RESOURCES, SUSPENDED, ...; None when there is none of that name."""
    proc = subprocess.run(describe_state_command(tpu).argv, capture_output=True, text=True)
    if proc.returncode == 0:
        return proc.stdout.strip() or "UNKNOWN"
    if "NOT_FOUND" in proc.stderr or "not found" in proc.stderr.lower():
        return None
    raise LaunchError(f"`{describe_state_command(tpu).shell()}` failed: {proc.stderr.strip()}")


def wait_until_active(tpu: Tpu, poll_seconds: int) -> None:
    previous = None
    while (state := queued_resource_state(tpu)) != "ACTIVE":
        if state != previous:
            print(f"# {time.strftime('%H:%M:%S')} {tpu.name}: {state}", flush=True)
            previous = state
        if state is None or state in STOPPED_STATES:
            raise LaunchError(
                f"queued resource {tpu.name} is {state or 'gone'}; see `"
                f"{common.shell_join(gcloud_tpus(tpu, 'queued-resources', 'describe', tpu.name))}"
                "`, then delete it (python -m launch.tpu_vm delete ...) and create it again, "
                "perhaps in another zone or with --provisioning=spot.")
        time.sleep(poll_seconds)
    print(f"# {tpu.name} is ACTIVE with {tpu.workers} worker(s).", flush=True)


def finished_marker(run: Run) -> str | None:
    """'DONE' or 'FAILED' when that marker is in the workdir, else None."""
    proc = subprocess.run(marker_command(run).argv, capture_output=True, text=True)
    found = proc.stdout.split()
    return next((m for m in ("FAILED", "DONE") if run.uri(m) in found), None)


def watch_long_run(tpu: Tpu, run: Run, poll_seconds: int) -> int:
    """Keeps the TPU up until the run writes DONE or FAILED, then deletes it: creates the
    queued resource when there is none, and again after a preemption (SUSPENDED) or a failed
    request (FAILED, at most MAX_FAILED_REQUESTS times in a row)."""
    script, previous, failed_requests = startup_script_path(run), "", 0
    while (marker := finished_marker(run)) is None:
        state = queued_resource_state(tpu)
        if state != previous:
            print(f"# {time.strftime('%H:%M:%S')} {tpu.name}: {state or 'none'}", flush=True)
            previous = state
        failed_requests = failed_requests + 1 if state == "FAILED" else (
            0 if state == "ACTIVE" else failed_requests)
        if failed_requests >= MAX_FAILED_REQUESTS:
            raise LaunchError(
                f"the request for {tpu.name} FAILED {failed_requests} times; see `"
                f"{common.shell_join(gcloud_tpus(tpu, 'queued-resources', 'describe', tpu.name))}"
                "` (quota? zone?), fix it and run long_run again: the run resumes.")
        if state in STOPPED_STATES:
            common.execute([delete_command(tpu)], dry_run=False)
            state = None
        if state is None:
            common.execute([create_command(tpu, script)], dry_run=False)
        time.sleep(poll_seconds)
    print(f"# {run.uri(marker)}:", flush=True)
    subprocess.run(["gcloud", "storage", "cat", run.uri(marker)], check=False)
    if queued_resource_state(tpu) is not None:
        common.execute([delete_command(tpu)], dry_run=False)
    print(f"Fetch the results: python -m launch.tpu_vm fetch --bucket=gs://{run.bucket} "
          f"--run={run.name}")
    return 0 if marker == "DONE" else 1


def report_fetch(run: Run, failed: list[common.Step]) -> None:
    """After fetch: which items were not in the bucket; an error if none was."""
    copies = [step for step in fetch_plan(run) if step.argv[:3] == ("gcloud", "storage", "cp")]
    if len(failed) == len(copies):
        raise LaunchError(f"nothing copied from {run.uri()}: check the bucket and the run name "
                          f"(gcloud storage ls {run.uri()}) and that gcloud is logged in "
                          "(gcloud auth login).")
    missing = [os.path.basename(step.argv[-2]) for step in failed]
    print(f"Copied to {run.local_dir}" + (f"; not in the bucket (yet): {', '.join(missing)}"
                                          if missing else ""))


def warn_if_uncommitted(run: Run) -> None:
    if not run.package.build_from_checkout:
        return
    proc = subprocess.run(["git", "-C", common.REPO_ROOT, "status", "--porcelain",
                           "--untracked-files=no"], capture_output=True, text=True)
    if proc.stdout.strip():
        print("# warning: uncommitted changes are not in the package (git archive HEAD):\n"
              + "\n".join(f"#   {line}" for line in proc.stdout.splitlines()), flush=True)


# ---- the command line

REQUIRED = {
    "create": ("name", "zone", "accelerator_type"),
    "install": ("name", "zone", "bucket", "run"),
    "run": ("name", "zone", "bucket", "run", "config"),
    "fetch": ("bucket", "run"),
    "delete": ("name", "zone"),
    "long_run": ("name", "zone", "accelerator_type", "bucket", "run", "config"),
}
HELP = {
    "create": "create the queued resource (TPU VMs) and wait until it is ACTIVE",
    "install": "install ipa_jax and gcsfuse on every worker and mount the bucket",
    "run": "train on every worker (one ssh each), logs per worker here and in the bucket",
    "fetch": "copy metrics.json, predictions.csv, best/, logs/ from the bucket",
    "delete": "delete the queued resource and its TPU VMs",
    "long_run": "create with a startup script that installs and trains through preemptions; "
                "watch, recreate after a preemption, delete when DONE or FAILED",
}


def tpu_from_args(args: argparse.Namespace) -> Tpu:
    name = check_name("name", args.name, r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?",
                      "a TPU name is lowercase letters, digits and '-', starting with a letter")
    accelerator_type, workers = args.accelerator_type, args.num_workers
    if workers is not None:
        common.positive_int("num_workers", workers)
    elif accelerator_type:
        workers = num_workers(accelerator_type)
    runtime_version = args.runtime_version or (
        default_runtime_version(accelerator_type) if accelerator_type else None)
    if accelerator_type and not runtime_version:
        raise LaunchError(f"--accelerator_type={accelerator_type}: give --runtime_version "
                          "(`gcloud compute tpus versions list --zone=ZONE`).")
    return Tpu(name, args.zone, args.project, accelerator_type, runtime_version,
               args.provisioning, workers)


def run_from_args(args: argparse.Namespace, needs_package: bool) -> Run:
    bucket = parse_bucket(args.bucket)
    name = check_name("run", args.run, r"[A-Za-z0-9][A-Za-z0-9._-]*",
                      "a run name is letters, digits, '.', '_' and '-' (a folder of the bucket)")
    local_dir = os.path.abspath(args.local_dir or os.path.join(common.REPO_ROOT, "workdirs", name))
    package = parse_package(args.package, local_dir) if needs_package else Package()
    if args.config and (package.build_from_checkout or not needs_package):
        common.check_config_in_repo(args.config)
    return Run(bucket, name, args.config, tuple(common.parse_config_overrides(
        args.config_overrides)), package, args.python, local_dir)


def dispatch(args: argparse.Namespace) -> int:
    common.require(args, REQUIRED[args.command], f"`{args.command}`", EXAMPLES)
    if args.command == "run" and not (args.accelerator_type or args.num_workers):
        raise LaunchError("`run` needs --accelerator_type (e.g. --accelerator_type=v4-32) or "
                          "--num_workers to name every worker.")
    tpu = tpu_from_args(args) if args.name else None
    run = (run_from_args(args, needs_package=args.command in ("install", "long_run"))
           if args.bucket or args.run else None)
    if args.command == "run":
        return run_on_workers(run_commands(tpu, run), run, args.dry_run)
    if args.command in ("install", "long_run") and not args.dry_run:
        warn_if_uncommitted(run)
    poll_seconds = common.positive_int("poll_seconds", getattr(args, "poll_seconds", 300))
    plans = {"create": lambda: create_plan(tpu, args.wait),
             "install": lambda: install_plan(tpu, run),
             "fetch": lambda: fetch_plan(run),
             "delete": lambda: [delete_command(tpu)],
             "long_run": lambda: long_run_plan(
                 tpu, run, common.positive_int("max_crashes", args.max_crashes), args.watch,
                 poll_seconds)}
    failed = common.execute(plans[args.command](), args.dry_run)
    if args.dry_run:
        return 0
    if args.command == "fetch":
        report_fetch(run, failed)
    if args.command == "create" and args.wait:
        wait_until_active(tpu, POLL_SECONDS)
    if args.command == "long_run" and args.watch:
        return watch_long_run(tpu, run, poll_seconds)
    return 0


def common_flags() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    tpu = parser.add_argument_group("the TPU")
    tpu.add_argument("--name", help="queued resource and TPU VM name, e.g. ipa-v4")
    tpu.add_argument("--zone", help="e.g. us-central2-b")
    tpu.add_argument("--project", help="Google Cloud project (default: gcloud's)")
    tpu.add_argument("--accelerator_type", help="e.g. v4-32 (4 workers), v5litepod-16, v6e-8")
    tpu.add_argument("--runtime_version", help="TPU VM image (default: one per TPU family)")
    tpu.add_argument("--num_workers", type=int,
                     help="workers of the slice, for a type the table does not know")
    tpu.add_argument("--provisioning", choices=("on-demand", "spot", "reserved"),
                     default="on-demand", help="on-demand (default), spot (cheap, preempted) "
                     "or reserved (your reservation)")
    run = parser.add_argument_group("the run")
    run.add_argument("--bucket", help="gs://NAME, mounted at /gcs/NAME on every worker")
    run.add_argument("--run", help="run name: the workdir is /gcs/NAME/RUN (gs://NAME/RUN)")
    common.add_training_flags(run)
    run.add_argument("--package", help="ipa_jax for the workers: a source .tar.gz or "
                     "git+https://HOST/REPO.git@REF (default: `git archive` of this checkout)")
    run.add_argument("--python", default="python3.11",
                     help="Python (3.11+) on the workers, installed with apt if missing")
    run.add_argument("--local_dir", help="local folder for logs, results and the startup "
                     "script (default: workdirs/RUN in this checkout)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launch.tpu_vm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = [common_flags()]
    for name, text in HELP.items():
        sub = commands.add_parser(name, parents=parents, help=text, description=text)
        sub.set_defaults(parser=sub)
        if name == "create":
            sub.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                             help="wait until the TPU is ACTIVE (default)")
        if name == "long_run":
            sub.add_argument("--watch", action=argparse.BooleanOptionalAction, default=True,
                             help="stay, recreate the TPU after a preemption, delete it when "
                                  "DONE or FAILED (default); --no-watch: create and return")
            sub.add_argument("--poll_seconds", type=int, default=300)
            sub.add_argument("--max_crashes", type=int, default=5,
                             help="FAILED after this many crashes in a row on a worker (a "
                                  "worker that reboots makes the others crash meanwhile)")
    return parser


def main(argv=None) -> int:
    return common.cli_main(build_parser(), dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
