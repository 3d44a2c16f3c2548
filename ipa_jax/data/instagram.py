# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Reads posts in the Instagram Influencer Dataset format (Kim et al.).

Layout under `raw_dir`:

  influencers.txt               Username, Category, #Followers, #Followees, #Posts (tab-separated)
  JSON-Image_files_mapping.txt  Influencer_name, JSON_PostMetadata_file_name, Image_file_name
                                e.g. `alice\t123.info\t['123.jpg']` (last column a Python list)
  info/<user>-<postid>.info     Instagram GraphQL JSON of one post
  image/<user>-<name>           JPEG files

`read_posts` streams the mapping file and keeps only posts usable as one still image. Every row it
does not keep is counted under exactly one reason (see `DROP_REASONS`), checked in that order, so
`len(posts) + sum(dropped.values())` equals the number of non-blank mapping rows.

Text files may start with a UTF-8 byte order mark. A mapping row that is not valid UTF-8 (e.g. a
user name in Latin-1) is dropped as "non-utf-8 mapping row": its names could not be written to
the CSV manifests or TFRecords. A post whose `taken_at_timestamp` lies before Instagram's launch
(2010-10-06) or after the time of reading (e.g. milliseconds instead of seconds) is dropped as
"implausible timestamp"; `estimate_crawl_time` then finds the crawl time robustly among the rest,
and `drop_after_crawl` counts posts taken after it.
"""

import ast
import codecs
import collections
import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
import time
from collections.abc import Iterator

import tqdm

from ipa_jax import images

MAPPING_FILE = "JSON-Image_files_mapping.txt"
INFLUENCERS_FILE = "influencers.txt"

# Drop reasons in the order they are checked.
NON_UTF8_ROW = "non-utf-8 mapping row"
BAD_MAPPING_ROW = "bad mapping row"
DUPLICATE_POST = "duplicate post"
NOT_A_TOP_USER = "not among the top users"  # read_posts(users=...): another influencer's post
MISSING_METADATA_FILE = "missing metadata file"
UNREADABLE_METADATA = "unreadable metadata"
MISSING_METADATA_FIELD = "missing metadata field"  # absent, or of the wrong type or not text
IMPLAUSIBLE_TIMESTAMP = "implausible timestamp"  # before min_timestamp or after max_timestamp
VIDEO = "video"
SIDECAR = "sidecar"
MISSING_IMAGE_FILE = "missing image file"
UNREADABLE_IMAGE = "unreadable image"
DROP_REASONS = (NON_UTF8_ROW, BAD_MAPPING_ROW, DUPLICATE_POST, NOT_A_TOP_USER,
                MISSING_METADATA_FILE,
                UNREADABLE_METADATA, MISSING_METADATA_FIELD, IMPLAUSIBLE_TIMESTAMP, VIDEO, SIDECAR,
                MISSING_IMAGE_FILE, UNREADABLE_IMAGE)
# Counted by `drop_after_crawl` (the crawl time needs every post's timestamp).
AFTER_CRAWL_TIME = "after crawl time"
# Counted by `read_influencers`.
BAD_INFLUENCER_ROW = "bad influencer row"
DUPLICATE_INFLUENCER = "duplicate influencer"

INSTAGRAM_LAUNCH = 1286323200  # 2010-10-06 00:00 UTC: no post is older
_DAY = 86400

_TYPENAMES = ("GraphImage", "GraphSidecar", "GraphVideo")
# Rows are handed to the thread pool in chunks so memory stays bounded on ~10M rows.
_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class Post:
    """One post that can be used as a single still image."""

    post_id: str  # "<username>-<postid>", the .info file stem; globally unique.
    user: str
    timestamp: int  # Seconds since the epoch.
    likes: int
    caption: str
    typename: str
    is_video: bool
    image_paths: tuple[str, ...]  # Relative to raw_dir: "image/<username>-<name>".
    comments: int = -1  # edge_media_to_comment.count; -1 where the metadata lacks it

    @property
    def image_path(self) -> str:
        return self.image_paths[0]


def _is_text(s: str) -> bool:
    """False for strings holding lone surrogates (undecodable bytes, broken JSON escapes)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _count(text: str) -> int:
    """A non-negative count, thousands separators allowed ("1,234"); ValueError otherwise."""
    value = int(text.replace(",", ""))
    if value < 0:
        raise ValueError(text)
    return value


def has_sidecar_files(raw_dir: str, folder: str, suffix: str) -> bool:
    """Whether `<raw_dir>/<folder>/` holds at least one file ending in `suffix` (a signal the
    dataset has at all: keypoints, captions, ...)."""
    path = os.path.join(raw_dir, folder)
    if not os.path.isdir(path):
        return False
    with os.scandir(path) as entries:
        return any(e.name.endswith(suffix) for e in entries)


def read_influencers(raw_dir: str | os.PathLike) -> tuple[dict[str, dict], collections.Counter]:
    """Reads influencers.txt; never raises on a bad line.

    Skipped, not counted: blank lines, the header, separator lines (only "=" or "-", as under
    the header of the released file). Counted: rows without 5 tab-separated columns, with a
    count that is not a non-negative integer or with a name that is not valid UTF-8
    ("bad influencer row"), and repeated user names ("duplicate influencer"; the first wins).

    Returns:
      (username -> {"category": str, "followers": int, "followees": int, "posts": int},
       Counter of dropped lines by reason).
    """
    out, dropped = {}, collections.Counter()
    path = os.path.join(raw_dir, INFLUENCERS_FILE)
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        header_seen = False
        for line in f:
            text = line.strip()
            if not text or not text.strip("=-\t "):
                continue
            cols = [c.strip() for c in line.rstrip("\r\n").split("\t")]
            if not header_seen and cols[0].lower() == "username":
                header_seen = True
                continue
            header_seen = True
            try:
                user, category, followers, followees, posts = cols
                if not (_is_safe_name(user) and _is_text(line)):
                    raise ValueError(user)
                row = {"category": category, "followers": _count(followers),
                       "followees": _count(followees), "posts": _count(posts)}
            except ValueError:
                dropped[BAD_INFLUENCER_ROW] += 1
                continue
            if user in out:
                dropped[DUPLICATE_INFLUENCER] += 1
            else:
                out[user] = row
    return out, dropped


def top_users(influencers: dict[str, dict], n: int) -> frozenset[str]:
    """The `n` influencers with the most followers (ties: by name), e.g. the paper's Top3000."""
    ranked = sorted(influencers, key=lambda u: (-influencers[u]["followers"], u))
    return frozenset(ranked[:n])


def _is_safe_name(name: str) -> bool:
    # Names become path components; refuse anything that could leave the raw directory.
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def _parse_mapping_row(line: str) -> tuple[str, str, tuple[str, ...]] | None:
    """Returns (username, post_id, image names), or None for a malformed row."""
    cols = line.rstrip("\r\n").split("\t")
    if len(cols) != 3:
        return None
    user, info_name, images = (c.strip() for c in cols)
    if not info_name.endswith(".info"):
        return None
    try:
        names = ast.literal_eval(images)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(names, (list, tuple)) or not names:
        return None
    if not all(isinstance(n, str) and _is_safe_name(n) for n in names):
        return None
    post_id = f"{user}-{info_name[:-len('.info')]}"
    if not (_is_safe_name(user) and _is_safe_name(post_id)):
        return None
    return user, post_id, tuple(names)


def mapping_lines(raw_dir: str | os.PathLike) -> Iterator[str]:
    """Yields the non-blank data lines of the mapping file (header and byte order mark skipped).

    Undecodable bytes become lone surrogates (surrogateescape); `read_posts` counts such rows.
    """
    with open(os.path.join(raw_dir, MAPPING_FILE), encoding="utf-8-sig",
              errors="surrogateescape") as f:
        for lineno, line in enumerate(f):
            if lineno == 0 and line.split("\t")[0].strip() == "Influencer_name":
                continue
            if line.strip():
                yield line


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_metadata(meta) -> tuple | None:
    """Returns (user, timestamp, likes, caption, typename, is_video), None if a field is bad."""
    try:
        owner = meta["owner"]
        user = owner["username"]
        owner_id = owner["id"]
        timestamp = meta["taken_at_timestamp"]
        likes = meta["edge_media_preview_like"]["count"]
        edges = meta["edge_media_to_caption"]["edges"]
        caption = edges[0]["node"]["text"] if edges else ""
        is_video = meta["is_video"]
        typename = meta["__typename"]
        shortcode = meta["shortcode"]
    except (KeyError, IndexError, TypeError):
        return None
    ok = (isinstance(user, str) and user and _is_text(user)
          and (isinstance(owner_id, str) or _is_int(owner_id))
          and _is_int(timestamp) and _is_int(likes) and likes >= 0
          and isinstance(edges, list) and isinstance(caption, str)
          and isinstance(is_video, bool) and typename in _TYPENAMES
          and isinstance(shortcode, str))
    if ok and not _is_text(caption):  # a broken escape in a caption: keep the post, mend the text
        caption = caption.encode("utf-8", "replace").decode("utf-8")
    return (user, timestamp, likes, caption, typename, is_video) if ok else None


def _image_problem(path: str, decode: bool) -> str | None:
    if not os.path.isfile(path):
        return MISSING_IMAGE_FILE
    if decode:
        # Decoded as training will read it: an RGB JPEG, stored as is, by TensorFlow (a
        # truncated one PIL reads with a warning fails there); anything else by PIL, as
        # data_prep re-encodes it. Images above `images.MAX_PIXELS` are refused undecoded.
        try:
            images.read_rgb(path)
        except Exception:  # PIL raises many types (OSError, SyntaxError, ...); TF, ImageTooLarge.
            return UNREADABLE_IMAGE
    return None


def parse_line(line: str) -> tuple[str, str, tuple[str, ...]] | str:
    """A mapping line's (username, post_id, image names), or the reason it is dropped."""
    if not _is_text(line):
        return NON_UTF8_ROW
    return _parse_mapping_row(line) or BAD_MAPPING_ROW


def select_rows(rows, users: frozenset[str] | None):
    """Which parsed mapping rows (`parse_line`, in file order) are read: each post's first row;
    its later rows are "duplicate post", the rows of influencers outside `users` (not None) are
    "not among the top users". Yields each row or its drop reason; reasons pass through."""
    seen = set()
    for row in rows:
        if isinstance(row, str):
            yield row
        elif row[1] in seen:
            yield DUPLICATE_POST
        elif users is not None and row[0] not in users:
            yield NOT_A_TOP_USER
        else:
            seen.add(row[1])
            yield row


def load_post(raw_dir: str, user: str, post_id: str, names: tuple[str, ...],
               check_images: bool, timestamp_range: tuple[int, int]) -> Post | str:
    """Loads one mapping row; returns the Post or the reason it was dropped."""
    try:
        with open(os.path.join(raw_dir, "info", post_id + ".info"), "rb") as f:
            raw = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return MISSING_METADATA_FILE
    except OSError:
        return UNREADABLE_METADATA
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors.
        return UNREADABLE_METADATA
    fields = _parse_metadata(meta)
    if fields is None:
        return MISSING_METADATA_FIELD
    comments = meta.get("edge_media_to_comment", {}).get("count", -1)
    comments = comments if _is_int(comments) and comments >= 0 else -1
    owner, timestamp, likes, caption, typename, is_video = fields
    if not timestamp_range[0] <= timestamp <= timestamp_range[1]:
        return IMPLAUSIBLE_TIMESTAMP
    if is_video or typename == "GraphVideo":
        return VIDEO
    # A GraphImage listing several files is not a single still image either.
    if typename == "GraphSidecar" or len(names) > 1:
        return SIDECAR
    image_paths = tuple(f"image/{user}-{n}" for n in names)
    for p in image_paths:
        problem = _image_problem(os.path.join(raw_dir, p), decode=check_images)
        if problem:
            return problem
    return Post(post_id=post_id, user=owner, timestamp=timestamp, likes=likes, caption=caption,
                typename=typename, is_video=is_video, image_paths=image_paths, comments=comments)


def read_posts(raw_dir: str | os.PathLike, *, check_images: bool = True, progress: bool = True,
               num_threads: int = 8, min_timestamp: int = INSTAGRAM_LAUNCH,
               max_timestamp: int | None = None, users: frozenset[str] | None = None
               ) -> tuple[list[Post], collections.Counter]:
    """Reads all single-still-image posts listed in the mapping file.

    Never raises on bad rows, metadata or images: they are counted in the returned Counter.
    Image files must always exist; `check_images=False` only skips decoding them.

    Args:
      raw_dir: dataset root. check_images: decode every kept image with the decoder that will
        read it (`ipa_jax.images.read_rgb`: TensorFlow for RGB JPEGs, PIL otherwise), within
        the pixel limit.
      progress: show a tqdm bar. num_threads: worker threads for file reads (<= 1: inline).
      min_timestamp, max_timestamp: the plausible range of `taken_at_timestamp` (seconds);
        posts outside it are dropped as "implausible timestamp". max_timestamp None: now.
      users: only these influencers' posts are read (`top_users`); the others' rows are
        counted as "not among the top users", before any file is opened. None: everyone.
    Returns:
      (posts sorted by (user, timestamp, post_id), Counter of dropped rows by reason).
    """
    raw_dir = os.fspath(raw_dir)
    timestamp_range = (min_timestamp, int(time.time()) if max_timestamp is None else max_timestamp)
    dropped = collections.Counter()
    posts = []

    def jobs(lines):
        for row in select_rows(map(parse_line, lines), users):
            if isinstance(row, str):
                dropped[row] += 1
            else:
                yield row

    def collect(results):
        for r in results:
            if isinstance(r, Post):
                posts.append(r)
            else:
                dropped[r] += 1

    load = lambda row: load_post(raw_dir, *row, check_images, timestamp_range)
    lines = tqdm.tqdm(mapping_lines(raw_dir), desc="posts", unit=" rows", disable=not progress)
    if num_threads <= 1:
        collect(map(load, jobs(lines)))
    else:
        with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
            rows = jobs(lines)
            while chunk := list(itertools.islice(rows, _CHUNK)):
                collect(pool.map(load, chunk))
    posts.sort(key=lambda p: (p.user, p.timestamp, p.post_id))
    return posts, dropped


def estimate_crawl_time(timestamps, *, slack_days: float = 30.0, quantile: float = 0.99) -> int:
    """A crawl time that a few wrong timestamps cannot move.

    The newest timestamp at most `slack_days` after the `quantile` of all timestamps (an actual
    timestamp, no interpolation; for fewer than 101 posts the second newest or older), so a
    lone post far after the others does not become the crawl time. On a dataset without such
    outliers this is the newest timestamp.
    """
    ts = sorted(timestamps)
    if not ts:
        raise ValueError("no timestamp to estimate the crawl time from")
    q = ts[math.floor(quantile * (len(ts) - 1))]
    limit = q + slack_days * _DAY
    return max(t for t in ts if t <= limit)


def drop_after_crawl(posts: list[Post], crawl_time: int,
                     dropped: collections.Counter) -> list[Post]:
    """The posts taken no later than `crawl_time`; the others are counted as "after crawl time"."""
    kept = [p for p in posts if p.timestamp <= crawl_time]
    if len(kept) < len(posts):
        dropped[AFTER_CRAWL_TIME] += len(posts) - len(kept)
    return kept
