# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Generated captions and their text embeddings: the paper's semantic aspect S_c (Ji 2023).

A post's caption is `<raw>/captions/<post_id>.txt` (UTF-8, one caption; `python -m
data_prep.annotate --what=captions` writes them, the embedded dataset draws its own). These are
captions generated from the image, not the influencer's own text in the post's metadata.

S_c is the cosine of two captions' text embeddings. Encoders (`config.prep.retrieval
.caption_encoder`):
  hashing                 built in, no weights: the caption's lower-cased words and word pairs,
                          each hashed (BLAKE2b) to one of `HASH_DIM` buckets with a hashed sign,
                          summed, L2-normalised. Two captions' cosine measures the words they
                          share; deterministic across processes and machines.
  transformers:<name>     a sentence encoder (e.g. sentence-transformers/all-MiniLM-L6-v2, or a
                          local folder): its last hidden states mean-pooled over the tokens, L2-
                          normalised (`ipa_jax.annotate.hf_backends.text_embedder`; the
                          annotate-torch extra).
A post without a caption file gets a zero embedding (cosine 0 with every post), and is counted.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re

import numpy as np

from ipa_jax.data import instagram

HASH_DIM = 1024
_WORD = re.compile(r"[^\W_]+")


def caption_path(raw_dir: str, post_id: str) -> str:
    return os.path.join(raw_dir, "captions", f"{post_id}.txt")


def has_captions(raw_dir: str) -> bool:
    """Whether `<raw>/captions/` holds at least one caption file."""
    return instagram.has_sidecar_files(raw_dir, "captions", ".txt")


def read_captions(raw_dir: str, post_ids) -> list[str | None]:
    """Each post's caption, None where it has no caption file."""
    out = []
    for post_id in post_ids:
        path = caption_path(raw_dir, post_id)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                out.append(f.read().strip())
        else:
            out.append(None)
    return out


def _bucket(token: str) -> tuple[int, float]:
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % HASH_DIM, 1.0 if (value >> 63) else -1.0


def hashing_embeddings(texts) -> np.ndarray:
    """[N, HASH_DIM] float32: hashed words and word pairs of each text, L2-normalised (zero rows
    for texts without words)."""
    out = np.zeros((len(texts), HASH_DIM), np.float32)
    for i, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        for token in words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]:
            j, sign = _bucket(token)
            out[i, j] += sign
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norm > 0, norm, 1.0)


@functools.cache
def _text_embedder(spec: str):
    from ipa_jax.annotate import backends  # noqa: PLC0415 - the extra only when asked for

    library, weights = backends.parse_spec(spec)
    if library != "transformers":
        raise ValueError(f"caption_encoder {spec!r}: text encoders come from transformers")
    return backends.library_module(library).text_embedder(weights)


def embed_captions(captions: list[str | None], encoder: str) -> np.ndarray:
    """[N, D] float32 text embeddings of `captions` (None: a zero row) by `encoder`."""
    present = [i for i, c in enumerate(captions) if c is not None]
    texts = [captions[i] for i in present]
    if encoder == "hashing":
        rows = hashing_embeddings(texts)
    else:  # no text at all still gives the encoder's width (batches must stack)
        rows = np.asarray(_text_embedder(encoder)(texts or [""]), np.float32)[:len(texts)]
    out = np.zeros((len(captions), rows.shape[1]), np.float32)
    out[present] = rows
    return out
