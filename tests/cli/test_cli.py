import json

import pytest

from hirex.cli.main import build_parser, main

COMMANDS = ["demo", "train", "eval", "retrieve", "data", "index", "ttt", "serve", "sid"]
SMALL = [
    "--data",
    "synthetic",
    "--quiet",
    "--set",
    "data.synthetic_users=400",
    "--set",
    "data.synthetic_items=200",
    "--set",
    "train.epochs=2",
    "--set",
    "train.num_negatives=64",
    "--set",
    "model.dim=16",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: hirex" in out and "--" in out


def test_options_have_help_text():
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():
        for opt in action._actions:
            if not opt.option_strings:  # positional sub-command groups
                continue
            assert opt.help, f"{action.prog} {opt.option_strings} has no help"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *SMALL, "--out", str(out)]) == 0
    return out


def test_train_writes_a_complete_run(trained_run, capsys):
    report = json.loads((trained_run / "metrics.json").read_text())
    assert report["format"] == "hirex-metrics" and 0 <= report["test"]["recall@20"] <= 1
    for name in ("config.toml", "model.safetensors", "checkpoint.safetensors"):
        assert (trained_run / name).exists()


def test_eval_reproduces_train_metrics(trained_run, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--run", str(trained_run), "--output", str(out)]) == 0
    report = json.loads((trained_run / "metrics.json").read_text())
    assert json.loads(out.read_text())["recall@20"] == pytest.approx(report["test"]["recall@20"])


def test_a_finished_run_trained_again_at_another_branch_weight_is_only_re_evaluated(tmp_path):
    base = [*SMALL, "--set", "model.use_user_id=false", "--set", "model.spectral_rank=16"]
    run = tmp_path / "run"
    assert main(["train", *base, "--out", str(run)]) == 0
    first = json.loads((run / "metrics.json").read_text())
    assert main(["train", *base, "--set", "model.spectral_weight=6.0", "--out", str(run)]) == 0
    second = json.loads((run / "metrics.json").read_text())
    assert "spectral_weight = 6.0" in (run / "config.toml").read_text()
    assert second["epochs"] == first["epochs"]  # not trained again
    assert second["test"] != first["test"]  # the branch at weight 6
    out = tmp_path / "eval.json"
    assert main(["eval", "--run", str(run), "--output", str(out)]) == 0  # checksums hold
    assert json.loads(out.read_text())["recall@20"] == pytest.approx(second["test"]["recall@20"])


def test_retrieve_json_and_csv(trained_run, tmp_path, capsys):
    assert main(["retrieve", "--run", str(trained_run), "--users", "0,5", "--k", "7"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["user"] for r in rows] == [0, 5] and all(len(r["items"]) == 7 for r in rows)
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in rows)
    out = tmp_path / "top.csv"
    assert (
        main(
            [
                "retrieve",
                "--run",
                str(trained_run),
                "--users",
                "0",
                "--k",
                "3",
                "--format",
                "csv",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    lines = out.read_text().splitlines()
    assert lines[0] == "user,rank,item,score" and len(lines) == 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["retrieve", "--users", "99999"], "unknown user ids"),
        (["retrieve", "--users", "abc"], "integers"),
        (["retrieve", "--users", "1", "--k", "0"], "--k must lie in 1.."),
        (["eval", "--ks", "ten"], "comma-separated integers"),
        (["retrieve", "--users", ""], "--users is empty"),
        (["retrieve", "--users", " "], "--users is empty"),
        (["retrieve", "--users", "1", "--output", "{tmp}"], "is a folder"),
        (["retrieve", "--users-file", "{tmp}"], "is not a file"),
        (["eval", "--max-users", "0"], "at least 1"),
        (["eval", "--max-users", "-3"], "at least 1"),
    ],
)
def test_bad_input_is_a_clear_error(trained_run, argv, message, capsys, tmp_path):
    argv = [argv[0], "--run", str(trained_run), *(a.format(tmp=tmp_path) for a in argv[1:])]
    before = sorted((p.name, p.stat().st_mtime_ns) for p in trained_run.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in trained_run.iterdir()) == before
    assert list(tmp_path.iterdir()) == []


def test_bad_paths_and_options_of_train(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    assert main(["train", *SMALL, "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["train", *SMALL, "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    assert a_file.read_text() == "keep me"
    assert main(["train", "--config", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "is a directory" in capsys.readouterr().err
    latin = tmp_path / "latin1.toml"
    latin.write_bytes('[data]\nname = "caf\xe9"\n'.encode("latin-1"))
    assert main(["train", "--config", str(latin), "--out", str(tmp_path / "r")]) == 2
    assert f"{latin}: not UTF-8" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unknown_option_shows_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: hirex train") and "unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):
        main(["index", "build", "--run", "x", "--bogus"])
    assert capsys.readouterr().err.startswith("usage: hirex index build")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("hirex 0.")


def test_missing_run_and_bad_config(tmp_path, capsys):
    assert main(["eval", "--run", str(tmp_path / "nope")]) == 2
    assert "not a finished hirex run" in capsys.readouterr().err
    assert main(["train", "--set", "train.lrr=1", "--out", str(tmp_path / "x")]) == 2
    assert "valid keys" in capsys.readouterr().err
    assert main(["train", "--data", "nosuchdata", "--out", str(tmp_path / "y")]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_table_with_string_ids_round_trips_to_original_ids(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    rows = ["user,item"]
    for u in range(60):
        group = u % 3
        for i in rng.choice(10, 6, replace=False):
            rows.append(f"u-{u},item-{group}-{i}")
    table = tmp_path / "log.csv"
    table.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    argv = [
        "train",
        "--data",
        str(table),
        "--quiet",
        "--out",
        str(run),
        "--set",
        "train.epochs=2",
        "--set",
        "model.dim=8",
        "--set",
        "train.num_negatives=8",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["retrieve", "--run", str(run), "--users", "u-4,u-5", "--k", "3"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["user"] for r in out] == ["u-4", "u-5"]
    assert all(item.startswith("item-") for r in out for item in r["items"])
    assert main(["retrieve", "--run", str(run), "--users", "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err


def test_non_finite_weights_are_refused_at_load(trained_run, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file

    from hirex.models.retrieval_model import safetensors_bytes

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = run / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["item_tower.id_emb.weight"][3, 1] = float("nan")
    # Written with a valid checksum, as a training run that diverged would write it.
    path.write_bytes(safetensors_bytes(tensors, meta))
    before = path.read_bytes()
    for argv in (["eval", "--run", str(run)], ["retrieve", "--run", str(run), "--users", "1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "'item_tower.id_emb.weight' holds 1 NaN or infinite values" in err
        assert str(path) in err and "Traceback" not in err
    assert path.read_bytes() == before


def test_flipped_bytes_in_a_run_file_are_refused(trained_run, tmp_path, capsys):
    """A byte changed inside the tensor data (the header intact): the checksum catches it."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = run / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x40  # inside the last tensor's data, far from the JSON header
    path.write_bytes(bytes(data))
    assert main(["eval", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: checksum mismatch" in err and "Traceback" not in err
    assert path.read_bytes() == bytes(data)


def test_truncated_checkpoint_names_restart(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = run / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    truncated = ckpt.read_bytes()
    assert main(["train", *SMALL, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "--restart" in err and "Traceback" not in err
    assert ckpt.read_bytes() == truncated


def test_table_columns_and_timestamps_from_the_command_line(tmp_path, capsys):
    rows = ["uid,iid,ts"]
    for u in range(30):
        for j in range(6):
            # The file order is not the time order: the timestamp column must be used.
            rows.append(f"u{u},i{(u + j * 7) % 40},{1000 - j}")
    path = tmp_path / "events.csv"
    path.write_text("\n".join(rows) + "\n")
    args = ["--quiet", "--set", "train.epochs=1", "--set", "model.dim=8"]
    cols = ["--set", "data.user_col=uid", "--set", "data.item_col=iid"]
    assert main(["train", "--data", str(path), *args, "--out", str(tmp_path / "r0")]) == 2
    assert "missing column(s) ['user', 'item']" in capsys.readouterr().err
    timed = [*cols, "--set", "data.time_col=ts"]
    assert main(["train", "--data", str(path), *args, *timed, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "(sequence)" in out  # ordered by the timestamps
    import hirex

    ds = hirex.load_dataset(
        path, user_col="uid", item_col="iid", time_col="ts"
    )  # the same data through the Python API
    assert str(ds.summary()) in out
    assert main(["train", *SMALL, "--set", "data.time_col=ts", "--out", str(tmp_path / "x")]) == 2
    assert "apply to interaction tables" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_sequences_too_short_for_validation_get_the_sequence_hint(tmp_path, capsys):
    path = tmp_path / "short.txt"
    path.write_text("".join(f"{u} {u % 7} {(u + 1) % 7}\n" for u in range(20)))
    assert main(["train", "--data", str(path), "--quiet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no validation targets" in err and "3+ items" in err
    assert "valid_per_user" not in err


@pytest.mark.parametrize(
    ("name", "edit"),
    [
        ("config.toml", lambda t: t.replace("epochs = 2", "epochs = 3")),
        ("metrics.json", lambda t: t.replace('"best_epoch": ', '"best_epoch": 1', 1)),
    ],
)
def test_a_changed_run_file_is_refused(trained_run, tmp_path, name, edit, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert (run / "run.json").exists()
    path = run / name
    changed = edit(path.read_text())
    assert changed != path.read_text()
    path.write_text(changed)
    assert main(["eval", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{path} does not match its checksum" in err and "Traceback" not in err
    assert path.read_text() == changed
