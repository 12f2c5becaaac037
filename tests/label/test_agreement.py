"""Agreement statistics on hand-computed cases, and their bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from hirex.label.agreement import label_agreement, ranking_agreement, rbo


def test_hand_computed_label_agreement():
    # po = 3/4, pe = .5 * .25 + .5 * .75 = .5, kappa = (.75 - .5) / .5 = .5
    # Krippendorff (two values, so ordinal = nominal): coincidences o00 = 2, o01 = o10 = 1,
    # o11 = 4; n0 = 3, n1 = 5, n = 8; alpha = 1 - (2/8) / (2 * 3 * 5 / 56) = 8/15
    out = label_agreement([0, 0, 1, 1], [0, 1, 1, 1], ["a", "a", "b", "b"], 1, binary_at=1)
    assert out["kappa"] == pytest.approx(0.5)
    assert out["kappa_binary"] == pytest.approx(0.5)
    assert out["alpha"] == pytest.approx(8 / 15)
    assert out["confusion"] == [[1, 1], [0, 2]]
    assert out["pairs"] == 4 and out["queries"] == 2


def test_hand_computed_weighted_kappa():
    # observed linear disagreement 1/3 (one pair off by one), expected 1: kappa_w = 2/3
    out = label_agreement([0, 1, 2], [0, 2, 2], ["a", "b", "c"], 2, n_boot=10)
    assert out["kappa_linear"] == pytest.approx(2 / 3)
    # binarised at 2: gold [F, F, T], pred [F, T, T]: po 2/3, pe 2/3*1/3 + 1/3*2/3 = 4/9
    assert out["kappa_binary"] == pytest.approx((2 / 3 - 4 / 9) / (1 - 4 / 9))


def test_perfect_and_undefined_agreement():
    g = [0, 1, 2, 3] * 5
    out = label_agreement(g, g, [str(i % 4) for i in range(20)], 3, n_boot=50)
    assert out["kappa"] == pytest.approx(1.0) and out["alpha"] == pytest.approx(1.0)
    assert out["kappa_ci"] == [1.0, 1.0]
    const = label_agreement([0] * 6, [0] * 6, list("aabbcc"), 3, n_boot=20)
    assert const["kappa"] is None and const["alpha"] is None  # undefined, said so
    assert const["kappa_undefined_share"] == 1.0


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 4, 400)
    pred = np.where(rng.random(400) < 0.6, gold, rng.integers(0, 4, 400))
    groups = [str(i // 10) for i in range(400)]
    a = label_agreement(gold, pred, groups, 3, n_boot=200, seed=1)
    b = label_agreement(gold, pred, groups, 3, n_boot=200, seed=1)
    assert a == b
    lo, hi = a["kappa_ci"]
    assert lo < a["kappa"] < hi and hi - lo < 0.2


def test_bad_inputs():
    with pytest.raises(ValueError, match="one length"):
        label_agreement([0, 1], [0], ["a", "b"], 3)
    with pytest.raises(ValueError, match=r"pred grades must be in 0\.\.2"):
        label_agreement([0, 1], [0, 3], ["a", "b"], 2)


def test_rbo_hand_computed():
    # p = .5: agreements A1 = 1, A2 = 1/2, A3 = 1; X3/3 p^3 + (1-p)/p sum A_d p^d
    assert rbo([1, 2, 3], [1, 3, 2], p=0.5) == pytest.approx(0.125 + 0.5 + 0.125 + 0.125)
    assert rbo(list("abcd"), list("abcd")) == pytest.approx(1.0)
    assert rbo(list("ab"), list("cd")) == pytest.approx(0.0)


def test_ranking_agreement():
    gold = np.array([[0.3, 0.5], [0.2, 0.4], [0.1, 0.3]])
    out = ranking_agreement(gold, gold[::-1], ["A", "B", "C"], n_boot=50)
    assert out["kendall_tau"] == pytest.approx(-1.0)
    assert out["gold_order"] == ["A", "B", "C"] and out["llm_order"] == ["C", "B", "A"]
    same = ranking_agreement(gold, gold * 0.5, ["A", "B", "C"], n_boot=50)
    assert same["kendall_tau"] == pytest.approx(1.0) and same["rbo"] == pytest.approx(1.0)
    assert same["kendall_tau_ci"] == [1.0, 1.0]


def test_ranking_agreement_undefined_when_all_systems_tie():
    gold = np.array([[0.3, 0.5], [0.2, 0.4], [0.1, 0.3]])
    out = ranking_agreement(gold, np.zeros_like(gold), ["A", "B", "C"], n_boot=20)
    assert out["kendall_tau"] is None and out["rbo"] is None
    assert out["kendall_tau_undefined_share"] == 1.0
