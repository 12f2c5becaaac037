"""hirex index build|stats, and retrieve / eval through an index."""

from __future__ import annotations

import json

import pytest

from hirex.cli.main import main
from tests.cli.test_cli import SMALL


@pytest.fixture(scope="module")
def run_with_index(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *SMALL, "--out", str(out)]) == 0
    assert main(["index", "build", "--run", str(out), "--levels", "8,4"]) == 0
    return out


def test_build_writes_an_index_and_stats_a_png(run_with_index, tmp_path, capsys):
    assert (run_with_index / "index" / "manifest.json").exists()
    png = tmp_path / "sizes.png"
    assert main(["index", "stats", str(run_with_index / "index"), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "level 1: 8 nodes" in out and "empty" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["index", "stats", str(run_with_index / "index"), "--json", "--png", str(png)]) == 0
    stats = json.loads(capsys.readouterr().out.split("\nnode size")[0])
    assert stats["info"]["method"] == "posthoc" and stats["n_active"] == 200


def test_eval_with_a_beam_over_every_node_equals_exhaustive(run_with_index, tmp_path):
    full, through = tmp_path / "full.json", tmp_path / "index.json"
    assert main(["eval", "--run", str(run_with_index), "--output", str(full)]) == 0
    argv = ["eval", "--run", str(run_with_index), "--index", "--beam", "1000", "--output"]
    assert main([*argv, str(through)]) == 0
    a, b = json.loads(full.read_text()), json.loads(through.read_text())
    assert b["recall@20"] == pytest.approx(a["recall@20"])
    assert b["items_scored_fraction"] > 0.8  # every item but each user's history
    narrow = tmp_path / "narrow.json"
    argv = ["eval", "--run", str(run_with_index), "--index", "--beam", "1", "--output"]
    assert main([*argv, str(narrow)]) == 0
    assert json.loads(narrow.read_text())["items_scored_fraction"] < 0.2


def test_build_a_hierarchical_kmeans_index(run_with_index, tmp_path, capsys):
    out = tmp_path / "hkm"
    argv = ["index", "build", "--run", str(run_with_index), "--levels", "8,4", "--out", str(out)]
    assert main([*argv, "--kmeans", "hierarchical", "--beam", "1000"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["assign"] == "centroids" and manifest["node_embedding"] == "centroids"
    capsys.readouterr()
    bad = [*argv, "--kmeans", "hierarchical", "--node-embedding", "codewords"]
    assert main(bad) == 2
    assert "scores nodes at their centroids" in capsys.readouterr().err


def test_retrieve_through_the_index(run_with_index, capsys):
    argv = ["retrieve", "--run", str(run_with_index), "--users", "0,3", "--k", "4"]
    assert main([*argv, "--index", "--beam", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["user"] for r in rows] == [0, 3]
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in rows)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--beam", "4"], "--beam needs --index"),
        (["eval", "--index", "--beam", "x"], "beam"),
        (["index", "build", "--method", "joint"], "did not learn a joint index"),
        (["index", "build", "--levels", "8,x"], "--levels"),
        (["index", "build", "--levels", "100000"], "cannot fill an index level"),
    ],
)
def test_bad_index_input_is_a_clear_error(run_with_index, argv, message, capsys):
    argv = (
        [*argv[:2], "--run", str(run_with_index), *argv[2:]]
        if argv[0] == "index"
        else [
            argv[0],
            "--run",
            str(run_with_index),
            *argv[1:],
        ]
    )
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_stats_of_a_missing_or_broken_index(tmp_path, capsys):
    assert main(["index", "stats", str(tmp_path / "none")]) == 2
    assert "not an index folder" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{}")
    assert main(["index", "stats", str(tmp_path / "broken")]) == 2
    assert "not a hirex-index manifest" in capsys.readouterr().err


def test_training_with_a_learned_index_writes_it_and_reports_it(tmp_path):
    out = tmp_path / "joint"
    argv = ["train", *SMALL, "--out", str(out), "--set", "index.method='joint'"]
    argv += ["--set", "index.levels=[6,4]", "--set", "index.start_epoch=1"]
    assert main(argv) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["index"]["method"] == "joint"
    assert 0 < report["index"]["items_scored_fraction"] <= 1
    assert (out / "codebooks.safetensors").exists() and (out / "index" / "manifest.json").exists()
    # Rebuilding from the learned codebooks gives the same paths.
    assert main(["index", "build", "--run", str(out), "--out", str(tmp_path / "again")]) == 0
    a = json.loads((out / "index" / "manifest.json").read_text())
    b = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert a["files"]["index.safetensors"]["sha256"] == b["files"]["index.safetensors"]["sha256"]
