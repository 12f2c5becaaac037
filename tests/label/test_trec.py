"""TREC qrels and runs: round trips, bad lines, and metrics equal to ir_measures'
(pytrec_eval, i.e. trec_eval)."""

from __future__ import annotations

import numpy as np
import pytest

from hirex.eval.trec import read_qrels, read_run, trec_metrics, write_qrels, write_run


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    qrels, run = {}, {}
    for q in range(12):
        docs = [f"d{int(i)}" for i in rng.choice(60, 25, replace=False)]
        qrels[f"q{q}"] = {d: int(rng.choice(4, p=[0.5, 0.2, 0.2, 0.1])) for d in docs[:15]}
        # scores with ties, and retrieved documents that are not judged
        run[f"q{q}"] = {d: float(rng.integers(0, 8)) for d in docs[5:]}
    run["q_unjudged"] = {"d1": 1.0}
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_ir_measures(seed, tmp_path):
    ir_measures = pytest.importorskip("ir_measures")
    from ir_measures import AP, RR, P, R, nDCG

    qrels, run = random_case(seed)
    write_qrels(tmp_path / "qrels.txt", qrels)
    write_run(tmp_path / "run.txt", run)
    ours = trec_metrics(
        read_qrels(tmp_path / "qrels.txt"), read_run(tmp_path / "run.txt"), ks=(5, 10)
    )
    ref = ir_measures.calc_aggregate(
        [nDCG @ 5, nDCG @ 10, P @ 10, R @ 10, AP, RR],
        ir_measures.read_trec_qrels(str(tmp_path / "qrels.txt")),
        ir_measures.read_trec_run(str(tmp_path / "run.txt")),
    )
    ref = {str(k): v for k, v in ref.items()}
    assert ours["ndcg_cut_5"] == pytest.approx(ref["nDCG@5"], abs=1e-9)
    assert ours["ndcg_cut_10"] == pytest.approx(ref["nDCG@10"], abs=1e-9)
    assert ours["P_10"] == pytest.approx(ref["P@10"], abs=1e-9)
    assert ours["recall_10"] == pytest.approx(ref["R@10"], abs=1e-9)
    assert ours["map"] == pytest.approx(ref["AP"], abs=1e-9)
    assert ours["recip_rank"] == pytest.approx(ref["RR"], abs=1e-9)


def test_hand_computed_ndcg():
    qrels = {"q": {"a": 3, "b": 0, "c": 1}}
    run = {"q": {"b": 3.0, "a": 2.0, "c": 1.0}}
    dcg = 3 / np.log2(3) + 1 / np.log2(4)
    idcg = 3 + 1 / np.log2(3)
    assert trec_metrics(qrels, run, ks=(10,))["ndcg_cut_10"] == pytest.approx(dcg / idcg)


def test_round_trip(tmp_path):
    qrels, run = random_case(3)
    write_qrels(tmp_path / "q", qrels)
    write_run(tmp_path / "r", run, tag="sys1")
    assert read_qrels(tmp_path / "q") == qrels
    back = read_run(tmp_path / "r")
    assert back.keys() == run.keys() and all(back[q] == pytest.approx(run[q]) for q in run)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("q1 0 d1 1\nq1 0 d2\n", r"q:2: a qrels line has 4 columns .* has 3"),
        ("q1 0 d1 high\n", "label 'high' is not an integer"),
        ("q1 0 d1 1\nq1 0 d1 2\n", "judged twice"),
        ("\n\n", "no qrels lines"),
    ],
)
def test_bad_qrels(tmp_path, text, message):
    (tmp_path / "q").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_qrels(tmp_path / "q")


def test_bad_run(tmp_path):
    (tmp_path / "r").write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2 nan tag\n")
    with pytest.raises(ValueError, match="r:2: score 'nan' is not finite"):
        read_run(tmp_path / "r")
    (tmp_path / "r").write_text("q1 Q0 d1 1 0.5\n")
    with pytest.raises(ValueError, match="6 columns"):
        read_run(tmp_path / "r")
