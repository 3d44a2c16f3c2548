# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Issue 15: what a score means. The model card's test distribution, percentiles and the five
levels (each a fifth of the distribution)."""

import numpy as np
import pytest

from ipa_jax import model_card


def _card(scores):
    return model_card.build(model="resnet_mini", objective="likes_ratio",
                            preprocessing={"size": 32, "resize": "crop"},
                            trained_on={"raw_dir": "/data"}, test_metrics={"plcc": 0.5},
                            test_scores=scores)


def test_percentiles_and_levels_follow_the_stored_distribution(tmp_path):
    scores = np.random.default_rng(0).normal(size=2000)
    card = _card(scores)
    q = np.asarray(card["test_distribution"]["quantiles"])
    np.testing.assert_allclose(q, np.percentile(scores, np.arange(101)))
    np.testing.assert_allclose(model_card.percentiles(card, q), np.arange(101), atol=1e-9)
    # Against the test scores themselves: the percentile is the fraction below, to 1 point.
    new = np.random.default_rng(1).normal(size=300)
    below = (scores[None, :] < new[:, None]).mean(1) * 100
    np.testing.assert_allclose(model_card.percentiles(card, new), below, atol=1.0)
    assert model_card.percentiles(card, [q[0] - 1, q[-1] + 1]).tolist() == [0.0, 100.0]
    assert model_card.levels([0, 19.99, 20, 59.9, 60, 80, 100]) == [
        "poor", "poor", "bad", "fair", "good", "excellent", "excellent"]
    counts = np.unique(model_card.levels(model_card.percentiles(card, scores)),
                       return_counts=True)[1]
    assert counts.tolist() == pytest.approx([400] * 5, abs=2)  # each level a fifth
    model_card.write(str(tmp_path), card)
    assert model_card.read(str(tmp_path)) == card
    text = (tmp_path / model_card.CARD_MD).read_text()
    assert "likes-ratio loss" in text and "| excellent | 80-100 |" in text and "plcc" in text


def test_a_card_without_a_test_set_places_no_score():
    card = _card(None)
    assert card["test_distribution"] is None and model_card.percentiles(card, [0.1]) is None
    assert "No test set" in model_card.markdown(card)
    assert model_card.percentiles(None, [0.1]) is None
