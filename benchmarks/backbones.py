# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Speed of the ipa_jax backbones against the same models in PyTorch eager (prints tables).

    python benchmarks/backbones.py [--models resnet50,swin_tiny_patch4_window7_224]
                                   [--batch 8] [--size 224] [--steps 3]
                                   [--precisions float32,bfloat16] [--ops auto]
                                   [--notorch] [--profile]

Images per second for inference and for a full training step (forward, cross-entropy against
random labels, backward, SGD with momentum) of each model: JAX (one jitted step, state donated)
beside torchvision / timm eager on the same machine, batch and precision, and the ratio
JAX / torch. `bfloat16` is bf16 compute with float32 parameters and accumulation on both sides
(flax `dtype=bfloat16`; `torch.autocast("cpu", torch.bfloat16)`). JAX's lower + compile time is
excluded from the timings and printed separately; each timing is the median over --steps calls
after --warmup calls, JAX and torch calls alternating. `JAX TFLOP/s` counts model FLOPs (XLA's
cost analysis of the forward pass, 3x for a training step); `--peak_tflops` turns it into model
FLOPs utilisation (MFU).
`--ops` times the models on each op set it lists (`config.model.ops`: cpu_tuned = the
custom-gradient matmuls of `ipa_jax.models.layers`, stock = flax's and lax's ops, auto = cpu_tuned
on the CPU backend, stock elsewhere); the `ops` column says which ran. On a GPU or TPU,
`--ops cpu_tuned,stock` measures whether the CPU-tuned ops would pay off there.
`--profile` adds, per model, precision and op set, the training step split into forward / backward /
optimizer on both sides and the top ops by time (XLA thunks from a `jax.profiler` trace, mapped
to their HLO instructions; `torch.profiler` self CPU time).

On a GPU: `python benchmarks/backbones.py --models swin_base_patch4_window7_224 --batch 64
--precisions bfloat16 --modes train --ops stock,cpu_tuned --notorch --peak_tflops 989` (H100
SXM dense bf16).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# XLA reads XLA_FLAGS once, when the CPU client starts (first computation, not import).
DEFAULT_XLA_FLAGS: tuple[str, ...] = ()
MODELS = "resnet50,swin_tiny_patch4_window7_224,swin_base_patch4_window7_224"


# ------------------------------------------------------------------------------------ JAX side
def flax_model(name: str, dtype, ops: str = "auto"):
    """ipa_jax backbone by name on the op set `ops` (resolved: `model.ops`); Swin straight from
    its module if the registry lacks it."""
    from ipa_jax import models

    try:
        return models.get_model(name, dtype=dtype, ops=ops)
    except ValueError:
        from ipa_jax.models import layers, swin

        if name not in swin.VARIANTS:
            raise
        return swin.SwinTransformer(**swin.VARIANTS[name], dtype=dtype,
                                    ops=layers.resolve_ops(ops))


class JaxBench:
    """A model's variables, SGD state and jitted inference / training step functions."""

    def __init__(self, name: str, precision: str, x: np.ndarray, y: np.ndarray,
                 ops: str = "auto"):
        import jax
        import jax.numpy as jnp
        import optax

        self.model = flax_model(name, jnp.bfloat16 if precision == "bfloat16" else jnp.float32,
                                ops)
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        init = jax.jit(lambda key: self.model.init(key, self.x[:1], train=False))
        self.variables = init(jax.random.key(0))
        params = self.variables["params"]
        self.stats = {k: v for k, v in self.variables.items() if k != "params"}
        self.tx = optax.sgd(0.01, momentum=0.9)
        # A copy: the training step donates its state, inference keeps using `variables`.
        state = jax.tree.map(jnp.copy, (params, self.stats))
        self.state = (*state, self.tx.init(state[0]))

    def loss(self, params, stats, x, y):
        """(mean cross-entropy, updated batch statistics) of a training-mode forward pass."""
        import optax

        if stats:
            (logits, _), stats = self.model.apply(
                {"params": params, **stats}, x, train=True, mutable=list(stats))
        else:
            logits, _ = self.model.apply({"params": params}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), stats

    def grad(self, state, x, y):
        import jax

        return jax.value_and_grad(self.loss, has_aux=True)(state[0], state[1], x, y)

    def train_step(self, state, x, y):
        import optax

        (loss, stats), grads = self.grad(state, x, y)
        updates, opt_state = self.tx.update(grads, state[2], state[0])
        return (optax.apply_updates(state[0], updates), stats, opt_state), loss

    def infer(self, variables, x):
        return self.model.apply(variables, x, train=False)[0]

    def compile(self, mode: str):
        """(compiled function, its arguments, compile seconds); mode: infer|train|fwd|fwd_bwd."""
        import jax

        fn, args, donate = {
            "infer": (self.infer, (self.variables, self.x), ()),
            "train": (self.train_step, (self.state, self.x, self.y), (0,)),
            "fwd": (lambda s, x, y: self.loss(s[0], s[1], x, y), (self.state, self.x, self.y), ()),
            "fwd_bwd": (self.grad, (self.state, self.x, self.y), ()),
        }[mode]
        start = time.perf_counter()
        compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
        return compiled, args, time.perf_counter() - start

    def forward_flops(self) -> float:
        """FLOPs of one inference forward pass over the batch (XLA's cost analysis)."""
        cost = self.compile("infer")[0].cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"])

    def prepare(self, mode: str, compiled=None) -> float:
        """Compiles `mode` (or takes `compiled`) for `call`; returns the compile seconds."""
        compile_s = 0.0
        if compiled is None:
            compiled, _, compile_s = self.compile(mode)
        self.compiled = (mode, compiled)
        return compile_s

    def call(self, mode: str) -> float:
        """Seconds of one call of the prepared `mode`; a training step threads the state."""
        import jax

        prepared, compiled = self.compiled
        assert prepared == mode, (prepared, mode)
        args = (self.variables, self.x) if mode == "infer" else (self.state, self.x, self.y)
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        seconds = time.perf_counter() - start
        if mode == "train":
            self.state = out[0]  # the old state was donated
        return seconds

    def run(self, mode: str, steps: int, warmup: int, compiled=None) -> tuple[float, float]:
        """(median seconds per call, compile seconds)."""
        compile_s = self.prepare(mode, compiled)
        times = [self.call(mode) for _ in range(warmup + steps)][warmup:]
        return float(np.median(times)) if times else float("nan"), compile_s


def hlo_instructions(hlo_text: str, batch: int) -> dict[str, str]:
    """{instruction name: short label} for the entry computation of optimised HLO text.

    Label: phase (fwd, bwd = transposed jvp, opt = the rest), library (ynn = YNNPACK fusion,
    xla = XLA's own kernels), the heaviest op inside (conv fwd / bwd-input / bwd-filter, dot,
    reduce, transpose, elementwise) and the layer path. A backward convolution whose output
    batch dimension is not `batch` is a filter gradient (XLA runs it with the input channels
    as its batch).
    """
    bodies, current = {}, None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{\s*$", line)
        if head:
            current = head.group(1)
            bodies[current] = []
        elif current is not None:
            bodies[current].append(line)
    entry = re.search(r"^ENTRY %([\w.\-]+)", hlo_text, re.M).group(1)
    labels = {}
    for line in bodies[entry]:
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*? ([\w\-]+)\(", line)
        if not m:
            continue
        name, opcode = m.groups()
        lib = "ynn" if '"__ynn_fusion"' in line else "xla"
        callee = re.search(r"calls=%([\w.\-]+)", line)
        body = "\n".join(bodies.get(callee.group(1), [])) if opcode == "fusion" and callee else line
        op = next((o for o in ("convolution", "dot", "reduce-window", "select-and-scatter",
                               "reduce", "transpose") if f" {o}(" in body), None)
        op = op or ("elementwise" if opcode == "fusion" else opcode)
        # Library fusions may carry no metadata on the call: take the fused body's.
        meta = re.search(r'op_name="([^"]*)"', line) or re.search(r'op_name="([^"]*)"', body)
        path = meta.group(1) if meta else ""
        phase = "bwd" if "transpose(" in path else "fwd" if "jvp(" in path else "opt"
        if op == "convolution":
            conv = re.search(r"= \w+\[([\d,]*)\]\S* convolution\(.*dim_labels=\w+->(\w+)", body)
            out_batch = int(conv.group(1).split(",")[conv.group(2).index("b")]) if conv else batch
            op = "conv " + ("fwd" if phase == "fwd" else "bwd-input" if out_batch == batch
                            else "bwd-filter")
            phase = "bwd" if op != "conv fwd" else phase
        # Layer path without jit/jvp/transpose wrappers and with block indices folded.
        path = "/".join(p for p in path.split("/")
                        if p and not re.match(r"(jit|jvp|transpose)\(", p))
        path = re.sub(r"_\d+(?=/|$)", "_*", path)
        labels[name] = f"{phase:<4}{lib:<4}{op:<16}{path}"
    return labels


def xla_op_times(compiled, args, calls: int) -> dict[str, tuple[float, int]]:
    """{HLO instruction: (seconds, count)} summed over `calls` traced calls (state threaded)."""
    import jax
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        for _ in range(calls):
            out = compiled(*args)
            jax.block_until_ready(out)
            args = (out[0], *args[1:])
        jax.profiler.stop_trace()
        trace = ProfileData.from_file(glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)[0])
    times = collections.defaultdict(lambda: [0.0, 0])
    for plane in trace.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats and not event.name.startswith("end: "):
                    times[stats["hlo_op"]][0] += event.duration_ns * 1e-9
                    times[stats["hlo_op"]][1] += 1
    return {k: (v[0], v[1]) for k, v in times.items()}


# ---------------------------------------------------------------------------------- torch side
class TorchBench:
    """torchvision / timm model with SGD momentum; eager, all cores, NCHW."""

    def __init__(self, name: str, precision: str, x: np.ndarray, y: np.ndarray):
        import torch

        torch.set_num_threads(os.cpu_count())
        if name.startswith("resnet"):
            import torchvision

            self.model = getattr(torchvision.models, name)()
        else:
            import timm

            self.model = timm.create_model(name, img_size=x.shape[1])
        self.torch = torch
        self.x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        self.y = torch.from_numpy(y.astype(np.int64))
        self.bf16 = precision == "bfloat16"
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def _autocast(self):
        return self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.bf16)

    def call(self, mode: str) -> None:
        """One call of infer | train | fwd (training-mode loss) | fwd_bwd."""
        torch = self.torch
        if mode == "infer":
            self.model.eval()
            with torch.inference_mode(), self._autocast():
                self.model(self.x)
            return
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        if mode != "fwd":
            loss.backward()
        if mode == "train":
            self.opt.step()

    def timed_call(self, mode: str) -> float:
        start = time.perf_counter()
        self.call(mode)
        return time.perf_counter() - start

    def run(self, mode: str, steps: int, warmup: int) -> float:
        times = [self.timed_call(mode) for _ in range(warmup + steps)][warmup:]
        return float(np.median(times)) if times else float("nan")

    def op_times(self, calls: int) -> dict[str, tuple[float, int]]:
        """{aten op: (self CPU seconds, count)} over `calls` training steps."""
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                self.call("train")
        return {e.key: (e.self_cpu_time_total * 1e-6, e.count) for e in prof.key_averages()}


# ----------------------------------------------------------------------------------- reporting
def print_top(title: str, times: dict[str, tuple[float, int]], calls: int, top: int) -> None:
    """Top entries by time per call, with their share of the summed time."""
    total = sum(t for t, _ in times.values()) or 1.0
    print(f"  {title}: summed {1e3 * total / calls:.0f} ms per step")
    for key, (secs, count) in sorted(times.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"    {1e3 * secs / calls:8.1f} ms {100 * secs / total:5.1f}% "
              f"{count // calls:4d}x  {key}")


def group(times: dict[str, tuple[float, int]], key) -> dict[str, tuple[float, int]]:
    out = collections.defaultdict(lambda: [0.0, 0])
    for name, (secs, count) in times.items():
        out[key(name)][0] += secs
        out[key(name)][1] += count
    return {k: (v[0], v[1]) for k, v in out.items()}


def profile(name: str, precision: str, ops: str, x, y, args) -> None:
    """Forward / backward / optimizer split and the top ops of one training step, both sides."""
    print(f"\nprofile {name} {precision} ops {ops} batch {args.batch}: training step split, top "
          f"ops (ms per step; XLA thunks may overlap, so their sum can exceed the wall time)")
    bench = JaxBench(name, precision, x, y, ops)
    jax_s = {mode: bench.run(mode, args.steps, args.warmup)[0]
             for mode in ("fwd", "fwd_bwd", "train")}
    compiled, _, _ = bench.compile("train")
    bench.run("train", 0, 1, compiled)  # the first call after compiling is not traced
    labels = hlo_instructions(compiled.as_text(), args.batch)
    calls = max(1, args.steps)
    times = xla_op_times(compiled, (bench.state, bench.x, bench.y), calls)
    times = group(times, lambda k: labels.get(k, f"?   ?   {k}"))
    sides = [("JAX", jax_s)]
    if args.torch:
        tb = TorchBench(name, precision, x, y)
        sides.append(("torch", {mode: tb.run(mode, args.steps, args.warmup)
                                for mode in ("fwd", "fwd_bwd", "train")}))
    for side, secs in sides:
        f, fb, step = secs["fwd"], secs["fwd_bwd"], secs["train"]
        print(f"  {side:<6} forward {1e3 * f:7.0f} ms  backward {1e3 * (fb - f):7.0f} ms  "
              f"optimizer {1e3 * (step - fb):6.0f} ms  step {1e3 * step:7.0f} ms")
    print_top("JAX by op class (phase, library, op)", group(times, lambda k: k[:24].rstrip()),
              calls, 12)
    print_top("JAX top instructions (block indices folded)", times, calls, args.top)
    if args.torch:
        tb.run("train", 0, 1)
        print_top("torch top ops (self CPU)", tb.op_times(calls), calls, args.top)


def print_rows(bench: JaxBench, tb: TorchBench | None, name: str, precision: str, args) -> None:
    """One row per mode: JAX (and torch, calls alternating) images per second, compile time,
    model TFLOP/s (and MFU)."""
    # Model FLOPs: the forward pass's, and 3x that for a training step (forward, input and
    # weight gradients), the usual convention for MFU.
    forward_flops = bench.forward_flops()
    for mode in args.modes.split(","):
        # JAX and torch calls alternate, so that both sides see the same machine load.
        compile_s = bench.prepare(mode)
        times = [(bench.call(mode), tb.timed_call(mode) if tb else np.nan)
                 for _ in range(args.warmup + args.steps)][args.warmup:]
        jax_s, torch_s = np.median(np.asarray(times), axis=0)
        row = f"{name:<30}{mode:<7}{precision:<10}{bench.model.ops:<10}{args.batch / jax_s:>10.2f}"
        if tb is not None:
            row += f"{args.batch / torch_s:>12.2f}{torch_s / jax_s:>9.2f}x"
        else:
            row += f"{'-':>12}{'-':>10}"
        tflops = forward_flops * (3 if mode == "train" else 1) / jax_s / 1e12
        row += f"{compile_s:>10.1f}{tflops:>12.3f}"
        if args.peak_tflops:
            row += f"{100 * tflops / args.peak_tflops:>6.1f}%"
        print(row, flush=True)


def op_sets(arg: str) -> list[str]:
    """The distinct op sets `--ops` names, "auto" resolved for this platform."""
    from ipa_jax.models import layers

    return list(dict.fromkeys(layers.resolve_ops(ops) for ops in arg.split(",")))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS, help="comma-separated ipa_jax / timm names")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3, help="timed calls; the median is kept")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--modes", default="infer,train")
    parser.add_argument("--ops", default="auto",
                        help="comma-separated op sets (config.model.ops): auto, cpu_tuned, stock")
    parser.add_argument("--torch", action="store_true", default=True,
                        help="time torchvision / timm too (default)")
    parser.add_argument("--notorch", dest="torch", action="store_false", help="JAX rows only")
    parser.add_argument("--profile", action="store_true", help="also profile the train steps")
    parser.add_argument("--peak_tflops", type=float, default=0.0,
                        help="the device's peak TFLOP/s at this precision: adds an MFU column "
                             "(e.g. 989 for an H100 SXM in bf16, 495 in tf32)")
    parser.add_argument("--top", type=int, default=10, help="ops listed per profile")
    parser.add_argument("--xla_flags", default=" ".join(DEFAULT_XLA_FLAGS),
                        help="added to XLA_FLAGS before JAX starts")
    args = parser.parse_args(argv)
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
    import jax

    versions = f"jax {jax.__version__}"
    if args.torch:
        import torch

        torch.set_num_threads(os.cpu_count())
        versions += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    print(f"backbones: batch {args.batch}, {args.size} px, median of {args.steps} calls after "
          f"{args.warmup} warm-up, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"{versions}\nXLA_FLAGS={os.environ['XLA_FLAGS'] or '(none)'}\nbackend "
          f"{jax.default_backend()}: --ops {args.ops} runs {','.join(op_sets(args.ops))}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32)
    y = rng.integers(1000, size=args.batch).astype(np.int32)
    header = (f"{'model':<30}{'mode':<7}{'precision':<10}{'ops':<10}{'JAX img/s':>10}"
              f"{'torch img/s':>12}{'JAX/torch':>10}{'compile s':>10}{'JAX TFLOP/s':>12}"
              + (f"{'MFU':>7}" if args.peak_tflops else ""))
    print(header + "\n" + "-" * len(header))
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            tb = TorchBench(name, precision, x, y) if args.torch else None
            for ops in op_sets(args.ops):
                print_rows(JaxBench(name, precision, x, y, ops), tb, name, precision, args)
            del tb
    if args.profile:
        for name in args.models.split(","):
            for precision in args.precisions.split(","):
                for ops in op_sets(args.ops):
                    profile(name, precision, ops, x, y, args)
    print(f"\nload after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
