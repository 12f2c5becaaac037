"""``hirex label`` and ``hirex eval --qrels`` end to end: known answers through a fake
server, bad inputs (exit code 2, the message, nothing written), and recommendations."""

from __future__ import annotations

import json

import pytest

from hirex.cli.main import main
from tests.label.conftest import write_trec_files


def label_args(files, server, cache, *extra):
    return [
        "label",
        "--backend",
        "openai",
        "--base-url",
        server.url,
        "--model",
        "fake",
        "--variant",
        "R",
        "--cache",
        str(cache),
        "--no-progress",
        "--queries",
        str(files["queries"]),
        "--passages",
        str(files["passages"]),
        *extra,
    ]


def test_label_then_agree_then_eval(fake_server, tmp_path, capsys):
    files = write_trec_files(tmp_path / "data", 12)
    s = fake_server("ok")
    out = tmp_path / "llm.txt"
    args = label_args(files, s, tmp_path / "c.sqlite", "--qrels", str(files["qrels"]))
    assert main([*args, "--output", str(out)]) == 0
    from hirex.eval.trec import read_qrels

    assert read_qrels(out) == read_qrels(files["qrels"])  # the fake judge is always right
    assert main([*args, "--output", str(out)]) == 0
    assert "12 from the cache, 0 asked" in capsys.readouterr().out
    assert len(s.requests()) == 12

    report = tmp_path / "agree.json"
    run = tmp_path / "run.txt"
    run.write_text("".join(f"q{i % 3} Q0 d{i} 1 {i / 10} s\n" for i in range(12)))
    assert (
        main(
            [
                "label",
                "agree",
                "--gold",
                str(files["qrels"]),
                "--pred",
                str(out),
                "--boot",
                "50",
                "--output",
                str(report),
            ]
        )
        == 0
    )
    stats = json.loads(report.read_text())
    assert stats["kappa"] == pytest.approx(1.0) and stats["pairs"] == 12

    assert main(["eval", "--trec-run", str(run), "--qrels", str(out), "--ks", "5"]) == 0
    assert "ndcg_cut_5" in capsys.readouterr().out

    # the top 2 of each query of a TREC run: pairs judged above, so all from the cache
    top2 = tmp_path / "top2.txt"
    trec = label_args(files, s, tmp_path / "c.sqlite", "--trec-run", str(run), "--depth", "2")
    assert main([*trec, "--output", str(top2)]) == 0
    assert "6 pairs: 6 from the cache, 0 asked" in capsys.readouterr().out
    assert {q: sorted(v) for q, v in read_qrels(top2).items()} == {
        "q0": ["d6", "d9"],
        "q1": ["d10", "d7"],
        "q2": ["d11", "d8"],
    }
    assert len(s.requests()) == 12


def test_label_options_are_checked(tmp_path, capsys):
    files = write_trec_files(tmp_path / "data", 3)
    base = [
        "label",
        "--qrels",
        str(files["qrels"]),
        "--queries",
        str(files["queries"]),
        "--passages",
        str(files["passages"]),
        "--cache",
        str(tmp_path / "c.sqlite"),
    ]
    assert main([*base, "--set", "train.lr=1"]) == 2
    assert "hirex label takes only label.KEY=VALUE" in capsys.readouterr().err
    assert main([*base, "--set", "label.nosuch=1"]) == 2
    assert "unknown keys ['nosuch'] in [label]" in capsys.readouterr().err
    assert main([*base, "--variant", "RZ"]) == 2
    assert "use each of the letters RDNAM" in capsys.readouterr().err
    assert main([*base, "--model", "nosuch"]) == 2
    assert "unknown local model 'nosuch'" in capsys.readouterr().err
    assert main([*base, "--backend", "local", "--base-url", "http://127.0.0.1:1/v1"]) == 2
    assert "--base-url is for --backend openai" in capsys.readouterr().err
    assert not (tmp_path / "c.sqlite").exists()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("qrels_columns", r"qrels.txt:2: a qrels line has 4 columns"),
        ("unknown_query", "unknown query id 'q9'"),
        ("empty_passage", "passage 'd0' .* is empty"),
        ("template", r"lacks the placeholder \{document\}"),
        ("unreachable", "cannot reach the labelling endpoint http://127.0.0.1:"),
    ],
)
def test_bad_inputs_exit_2_and_write_nothing(fake_server, tmp_path, capsys, breakage, message):
    files = write_trec_files(tmp_path / "data", 6)
    s = fake_server("ok")
    extra = []
    if breakage == "qrels_columns":
        lines = files["qrels"].read_text().splitlines()
        lines[1] = "q1 0 d1"
        files["qrels"].write_text("\n".join(lines) + "\n")
    elif breakage == "unknown_query":
        files["qrels"].write_text(files["qrels"].read_text() + "q9 0 d1 1\n")
    elif breakage == "empty_passage":
        lines = files["passages"].read_text().splitlines()
        lines[0] = json.dumps({"docid": "d0", "doc": "   "})
        files["passages"].write_text("\n".join(lines) + "\n")
    elif breakage == "template":
        t = tmp_path / "t.toml"
        from importlib.resources import files as res

        text = res("hirex.label").joinpath("templates", "umbrela.toml").read_text()
        t.write_text(text.replace("-----\n{document}\n-----", "-----\n-----"))
        extra = ["--template", str(t)]
    elif breakage == "unreachable":
        s.stop()
    out = tmp_path / "llm.txt"
    cache = tmp_path / "c.sqlite"
    args = label_args(files, s, cache, "--qrels", str(files["qrels"]), "--output", str(out))
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert "hirex label: error:" in err
    import re

    assert re.search(message, err), err
    assert not out.exists()
    if breakage == "unreachable":  # the cache was opened, but holds nothing
        from hirex.label.cache import LabelCache

        assert LabelCache(cache).count() == 0
    else:  # refused before anything was opened
        assert not cache.exists()
    assert len(s.requests()) == 0


def test_label_recommendations_of_a_run(fake_server, tmp_path, capsys):
    from tests.semantic_ids.conftest import write_catalogue

    data = write_catalogue(tmp_path / "shop", n_users=60)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                "--set",
                "train.epochs=1",
                "--set",
                "model.dim=16",
            ]
        )
        == 0
    )
    s = fake_server("ok")
    out = tmp_path / "rec.txt"
    assert (
        main(
            [
                "label",
                "--backend",
                "openai",
                "--base-url",
                s.url,
                "--model",
                "fake",
                "--template",
                "recommendation",
                "--run",
                str(run),
                "--users",
                "5",
                "--k",
                "3",
                "--cache",
                str(tmp_path / "c.sqlite"),
                "--no-progress",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    from hirex.eval.trec import read_qrels

    qrels = read_qrels(out)
    assert len(qrels) == 5 and all(len(v) == 3 for v in qrels.values())
    assert all(
        q.startswith("user") and all(d.startswith("item") for d in v) for q, v in qrels.items()
    )
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--qrels", str(out), "--ks", "3"]) == 0
    printed = capsys.readouterr().out
    assert "5 queries" in printed and "ndcg_cut_3" in printed
    bad = tmp_path / "bad.txt"
    bad.write_text("nobody 0 item1 1\n")
    assert main(["eval", "--run", str(run), "--qrels", str(bad)]) == 2
    assert "query id 'nobody' is not a user" in capsys.readouterr().err


def test_a_file_that_is_no_model_is_named(tmp_path, capsys):
    pytest.importorskip("xllamacpp")
    files = write_trec_files(tmp_path / "data", 3)
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    args = ["label", "--model", str(fake), "--qrels", str(files["qrels"]), "--queries",
            str(files["queries"]), "--passages", str(files["passages"]), "--cache",
            str(tmp_path / "c.sqlite"), "--output", str(tmp_path / "out.txt")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"while loading {fake}; is it a GGUF model file" in err
    assert not (tmp_path / "out.txt").exists()


def test_agree_bad_inputs_write_nothing(tmp_path, capsys):
    files = write_trec_files(tmp_path / "data", 3)
    gold = str(files["qrels"])
    assert main(["label", "agree", "--gold", gold, "--pred", gold, "--output", str(tmp_path)]) == 2
    assert "is a folder; give a file path" in capsys.readouterr().err
    assert main(["label", "agree", "--gold", gold, "--pred", gold, "--boot", "0"]) == 2
    assert "--boot must lie in 1..100,000, got 0" in capsys.readouterr().err
    other = tmp_path / "other.txt"
    other.write_text("zz 0 d1 1\n")
    out = tmp_path / "a.json"
    assert main(["label", "agree", "--gold", gold, "--pred", str(other), "--output", str(out)]) == 2
    assert "judge no pair in common" in capsys.readouterr().err
    assert not out.exists()
