# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests for data_prep.pdips: every PDIP rule, checked independently with scipy."""

import math
import re

import numpy as np
import pytest
from scipy import stats

from data_prep import pdips
from data_prep.instagram import Post

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
    (0.05, 50, (45, 5, 50)),
    (0, 100, (0, 0, 100)),
])
def test_split_pdips_sizes(validation, test, sizes):
    pairs = _pairs(100)
    split = pdips.split_pdips(pairs, validation=validation, test=test, seed=3)
    assert tuple(len(split[k]) for k in ("train", "validation", "test")) == sizes
    ids = sorted(w.post_id for part in split.values() for w, _ in part)
    assert ids == sorted(w.post_id for w, _ in pairs)
    assert split == pdips.split_pdips(pairs, validation=validation, test=test, seed=3)
    if 0 < sizes[1] < 100:
        other = pdips.split_pdips(pairs, validation=validation, test=test, seed=4)
        assert split["validation"] != other["validation"]


@pytest.mark.parametrize("validation,test", [(60, 41), (1.0, 5), (-1, 5), (0.5, 0.6), (True, 1)])
def test_split_pdips_rejects(validation, test):
    with pytest.raises(ValueError):
        pdips.split_pdips(_pairs(100), validation=validation, test=test)
