"""Generative runs end to end through the CLI and the library: sid fit / stats, train, eval,
retrieve, resume, cold start, and bad inputs with their exit codes and messages."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from hirex.cli.main import main
from hirex.config import RunConfig, apply_overrides
from hirex.data.splits import cold_start_targets, hold_out_items
from hirex.semantic_ids import catalogue_fingerprint, load_ids
from hirex.train.generative import train_generator

GEN = ["--set", "generator.dim=32", "--set", "generator.ff=64", "--set", "generator.layers=1",
       "--set", "train.epochs=2", "--set", "train.batch_size=64", "--set", "train.lr=0.005",
       "--set", "train.num_threads=1", "--quiet"]  # fmt: skip
SID = ["--set", "sid.encoder='tfidf'", "--set", "sid.levels=[6,4]", "--set", "sid.epochs=3",
       "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def fitted(catalogue_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sid") / "ids"
    code = main(["sid", "fit", "--data", str(catalogue_dir), *SID, "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def generative_run(catalogue_dir, fitted, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "run"
    args = ["train", "--data", str(catalogue_dir), "--set", f"generator.ids='{fitted}'", *GEN]
    assert main([*args, "--out", str(out)]) == 0
    return out


def test_sid_fit_and_stats(fitted, capsys):
    assert (fitted / "manifest.json").exists() and (fitted / "ids.safetensors").exists()
    assert main(["sid", "stats", str(fitted), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["method"] == "lmindexer" and stats["codebook_sizes"] == [6, 4]
    assert main(["sid", "stats", str(fitted)]) == 0
    assert "collision rate" in capsys.readouterr().out


def test_generative_run_trains_evaluates_and_retrieves(generative_run, catalogue, tmp_path, capsys):
    report = json.loads((generative_run / "metrics.json").read_text())
    assert report["model"] == "generative" and report["ids"]["method"] == "lmindexer"
    # users walk through one cluster in order: far above chance (10 / 165 items)
    assert report["test"]["recall@10"] > 0.2
    for name in ("ids", "generator", "checkpoint.safetensors", "config.toml"):
        assert (generative_run / name).exists()
    out = tmp_path / "eval.json"
    assert main(["eval", "--run", str(generative_run), "--output", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["recall@10"] == pytest.approx(report["test"]["recall@10"])
    capsys.readouterr()
    assert (
        main(["retrieve", "--run", str(generative_run), "--users", "user0,user7", "--k", "5"]) == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["user"] for r in rows] == ["user0", "user7"]
    assert all(len(r["items"]) == 5 and r["items"][0].startswith("item") for r in rows)
    seen = set(catalogue.item_ids.to_raw(catalogue.history("test").user_items(0)))
    assert not seen & set(rows[0]["items"])  # history masked


def test_generative_run_refuses_index_commands(generative_run, capsys):
    assert main(["eval", "--run", str(generative_run), "--index"]) == 2
    assert "generative run" in capsys.readouterr().err
    assert main(["index", "build", "--run", str(generative_run)]) == 2
    assert "needs a scoring model" in capsys.readouterr().err


def test_training_is_deterministic_and_a_finished_run_is_not_retrained(catalogue, fitted, tmp_path):
    cfg = apply_overrides(RunConfig(), [a for a in GEN[1::2] if "=" in a])
    ids = load_ids(fitted, catalogue_fingerprint(catalogue.item_ids.raw))
    a = train_generator(cfg, catalogue, ids, tmp_path / "a", progress=False)
    b = train_generator(cfg, catalogue, ids, tmp_path / "b", progress=False)
    sa, sb = a.retriever.model.state_dict(), b.retriever.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    again = train_generator(cfg, catalogue, ids, tmp_path / "a", progress=False)
    assert again.epochs == a.epochs and again.train_seconds == a.train_seconds
    other = apply_overrides(cfg, ["train.lr=0.001"])
    with pytest.raises(ValueError, match="another config"):
        train_generator(other, catalogue, ids, tmp_path / "a", progress=False)


def test_interrupted_training_resumes_from_the_checkpoint(catalogue, fitted, tmp_path, monkeypatch):
    import hirex.train.generative as gen

    cfg = apply_overrides(RunConfig(), [a for a in GEN[1::2] if "=" in a])
    ids = load_ids(fitted, catalogue_fingerprint(catalogue.item_ids.raw))
    full = train_generator(cfg, catalogue, ids, tmp_path / "full", progress=False)
    calls = {"n": 0}
    real = gen.save_checkpoint

    def crash_after_first(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # a crash right after epoch 1 was checkpointed

    monkeypatch.setattr(gen, "save_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_generator(cfg, catalogue, ids, tmp_path / "crash", progress=False)
    monkeypatch.setattr(gen, "save_checkpoint", real)
    resumed = train_generator(cfg, catalogue, ids, tmp_path / "crash", progress=False)
    a, b = full.retriever.model.state_dict(), resumed.retriever.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cold_start_split_holds_items_out_of_training_only(catalogue):
    cold = hold_out_items(catalogue, 0.1, seed=0)
    held = set(cold.cold_items.tolist())
    assert len(held) == round(0.1 * catalogue.n_items)
    assert not held & set(cold.train.items.tolist()) and not held & set(cold.valid.items.tolist())
    assert cold.test.nnz == catalogue.test.nnz and cold.item_text == catalogue.item_text
    only = cold_start_targets(cold)
    assert set(only.test.items.tolist()) <= held
    assert only.test.nnz == int(np.isin(catalogue.test.items, list(held)).sum())


def test_cold_start_run_reports_held_out_targets(catalogue_dir, fitted, tmp_path):
    out = tmp_path / "cold"
    args = ["train", "--data", str(catalogue_dir), "--set", f"generator.ids='{fitted}'", *GEN]
    assert main([*args, "--set", "data.cold_start_fraction=0.2", "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    cold = report["cold_start"]
    assert cold["items"] == 33 and cold["test_users"] > 0
    assert 0 <= cold["test"]["recall@10"] <= 1


def test_cold_start_metrics_of_a_scoring_run(catalogue_dir, catalogue, tmp_path):
    out = tmp_path / "score"
    args = ["train", "--data", str(catalogue_dir), "--quiet", "--set", "model.dim=16",
            "--set", "train.epochs=3", "--set", "train.num_negatives=32",
            "--set", "data.cold_start_fraction=0.2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "metrics.json").read_text())
    held = hold_out_items(catalogue, 0.2, seed=0)
    assert report["cold_start"]["items"] == len(held.cold_items)
    assert report["cold_start"]["test_users"] == cold_start_targets(held).test.nnz > 0
    assert 0 <= report["cold_start"]["test"]["recall@10"] <= 1


def test_bad_inputs_exit_2_with_a_message_and_write_nothing(
    catalogue_dir, fitted, tmp_path, capsys
):
    # an item without text
    bad = tmp_path / "shop"
    shutil.copytree(catalogue_dir, bad)
    lines = (bad / "item_text.txt").read_text().splitlines()
    (bad / "item_text.txt").write_text("\n".join(lines[1:]) + "\n")
    out = tmp_path / "ids"
    assert main(["sid", "fit", "--data", str(bad), *SID, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "have no text (items ['item0'])" in err and "sid.missing_text" in err
    assert not out.exists()
    # IDs of another catalogue
    other = tmp_path / "other"
    shutil.copytree(catalogue_dir, other)
    seqs = (other / "sequences.txt").read_text().replace("item1 ", "item999 ")
    (other / "sequences.txt").write_text(seqs)
    run = tmp_path / "run"
    code = main(["train", "--data", str(other), "--set", f"generator.ids='{fitted}'", *GEN,
                 "--out", str(run)])  # fmt: skip
    assert code == 2 and "another catalogue" in capsys.readouterr().err
    assert not run.exists()  # refused before the run folder was made
    # a generator on set data
    code = main(["train", "--data", "synthetic", "--set", f"generator.ids='{fitted}'", *GEN,
                 "--out", str(tmp_path / "set")])  # fmt: skip
    assert code == 2 and "needs sequence data" in capsys.readouterr().err
    assert not (tmp_path / "set").exists()
    # a corrupt ID folder
    broken = tmp_path / "broken"
    shutil.copytree(fitted, broken)
    (broken / "ids.safetensors").write_bytes(b"not safetensors")
    assert main(["sid", "stats", str(broken)]) == 2
    assert "re-create the IDs" in capsys.readouterr().err
