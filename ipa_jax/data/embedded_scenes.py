# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Procedural content of embedded-dataset posts: scenes (attributes, appeal, drawing), captions.

A `Scene` holds the sampled content attributes of one image. `render` draws it (RGB, a depth map
consistent with the drawing, the COCO keypoints of every stick-figure person, and the foreground
mask of its subjects: every person and object, drawn with them; sky, ground, wall, floor, table
and distant mountains are background, and blur does not change it) as a pure function of the
scene and the image size; `caption` says in plain English what an image captioner would about it
(kind, people, objects, where the main subject stands, colour, light, blur), its wording varied
by a generator seeded from the scene alone; `post_caption` is the influencer's own text;
`appeal` is a fixed function of the attributes:

    appeal = 0.75 * warmth                      # warm (+1, orange) vs cool (-1, blue) colour
           + 1.8 * (brightness - 0.6)           # brightness in [0.25, 0.95]
           + 0.45 * [a person is present]
           + 0.1 * (num_objects - 2)            # 0..5 objects (trees, plates, items)
           - 0.5 * blur                         # blur in [0, 1]; 0 for ~70% of images
           + 0.5 * [the main subject is near]   # 3D: see below
           - 0.33                               # centres the mean near 0

The main subject is the first person, else the first object (a scene with neither has none).
`closeness` places its base on the floor, from the horizon (0) to the bottom edge (1): near
subjects (40% of scenes, closeness in [0.72, 1]) stand in the near third of the image's min-max
normalised depth range, the others (closeness in [0, 0.33]) behind it (`Rendered.subject_depth`;
the tests check both). Across scenes of all kinds the standard deviation of appeal is about 0.68,
and every term is visible at 32-64 px (warmth and brightness change almost every pixel, so they
dominate; the depth term is what the 3D-aware branch can find).
"""

import dataclasses
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("people", "food", "landscape", "object")

# The 17 COCO keypoints in COCO order, as (x, y) in units of person height, x from the body's
# centre line (+x = the person's left = image right, the person faces the camera), y from the top
# of the head down to the soles.
KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
_SKELETON = np.array([
    (0.0, 0.07), (0.025, 0.05), (-0.025, 0.05), (0.05, 0.06), (-0.05, 0.06),
    (0.11, 0.18), (-0.11, 0.18), (0.15, 0.33), (-0.15, 0.33), (0.17, 0.47), (-0.17, 0.47),
    (0.07, 0.52), (-0.07, 0.52), (0.08, 0.74), (-0.08, 0.74), (0.08, 0.96), (-0.08, 0.96),
])
_LIMBS = ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16))

_WARM = np.array([235.0, 130.0, 60.0])
_COOL = np.array([60.0, 120.0, 215.0])
_PERSON_PROB = {"people": 1.0, "food": 0.1, "landscape": 0.25, "object": 0.15}
_OBJECT_RANGE = {"people": (0, 2), "food": (1, 5), "landscape": (0, 4), "object": (1, 5)}
_NEAR = 0.15  # depth of the floor / ground at the bottom edge of the image
NEAR_SUBJECT = 2 / 3  # closeness at or above which the main subject is near
_NEAR_PROB = 0.4
_NEAR_CLOSENESS = (0.72, 1.0)
_FAR_CLOSENESS = (0.0, 0.33)
_WORDS = ("love this day sunny today new my favourite with the best weekend vibes so happy morning "
          "coffee time little moments good life always home back again feeling fresh look what a "
          "view late lunch friends sunday ready for more summer").split()
HASHTAGS = tuple("#" + t for t in (
    "instagood photooftheday love travel foodie ootd fitness nature sunset style home happy "
    "interiordesign dogsofinstagram beauty makeup family weekend summer coffee explore vegan "
    "wanderlust healthy art design mood fashionblogger").split())
_ENDINGS = ("!", "\u2728", "\u2764\ufe0f", "...")
_SKIN = ((241, 194, 160), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172))


@dataclasses.dataclass(frozen=True)
class Scene:
    """Content attributes of one image; `layout_seed` only moves things around."""

    kind: str
    warmth: float
    brightness: float
    num_persons: int
    num_objects: int
    blur: float
    layout_seed: int
    closeness: float = 0.0  # where the main subject stands: 0 = at the horizon, 1 = nearest

    @property
    def has_subject(self) -> bool:
        return self.num_persons > 0 or self.num_objects > 0

    @property
    def subject_is_near(self) -> bool:
        return self.has_subject and self.closeness >= NEAR_SUBJECT


@dataclasses.dataclass(frozen=True)
class Rendered:
    rgb: np.ndarray  # [S, S, 3] uint8
    depth: np.ndarray  # [S, S] float32 in [0, 1], 0 = nearest
    keypoints: list[np.ndarray]  # one [17, 3] array (x, y, visibility) per person
    subject_depth: float | None  # the main subject's depth, min-max normalised over the image
    foreground: np.ndarray  # [S, S] bool: True where a person or an object was drawn


def sample_scene(rng: np.random.Generator, kind: str) -> Scene:
    """Samples the content attributes of a scene of the given kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; valid: {KINDS}")
    num_persons = 0
    if rng.random() < _PERSON_PROB[kind]:
        num_persons = 2 if kind == "people" and rng.random() < 0.3 else 1
    lo, hi = _OBJECT_RANGE[kind]
    blur = 0.0 if rng.random() < 0.7 else float(rng.uniform(0.2, 1.0))
    band = _NEAR_CLOSENESS if rng.random() < _NEAR_PROB else _FAR_CLOSENESS
    return Scene(
        kind=kind,
        warmth=float(rng.uniform(-1.0, 1.0)),
        brightness=float(rng.uniform(0.25, 0.95)),
        num_persons=num_persons,
        num_objects=int(rng.integers(lo, hi + 1)),
        blur=blur,
        layout_seed=int(rng.integers(2**31)),
        closeness=float(rng.uniform(*band)),
    )


def appeal(scene: Scene) -> float:
    """The planted intrinsic appeal of a scene (formula in the module docstring)."""
    return (0.75 * scene.warmth + 1.8 * (scene.brightness - 0.6)
            + 0.45 * float(scene.num_persons > 0) + 0.1 * (scene.num_objects - 2)
            - 0.5 * scene.blur + 0.5 * float(scene.subject_is_near) - 0.33)


def _mix(a, b, t: float) -> tuple[int, ...]:
    mixed = np.clip((1 - t) * np.asarray(a, float) + t * np.asarray(b, float), 0, 255)
    return tuple(int(round(v)) for v in mixed)


def _vertical_gradient(size: int, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    column = (1 - t) * np.asarray(top, float) + t * np.asarray(bottom, float)
    return np.broadcast_to(column, (size, size, 3)).copy()


class _Canvas:
    """An RGB image, a depth map and a foreground mask drawn together, far to near (painter's
    order); the mask (255 = a subject) gets every shape but the backdrop's."""

    def __init__(self, rgb: np.ndarray, depth: np.ndarray):
        self.rgb = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        self.depth = Image.fromarray(depth.astype(np.float32), mode="F")
        self.mask = Image.new("L", self.rgb.size, 0)
        self._draw = ImageDraw.Draw(self.rgb)
        self._ddraw = ImageDraw.Draw(self.depth)
        self._mdraw = ImageDraw.Draw(self.mask)

    def shape(self, method: str, xy, colour, depth: float, *, foreground: bool = True,
              **kw) -> None:
        getattr(self._draw, method)(xy, fill=colour, **kw)
        getattr(self._ddraw, method)(xy, fill=float(depth), **kw)
        if foreground:
            getattr(self._mdraw, method)(xy, fill=255, **kw)


def _background(scene: Scene, size: int, rng: np.random.Generator):
    """Returns (rgb, depth, horizon_y, far_depth_at_horizon) for the scene's backdrop."""
    base = (1 - (scene.warmth + 1) / 2) * _COOL + (scene.warmth + 1) / 2 * _WARM
    base = np.clip(base + rng.normal(0, 8, 3), 0, 255)
    rows = np.arange(size, dtype=np.float32)[:, None] * np.ones((1, size), np.float32)
    if scene.kind == "landscape":
        horizon = int(size * rng.uniform(0.45, 0.7))
        rgb = _vertical_gradient(size, base * 0.8, np.minimum(base * 1.15 + 25, 255))
        ground = _mix((90, 140, 70), (200, 180, 120), rng.random())
        rgb[horizon:] = _vertical_gradient(size, _mix(ground, base, 0.3), ground)[horizon:]
        far = 0.85
        depth = np.ones((size, size), np.float32)
        t = (rows - horizon) / max(size - 1 - horizon, 1)
        depth[horizon:] = (far - (far - _NEAR) * t)[horizon:]
    else:
        # Indoor: a wall tinted by the dominant colour, then a floor / table plane.
        horizon = int(size * rng.uniform(0.3, 0.5)) if scene.kind == "food" else int(
            size * rng.uniform(0.55, 0.75))
        rgb = _vertical_gradient(size, base * 0.9, np.minimum(base * 1.1 + 10, 255))
        surface = _mix((150, 105, 70), base, 0.35) if scene.kind == "food" else _mix(
            (170, 160, 150), base, 0.25)
        rgb[horizon:] = _vertical_gradient(size, surface, np.asarray(surface) * 0.8)[horizon:]
        far = 0.6
        depth = np.full((size, size), 0.9, np.float32)
        t = (rows - horizon) / max(size - 1 - horizon, 1)
        depth[horizon:] = (far - (far - _NEAR) * t)[horizon:]
    return rgb, depth, horizon, far


def _floor_depth(y: float, horizon: int, far: float, size: int) -> float:
    t = (y - horizon) / max(size - 1 - horizon, 1)
    return float(np.clip(far - (far - _NEAR) * t, 0.05, 1.0))


def _subject_base(scene: Scene, size: int, horizon: int) -> float:
    """The image row of the main subject's base (its feet, or where it rests)."""
    return horizon + scene.closeness * (size - 2 - horizon)


def _objects(scene: Scene, size: int, horizon: int, rng: np.random.Generator) -> list:
    """Plans the objects as (base_y, draw_fn) pairs so they can be drawn far to near."""
    plans = []
    for i in range(scene.num_objects):
        s = size * rng.uniform(0.1, 0.22)
        x = rng.uniform(s, size - s)
        y = rng.uniform(max(horizon, s), size - 2)  # base of the object rests on the floor
        if i == 0 and scene.num_persons == 0:  # the main subject
            y = max(_subject_base(scene, size, horizon), s)
        colour = tuple(int(c) for c in rng.integers(30, 240, 3))
        plans.append((y, scene.kind, x, y, s, colour))
    return plans


def _draw_object(canvas: _Canvas, kind: str, x, y, s, colour, depth: float, rng) -> None:
    if kind == "landscape":  # a tree: trunk and crown
        canvas.shape("rectangle", [x - s * 0.08, y - s * 0.6, x + s * 0.08, y], (90, 60, 30), depth)
        canvas.shape("polygon", [(x, y - s * 1.6), (x - s * 0.5, y - s * 0.5),
                                 (x + s * 0.5, y - s * 0.5)], _mix(colour, (40, 120, 40), 0.6),
                     depth)
    elif kind == "food":  # a plate with a couple of food blobs
        canvas.shape("ellipse", [x - s, y - s * 0.5, x + s, y], (238, 238, 232), depth)
        for _ in range(2):
            r = s * rng.uniform(0.2, 0.35)
            fx, fy = x + rng.uniform(-0.4, 0.4) * s, y - s * 0.25
            canvas.shape("ellipse", [fx - r, fy - r * 0.6, fx + r, fy + r * 0.6], colour, depth)
    elif rng.random() < 0.5:
        canvas.shape("rectangle", [x - s * 0.5, y - s * 1.2, x + s * 0.5, y], colour, depth)
    else:
        canvas.shape("ellipse", [x - s * 0.6, y - s * 1.2, x + s * 0.6, y], colour, depth)


def _person_keypoints(scene: Scene, size: int, horizon: int, rng: np.random.Generator,
                      main: bool) -> np.ndarray:
    """Places one person, feet on the floor where possible; returns its [17, 3] keypoints.

    The main subject's feet are at `_subject_base`, and it is made short enough to fit there.
    """
    lo, hi = (0.5, 0.85) if scene.kind == "people" else (0.3, 0.5)
    height = size * rng.uniform(lo, hi)
    if main:
        height = min(height, (_subject_base(scene, size, horizon) - 0.02 * size) / 0.96)
    joints = _SKELETON.copy()
    joints[[7, 9], 1] -= rng.uniform(0.0, 0.25)  # raise the left arm a little or a lot
    joints[[8, 10], 1] -= rng.uniform(0.0, 0.25)
    joints[[9, 10], 0] *= rng.uniform(0.8, 1.4)
    joints[[13, 15], 0] += rng.uniform(0.0, 0.06)  # stance width
    joints[[14, 16], 0] -= rng.uniform(0.0, 0.06)
    half_width = np.abs(joints[:, 0]).max() * height
    cx = rng.uniform(half_width + 1, size - 1 - half_width)
    feet_lo = max(horizon + 1.0, 0.02 * size + 0.96 * height)
    feet = rng.uniform(min(feet_lo, size - 1.0), size - 1.0)
    if main:
        feet = max(_subject_base(scene, size, horizon), feet_lo)
    top = feet - 0.96 * height
    xy = np.stack([cx + joints[:, 0] * height, top + joints[:, 1] * height], axis=1)
    xy = np.clip(xy, 0.0, size - 1.0)
    return np.concatenate([xy, np.full((17, 1), 2.0)], axis=1)


def _draw_person(canvas: _Canvas, kp: np.ndarray, height: float, depth: float, rng) -> None:
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    shirt = tuple(int(c) for c in rng.integers(20, 235, 3))
    pants = tuple(int(c) for c in rng.integers(20, 160, 3))
    width = max(1, int(round(height * 0.045)))
    for a, b in _LIMBS:
        colour = pants if a >= 11 else shirt
        canvas.shape("line", [tuple(kp[a, :2]), tuple(kp[b, :2])], colour, depth, width=width)
    canvas.shape("polygon", [tuple(kp[i, :2]) for i in (5, 6, 12, 11)], shirt, depth)
    r = 0.065 * height
    nx, ny = kp[0, :2]
    canvas.shape("ellipse", [nx - r, ny - 1.3 * r, nx + r, ny + 0.8 * r], skin, depth)


def render(scene: Scene, size: int) -> Rendered:
    """Draws `scene` at `size` x `size` pixels."""
    rng = np.random.default_rng(scene.layout_seed)
    rgb, depth, horizon, far = _background(scene, size, rng)
    canvas = _Canvas(rgb, depth)
    if scene.kind == "landscape" and rng.random() < 0.6:  # distant mountains
        peak = rng.uniform(0.2, 0.8) * size
        canvas.shape("polygon", [(peak - size * 0.5, horizon), (peak, horizon - size * 0.25),
                                 (peak + size * 0.5, horizon)], _mix(rgb[0, 0], (60, 60, 70), 0.5),
                     0.95, foreground=False)
    items = [("object", p) for p in _objects(scene, size, horizon, rng)]
    keypoints = [_person_keypoints(scene, size, horizon, rng, main=i == 0)
                 for i in range(scene.num_persons)]
    items += [("person", kp) for kp in keypoints]
    main = items[-len(keypoints)] if keypoints else items[0] if items else None
    # Painter's order: whatever stands lower in the frame is nearer, so it is drawn later.
    items.sort(key=lambda item: item[1][0] if item[0] == "object" else item[1][15:, 1].max())
    subject_depth = None
    for item in items:
        what, plan = item
        if what == "object":
            base_y, kind, x, y, s, colour = plan
            d = _floor_depth(base_y, horizon, far, size) - 0.03
            _draw_object(canvas, kind, x, y, s, colour, d, rng)
        else:
            feet = plan[15:, 1].max()
            height = feet - plan[:, 1].min()
            d = max(_floor_depth(max(feet, horizon), horizon, far, size) - 0.03, 0.05)
            _draw_person(canvas, plan, height / 0.91, d, rng)
        if item is main:
            subject_depth = d
    image = canvas.rgb
    if scene.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(radius=scene.blur * 2.0 * size / 64))
    out = np.asarray(image, np.float32) * (scene.brightness / 0.6)
    depth = np.clip(np.asarray(canvas.depth, np.float32), 0.0, 1.0)
    if subject_depth is not None:
        lo, hi = float(depth.min()), float(depth.max())
        subject_depth = (subject_depth - lo) / max(hi - lo, 1e-6)
    return Rendered(
        rgb=np.clip(np.round(out), 0, 255).astype(np.uint8),
        depth=depth,
        keypoints=keypoints,
        subject_depth=subject_depth,
        foreground=np.asarray(canvas.mask) > 127,
    )


def jpeg_bytes(rgb: np.ndarray, *, truncated: bool = False) -> bytes:
    """JPEG (quality 90) of an RGB image; `truncated` cuts it before the scan data."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    # Without a start-of-scan marker PIL cannot decode it even with LOAD_TRUNCATED_IMAGES.
    return data[:data.find(b"\xff\xda")] if truncated else data


def depth_image(depth: np.ndarray) -> Image.Image:
    """A 16-bit grayscale image of a [0, 1] depth map (value / 65535), to be saved as PNG."""
    return Image.fromarray(np.round(np.clip(depth, 0.0, 1.0) * 65535.0).astype(np.uint16))


def background_image(foreground: np.ndarray) -> Image.Image:
    """An 8-bit grey background mask of a [S, S] foreground mask: 255 = background, 0 = subject
    (the layout `ipa_jax.data.retrieval` reads from `<raw>/background/<post_id>.png`)."""
    return Image.fromarray(np.where(foreground, 0, 255).astype(np.uint8))  # 2-D uint8: mode L


def keypoint_results(image_id: str, keypoints: list[np.ndarray], scores) -> list[dict]:
    """COCO keypoint-detection results (17 keypoints, category 1) for the persons of one image."""
    return [{"image_id": image_id, "category_id": 1,
             "keypoints": [v for x, y, vis in kp.tolist()
                           for v in (round(x, 2), round(y, 2), int(vis))],
             "score": round(float(score), 4)}
            for kp, score in zip(keypoints, scores, strict=True)]


def post_caption(rng: np.random.Generator, tag_sets: tuple) -> str | None:
    """The influencer's own caption of a post: 85% of 1-6 words, else 8-25; no tags (50%), one
    of the user's two `tag_sets` (42%, 4:1) or 1-5 random hashtags (8%); None (no caption) 6% of
    the time."""
    if rng.random() < 0.06:
        return None
    n_words = int(rng.integers(1, 7)) if rng.random() < 0.85 else int(rng.integers(8, 26))
    words = [str(w) for w in rng.choice(_WORDS, size=n_words)]
    words[0] = words[0].capitalize()
    if rng.random() < 0.3:  # glued to the last word so the word count does not change
        words[-1] += str(rng.choice(_ENDINGS))
    mode = rng.random()
    if mode < 0.5:
        tags = []
    elif mode < 0.92:
        tags = list(tag_sets[0 if rng.random() < 0.8 else 1])
    else:
        tags = [str(t) for t in rng.choice(HASHTAGS, size=int(rng.integers(1, 6)), replace=False)]
    text = " ".join(words)
    if tags:
        order = rng.permutation(len(tags))  # same set, shuffled order
        text += str(rng.choice([" ", "\n\n"])) + " ".join(tags[i] for i in order)
    return text


# Words of `caption`; each tuple lists synonyms, one of which a scene's own generator picks.
_CAPTION_SALT = 0xCA9  # keeps the caption's generator apart from `render`'s (same layout_seed)
_KIND_NOUNS = {
    "people": ("indoor shot", "indoor photo", "snapshot in a room"),
    "food": ("food photo", "table scene", "meal on a table"),
    "landscape": ("landscape", "outdoor scene", "countryside view"),
    "object": ("interior", "still life", "room"),
}
_OBJECT_NOUNS = {"people": (("object", "objects"), ("item", "items")),
                 "food": (("plate", "plates"), ("plate of food", "plates of food")),
                 "landscape": (("tree", "trees"),),
                 "object": (("object", "objects"), ("item", "items"), ("thing", "things"))}
_NUMBERS = ("one", "two", "three", "four", "five")
_PERSONS = {1: ("one person", "a single person", "a person"),
            2: ("two people", "a pair of people", "two people together")}  # more: "N people"
_EMPTY = ("with nothing in it", "with no one and nothing in view", "with nothing in view")
_WARMTH = (("cool", "blue-toned", "cool-toned"), ("neutral-toned", "muted"),
           ("warm", "orange-toned", "warm-toned"))
_LIGHT = (("dark", "dim", "dimly lit"), ("softly lit", "evenly lit"),
          ("bright", "well-lit", "brightly lit"))
_PLACES = (("is far from the camera", "is in the distance", "stands far away"),
           ("is close to the camera", "is in the foreground", "stands near the camera"))
_BLUR = (("The image is sharp.", "In focus.", ""),
         ("The image is slightly blurry.", "A little out of focus."),
         ("The image is blurry.", "Out of focus and blurry.", "Very blurry."))


def _pick(rng: np.random.Generator, options: tuple):
    return options[int(rng.integers(len(options)))]


def _number(n: int) -> str:
    return _NUMBERS[n - 1] if n <= len(_NUMBERS) else str(n)


def _band(value: float, low: float, high: float) -> int:
    """0 below `low`, 2 at or above `high`, else 1."""
    return 0 if value < low else 2 if value >= high else 1


def _contents(scene: Scene, rng: np.random.Generator) -> tuple[str, str | None]:
    """("with ..." of the people and objects, the main subject's noun phrase or None)."""
    object_nouns = _pick(rng, _OBJECT_NOUNS[scene.kind])
    parts = []
    if scene.num_persons:
        n = scene.num_persons
        parts.append(_pick(rng, _PERSONS[n]) if n in _PERSONS else f"{_number(n)} people")
    if scene.num_objects:
        parts.append(f"{_number(scene.num_objects)} {object_nouns[scene.num_objects > 1]}")
    if not parts:
        return _pick(rng, _EMPTY), None
    if scene.num_persons:
        subject = "the person" if scene.num_persons == 1 else "one person"
    else:
        subject = f"the {object_nouns[0]}" if scene.num_objects == 1 else f"one {object_nouns[0]}"
    return "with " + " and ".join(parts), subject


def caption(scene: Scene) -> str:
    """A generated caption of `scene`, like an image captioner's: one line of plain English.

    It says the kind of scene, its colour (warm / cool) and light (bright / dark), the people
    and objects in it and how many, whether the main subject stands near or far, and how blurry
    it is; synonyms are picked by a generator seeded from the scene alone (pure and
    deterministic, no global state). "person" / "people" appear exactly when a person does.
    """
    rng = np.random.default_rng([scene.layout_seed, _CAPTION_SALT])
    tone = (f"{_pick(rng, _WARMTH[_band(scene.warmth, -1 / 3, 1 / 3)])}, "
            f"{_pick(rng, _LIGHT[_band(scene.brightness, 0.45, 0.7)])}")
    article = "an" if tone[0] in "aeiou" else "a"
    with_what, subject = _contents(scene, rng)
    sentences = [f"{article.capitalize()} {tone} {_pick(rng, _KIND_NOUNS[scene.kind])} "
                 f"{with_what}."]
    if subject is not None:
        where = _pick(rng, _PLACES[scene.subject_is_near])
        sentences.append(f"{subject[0].upper()}{subject[1:]} {where}.")
    sentences.append(_pick(rng, _BLUR[0 if scene.blur <= 0 else _band(scene.blur, 0.0, 0.5)]))
    return " ".join(s for s in sentences if s)
