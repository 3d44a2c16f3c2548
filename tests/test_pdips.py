# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests for ipa_jax.data.pdips: every PDIP rule, checked independently with scipy."""

import csv
import json
import math
import os
import re

import numpy as np
import pytest
from scipy import stats

from ipa_jax.data import pdips, prepare
from ipa_jax.data.instagram import Post
from tests.conftest import load_config

DAY = 86400
CRAWL = 1_000 * DAY


def _post(pid, user="u", ts=0, likes=100, caption="", typename="GraphImage"):
    return Post(post_id=pid, user=user, timestamp=int(ts), likes=int(likes), caption=caption,
                typename=typename, is_video=typename == "GraphVideo",
                image_paths=(f"image/{pid}.jpg",))


def test_threshold_value():
    assert abs(pdips.min_log_likes_gap(0.95, 0.3) - 0.698) < 1e-3
    # Phi at the gap is the threshold again.
    gap = pdips.min_log_likes_gap(0.8, 0.5)
    assert stats.norm.cdf(gap / (math.sqrt(2) * 0.5)) == pytest.approx(0.8)


def test_is_discriminable():
    # ln(201/100) = 0.698 > gap (0.69785); ln(200/100) = 0.693 < gap.
    assert pdips.is_discriminable(201, 100, 0.95, 0.3)
    assert pdips.is_discriminable(100, 201, 0.95, 0.3)
    assert not pdips.is_discriminable(200, 100, 0.95, 0.3)
    assert pdips.is_discriminable(200, 100, 0.9, 0.3)
    with pytest.raises(ValueError):
        pdips.is_discriminable(0, 100, 0.95, 0.3)


@pytest.mark.parametrize("caption,tags,mentions,words", [
    ("Love this! #sun #Beach @Bob so fun", {"#sun", "#beach"}, {"@bob"}, 4),
    ("", set(), set(), 0),
    ("#a#B @x.y. thanks @X.Y", {"#a", "#b"}, {"@x.y"}, 1),
    ("wow 😍 !! ok", set(), set(), 2),
    ("one two three four five six seven", set(), set(), 7),
])
def test_caption_tags(caption, tags, mentions, words):
    assert pdips.caption_tags(caption) == (frozenset(tags), frozenset(mentions), words)


def test_matching_rule_hand_example():
    h = 3600
    posts = [
        _post("a", ts=0, likes=100),
        _post("b", ts=2 * h, likes=220),      # dS(a) = 0.79: discriminable but < dS(a, c).
        _post("c", ts=2 * h, likes=1000),     # Same time as b, larger dS = 2.30: a's partner.
        _post("d", ts=1 * h, likes=120),      # Closest to a but dS = 0.18.
        _post("e", ts=3 * h, likes=55),       # dS(d) = 0.78: d's partner; dS(a) = 0.60.
        _post("f", ts=4 * h, likes=1000, caption="#x"),  # Different tags from everybody.
    ]
    pairs, dropped = pdips.make_pdips(posts, pdips.PdipConfig(crawl_time=CRAWL))
    got = [(w.post_id, lo.post_id) for w, lo in pairs]
    # Walk order: a(0h) d(1h) b(2h) c(2h) e(3h) f(4h). a -> c; d -> e (b, closer in time, has
    # dS(d, b) = 0.61 < 0.698); b and f have no partner left.
    assert got == [("c", "a"), ("d", "e")]
    assert dict(dropped) == {"no pdip partner": 2}


def test_tie_on_time_and_gap_breaks_by_post_id():
    posts = [_post("a", ts=0, likes=100), _post("z", ts=DAY, likes=1000),
             _post("m", ts=DAY, likes=1000)]
    pairs, _ = pdips.make_pdips(posts, pdips.PdipConfig(crawl_time=CRAWL))
    assert [(w.post_id, lo.post_id) for w, lo in pairs] == [("m", "a")]


def test_drop_reasons_exact():
    cfg = pdips.PdipConfig(crawl_time=CRAWL)
    old = CRAWL - 40 * DAY
    posts = [
        _post("few", ts=old, likes=49),
        _post("recent", ts=CRAWL - 29 * DAY, likes=1000),
        _post("long", ts=old, likes=1000, caption="a b c d e f g #h"),
        _post("ok6", ts=old, likes=1000, caption="a b c d e f #h @i"),
        _post("ok6b", ts=old + DAY, likes=100, caption="#H @I"),
        _post("other-user", user="v", ts=old, likes=10_000, caption="#h @i"),
        _post("vid", ts=old, likes=100, typename="GraphVideo"),
    ]
    pairs, dropped = pdips.make_pdips(posts, cfg)
    assert [(w.post_id, lo.post_id) for w, lo in pairs] == [("ok6", "ok6b")]
    assert dict(dropped) == {"too few likes": 1, "too recent": 1, "caption too long": 1,
                             "no pdip partner": 1, "not a single image": 1}
    assert 2 * len(pairs) + sum(dropped.values()) == len(posts)


def test_crawl_time_defaults_to_newest_post():
    posts = [_post("a", ts=0, likes=100), _post("b", ts=DAY, likes=1000),
             _post("new", ts=31 * DAY, likes=50)]
    pairs, dropped = pdips.make_pdips(posts)
    assert [(w.post_id, lo.post_id) for w, lo in pairs] == [("b", "a")]
    assert dict(dropped) == {"too recent": 1}


def _random_posts(seed, n=1500):
    rng = np.random.default_rng(seed)
    words = ["sun", "fun", "#beach", "#Beach", "#sea", "@Bob", "@bob", "@ann", "wow", "ok"]
    out = []
    for k in range(n):
        caption = " ".join(rng.choice(words, size=rng.integers(0, 9)))
        likes = int(np.exp(rng.uniform(np.log(20), np.log(5000))))
        out.append(_post(f"p{k:05d}", user=f"u{rng.integers(4)}",
                         ts=rng.integers(0, 300 * DAY), likes=likes, caption=caption))
    return out


def _independent_tags(caption):
    tags = {t.lower() for t in re.findall(r"#\w+", caption)}
    mentions = {m.lower().rstrip(".") for m in re.findall(r"@[\w.]+", caption)}
    rest = re.sub(r"@[\w.]+", " ", re.sub(r"#\w+", " ", caption))
    return tags, mentions, len([w for w in rest.split() if re.search(r"\w", w)])


@pytest.mark.parametrize("seed", [0, 1])
def test_random_pairs_obey_every_rule(seed):
    posts = _random_posts(seed)
    cfg = pdips.PdipConfig()
    crawl = max(p.timestamp for p in posts)
    pairs, dropped = pdips.make_pdips(posts, cfg)
    assert len(pairs) > 20
    used = [p.post_id for pair in pairs for p in pair]
    assert len(used) == len(set(used))  # No image in two pairs.
    for a, b in pairs:
        z = (math.log(a.likes) - math.log(b.likes)) / (math.sqrt(2) * cfg.sigma)
        assert stats.norm.cdf(z) >= cfg.threshold
        assert a.user == b.user
        assert abs(a.timestamp - b.timestamp) <= 10 * DAY
        for p in (a, b):
            assert crawl - p.timestamp >= 30 * DAY
            assert p.likes >= 50 and p.typename == "GraphImage"
        ta, tb = _independent_tags(a.caption), _independent_tags(b.caption)
        assert ta[:2] == tb[:2] and ta[2] <= 6 and tb[2] <= 6
    eligible = [p for p in posts if p.likes >= 50 and crawl - p.timestamp >= 30 * DAY
                and _independent_tags(p.caption)[2] <= 6]
    assert dropped["too few likes"] == sum(p.likes < 50 for p in posts)
    assert dropped["no pdip partner"] == len(eligible) - len(used)
    assert 2 * len(pairs) + sum(dropped.values()) == len(posts)


def test_make_pdips_ignores_input_order():
    posts = _random_posts(2, n=400)
    rng = np.random.default_rng(0)
    shuffled = [posts[k] for k in rng.permutation(len(posts))]
    assert pdips.make_pdips(posts) == pdips.make_pdips(shuffled)


def _pairs(n):
    return [(_post(f"w{k}"), _post(f"l{k}")) for k in range(n)]


@pytest.mark.parametrize("validation,test,sizes", [
    (0.1, 0.2, (70, 10, 20)),
    (5, 7, (88, 5, 7)),
    (5.0, 7.0, (88, 5, 7)),  # whole floats are counts: ConfigDict stores an int as 5.0
    (0.05, 50, (45, 5, 50)),
    (0, 100, (0, 0, 100)),
])
def test_split_pdips_sizes(validation, test, sizes):
    pairs = _pairs(100)
    split, used = pdips.split_pdips(pairs, validation=validation, test=test, seed=3)
    assert tuple(len(split[k]) for k in ("train", "validation", "test")) == sizes
    assert (used.train, used.validation, used.test) == sizes and used.notice is None
    ids = sorted(w.post_id for part in split.values() for w, _ in part)
    assert ids == sorted(w.post_id for w, _ in pairs)
    assert split == pdips.split_pdips(pairs, validation=validation, test=test, seed=3)[0]
    if 0 < sizes[1] < 100:
        other, _ = pdips.split_pdips(pairs, validation=validation, test=test, seed=4)
        assert split["validation"] != other["validation"]


@pytest.mark.parametrize("validation,test", [(60, 41), (1.5, 5), (-1, 5), (0.5, 0.6), (True, 1)])
def test_split_pdips_rejects(validation, test):
    with pytest.raises(ValueError):
        pdips.split_pdips(_pairs(100), validation=validation, test=test)


@pytest.mark.parametrize("n,validation,test,used,sizes", [
    # The paper's counts on its 2.5M PDIPs, and down to where they meet 10% / 10%.
    (2_500_000, 50_000, 50_000, (50_000, 50_000), (2_400_000, 50_000, 50_000)),
    (500_000, 50_000, 50_000, (50_000, 50_000), (400_000, 50_000, 50_000)),
    # Smaller data: the fallback fractions, never more pairs than they take.
    (499_990, 50_000, 50_000, (0.1, 0.1), (399_992, 49_999, 49_999)),
    (100_000, 50_000, 50_000, (0.1, 0.1), (80_000, 10_000, 10_000)),
    (1_707, 50_000.0, 50_000.0, (0.1, 0.1), (1_365, 171, 171)),  # the embedded demo
    (30, 50_000, 0.2, (0.1, 0.1), (24, 3, 3)),  # a count with a fraction
    # Fractions are taken as asked.
    (100, 0.3, 0.3, (0.3, 0.3), (40, 30, 30)),
])
def test_split_sizes_counts_fall_back_to_fractions_with_a_notice(n, validation, test, used,
                                                                  sizes):
    got = pdips.split_sizes(n, validation=validation, test=test, fallback=(0.1, 0.1))
    assert (got.train, got.validation, got.test) == sizes
    assert got.used == used and got.asked == (validation, test)
    record = got.as_dict()
    assert record["pairs"] == dict(zip(("train", "validation", "test"), sizes, strict=True))
    if used == (validation, test):
        assert got.notice is None and record["asked"] == record["used"]
    else:
        assert f"only {n:,} PDIPs" in got.notice and "fallback fractions 0.1 / 0.1" in got.notice
        assert record["asked"]["validation"] == 50_000  # a count, written as an int
        assert isinstance(record["asked"]["validation"], int)
        assert record["used"] == {"validation": 0.1, "test": 0.1}
    # The same sizes as asking for the fractions directly: the same split.
    pairs = _pairs(min(n, 2_000))
    if n == len(pairs):
        fell_back, _ = pdips.split_pdips(pairs, validation=validation, test=test, seed=5,
                                         fallback=(0.1, 0.1))
        assert fell_back == pdips.split_pdips(pairs, validation=used[0], test=used[1],
                                              seed=5)[0]


def test_counts_that_do_not_fit_without_a_fallback_are_an_error():
    with pytest.raises(ValueError, match="exceed the 1707 pairs"):
        pdips.split_sizes(1_707, validation=50_000, test=50_000)
    # Fitting counts without a fallback are used even above 10% / 10%.
    got = pdips.split_sizes(1_707, validation=500, test=500)
    assert (got.train, got.validation, got.test, got.notice) == (707, 500, 500, None)


def test_i2pa_asks_for_the_papers_sizes_and_the_report_notes_the_fallback(tiny_prepared):
    prep = load_config("i2pa").prep.pdips
    assert (prep.validation, prep.test, tuple(prep.fallback)) == (50_000, 50_000, (0.1, 0.1))
    assert load_config("i2pa", "tiny").prep.pdips == prep  # the variants change only the data
    with open(os.path.join(tiny_prepared, prepare.SUMMARY)) as f:
        summary = json.load(f)
    with open(os.path.join(tiny_prepared, "pdips.csv")) as f:
        splits = [r["split"] for r in csv.DictReader(f)]
    n = len(splits)
    record = summary["pdip_split"]
    assert record["asked"] == {"validation": 50_000, "test": 50_000}
    assert record["used"] == {"validation": 0.1, "test": 0.1}
    expected = math.floor(0.1 * n + 0.5)
    assert record["pairs"] == {"train": n - 2 * expected, "validation": expected,
                               "test": expected}
    assert {s: splits.count(s) for s in ("train", "validation", "test")} == record["pairs"]
    assert f"only {n:,} PDIPs" in record["notice"]
    report = prepare.format_report(summary)
    assert "pdip split: validation=0.1 test=0.1 (asked 50000 / 50000)" in report
    assert f"NOTICE: {record['notice']}" in report
