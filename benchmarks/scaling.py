# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Scaling of the training loop: devices, processes, input pipeline, data preparation (tables).

    python benchmarks/scaling.py [--config configs/i2pa.py:tiny] [--batch_size 16] [--steps 10]
                                 [--sections 1,2,3,4,5] [--size tiny] [--workdir DIR] [--quick]
                                 [--fsdp 1,4,8]
    python benchmarks/scaling.py --config configs/full.py --sections 5   # memory by fsdp

Issue 13's numbers, each section a table with its exact settings:
  1  step time by device count: the training loop's jitted step (`train.train_step` over
     `sharding.make_mesh()`, state replicated unless the config sets fsdp, batch sharded) on
     a batch of the real pipeline already on the devices, on 1, 2, 4, 8 simulated CPU devices
     (one subprocess each: XLA_FLAGS is read when JAX starts) and in 2 processes x 2 devices
     on localhost (gloo collectives), the cross-process cost. Median ms/step after warm-up;
     compile excluded.
  2  outside the model, in one process on the host's own devices: (a) `next(iterator)` of the
     training pipeline on the prepared data, (b) host-to-device (`sharding.to_global`), (c) the
     step on device-resident data; the fraction (a+b)/(a+b+c) if nothing overlapped, and in
     the loop as `train.py` runs it (input, transfer, step dispatch in turn; tf.data prefetches
     and the step runs asynchronously), 1 - c / loop.
  3  input pipeline throughput: images/s the training pipeline delivers alone (no model) against
     the images/s the step of section 2 consumes; issue 13's goal is at least 4x.
  4  data preparation: posts/s of the local path (`ipa_jax.data.prepare.prepare`) and of the
     Beam pipeline (`data_prep.beam_pipeline`) on the DirectRunner, --beam_workers processes,
     into a fresh folder, on the embedded dataset of --size (generated once, cached in
     --workdir); a path that refuses the config's prep settings says why (`PREPARE_PATHS`).
  5  memory by config.fsdp: the bytes of parameters and optimizer state one device holds at
     each --fsdp, as `train.state_shardings` shards them over as many simulated CPU devices as
     the largest; from `jax.eval_shape` of the init alone (no data, nothing trained), so it
     takes configs/full.py's Swin-B as cheaply as the tiny config.
Every measurement runs in a subprocess (`--_worker`, one JSON line back; sections 2-4 share
one), so the script itself never holds an accelerator. The config's data is generated and
prepared as `python -m ipa_jax.main` does it (`train.ensure_data`), cached in --workdir
(default: a temporary folder, removed at the end). --quick (the tests): batch 8, a few steps,
devices 1 and 2, and 2 processes x 1 device (its 1-process match is the 1x2 row).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks.full_model import measure  # noqa: E402 - median after warm-up, shared

RESULT = "SCALING_RESULT "  # a worker's one line of JSON on stdout
SECTIONS = ("1", "2", "3", "4", "5")
GOAL = 4.0  # issue 13: the pipeline delivers at least 4x what the step consumes


def _prepare_local(raw_dir: str, out_dir: str, prep, args) -> dict:
    from ipa_jax.data import prepare  # noqa: PLC0415 - in the worker

    return prepare.prepare(raw_dir, out_dir, prep, progress=False)


def _prepare_beam(raw_dir: str, out_dir: str, prep, args) -> dict:
    from data_prep import beam_pipeline  # noqa: PLC0415 - in the worker, apache_beam

    workers = ([f"--direct_num_workers={args.beam_workers}",
                "--direct_running_mode=multi_processing"] if args.beam_workers else [])
    return beam_pipeline.prepare(raw_dir, out_dir, prep, ["--runner=DirectRunner", *workers])


# Data preparation paths of section 4: (raw_dir, out_dir, prep, args) -> the summary.
PREPARE_PATHS = {"local (data_prep.prepare)": _prepare_local,
                 "Beam (DirectRunner)": _prepare_beam}


# ---------------------------------------------------------------------------- config and data
def config_path(spec: str) -> str:
    """`PATH[:ARG]` with PATH made absolute (relative to the working directory or the repo)."""
    path, colon, arg = spec.partition(":")
    if not os.path.exists(path) and os.path.exists(os.path.join(REPO, path)):
        path = os.path.join(REPO, path)
    return os.path.abspath(path) + colon + arg


def load_config(args):
    """The config of --config with --batch_size, and a prepared_dir in --workdir keyed by the
    data and prep settings (so configs sharing a workdir never share a preparation)."""
    from ipa_jax import config_lib

    path, _, arg = args.config.partition(":")
    c = config_lib.load_config_file(path, arg)
    with c.unlocked():
        c.batch_size = args.batch_size
        if not c.data.prepared_dir:
            key = json.dumps([c.data.raw_dir, c.data.embedded_size, c.data.embedded_seed,
                              c.prep.to_json()])
            c.data.prepared_dir = os.path.join(
                args.workdir, "prepared", hashlib.sha1(key.encode()).hexdigest()[:10])
    return c


def embedded_raw(workdir: str, size: str, seed: int = 0) -> tuple[str, float | None]:
    """The embedded dataset of `size` in `workdir` (train.ensure_data's folder), generated if
    absent; returns (folder, seconds spent generating or None when cached)."""
    from ipa_jax.data import embedded

    raw_dir = os.path.join(workdir, "embedded", f"{size}-seed{seed}")
    if os.path.exists(os.path.join(raw_dir, "dataset.json")):
        return raw_dir, None
    t0 = time.perf_counter()
    embedded.generate(raw_dir, size=size, seed=seed, progress=False)
    return raw_dir, time.perf_counter() - t0


# ---------------------------------------------------------------------------- workers
class StepBench:
    """The training loop's pieces as `train.py` builds them: mesh, task on the prepared data,
    replicated state, the jitted donating step, `to_global`."""

    def __init__(self, config, workdir: str):
        from ipa_jax import optim, sharding, tasks, train
        from ipa_jax.data import prepare

        self.config = config
        _, prepared_dir = train.ensure_data(config, workdir)
        with open(os.path.join(prepared_dir, prepare.SUMMARY)) as f:
            counts = json.load(f)["counts"][config.data.pairs]
        mesh = sharding.make_mesh(fsdp=config.get("fsdp", 1))
        self.task = tasks.TASKS[config.task](config, prepared_dir, counts, mesh)
        self.per_step = getattr(self.task, "examples_per_step", config.batch_size)
        tx, _ = optim.make_optimizer(config, max(1, self.task.num_train_examples // self.per_step))
        frozen = getattr(self.task, "frozen_state", dict)()
        shardings = train.state_shardings(self.task, tx, config, mesh)
        self.state = train.fresh_state(self.task, tx, config.seed, frozen, shardings)
        self.step_fn = train.jit_train_step(self.task, tx, config, mesh, shardings)
        self.to_global = functools.partial(sharding.to_global, mesh)

    def batches(self):
        """A fresh iterator of this process's training batches (the loop's `train_iter`)."""
        return iter(self.task.train_dataset(0))

    @staticmethod
    def host_batch(iterator) -> dict:
        import jax

        return jax.tree.map(np.asarray, next(iterator))

    def images_per_step(self, host_batch: dict) -> int:
        """Images of a global step: the local 'image' batch's [B] or [B, 2] times processes."""
        import jax

        if "image" not in host_batch:
            return self.per_step
        return int(np.prod(host_batch["image"].shape[:-3])) * jax.process_count()

    def step(self, batch):
        self.state, metrics = self.step_fn(self.state, batch)
        return metrics

    def timed_step(self, batch) -> float:
        import jax

        t0 = time.perf_counter()
        jax.block_until_ready(self.step(batch))
        return time.perf_counter() - t0

    def timed_transfer(self, host_batch: dict) -> float:
        import jax

        t0 = time.perf_counter()
        jax.block_until_ready(self.to_global(host_batch))
        return time.perf_counter() - t0

    def loop(self, iterator, steps: int) -> dict:
        """`train.py`'s loop body `steps` times (next, to_global, step; nothing waited for until
        the end): seconds per step in all, waiting for input and transferring."""
        import jax

        waited = transfer = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            host = self.host_batch(iterator)
            t1 = time.perf_counter()
            batch = self.to_global(host)
            t2 = time.perf_counter()
            metrics = self.step(batch)
            waited, transfer = waited + t1 - t, transfer + t2 - t1
        jax.block_until_ready(metrics)
        return {"loop_s": (time.perf_counter() - t0) / steps, "waited_s": waited / steps,
                "transfer_in_loop_s": transfer / steps}


def time_pipeline(bench: StepBench, batches: int, warmup: int) -> float:
    """Mean seconds per batch of the training pipeline alone, after `warmup` batches."""
    iterator = bench.batches()
    for _ in range(warmup):
        bench.host_batch(iterator)
    t0 = time.perf_counter()
    for _ in range(batches):
        bench.host_batch(iterator)
    return (time.perf_counter() - t0) / batches


def _topology(config) -> dict:
    import jax

    return {"platform": jax.devices()[0].platform, "processes": jax.process_count(),
            "devices": jax.device_count(), "local_devices": jax.local_device_count(),
            "model": config.model.name, "crop": config.input.crop_size}


def step_worker(args) -> dict:
    """Section 1: the median step on a device-resident batch of the real pipeline."""
    import jax

    from ipa_jax import config_validation

    config = load_config(args)
    config_validation.validate(config, num_devices=jax.device_count())
    bench = StepBench(config, args.workdir)
    host = bench.host_batch(bench.batches())
    batch = bench.to_global(host)
    compile_s = bench.timed_step(batch)
    return {**_topology(config), "unit": bench.task.unit, "per_step": bench.per_step,
            "images_per_step": bench.images_per_step(host), "compile_s": compile_s,
            "step_s": measure(lambda: bench.timed_step(batch), args.steps, args.warmup)}


def pipeline_worker(args) -> dict:
    """Sections 2 and 3: input, transfer, step and the whole loop, in this one process."""
    import jax

    from ipa_jax import config_validation

    config = load_config(args)
    config_validation.validate(config, num_devices=jax.device_count())
    bench = StepBench(config, args.workdir)
    input_s = time_pipeline(bench, args.input_batches, args.warmup + config.input.prefetch)
    host = bench.host_batch(bench.batches())
    transfer_s = measure(lambda: bench.timed_transfer(host), args.steps, args.warmup)
    batch = bench.to_global(host)
    compile_s = bench.timed_step(batch)
    step_s = measure(lambda: bench.timed_step(batch), args.steps, args.warmup)
    iterator = bench.batches()
    bench.loop(iterator, args.warmup + config.input.prefetch)
    return {**_topology(config), "images_per_step": bench.images_per_step(host),
            "input_s": input_s, "transfer_s": transfer_s, "step_s": step_s,
            "compile_s": compile_s, **bench.loop(iterator, args.steps),
            "prefetch": config.input.prefetch,
            "parallel_calls": config.input.num_parallel_calls}


def prepare_worker(args) -> dict:
    """Section 4: each of `PREPARE_PATHS` on the embedded --size dataset into a fresh folder."""
    from ipa_jax.config_lib import ConfigError  # noqa: PLC0415 - in the worker

    config = load_config(args)
    raw_dir, generate_s = embedded_raw(args.workdir, args.size)
    rows = {}
    for name, prepare in PREPARE_PATHS.items():
        out_dir = tempfile.mkdtemp(prefix="prepare-timing-", dir=args.workdir)
        os.rmdir(out_dir)  # prepare claims a new or empty folder of its own
        t0 = time.perf_counter()
        try:
            summary = prepare(raw_dir, out_dir, config.prep, args)
        except (ImportError, ConfigError) as e:  # no apache_beam; a refused setting
            rows[name] = {"unavailable": str(e).split(";")[0]}
            continue
        seconds = time.perf_counter() - t0
        shutil.rmtree(out_dir)
        kept = summary["num_posts_read"]
        rows[name] = {"posts": kept + sum(summary["drops"]["read"].values()), "kept": kept,
                      "seconds": seconds}
    return {"raw_dir": raw_dir, "generate_s": generate_s, "rows": rows}


def fsdp_memory(config, sizes) -> list[dict]:
    """Section 5: for each config.fsdp of `sizes`, the bytes one device holds of the train
    state's params, opt_state and model_state, as `train.state_shardings` lays them out over
    all devices (`jax.eval_shape` of the init: nothing is computed or allocated). An
    `image_pairs` config; a fused model's f_ret and depth shapes come from its prep settings."""
    import jax
    import jax.numpy as jnp

    from ipa_jax import models, optim, sharding, tasks, train

    aux_shapes = None
    if config.get("fusion") is not None:  # K and F size the fusion's first layers
        d = config.prep.depth
        crop = d.crop if d.mode == "precomputed" else config.input.crop_size
        depth_model = models.get_model(d.backbone, num_classes=0)
        (pooled, _), _ = jax.eval_shape(
            lambda x: depth_model.init_with_output(jax.random.key(0), x, train=False),
            jax.ShapeDtypeStruct((1, crop, crop, 3), jnp.float32))
        aux_shapes = {"f_ret": (config.prep.retrieval.k, 5),
                      "depth": (len(d.intervals), pooled.shape[-1])}
    task = tasks.ImagePairs(config, None, None, None, aux_shapes=aux_shapes)
    tx, _ = optim.make_optimizer(config, steps_per_epoch=1000)
    shapes = train.state_shapes(task, tx)
    rows = []
    for fsdp in sizes:
        shardings = train.state_shardings(task, tx, config, sharding.make_mesh(fsdp=fsdp),
                                          shapes)
        row = {"fsdp": fsdp}
        for part in ("params", "opt_state", "model_state"):
            pairs = list(zip(jax.tree.leaves(getattr(shapes, part)),
                             jax.tree.leaves(getattr(shardings, part)), strict=True))
            row[part] = sum(int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize
                            for x, s in pairs)
            row[f"{part}_arrays"] = len(pairs)
            row[f"{part}_sharded"] = sum(sharding.FSDP in tuple(s.spec) for _, s in pairs)
        rows.append(row)
    return rows


def fsdp_memory_worker(args) -> dict:
    import jax

    config = load_config(args)
    if config.task != "image_pairs":
        return {"skipped": f"task {config.task!r} (only image_pairs configs)"}
    return {"platform": jax.devices()[0].platform, "devices": jax.device_count(),
            "model": config.model.name, "optimizer": config.optimizer.name,
            "min_size": config.get("fsdp_min_size", 2**14),
            "rows": fsdp_memory(config, args.fsdp_sizes)}


WORKERS = {"step": step_worker, "pipeline": pipeline_worker, "prepare": prepare_worker,
           "fsdp_memory": fsdp_memory_worker}


def run_worker(args) -> None:
    from ipa_jax import distributed, runtime

    if args._num_processes > 1:
        distributed.initialize(args._coordinator, args._num_processes, args._process_id)
    runtime.setup()  # TensorFlow (data only) kept off the accelerators
    result = {kind: WORKERS[kind](args) for kind in args._worker.split(",")}
    if args._process_id == 0:
        print(RESULT + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- launching
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(devices: int | None) -> dict:
    """The environment of a worker: `devices` simulated CPU devices, or the host's own (None)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    if devices is not None:
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
        env["JAX_PLATFORMS"] = "cpu"
    return env


def launch(kinds: str, args, *, devices: int | None = None, processes: int = 1) -> dict:
    """Runs the workers `kinds` ("step", "pipeline,prepare": one after the other in one
    process, which saves a start) in `processes` processes; returns process 0's results by
    kind. A worker that fails (or outlives --worker_timeout) stops the benchmark with its log's
    tail."""
    cmd = [sys.executable, os.path.abspath(__file__), f"--_worker={kinds}",
           f"--config={args.config}", f"--batch_size={args.batch_size}", f"--steps={args.steps}",
           f"--warmup={args.warmup}", f"--input_batches={args.input_batches}",
           f"--size={args.size}", f"--workdir={args.workdir}", f"--fsdp={args.fsdp}"]
    if processes > 1:
        cmd += [f"--_coordinator=127.0.0.1:{_free_port()}", f"--_num_processes={processes}"]
    name = f"{kinds.replace(',', '+')}-{processes}x{devices or 'host'}"
    logs = [os.path.join(args.workdir, "logs", f"{name}-{i}.log") for i in range(processes)]
    os.makedirs(os.path.dirname(logs[0]), exist_ok=True)
    procs = []
    with contextlib.ExitStack() as stack:
        for i, log in enumerate(logs):
            out = stack.enter_context(open(log, "w"))
            procs.append(subprocess.Popen(cmd + [f"--_process_id={i}"], cwd=REPO, stdout=out,
                                          stderr=subprocess.STDOUT,
                                          env=worker_env(devices)))
        _wait(procs, logs, args.worker_timeout)
    with open(logs[0]) as f:
        lines = [line for line in f if line.startswith(RESULT)]
    return json.loads(lines[-1][len(RESULT):])


def _wait(procs, logs, timeout: float) -> None:
    """Waits for every process; on a failure or the timeout, ends the others and raises."""
    deadline = time.time() + timeout
    while any(p.poll() is None for p in procs):
        failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
        if failed or time.time() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            break
        time.sleep(0.1)
    for p, log in zip(procs, logs, strict=True):
        if p.returncode != 0:
            with open(log) as f:
                tail = f.read()[-4000:]
            raise SystemExit(f"worker {' '.join(p.args[1:3])} exited {p.returncode} "
                             f"(log {log}):\n{tail}")


# ---------------------------------------------------------------------------- sections
def _rate(images: float, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("inf")


def section_devices(args, config) -> None:
    print(f"\n1. Step time by device count: {args.config_label}, {config.model.name} at "
          f"{config.input.crop_size} px, global batch {args.batch_size} (config.batch_size), "
          f"median of {args.steps} steps after {args.warmup} warm-up, compile excluded; simulated "
          f"CPU devices (JAX_PLATFORMS=cpu, --xla_force_host_platform_device_count), "
          f"{os.cpu_count()} CPU cores")
    print(f"{'procs x devs':14s}{'devices':>8s}{'per device':>14s}{'ms/step':>10s}"
          f"{'images/s':>10s}{'compile s':>11s}")
    step_s = {}
    layouts = [(1, d) for d in args.device_counts] + [args.multiprocess]
    for processes, per_process in layouts:
        r = launch("step", args, devices=per_process, processes=processes)["step"]
        label = f"{processes}x{per_process}" + (" gloo" if processes > 1 else "")
        step_s[processes, r["devices"]] = r["step_s"]
        per_device = f"{r['per_step'] / r['devices']:g} {r['unit']}"
        print(f"{label:14s}{r['devices']:8d}{per_device:>14s}"
              f"{1000 * r['step_s']:10.1f}{_rate(r['images_per_step'], r['step_s']):10.1f}"
              f"{r['compile_s']:11.1f}", flush=True)
    processes, per_process = args.multiprocess
    total = processes * per_process
    if (1, total) in step_s:
        print(f"cross-process cost: {processes}x{per_process} / 1x{total} step time = "
              f"{step_s[processes, total] / step_s[1, total]:.2f}x")
    else:
        print(f"cross-process cost: no 1x{total} row to compare {processes}x{per_process} with")


def section_outside(r: dict, args) -> None:
    a, b, c = r["input_s"], r["transfer_s"], r["step_s"]
    print(f"\n2. Outside the model: {args.config_label}, global batch {args.batch_size} "
          f"({r['images_per_step']} images), 1 process, {r['devices']} {r['platform']} "
          f"device(s), {os.cpu_count()} CPU cores; input.num_parallel_calls "
          f"{r['parallel_calls']}, input.prefetch {r['prefetch']}")
    rows = [(f"(a) input: next(iterator), mean of {args.input_batches}", a),
            (f"(b) host-to-device: to_global, median of {args.steps}", b),
            (f"(c) step on device-resident data, median of {args.steps}", c),
            (f"loop as train.py runs it, mean of {args.steps} steps", r["loop_s"]),
            ("  of which waiting in next(iterator)", r["waited_s"]),
            ("  of which in to_global", r["transfer_in_loop_s"])]
    print(f"{'part':56s}{'ms/step':>10s}")
    for name, seconds in rows:
        print(f"{name:56s}{1000 * seconds:10.2f}")
    print(f"{'outside the model, serial: (a+b)/(a+b+c)':56s}{100 * (a + b) / (a + b + c):9.1f}%")
    outside = max(0.0, 1 - c / r["loop_s"])
    print(f"{'outside the model, in the loop: 1 - c/loop':56s}{100 * outside:9.1f}%")


def section_input(r: dict, args) -> None:
    images = r["images_per_step"]
    delivered, consumed = _rate(images, r["input_s"]), _rate(images, r["step_s"])
    ratio = delivered / consumed
    print(f"\n3. Input pipeline throughput: {args.config_label}, {images} images per batch, "
          f"{args.input_batches} batches after warm-up, no model; the step of section 2 "
          f"({r['devices']} {r['platform']} device(s))")
    print(f"{'':34s}{'images/s':>10s}")
    print(f"{'input pipeline alone':34s}{delivered:10.1f}")
    print(f"{'step consumes (c)':34s}{consumed:10.1f}")
    print(f"pipeline / step = {ratio:.2f}x (goal >= {GOAL:.0f}x: "
          f"{'met' if ratio >= GOAL else 'NOT met'})")


def section_prepare(r: dict, args, config) -> None:
    generated = ("cached" if r["generate_s"] is None
                 else f"generated in {r['generate_s']:.1f} s, not timed")
    print(f"\n4. Data preparation: embedded {args.size!r} dataset ({generated}), prep settings "
          f"of {args.config_label} (store_short_side {config.prep.store_short_side}, retrieval "
          f"{'on' if config.prep.retrieval.enabled else 'off'}, depth "
          f"{'on' if config.prep.depth.enabled else 'off'}), into a fresh folder; posts: rows "
          f"read, kept: after reading")
    print(f"{'path':30s}{'posts':>8s}{'kept':>8s}{'seconds':>10s}{'posts/s':>10s}")
    for name, row in r["rows"].items():
        if "unavailable" in row:
            print(f"{name:30s}  not timed: {row['unavailable']}")
            continue
        print(f"{name:30s}{row['posts']:8d}{row['kept']:8d}{row['seconds']:10.2f}"
              f"{_rate(row['posts'], row['seconds']):10.1f}")


def section_fsdp_memory(r: dict, args) -> None:
    if "skipped" in r:
        print(f"\n5. Parameter and optimizer-state memory by config.fsdp: skipped, {r['skipped']}")
        return
    print(f"\n5. Parameter and optimizer-state memory per device by config.fsdp: "
          f"{args.config_label}, {r['model']}, {r['optimizer']}, fsdp_min_size {r['min_size']}; "
          f"from shapes (jax.eval_shape of the init, {r['devices']} simulated {r['platform']} "
          f"devices), nothing trained; MB = 1e6 bytes")
    print(f"{'fsdp':>6s}{'params MB':>12s}{'opt_state MB':>14s}{'both MB':>10s}"
          f"{'of fsdp=1':>11s}{'arrays sharded':>16s}{'model_state MB':>16s}")
    rows = r["rows"]
    base = next((row for row in rows if row["fsdp"] == 1), None)
    for row in rows:
        both = row["params"] + row["opt_state"]
        ratio = f"{both / (base['params'] + base['opt_state']):.3f}" if base else "-"
        sharded = (f"{row['params_sharded'] + row['opt_state_sharded']} of "
                   f"{row['params_arrays'] + row['opt_state_arrays']}")
        print(f"{row['fsdp']:6d}{row['params'] / 1e6:12.1f}{row['opt_state'] / 1e6:14.1f}"
              f"{both / 1e6:10.1f}{ratio:>11s}{sharded:>16s}{row['model_state'] / 1e6:16.1f}")


# ---------------------------------------------------------------------------- main
def _layout(text: str) -> tuple[int, int]:
    processes, _, devices = text.partition("x")
    return int(processes), int(devices)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/i2pa.py:tiny", help="PATH[:VARIANT]")
    p.add_argument("--batch_size", type=int, default=None,
                   help="global batch (config.batch_size); default 16, --quick 8")
    p.add_argument("--steps", type=int, default=None, help="timed steps; default 10, --quick 3")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps; default 2, --quick 1")
    p.add_argument("--input_batches", type=int, default=None,
                   help="batches timed in sections 2-3; default 40, --quick 6")
    p.add_argument("--devices", default=None, help="section 1; default 1,2,4,8, --quick 1,2")
    p.add_argument("--multiprocess", default=None,
                   help="section 1's PROCESSESxDEVICES row; default 2x2, --quick 2x1")
    p.add_argument("--fsdp", default=None,
                   help="section 5's config.fsdp values; default 1,4,8, --quick 1,2")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--size", default="tiny", help="section 4's embedded dataset size")
    p.add_argument("--beam_workers", type=int, default=None,
                   help="section 4: the DirectRunner's worker processes (0: in this "
                        "process); default 2, --quick 0")
    p.add_argument("--workdir", default=None, help="data cache and logs; default a temp dir")
    p.add_argument("--worker_timeout", type=float, default=1800.0)
    p.add_argument("--quick", action="store_true", help="the smoke test's settings")
    for hidden, kind, default in (("--_worker", str, None), ("--_coordinator", str, None),
                                  ("--_num_processes", int, 1), ("--_process_id", int, 0)):
        p.add_argument(hidden, type=kind, default=default, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = dict(batch_size=(16, 8), steps=(10, 3), warmup=(2, 1), input_batches=(40, 6),
                    devices=("1,2,4,8", "1,2"), multiprocess=("2x2", "2x1"),
                    fsdp=("1,4,8", "1,2"), beam_workers=(2, 0))
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.device_counts = [int(d) for d in args.devices.split(",")]
    args.multiprocess = _layout(args.multiprocess)
    args.fsdp_sizes = [int(f) for f in args.fsdp.split(",")]
    args.config_label, args.config = args.config, config_path(args.config)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; known: {','.join(SECTIONS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._worker:
        return run_worker(args)
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            args.workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="scaling-"))
        args.workdir = os.path.abspath(args.workdir)
        config = load_config(args)
        sections = args.sections.split(",")
        t0 = time.perf_counter()
        if "1" in sections:
            section_devices(args, config)
        kinds = [k for k, wanted in (("pipeline", {"2", "3"} & set(sections)),
                                     ("prepare", "4" in sections)) if wanted]
        results = launch(",".join(kinds), args) if kinds else {}
        if "2" in sections:
            section_outside(results["pipeline"], args)
        if "3" in sections:
            section_input(results["pipeline"], args)
        if "4" in sections:
            section_prepare(results["prepare"], args, config)
        if "5" in sections:
            # As many simulated CPU devices as the largest fsdp: shapes only, nothing trained.
            section_fsdp_memory(launch("fsdp_memory", args, devices=max(args.fsdp_sizes))
                                ["fsdp_memory"], args)
        print(f"\n(benchmark wall time {time.perf_counter() - t0:.0f} s, workdir {args.workdir})")


if __name__ == "__main__":
    main()
