# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""`ipa-score --report out.html`: one self-contained HTML page of a scoring run.

The page shows every scored image, best first, beside its Grad-CAM heatmap (`ipa_jax.gradcam`:
where in the image the log-score comes from), with its rank, file name, log-score and, when the
model card holds a test distribution, its percentile and level (`ipa_jax.model_card`); a
histogram of the scores against the card's test distribution; the files that could not be
scored and why; and the model's name and objective. It is meant to be mailed, archived or
opened from disk years later, so nothing is fetched: images are base64 JPEGs (thumbnails) and
PNGs (heatmap overlays, a colormap drawn with numpy and PIL), the charts are inline SVG, the
style and the one script are inline, and a Content-Security-Policy forbids any other source.
That script counts, after the page's load event, the images that decoded and writes the counts
into `<p id="load-status" data-expected data-total data-loaded>`, so a headless browser's
`--dump-dom` tells whether every thumbnail and heatmap loaded.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import os
from collections.abc import Sequence

import jax
import numpy as np
from PIL import Image

from ipa_jax import images, model_card

TITLE = "Image popularity scores"
THUMB = 192  # displayed side of the thumbnails and heatmaps, in pixels
OVERLAY_ALPHA = 0.5  # heatmap colour over the image
# The "jet" colormap's anchors (position, RGB): blue (cold) -> cyan -> yellow -> red (hot).
JET = ((0.0, (0, 0, 143)), (0.125, (0, 0, 255)), (0.375, (0, 255, 255)),
       (0.625, (255, 255, 0)), (0.875, (255, 0, 0)), (1.0, (128, 0, 0)))
HISTOGRAM_BINS = 20
# Only inline styles and scripts and data: images; no connection, font or frame of any kind.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'")
STYLE = """
body{font-family:sans-serif;margin:16px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:24px}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
.item{margin:0;padding:6px;border:1px solid #ddd;border-radius:4px;font-size:12px}
.pair{display:flex;gap:4px}.pair img{display:block}
.name{font-weight:bold;word-break:break-all}.path{color:#777;word-break:break-all}
.rank{font-weight:bold;color:#1f5fa8}.level{font-style:italic}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}
#load-status{color:#777;font-size:12px}
""".strip()
# After every image has loaded or failed (the window's load event): how many decoded.
LOAD_SCRIPT = """
window.addEventListener("load", function () {
  var all = document.getElementsByTagName("img"), loaded = 0;
  for (var i = 0; i < all.length; i++) {
    if (all[i].complete && all[i].naturalWidth > 0) loaded++;
  }
  var p = document.getElementById("load-status");
  p.setAttribute("data-total", all.length);
  p.setAttribute("data-loaded", loaded);
  p.textContent = loaded + " of " + all.length + " images loaded";
});
""".strip()


def colormap(heat: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (NaN as 0) `[...]` -> uint8 RGB `[..., 3]` on the `JET` colormap."""
    heat = np.clip(np.nan_to_num(np.asarray(heat, np.float64)), 0.0, 1.0)
    stops = np.array([p for p, _ in JET])
    colours = np.array([c for _, c in JET], np.float64)
    rgb = [np.interp(heat, stops, colours[:, k]) for k in range(3)]
    return np.rint(np.stack(rgb, axis=-1)).astype(np.uint8)


def _resize_heat(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float `[h, w]` -> float32 `[height, width]` (`size` is PIL's (width, height)), bilinear."""
    heat = np.asarray(heat, np.float32)
    if heat.shape == (size[1], size[0]):
        return heat
    return np.asarray(Image.fromarray(heat, mode="F").resize(size, Image.Resampling.BILINEAR))


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 `[H, W, 3]` and a heatmap `[h, w]` in [0, 1] (resized to H x W) -> the image with
    the heatmap's colours laid over it, uint8 `[H, W, 3]`."""
    pixels = np.asarray(pixels, np.uint8)
    colours = colormap(_resize_heat(heat, (pixels.shape[1], pixels.shape[0])))
    mixed = (1 - alpha) * pixels.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _fit(pixels: np.ndarray, side: int) -> np.ndarray:
    """uint8 `[H, W, 3]` scaled (up or down, aspect kept) so its longer side is `side`."""
    h, w = pixels.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))


def _data_uri(pixels: np.ndarray, fmt: str) -> str:
    """uint8 `[H, W, 3]` -> a `data:` URI of a JPEG (quality 88) or a PNG."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(pixels).save(buf, format="JPEG", quality=88)
    else:
        Image.fromarray(pixels).save(buf, format="PNG", optimize=True)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _name(item) -> tuple[str, str]:
    """(the shown name, the full path) of an item: a path's file name, or str(item)."""
    text = os.fspath(item) if isinstance(item, (str, os.PathLike)) else str(item)
    return (os.path.basename(text) or text), text


def _pixels_of(item, side: int) -> tuple[np.ndarray, str]:
    """(uint8 pixels, "" or why not) of an item's file for its thumbnail; a grey square when
    the file cannot be read any more (the report is still written)."""
    try:
        return images.load_rgb(_name(item)[1]), ""
    except Exception as e:  # noqa: BLE001 - one vanished file must not lose the report
        return np.full((side, side, 3), 128, np.uint8), f"{type(e).__name__}: {e}"


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e4 or 0 < abs(value) < 1e-3 else f"{value:.4f}"


def histogram_svg(scores: np.ndarray, card: dict | None, *, width: int = 640,
                  height: int = 240, bins: int = HISTOGRAM_BINS) -> str:
    """An inline SVG: the fraction of `scores` per bin (bars) and, when the card has a test
    distribution, the fraction of the test scores per bin (a step line, from the card's
    quantiles by `model_card.percentiles`), on one log-score axis covering both."""
    scores = np.asarray(scores, np.float64)
    scores = scores[np.isfinite(scores)]
    dist = (card or {}).get("test_distribution")
    quantiles = np.asarray(dist["quantiles"], np.float64) if dist else np.zeros(0)
    values = np.concatenate([scores, quantiles[[0, -1]] if len(quantiles) else quantiles])
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    ours = np.histogram(scores, edges)[0] / max(1, len(scores))
    test = np.diff(model_card.percentiles(card, edges)) / 100 if dist else None
    top = max(float(ours.max()), float(test.max()) if test is not None else 0.0, 1e-9) * 1.1
    left, right, upper, lower = 56, width - 16, 24, height - 36
    x = lambda v: left + (v - lo) / (hi - lo) * (right - left)
    y = lambda f: lower - f / top * (lower - upper)
    parts = [f'<svg id="histogram" width="{width}" height="{height}" role="img" '
             f'viewBox="0 0 {width} {height}" font-size="11" font-family="sans-serif">',
             f'<rect x="{left}" y="{upper}" width="{right - left}" height="{lower - upper}" '
             'fill="#fafafa" stroke="#999"/>']
    for k, fraction in enumerate(ours):
        if fraction > 0:
            x0, x1 = x(edges[k]), x(edges[k + 1])
            parts.append(
                f'<rect class="bar" x="{x0 + 0.5:.1f}" y="{y(fraction):.1f}" '
                f'width="{max(x1 - x0 - 1, 1):.1f}" height="{lower - y(fraction):.1f}" '
                f'fill="#4a7fc1"><title>{_fmt(edges[k])} to {_fmt(edges[k + 1])}: '
                f'{round(fraction * len(scores))} image(s)</title></rect>')
    if test is not None:
        steps = [f"{x(edges[0]):.1f},{y(0):.1f}"]
        for k, fraction in enumerate(test):
            steps += [f"{x(edges[k]):.1f},{y(fraction):.1f}",
                      f"{x(edges[k + 1]):.1f},{y(fraction):.1f}"]
        steps.append(f"{x(edges[-1]):.1f},{y(0):.1f}")
        parts.append(f'<polyline id="test-distribution" points="{" ".join(steps)}" '
                     'fill="none" stroke="#e07b00" stroke-width="2"/>')
    for v, anchor in ((lo, "start"), ((lo + hi) / 2, "middle"), (hi, "end")):
        parts.append(f'<text x="{x(v):.1f}" y="{lower + 14}" text-anchor="{anchor}">'
                     f"{_fmt(v)}</text>")
    parts += [f'<text x="{(left + right) / 2:.1f}" y="{height - 6}" text-anchor="middle">'
              "log-score</text>",
              f'<text x="{left - 4}" y="{lower}" text-anchor="end">0%</text>',
              f'<text x="{left - 4}" y="{upper + 8}" text-anchor="end">{100 * top:.0f}%</text>',
              f'<rect x="{left + 8}" y="{upper + 6}" width="10" height="10" fill="#4a7fc1"/>',
              f'<text x="{left + 22}" y="{upper + 15}">these {len(scores)} images</text>']
    if test is not None:
        parts += [f'<line x1="{left + 160}" y1="{upper + 11}" x2="{left + 176}" '
                  f'y2="{upper + 11}" stroke="#e07b00" stroke-width="2"/>',
                  f'<text x="{left + 180}" y="{upper + 15}">the model card\'s test set '
                  f'({dist.get("num_images", "?")} images)</text>']
    return "\n".join([*parts, "</svg>"])


def colorbar_svg(width: int = 240, height: int = 14) -> str:
    """An inline SVG legend of the heatmap colours, cold to hot."""
    stops = "".join(f'<stop offset="{100 * p:g}%" stop-color="rgb{c}"/>' for p, c in JET)
    return (f'<svg width="{width + 120}" height="{height + 4}" font-size="11" '
            'font-family="sans-serif"><defs><linearGradient id="jet">'
            f'{stops}</linearGradient></defs><text x="0" y="{height - 2}">none</text>'
            f'<rect x="36" y="1" width="{width}" height="{height}" fill="url(#jet)"/>'
            f'<text x="{width + 42}" y="{height - 2}">most</text></svg>')


def _card_html(card: dict | None) -> str:
    if not card:
        return ("<p>No model card: the scores are log-scores o (higher is more popular; only "
                "differences between images carry meaning).</p>")
    rows = [("model", card.get("model")), ("objective", card.get("objective") or "not recorded"),
            ("meaning", card.get("objective_meaning")),
            ("score", (card.get("score") or {}).get("direction")),
            ("created", card.get("created"))]
    dist = card.get("test_distribution")
    rows.append(("test distribution", f"{dist.get('num_images', '?')} images" if dist else
                 "none: scores are not placed against a test set"))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows if v)
    return f'<table id="model">{body}</table>'


def _gallery_html(items: Sequence, scores: np.ndarray, heatmaps: Sequence,
                  pixels: Sequence | None, card: dict | None, thumb: int) -> str:
    order = np.argsort(-scores, kind="stable")
    pct = model_card.percentiles(card, scores)
    figures = []
    for rank, i in enumerate(order, 1):
        shown, full = _name(items[i])
        note = ""
        if pixels is not None:
            image = np.asarray(pixels[i], np.uint8)
        else:
            image, note = _pixels_of(items[i], thumb)
        image = _fit(image, thumb)
        placed = ""
        if pct is not None and np.isfinite(pct[i]):
            placed = (f" &middot; percentile {pct[i]:.1f} "
                      f'<span class="level">({model_card.levels(pct[i])[0]})</span>')
        unread = f'<br><span class="path">{html.escape(note)}</span>' if note else ""
        figures.append(
            f'<figure class="item" data-rank="{rank}" data-score="{scores[i]:.6f}">'
            '<div class="pair">'
            f'<img class="thumb" src="{_data_uri(image, "JPEG")}" alt="{html.escape(shown)}" '
            f'width="{image.shape[1]}" height="{image.shape[0]}">'
            f'<img class="heatmap" src="{_data_uri(overlay(image, heatmaps[i]), "PNG")}" '
            f'alt="Grad-CAM of {html.escape(shown)}" width="{image.shape[1]}" '
            f'height="{image.shape[0]}"></div><figcaption><span class="rank">#{rank}</span> '
            f'<span class="name" title="{html.escape(full)}">{html.escape(shown)}</span><br>'
            f'log-score {_fmt(float(scores[i]))}{placed}<br>'
            f'<span class="path">{html.escape(full)}</span>{unread}</figcaption></figure>')
    return '<div class="gallery">' + "\n".join(figures) + "</div>"


def _skipped_html(skipped: Sequence[tuple]) -> str:
    if not skipped:
        return "<p>None: every file was scored.</p>"
    rows = "".join(f"<tr><td>{html.escape(_name(p)[1])}</td><td>{html.escape(str(why))}</td>"
                   "</tr>" for p, why in skipped)
    return f'<table id="skipped"><tr><th>file</th><th>reason</th></tr>{rows}</table>'


def write_report(path: str, items: Sequence, scores, heatmaps, *, pixels=None,
                 card: dict | None = None, skipped: Sequence[tuple] = (), title: str = TITLE,
                 thumb: int = THUMB) -> None:
    """Writes the self-contained HTML page of a scoring run to `path`.

    Args:
      items: the scored images' paths (or other labels, e.g. indices), N of them.
      scores: their N log-scores.
      heatmaps: N Grad-CAM heatmaps `[h, w]` in [0, 1] (`gradcam.for_scorer`), any size: each
        is resized over its image.
      pixels: the N prepared uint8 images `[S, S, 3]` the model saw (`score.load_images`);
        None reads each item's file instead (the whole frame: for a "crop" spec the heatmap
        is then stretched over more than the model saw).
      card: the model card (`ipa_jax.model_card`): the model's name and objective, and with a
        test distribution each score's percentile and level and the histogram's second series.
      skipped: [(item, reason)] of the files that could not be scored.
      thumb: the displayed side of each thumbnail and heatmap, in pixels.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    if not len(items) == len(scores) == len(heatmaps):
        raise ValueError(f"{len(items)} items, {len(scores)} scores and {len(heatmaps)} "
                         "heatmaps: one of each per image.")
    if pixels is not None and len(pixels) != len(items):
        raise ValueError(f"{len(pixels)} pixel arrays for {len(items)} items")
    dist = (card or {}).get("test_distribution")
    if dist:
        note = ""
    elif card:
        note = ("<p>The model card has no test distribution: the scores are not placed "
                "against one.</p>")
    else:
        note = "<p>No model card: the scores are not placed against a test distribution.</p>"
    summary = f"{len(items)} image(s) scored, {len(skipped)} skipped."
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", f"<p>{summary}</p>",
        f'<p id="load-status" data-expected="{2 * len(items)}">Images not counted yet '
        "(the page's script counts them once loaded).</p>",
        "<h2>Model</h2>", _card_html(card),
        "<h2>Score distribution</h2>", histogram_svg(scores, card), note,
        "<h2>Images, best first</h2>",
        "<p>Beside each image, its Grad-CAM heatmap: where in the image the log-score comes "
        "from (the gradient-weighted last feature map, positive part).</p>", colorbar_svg(),
        _gallery_html(items, scores, heatmaps, pixels, card, thumb) if len(items) else
        "<p>No image was scored.</p>",
        f"<h2>Skipped files ({len(skipped)})</h2>", _skipped_html(skipped),
        f"<script>{LOAD_SCRIPT}</script>", "</body></html>"]
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")


def _matching(chunk: Sequence[str], chunk_scores, kept: Sequence[str]) -> list:
    """The scores of `kept`, an in-order subsequence of `chunk`."""
    out, j = [], 0
    for path, value in zip(chunk, chunk_scores, strict=True):
        if j < len(kept) and kept[j] == path:
            out.append(value)
            j += 1
    return out


def report_for_scorer(scorer, kept_paths: Sequence[str], scores, skipped: Sequence[tuple],
                      path: str, batch_size: int = 32, *, title: str = TITLE,
                      max_pixels: int = images.MAX_PIXELS, thumb: int = THUMB) -> None:
    """`ipa-score --report`: reads the scored files again as `scorer.spec` prepares them
    (`score.load_images`: the pixels the model saw), computes their Grad-CAM heatmaps
    (`gradcam.for_scorer`) in batches of one fixed size (the last one padded: one
    compilation), and writes the page with `write_report`. A file that cannot be read any more
    moves to the skipped files.

    Args:
      scorer: the `ipa_jax.scoring.Scorer` that scored them.
      kept_paths, scores, skipped: what `score.score_files` returned.
      path: the HTML file to write.
      batch_size: images per heatmap call (a backward pass: about twice a scoring batch's
        memory).
    """
    from ipa_jax import gradcam, score  # noqa: PLC0415 - score imports scoring, TF for "crop"

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    scores = np.asarray(scores, np.float32).reshape(-1)
    if len(scores) != len(kept_paths):
        raise ValueError(f"{len(kept_paths)} paths but {len(scores)} scores")
    size = max(1, min(batch_size, len(kept_paths)))
    device_scorer = _on_device(scorer)
    kept, kept_scores, pixels, heat, skipped = [], [], [], [], list(skipped)
    for start in range(0, len(kept_paths), size):
        chunk = list(kept_paths[start:start + size])
        batch, chunk_kept, chunk_skipped = score.load_images(chunk, scorer.spec,
                                                             max_pixels=max_pixels)
        skipped += chunk_skipped
        if not chunk_kept:
            continue
        padded = np.zeros((size, *batch.shape[1:]), np.uint8)
        padded[:len(batch)] = batch
        heat.extend(gradcam.for_scorer(device_scorer, padded)[:len(batch)])
        pixels.extend(batch)
        kept += chunk_kept
        kept_scores += _matching(chunk, scores[start:start + size], chunk_kept)
    write_report(path, kept, np.asarray(kept_scores, np.float32), heat, pixels=pixels,
                 card=scorer.card, skipped=skipped, title=title, thumb=thumb)


def _on_device(scorer):
    """`scorer` with its variables moved to the device once, not once per batch."""
    return dataclasses.replace(scorer, variables=jax.device_put(scorer.variables))
