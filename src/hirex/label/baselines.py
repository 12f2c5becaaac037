"""Non-LLM labellers, the bar an LLM judge must clear: a retrieval score mapped to grades.

Scores: BM25 (``bm25s``, over a whole passage collection so IDF means something) and the
cosine between MiniLM embeddings of query and passage. Grades come from thresholds on the
score, fitted on pairs *outside* the evaluated sample: either the thresholds that maximise
Cohen's kappa against the gold labels there (:func:`fit_thresholds`), or those that give the
gold label distribution there (:func:`prior_thresholds`; this one also maps an LLM's expected
grade to grades without any labelled pair of the sample).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "apply_thresholds",
    "bm25_scores",
    "cosine_scores",
    "fit_thresholds",
    "prior_thresholds",
]


def bm25_scores(
    pairs: Sequence[tuple[str, str]],
    queries: Mapping[str, str],
    passages: Mapping[str, str],
    k1: float = 1.5,
    b: float = 0.75,
) -> np.ndarray:
    """(P,) BM25 score of each (qid, docid) pair; the index holds every passage given."""
    import bm25s

    docids = sorted(passages)
    row = {d: i for i, d in enumerate(docids)}
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(
        bm25s.tokenize([passages[d] for d in docids], stopwords="en", show_progress=False),
        show_progress=False,
    )
    out = np.zeros(len(pairs), np.float64)
    by_query: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(pairs):
        by_query.setdefault(q, []).append(i)
    for q, idx in by_query.items():
        tokens = bm25s.tokenize(
            [queries[q]], stopwords="en", show_progress=False, return_ids=False
        )[0]
        scores = retriever.get_scores(tokens)
        out[idx] = scores[[row[pairs[i][1]] for i in idx]]
    return out


def cosine_scores(
    pairs: Sequence[tuple[str, str]],
    queries: Mapping[str, str],
    passages: Mapping[str, str],
    max_tokens: int = 128,
) -> np.ndarray:
    """(P,) cosine of all-MiniLM-L6-v2 embeddings of query and passage."""
    from hirex.semantic_ids.text_encoder import encode_minilm

    qids = sorted({q for q, _ in pairs})
    dids = sorted({d for _, d in pairs})
    qe = encode_minilm([queries[q] for q in qids], max_tokens=max_tokens).embeddings
    de = encode_minilm([passages[d] for d in dids], max_tokens=max_tokens).embeddings
    qi = {q: i for i, q in enumerate(qids)}
    di = {d: i for i, d in enumerate(dids)}
    rows = np.array([qi[q] for q, _ in pairs])
    cols = np.array([di[d] for _, d in pairs])
    return np.einsum("pd,pd->p", qe[rows], de[cols]).astype(np.float64)


def apply_thresholds(scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Grade = number of thresholds the score reaches (thresholds ascending)."""
    t = np.asarray(thresholds, float)
    if np.any(np.diff(t) < 0):
        raise ValueError(f"thresholds must be ascending, got {list(t)}")
    return np.searchsorted(t, np.asarray(scores, float), side="right")


def prior_thresholds(scores: np.ndarray, gold: np.ndarray, scale: int) -> list[float]:
    """Thresholds at the quantiles of ``scores`` that reproduce the grade distribution of
    ``gold`` (the scores and gold labels of the fitting pairs; or, for a score with no fitting
    pairs, any scores and the gold grades whose distribution to match)."""
    shares = np.bincount(np.asarray(gold, int), minlength=scale + 1)[: scale + 1] / len(gold)
    cuts = np.cumsum(shares)[:-1]
    return [float(np.quantile(scores, c)) for c in cuts]


def fit_thresholds(
    scores: np.ndarray, gold: np.ndarray, scale: int, grid: int = 40, rounds: int = 3
) -> list[float]:
    """Thresholds maximising Cohen's kappa on (scores, gold), by coordinate ascent over a
    quantile grid, started from :func:`prior_thresholds`."""
    from sklearn.metrics import cohen_kappa_score

    scores, gold = np.asarray(scores, float), np.asarray(gold, int)
    t = prior_thresholds(scores, gold, scale)
    candidates = np.quantile(scores, np.linspace(0.0, 1.0, grid + 1))

    def kappa(th: list[float]) -> float:
        k = cohen_kappa_score(gold, apply_thresholds(scores, sorted(th)))
        return k if np.isfinite(k) else -1.0

    best = kappa(t)
    for _ in range(rounds):
        for j in range(len(t)):
            for c in candidates:
                trial = t.copy()
                trial[j] = float(c)
                k = kappa(trial)
                if k > best:
                    best, t = k, trial
    return sorted(t)
