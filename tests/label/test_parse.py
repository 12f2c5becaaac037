"""The answer parser: tolerant of wrapping, strict about scores; expected grades."""

from __future__ import annotations

import math

import pytest

from hirex.label.parse import expected_grade, parse_answer


@pytest.mark.parametrize(
    ("text", "grade"),
    [
        ('{"O": 2}', 2),
        ('```json\n{"M": 1, "T": 2, "O": 3}\n```', 3),
        ("Sure! {'O': '1'} is my answer", 1),
        ('{"o": 0}', 0),
        ("Final score: 2", 2),
        ('{"overall": 1}', 1),
    ],
)
def test_tolerated(text, grade):
    p = parse_answer(text, 3)
    assert p.ok and p.grade == grade


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no JSON object"),
        ("it is relevant", "no JSON object"),
        ('{"O": 5}', "not an integer in 0..3"),
        ('{"O": 1.5}', "not an integer"),
        ('{"O": true}', "not an integer"),
        ('{"M": 2}', "JSON without O"),
    ],
)
def test_refused(text, reason):
    p = parse_answer(text, 3)
    assert not p.ok and p.label is None and reason in p.reason


def test_judges_are_averaged_and_counted():
    p = parse_answer('{"M": 2, "T": 1, "O": [1, 2, 2, 3, 2]}', 3, n_scores=5, aspects=True)
    assert p.ok and p.label == 2.0 and p.grade == 2 and p.aspects == {"M": 2, "T": 1}
    assert parse_answer('{"O": [1, 2]}', 3, n_scores=2).grade == 2  # 1.5 rounds half up
    assert not parse_answer('{"O": [1, 2]}', 3, n_scores=5).ok


def test_expected_grade_from_logprobs():
    lp = math.log
    tokens = [
        ('{"', {}),
        ("O", {}),
        ('":', {}),
        (" ", {}),
        ("1", {"1": lp(0.5), "2": lp(0.25), "0": lp(0.125), "x": lp(0.125)}),
        ("}", {}),
    ]
    # renormalised over the grade tokens: p = (1/7, 4/7, 2/7) for 0, 1, 2
    assert expected_grade(tokens, 3) == pytest.approx((4 + 4) / 7)
    assert expected_grade(None, 3) is None
    judges = [('{"O": [', {}), ("2", {"2": 0.0}), (",", {}), (" 0", {"0": 0.0}), ("]}", {})]
    assert expected_grade(judges, 3, n_scores=2) == pytest.approx(1.0)
