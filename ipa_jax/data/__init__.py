# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The dataset format and its preparation: raw Instagram-Influencer-format posts to TFRecords.

`prepare.prepare` runs the whole preparation locally; `data_prep/` (outside the package) holds
the command lines over it and the same preparation as an Apache Beam pipeline.
"""
