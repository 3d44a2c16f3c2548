# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests of the pose similarity S_p (COCO OKS) of the retrieval branch."""

import json
import math

import numpy as np
import pytest

from ipa_jax.retrieval import pose

NOSE, LEFT_SHOULDER, LEFT_KNEE = 0, 5, 13


def _pose(points: dict[int, tuple[float, float]], fill=(500.0, 500.0)) -> np.ndarray:
    """A [17, 3] pose: `points` visible (v=2), all other keypoints at `fill`, invisible."""
    kp = np.zeros((17, 3))
    kp[:, :2] = fill
    for i, (x, y) in points.items():
        kp[i] = (x, y, 2)
    return kp


def _random_person(rng, centre, scale=40.0) -> np.ndarray:
    kp = np.zeros((17, 3))
    kp[:, :2] = centre + rng.normal(0, scale, (17, 2))
    kp[:, 2] = rng.choice([0, 1, 2], 17, p=[0.2, 0.3, 0.5])
    kp[0, 2] = 2  # at least one visible
    return kp


def test_sigmas_are_cocos():
    assert pose.COCO_SIGMAS.shape == (17,)
    assert pose.COCO_SIGMAS[NOSE] == pytest.approx(0.026)
    assert pose.COCO_SIGMAS[LEFT_SHOULDER] == pytest.approx(0.079)
    assert pose.COCO_SIGMAS[LEFT_KNEE] == pytest.approx(0.087)
    assert pose.COCO_SIGMAS[11] == pytest.approx(0.107)  # hips are the loosest


def test_oks_hand_computed():
    gt = _pose({NOSE: (10, 10), LEFT_SHOULDER: (20, 30), LEFT_KNEE: (30, 70)})
    # The detection also places the 14 keypoints invisible in gt: they must not count.
    dt = _pose({NOSE: (12, 10), LEFT_SHOULDER: (20, 35), LEFT_KNEE: (26, 73)}, fill=(0.0, 0.0))
    area = 1200.0
    # e = d^2 / (2 * area * (2 sigma)^2) per visible keypoint; OKS = mean exp(-e).
    e_nose = 4.0 / (2 * 1200.0 * (2 * 0.026) ** 2)  # d^2 = 2^2
    e_shoulder = 25.0 / (2 * 1200.0 * (2 * 0.079) ** 2)  # d^2 = 5^2
    e_knee = 25.0 / (2 * 1200.0 * (2 * 0.087) ** 2)  # d^2 = 4^2 + 3^2
    assert e_nose == pytest.approx(0.616371, abs=1e-6)
    expected = (math.exp(-e_nose) + math.exp(-e_shoulder) + math.exp(-e_knee)) / 3
    assert pose.oks(dt, gt, area) == pytest.approx(expected, rel=1e-9)
    # The same example through the keypoints' box area: x in [10, 30], y in [10, 70].
    assert float(pose.person_area(gt)) == 20.0 * 60.0


def test_oks_identical_far_and_invisible():
    rng = np.random.default_rng(0)
    person = _random_person(rng, np.array([200.0, 200.0]))
    area = float(pose.person_area(person))
    assert pose.oks(person, person, area) == pytest.approx(1.0)
    assert pose.oks(person + [1000.0, 0.0, 0.0], person, area) < 1e-12
    invisible = person.copy()
    invisible[:, 2] = 0
    assert pose.oks(person, invisible, area) == 0.0
    # Moving a keypoint that is invisible in gt changes nothing; a visible one lowers OKS.
    hidden = int(np.flatnonzero(person[:, 2] == 0)[0])
    moved = person.copy()
    moved[hidden, :2] += 300.0
    assert pose.oks(moved, person, area) == pytest.approx(1.0)
    moved[NOSE, :2] += 30.0
    assert pose.oks(moved, person, area) < 1.0


def test_person_area():
    kp = _pose({1: (5, 7), 2: (15, 3), 9: (8, 20)})
    assert float(pose.person_area(kp)) == (15 - 5) * (20 - 3)
    assert float(pose.person_area(_pose({}))) == 0.0
    batch = np.stack([kp, _pose({}), _pose({4: (1, 1), 6: (4, 5)})])
    np.testing.assert_array_equal(pose.person_area(batch), [170.0, 0.0, 12.0])


def test_pose_similarity_best_pair_and_empty():
    rng = np.random.default_rng(1)
    a, b = _random_person(rng, np.array([100.0, 100.0])), _random_person(rng, [400.0, 300.0])
    near_b = b.copy()
    near_b[:, :2] += rng.normal(0, 3.0, (17, 2))
    query, ref = [a, near_b], [b, a + [0.0, 250.0, 0.0]]
    both = lambda x, y: (pose.oks(x, y, float(pose.person_area(y)))
                         + pose.oks(y, x, float(pose.person_area(x)))) / 2
    pairs = [both(q, r) for q in query for r in ref]
    assert pose.pose_similarity(query, ref) == pytest.approx(max(pairs))
    assert pose.pose_similarity(query, ref) == pytest.approx(both(near_b, b))
    assert pose.pose_similarity([], ref) == 0.0
    assert pose.pose_similarity(query, []) == 0.0


def test_pair_pose_similarity_matches_loop():
    rng = np.random.default_rng(2)
    centres = rng.uniform(0, 300, (3, 2))
    people = [[_random_person(rng, centres[rng.integers(3)], 25.0)
               for _ in range(rng.integers(0, 4))] for _ in range(30)]
    packed = pose.pack_people(people)
    q, r = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    expected = [pose.pose_similarity(people[i], people[j]) for i, j in zip(q, r, strict=True)]
    assert pose.pose_similarity(people[q[0]], people[r[0]]) == pose.pose_similarity(
        people[r[0]], people[q[0]])
    np.testing.assert_allclose(pose.pair_pose_similarity(packed, q, r), expected, atol=1e-6)
    assert np.count_nonzero(expected) > 20  # the check covers real overlaps


def test_read_keypoints(tmp_path):
    results = [{"image_id": "1.jpg", "category_id": 1, "score": 0.9,
                "keypoints": list(np.arange(51, dtype=float))},
               {"image_id": "1.jpg", "category_id": 2, "score": 0.5, "keypoints": [0.0] * 51}]
    path = tmp_path / "1.json"
    path.write_text(json.dumps(results))
    people = pose.read_keypoints(str(path))
    assert len(people) == 1
    assert people[0].shape == (17, 3)
    np.testing.assert_array_equal(people[0][1], [3, 4, 5])  # x, y, v of the left eye
    assert pose.read_keypoints(str(tmp_path / "missing.json")) == []


def test_pose_similarity_is_symmetric():
    # Issue 12 item 5 (fails before: the retrieved person was the reference). A small person
    # with 3 visible keypoints against a large one with all 17: one-way OKS differ a lot.
    rng = np.random.default_rng(3)
    big = _random_person(rng, np.array([200.0, 200.0]), scale=60.0)
    big[:, 2] = 2
    small = big.copy()
    small[:, :2] = 200.0 + (big[:, :2] - 200.0) * 0.5 + rng.normal(0, 2.0, (17, 2))
    small[3:, 2] = 0
    ab = pose.oks(small, big, float(pose.person_area(big)))
    ba = pose.oks(big, small, float(pose.person_area(small)))
    assert abs(ab - ba) > 0.05
    assert pose.pose_similarity([small], [big]) == pytest.approx((ab + ba) / 2)
    assert pose.pose_similarity([big], [small]) == pytest.approx((ab + ba) / 2)
    people = [[small], [big], [small, big]]
    packed = pose.pack_people(people)
    q, r = np.array([0, 1, 0, 2]), np.array([1, 0, 2, 0])
    s = pose.pair_pose_similarity(packed, q, r)
    np.testing.assert_allclose(s, pose.pair_pose_similarity(packed, r, q), rtol=1e-12)
    np.testing.assert_allclose(s[:2], (ab + ba) / 2)
