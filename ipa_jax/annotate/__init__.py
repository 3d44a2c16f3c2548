# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Annotators for real photos: depth maps, COCO keypoints, background masks and captions.

`sidecars` holds the file formats data_prep reads; `backends` loads a model by spec
("transformers:<name or folder>", "keras_hub:<preset or folder>"); `runner.annotate` turns a
raw dataset folder into sidecars, resumably. `python -m data_prep.annotate` is the command line.
"""

import os

# Keras picks its backend once, when first imported, and `import tensorflow` imports it: the
# keras_hub annotators run on JAX, so the choice is made here, before anything imports
# tensorflow (a user's own KERAS_BACKEND is kept; keras_hub_backends checks it).
os.environ.setdefault("KERAS_BACKEND", "jax")
