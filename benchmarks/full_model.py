# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Speed of Ji et al.'s full model against backbone-only scorers (prints a table).

    python benchmarks/full_model.py [--backbone swin_base_patch4_window7_224] [--size 224]
                                    [--batch 12] [--precision float32] [--steps 3]
                                    [--rows plain,backbone_only,full,full_on_the_fly]

Rows are `configs/*.py` settings at the paper's sizes (K = 8 retrieved rows, five depth
features from a frozen ResNet-50), each through the library's own task code
(`tasks.ImagePairs`) and training step (`train.train_step`, state donated):
  plain            configs/ratio.py: the backbone with a one-output head (the paper's
                   "backbone only" scorer)
  backbone_only    configs/full.py:variant=backbone_only: the aggregation block over the
                   backbone's tokens alone
  full             configs/full.py: + retrieval rows and precomputed depth features
  full_on_the_fly  configs/full.py with prep.depth.mode=on_the_fly: + the frozen depth backbone
                   on the five masked crops inside the step
  concat           configs/full.py:variant=concat: the concatenation ablation
Per row: a training step on --batch pairs (2 x batch images) and inference on 2 x batch
images, images per second (median over --steps calls after --warmup), and the overhead over
`plain` and over `backbone_only` (issue 11's goal: the aggregation block and the precomputed
branches within 10% of backbone-only). Compile time is excluded and printed. Data loading is
not timed (uint8 batches are on the device).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
ROWS = {"plain": ("ratio.py", ""), "backbone_only": ("full.py", "variant=backbone_only"),
        "full": ("full.py", ""), "full_on_the_fly": ("full.py", ""),
        "concat": ("full.py", "variant=concat")}


def row_config(row: str, args):
    from ipa_jax import config_lib

    filename, arg = ROWS[row]
    c = config_lib.load_config_file(os.path.join(CONFIGS, filename), arg)
    with c.unlocked():
        c.model.name = args.backbone
        c.model.dtype = args.precision
        c.batch_size = args.batch
        c.input.crop_size = args.size
        c.prep.depth.backbone = args.depth_backbone
        c.prep.depth.crop = args.size
        c.prep.depth.mode = "on_the_fly" if row == "full_on_the_fly" else "precomputed"
        if c.get("fusion") is not None and args.fusion_width:
            c.fusion.width = args.fusion_width
    return c


class Row:
    """One row's jitted training step and scorer on random data of the right shapes."""

    def __init__(self, row: str, args):
        import jax
        import jax.numpy as jnp

        from ipa_jax import models, optim, tasks, train

        self.name = row
        c = row_config(row, args)
        k, s, b = args.k, args.size, args.batch
        m = len(c.prep.depth.intervals)
        # F of the depth features, from shapes alone (on the fly the task builds the backbone).
        depth_model = models.get_model(c.prep.depth.backbone, num_classes=0)
        (pooled, _), _ = jax.eval_shape(
            lambda x: depth_model.init_with_output(jax.random.key(0), x, train=False),
            jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32))
        f = pooled.shape[-1]
        task = tasks.ImagePairs(c, None, None, None, aux_shapes={"f_ret": (k, 5), "depth": (m, f)})
        tx, _ = optim.make_optimizer(c, steps_per_epoch=1000)
        params, model_state = task.init(jax.random.key(0))
        self.state = train.TrainState(
            step=jnp.zeros((), jnp.int32), params=params,
            model_state={**model_state, **jax.device_put(task.frozen_state())},
            opt_state=tx.init(params))
        self.num_params = sum(x.size for x in jax.tree.leaves(params))
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (b, 2, s, s, 3), dtype=np.uint8)
        f_ret = rng.random((b, 2, k, 5), dtype=np.float32)
        aux = {"f_ret": f_ret, "depth": rng.random((b, 2, m, f), dtype=np.float32),
               "depth_map": rng.random((b, 2, s, s), dtype=np.float32)}
        self.batch = jax.device_put({"image": images, "likes": rng.integers(
            1, 1000, (b, 2)).astype(np.float32), **aux})
        flat = lambda x: x.reshape(2 * b, *x.shape[2:])  # noqa: E731
        self.eval_inputs = jax.device_put(
            (flat(images), *(flat(aux[key]) for key in task.eval_keys)))
        self.train_fn = jax.jit(functools.partial(train.train_step, task=task, tx=tx,
                                                  rng=jax.random.key(1)), donate_argnums=0)
        self.score_fn = jax.jit(task.score)
        self.images = 2 * b

    def compile(self) -> float:
        t0 = time.perf_counter()
        self.train_fn = self.train_fn.lower(self.state, self.batch).compile()
        self.score_fn = self.score_fn.lower(self.state.params, self.state.model_state,
                                            *self.eval_inputs).compile()
        return time.perf_counter() - t0

    def train_call(self) -> float:
        import jax

        t0 = time.perf_counter()
        self.state, metrics = self.train_fn(self.state, self.batch)
        jax.block_until_ready(metrics)
        return time.perf_counter() - t0

    def infer_call(self) -> float:
        import jax

        t0 = time.perf_counter()
        jax.block_until_ready(self.score_fn(self.state.params, self.state.model_state,
                                            *self.eval_inputs))
        return time.perf_counter() - t0


def measure(call, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    return float(np.median([call() for _ in range(steps)]))


def _overhead(times: dict, row: str, base: str, mode: str) -> str:
    """How much slower `row` is than `base` in `mode`, or "-"."""
    if (base, mode) not in times or base == row:
        return "-"
    return f"{100 * (times[row, mode] / times[base, mode] - 1):+.1f}%"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="swin_base_patch4_window7_224")
    p.add_argument("--depth_backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=12, help="pairs per training step")
    p.add_argument("--k", type=int, default=8, help="retrieved rows per image")
    p.add_argument("--fusion_width", type=int, default=0, help="0: the config's (512)")
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--rows", default="plain,backbone_only,full,full_on_the_fly")
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args(argv)
    rows = args.rows.split(",")
    modes = args.modes.split(",")
    unknown = [r for r in rows if r not in ROWS] + [m for m in modes if m not in ("train",
                                                                                 "infer")]
    if unknown:
        p.error(f"unknown rows or modes {unknown}; rows: {list(ROWS)}, modes: train, infer")

    import jax

    from ipa_jax import runtime

    runtime.setup()
    print(f"{args.backbone} at {args.size} px, batch {args.batch} pairs ({2 * args.batch} "
          f"images), K = {args.k}, depth backbone {args.depth_backbone}, {args.precision}, "
          f"{jax.devices()[0].platform} ({jax.device_count()} device(s), {os.cpu_count()} CPU "
          f"cores); median of {args.steps} calls after {args.warmup}")
    times = {}
    print(f"{'row':18s}{'mode':7s}{'params':>12s}{'img/s':>10s}{'ms/call':>10s}"
          f"{'compile s':>11s}{'vs plain':>10s}{'vs bb-only':>11s}")
    for row in rows:
        r = Row(row, args)
        compile_s = r.compile()
        for mode in modes:
            seconds = measure(r.train_call if mode == "train" else r.infer_call,
                              args.steps, args.warmup)
            times[row, mode] = seconds
            vs = [_overhead(times, row, base, mode) for base in ("plain", "backbone_only")]
            print(f"{row:18s}{mode:7s}{r.num_params:12,d}{r.images / seconds:10.1f}"
                  f"{1000 * seconds:10.0f}{compile_s:11.1f}{vs[0]:>10s}{vs[1]:>11s}", flush=True)
        del r
    for mode in modes:
        if ("full", mode) in times and ("backbone_only", mode) in times:
            ratio = times["full", mode] / times["backbone_only", mode]
            print(f"{mode}: full (aggregation block, precomputed branches) / backbone_only = "
                  f"{ratio:.3f} (goal <= 1.10)")
        if ("full", mode) in times and ("plain", mode) in times:
            print(f"{mode}: full / plain backbone scorer = "
                  f"{times['full', mode] / times['plain', mode]:.3f}")


if __name__ == "__main__":
    main()
