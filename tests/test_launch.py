# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""launch/: the dry runs of tpu_vm.py and slurm.py print the right gcloud / sbatch commands and
scripts, and bad input stops with one line naming the fix. Nothing reaches a cloud or a
cluster: the only programs run are the launchers (--dry_run), `bash -n` (syntax checks) and
long_run's training loop against a fake `python` in a temporary folder."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from launch import common, slurm, tpu_vm, tpu_worker
from tests.conftest import REPO

TPU_FLAGS = ["--name=ipa-v4", "--zone=us-central2-b", "--accelerator_type=v4-32",
             "--bucket=gs://my-bucket", "--run=full-1", "--config=configs/full.py",
             "--config_overrides=--config.batch_size=256 --config.num_epochs=3"]
TRAIN = ("/opt/ipa_jax/venv/bin/python -m ipa_jax.main --config=configs/full.py "
         "--workdir=/gcs/my-bucket/full-1 --config.batch_size=256 --config.num_epochs=3")


def tpu_dry_run(capsys, command, *flags, local_dir=None):
    local = [f"--local_dir={local_dir}"] if local_dir else []
    assert tpu_vm.main([command, *TPU_FLAGS, *local, *flags, "--dry_run"]) == 0
    return capsys.readouterr().out


def shell_lines(out: str, prefix: str) -> list[list[str]]:
    """The printed commands that start with `prefix`, as argv (a quoted argument may span
    lines; here-documents are skipped; `... 2>&1 | tee -a LOG &` loses its tee)."""
    commands, pending, heredoc = [], "", None
    for line in out.splitlines():
        if heredoc:
            heredoc = None if line == heredoc else heredoc
            continue
        pending += line + "\n"
        try:
            argv = shlex.split(re.sub(r" 2>&1 \| tee -a \S+ &$", "", pending), comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if match := re.search(r"<<'(\w+)'$", line):
            heredoc = match.group(1)
        if pending.startswith(prefix):
            commands.append(argv)
        pending = ""
    return commands


def flag(argv, name):
    return next(a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}="))


def assert_bash_syntax(script: str):
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---- accelerator types


@pytest.mark.parametrize("accelerator_type, workers", [
    ("v2-8", 1), ("v3-8", 1), ("v3-32", 4), ("v4-8", 1), ("v4-16", 2), ("v4-32", 4),
    ("v4-128", 16), ("v5p-8", 1), ("v5p-128", 16), ("v5litepod-1", 1), ("v5litepod-4", 1),
    ("v5litepod-8", 1), ("v5litepod-16", 4), ("v5litepod-256", 64), ("v6e-8", 1),
    ("v6e-16", 4), ("v6e-256", 64)])
def test_num_workers_follows_the_accelerator_type(accelerator_type, workers):
    assert tpu_vm.num_workers(accelerator_type) == workers


@pytest.mark.parametrize("accelerator_type", ["v7-8", "tpu7x-8", "v4", "V4-32", "", "v4-12",
                                              "v5litepod-2", "v5litepod-12"])
def test_an_unknown_accelerator_type_is_refused_with_an_example(accelerator_type):
    with pytest.raises(common.LaunchError, match=r"--accelerator_type=.*e\.g\. "
                                                 r"--accelerator_type="):
        tpu_vm.num_workers(accelerator_type)


def test_default_runtime_versions():
    assert tpu_vm.default_runtime_version("v4-32") == "tpu-ubuntu2204-base"
    assert tpu_vm.default_runtime_version("v5litepod-16") == "v2-alpha-tpuv5-lite"
    assert tpu_vm.default_runtime_version("v6e-8") == "v2-alpha-tpuv6e"


# ---- tpu_vm.py subcommands


def test_run_names_every_worker_with_the_bucket_workdir_and_per_worker_logs(capsys, tmp_path):
    out = tpu_dry_run(capsys, "run", local_dir=tmp_path / "local")
    ssh = shell_lines(out, "gcloud compute tpus tpu-vm ssh")
    assert [flag(argv, "worker") for argv in ssh] == ["0", "1", "2", "3"]  # v4-32: 4 workers
    assert "--worker=all" not in out
    for i, argv in enumerate(ssh):
        assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "ipa-v4"]
        assert "--zone=us-central2-b" in argv
        remote = flag(argv, "command")
        assert_bash_syntax(remote)
        assert "gcsfuse --implicit-dirs" in remote and "my-bucket /gcs/my-bucket" in remote
        assert f"{TRAIN} 2>&1 | tee -a /gcs/my-bucket/full-1/logs/worker-{i}.log" in remote
        assert f"| tee -a {tmp_path}/local/logs/worker-{i}.log &" in out  # and locally
    assert out.rstrip().endswith("wait")
    assert not (tmp_path / "local").exists()  # a dry run writes nothing


def test_run_with_num_workers_for_a_type_the_table_does_not_know(capsys):
    flags = [f for f in TPU_FLAGS if not f.startswith("--accelerator_type")]
    assert tpu_vm.main(["run", *flags, "--num_workers=2", "--dry_run"]) == 0
    ssh = shell_lines(capsys.readouterr().out, "gcloud compute tpus tpu-vm ssh")
    assert [flag(argv, "worker") for argv in ssh] == ["0", "1"]


@pytest.mark.parametrize("provisioning, expected", [
    ("spot", ["--spot"]), ("reserved", ["--reserved"]), ("on-demand", [])])
def test_create_requests_the_provisioning_asked_for(capsys, provisioning, expected):
    out = tpu_dry_run(capsys, "create", f"--provisioning={provisioning}")
    (argv,) = shell_lines(out, "gcloud compute tpus queued-resources create")
    assert argv == ["gcloud", "compute", "tpus", "queued-resources", "create", "ipa-v4",
                    "--zone=us-central2-b", "--node-id=ipa-v4", "--accelerator-type=v4-32",
                    "--runtime-version=tpu-ubuntu2204-base", *expected]
    assert "until ACTIVE" in out and "queued-resources describe ipa-v4" in out


def test_create_passes_the_project_and_the_runtime_version(capsys):
    out = tpu_dry_run(capsys, "create", "--project=my-project", "--runtime_version=v2-alpha-tpuv4",
                      "--no-wait")
    (argv,) = shell_lines(out, "gcloud compute tpus queued-resources create")
    assert "--project=my-project" in argv and "--runtime-version=v2-alpha-tpuv4" in argv
    assert "describe" not in out


def test_install_packs_the_checkout_and_sets_up_every_worker(capsys, tmp_path):
    out = tpu_dry_run(capsys, "install", local_dir=tmp_path)
    tarball = f"{tmp_path}/ipa_jax-src.tar.gz"
    assert shell_lines(out, "git ") == [["git", "-C", REPO, "archive", "--format=tar.gz",
                                        "--prefix=ipa_jax/", "-o", tarball, "HEAD"]]
    assert shell_lines(out, "gcloud storage cp") == [
        ["gcloud", "storage", "cp", tarball, "gs://my-bucket/full-1/package/ipa_jax-src.tar.gz"]]
    (ssh,) = shell_lines(out, "gcloud compute tpus tpu-vm ssh")
    assert flag(ssh, "worker") == "all"
    setup = flag(ssh, "command")
    assert_bash_syntax(setup)
    for part in ("apt-get", "install -y gcsfuse python3.11 python3.11-venv",
                 "gcsfuse --implicit-dirs --rename-dir-limit=200000", "my-bucket /gcs/my-bucket",
                 "tar -xzf /gcs/my-bucket/full-1/package/ipa_jax-src.tar.gz",
                 'pip install --quiet -e /opt/ipa_jax/src "jax[tpu]"'):
        assert part in setup


def test_install_from_a_git_url_clones_it_on_the_workers(capsys):
    out = tpu_dry_run(capsys, "install", "--package=git+https://github.com/o/ipa_jax.git@v0.1")
    assert "git archive" not in out and "gcloud storage cp" not in out
    setup = flag(shell_lines(out, "gcloud compute tpus tpu-vm ssh")[0], "command")
    assert "git clone --quiet https://github.com/o/ipa_jax.git /opt/ipa_jax/src" in setup
    assert "checkout --quiet v0.1" in setup


def test_fetch_copies_the_results_from_the_bucket(capsys, tmp_path):
    out = tpu_dry_run(capsys, "fetch", local_dir=tmp_path)
    copies = shell_lines(out, "gcloud storage cp")
    sources = {argv[-2] for argv in copies}
    assert {"gs://my-bucket/full-1/metrics.json", "gs://my-bucket/full-1/predictions.csv",
            "gs://my-bucket/full-1/best", "gs://my-bucket/full-1/logs"} <= sources
    assert all(argv[-1] == f"{tmp_path}/" for argv in copies)
    assert ["gcloud", "storage", "cp", "-r", "gs://my-bucket/full-1/best", f"{tmp_path}/"] in copies


def test_fetch_names_what_is_not_in_the_bucket_and_fails_when_nothing_is(capsys, tmp_path):
    run = tpu_vm.Run("my-bucket", "full-1", local_dir=str(tmp_path))
    copies = [step for step in tpu_vm.fetch_plan(run) if isinstance(step, common.Command)
              and step.argv[:3] == ("gcloud", "storage", "cp")]
    tpu_vm.report_fetch(run, [c for c in copies if c.argv[-2].endswith(("/DONE", "/FAILED"))])
    out = capsys.readouterr().out
    assert out == f"Copied to {tmp_path}; not in the bucket (yet): DONE, FAILED\n"
    with pytest.raises(common.LaunchError, match=r"nothing copied from gs://my-bucket/full-1"):
        tpu_vm.report_fetch(run, copies)


def test_delete_deletes_the_queued_resource_and_its_node(capsys):
    out = tpu_dry_run(capsys, "delete")
    assert out.strip() == ("gcloud compute tpus queued-resources delete ipa-v4 "
                           "--zone=us-central2-b --force --quiet")


def test_long_run_creates_the_queued_resource_with_its_startup_script(capsys, tmp_path):
    out = tpu_dry_run(capsys, "long_run", "--provisioning=spot", "--no-watch",
                      local_dir=tmp_path)
    script_path = f"{tmp_path}/startup-script.sh"
    (create,) = shell_lines(out, "gcloud compute tpus queued-resources create")
    assert "--spot" in create
    assert flag(create, "metadata-from-file") == f"startup-script={script_path}"
    written = re.search(rf"cat > {script_path} <<'IPA_JAX_EOF'\n(.*?)\nIPA_JAX_EOF", out, re.S)
    run = tpu_vm.run_from_args(tpu_vm.build_parser().parse_args(
        ["long_run", *TPU_FLAGS, f"--local_dir={tmp_path}"]), needs_package=True)
    assert written.group(1) + "\n" == tpu_vm.startup_script(run)
    assert not os.listdir(tmp_path)  # printed, not written


def test_long_run_watch_shows_its_commands_as_comments(capsys):
    out = tpu_dry_run(capsys, "long_run", "--poll_seconds=600")
    assert "every 600 s until gs://my-bucket/full-1/DONE or FAILED exists" in out
    for command in ("gcloud storage ls gs://my-bucket/full-1/DONE gs://my-bucket/full-1/FAILED",
                    "gcloud compute tpus queued-resources create ipa-v4",
                    "gcloud compute tpus queued-resources delete ipa-v4"):
        assert f"\n# {command}" in out


def startup_run():
    args = tpu_vm.build_parser().parse_args(["long_run", *TPU_FLAGS])
    return tpu_vm.run_from_args(args, needs_package=True)


def test_the_startup_script_installs_mounts_and_starts_the_loop_unless_finished():
    script = tpu_vm.startup_script(startup_run())
    assert_bash_syntax(script)
    assert script.startswith("#!/bin/bash\n")
    order = [script.index(part) for part in (
        "gcsfuse --implicit-dirs", "pip install --quiet -e /opt/ipa_jax/src",
        'if [ -e /gcs/my-bucket/full-1/"$marker" ]', "cat > /opt/ipa_jax/train_loop.sh",
        "RequiresMountsFor=/gcs/my-bucket", "systemctl restart --no-block ipa-jax-train")]
    assert order == sorted(order)
    loop = tpu_worker.training_loop_script(startup_run(), max_crashes=5)
    assert_bash_syntax(loop)
    assert loop in script
    assert f'{TRAIN} >> "$LOG" 2>&1' in loop  # the same command and workdir every time
    assert 'while [ ! -e "$WORKDIR/DONE" ] && [ ! -e "$WORKDIR/FAILED" ]; do' in loop
    assert '3) crashes=0; [ "$stopping" = 0 ] || break ;;' in loop  # 3: run it again
    assert 'finish DONE "training finished' in loop and 'finish FAILED "a user error' in loop


def run_loop(tmp_path, statuses):
    """Runs long_run's loop with a fake `python` exiting with `statuses` in turn."""
    workdir = tmp_path / "bucket" / "run"
    run = tpu_vm.Run("bucket", "run", "configs/full.py", ("--config.batch_size=8",))
    loop = tpu_worker.training_loop_script(run, max_crashes=5)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "curl").write_text("#!/bin/sh\necho 0\n")  # worker 0, no metadata server
    (fake_bin / "python").write_text(
        "#!/bin/bash\necho \"$@\" >> \"$CALLS\"\nn=$(wc -l < \"$CALLS\")\n"
        f"statuses=({' '.join(map(str, statuses))})\nexit ${{statuses[$((n - 1))]}}\n")
    for fake in fake_bin.iterdir():
        fake.chmod(0o755)
    replacements = {run.workdir: str(workdir), tpu_worker.WORKER_LOG_DIR: str(tmp_path / "log"),
                    f"{tpu_vm.WORKER_VENV}/bin/python": str(fake_bin / "python"),
                    f"cd {tpu_worker.WORKER_SRC}": f"cd {tmp_path}"}
    for old, new in replacements.items():
        assert old in loop
        loop = loop.replace(old, new)
    env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", CALLS=str(tmp_path / "calls"))
    proc = subprocess.run(["bash", "-c", loop], env=env, capture_output=True, text=True,
                          timeout=20)
    assert proc.returncode == 0, proc.stderr
    return workdir, (tmp_path / "calls").read_text().splitlines()


def test_the_loop_resumes_after_preemption_and_writes_done(tmp_path):
    workdir, calls = run_loop(tmp_path, [3, 3, 0])
    assert calls == [f"-m ipa_jax.main --config=configs/full.py --workdir={workdir} "
                     "--config.batch_size=8"] * 3  # the same command: it resumes
    assert (workdir / "DONE").read_text().startswith("training finished (exit status 0)")
    assert not (workdir / "FAILED").exists()
    log = (workdir / "logs" / "worker-0.log").read_text()
    assert log.count("starting ipa_jax.main") == 3 and "exit status 3" in log


def test_the_loop_stops_on_a_user_error_and_writes_failed(tmp_path):
    workdir, calls = run_loop(tmp_path, [1, 0])
    assert len(calls) == 1
    assert (workdir / "FAILED").read_text().startswith("a user error (exit status 1)")
    assert not (workdir / "DONE").exists()


def test_report_statuses_prefers_a_failure_to_a_preemption(capsys):
    assert tpu_vm.report_statuses({0: 0, 1: 0}) == 0
    assert tpu_vm.report_statuses({0: 3, 1: 3}) == 3
    assert tpu_vm.report_statuses({0: 3, 1: 1, 2: 139}) == 1
    assert "Run the same command again" in capsys.readouterr().out


# ---- bad input


@pytest.mark.parametrize("bad, message", [
    ("--bucket=my-bucket", r"--bucket=my-bucket: give a Cloud Storage bucket as gs://NAME"),
    ("--bucket=gs://my-bucket/some/folder", r"gs://NAME .*--bucket=gs://my-bucket"),
    ("--accelerator_type=v9-8", r"unknown TPU type.*--num_workers"),
    ("--name=My_TPU", r"--name=My_TPU: a TPU name is lowercase.*--name=ipa-v4"),
    ("--run=a/b", r"--run=a/b: a run name"),
    ("--config=configs/nope.py", r"no config file 'configs/nope.py'.*--config=configs/full.py"),
    ("--config_overrides=--workdir=/tmp", r"not a config override.*--config\.FIELD=VALUE"),
    ("--package=dist/ipa_jax-0.1.0-py3-none-any.whl", r"A wheel has no configs/"),
])
def test_bad_tpu_input_stops_with_the_fix(capsys, bad, message):
    name = bad.split("=", 1)[0]
    flags = [f for f in TPU_FLAGS if not f.startswith(name + "=")] + [bad]
    with pytest.raises(SystemExit) as exit_info:
        tpu_vm.main(["long_run", *flags, "--dry_run"])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_config_overrides_keep_their_quoting_up_to_the_workers(capsys):
    value = "--config.data.also_test_on=('groups', 'users')"
    assert tpu_vm.main(["run", *TPU_FLAGS[:-1], f"--config_overrides={shlex.quote(value)}",
                        "--dry_run"]) == 0
    remote = flag(shell_lines(capsys.readouterr().out, "gcloud compute tpus tpu-vm ssh")[0],
                  "command")
    python = next(line for line in remote.splitlines() if "ipa_jax.main" in line)
    assert shlex.split(python.split(" 2>&1 |")[0])[-1] == value
    with pytest.raises(common.LaunchError, match="quote each value once"):
        common.parse_config_overrides(["--config.name='unbalanced"])


def test_a_missing_flag_is_named_with_an_example(capsys):
    with pytest.raises(SystemExit):
        tpu_vm.main(["run", "--name=ipa-v4", "--dry_run"])
    err = capsys.readouterr().err
    assert "`run` needs --zone, --bucket, --run, --config" in err
    assert "--bucket=gs://my-bucket" in err


def test_the_cli_runs_as_a_script_and_refuses_a_bucket_without_gs(tmp_path):
    cmd = [sys.executable, "launch/tpu_vm.py", "run", *TPU_FLAGS, f"--local_dir={tmp_path}",
           "--dry_run"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("gcloud compute tpus tpu-vm ssh ipa-v4") == 4
    bad = [a if not a.startswith("--bucket") else "--bucket=my-bucket" for a in cmd]
    proc = subprocess.run(bad, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "error: --bucket=my-bucket: give a Cloud Storage bucket as gs://NAME" in proc.stderr


def test_the_preempted_exit_code_is_ipa_jax_mains():
    with open(os.path.join(REPO, "ipa_jax", "preemption.py")) as f:
        assert re.search(rf"^PREEMPTED_EXIT_CODE = {common.PREEMPTED_EXIT_CODE}\b", f.read(),
                         re.M)


# ---- slurm.py

SLURM_FLAGS = ["--nodes=2", "--gpus_per_node=8", "--time=24:00:00", "--partition=gpu",
               "--config=configs/full.py", "--config_overrides=--config.batch_size=96"]


def slurm_dry_run(capsys, tmp_path, *flags):
    workdir = tmp_path / "runs" / "full1"
    assert slurm.main([*SLURM_FLAGS, f"--workdir={workdir}", *flags, "--dry_run"]) == 0
    out = capsys.readouterr().out
    script = re.search(r"<<'IPA_JAX_EOF'\n(.*?)\nIPA_JAX_EOF", out, re.S).group(1)
    assert not workdir.exists()  # a dry run writes nothing
    return str(workdir), script, out


def test_the_slurm_script_runs_one_task_per_node_and_requeues_on_status_3(capsys, tmp_path):
    workdir, script, out = slurm_dry_run(capsys, tmp_path)
    assert_bash_syntax(script)
    sbatch = re.findall(r"^#SBATCH (\S+)$", script, re.M)
    for option in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--time=24:00:00",
                   "--signal=USR1@300", "--requeue", "--partition=gpu", "--open-mode=append",
                   f"--output={workdir}/logs/slurm-%j.out", f"--chdir={REPO}"):
        assert option in sbatch
    # #SBATCH lines count only before the first command.
    assert script.index("#SBATCH --partition") < script.index("\nsource ")
    srun = re.search(r"^srun (.*?[^\\])$", script, re.M | re.S).group(1)
    assert shlex.split(srun.replace("\\\n", " ")) == [
        "--ntasks-per-node=1", "--kill-on-bad-exit=0", "--open-mode=append",
        f"--output={workdir}/logs/job-%j-node-%t.log", "python", "-m", "ipa_jax.main",
        "--config=configs/full.py", f"--workdir={workdir}", "--config.batch_size=96"]
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in script
    assert re.search(r'^  3\) .*\n +scontrol requeue "\$SLURM_JOB_ID" ;;$', script, re.M)
    assert "{{" not in script and "##" not in script
    assert f"\nmkdir -p {workdir}/logs\nsbatch {workdir}/ipa_jax.sbatch\n" in out


def test_slurm_options_signal_account_and_write_only(capsys, tmp_path):
    _, script, out = slurm_dry_run(capsys, tmp_path, "--signal_seconds=600", "--account=proj",
                                   "--cpus_per_task=16", "--sbatch_option=--mem=0",
                                   "--write_only")
    for line in ("#SBATCH --signal=USR1@600", "#SBATCH --account=proj",
                 "#SBATCH --cpus-per-task=16", "#SBATCH --mem=0"):
        assert line in script.splitlines()
    assert "\nsbatch " not in out and "# sbatch " in out


@pytest.mark.parametrize("bad, message", [
    ("--nodes=0", r"--nodes=0: must be 1 or more, e\.g\. --nodes=2"),
    ("--gpus_per_node=0", r"--gpus_per_node=0: must be 1 or more"),
    ("--time=tomorrow", r"--time=tomorrow: give SLURM's time limit, e\.g\. --time=24:00:00"),
    ("--signal_seconds=7200", r"--signal_seconds=7200: .* e\.g\. --signal_seconds=300"),
    ("--config=configs/missing.py", r"no config file 'configs/missing.py'"),
    ("--sbatch_option=mem=0", r"--sbatch_option=--NAME=VALUE"),
])
def test_bad_slurm_input_stops_with_the_fix(capsys, tmp_path, bad, message):
    name = bad.split("=", 1)[0]
    flags = [f for f in SLURM_FLAGS if not f.startswith(name + "=")]
    time = ["--time=01:00:00"] if name == "--signal_seconds" else []
    with pytest.raises(SystemExit) as exit_info:
        slurm.main([*flags, *time, bad, f"--workdir={tmp_path}/w", "--dry_run"])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("time, seconds", [
    ("30", 1800), ("30:15", 1815), ("02:00:00", 7200), ("1-00", 86400), ("1-02:30", 95400),
    ("2-00:00:10", 172810)])
def test_slurm_time_limits(time, seconds):
    assert slurm.time_limit_seconds(time) == seconds


def test_the_slurm_cli_runs_as_a_module(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launch.slurm", *SLURM_FLAGS,
                           f"--workdir={tmp_path}/w", "--dry_run"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --signal=USR1@300" in proc.stdout
    assert f"sbatch {tmp_path}/w/ipa_jax.sbatch" in proc.stdout
