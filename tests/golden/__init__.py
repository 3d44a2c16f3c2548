# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Golden reference files and the (torch-side) scripts that write them."""
