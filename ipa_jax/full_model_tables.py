# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Ji et al. 2023, Tables 1 and 2, on one dataset: one command, every variant, several seeds.

  python -m ipa_jax.full_model_tables --workdir=workdirs/tables            # embedded demo
  python -m ipa_jax.full_model_tables --workdir=workdirs/tables_top3000 --size= \
      --set=data.raw_dir=/data/instagram --set=prep.depth.init_from=ckpt/resnet50 ... \
      --row_set=i2pa:init_from=ckpt/resnet50

Rows (`configs/full.py` variants, and `configs/i2pa.py` for Ding et al.):
  i2pa           I2PA's Siamese BCE on the PDIPs of the same preparation, tested on the groups
  log_likes      the full model trained with the per-image log-likes MSE
  backbone_only  the aggregation block over the backbone's tokens alone
  retrieval      + the retrieval branch
  full           + the 3D-aware branch (the paper's model)
  concat         the concatenation ablation with both branches
Every run trains with `ipa_jax.main`'s loop in `<workdir>/runs/<row>-seed<s>` (a finished run is
read back, an interrupted one resumes) on one shared preparation, then is tested at its best
validation checkpoint on the groups' test split. Cells are the mean ± standard deviation
(ddof=1) over seeds; the oracle (planted noise-free popularity, embedded data only) and the
retrieval-only scorer need no training. A comparison A - B is "beyond the spread" when the
difference of the means exceeds twice its standard error, sqrt(s_A^2 / n + s_B^2 / n).
Written to `<workdir>/tables.md`, `tables.csv` (one line per row and metric, with every seed's
value) and `table2.png` (pairwise accuracy with ± 1 std error bars).
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
import platform
import time

import jax
import ml_collections
import numpy as np
from absl import flags
from PIL import Image, ImageDraw, ImageFont

from ipa_jax import cli, config_lib, config_validation, runtime, train

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# row -> (config file, variant, label)
ROWS = {
    "i2pa": ("i2pa.py", "", "I2PA (Ding et al.), BCE on PDIPs"),
    "log_likes": ("full.py", "variant=log_likes", "log-likes regression loss"),
    "backbone_only": ("full.py", "variant=backbone_only", "backbone only"),
    "retrieval": ("full.py", "variant=retrieval", "+ retrieval"),
    "full": ("full.py", "variant=full", "+ retrieval + 3D (full)"),
    "concat": ("full.py", "variant=concat", "concatenation fusion"),
}
TABLE1 = ("i2pa", "log_likes", "backbone_only", "full")
TABLE2 = ("backbone_only", "retrieval", "full", "concat", "log_likes")
# What the paper reports on Top3000's test split (SPEC 2): pairwise accuracy in %.
PAPER_ACCURACY = {"i2pa": 72.73, "log_likes": 68.73, "backbone_only": 78.64,
                  "retrieval": 79.12, "full": 79.48, "concat": 68.97}
METRICS = ("pairwise_accuracy", "plcc", "srcc", "ratio_mse")
HIGHER_IS_BETTER = {"pairwise_accuracy": True, "plcc": True, "srcc": True, "ratio_mse": False}
# (A, B, question): does A beat B?
COMPARISONS = (("full", "backbone_only", "full beats backbone only"),
               ("retrieval", "backbone_only", "retrieval adds over backbone only"),
               ("full", "concat", "aggregation beats concatenation"),
               ("full", "log_likes", "the ratio loss beats log-likes"))


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs (so the module imports beside other
    commands that define `--workdir`, e.g. in one test process)."""
    flags.DEFINE_string("workdir", None, "Runs go to <workdir>/runs/<row>-seed<seed>.")
    flags.DEFINE_string("size", "demo", "The configs' variant: demo (the embedded demo dataset), "
                        "tiny (seconds, for tests) or '' (the paper's settings; set data.raw_dir).")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "config.seed of each repeat.")
    flags.DEFINE_list("rows", list(ROWS), f"Which rows to run, of {list(ROWS)}.")
    flags.DEFINE_multi_string("set", [], "FIELD=VALUE applied to every run's config, e.g. "
                              "--set=data.raw_dir=/data/ig --set=num_epochs=2.")
    flags.DEFINE_multi_string("row_set", [], "ROW:FIELD=VALUE applied to one row's runs after "
                              "--set, e.g. --row_set=i2pa:init_from=ckpt/resnet50.")
    flags.mark_flags_as_required(["workdir"])
    cli.require_nonempty("workdir", "the directory for the runs and the tables")


def load_config(filename: str, arg: str, configs_dir: str = CONFIGS_DIR):
    """`get_config(arg)` of `<configs_dir>/<filename>`, as `--config=FILE:ARG` loads it."""
    return config_lib.load_config_file(os.path.join(configs_dir, filename), arg)


def apply_overrides(c: ml_collections.ConfigDict, overrides) -> None:
    """Sets `FIELD=VALUE` pairs; VALUE is a Python literal, else a string."""
    for item in overrides:
        field, eq, text = item.partition("=")
        if not eq or not field:
            raise config_lib.ConfigError(f"--set={item!r} must be FIELD=VALUE, e.g. "
                                         "--set=num_epochs=2.")
        *parents, leaf = field.split(".")
        node = c
        for name in parents:
            node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise config_lib.ConfigError(f"--set={item!r}: config has no field {field!r}.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        old = node[leaf]
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(old, tuple) and isinstance(value, list):
            value = tuple(value)
        if old is not None and type(value) is not type(old):
            raise config_lib.ConfigError(f"--set={item!r}: {field} is a {type(old).__name__}, "
                                         f"not a {type(value).__name__}.")
        node[leaf] = value


def split_row_overrides(row_overrides) -> dict[str, list[str]]:
    """`ROW:FIELD=VALUE` items -> {row: [FIELD=VALUE, ...]}."""
    out = {}
    for item in row_overrides:
        row, colon, rest = item.partition(":")
        if not colon or row not in ROWS:
            raise config_lib.ConfigError(f"--row_set={item!r} must be ROW:FIELD=VALUE with ROW "
                                         f"one of {list(ROWS)}.")
        out.setdefault(row, []).append(rest)
    return out


def run_config(row: str, size: str, seed: int, overrides, prep, raw_dir: str,
               prepared_dir: str, row_overrides=()) -> ml_collections.ConfigDict:
    """The config of one run: its row's config, the seed, the shared data and preparation."""
    filename, variant, _ = ROWS[row]
    c = load_config(filename, ",".join(filter(None, (variant, size))))
    apply_overrides(c, overrides)
    apply_overrides(c, row_overrides)
    with c.unlocked():
        c.seed = seed
        c.data.raw_dir, c.data.prepared_dir = raw_dir, prepared_dir
        c.prep = ml_collections.ConfigDict(prep.to_dict())  # one preparation for every row
        if c.data.pairs != "groups":  # I2PA trains on PDIPs, is tested on the groups too
            c.data.also_test_on = ("groups",)
    return c


# The scorers that need no training, the same in every run: (results key, label).
REFERENCES = (("test_oracle", "oracle (planted, noise-free)"),
              ("test_retrieval_only", "retrieval only (no training)"))


def on_groups(results: dict, key: str = "test") -> dict | None:
    """A run's `key` result (test, test_oracle, test_retrieval_only) on the groups' test split:
    a groups run's own, or, for I2PA (trained and tested on PDIPs), the one `also_test_on`
    added as `<key>_on_groups`."""
    return results.get(f"{key}_on_groups", results.get(key))


def references(runs: dict) -> dict:
    """label -> metrics of each `REFERENCES` scorer on the groups' test split, from any run
    that has it (absent: e.g. no oracle on real data)."""
    fixed = {}
    for key, label in REFERENCES:
        found = [r for r in (on_groups(run, key) for run in runs.values()) if r is not None]
        if found:
            fixed[label] = {m: found[0][m] for m in METRICS}
    return fixed


def summarize(values) -> dict:
    """Mean, standard deviation (ddof=1; 0 for one value) and the values."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "n": int(v.size), "values": [float(x) for x in v]}


def compare(a: dict, b: dict, higher_is_better: bool = True) -> dict:
    """A - B from two `summarize` results: difference of means, its standard error and
    whether A is better beyond the seed-to-seed spread (by more than 2 standard errors)."""
    diff = a["mean"] - b["mean"]
    se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
    better = diff if higher_is_better else -diff
    return {"difference": diff, "standard_error": se, "beyond_spread": better > 2 * se,
            "better": better > 0}


def _cell(s: dict | None) -> str:
    if s is None:
        return "-"
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] > 1 else f"{s['mean']:.3f}"


def tables_markdown(summary: dict, fixed: dict, header: str = "") -> str:
    """Tables 1 and 2 and the comparisons as markdown.

    summary: row -> metric -> `summarize` result; fixed: label -> metric -> value (the oracle,
    the retrieval-only scorer: no training, no spread).
    """
    cols = "| row | " + " | ".join(METRICS) + " | paper accuracy (Top3000) |"
    rule = "| --- " * (len(METRICS) + 2) + "|"
    lines = [header] if header else []
    for title, rows in (("Table 1", TABLE1), ("Table 2 (ablations)", TABLE2)):
        present = [r for r in rows if r in summary]
        if not present:
            continue
        lines += ["", f"{title}: test split of the groups, mean ± std over seeds", "", cols, rule]
        for r in present:
            cells = " | ".join(_cell(summary[r].get(m)) for m in METRICS)
            lines.append(f"| {ROWS[r][2]} | {cells} | {PAPER_ACCURACY[r]:.2f}% |")
        for label, values in fixed.items():
            cells = " | ".join(f"{values[m]:.3f}" for m in METRICS)
            lines.append(f"| {label} | {cells} | |")
    done = [(a, b, q) for a, b, q in COMPARISONS if a in summary and b in summary]
    if done:
        lines += ["", "Comparisons: difference of the means ± its standard error; **yes** when "
                      "better by more than 2 standard errors", "",
                  "| question | " + " | ".join(METRICS) + " |", "| --- " * (len(METRICS) + 1)
                  + "|"]
        for a, b, question in done:
            cells = []
            for m in METRICS:
                c = compare(summary[a][m], summary[b][m], HIGHER_IS_BETTER[m])
                verdict = "**yes**" if c["beyond_spread"] else "no"
                cells.append(f"{c['difference']:+.3f} ± {c['standard_error']:.3f} {verdict}")
            lines.append(f"| {question} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: str, summary: dict, fixed: dict) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "label", "metric", "mean", "std", "n", "values"])
        for r, by_metric in summary.items():
            for m in METRICS:
                s = by_metric[m]
                w.writerow([r, ROWS[r][2], m, f"{s['mean']:.6f}", f"{s['std']:.6f}", s["n"],
                            " ".join(f"{v:.6f}" for v in s["values"])])
        for label, values in fixed.items():
            for m in METRICS:
                w.writerow([label, label, m, f"{values[m]:.6f}", "", 1, f"{values[m]:.6f}"])


def plot_table2(path: str, summary: dict, fixed: dict, metric: str = "pairwise_accuracy",
                size: tuple[int, int] = (760, 420)) -> None:
    """A bar chart of Table 2's rows (mean, error bars ± 1 std) and the no-training references
    as dashed lines; PIL only, no plotting library."""
    rows = [r for r in TABLE2 if r in summary]
    if not rows:
        return
    width, height = size
    left, right, top, bottom = 70, 20, 40, 90
    means = np.array([summary[r][metric]["mean"] for r in rows])
    stds = np.array([summary[r][metric]["std"] for r in rows])
    refs = {label: v[metric] for label, v in fixed.items()}
    lo = min([*(means - stds), *refs.values()])
    hi = max([*(means + stds), *refs.values()])
    pad = 0.1 * max(hi - lo, 0.01)
    lo, hi = max(lo - pad, 0.0), hi + pad

    def y(v):
        return top + (hi - v) / (hi - lo) * (height - top - bottom)

    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((left, 10), f"Table 2: test {metric} (mean ± 1 std over seeds)", fill="black",
           font=font)
    d.line([(left, top), (left, height - bottom), (width - right, height - bottom)], "black")
    for tick in np.linspace(lo, hi, 5):
        d.line([(left - 4, y(tick)), (left, y(tick))], "black")
        d.text((5, y(tick) - 6), f"{tick:.3f}", fill="black", font=font)
    slot = (width - left - right) / len(rows)
    for i, r in enumerate(rows):
        x0, x1 = left + slot * (i + 0.2), left + slot * (i + 0.8)
        xc = (x0 + x1) / 2
        d.rectangle([x0, y(means[i]), x1, height - bottom], fill=(90, 130, 200))
        d.line([(xc, y(means[i] - stds[i])), (xc, y(means[i] + stds[i]))], "black", width=2)
        for v in (means[i] - stds[i], means[i] + stds[i]):
            d.line([(xc - 8, y(v)), (xc + 8, y(v))], "black", width=2)
        for j, part in enumerate(ROWS[r][2].split(" (")[0].split(" + ")):
            d.text((x0, height - bottom + 6 + 12 * j), ("+ " if j else "") + part, fill="black",
                   font=font)
    for k, (label, v) in enumerate(refs.items()):
        colour = ((200, 60, 60), (60, 150, 60))[k % 2]
        for x in range(left, width - right, 12):
            d.line([(x, y(v)), (x + 6, y(v))], colour, width=2)
        text, at = f"{label}: {v:.3f}", (width - right - 220, y(v) - 14)
        d.rectangle(d.textbbox(at, text, font=font), fill="white")  # readable over a bar
        d.text(at, text, fill=colour, font=font)
    img.save(path)


def run_all(workdir: str, size: str, seeds, rows, overrides, row_overrides=()) -> dict:
    """Trains (or reads back) every run; returns {'summary', 'fixed', 'runs'}."""
    per_row = split_row_overrides(row_overrides)
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        raise config_lib.ConfigError(f"--rows={rows}: use some of {list(ROWS)}.")
    if not seeds:
        raise config_lib.ConfigError("--seeds is empty; e.g. --seeds=0,1,2.")
    base = load_config("full.py", size)
    apply_overrides(base, overrides)
    config_validation.validate(base, num_devices=jax.device_count())  # before any data work
    raw_dir, prepared_dir = train.ensure_data(base, workdir)
    configs = {(r, s): run_config(r, size, s, overrides, base.prep, raw_dir, prepared_dir,
                                  per_row.get(r, ()))
               for r in rows for s in seeds}
    for c in configs.values():  # every run's config is checked before the first one trains
        config_validation.validate(c, num_devices=jax.device_count())
    runs = {}
    for (r, s), c in configs.items():
        run_dir = os.path.join(workdir, "runs", f"{r}-seed{s}")
        done = os.path.join(run_dir, "metrics.json")
        if os.path.exists(done):
            with open(done) as f:
                runs[r, s] = json.load(f)
        else:
            t0 = time.time()
            runs[r, s] = train.train_and_evaluate(c, run_dir)
            runs[r, s]["seconds"] = time.time() - t0
    summary = {r: {m: summarize([on_groups(runs[r, s])[m] for s in seeds]) for m in METRICS}
               for r in rows}
    return {"summary": summary, "fixed": references(runs), "runs": runs}


def main(argv):
    del argv
    runtime.setup()
    seeds = [int(s) for s in FLAGS.seeds]
    out = run_all(FLAGS.workdir, FLAGS.size, seeds, FLAGS.rows, FLAGS.set, FLAGS.row_set)
    header = (f"Embedded dataset `{FLAGS.size}`" if FLAGS.size else "Paper settings") + (
        f", seeds {seeds}, {time.strftime('%Y-%m-%d')}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), {os.cpu_count()} CPU cores "
        f"({platform.machine()}).")
    table = tables_markdown(out["summary"], out["fixed"], header)
    with open(os.path.join(FLAGS.workdir, "tables.md"), "w") as f:
        f.write(table + "\n")
    write_csv(os.path.join(FLAGS.workdir, "tables.csv"), out["summary"], out["fixed"])
    plot_table2(os.path.join(FLAGS.workdir, "table2.png"), out["summary"], out["fixed"])
    print(table, flush=True)


if __name__ == "__main__":
    define_flags()
    cli.run(main)  # ConfigError, DataError, FloatingPointError: one line, exit status 1
