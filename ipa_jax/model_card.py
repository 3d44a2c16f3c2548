# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""What a score means: the model card beside every trained or converted model.

`model_card.json` (read by `ipa-score`) and `MODEL_CARD.md` (for people) say what the model was
trained on and with which objective, the score's direction and range, the preprocessing, the
test metrics and the date. A model with a test set also stores its test scores' distribution
(101 quantiles); a new score is then reported as a percentile against it, by linear
interpolation between the quantiles, and as one of five levels, each a fifth of the test
distribution, as Ding et al. present theirs: poor [0, 20), bad [20, 40), fair [40, 60),
good [60, 80), excellent [80, 100].
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping

import numpy as np

CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
LEVELS = ("poor", "bad", "fair", "good", "excellent")  # fifths of the test distribution
NUM_QUANTILES = 101
OBJECTIVES = {
    "i2pa_bce": "I2PA (Ding et al.): BCE on popularity-discriminable pairs; "
                "P(A beats B) = sigmoid(o_A - o_B)",
    "likes_ratio": "Ji et al.'s likes-ratio loss on same-user groups; s_A / s_B = exp(o_A - o_B) "
                   "predicts the likes ratio",
    "log_likes_mse": "log-likes regression: o predicts ln(likes)",
}


def build(*, model: str, objective: str, preprocessing: Mapping, trained_on: Mapping,
          test_metrics: Mapping | None = None, test_scores=None) -> dict:
    """The card's fields; `test_scores` (log-scores of the test images) give its distribution."""
    card = {
        "model": model, "objective": objective,
        "objective_meaning": OBJECTIVES.get(objective, "not recorded"),
        "score": {"name": "log-score o", "direction": "higher is more popular",
                  "range": "any real number; popularity s = exp(o) > 0; only differences "
                           "between images carry meaning"},
        "preprocessing": dict(preprocessing), "trained_on": dict(trained_on),
        "test_metrics": dict(test_metrics) if test_metrics else None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "test_distribution": None,
    }
    if test_scores is not None and len(test_scores):
        scores = np.asarray(test_scores, np.float64)
        card["test_distribution"] = {
            "num_images": int(len(scores)),
            "quantiles": np.percentile(scores, np.linspace(0, 100, NUM_QUANTILES)).tolist(),
            "min": float(scores.min()), "max": float(scores.max()),
            "mean": float(scores.mean()), "std": float(scores.std())}
    return card


def percentiles(card: Mapping, scores) -> np.ndarray | None:
    """Each score's percentile in [0, 100] against the card's test distribution (None without
    one): linear between the stored quantiles, 0 below the lowest, 100 above the highest."""
    dist = card.get("test_distribution") if card else None
    if not dist:
        return None
    q = np.asarray(dist["quantiles"], np.float64)
    levels = np.linspace(0.0, 100.0, len(q))
    q, first = np.unique(q, return_index=True)  # ties: the lowest percentile of a tied value
    return np.interp(np.asarray(scores, np.float64), q, levels[first], left=0.0, right=100.0)


def levels(percentile) -> list[str]:
    """The five levels of percentiles (each a fifth of the test distribution)."""
    return [LEVELS[min(int(p // 20), len(LEVELS) - 1)] for p in np.atleast_1d(percentile)]


def markdown(card: Mapping) -> str:
    lines = [f"# Model card: {card['model']}", "",
             f"- Objective: {card['objective'] or 'not recorded'} "
             f"({card['objective_meaning']})",
             f"- Score: {card['score']['name']}, {card['score']['direction']}; "
             f"{card['score']['range']}",
             "- Preprocessing: " + ", ".join(f"{k}={v}" for k, v in
                                             card["preprocessing"].items()),
             "- Trained on: " + ", ".join(f"{k}={v}" for k, v in card["trained_on"].items()),
             f"- Created: {card['created']}"]
    if card["test_metrics"]:
        lines += ["", "## Test metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in card["test_metrics"].items()]
    dist = card["test_distribution"]
    if dist:
        q = dist["quantiles"]
        lines += ["", f"## Test score distribution ({dist['num_images']} images)", "",
                  "| level | percentiles | log-scores |", "| --- | --- | --- |"]
        lines += [f"| {name} | {20 * i}-{20 * (i + 1)} | {q[20 * i]:.4f} to {q[20 * (i + 1)]:.4f} |"
                  for i, name in enumerate(LEVELS)]
    else:
        lines += ["", "No test set: scores are not placed against a distribution."]
    return "\n".join(lines) + "\n"


def write(directory: str, card: Mapping) -> None:
    with open(os.path.join(directory, CARD_JSON), "w") as f:
        json.dump(card, f, indent=2, default=float)
    with open(os.path.join(directory, CARD_MD), "w") as f:
        f.write(markdown(card))


def read(directory: str) -> dict | None:
    path = os.path.join(directory, CARD_JSON)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
