# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Annotator models, chosen by spec: "<library>:<preset name or local folder>".

Libraries (each an extra, imported only when used):
  keras_hub     Keras Hub on the JAX backend (`pip install -e ".[annotate-jax]"`, then
                `pip install --no-deps keras-hub==0.32.0`: see pyproject.toml);
  transformers  Hugging Face transformers on PyTorch (`pip install -e ".[annotate-torch]"`).

An `Annotator` maps a batch of RGB images (uint8 [H, W, 3] each, sizes may differ) to one
output per image, in order:
  depth       float32 [h, w], any size (the writer resizes it to the image), ordered so that
              larger is farther (a disparity model returns its negated disparity);
  keypoints   a list of people, each {"keypoints": float32 [17, 3] (x, y, confidence) in the
              input image's pixels, COCO-17 order, "score": the person's detection score};
  background  bool [h, w], any size, True where the pixel is background;
  captions    str, a generated caption of the image.
`info` says which model and weights produced the outputs (written to annotations.json).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SIGNALS = ("depth", "keypoints", "background", "captions")
LIBRARIES = {  # library -> (module holding its builders, how to install it)
    "keras_hub": ("ipa_jax.annotate.keras_hub_backends",
                  'pip install -e ".[annotate-jax]" && pip install --no-deps keras-hub==0.32.0'),
    "transformers": ("ipa_jax.annotate.hf_backends", 'pip install -e ".[annotate-torch]"'),
}


class MissingExtra(ImportError):
    """An annotator's library is not installed; the message names the pip extra."""


@dataclasses.dataclass
class Annotator:
    signal: str
    info: dict[str, Any]  # library, architecture, weights (preset or absolute folder), settings
    predict: Callable[[Sequence[np.ndarray]], list]
    batch_size: int = 8

    def __call__(self, images: Sequence[np.ndarray]) -> list:
        out = self.predict(images)
        if len(out) != len(images):
            raise RuntimeError(f"{self.info} gave {len(out)} outputs for {len(images)} images")
        return out


def parse_spec(spec: str) -> tuple[str, str]:
    """("transformers", "depth-anything/...") of "transformers:depth-anything/..."."""
    library, sep, weights = spec.partition(":")
    if not sep or library not in LIBRARIES or not weights:
        raise ValueError(f"annotator spec {spec!r} must be <library>:<preset or folder>, with "
                         f"library one of {sorted(LIBRARIES)}")
    return library, weights


def library_module(library: str):
    """The backend module of `library`; `MissingExtra` naming the extra when it cannot import."""
    module, install = LIBRARIES[library]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(f"the {library} annotators need `{install}` ({e})") from e


def load(signal: str, spec: str, *, batch_size: int = 8, **options) -> Annotator:
    """The annotator of `signal` from `spec`. options: per-signal settings (e.g. the person
    detector for keypoints), passed to the library's builder `<signal>(weights, batch_size=,
    **options)`."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; one of {SIGNALS}")
    library, weights = parse_spec(spec)
    module = library_module(library)
    builder = getattr(module, signal, None)
    if builder is None:
        raise ValueError(f"{library} has no {signal} annotator; see `{module.__name__}`")
    return builder(weights, batch_size=batch_size, **options)


# The command lines' default models (`python -m data_prep.annotate`, `ipa-score --annotate`):
# the checkpoints closest to the paper's frozen annotators that the two libraries ship.
DEFAULT_MODELS = {
    "depth": "keras_hub:depth_anything_v2_small",
    "keypoints": "transformers:usyd-community/vitpose-base-simple",
    "background": "keras_hub:deeplab_v3_plus_resnet50_pascalvoc",
    "captions": "transformers:Salesforce/blip-image-captioning-base",
}
DEFAULT_PERSON_DETECTOR = "PekingU/rtdetr_r50vd_coco_o365"


def parse_signals(text: str, flag: str) -> list[str]:
    """["depth", "captions"] of "depth,captions"; ValueError naming `flag` for unknown ones."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SIGNALS]
    if unknown:
        raise ValueError(f"--{flag}: unknown signals {unknown}; choose from {SIGNALS}")
    return names


def add_model_flags(parser) -> None:
    """The argparse flags choosing the annotators: --<signal>_model, --person_detector,
    --device (shared by `python -m data_prep.annotate` and `ipa-score --annotate`)."""
    for signal in SIGNALS:
        parser.add_argument(f"--{signal}_model", default=DEFAULT_MODELS[signal],
                            help=f"{signal} annotator: <library>:<preset name or local folder>")
    parser.add_argument("--person_detector", default=DEFAULT_PERSON_DETECTOR,
                        help="keypoints: the person detector (transformers name or folder)")
    parser.add_argument("--device", default="cpu",
                        help="transformers annotators: cpu or cuda (JAX uses its default device)")


def from_flags(args, signals: Sequence[str], batch_size: int) -> list[Annotator]:
    """The annotators of `signals` as the `add_model_flags` flags in `args` choose them.
    Weights that cannot be loaded (a wrong folder, no network for a preset) raise a one-line
    ValueError naming the flag."""
    out = []
    for signal in signals:
        spec = getattr(args, f"{signal}_model")
        options = {}
        if spec.startswith("transformers:"):
            options["device"] = args.device
            if signal == "keypoints":
                options["detector"] = args.person_detector
        try:
            out.append(load(signal, spec, batch_size=batch_size, **options))
        except OSError as e:  # weights not found (or not downloadable offline)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"--{signal}_model={spec}: cannot load the weights: {first}") from e
    return out
