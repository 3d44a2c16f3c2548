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
"""

import ast
import collections
import concurrent.futures
import dataclasses
import itertools
import json
import os
from collections.abc import Iterator

import tqdm
from PIL import Image

MAPPING_FILE = "JSON-Image_files_mapping.txt"
INFLUENCERS_FILE = "influencers.txt"

# Drop reasons in the order they are checked.
BAD_MAPPING_ROW = "bad mapping row"
DUPLICATE_POST = "duplicate post"
MISSING_METADATA_FILE = "missing metadata file"
UNREADABLE_METADATA = "unreadable metadata"
MISSING_METADATA_FIELD = "missing metadata field"
VIDEO = "video"
SIDECAR = "sidecar"
MISSING_IMAGE_FILE = "missing image file"
UNREADABLE_IMAGE = "unreadable image"
DROP_REASONS = (BAD_MAPPING_ROW, DUPLICATE_POST, MISSING_METADATA_FILE, UNREADABLE_METADATA,
                MISSING_METADATA_FIELD, VIDEO, SIDECAR, MISSING_IMAGE_FILE, UNREADABLE_IMAGE)

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


def read_influencers(raw_dir: str | os.PathLike) -> dict[str, dict]:
    """Reads influencers.txt.

    Returns:
      username -> {"category": str, "followers": int, "followees": int, "posts": int}.
    """
    out = {}
    path = os.path.join(raw_dir, INFLUENCERS_FILE)
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, start=1):
            cols = line.rstrip("\r\n").split("\t")
            if lineno == 1 and cols[0].strip().lower() == "username":
                continue
            if not line.strip():
                continue
            if len(cols) != 5:
                raise ValueError(f"{path}:{lineno}: expected 5 columns, got {len(cols)}")
            user, category, followers, followees, posts = (c.strip() for c in cols)
            out[user] = {"category": category, "followers": int(followers),
                         "followees": int(followees), "posts": int(posts)}
    return out


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


def _iter_mapping(raw_dir: str | os.PathLike) -> Iterator[str]:
    """Yields the non-blank data lines of the mapping file (header skipped)."""
    with open(os.path.join(raw_dir, MAPPING_FILE), encoding="utf-8",
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
    ok = (isinstance(user, str) and user and (isinstance(owner_id, str) or _is_int(owner_id))
          and _is_int(timestamp) and _is_int(likes) and likes >= 0
          and isinstance(edges, list) and isinstance(caption, str)
          and isinstance(is_video, bool) and typename in _TYPENAMES
          and isinstance(shortcode, str))
    return (user, timestamp, likes, caption, typename, is_video) if ok else None


def _image_problem(path: str, decode: bool) -> str | None:
    if not os.path.isfile(path):
        return MISSING_IMAGE_FILE
    if decode:
        try:
            with Image.open(path) as im:
                im.load()
        except Exception:  # PIL raises many types (OSError, SyntaxError, DecompressionBomb...).
            return UNREADABLE_IMAGE
    return None


def _load_post(raw_dir: str, user: str, post_id: str, names: tuple[str, ...],
               check_images: bool) -> Post | str:
    """Loads one mapping row; returns the Post or the reason it was dropped."""
    try:
        with open(os.path.join(raw_dir, "info", post_id + ".info"), "rb") as f:
            raw = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return MISSING_METADATA_FILE
    except OSError:
        return UNREADABLE_METADATA
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
               num_threads: int = 8) -> tuple[list[Post], collections.Counter]:
    """Reads all single-still-image posts listed in the mapping file.

    Never raises on bad rows, metadata or images: they are counted in the returned Counter.
    Image files must always exist; `check_images=False` only skips decoding them.

    Args:
      raw_dir: dataset root. check_images: fully decode every kept image with PIL.
      progress: show a tqdm bar. num_threads: worker threads for file reads (<= 1: inline).
    Returns:
      (posts sorted by (user, timestamp, post_id), Counter of dropped rows by reason).
    """
    raw_dir = os.fspath(raw_dir)
    dropped = collections.Counter()
    posts = []
    seen = set()

    def jobs(lines):
        for line in lines:
            row = _parse_mapping_row(line)
            if row is None:
                dropped[BAD_MAPPING_ROW] += 1
            elif row[1] in seen:
                dropped[DUPLICATE_POST] += 1
            else:
                seen.add(row[1])
                yield row

    def collect(results):
        for r in results:
            if isinstance(r, Post):
                posts.append(r)
            else:
                dropped[r] += 1

    load = lambda row: _load_post(raw_dir, *row, check_images)
    lines = tqdm.tqdm(_iter_mapping(raw_dir), desc="posts", unit=" rows", disable=not progress)
    if num_threads <= 1:
        collect(map(load, jobs(lines)))
    else:
        with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
            rows = jobs(lines)
            while chunk := list(itertools.islice(rows, _CHUNK)):
                collect(pool.map(load, chunk))
    posts.sort(key=lambda p: (p.user, p.timestamp, p.post_id))
    return posts, dropped
