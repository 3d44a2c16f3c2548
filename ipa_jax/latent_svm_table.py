# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Cappallo et al. 2015, Tables 3 and 5, on one dataset: one command, one printed table.

  python -m ipa_jax.latent_svm_table --workdir=workdirs/svm_table

Table 3: senses 0 (plain ranking SVM) / 5 / 10 / 20 x fixed / soft margin, popular senses only.
Table 5: popular-only against popular + as many unpopular senses (soft margin).
Every run goes through `ipa_jax.main`'s loop; features are extracted once and shared.
Cells: test Spearman rho / binarised accuracy. Written to `<workdir>/table.md` too.
"""

from __future__ import annotations

import os

import jax
from absl import flags
from ml_collections import config_flags

from ipa_jax import cli, config_lib, runtime, train

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
    return f"{result['spearman_rho']:.3f} / {result['binarised_accuracy']:.3f}"


def run_grid(config, workdir: str, senses, unpopular_senses) -> str:
    """Trains every cell, returns the two tables as markdown."""
    if any(s < 0 for s in [*senses, *unpopular_senses]):
        raise config_lib.ConfigError(f"--senses={senses} and --unpopular_senses="
                                     f"{unpopular_senses} must be >= 0 (0: the plain SVM).")
    config_lib.validate(config, num_devices=jax.device_count())  # before any data work
    raw_dir, prepared_dir = train.ensure_data(config, workdir)
    results = {}

    def run(num_popular, num_unpopular, margin):
        key = (num_popular, num_unpopular, margin)
        if key not in results:
            c = config.copy_and_resolve_references()
            c.data.raw_dir, c.data.prepared_dir = raw_dir, prepared_dir
            c.svm.num_popular, c.svm.num_unpopular, c.svm.margin = key
            name = f"pop{num_popular}-unpop{num_unpopular}-{margin}"
            results[key] = train.train_and_evaluate(c, os.path.join(workdir, "runs", name))
        return results[key]

    lines = ["Table 3: test Spearman rho / binarised accuracy, popular senses only",
             "", "| senses | fixed margin | soft margin |", "| --- | --- | --- |"]
    for s in senses:
        lines.append(f"| {s} | {_cell(run(s, 0, 'fixed')['test'])} | "
                     f"{_cell(run(s, 0, 'soft')['test'])} |")
    any_run = next(iter(results.values()))
    lines.append(f"| linear SVR (Khosla et al.) | {_cell(any_run['test_svr'])} | |")
    lines += ["", "Table 5: popular only against popular + unpopular senses (soft margin)",
              "", "| senses | popular | popular + unpopular |", "| --- | --- | --- |"]
    for s in unpopular_senses:
        lines.append(f"| {s} (+{s}) | {_cell(run(s, 0, 'soft')['test'])} | "
                     f"{_cell(run(s, s, 'soft')['test'])} |")
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
