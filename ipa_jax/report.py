# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""A self-contained HTML page (images inlined) of what each latent sense responds to."""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np
from PIL import Image

from ipa_jax import images


def _thumbnail(path: str, size: int) -> str:
    im = Image.fromarray(images.load_rgb(path))  # every mode, the pixel limit
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_sense_report(path: str, senses: dict[str, np.ndarray], rows: np.ndarray, manifest,
                       raw_dir: str, *, top: int = 12, thumb: int = 128,
                       title: str = "Latent senses") -> None:
    """For each sense, its `top` highest-responding images among `rows`.

    Args:
      senses: {"popular": [N, S+], "unpopular": [N, S-]} responses `w_s . x` for `rows`.
      rows: post indices into `manifest` (an `evaluation.Manifest`) of the scored images.
    """
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif}figure{display:inline-block;margin:4px;"
             "font-size:11px;text-align:center}img{display:block}</style>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>Top {top} of {len(rows)} test images per sense, by the sense's response "
             "w<sub>s</sub>&middot;x; below each image its likes and response.</p>"]
    for kind, responses in senses.items():
        for s in range(responses.shape[1]):
            order = np.argsort(-responses[:, s], kind="stable")[:top]
            parts.append(f"<h2>{kind} sense {s}</h2><div>")
            for k in order:
                i = rows[k]
                img = _thumbnail(os.path.join(raw_dir, manifest.image_path[i]), thumb)
                parts.append(
                    f"<figure><img src='data:image/jpeg;base64,{img}' "
                    f"alt='{html.escape(str(manifest.post_id[i]))}'>"
                    f"{int(manifest.likes[i])} likes<br>{responses[k, s]:.2f}</figure>")
            parts.append("</div>")
    with open(path, "w") as f:
        f.write("\n".join(parts))
