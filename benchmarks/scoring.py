# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""What scoring costs on this CPU: I2PA's ResNet-50 and the full model, against I2PA's 450 ms.

    python benchmarks/scoring.py [--rows i2pa,fusion,draft,retrieval] [--batch 32]
                                 [--steps 3] [--size 224]

Ding et al. report I2PA's ResNet-50 at "450 ms per image on CPU" (SPEC); this prints images
per second and ms per image of the library's own scoring functions (`tasks.ImagePairs.score`
built from `configs/*.py` at the paper's sizes, random weights: speed does not depend on
them), at --batch images and for a single image (batch 1):
  i2pa       configs/i2pa.py: ResNet-50 with a one-output head (I2PA's scorer).
  fusion     configs/full.py: Swin-B + the aggregation block over K = 8 retrieved f_ret rows and
             the five depth features, precomputed (the fusion model alone).
  draft      what scoring a new draft costs: configs/full.py with prep.depth.mode=on_the_fly,
             i.e. Swin-B + the five depth-masked images through the frozen ResNet-50
             (`depth.depth_features`, as `tasks.ImagePairs` runs it) + the aggregation block.
  retrieval  `retrieval.retrieve.retrieve` of K = 8 rows for one query and for --batch queries
             against one creator's bank of --bank posts with --dim-d background and semantic
             embeddings, half of the posts showing a person (exact search, the path of a bank
             this size), on the host, as `ipa_jax.history` calls it: f_ret of the drafts only
             (`queries=`); the bank's local popularity is computed once per call.
Each timing is the median over --steps calls after --warmup calls, `jax.block_until_ready`
on the scores, float32, inputs already on the device; compile time (lower + compile) is
excluded and printed. Not timed: the depth map annotator a draft also needs (Depth Anything V2
Small via transformers: 455 ms per image on this CPU, the README's annotator table), nor the
annotators behind the draft's own retrieval inputs (embeddings, keypoints), nor decoding files.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
ROWS = ("i2pa", "fusion", "draft", "retrieval")
I2PA_MS = 450.0  # Ding et al.: "450 ms per image on CPU" (ResNet-50)
DEPTH_ANNOTATOR_MS = 455.0  # README annotator table: Depth Anything V2 Small, transformers


def row_config(row: str, args):
    """`configs/i2pa.py` or `configs/full.py` at --size, float32, with the benchmark's models."""
    from ipa_jax import config_lib

    c = config_lib.load_config_file(os.path.join(CONFIGS, "i2pa.py" if row == "i2pa"
                                                 else "full.py"))
    with c.unlocked():
        c.model.name = args.i2pa_backbone if row == "i2pa" else args.backbone
        c.model.dtype = "float32"
        c.input.crop_size = args.size
        c.input.resize_short_side = max(c.input.resize_short_side, args.size)
        if row != "i2pa":
            c.prep.depth.backbone = args.depth_backbone
            c.prep.depth.crop = args.size
            c.prep.depth.mode = "on_the_fly" if row == "draft" else "precomputed"
            if args.fusion_width:
                c.fusion.width = args.fusion_width
    return c


class ModelRow:
    """A row's task (`tasks.ImagePairs`), random variables and jitted `score`, per batch size."""

    def __init__(self, row: str, args):
        import jax
        import jax.numpy as jnp

        from ipa_jax import models, tasks

        self.name, self.args = row, args
        c = row_config(row, args)
        self.m = len(c.prep.depth.intervals)
        # F of the precomputed depth features, from shapes alone.
        depth_model = models.get_model(c.prep.depth.backbone, num_classes=0)
        (pooled, _), _ = jax.eval_shape(
            lambda x: depth_model.init_with_output(jax.random.key(0), x, train=False),
            jax.ShapeDtypeStruct((1, args.size, args.size, 3), jnp.float32))
        self.f = pooled.shape[-1]
        self.task = tasks.ImagePairs(c, None, {}, None,
                                     aux_shapes={"f_ret": (args.k, 5), "depth": (self.m, self.f)})
        frozen = jax.device_put(self.task.frozen_state())  # built (and jitted) outside init
        params, model_state = jax.jit(self.task.init)(jax.random.key(0))
        self.params = params
        self.model_state = {**model_state, **frozen}
        self.num_params = sum(x.size for x in jax.tree.leaves(params))

    def inputs(self, n: int) -> tuple:
        """Device-resident (images, *eval_keys) for n images, as evaluation feeds them."""
        import jax

        rng = np.random.default_rng(n)
        s, k = self.args.size, self.args.k
        aux = {"f_ret": rng.random((n, k, 5), dtype=np.float32),
               "depth": rng.random((n, self.m, self.f), dtype=np.float32),
               "depth_map": rng.random((n, s, s), dtype=np.float32)}
        images = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
        return jax.device_put((images, *(aux[key] for key in self.task.eval_keys)))

    def compile(self, n: int):
        """(a timed call: seconds to score n images, compile seconds)."""
        import jax

        inputs = self.inputs(n)
        t0 = time.perf_counter()
        fn = jax.jit(self.task.score).lower(self.params, self.model_state, *inputs).compile()
        compile_s = time.perf_counter() - t0

        def call() -> float:
            t0 = time.perf_counter()
            jax.block_until_ready(fn(self.params, self.model_state, *inputs))
            return time.perf_counter() - t0

        return call, compile_s


def synthetic_bank(num_bank: int, num_queries: int, dim: int, seed: int = 0) -> dict:
    """`retrieve` arguments: one creator's bank of `num_bank` posts over a year (half of them
    with a person), then `num_queries` new drafts (not in the bank); non-negative embeddings,
    as backbone features pooled after a ReLU are."""
    rng = np.random.default_rng(seed)
    n = num_bank + num_queries
    day = 86400.0

    def person():
        kp = np.zeros((17, 3), np.float32)
        kp[:, :2] = rng.uniform(0.3, 0.7, (17, 2)) + rng.uniform(-0.2, 0.2, 2)
        kp[:, 2] = 2.0
        return kp

    return dict(
        post_ids=np.array([f"p{i}" for i in range(n)]), users=np.array(["creator"] * n),
        likes=rng.integers(10, 10_000, n).astype(np.float64),
        timestamps=np.concatenate([np.sort(rng.uniform(0, 365 * day, num_bank)),
                                   np.full(num_queries, 366 * day)]),
        group_ids=np.array([f"g{i}" for i in range(n)]),
        in_bank=np.arange(n) < num_bank,
        background=np.maximum(rng.standard_normal((n, dim), dtype=np.float32), 0),
        semantic=np.maximum(rng.standard_normal((n, dim), dtype=np.float32), 0),
        keypoints=[[person()] if rng.random() < 0.5 else [] for _ in range(n)])


def retrieval_call(args, num_queries: int):
    """A timed call: `retrieve` for `num_queries` drafts against the synthetic bank."""
    from ipa_jax.retrieval import retrieve

    config = retrieve.RetrievalConfig(k=args.k)
    bank = synthetic_bank(args.bank, num_queries, args.dim)

    def call() -> float:
        t0 = time.perf_counter()
        retrieve.retrieve(**bank, config=config, queries=~bank["in_bank"])
        return time.perf_counter() - t0

    return call


def measure(call, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    return float(np.median([call() for _ in range(steps)]))


def _line(row: str, n: int, seconds: float, per: int, compile_s: float | None,
          params: int | None) -> str:
    """One table row: `per` images (or queries) in `seconds`."""
    ms = 1000 * seconds / per
    return (f"{row:11s}{n:>7d}{(f'{params:,d}' if params else '-'):>13s}{per / seconds:10.2f}"
            f"{ms:10.1f}{(f'{compile_s:.1f}' if compile_s is not None else '-'):>11s}"
            f"{ms / I2PA_MS:12.3f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"any of {','.join(ROWS)}")
    p.add_argument("--batch", type=int, default=32, help="images (queries) of the batch rows")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--size", type=int, default=224, help="input side, pixels")
    p.add_argument("--k", type=int, default=8, help="retrieved rows per image")
    p.add_argument("--bank", type=int, default=500, help="posts in the creator's bank")
    p.add_argument("--dim", type=int, default=2048, help="embedding size of the bank")
    p.add_argument("--i2pa_backbone", default="resnet50")
    p.add_argument("--backbone", default="swin_base_patch4_window7_224")
    p.add_argument("--depth_backbone", default="resnet50")
    p.add_argument("--fusion_width", type=int, default=0, help="0: the config's (512)")
    args = p.parse_args(argv)
    rows = args.rows.split(",")
    if [r for r in rows if r not in ROWS] or min(args.batch, args.steps) < 1:
        p.error(f"--rows must be among {list(ROWS)}; --batch and --steps >= 1")

    import jax

    from ipa_jax import runtime

    runtime.setup()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"Scoring at {args.size} px, float32, {jax.devices()[0].platform} "
          f"({jax.device_count()} device(s), {os.cpu_count()} CPU cores, load average {load}); "
          f"median of {args.steps} calls after {args.warmup}; random weights")
    print(f"{'row':11s}{'batch':>7s}{'params':>13s}{'img/s':>10s}{'ms/img':>10s}"
          f"{'compile s':>11s}{'vs 450 ms':>12s}")
    single = {}  # row -> ms for one image (query)
    for row in rows:
        if row == "retrieval":
            for n in (1, args.batch):
                seconds = measure(retrieval_call(args, n), args.steps, args.warmup)
                if n == 1:
                    single[row] = 1000 * seconds
                print(_line(row, n, seconds, n, None, None), flush=True)
            continue
        model = ModelRow(row, args)
        for n in (args.batch, 1):
            call, compile_s = model.compile(n)
            seconds = measure(call, args.steps, args.warmup)
            if n == 1:
                single[row] = 1000 * seconds
            print(_line(row, n, seconds, n, compile_s, model.num_params), flush=True)
            del call  # its executable and inputs
        del model
    print(f"vs 450 ms: ms per image over I2PA's {I2PA_MS:.0f} ms per image on CPU (ResNet-50, "
          "Ding et al.; their CPU, not this one); below 1 is faster. params: trained ones (the "
          "draft's frozen ResNet-50 is not counted). retrieval: queries/s and ms per query "
          f"against a bank of {args.bank} posts.")
    if "draft" in single:
        total = single["draft"] + single.get("retrieval", 0.0)
        parts = "draft + retrieval of 1 query" if "retrieval" in single else "draft"
        with_map = total + DEPTH_ANNOTATOR_MS
        print(f"one new draft alone: {parts} = {total:.0f} ms ({total / I2PA_MS:.2f}x 450 ms); "
              f"with its depth map (+{DEPTH_ANNOTATOR_MS:.0f} ms, not timed here): "
              f"{with_map:.0f} ms ({with_map / I2PA_MS:.2f}x)")
    print("Not timed: the depth map annotator (Depth Anything V2 Small via transformers, 455 "
          "ms/image on this CPU: README annotator table), the annotators behind a draft's "
          "retrieval inputs (embeddings, keypoints), file decoding.")


if __name__ == "__main__":
    main()
