# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""What runs on each Cloud TPU VM worker: where things live there, the run it serves, and the
shell scripts `launch.tpu_vm` sends (setup, the training command, long_run's startup script,
its training loop and systemd service). Pure functions of a `Run`: the tests read them."""

from __future__ import annotations

import dataclasses
import shlex

from launch import common

WORKER_ROOT = "/opt/ipa_jax"
WORKER_SRC = f"{WORKER_ROOT}/src"  # the package's source tree; training runs here
WORKER_VENV = f"{WORKER_ROOT}/venv"
WORKER_LOG_DIR = "/var/log/ipa_jax"  # long_run: each worker's log, copied to the bucket
MOUNT_ROOT = "/gcs"
# --implicit-dirs: folders made by other tools; --rename-dir-limit: orbax renames a finished
# checkpoint's temporary folder; --metadata-cache-ttl-secs=0: each worker sees the others'
# files at once.
GCSFUSE_FLAGS = ("--implicit-dirs", "--rename-dir-limit=200000", "--metadata-cache-ttl-secs=0")
SERVICE = "ipa-jax-train"  # long_run's systemd service on each worker
PACKAGE_TARBALL = "ipa_jax-src.tar.gz"
WORKER_NUMBER_URL = ("http://metadata.google.internal/computeMetadata/v1/instance/attributes/"
                     "agent-worker-number")
APT_GET = ("sudo env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a "
           "apt-get -o DPkg::Lock::Timeout=600 -q")


@dataclasses.dataclass(frozen=True)
class Package:
    """How ipa_jax reaches the workers: a source tarball uploaded to the bucket, or git."""

    local_tarball: str | None = None  # uploaded to the run's package/ folder
    git_url: str | None = None
    git_ref: str | None = None
    build_from_checkout: bool = False  # local_tarball is `git archive HEAD` of this checkout


@dataclasses.dataclass(frozen=True)
class Run:
    """A training run: its bucket, its name (the workdir) and the command."""

    bucket: str  # without gs://
    name: str
    config: str | None = None
    overrides: tuple[str, ...] = ()
    package: Package = Package()
    python: str = "python3.11"
    local_dir: str = ""

    @property
    def mount(self) -> str:
        return f"{MOUNT_ROOT}/{self.bucket}"

    @property
    def workdir(self) -> str:
        return f"{self.mount}/{self.name}"

    def uri(self, path: str = "") -> str:
        return f"gs://{self.bucket}/{self.name}" + (f"/{path}" if path else "")


def install_system_packages(python: str) -> str:
    """gcsfuse (Google's apt repository) and `python` with venv, unless already there."""
    repo = ('"deb [signed-by=/usr/share/keyrings/cloud.google.asc] '
            'https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main"')
    return "\n".join([
        f"if ! command -v gcsfuse >/dev/null || ! {python} -c 'import ensurepip' 2>/dev/null; "
        "then",
        f"  echo {repo} | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null",
        "  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg"
        " | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null",
        f"  {APT_GET} update",
        f"  {APT_GET} install -y gcsfuse {python} {python}-venv",
        "fi",
    ])


def mount_bucket(run: Run) -> str:
    """Mounts the bucket at /gcs/BUCKET with gcsfuse unless it is mounted."""
    return "\n".join([
        f"if ! mountpoint -q {run.mount}; then",
        f'  sudo mkdir -p {run.mount} && sudo chown "$(id -u):$(id -g)" {run.mount}',
        f"  gcsfuse {' '.join(GCSFUSE_FLAGS)} {run.bucket} {run.mount}",
        "fi",
    ])


def fetch_source(run: Run) -> str:
    """Puts the package's source tree (with configs/) in /opt/ipa_jax/src."""
    package = run.package
    lines = [f'sudo mkdir -p {WORKER_ROOT} && sudo chown "$(id -u):$(id -g)" {WORKER_ROOT}',
             f"rm -rf {WORKER_SRC}"]
    if package.git_url:
        lines.append(f"git clone --quiet {shlex.quote(package.git_url)} {WORKER_SRC}")
        if package.git_ref:
            lines.append(f"git -C {WORKER_SRC} checkout --quiet {shlex.quote(package.git_ref)}")
    else:
        lines += [f"mkdir -p {WORKER_SRC}",
                  f"tar -xzf {run.workdir}/package/{PACKAGE_TARBALL} -C {WORKER_SRC} "
                  "--strip-components=1"]
    return "\n".join(lines)


def install_ipa_jax(python: str) -> str:
    """ipa_jax (editable: configs/ stay beside it) and JAX's TPU runtime in a virtualenv."""
    pip = f"{WORKER_VENV}/bin/pip"
    return "\n".join([
        f"[ -x {WORKER_VENV}/bin/python ] || {python} -m venv {WORKER_VENV}",
        f"{pip} install --quiet --upgrade pip",
        f'{pip} install --quiet -e {WORKER_SRC} "jax[tpu]"',
        f"{WORKER_VENV}/bin/python -c 'import ipa_jax, jax; "
        "print(\"ipa_jax installed, jax\", jax.__version__)'",
    ])


def setup_script(run: Run) -> str:
    """Everything a worker needs before training; safe to run again (e.g. at every boot)."""
    return "\n".join(["set -euo pipefail", install_system_packages(run.python), mount_bucket(run),
                      fetch_source(run), install_ipa_jax(run.python)])


def worker_training_command(run: Run) -> str:
    return common.shell_join(common.training_command(
        f"{WORKER_VENV}/bin/python", run.config, run.workdir, run.overrides))


def worker_run_script(run: Run, worker: int) -> str:
    """Worker `worker`'s part of `run`: train, its output tee'd to logs/worker-<i>.log."""
    log = f"{run.workdir}/logs/worker-{worker}.log"
    return "\n".join([
        "set -euo pipefail", mount_bucket(run), f"mkdir -p {run.workdir}/logs",
        f"cd {WORKER_SRC}",
        f"PYTHONUNBUFFERED=1 {worker_training_command(run)} 2>&1 | tee -a {log}",
    ])


def training_loop_script(run: Run, max_crashes: int) -> str:
    """long_run's loop on one worker: reruns ipa_jax.main until it finishes or fails."""
    preempted = common.PREEMPTED_EXIT_CODE
    return f"""#!/bin/bash
# The training loop of `launch/tpu_vm.py long_run` on one worker (systemd service {SERVICE}).
# Exit status of ipa_jax.main: 0 finished -> worker 0 writes DONE; {preempted} preempted (a
# checkpoint is saved) -> run it again, resuming from the workdir; 1 a user error -> FAILED;
# another status is a crash -> again after 30 s, FAILED after {max_crashes} crashes in a row.
# A stop of the service (shutdown, preemption) sends SIGTERM to ipa_jax.main, which saves a
# checkpoint and exits {preempted}; the loop then ends and the next boot resumes.
set -u
WORKDIR={run.workdir}
WORKER=$(curl -sf -H 'Metadata-Flavor: Google' {WORKER_NUMBER_URL})
LOG={WORKER_LOG_DIR}/worker-$WORKER.log
BUCKET_LOG=$WORKDIR/logs/worker-$WORKER.log
stopping=0
trap 'stopping=1' TERM
mkdir -p {WORKER_LOG_DIR} "$WORKDIR/logs"
[ -s "$LOG" ] || cp "$BUCKET_LOG" "$LOG" 2>/dev/null || true  # one log across VMs
say() {{ echo "=== $(date -u +%FT%TZ) worker $WORKER: $*" >> "$LOG"; }}
save_log() {{ cp "$LOG" "$BUCKET_LOG" || true; }}
finish() {{  # MARKER MESSAGE: the run's outcome, for the user and `long_run`
  say "$2"; save_log
  {{ echo "$2"; echo "worker $WORKER, $(date -u +%FT%TZ); the end of its log:"
    tail -n 40 "$LOG"; }} > "$WORKDIR/$1"
}}
(while sleep 60; do save_log; done) >/dev/null 2>&1 &
sync_pid=$!
crashes=0
cd {WORKER_SRC}
while [ ! -e "$WORKDIR/DONE" ] && [ ! -e "$WORKDIR/FAILED" ]; do
  say "starting ipa_jax.main"
  PYTHONUNBUFFERED=1 {worker_training_command(run)} >> "$LOG" 2>&1
  status=$?
  say "exit status $status"
  save_log
  case $status in
    0) [ "$WORKER" != 0 ] || finish DONE "training finished (exit status 0)"; break ;;
    {preempted}) crashes=0; [ "$stopping" = 0 ] || break ;;
    1) finish FAILED "a user error (exit status 1): see the log; fix it and start a new run"
       break ;;
    *) [ "$stopping" = 0 ] || break
       crashes=$((crashes + 1))
       if [ "$crashes" -ge {max_crashes} ]; then
         finish FAILED "crashed {max_crashes} times in a row (last exit status $status)"; break
       fi
       sleep 30 ;;
  esac
done
pkill -P "$sync_pid" sleep; kill "$sync_pid" 2>/dev/null
save_log
"""


def service_unit(run: Run) -> str:
    """systemd unit of the loop: ordered after the bucket's mount and the network, so that at
    shutdown it gets SIGTERM (and time to save a checkpoint) before they go."""
    return f"""[Unit]
Description=ipa_jax training (launch/tpu_vm.py long_run)
Wants=network-online.target
After=network-online.target
RequiresMountsFor={run.mount}

[Service]
Type=simple
ExecStart=/bin/bash {WORKER_ROOT}/train_loop.sh
TimeoutStopSec=300
"""


def startup_script(run: Run, max_crashes: int = 5) -> str:
    """The TPU VMs' `startup-script` for long_run: at every boot of every worker, install,
    mount the bucket, and (unless DONE or FAILED is in the workdir) start the training loop
    as a systemd service (stopped with SIGTERM before the bucket is unmounted)."""
    return "\n".join([
        "#!/bin/bash",
        f"# ipa_jax long run {run.uri()} (launch/tpu_vm.py long_run): runs as root at every "
        "boot of",
        "# every worker; the training resumes from the workdir in the bucket.",
        "set -u",
        f"WORKER=$(curl -sf -H 'Metadata-Flavor: Google' {WORKER_NUMBER_URL})",
        f"mkdir -p {WORKER_ROOT}",
        f"cat > {WORKER_ROOT}/setup.sh <<'IPA_JAX_SETUP'",
        setup_script(run),
        "IPA_JAX_SETUP",
        "for attempt in 1 2 3; do  # apt and pip can fail for a while",
        f"  if bash {WORKER_ROOT}/setup.sh; then break; fi",
        '  if [ "$attempt" = 3 ]; then',
        f'    echo "worker $WORKER: the set-up failed 3 times (its log: sudo journalctl -u '
        f'google-startup-scripts)" | gcloud storage cp - {run.uri("FAILED")}',
        "    exit 1",
        "  fi",
        "  sleep 60",
        "done",
        "for marker in DONE FAILED; do",
        f'  if [ -e {run.workdir}/"$marker" ]; then echo "{run.uri()}/$marker exists: nothing '
        'to do"; exit 0; fi',
        "done",
        f"cat > {WORKER_ROOT}/train_loop.sh <<'IPA_JAX_LOOP'",
        training_loop_script(run, max_crashes).rstrip("\n"),
        "IPA_JAX_LOOP",
        f"cat > /etc/systemd/system/{SERVICE}.service <<'IPA_JAX_UNIT'",
        service_unit(run).rstrip("\n"),
        "IPA_JAX_UNIT",
        "systemctl daemon-reload",
        f"systemctl restart --no-block {SERVICE}.service",
        "",
    ])
