# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Popularity-discriminable image pairs, PDIPs (Ding et al. 2019).

A pair (A, B) of posts is a PDIP when all of these hold:

  * Phi((S_A - S_B) / (sqrt(2) * sigma)) >= threshold with S = ln(likes), Phi the standard
    normal CDF. Equivalently S_A - S_B >= sqrt(2) * sigma * Phi^-1(threshold), which is 0.698
    for the defaults threshold = 0.95, sigma = 0.3 (`min_log_likes_gap`).
  * Same user, |t_A - t_B| <= max_days, and both posted >= min_age_days before the crawl time
    (`config.crawl_time`, else the newest timestamp among the posts given).
  * Each caption, with hashtags (#\\w+) and @mentions (@[\\w.]+) removed, has at most
    max_caption_words words, and A and B carry the same hashtags and the same mentions
    (case-insensitive sets).
  * Single still images with likes >= min_likes; each image is in at most one PDIP.

Matching (deterministic, greedy): per user, eligible posts are walked in (timestamp, post_id)
order; each still unmatched post takes, among the later unmatched posts that satisfy all pair
constraints with it, the one closest in time (ties: larger |S_A - S_B|, then smaller post_id).
"""

import collections
import dataclasses
import math
import re
from collections.abc import Sequence

from scipy import stats

from ipa_jax.data.groups import random_split
from ipa_jax.data.instagram import Post

TOO_FEW_LIKES = "too few likes"
TOO_RECENT = "too recent"
CAPTION_TOO_LONG = "caption too long"
NOT_SINGLE_IMAGE = "not a single image"
NO_PDIP_PARTNER = "no pdip partner"
_DAY = 86400

_HASHTAG = re.compile(r"#\w+")
_MENTION = re.compile(r"@[\w.]+")
_WORD = re.compile(r"\w")

Pair = tuple[Post, Post]


@dataclasses.dataclass(frozen=True)
class PdipConfig:
    threshold: float = 0.95
    sigma: float = 0.3
    max_days: float = 10.0
    min_age_days: float = 30.0
    max_caption_words: int = 6
    min_likes: int = 50
    crawl_time: int | None = None  # Seconds; None: newest timestamp among the posts.

    def __post_init__(self):
        if self.min_likes < 1:
            raise ValueError("min_likes must be >= 1 (ln(likes) is undefined at 0)")
        min_log_likes_gap(self.threshold, self.sigma)  # Validates both.


def min_log_likes_gap(threshold: float, sigma: float) -> float:
    """The smallest ln(likes_A) - ln(likes_B) with Phi(gap / (sqrt(2) sigma)) >= threshold."""
    if not 0 < threshold < 1 or not sigma > 0:
        raise ValueError(f"need 0 < threshold < 1 and sigma > 0, got {threshold}, {sigma}")
    return math.sqrt(2.0) * sigma * float(stats.norm.ppf(threshold))


def caption_tags(caption: str) -> tuple[frozenset[str], frozenset[str], int]:
    """Splits a caption into its hashtags, @mentions and the number of remaining words.

    Tags are lower-cased; a trailing "." on a mention is punctuation (Instagram names cannot end
    in "."). Words are whitespace-separated tokens with at least one letter or digit, so lone
    emoji or punctuation do not count.

    Returns:
      (hashtags, mentions, word count).
    """
    hashtags = frozenset(t.lower() for t in _HASHTAG.findall(caption))
    mentions = frozenset(m.rstrip(".").lower() for m in _MENTION.findall(caption))
    rest = _MENTION.sub(" ", _HASHTAG.sub(" ", caption))
    words = sum(1 for tok in rest.split() if _WORD.search(tok))
    return hashtags, mentions, words


def _gap_ok(likes_a: int, likes_b: int, gap: float) -> bool:
    return abs(math.log(likes_a) - math.log(likes_b)) >= gap


def is_discriminable(likes_a: float, likes_b: float, threshold: float = 0.95,
                     sigma: float = 0.3) -> bool:
    """Whether the post with more likes beats the other with probability >= threshold."""
    if likes_a <= 0 or likes_b <= 0:
        raise ValueError(f"likes must be positive, got {likes_a}, {likes_b}")
    return _gap_ok(likes_a, likes_b, min_log_likes_gap(threshold, sigma))


def _drop_reason(p: Post, tags, config: PdipConfig, newest_allowed: float) -> str | None:
    if p.is_video or p.typename != "GraphImage" or len(p.image_paths) != 1:
        return NOT_SINGLE_IMAGE  # read_posts never returns these; guard other callers.
    if p.likes < config.min_likes:
        return TOO_FEW_LIKES
    if p.timestamp > newest_allowed:
        return TOO_RECENT
    if tags[2] > config.max_caption_words:
        return CAPTION_TOO_LONG
    return None


def _match_user(posts: list[Post], tags: dict, max_dt: float, gap: float) -> list[Pair]:
    """Greedy matching of one user's eligible posts, sorted by (timestamp, post_id)."""
    matched = [False] * len(posts)
    pairs = []
    for i, a in enumerate(posts):
        if matched[i]:
            continue
        best, best_key = None, None
        for j in range(i + 1, len(posts)):
            b = posts[j]
            dt = b.timestamp - a.timestamp
            if dt > max_dt:
                break  # Sorted by time: no later post can qualify.
            if matched[j] or tags[a.post_id][:2] != tags[b.post_id][:2]:
                continue
            if not _gap_ok(a.likes, b.likes, gap):
                continue
            key = (dt, -abs(math.log(a.likes) - math.log(b.likes)), b.post_id)
            if best_key is None or key < best_key:
                best, best_key = j, key
        if best is not None:
            matched[i] = matched[best] = True
            b = posts[best]
            pairs.append((a, b) if a.likes > b.likes else (b, a))
    return pairs


def make_pdips(posts: Sequence[Post],
               config: PdipConfig = PdipConfig()) -> tuple[list[Pair], collections.Counter]:
    """Builds PDIPs (rules and matching in the module docstring).

    Returns:
      ((winner, loser) pairs, winner with more likes, ordered by user then time of the earlier
      post; Counter of posts in no pair by reason). 2 * len(pairs) + sum(counter) == len(posts).
    """
    dropped = collections.Counter()
    if not posts:
        return [], dropped
    crawl_time = config.crawl_time
    if crawl_time is None:
        crawl_time = max(p.timestamp for p in posts)
    newest_allowed = crawl_time - config.min_age_days * _DAY
    gap = min_log_likes_gap(config.threshold, config.sigma)

    tags = {}
    by_user = collections.defaultdict(list)
    for p in posts:
        post_tags = caption_tags(p.caption)
        reason = _drop_reason(p, post_tags, config, newest_allowed)
        if reason:
            dropped[reason] += 1
        else:
            tags[p.post_id] = post_tags
            by_user[p.user].append(p)

    pairs = []
    for user in sorted(by_user):
        user_posts = sorted(by_user[user], key=lambda p: (p.timestamp, p.post_id))
        user_pairs = _match_user(user_posts, tags, config.max_days * _DAY, gap)
        pairs.extend(user_pairs)
        if unmatched := len(user_posts) - 2 * len(user_pairs):
            dropped[NO_PDIP_PARTNER] += unmatched
    return pairs, dropped


def _resolve_count(value: float | int, n: int, name: str) -> int:
    """A split size: 0, a fraction in (0, 1) of `n` (rounded), or a whole count >= 1.

    A whole float such as 50000.0 is a count: `ml_collections` stores an int given for a float
    field (e.g. `--config.prep.pdips.validation=50000`) as a float.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a fraction or a count, got {value!r}")
    if value == 0:
        return 0
    if 0 < value < 1:
        return int(math.floor(value * n + 0.5))
    if value >= 1 and value == int(value):
        return int(value)
    raise ValueError(f"{name} must be a fraction in (0, 1) or a whole count >= 1, got {value}")


def _is_count(value: float | int) -> bool:
    return value >= 1


@dataclasses.dataclass(frozen=True)
class SplitSizes:
    """The PDIP split actually made, and why when it is not the one asked for."""

    train: int
    validation: int
    test: int
    asked: tuple[float, float]  # (validation, test) as configured: counts or fractions
    used: tuple[float, float]  # what set the sizes: `asked`, or the fallback fractions
    notice: str | None = None  # why `used` differs from `asked`; None when they agree

    def as_dict(self) -> dict:
        """The record kept in summary.json."""
        number = lambda v: int(v) if _is_count(v) else float(v)
        return {"asked": {"validation": number(self.asked[0]), "test": number(self.asked[1])},
                "used": {"validation": number(self.used[0]), "test": number(self.used[1])},
                "pairs": {"train": self.train, "validation": self.validation,
                          "test": self.test},
                "notice": self.notice}


def split_sizes(n: int, *, validation: float | int, test: float | int,
                fallback: Sequence[float] = ()) -> SplitSizes:
    """The validation and test sizes for `n` pairs; the rest is train.

    `validation` and `test` are fractions in (0, 1) of the pairs or whole counts (Ding et al.:
    50,000 each). When counts are asked for and they would take more pairs than the fallback
    fractions (validation, test) would, i.e. the data is too small for them (under 500,000
    pairs for 50,000 + 50,000 against 0.1 / 0.1), the fallback fractions are used instead and
    `notice` says so. The switch is continuous: at the crossing both give the same sizes, and
    more pairs never leave fewer for training. Without `fallback`, counts that do not fit are an
    error.
    """
    asked = (validation, test)
    n_val = _resolve_count(validation, n, "validation")
    n_test = _resolve_count(test, n, "test")
    used, notice = asked, None
    if fallback and any(_is_count(v) for v in asked):
        fb_val = _resolve_count(fallback[0], n, "fallback validation")
        fb_test = _resolve_count(fallback[1], n, "fallback test")
        if n_val + n_test > fb_val + fb_test:
            notice = (f"validation/test asked as {_describe(validation)} / {_describe(test)} "
                      f"PDIPs, but there are only {n:,} PDIPs: those would take more than the "
                      f"fallback fractions {fallback[0]:g} / {fallback[1]:g} "
                      f"({fb_val:,} / {fb_test:,}), so the fractions were used "
                      "(config.prep.pdips.validation, test, fallback)")
            used, n_val, n_test = (fallback[0], fallback[1]), fb_val, fb_test
    if n_val + n_test > n:
        raise ValueError(f"validation ({n_val}) + test ({n_test}) exceed the {n} pairs")
    return SplitSizes(train=n - n_val - n_test, validation=n_val, test=n_test, asked=asked,
                      used=used, notice=notice)


def _describe(value: float | int) -> str:
    return f"{int(value):,}" if _is_count(value) else f"{value:g} of them"


def split_pdips(pairs: Sequence[Pair], *, validation: float | int, test: float | int,
                seed: int = 0, fallback: Sequence[float] = ()
                ) -> tuple[dict[str, list[Pair]], SplitSizes]:
    """Randomly splits pairs into train/validation/test.

    Args:
      validation, test: a float in (0, 1) is a fraction of all pairs (rounded), a whole number
        >= 1 a count (Ding et al. use 50,000 each). The rest goes to train.
      fallback: (validation, test) fractions used instead of counts that the data is too small
        for (`split_sizes`); empty: such counts are an error.

    Returns:
      ({split: pairs}, the sizes used and any notice about them).
    """
    sizes = split_sizes(len(pairs), validation=validation, test=test, fallback=fallback)
    parts = {"train": sizes.train, "validation": sizes.validation, "test": sizes.test}
    return random_split(pairs, parts, seed), sizes
