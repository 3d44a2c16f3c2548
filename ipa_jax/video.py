# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The best frame of a video as its thumbnail (Ji et al.'s application): every Nth frame scored.

`score_video` decodes a video with PyAV (the `video` extra: `pip install -e ".[video]"`), scores
every `every`-th frame (25 by default, as the paper samples) with a `Scorer` in batches, and
`write_outputs` saves the best frame as a JPEG thumbnail and a PNG plot of the score over time
with the best frame marked. `ipa-score --video=FILE` runs both.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

THUMBNAIL_SIDE = 640  # the thumbnail's longer side, at most


@dataclasses.dataclass
class VideoScores:
    frames: list[int]  # indices of the scored frames in the decoded stream
    times: list[float]  # their presentation times, seconds
    scores: np.ndarray  # log-scores, float32
    best_pixels: np.ndarray  # uint8 [H, W, 3] of the best frame

    @property
    def best(self) -> int:
        """Position (in `frames`) of the best-scored frame; the first one on ties."""
        return int(np.argmax(self.scores))


def _open(path: str):
    try:
        import av  # noqa: PLC0415 - the video extra, only when a video is scored
    except ImportError as e:
        raise ImportError('scoring a video needs PyAV: pip install -e ".[video]"') from e
    try:
        return av.open(path)
    except (av.error.FFmpegError, OSError) as e:
        raise ValueError(f"{path} is not a readable video ({e})") from None


def sample_frames(path: str, every: int = 25) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in seconds, uint8 [H, W, 3]) of frames 0, every, 2 * every, ..."""
    if every < 1:
        raise ValueError(f"every={every} must be >= 1")
    with _open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        for i, frame in enumerate(container.decode(video=0)):
            if i % every == 0:
                time = float(frame.time) if frame.time is not None else float("nan")
                yield i, time, frame.to_ndarray(format="rgb24")


def score_video(scorer, path: str, every: int = 25, batch_size: int = 32) -> VideoScores:
    """Scores every `every`-th frame of `path` with `scorer` (`ipa_jax.scoring.Scorer`)."""
    frames, times, scores, best, best_score = [], [], [], None, -np.inf
    batch: list = []

    def flush():
        nonlocal best, best_score
        _, out, bad = scorer.score([pixels for _, _, pixels in batch], batch_size)
        if bad:
            raise ValueError(f"frames of {path} could not be scored: {bad[:3]}")
        for (i, t, pixels), s in zip(batch, out, strict=True):
            frames.append(i)
            times.append(t)
            scores.append(float(s))
            if s > best_score:
                best, best_score = pixels, float(s)
        batch.clear()

    for item in sample_frames(path, every):
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not frames:
        raise ValueError(f"{path} holds no decodable frame")
    return VideoScores(frames, times, np.asarray(scores, np.float32), best)


def plot(result: VideoScores, width: int = 640, height: int = 320) -> Image.Image:
    """Score over time: a line through the scored frames, the best one marked in red."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 60, width - 20, 20, height - 40
    d.rectangle([left, top, right, bottom], outline="black")
    use_times = bool(np.isfinite(result.times).all())
    x = np.asarray(result.times if use_times else result.frames, float)
    y = result.scores.astype(float)
    xs = left + (x - x.min()) / max(np.ptp(x), 1e-9) * (right - left)
    ys = bottom - (y - y.min()) / max(np.ptp(y), 1e-9) * (bottom - top)
    points = list(zip(xs.tolist(), ys.tolist(), strict=True))
    if len(points) > 1:
        d.line(points, fill=(40, 90, 200), width=2)
    for px, py in points:
        d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=(40, 90, 200))
    bx, by = points[result.best]
    d.ellipse([bx - 5, by - 5, bx + 5, by + 5], outline="red", width=2)
    unit = "s" if use_times else "frame"
    d.text((left, bottom + 8), f"{x.min():.2f}", fill="black")
    d.text((right - 40, bottom + 8), f"{x.max():.2f} {unit}", fill="black")
    d.text((4, top), f"{y.max():.3f}", fill="black")
    d.text((4, bottom - 10), f"{y.min():.3f}", fill="black")
    d.text((left + 8, top + 4), f"log-score; best: frame {result.frames[result.best]}",
           fill="red")
    return img


def write_outputs(result: VideoScores, out_dir: str, stem: str) -> tuple[str, str]:
    """(thumbnail JPEG, plot PNG) paths: `<stem>_best.jpg` and `<stem>_scores.png`."""
    os.makedirs(out_dir, exist_ok=True)
    thumb = Image.fromarray(result.best_pixels)
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    thumb_path = os.path.join(out_dir, f"{stem}_best.jpg")
    thumb.save(thumb_path, quality=92)
    plot_path = os.path.join(out_dir, f"{stem}_scores.png")
    plot(result).save(plot_path)
    return thumb_path, plot_path
