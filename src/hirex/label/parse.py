"""Reading a judge's answer: JSON first, tolerant of what small models wrap around it.

Accepted: a JSON object anywhere in the text (inside code fences or prose), single quotes,
numbers written as strings (``"2"``), lower-case keys, and ``final score: 2``-style text when no
object is found. Refused, and recorded as *unparsed* rather than as a label: no score at all,
a score outside the scale, a fraction, or a wrong number of judges' scores.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

__all__ = ["Parsed", "expected_grade", "parse_answer"]

_OBJECT = re.compile(r"\{[^{}]*\}", re.S)
_FINAL = re.compile(r"(?:\bO\b|overall|final\s*score|score)\s*[\"']?\s*[:=]\s*[\"']?(\d+)", re.I)


@dataclass(frozen=True)
class Parsed:
    """``ok``: ``label`` is the mean overall score (several judges averaged) and ``grade`` its
    rounding (half up); ``aspects`` holds M and T when asked. Otherwise ``reason`` says why."""

    ok: bool
    label: float | None = None
    grade: int | None = None
    aspects: dict[str, int] = field(default_factory=dict)
    reason: str = ""


def parse_answer(text: str, scale: int, n_scores: int = 1, aspects: bool = False) -> Parsed:
    """Parse one answer on the 0..``scale`` grade range with ``n_scores`` overall scores."""
    obj = _find_object(text)
    if obj is None:
        m = _FINAL.search(text or "")
        if m is None or n_scores != 1:
            return Parsed(False, reason="no JSON object with an overall score O")
        obj = {"O": m.group(1)}
    obj = {str(k).strip().upper(): v for k, v in obj.items()}
    overall = obj.get("O", obj.get("OVERALL", obj.get("SCORE")))
    if overall is None:
        return Parsed(False, reason=f"JSON without O: keys {sorted(obj)}")
    scores = overall if isinstance(overall, list) else [overall]
    if len(scores) != n_scores:
        return Parsed(False, reason=f"{len(scores)} overall scores; expected {n_scores}")
    grades = []
    for s in scores:
        g = _grade(s, scale)
        if g is None:
            return Parsed(False, reason=f"overall score {s!r} is not an integer in 0..{scale}")
        grades.append(g)
    found = {}
    if aspects:
        for key in ("M", "T"):
            if key in obj:
                g = _grade(obj[key], scale)
                if g is None:
                    return Parsed(False, reason=f"{key} = {obj[key]!r} is not in 0..{scale}")
                found[key] = g
    label = sum(grades) / len(grades)
    return Parsed(True, label=label, grade=int(math.floor(label + 0.5)), aspects=found)


def _find_object(text: str) -> dict | None:
    if not text:
        return None
    for m in _OBJECT.finditer(text):
        chunk = m.group(0)
        for candidate in (chunk, chunk.replace("'", '"')):
            try:
                obj = json.loads(candidate)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    # A judges' list puts brackets inside the object; try the widest braces once.
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            obj = json.loads(text[start : end + 1])
            return obj if isinstance(obj, dict) else None
        except json.JSONDecodeError:
            return None
    return None


def _grade(value: object, scale: int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not re.fullmatch(r"\d+", value):
            return None
        value = int(value)
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= scale:
        return None
    return value


_O_KEY = re.compile(r"[\"']O[\"']\s*:\s*\[?\s*$")


def expected_grade(
    logprobs: list[tuple[str, dict[str, float]]] | None, scale: int, n_scores: int = 1
) -> float | None:
    """The mean over the overall score positions of ``sum_g g * p(g)``, with ``p`` the model's
    probabilities of the grade tokens ``0..scale`` at that position, renormalised over them.

    A score position is a generated digit token right after the ``"O":`` key (or after a comma
    inside its list, for several judges). This graded score says more than the greedy grade of
    a small model, whose answer is often the same grade for every pair. None when the server
    sent no log-probabilities or no position was found."""
    if not logprobs:
        return None
    text, inside, values = "", False, []
    for token, top in logprobs:
        stripped = token.strip()
        if (inside or _O_KEY.search(text)) and stripped.isdigit():
            probs = [0.0] * (scale + 1)
            for alt, lp in top.items():
                a = alt.strip()
                if a.isdigit() and int(a) <= scale and lp > -1e9:
                    probs[int(a)] += math.exp(lp)
            z = sum(probs)
            if z > 0:
                values.append(sum(g * p for g, p in enumerate(probs)) / z)
            inside = n_scores > 1 and len(values) < n_scores
        elif inside and stripped not in (",", ""):
            inside = stripped.startswith(",") and len(values) < n_scores
        text += token
        if len(values) == n_scores:
            break
    return sum(values) / len(values) if values else None
