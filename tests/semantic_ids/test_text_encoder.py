"""Text encoders: the packaged MiniLM loads offline and knows synonyms; TF-IDF round-trips."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest

from hirex.semantic_ids.text_encoder import MINILM_PACKAGE, TfidfEncoder, encode_texts


def test_minilm_loads_offline_from_its_package_and_knows_synonyms(monkeypatch):
    try:
        metadata.version(MINILM_PACKAGE)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{MINILM_PACKAGE} is not installed (make install installs it)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = ["red matte lipstick", "crimson lip color", "stainless steel hammer"]
    enc = encode_texts(texts, "minilm")
    assert enc.embeddings.shape == (3, 384)
    assert np.allclose(np.linalg.norm(enc.embeddings, axis=1), 1, atol=1e-5)
    sim = enc.embeddings @ enc.embeddings.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert enc.fingerprint.startswith("53aa5117")  # the weights hirex was tested with
    assert (enc.tokens[:, 0] > 0).all() and enc.tokens.shape[1] == 32


def test_tfidf_encoder_encodes_new_text_with_the_fitted_state():
    texts = ["red lipstick matte", "argan hair shampoo", "lipstick red gloss", "hair oil argan"]
    enc = TfidfEncoder.fit(texts, dim=2)
    again = TfidfEncoder.from_tensors(enc.vocab, enc.tensors())
    a, b = enc.encode(texts), again.encode(texts)
    assert np.allclose(a.embeddings, b.embeddings) and a.fingerprint == b.fingerprint
    new = enc.encode(["matte red lipstick", "unknown words only"]).embeddings
    sims = a.embeddings @ new[0]
    assert sims[[0, 2]].min() > sims[[1, 3]].max()
    assert np.isfinite(new).all()
