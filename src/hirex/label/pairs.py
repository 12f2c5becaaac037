"""Pairs to judge: from qrels or a run plus query and passage text, and stratified samples."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from hirex.label.prompts import Pair

__all__ = ["pairs_for", "stratified_sample"]


def pairs_for(
    wanted: Mapping[str, Mapping[str, object]],
    queries: Mapping[str, str],
    passages: Mapping[str, str],
) -> list[Pair]:
    """One Pair per (qid, docid) of ``wanted`` (qrels or a run), in sorted order.

    Errors name the first query id without text, the first docid without a passage, and the
    first empty passage, with how many more there are."""
    pairs = [(q, d) for q in sorted(wanted) for d in sorted(wanted[q])]
    no_query = sorted({q for q, _ in pairs if q not in queries})
    if no_query:
        raise ValueError(
            f"unknown query id {no_query[0]!r} ({len(no_query)} unknown in all): the queries "
            "file has no text for it"
        )
    no_doc = [(q, d) for q, d in pairs if d not in passages]
    if no_doc:
        raise ValueError(
            f"unknown docid {no_doc[0][1]!r} for query {no_doc[0][0]!r} ({len(no_doc)} pairs "
            "in all): the passages file has no text for it"
        )
    empty = [(q, d) for q, d in pairs if not passages[d].strip()]
    if empty:
        raise ValueError(
            f"passage {empty[0][1]!r} (query {empty[0][0]!r}) is empty ({len(empty)} empty in "
            "all); there is nothing to judge"
        )
    return [Pair(q, d, queries[q], passages[d]) for q, d in pairs]


def stratified_sample(
    qrels: Mapping[str, Mapping[str, int]], n: int, seed: int = 0
) -> dict[str, dict[str, int]]:
    """About ``n`` judged pairs, stratified by query and gold label: each (query, label) cell
    keeps its share of the pool (rounded, at least one pair per non-empty cell), drawn
    without replacement. Returns qrels of the sample."""
    total = sum(len(d) for d in qrels.values())
    if not 0 < n <= total:
        raise ValueError(f"sample size {n} must be in 1..{total} (the judged pairs)")
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, int]] = {}
    for q in sorted(qrels):
        cells: dict[int, list[str]] = {}
        for d, g in sorted(qrels[q].items()):
            cells.setdefault(g, []).append(d)
        for g in sorted(cells):
            docs = cells[g]
            take = min(len(docs), max(1, math.floor(len(docs) * n / total + 0.5)))
            for i in rng.choice(len(docs), size=take, replace=False):
                out.setdefault(q, {})[docs[int(i)]] = g
    return out
