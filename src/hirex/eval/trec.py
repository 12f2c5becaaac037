"""TREC file formats and graded-relevance metrics over them.

- qrels: ``qid Q0 docid label`` per line (whitespace-separated; the second column is ignored);
- run: ``qid Q0 docid rank score tag`` per line.

Metrics follow trec_eval (and so ``ir_measures`` / ``ranx``, which tests compare against):
documents are ranked by descending score, ties broken by descending docid (trec_eval's
order); a run's ranks column is ignored. ``ndcg_cut_k`` uses gains equal to the label and
``1 / log2(rank + 1)`` discounts, with the ideal ranking over all judged documents of the
query; ``P_k`` and ``recall_k`` count labels >= ``rel`` (1 by default) as relevant. Only
queries in both the qrels and the run are averaged (trec_eval's default, without ``-c``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from hirex.atomic_files import atomic_write_text

__all__ = [
    "Qrels",
    "Run",
    "read_qrels",
    "read_run",
    "trec_metrics",
    "write_qrels",
    "write_run",
]

Qrels = dict[str, dict[str, int]]
"""qid -> docid -> graded label."""
Run = dict[str, dict[str, float]]
"""qid -> docid -> score (higher ranks first)."""


def read_qrels(path: str | os.PathLike) -> Qrels:
    path = Path(path)
    out: Qrels = {}
    for lineno, line in _lines(path):
        cols = line.split()
        if len(cols) != 4:
            raise ValueError(
                f"{path}:{lineno}: a qrels line has 4 columns `qid Q0 docid label`; this one "
                f"has {len(cols)}: {line[:80]!r}"
            )
        qid, _, docid, label = cols
        try:
            value = int(label)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: label {label!r} is not an integer") from None
        if docid in out.setdefault(qid, {}) and out[qid][docid] != value:
            raise ValueError(
                f"{path}:{lineno}: ({qid}, {docid}) is judged twice, {out[qid][docid]} and "
                f"{value}; keep one line per pair"
            )
        out[qid][docid] = value
    if not out:
        raise ValueError(f"{path}: no qrels lines")
    return out


def read_run(path: str | os.PathLike) -> Run:
    path = Path(path)
    out: Run = {}
    for lineno, line in _lines(path):
        cols = line.split()
        if len(cols) != 6:
            raise ValueError(
                f"{path}:{lineno}: a run line has 6 columns `qid Q0 docid rank score tag`; "
                f"this one has {len(cols)}: {line[:80]!r}"
            )
        qid, _, docid, _, score, _ = cols
        try:
            value = float(score)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: score {score!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{path}:{lineno}: score {score!r} is not finite")
        if docid in out.setdefault(qid, {}):
            raise ValueError(f"{path}:{lineno}: {docid} is listed twice for query {qid}")
        out[qid][docid] = value
    if not out:
        raise ValueError(f"{path}: no run lines")
    return out


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield lineno, line.strip()


def write_qrels(path: str | os.PathLike, qrels: Mapping[str, Mapping[str, int]]) -> None:
    lines = [f"{q} 0 {d} {int(v)}" for q in sorted(qrels) for d, v in sorted(qrels[q].items())]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_run(
    path: str | os.PathLike, run: Mapping[str, Mapping[str, float]], tag: str = "hirex"
) -> None:
    if any(ch.isspace() for ch in tag) or not tag:
        raise ValueError(f"run tag {tag!r} must be one word")
    lines = []
    for q in sorted(run):
        for rank, (d, s) in enumerate(ranked(run[q]), 1):
            lines.append(f"{q} Q0 {d} {rank} {s:.6f} {tag}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def ranked(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """Docids by descending score, ties by descending docid (trec_eval's order)."""
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def trec_metrics(
    qrels: Qrels,
    run: Run,
    ks: Iterable[int] = (10,),
    rel: int = 1,
    per_query: bool = False,
) -> dict[str, float] | dict[str, dict[str, float]]:
    """``ndcg_cut_k``, ``P_k``, ``recall_k`` for each k, plus ``map`` and ``recip_rank``,
    averaged over the queries in both ``qrels`` and ``run``. ``per_query=True`` returns
    ``{qid: {measure: value}}`` instead."""
    ks = tuple(ks)
    rows: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        if qid not in run:
            continue
        ranking = [d for d, _ in ranked(run[qid])]
        gains = [judged.get(d, 0) for d in ranking]
        ideal = sorted((g for g in judged.values() if g > 0), reverse=True)
        n_rel = sum(1 for g in judged.values() if g >= rel)
        row: dict[str, float] = {}
        for k in ks:
            dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]) if g > 0)
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
            row[f"ndcg_cut_{k}"] = dcg / idcg if idcg > 0 else 0.0
            hits = sum(1 for g in gains[:k] if g >= rel)
            row[f"P_{k}"] = hits / k
            row[f"recall_{k}"] = hits / n_rel if n_rel else 0.0
        ap, hits, rr = 0.0, 0, 0.0
        for i, g in enumerate(gains):
            if g >= rel:
                hits += 1
                ap += hits / (i + 1)
                if rr == 0.0:
                    rr = 1.0 / (i + 1)
        row["map"] = ap / n_rel if n_rel else 0.0
        row["recip_rank"] = rr
        rows[qid] = row
    if per_query:
        return rows
    if not rows:
        return {}
    names = next(iter(rows.values())).keys()
    return {m: sum(r[m] for r in rows.values()) / len(rows) for m in names}
