# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Writes a small synthetic dataset in the on-disk format of the Instagram Influencer Dataset.

Same layout as Kim et al.'s dataset (`influencers.txt`, `JSON-Image_files_mapping.txt`,
`info/<user>-<postid>.info` GraphQL JSON, `image/<user>-<name>.jpg`) plus what annotators would
add, drawn with the scenes (`ipa_jax.data.embedded_scenes`), so the whole pipeline runs without
real data; each annotation file is `<folder>/<user>-<postid>.<ext>`, one per readable
single-image post (none for multi-image "sidecar" or video posts, nor a missing or corrupt image):

- `depth/*.png`: 16-bit PNG depth maps (value / 65535, 0 = nearest);
- `keypoints/*.json`: COCO keypoint-detection results of the stick-figure persons;
- `background/*.png`: 8-bit grey background masks at the image's size, 255 = background (sky,
  ground, wall, floor, table, mountains), 0 = a person or an object, drawn by the renderer;
- `captions/*.txt`: a generated caption (`embedded_scenes.caption`: kind, people, objects, near
  or far subject, colour, light, blur), UTF-8, one line.

Popularity is planted so that pairs of same-user posts carry a learnable signal:

    ln(likes) = follower_level_u + trend_u * years_since_start + appeal(image) + taste_u[kind]
                + noise,   likes = max(0, round(exp(ln(likes))))

- follower_level_u = ln(followers) + ln(engagement), ln(followers) ~ N(11, 1.2) clipped to
  [ln 5e3, ln 5e6], engagement ~ U(2%, 4%); trend_u ~ N(0.3, 0.3) per year from 2018-03-01;
- appeal: a fixed function of the drawn content (`ipa_jax.data.embedded_scenes`, std ~0.68), with a
  3D term (+0.5 when the main subject stands in the near third of the depth range); a
  sidecar's is its first image's, a video's its thumbnail's;
- taste_u[kind] ~ N(0, 0.4) per scene kind (people / food / landscape / object); noise ~ N(0, 0.35).

Users post every 1-2 days on average (mean gap clip(330 / posts_per_user, 1, 2) days) until just
before the crawl (2019-03-01 UTC); their own captions (in the `.info`) come from
`embedded_scenes.post_caption`. Defects, each kind at least once and on ~0.4% of posts, on
distinct single-image posts: missing `.info`, malformed JSON, missing like count, missing
timestamp, missing image, unreadable (truncated) JPEG;
`low_likes` lists every post whose readable `.info` reports < 50 likes (some are planted if too
few occur naturally). All are listed in `dataset.json`, written last: a directory without it is
incomplete. `planted_truth.csv` (not part of the real format) holds every term of the formula for
every post.
"""

import csv
import dataclasses
import datetime
import json
import math
import os
import shutil
import string
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from ipa_jax import config_lib
from ipa_jax.data import embedded_scenes as scenes

GENERATOR = "ipa_jax.data_prep.embedded"
CRAWL_TIMESTAMP = int(datetime.datetime(2019, 3, 1, tzinfo=datetime.timezone.utc).timestamp())
SIZES: dict[str, dict] = {
    "tiny": dict(num_users=6, posts_per_user=50, image_size=48),
    "demo": dict(num_users=100, posts_per_user=100, image_size=80),
    "small": dict(num_users=200, posts_per_user=150, image_size=128),
    "medium": dict(num_users=1000, posts_per_user=200, image_size=256),
}
DEFECT_KINDS = ("missing_info", "malformed_json", "missing_likes", "missing_timestamp",
                "missing_image", "corrupt_image", "low_likes")
LOW_LIKES = 50
NOISE_STD = 0.35

_DAY = 86400
_YEAR = 365.25 * _DAY
_DEFECT_RATE = 0.004
_INCOMPLETE = ".incomplete"
_SIDECARS = ("depth", "keypoints", "background", "captions")
_OUTPUTS = frozenset({"influencers.txt", "JSON-Image_files_mapping.txt", "info", "image",
                      *_SIDECARS, "planted_truth.csv", "dataset.json", "dataset.json.tmp",
                      _INCOMPLETE})
_SIDECAR_COUNTS = ("depth_maps", "keypoint_files", "background_masks", "caption_files")
_COUNT_KEYS = {"GraphImage": "image_posts", "GraphSidecar": "sidecar_posts",
               "GraphVideo": "video_posts"}
_IG_EPOCH_MS = 1314220021721  # Instagram media ids count milliseconds from here, shifted by 23 bits
_B64 = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
_CATEGORIES = {"people": ("fashion", "fitness", "beauty", "family"), "food": ("food",),
               "landscape": ("travel",), "object": ("interior", "pet", "other")}
_SUFFIXES = {"fashion": "style", "fitness": "fit", "beauty": "glow", "family": "family",
             "food": "eats", "travel": "travels", "interior": "interiors", "pet": "paws",
             "other": "daily"}
_NAMES = ("anna ben chloe diego emma felix grace hugo iris jonas kai lena mia noah olivia paul "
          "quinn rosa sam tara umar vera will xena yuki zoe leo nina omar lucy").split()


@dataclasses.dataclass
class _User:
    name: str
    owner_id: str
    category: str
    followers: int
    followees: int
    total_posts: int
    level: float
    slope: float
    taste: dict
    kind_probs: np.ndarray
    tag_sets: tuple


@dataclasses.dataclass
class _Post:
    user: _User
    postid: str
    timestamp: int
    typename: str
    scenes: tuple
    caption: str | None
    scores: tuple  # keypoint detection scores of the persons in the first image
    extras: tuple  # (comment ratio, comments disabled, video views per like)
    appeal: float
    taste: float
    trend: float
    noise: float

    @property
    def post_id(self) -> str:
        return f"{self.user.name}-{self.postid}"

    @property
    def expected(self) -> float:
        return self.user.level + self.trend + self.appeal + self.taste

    @property
    def likes(self) -> int:
        return max(0, int(math.floor(math.exp(self.expected + self.noise) + 0.5)))

    @property
    def image_names(self) -> list[str]:
        if self.typename == "GraphSidecar":
            return [f"{self.postid}_{i + 1}.jpg" for i in range(len(self.scenes))]
        return [f"{self.postid}.jpg"]


def _sample_user(rng: np.random.Generator, index: int, taken: set) -> _User:
    kind_probs = rng.dirichlet(np.full(len(scenes.KINDS), 2.0))
    category = str(rng.choice(_CATEGORIES[scenes.KINDS[int(np.argmax(kind_probs))]]))
    first, sep = str(rng.choice(_NAMES)), str(rng.choice(["_", ".", ""]))
    name = f"{first}{sep}{_SUFFIXES[category]}"
    if name in taken:
        name += str(index)
    taken.add(name)
    log_followers = float(np.clip(rng.normal(11.0, 1.2), math.log(5e3), math.log(5e6)))
    level = log_followers + math.log(rng.uniform(0.02, 0.04))
    brand = "#" + name.replace(".", "")
    pool = [str(t) for t in rng.choice(scenes.HASHTAGS, size=4, replace=False)]
    friend = "@" + str(rng.choice(_NAMES)) + str(rng.choice([".photo", "_", "official"]))
    return _User(
        name=name, owner_id=str(rng.integers(10**7, 10**10)), category=category,
        followers=int(round(math.exp(log_followers))), followees=int(rng.lognormal(6.0, 0.8)),
        total_posts=0, level=level, slope=float(rng.normal(0.3, 0.3)),
        taste={k: float(rng.normal(0.0, 0.4)) for k in scenes.KINDS}, kind_probs=kind_probs,
        tag_sets=((brand, *pool[:int(rng.integers(1, 3))]), (pool[2], pool[3], friend)),
    )


def _media_id(rng: np.random.Generator, timestamp: int, taken: set) -> int:
    ms = timestamp * 1000 + int(rng.integers(1000))
    shard, sequence = int(rng.integers(8192)), int(rng.integers(1024))
    media_id = ((ms - _IG_EPOCH_MS) << 23) | (shard << 10) | sequence
    while media_id in taken:
        media_id += 1
    taken.add(media_id)
    return media_id


def _shortcode(media_id: int) -> str:
    chars = []
    while media_id:
        media_id, r = divmod(media_id, 64)
        chars.append(_B64[r])
    return "".join(reversed(chars)).rjust(11, "A")


def _sample_posts(rng: np.random.Generator, user: _User, n: int, taken: set) -> list[_Post]:
    mean_gap = float(np.clip(330.0 / n, 1.0, 2.0)) * _DAY
    gaps = mean_gap * (0.3 + 0.7 * rng.exponential(1.0, n - 1))
    last = CRAWL_TIMESTAMP - rng.uniform(0.1, 2.0) * _DAY
    times = np.round(last - np.concatenate([[0.0], np.cumsum(gaps)])[::-1]).astype(np.int64)
    posts = []
    for t in times.tolist():
        u = rng.random()
        typename = "GraphVideo" if u < 0.05 else "GraphSidecar" if u < 0.12 else "GraphImage"
        kind = str(rng.choice(scenes.KINDS, p=user.kind_probs))
        count = int(rng.integers(2, 5)) if typename == "GraphSidecar" else 1
        drawn = tuple(scenes.sample_scene(rng, kind) for _ in range(count))
        posts.append(_Post(
            user=user, postid=str(_media_id(rng, t, taken)), timestamp=t, typename=typename,
            scenes=drawn, caption=scenes.post_caption(rng, user.tag_sets),
            scores=tuple(rng.uniform(0.8, 0.99, drawn[0].num_persons).tolist()),
            extras=(rng.uniform(0.005, 0.04), bool(rng.random() < 0.03), rng.uniform(3, 8)),
            appeal=scenes.appeal(drawn[0]), taste=user.taste[kind],
            trend=user.slope * (t - (CRAWL_TIMESTAMP - 365 * _DAY)) / _YEAR,
            noise=float(rng.normal(0.0, NOISE_STD)),
        ))
    return posts


def _plant_defects(rng: np.random.Generator, posts: list[_Post]) -> dict[str, list[_Post]]:
    """Picks distinct single-image posts for each defect kind; plants low-like posts if needed."""
    count = max(1, round(_DEFECT_RATE * len(posts)))
    singles = [i for i, p in enumerate(posts) if p.typename == "GraphImage"]
    kinds = DEFECT_KINDS[:-1]
    if len(singles) < count * (len(kinds) + 1):
        raise ValueError(f"too few posts ({len(posts)}) to plant every defect kind")
    chosen = rng.choice(singles, size=count * len(kinds), replace=False).tolist()
    defects = {k: [posts[i] for i in chosen[j * count:(j + 1) * count]]
               for j, k in enumerate(kinds)}
    hidden = {p.post_id for k in kinds[:4] for p in defects[k]}  # likes unreadable
    low = [p for p in posts if p.post_id not in hidden and p.likes < LOW_LIKES]
    spare = sorted(i for i in set(singles) - set(chosen) if posts[i].likes >= LOW_LIKES)
    if len(low) < count:
        for i in rng.choice(spare, size=count - len(low), replace=False).tolist():
            posts[i].noise = math.log(int(rng.integers(5, 46))) - posts[i].expected
            low.append(posts[i])
    defects["low_likes"] = low
    return defects


def _info(post: _Post, image_size: int) -> dict:
    """The GraphQL JSON of a post, with the field names of the real dataset."""
    user, likes = post.user, post.likes
    media_id = int(post.postid)
    dims = {"height": image_size, "width": image_size}
    info = {
        "__typename": post.typename, "id": post.postid, "shortcode": _shortcode(media_id),
        "dimensions": dims, "is_video": post.typename == "GraphVideo",
        "edge_media_to_caption": {"edges": [] if post.caption is None else
                                  [{"node": {"text": post.caption}}]},
        "comments_disabled": post.extras[1],
        "taken_at_timestamp": post.timestamp,
        "edge_media_to_comment": {"count": int(likes * post.extras[0])},
        "edge_media_preview_like": {"count": likes},
        "owner": {"id": user.owner_id, "username": user.name},
        "location": None,
    }
    if post.typename == "GraphVideo":
        info["video_view_count"] = int(likes * post.extras[2])
    if post.typename == "GraphSidecar":
        info["edge_sidecar_to_children"] = {"edges": [
            {"node": {"__typename": "GraphImage", "id": str(media_id + i + 1),
                      "shortcode": _shortcode(media_id + i + 1), "dimensions": dims,
                      "is_video": False}} for i in range(len(post.scenes))]}
    return info


def _write_sidecars(out: str, post: _Post, scene: scenes.Scene,
                    drawn: scenes.Rendered) -> None:
    """Writes the annotations of a single-image post: depth map, keypoints, background mask and
    generated caption (one of each, counted under `_SIDECAR_COUNTS`)."""
    pid = post.post_id
    scenes.depth_image(drawn.depth).save(os.path.join(out, "depth", f"{pid}.png"))
    with open(os.path.join(out, "keypoints", f"{pid}.json"), "w") as f:
        json.dump(scenes.keypoint_results(f"{pid}.jpg", drawn.keypoints, post.scores), f)
    scenes.background_image(drawn.foreground).save(os.path.join(out, "background", f"{pid}.png"))
    with open(os.path.join(out, "captions", f"{pid}.txt"), "w", encoding="utf-8") as f:
        f.write(scenes.caption(scene))


def _write_post(out: str, post: _Post, defect: str | None, image_size: int) -> dict[str, int]:
    """Writes the .info, images and (`_write_sidecars`) annotations of one post; returns file
    counts."""
    pid = post.post_id
    written = {"images": 0, **dict.fromkeys(_SIDECAR_COUNTS, 0)}
    if defect != "missing_info":
        info = _info(post, image_size)
        if defect == "missing_likes":
            del info["edge_media_preview_like"]
        if defect == "missing_timestamp":
            del info["taken_at_timestamp"]
        text = json.dumps(info)
        with open(os.path.join(out, "info", f"{pid}.info"), "w") as f:
            f.write(text[:len(text) // 2] if defect == "malformed_json" else text)
    if defect == "missing_image":
        return written
    for name, scene in zip(post.image_names, post.scenes, strict=True):
        drawn = scenes.render(scene, image_size)
        with open(os.path.join(out, "image", f"{post.user.name}-{name}"), "wb") as f:
            f.write(scenes.jpeg_bytes(drawn.rgb, truncated=defect == "corrupt_image"))
        written["images"] += 1
        if post.typename != "GraphImage" or defect == "corrupt_image":
            continue
        _write_sidecars(out, post, scene, drawn)
        for key in _SIDECAR_COUNTS:
            written[key] += 1
    return written


def _prepare_out_dir(out_dir: str) -> None:
    """Empties a previous embedded dataset in `out_dir`; refuses any other non-empty directory."""
    os.makedirs(out_dir, exist_ok=True)
    entries = set(os.listdir(out_dir))
    ours = not entries or _INCOMPLETE in entries
    try:
        with open(os.path.join(out_dir, "dataset.json")) as f:
            ours = ours or json.load(f).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        pass
    if not ours or entries - _OUTPUTS:
        what = (f"unexpected entries: {sorted(entries - _OUTPUTS)[:5]}" if entries - _OUTPUTS
                else "no dataset.json of this generator and no .incomplete marker")
        raise config_lib.DataError(
            f"Refusing to write the embedded dataset into non-empty directory {out_dir!r}: it is "
            f"not an embedded dataset ({what}), and its files are left as they are; choose a new "
            "or empty folder (for python -m ipa_jax.main: another --workdir, or set "
            "--config.data.raw_dir to your own dataset).")
    for entry in entries:
        path = os.path.join(out_dir, entry)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _write_tables(out: str, users: Sequence[_User], posts: Sequence[_Post]) -> None:
    with open(os.path.join(out, "influencers.txt"), "w") as f:
        f.write("Username\tCategory\t#Followers\t#Followees\t#Posts\n")
        for u in users:
            f.write(f"{u.name}\t{u.category}\t{u.followers}\t{u.followees}\t{u.total_posts}\n")
    with open(os.path.join(out, "JSON-Image_files_mapping.txt"), "w") as f:
        f.write("Influencer_name\tJSON_PostMetadata_file_name\tImage_file_name\n")
        for p in posts:
            f.write(f"{p.user.name}\t{p.postid}.info\t{p.image_names!r}\n")
    with open(os.path.join(out, "planted_truth.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["post_id", "user", "timestamp", "likes", "expected_log_likes", "appeal",
                         "taste", "follower_level", "trend", "noise", "subject_near", "kind"])
        for p in posts:
            terms = (p.expected, p.appeal, p.taste, p.user.level, p.trend, p.noise)
            writer.writerow([p.post_id, p.user.name, p.timestamp, p.likes]
                            + [f"{v:.6f}" for v in terms]
                            + [int(p.scenes[0].subject_is_near), p.scenes[0].kind])


def generate(out_dir: str, *, size: str = "demo", seed: int = 0, num_users: int | None = None,
             posts_per_user: int | None = None, image_size: int | None = None,
             progress: bool = True) -> dict:
    """Writes the dataset to `out_dir` (format in the module docstring).

    Returns: the content of the `dataset.json` it writes last.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid sizes: {sorted(SIZES)}")
    cfg = dict(SIZES[size])
    for key, value in (("num_users", num_users), ("posts_per_user", posts_per_user),
                       ("image_size", image_size)):
        cfg[key] = cfg[key] if value is None else int(value)
    if cfg["num_users"] < 1 or not 2 <= cfg["posts_per_user"] <= 1000 or cfg["image_size"] < 16:
        raise ValueError(f"need num_users >= 1, 2 <= posts_per_user <= 1000 and image_size >= 16, "
                         f"got {cfg}")
    _prepare_out_dir(out_dir)
    with open(os.path.join(out_dir, _INCOMPLETE), "w") as f:
        f.write("generation in progress or crashed; dataset.json is written last\n")

    root = np.random.SeedSequence(seed)
    user_seeds = root.spawn(cfg["num_users"])
    names, media_ids, users, posts = set(), set(), [], []
    for i, ss in enumerate(user_seeds):
        rng = np.random.default_rng(ss)
        user = _sample_user(rng, i, names)
        user_posts = _sample_posts(rng, user, cfg["posts_per_user"], media_ids)
        user.total_posts = len(user_posts) + int(rng.integers(0, 2 * len(user_posts) + 1))
        users.append(user)
        posts.extend(user_posts)
    defects = _plant_defects(np.random.default_rng(root.spawn(1)[0]), posts)
    defect_of = {p.post_id: k for k, ps in defects.items() if k != "low_likes" for p in ps}

    for sub in ("info", "image", *_SIDECARS):
        os.makedirs(os.path.join(out_dir, sub))
    _write_tables(out_dir, users, posts)
    counts = {"users": len(users), "posts": len(posts), "images": 0,
              **dict.fromkeys(_SIDECAR_COUNTS, 0)}
    for typename in ("GraphImage", "GraphSidecar", "GraphVideo"):
        counts[_COUNT_KEYS[typename]] = sum(p.typename == typename for p in posts)
    for post in tqdm(posts, desc="drawing posts", unit="post", disable=not progress):
        for key, n in _write_post(out_dir, post, defect_of.get(post.post_id),
                                  cfg["image_size"]).items():
            counts[key] += n

    meta = {
        "generator": GENERATOR, "format_version": 1, "seed": seed, "size": size, **cfg,
        "crawl_time": "2019-03-01T00:00:00Z", "crawl_timestamp": CRAWL_TIMESTAMP,
        "noise_std": NOISE_STD, "low_likes_threshold": LOW_LIKES, "counts": counts,
        "defects": {k: sorted(p.post_id for p in defects[k]) for k in DEFECT_KINDS},
        "defect_counts": {k: len(defects[k]) for k in DEFECT_KINDS},
    }
    tmp = os.path.join(out_dir, "dataset.json.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp, os.path.join(out_dir, "dataset.json"))
    os.remove(os.path.join(out_dir, _INCOMPLETE))
    return meta


def read_planted_truth(raw_dir: str) -> dict[str, float]:
    """Returns: post_id ("<username>-<postid>") -> expected_log_likes, from planted_truth.csv."""
    with open(os.path.join(raw_dir, "planted_truth.csv"), newline="") as f:
        return {row["post_id"]: float(row["expected_log_likes"]) for row in csv.DictReader(f)}
