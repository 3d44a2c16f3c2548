# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Retrieval of a user's similar past posts (Ji et al. 2023)."""
