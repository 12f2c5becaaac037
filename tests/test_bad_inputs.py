"""The bad-input catalogue: one place listing what a user can get wrong, across the CLI, the
Python API, damaged run and index files and the HTTP service.

Every case asserts the exit code (CLI), the exception type (API) or the status (HTTP); that the
message names the option, field, file or line at fault; that no traceback is printed; and that
nothing on disk changed (every file under the case's folder keeps its bytes and mtime).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hirex.cli.main import main
from tests.cli.test_cli import SMALL


@dataclass(frozen=True)
class World:
    """A trained run with an index, and files a user may point hirex at, all under ``root``."""

    root: Path
    run: Path
    index: Path
    csv: Path
    qrels: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("catalogue")
    run = root / "run"
    assert main(["train", *SMALL, "--out", str(run)]) == 0
    assert main(["index", "build", "--run", str(run), "--levels", "4,4"]) == 0
    csv = root / "events.csv"
    csv.write_text("user,item,timestamp\nu1,i1,5\nu1,i2,notatime\nu2,i1,7\n")
    qrels = root / "qrels.txt"
    qrels.write_text("".join(f"q{i % 3} 0 d{i} {i % 4}\n" for i in range(12)))
    return World(root, run, run / "index", csv, qrels)


def _snapshot(folder: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    )


@pytest.fixture
def case_dir(world, tmp_path, monkeypatch) -> Path:
    """A private copy of the world for one case (damaged files stay in it); cwd inside it."""
    dst = tmp_path / "w"
    shutil.copytree(world.root, dst)
    monkeypatch.chdir(dst)
    return dst


# ---- the command line ------------------------------------------------------------------------
# (argv with {run}, {index}, {csv}, {qrels}, {w} (the case's folder), the message's pattern)
CLI: list[tuple[str, list[str], str]] = [
    ("config is a folder", ["train", "--config", "{w}"], r"config file .*/w is a directory"),
    ("config not UTF-8", ["train", "--config", "{w}/latin1.toml"], r"latin1.toml.*UTF-8"),
    ("config key unknown", ["train", "--set", "model.nosuch=1"], r"'nosuch'\] in \[model\]"),
    ("config value zero", ["train", *SMALL, "--set", "model.dim=0"], r"model.dim must be positive"),
    ("config value type", ["train", "--set", "train.lr='fast'"], r"train.lr"),
    ("override without =", ["train", "--set", "model.dim"], r"model.dim"),
    ("lr negative", ["train", *SMALL, "--set", "train.lr=-1"], r"train.lr"),
    (
        "bad timestamp line",
        ["train", "--data", "{csv}", "--set", "data.time_col='timestamp'"],
        r"events.csv:3: 'notatime'",
    ),
    ("data missing", ["train", "--data", "{w}/nothing.csv", "--out", "{w}/r"], r"nothing.csv"),
    ("out is a file", ["train", *SMALL, "--out", "{csv}"], r"--out .*events.csv is a file"),
    (
        "init_from missing",
        ["train", *SMALL, "--set", "train.init_from='{w}/no.safetensors'", "--out", "{w}/r"],
        r"train.init_from: .*no.safetensors",
    ),
    ("eval run missing", ["eval", "--run", "{w}/nope"], r"nope"),
    ("eval max-users 0", ["eval", "--run", "{run}", "--max-users", "0"], r"--max-users"),
    ("eval ks huge", ["eval", "--run", "{run}", "--ks", "200000"], r"--ks"),
    ("eval split unknown", ["eval", "--run", "{run}", "--split", "train"], r"--split"),
    (
        "eval output folder",
        ["eval", "--run", "{run}", "--output", "{w}"],
        r"/w is a folder; give a file name",
    ),
    ("retrieve users empty", ["retrieve", "--run", "{run}", "--users", ""], r"--users"),
    ("retrieve unknown user", ["retrieve", "--run", "{run}", "--users", "99999"], r"99999"),
    (
        "retrieve users-file dir",
        ["retrieve", "--run", "{run}", "--users-file", "{w}"],
        r"--users-file",
    ),
    (
        "retrieve output dir",
        ["retrieve", "--run", "{run}", "--users", "1", "--output", "{w}"],
        r"/w is a folder; give a file name",
    ),
    ("retrieve k negative", ["retrieve", "--run", "{run}", "--users", "1", "--k", "-1"], r"--k"),
    (
        "index levels zero",
        ["index", "build", "--run", "{run}", "--levels", "0,4", "--out", "{w}/i"],
        r"levels",
    ),
    (
        "index method unknown",
        ["index", "build", "--run", "{run}", "--method", "magic"],
        r"--method",
    ),
    (
        "index kmeans-on learned with residual k-means",
        [
            "index",
            "build",
            "--run",
            "{run}",
            "--kmeans",
            "residual",
            "--kmeans-on",
            "learned",
            "--out",
            "{w}/i",
        ],
        r"kmeans_on = 'learned' partitions by hierarchical k-means: set index.kmeans",
    ),
    (
        "index out not an index",
        ["index", "build", "--run", "{run}", "--out", "{w}"],
        r"not a hirex index",
    ),
    ("ttt out is the run", ["ttt", "--run", "{run}", "--out", "{run}"], r"--out"),
    (
        "ttt target unknown",
        ["ttt", "--run", "{run}", "--out", "{w}/t", "--set", "ttt.target='centroid'"],
        r"ttt.target.*'item', 'node'",
    ),
    (
        "ttt select_users negative",
        ["ttt", "--run", "{run}", "--out", "{w}/t", "--set", "ttt.select_users=-5"],
        r"ttt.select_users must be >= 0",
    ),
    ("serve port out of range", ["serve", "--run", "{run}", "--port", "70000"], r"--port 70000"),
    ("serve k zero", ["serve", "--run", "{run}", "--k", "0"], r"--k"),
    ("serve threads negative", ["serve", "--run", "{run}", "--threads", "-2"], r"--threads"),
    (
        "agree gold missing",
        ["label", "agree", "--gold", "{w}/g.txt", "--pred", "{qrels}"],
        r"g.txt",
    ),
    (
        "agree boot zero",
        ["label", "agree", "--gold", "{qrels}", "--pred", "{qrels}", "--boot", "0"],
        r"--boot",
    ),
    (
        "agree scale huge",
        ["label", "agree", "--gold", "{qrels}", "--pred", "{qrels}", "--scale", "1000000"],
        r"--scale",
    ),
    ("sid fit on data without text", ["sid", "fit", *SMALL[:2], "--out", "{w}/ids"], r"text"),
    ("data unknown name", ["data", "download", "imaginary", "--data-dir", "{w}/d"], r"imaginary"),
    ("argument not UTF-8", ["eval", "--run", "\udcff"], r"not valid UTF-8"),
]


@pytest.mark.parametrize(("argv", "pattern"), [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_command_line(case_dir, world, argv, pattern, capsys):
    (case_dir / "latin1.toml").write_bytes("# caf\xe9\n[model]\ndim = 8\n".encode("latin-1"))
    fill = {
        "w": case_dir,
        "run": case_dir / "run",
        "index": case_dir / "run" / "index",
        "csv": case_dir / world.csv.name,
        "qrels": case_dir / world.qrels.name,
    }
    argv = [a.format(**fill) for a in argv]
    before = _snapshot(case_dir)
    try:
        code = main(argv)
    except SystemExit as err:  # argparse's usage errors
        code = err.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert re.search(pattern, err), err
    assert _snapshot(case_dir) == before


# ---- run and index files -----------------------------------------------------------------------
def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x40
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan_model(path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from hirex.models.retrieval_model import safetensors_bytes

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["item_tower.id_emb.weight"][0, 0] = float("inf")
    path.write_bytes(safetensors_bytes(tensors, meta))


def _edit_json(path: Path, key: str, value: object) -> None:
    doc = json.loads(path.read_text())
    doc[key] = value
    path.write_text(json.dumps(doc))


# (file under the case's run, damage, command, message pattern)
FILES: list[tuple[str, str, Callable[[Path], None], list[str], str]] = [
    ("model bytes flipped", "model.safetensors", _flip, ["eval"], r"model.safetensors: checksum"),
    ("model truncated", "model.safetensors", _truncate, ["eval"], r"model.safetensors"),
    ("model holds inf", "model.safetensors", _nan_model, ["eval"], r"NaN or infinite"),
    (
        "model not safetensors",
        "model.safetensors",
        lambda p: p.write_text("{}"),
        ["eval"],
        r"model.safetensors",
    ),
    (
        "config edited",
        "config.toml",
        lambda p: p.write_text(p.read_text() + "\n"),
        ["eval"],
        r"config.toml",
    ),
    (
        "metrics edited",
        "metrics.json",
        lambda p: _edit_json(p, "valid", {}),
        ["eval"],
        r"metrics.json",
    ),
    ("run manifest damaged", "run.json", lambda p: p.write_text("{"), ["eval"], r"run.json"),
    ("checkpoint truncated", "checkpoint.safetensors", _truncate, ["train", *SMALL], r"--restart"),
    (
        "index bytes flipped",
        "index/index.safetensors",
        _flip,
        ["eval", "--index"],
        r"index.safetensors",
    ),
    (
        "index manifest damaged",
        "index/manifest.json",
        lambda p: p.write_text("[]"),
        ["eval", "--index"],
        r"manifest.json",
    ),
    (
        "index manifest assign_dims junk",
        "index/manifest.json",
        lambda p: p.write_text(p.read_text().replace('"assign_dims": null', '"assign_dims": "x"')),
        ["eval", "--index"],
        r"manifest.json: assign_dims 'x' must be 1 to \d+ with assign 'centroids'",
    ),
    (
        "index model swapped",
        "index/model.safetensors",
        _flip,
        ["retrieve", "--users", "1", "--index"],
        r"index.*model.safetensors",
    ),
]


@pytest.mark.parametrize(
    ("name", "damage", "argv", "pattern"), [c[1:] for c in FILES], ids=[c[0] for c in FILES]
)
def test_damaged_files(case_dir, name, damage, argv, pattern, capsys):
    run = case_dir / "run"
    damage(run / name)
    before = _snapshot(case_dir)
    if argv[0] == "train":
        argv = [*argv, "--out", str(run)]
    else:
        argv = [argv[0], "--run", str(run), *argv[1:]]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert re.search(pattern, err), err
    assert _snapshot(case_dir) == before


# ---- the Python API ------------------------------------------------------------------------------
def _api_cases(w: Path) -> list[tuple[str, Callable[[], object], type[Exception], str]]:
    from hirex.config import RunConfig, apply_overrides, load_config
    from hirex.index.files import load_index
    from hirex.models.retrieval_model import RetrievalModel
    from hirex.models.warm_start import warm_start_state
    from hirex.runs import load_run

    model = lambda: RetrievalModel.load(w / "run" / "model.safetensors")  # noqa: E731
    return [
        (
            "override key",
            lambda: apply_overrides(RunConfig(), ["data.nosuch=1"]),
            ValueError,
            r"'nosuch'\] in \[data\]",
        ),
        (
            "override value",
            lambda: apply_overrides(RunConfig(), ["train.epochs=0"]),
            ValueError,
            r"train.epochs",
        ),
        (
            "config file missing",
            lambda: load_config(w / "none.toml"),
            FileNotFoundError,
            r"none.toml",
        ),
        ("not a run", lambda: load_run(w), FileNotFoundError, r"not a finished hirex run"),
        (
            "not an index",
            lambda: load_index(w / "run"),
            ValueError,
            r"run: no manifest.json; not a hirex index",
        ),
        (
            "model missing",
            lambda: RetrievalModel.load(w / "x.safetensors"),
            FileNotFoundError,
            r"x.safetensors",
        ),
        (
            "warm start, other data",
            lambda: warm_start_state(w / "run" / "model.safetensors", _other(model())),
            ValueError,
            r"train.init_from: .*items",
        ),
        ("exhaustive k zero", lambda: _topk(model(), 0), ValueError, r"k must be positive, got 0"),
    ]


def _other(model):
    from hirex.models.retrieval_model import RetrievalModel

    return RetrievalModel(model.cfg, model.n_users, model.n_items + 1)


def _topk(model, k: int):
    import numpy as np

    from hirex.index.exhaustive import exhaustive_topk

    return exhaustive_topk(model, np.arange(3), None, k)


API_NAMES = [
    "override key",
    "override value",
    "config file missing",
    "not a run",
    "not an index",
    "model missing",
    "warm start, other data",
    "exhaustive k zero",
]


@pytest.mark.parametrize("name", API_NAMES)
def test_python_api(case_dir, name):
    cases = {c[0]: c[1:] for c in _api_cases(case_dir)}
    assert set(cases) == set(API_NAMES)
    call, error, pattern = cases[name]
    before = _snapshot(case_dir)
    with pytest.raises(error, match=pattern):
        call()
    assert _snapshot(case_dir) == before


# ---- HTTP --------------------------------------------------------------------------------------
TOKEN = "catalogue-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HTTP: list[tuple[str, str, str, bytes, dict[str, str], int, str]] = [
    ("retrieve not JSON", "POST", "/v1/retrieve", b"{", {}, 400, "JSON"),
    ("retrieve k too big", "POST", "/v1/retrieve", b'{"user": 1, "k": 100000000}', {}, 422, "k"),
    (
        "retrieve unknown user",
        "POST",
        "/v1/retrieve",
        b'{"user": 99999}',
        {},
        422,
        "unknown user id [99999]",
    ),
    ("retrieve user negative", "POST", "/v1/retrieve", b'{"user": -3}', {}, 422, "user"),
    (
        "retrieve deep nesting",
        "POST",
        "/v1/retrieve",
        b'{"user": ' * 40 + b"1" + b"}" * 40,
        {},
        400,
        "at most 32",
    ),
    ("body too large", "POST", "/v1/retrieve", b" " * 2_000_000, {}, 413, "bytes"),
    ("put without token", "PUT", "/v1/items/5", b'{"embedding": [1.0]}', {}, 401, "Authorization"),
    ("put negative id", "PUT", "/v1/items/-5", b'{"embedding": [1.0]}', AUTH, 422, "-5"),
    ("put string id", "PUT", "/v1/items/sku", b'{"embedding": [1.0]}', AUTH, 422, "integers"),
    (
        "put infinite",
        "PUT",
        "/v1/items/5",
        b'{"embedding": [' + b",".join([b"1e999"] * 16) + b"]}",
        AUTH,
        422,
        "NaN or infinite",
    ),
    ("put wrong width", "PUT", "/v1/items/5", b'{"embedding": [1.0, 2.0]}', AUTH, 422, "embedding"),
    (
        "put values too large",
        "PUT",
        "/v1/items/5",
        b'{"embedding": [' + b",".join([b"1e7"] * 16) + b"]}",
        AUTH,
        422,
        "must lie in [-1e+06, 1e+06]",
    ),
    ("delete unknown", "DELETE", "/v1/items/99999", b"", AUTH, 404, "not in the index"),
    ("method not allowed", "DELETE", "/v1/retrieve", b"", {}, 405, ""),
]


@pytest.fixture
def client(case_dir):
    from fastapi.testclient import TestClient

    from hirex.serve.app import create_app
    from hirex.serve.service import RetrievalService

    service = RetrievalService.open(case_dir / "run", state_dir=case_dir / "state")
    with TestClient(create_app(service, token=TOKEN, max_body_bytes=1 << 20)) as c:
        yield c


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    [c[1:] for c in HTTP],
    ids=[c[0] for c in HTTP],
)
def test_http(client, case_dir, method, path, body, headers, status, message):
    before = _snapshot(case_dir)
    r = client.request(method, path, content=body, headers=headers)
    assert r.status_code == status, r.text
    if status == 405:
        assert "allow" in {k.lower() for k in r.headers}
    else:
        assert message in r.json()["error"], r.text
    assert _snapshot(case_dir) == before


def test_the_catalogue_is_at_least_forty_cases():
    assert len(CLI) + len(FILES) + len(API_NAMES) + len(HTTP) >= 40


def test_json_with_nan_is_not_written(tmp_path):
    """Metrics over no user are NaN: written as JSON they would not parse, so they are refused
    with the key named, and an earlier file at the path is kept."""
    from hirex.atomic_files import atomic_write_json

    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"ok": 1})
    before = _snapshot(tmp_path)
    bad = {"test": {"recall@20": float("nan")}, "rows": [1.0, float("inf")]}
    with pytest.raises(ValueError, match=r"metrics.json: not written, test.recall@20, rows\[1\]"):
        atomic_write_json(path, bad)
    assert _snapshot(tmp_path) == before
    assert json.loads(path.read_text()) == {"ok": 1}
