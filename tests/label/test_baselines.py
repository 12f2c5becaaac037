"""Score baselines: thresholds with known answers, BM25 and MiniLM cosine on tiny text."""

from __future__ import annotations

import numpy as np
import pytest

from hirex.label.baselines import (
    apply_thresholds,
    bm25_scores,
    cosine_scores,
    fit_thresholds,
    prior_thresholds,
)


def test_thresholds():
    assert apply_thresholds(np.array([0.1, 0.5, 0.9, 2.0]), [0.5, 1.0]).tolist() == [0, 1, 1, 2]
    with pytest.raises(ValueError, match="ascending"):
        apply_thresholds(np.array([1.0]), [1.0, 0.5])
    scores = np.arange(100, dtype=float)
    gold = np.repeat([0, 1, 2, 3], [50, 20, 20, 10])
    # the scores order the gold grades perfectly: both fits reproduce them exactly
    for th in (prior_thresholds(scores, gold, 3), fit_thresholds(scores, gold, 3)):
        assert apply_thresholds(scores, th).tolist() == gold.tolist()


def test_bm25_and_cosine_rank_the_matching_passage_first():
    queries = {"q": "red lipstick"}
    passages = {
        "a": "a matte red lipstick for lips",
        "b": "a tent for camping in the rain",
        "c": "steel chef knife with a sharp blade",
    }
    pairs = [("q", "a"), ("q", "b"), ("q", "c")]
    bm = bm25_scores(pairs, queries, passages)
    assert bm[0] > bm[1] and bm[0] > bm[2]
    try:
        cos = cosine_scores(pairs, queries, passages)
    except ValueError as err:  # the MiniLM package is missing
        pytest.skip(str(err))
    assert cos.argmax() == 0
    from hirex.semantic_ids.text_encoder import encode_minilm

    q = encode_minilm(["red lipstick"], max_tokens=128).embeddings[0]
    ref = [float(q @ encode_minilm([passages[d]], max_tokens=128).embeddings[0]) for _, d in pairs]
    assert cos == pytest.approx(ref, abs=1e-5)
