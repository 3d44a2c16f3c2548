# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""Raw Instagram-Influencer-format posts -> TFRecords plus auditable manifests.

  python -m data_prep.prepare --config=configs/i2pa.py \
      --config.data.raw_dir=/data/instagram --out_dir=/data/prepared

runs the preparation here, in one process (`ipa_jax.data.prepare`: what it writes, and the
rules). With `--runner` it runs as one Apache Beam pipeline (`data_prep.beam_pipeline`, the
`beam` extra) on that runner, with the same output:

  python -m data_prep.prepare --config=configs/i2pa.py --config.data.raw_dir=RAW \
      --out_dir=OUT --runner=DirectRunner --beam_options=direct_num_workers=2

`--beam_options` takes the runner's pipeline options as comma-separated key=value pairs
(e.g. `project=P,region=R,temp_location=gs://B/tmp` for DataflowRunner).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from ipa_jax import cli, config_lib
from ipa_jax.data import prepare as prepare_lib

LOCAL = "local"
RUNNERS = (LOCAL, "DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner",
           "PortableRunner", "PrismRunner")


def _beam_options(runner: str, text: str) -> list[str]:
    """`key=value,...` as Beam's `--key=value` arguments, the runner first."""
    args = [f"--runner={runner}"]
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise config_lib.ConfigError(
                f"--beam_options={text!r}: {item!r} is not key=value; pass the pipeline "
                "options as comma-separated key=value pairs, e.g. "
                "--beam_options=direct_num_workers=2,direct_running_mode=multi_threading.")
        args.append(f"--{key.strip().lstrip('-')}={value.strip()}")
    return args


def run(raw_dir: str, out_dir: str, prep, *, runner: str = LOCAL, beam_options: str = "") -> dict:
    """Prepares `raw_dir` into `out_dir` on the local path or a Beam runner; the summary."""
    if runner == LOCAL:
        if beam_options:
            raise config_lib.ConfigError(
                "--beam_options needs a Beam --runner (e.g. --runner=DirectRunner); the local "
                "path takes none.")
        return prepare_lib.prepare(raw_dir, out_dir, prep)
    try:
        from data_prep import beam_pipeline  # noqa: PLC0415 - apache_beam only when asked
    except ImportError as e:
        raise config_lib.ConfigError(
            f"--runner={runner} runs the preparation on Apache Beam, which is not installed "
            f"({e}); pip install -e \".[beam]\", or leave out --runner for the local path."
        ) from None
    return beam_pipeline.prepare(raw_dir, out_dir, prep, _beam_options(runner, beam_options))


def main(argv):
    if len(argv) > 1:
        raise config_lib.ConfigError(f"Unexpected arguments: {argv[1:]}")
    raw_dir = flags.FLAGS.config.data.raw_dir
    if raw_dir in ("", config_lib.EMBEDDED):
        raise config_lib.ConfigError(
            f"config.data.raw_dir={raw_dir!r}: data_prep.prepare reads an Instagram-Influencer-"
            "format directory; pass --config.data.raw_dir=DIR (write the embedded dataset first "
            "with python -m data_prep.embedded --out_dir=DIR).")
    summary = run(raw_dir, flags.FLAGS.out_dir, flags.FLAGS.config.prep,
                  runner=flags.FLAGS.runner, beam_options=flags.FLAGS.beam_options)
    print(prepare_lib.format_report(summary))


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Config file (its data and prep fields).")
    flags.DEFINE_string("out_dir", None, "Where to write TFRecords and manifests.")
    flags.DEFINE_enum("runner", LOCAL, RUNNERS,
                      "local: here, in one process; a Beam runner: one Beam pipeline on it.")
    flags.DEFINE_string("beam_options", "",
                        "The Beam runner's pipeline options, comma-separated key=value pairs.")
    flags.mark_flags_as_required(["config", "out_dir"])
    cli.require_nonempty("out_dir", "the folder for TFRecords and manifests")
    cli.run(main)
