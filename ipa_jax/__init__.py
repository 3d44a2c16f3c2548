# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Image popularity models in JAX/Flax. `ipa_jax.Scorer.from_dir(path).score(files_or_pixels)`
scores images with a trained, converted or exported model (`ipa-score` on the command line);
the retrieval-augmented model's `.use_history(...)` ranks drafts against a creator's posts."""


def __getattr__(name: str):
    if name == "Scorer":  # imported on first use: `import ipa_jax` stays light
        from ipa_jax.scoring import Scorer  # noqa: PLC0415

        return Scorer
    raise AttributeError(f"module 'ipa_jax' has no attribute {name!r}")
