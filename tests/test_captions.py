# Copyright 2026 The ipa_jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Issue 14: generated captions give the semantic aspect S_c (text embeddings' cosine); a
dataset without captions falls back to the image embedding, said once."""

import io
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from ipa_jax import config_lib
from ipa_jax.data import captions, retrieval
from tests.conftest import REPO

TEXTS = ["A warm, bright beach photo with two people.", "a warm bright beach photo with two people",
         "A dark indoor scene with one plate.", ""]


def test_hashing_embeddings_measure_shared_words():
    e = captions.hashing_embeddings(TEXTS)
    assert e.shape == (4, captions.HASH_DIM) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e[:3], axis=1), 1.0, rtol=1e-6)
    assert not e[3].any()  # no words: a zero row, cosine 0 with everything
    cos = e @ e.T
    assert cos[0, 1] == pytest.approx(1.0)  # case and punctuation do not matter
    assert cos[0, 2] < 0.3 < cos[0, 1]
    shared = captions.hashing_embeddings(["a warm bright beach photo with one plate"])[0]
    assert cos[0, 2] < shared @ e[0] < cos[0, 1]


def test_hashing_embeddings_are_the_same_in_another_process():
    """No per-process hash seed: Python's own str hash would change from run to run."""
    code = ("import sys; import numpy as np; from ipa_jax.data import captions; "
            f"np.save(sys.stdout.buffer, captions.hashing_embeddings({TEXTS!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         check=True).stdout
    theirs = np.load(io.BytesIO(out))
    np.testing.assert_array_equal(theirs, captions.hashing_embeddings(TEXTS))


def test_missing_captions_are_zero_rows():
    rows = captions.embed_captions([TEXTS[0], None, TEXTS[2]], "hashing")
    assert rows.shape == (3, captions.HASH_DIM) and not rows[1].any()
    np.testing.assert_array_equal(rows[[0, 2]], captions.hashing_embeddings(TEXTS[::2][:2]))


def _r(**changes) -> ml_collections.ConfigDict:
    r = config_lib.base_config().prep.retrieval
    r.update(changes)
    return r


def test_semantic_source_follows_the_dataset(tmp_path, caplog):
    raw = tmp_path / "raw"
    raw.mkdir()
    with caplog.at_level("WARNING"):
        r, stats = retrieval.available_aspects(str(raw), _r(w_pose=0.0, w_background=0.5,
                                                            w_semantic=0.5))
    assert r.semantic_source == stats["semantic_source"] == "image"
    assert sum("no captions/*.txt" in m for m in caplog.messages) == 1
    with pytest.raises(config_lib.DataError, match="holds no caption"):
        retrieval.available_aspects(str(raw), _r(semantic_source="captions"))
    (raw / "captions").mkdir()
    (raw / "captions" / "u-1.txt").write_text("a dog on grass", encoding="utf-8")
    caplog.clear()
    with caplog.at_level("WARNING"):
        r, stats = retrieval.available_aspects(str(raw), _r())
    assert r.semantic_source == stats["semantic_source"] == "captions"
    assert not any("captions" in m for m in caplog.messages)
    r, stats = retrieval.available_aspects(str(raw), _r(semantic_source="image"))
    assert stats["semantic_source"] == "image"
    assert captions.read_captions(str(raw), ["u-1", "u-2"]) == ["a dog on grass", None]
