# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Cappallo et al. 2015, Tables 3 and 5, on one dataset: one command, one printed table.

  python -m ipa_jax.latent_svm_table --workdir=workdirs/svm_table

Table 3: senses 0 (plain ranking SVM) / 5 / 10 / 20 x fixed / soft margin, popular senses only,
and the linear SVR (C and epsilon chosen on validation, solved to a certified duality gap).
Table 5 (soft margin): k popular + k unpopular senses against 2k popular senses (the same total,
e.g. 5 + 5 against 10) and against k popular senses (the paper's rows).
Every run goes through `ipa_jax.main`'s loop; features are extracted once and shared, and the
SVR is fitted once for all runs.
Cells: test Spearman rho / binarised accuracy, the mean +- std over `svm.binarised_draws` draws
of the negatives; a difference of binarised accuracies is the mean +- std of the per-draw
(paired) differences. Written to `<workdir>/table.md` too.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from ipa_jax import cli, config_lib, config_validation, runtime, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs",
                           "latent_svm.py:demo"),
    "Base config; its svm.* fields are set per run.", lock_config=True)
flags.DEFINE_string("workdir", None, "Runs go to <workdir>/runs/<name>.")
flags.DEFINE_list("senses", ["0", "5", "10", "20"], "Table 3 rows.")
flags.DEFINE_list("unpopular_senses", ["5", "10"], "Table 5 rows.")
flags.mark_flags_as_required(["workdir"])
for _name in ("senses", "unpopular_senses"):
    flags.register_validator(_name, lambda v: all(s.strip().isdigit() for s in v),
                             message="must be whole numbers >= 0, e.g. 0,5,10.")
cli.require_nonempty("workdir", "the directory for the runs and the table")


def _cell(result: dict) -> str:
    return (f"{result['spearman_rho']:.3f} / {result['binarised_accuracy']:.3f} "
            f"± {result['binarised_accuracy_std']:.3f}")


def _draws(run_dir: str, key: str = "test") -> np.ndarray:
    """Per-draw binarised accuracies written by the run (`tasks.LatentSvm.finish`)."""
    with open(os.path.join(run_dir, "binarised_accuracy.json")) as f:
        return np.asarray(json.load(f)[key], np.float64)


def _difference(a: tuple[dict, np.ndarray], b: tuple[dict, np.ndarray]) -> str:
    """`a - b`: Spearman rho, and binarised accuracy as mean +- std of paired draws."""
    d = a[1] - b[1]
    std = d.std(ddof=1) if d.size > 1 else 0.0
    return (f"{a[0]['spearman_rho'] - b[0]['spearman_rho']:+.3f} / "
            f"{d.mean():+.3f} ± {std:.3f}")


def run_grid(config, workdir: str, senses, unpopular_senses) -> str:
    """Trains every cell, returns the two tables as markdown."""
    if any(s < 0 for s in senses) or any(s < 1 for s in unpopular_senses):
        raise config_lib.ConfigError(f"--senses={senses} must be >= 0 (0: the plain SVM) and "
                                     f"--unpopular_senses={unpopular_senses} >= 1.")
    config_validation.validate(config, num_devices=jax.device_count())  # before any data work
    raw_dir, prepared_dir = train.ensure_data(config, workdir)
    outputs, results = {}, {}  # (popular, unpopular, margin) -> all results, (test, draws)

    def run(num_popular, num_unpopular, margin):
        key = (num_popular, num_unpopular, margin)
        if key not in results:
            c = config.copy_and_resolve_references()
            c.data.raw_dir, c.data.prepared_dir = raw_dir, prepared_dir
            c.svm.num_popular, c.svm.num_unpopular, c.svm.margin = key
            name = f"pop{num_popular}-unpop{num_unpopular}-{margin}"
            run_dir = os.path.join(workdir, "runs", name)
            outputs[key] = train.train_and_evaluate(c, run_dir)
            results[key] = (outputs[key]["test"], _draws(run_dir))
        return results[key]

    draws = config.svm.binarised_draws
    lines = [f"Table 3: test Spearman rho / binarised accuracy (mean ± std over {draws} draws "
             "of the negatives), popular senses only",
             "", "| senses | fixed margin | soft margin |", "| --- | --- | --- |"]
    for s in senses:
        lines.append(f"| {s} | {_cell(run(s, 0, 'fixed')[0])} | "
                     f"{_cell(run(s, 0, 'soft')[0])} |")
    any_run = next(iter(outputs.values()))
    svr_result = any_run["test_svr"]
    lines.append(f"| linear SVR (Khosla et al.) | {_cell(svr_result)} | |")
    lines += ["", "Table 5: unpopular senses (soft margin): k popular + k unpopular against 2k "
                  "popular (the same total) and against k popular. A difference: rho / "
                  "binarised accuracy, mean ± std of the paired per-draw differences.",
              "", "| k | 2k popular | k popular | k popular + k unpopular | "
                  "minus 2k popular | minus k popular |",
              "| --- | --- | --- | --- | --- | --- |"]
    for k in unpopular_senses:
        same_total, popular, both = run(2 * k, 0, "soft"), run(k, 0, "soft"), run(k, k, "soft")
        lines.append(f"| {k} | {_cell(same_total[0])} | {_cell(popular[0])} | {_cell(both[0])} "
                     f"| {_difference(both, same_total)} | {_difference(both, popular)} |")
    c_grid = config.svm.svr_c_grid or (config.svm.svr_c,)
    e_grid = config.svm.svr_epsilon_grid or (config.svm.svr_epsilon,)
    lines += ["", f"Linear SVR: C = {svr_result['svr_c']:g}, epsilon = "
                  f"{svr_result['svr_epsilon']:g}, chosen by validation Spearman rho "
                  f"({svr_result['svr_validation_rho']:.3f}) from C in "
                  f"{{{', '.join(f'{c:g}' for c in c_grid)}}} x epsilon in "
                  f"{{{', '.join(f'{e:g}' for e in e_grid)}}}; objective "
                  f"{svr_result['svr_objective']:.6g}, relative duality gap "
                  f"{svr_result['svr_relative_gap']:.1e}."]
    oracle = any_run.get("test_oracle")
    if oracle is not None:
        lines += ["", f"Oracle (planted noise-free popularity): Spearman rho "
                      f"{oracle['spearman_rho']:.3f}."]
    return "\n".join(lines)


def main(argv):
    del argv
    runtime.setup()
    table = run_grid(FLAGS.config, FLAGS.workdir, [int(s) for s in FLAGS.senses],
                     [int(s) for s in FLAGS.unpopular_senses])
    with open(os.path.join(FLAGS.workdir, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table, flush=True)


if __name__ == "__main__":
    cli.run(main)  # ConfigError, DataError, FloatingPointError: one line, exit status 1
