"""``hirex data download`` against a real HTTP server on 127.0.0.1 laid out like upstream."""

from __future__ import annotations

import logging
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from hirex.cli.main import main
from hirex.data import download
from hirex.data.download import (
    DATASETS,
    DatasetSpec,
    RemoteFile,
    dataset_dir,
    default_cache_dir,
    download_dataset,
    read_contents,
    verify_dataset,
)
from hirex.data.interactions import DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"shared benchmark data not found at {SHARED_DATA} (../shared/data beside the repo)",
)


# ---- a local upstream --------------------------------------------------------------------


@dataclass
class Upstream:
    """State of the local server: what it serves and how, and the requests it saw."""

    root: Path
    url: str = ""
    honor_range: bool = True
    drop_after: int | None = None  # send this many body bytes of the next answer, then hang up
    log: list[tuple[str, str | None, int]] = field(default_factory=list)

    def requests_for(self, name: str) -> list[tuple[str | None, int]]:
        """(Range header, status) of each request for a path ending in ``name``."""
        return [(rng, status) for path, rng, status in self.log if path.endswith(name)]


@contextmanager
def serve(root: Path) -> Iterator[Upstream]:
    """Serve ``root`` under http://127.0.0.1:<port>/mirror with optional Range support."""
    state = Upstream(root)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            rel = self.path.removeprefix("/mirror/")
            path = state.root / rel
            rng = self.headers.get("Range")
            if ".." in rel or not path.is_file():
                state.log.append((self.path, rng, 404))
                self.send_error(404)
                return
            data = path.read_bytes()
            start, status = 0, 200
            if rng and state.honor_range:
                start, status = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]), 206
                if start >= len(data):
                    state.log.append((self.path, rng, 416))
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            state.log.append((self.path, rng, status))
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if state.drop_after is not None:
                body, state.drop_after = body[: state.drop_after], None
                self.close_connection = True
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/mirror"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def _fast_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)
    monkeypatch.setattr(download, "TIMEOUT_S", 10.0)
    monkeypatch.setattr(download, "CHUNK_BYTES", 512)  # several chunks even for small files


# ---- synthetic datasets laid out like the upstream repositories ---------------------------

TRAIN = "data/tiny/train.txt"
TEST = "data/tiny/test.txt"
SEQUENCES = "rec_datasets/Shop/user_sequence.txt"
ITEM_TEXT = "rec_datasets/Shop/item_generative_indexing_phase_0.txt"


def _write_synthetic_upstream(root: Path, seed: int = 0) -> None:
    """A gowalla-like train/test pair and an amazon-like sequences/item-text pair."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for user in range(60):
        items = rng.choice(90, size=int(rng.integers(5, 15)), replace=False).tolist()
        cut = max(1, len(items) // 4)
        train.append(" ".join(map(str, [user, *items[cut:]])))
        test.append(" ".join(map(str, [user, *items[:cut]])))
    asins = [f"B{n:09d}" for n in rng.choice(10**9, size=70, replace=False)]
    sequences = [
        " ".join([f"A{user:06d}Z", *rng.choice(asins, size=int(rng.integers(5, 12))).tolist()])
        for user in range(50)
    ]
    words = ["red", "lotion", "brush", "tent", "rope", "glove", "mild", "pro"]
    item_text = [f"{a} {' '.join(rng.choice(words, size=3).tolist())}" for a in asins]
    for rel, lines in [
        (TRAIN, train),
        (TEST, test),
        (SEQUENCES, sequences),
        (ITEM_TEXT, item_text),
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("\n".join(lines) + "\n")


def _registry(root: Path) -> dict[str, DatasetSpec]:
    """Registry entries whose expected contents are computed from the pristine files."""

    def remote(rel: str, dest: str, fmt: download.FileFormat) -> RemoteFile:
        return RemoteFile(rel, dest, fmt, read_contents(root / rel, fmt))

    unreachable = "http://127.0.0.1:9/never-used"
    return {
        "tiny": DatasetSpec(
            "tiny",
            unreachable,
            "tiny",
            (remote(TRAIN, "train.txt", "user_items"), remote(TEST, "test.txt", "user_items")),
        ),
        "shop": DatasetSpec(
            "shop",
            unreachable,
            "amazon/shop",
            (
                remote(SEQUENCES, "sequences.txt", "sequences"),
                remote(ITEM_TEXT, "item_text.txt", "item_text"),
            ),
        ),
    }


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[Upstream, dict[str, DatasetSpec]]]:
    root = tmp_path / "upstream"
    _write_synthetic_upstream(root)
    registry = _registry(root)
    with serve(root) as state:
        yield state, registry


@pytest.fixture(scope="session")
def real_gowalla_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared gowalla files copied once into an upstream-like tree."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("lightgcn")
    (root / "data" / "gowalla").mkdir(parents=True)
    for name in ("train.txt", "test.txt"):
        shutil.copyfile(SHARED_DATA / "gowalla" / name, root / "data" / "gowalla" / name)
    return root


def _swap_one_item(path: Path) -> None:
    """Swap an item between two users: every count stays, one (user, item) pair changes."""
    lines = [line.split() for line in path.read_text().splitlines()]
    for b_line in lines[1:]:
        only_a = set(lines[0][1:]) - set(b_line[1:])
        only_b = set(b_line[1:]) - set(lines[0][1:])
        if only_a and only_b:
            a, b = min(only_a), min(only_b)
            lines[0][lines[0].index(a)] = b
            b_line[b_line.index(b)] = a
            break
    path.write_text("".join(" ".join(tokens) + "\n" for tokens in lines))


# ---- fingerprints -----------------------------------------------------------------------


def test_user_items_fingerprint_ignores_order_but_not_ids(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    a.write_text("0 5 3 9\n1 3 4\n")
    b.write_text("1  4 3\r\n\n0 9 5 3 \n")  # users and items reordered, odd whitespace
    c.write_text("0 5 3 9\n1 3 5\n")
    fa, fb, fc = (read_contents(p, "user_items") for p in (a, b, c))
    assert fa == fb
    assert (fa.users, fa.items, fa.interactions) == (2, 4, 5)
    assert fc.fingerprint != fa.fingerprint


def test_sequence_fingerprint_keeps_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("u1 i1 i2 i3\nu2 i2\n")
    b.write_text("u1 i2 i1 i3\nu2 i2\n")
    fa, fb = read_contents(a, "sequences"), read_contents(b, "sequences")
    assert (fa.users, fa.items, fa.interactions) == (2, 3, 4)
    assert fa.fingerprint != fb.fingerprint


def test_item_text_fingerprint_covers_ids_only(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("B1 red brush\nB2 tent\n")
    b.write_text("B2 blue tent\nB1 brush\n")
    assert read_contents(a, "item_text") == read_contents(b, "item_text")
    assert read_contents(a, "item_text").items == 2


def test_unparsable_file_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "train.txt"
    bad.write_text("0 1 2\n1 x 3\n")
    with pytest.raises(DataError, match=r"train\.txt:2: expected integer ids"):
        read_contents(bad, "user_items")


def test_registry_counts_match_the_data_readme() -> None:
    train, test = (f.expected for f in DATASETS["gowalla"].files)
    assert train.users == test.users == 29_858
    assert train.items == 40_981  # every item has a train interaction
    assert train.interactions + test.interactions == 1_027_370
    for name, users, items, interactions in [
        ("beauty", 22_363, 12_101, 198_502),
        ("sports", 35_598, 18_357, 296_337),
    ]:
        sequences, item_text = (f.expected for f in DATASETS[name].files)
        assert (sequences.users, sequences.items, sequences.interactions) == (
            users,
            items,
            interactions,
        )
        assert item_text.items == items


@needs_shared
@pytest.mark.parametrize(
    "name, dest", [(n, f.dest_name) for n, spec in DATASETS.items() for f in spec.files]
)
def test_registry_fingerprints_equal_the_shared_files(name: str, dest: str) -> None:
    spec = DATASETS[name]
    remote = next(f for f in spec.files if f.dest_name == dest)
    assert read_contents(SHARED_DATA / spec.subdir / dest, remote.format) == remote.expected


# ---- downloads --------------------------------------------------------------------------


def test_clean_download_writes_the_shared_layout_and_verifies(upstream, tmp_path: Path) -> None:
    server, registry = upstream
    cache = tmp_path / "cache"
    for name in ("tiny", "shop"):
        directory = download_dataset(name, cache, server.url, registry=registry)
        assert directory == dataset_dir(name, cache, registry=registry)
        verify_dataset(name, directory, registry=registry)
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()) == [
        "amazon/shop/item_text.txt",
        "amazon/shop/sequences.txt",
        "tiny/test.txt",
        "tiny/train.txt",
    ]
    assert (cache / "tiny" / "train.txt").read_bytes() == (server.root / TRAIN).read_bytes()


def test_resume_from_a_partial_file(upstream, tmp_path: Path) -> None:
    server, registry = upstream
    data = (server.root / TRAIN).read_bytes()
    part = tmp_path / "tiny" / "train.txt.part"
    part.parent.mkdir()
    part.write_bytes(data[: len(data) // 2])
    download_dataset("tiny", tmp_path, server.url, registry=registry)
    assert server.requests_for("train.txt") == [(f"bytes={len(data) // 2}-", 206)]
    assert (tmp_path / "tiny" / "train.txt").read_bytes() == data
    assert not part.exists()


def test_server_that_ignores_range_restarts_the_download(upstream, tmp_path: Path) -> None:
    server, registry = upstream
    server.honor_range = False
    data = (server.root / TRAIN).read_bytes()
    part = tmp_path / "tiny" / "train.txt.part"
    part.parent.mkdir()
    part.write_bytes(data[:100])
    download_dataset("tiny", tmp_path, server.url, registry=registry)
    assert server.requests_for("train.txt") == [("bytes=100-", 200)]
    assert (tmp_path / "tiny" / "train.txt").read_bytes() == data


def test_interrupted_download_leaves_only_a_part_file_then_resumes(
    upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, registry = upstream
    server.drop_after = 300
    monkeypatch.setattr(download, "RETRIES", 0)
    with pytest.raises(DataError, match=r"tiny: could not download train\.txt .* after 1 attempts"):
        download_dataset("tiny", tmp_path, server.url, registry=registry)
    part = tmp_path / "tiny" / "train.txt.part"
    assert part.stat().st_size == 300
    assert not (tmp_path / "tiny" / "train.txt").exists()

    # With retries, a connection cut mid-file is resumed within the same call.
    server.drop_after = 200
    monkeypatch.setattr(download, "RETRIES", 2)
    download_dataset("tiny", tmp_path, server.url, registry=registry)
    assert server.requests_for("train.txt")[1:] == [("bytes=300-", 206), ("bytes=500-", 206)]
    verify_dataset("tiny", tmp_path / "tiny", registry=registry)


def test_stale_part_file_is_restarted_once(upstream, tmp_path: Path) -> None:
    server, registry = upstream
    part = tmp_path / "tiny" / "train.txt.part"
    part.parent.mkdir()
    part.write_bytes(b"999 1 2 3\n")  # from some other version of the file
    download_dataset("tiny", tmp_path, server.url, registry=registry)
    assert server.requests_for("train.txt") == [("bytes=10-", 206), (None, 200)]
    verify_dataset("tiny", tmp_path / "tiny", registry=registry)


def test_complete_part_file_is_verified_without_fetching_again(upstream, tmp_path: Path) -> None:
    server, registry = upstream
    data = (server.root / TRAIN).read_bytes()
    part = tmp_path / "tiny" / "train.txt.part"
    part.parent.mkdir()
    part.write_bytes(data)  # interrupted between the transfer and the rename
    download_dataset("tiny", tmp_path, server.url, registry=registry)
    assert server.requests_for("train.txt") == [(f"bytes={len(data)}-", 416)]
    assert (tmp_path / "tiny" / "train.txt").read_bytes() == data


def test_truncated_file_is_rejected_and_not_put_in_place(upstream, tmp_path: Path) -> None:
    server, registry = upstream
    served = server.root / TRAIN
    served.write_bytes(served.read_bytes()[: served.stat().st_size // 2])
    want = registry["tiny"].files[0].expected.interactions
    with pytest.raises(DataError) as info:
        download_dataset("tiny", tmp_path, server.url, registry=registry)
    message = str(info.value)
    assert message.startswith(f"tiny: train.txt downloaded from {server.url}/{TRAIN}")
    assert re.search(rf"interaction count \d+, expected {want}", message)
    assert "Deleted the download" in message
    assert not (tmp_path / "tiny" / "train.txt").exists()
    assert not (tmp_path / "tiny" / "train.txt.part").exists()


def test_corrupted_file_fails_the_fingerprint(upstream, tmp_path: Path) -> None:
    server, registry = upstream
    _swap_one_item(server.root / TRAIN)
    assert read_contents(server.root / TRAIN, "user_items").interactions == (
        registry["tiny"].files[0].expected.interactions
    )
    with pytest.raises(DataError, match=r"tiny: train\.txt .*fingerprint .*same counts"):
        download_dataset("tiny", tmp_path, server.url, registry=registry)
    assert not (tmp_path / "tiny" / "train.txt").exists()


def test_missing_upstream_file_is_a_clear_404(upstream, tmp_path: Path) -> None:
    server, registry = upstream
    (server.root / TEST).unlink()
    with pytest.raises(DataError) as info:
        download_dataset("tiny", tmp_path, server.url, registry=registry)
    message = str(info.value)
    assert f"tiny: {server.url}/{TEST} answered HTTP 404" in message
    assert "test.txt" in message and "--base-url" in message
    assert not (tmp_path / "tiny" / "test.txt").exists()
    assert (tmp_path / "tiny" / "train.txt").exists()  # the verified file stays


def test_present_dataset_is_skipped_unless_forced(
    upstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, registry = upstream
    download_dataset("shop", tmp_path, server.url, registry=registry)
    n_requests = len(server.log)
    caplog.set_level(logging.INFO, logger=download.__name__)
    download_dataset("shop", tmp_path, server.url, registry=registry)
    assert len(server.log) == n_requests
    assert "shop: already present and verified" in caplog.text
    download_dataset("shop", tmp_path, server.url, force=True, registry=registry)
    assert len(server.log) == n_requests + 2


def test_present_file_that_fails_verification_is_replaced(upstream, tmp_path: Path) -> None:
    server, registry = upstream
    directory = download_dataset("tiny", tmp_path, server.url, registry=registry)
    (directory / "test.txt").write_text("0 1\n")
    with pytest.raises(DataError, match=r"tiny: .*test\.txt does not verify: user count 1"):
        verify_dataset("tiny", directory, registry=registry)
    download_dataset("tiny", tmp_path, server.url, registry=registry)
    assert [p for p, _, _ in server.log].count(f"/mirror/{TRAIN}") == 1
    verify_dataset("tiny", directory, registry=registry)


def test_unknown_dataset_lists_the_valid_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'movielens'; choose one of \['beauty'"):
        download_dataset("movielens", tmp_path)


def test_cache_dir_defaults_to_env_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIREX_DATA", str(tmp_path))
    assert dataset_dir("beauty") == tmp_path / "amazon" / "beauty"
    monkeypatch.delenv("HIREX_DATA")
    assert default_cache_dir() == Path.home() / ".cache" / "hirex" / "data"


# ---- command line -----------------------------------------------------------------------


def test_cli_download_and_list(
    upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    server, registry = upstream
    monkeypatch.setitem(DATASETS, "shop", registry["shop"])
    cache = tmp_path / "cache"
    argv = ["data", "download", "shop", "--cache-dir", str(cache), "--base-url", server.url]
    assert main(argv) == 0
    assert capsys.readouterr().out == f"shop: {cache / 'amazon' / 'shop'}\n"

    monkeypatch.setenv("HIREX_DATA", str(cache))
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"shop\s+verified\s+{re.escape(str(cache / 'amazon' / 'shop'))}", out)
    assert re.search(r"gowalla\s+not downloaded", out)

    (server.root / SEQUENCES).unlink()
    assert main([*argv, "--force"]) == 2
    err = capsys.readouterr().err
    assert f"hirex data: error: shop: {server.url}/{SEQUENCES} answered HTTP 404" in err
    assert main(["data", "download", "nope"]) == 2
    assert "unknown dataset(s) ['nope']; choose among" in capsys.readouterr().err


# ---- the real gowalla files -------------------------------------------------------------


def test_real_gowalla_download_verifies_and_is_then_skipped(
    real_gowalla_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "CHUNK_BYTES", 1 << 16)
    with serve(real_gowalla_root) as server:
        part = tmp_path / "gowalla" / "train.txt.part"
        part.parent.mkdir()
        part.write_bytes((real_gowalla_root / "data/gowalla/train.txt").read_bytes()[:1_000_000])
        directory = download_dataset("gowalla", tmp_path, server.url)
        assert server.requests_for("train.txt") == [("bytes=1000000-", 206)]
        assert not part.exists() and (directory / "train.txt").is_file()
        n_requests = len(server.log)
        download_dataset("gowalla", tmp_path, server.url)
        assert len(server.log) == n_requests


def test_cli_real_gowalla(
    real_gowalla_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setattr(download, "CHUNK_BYTES", 1 << 16)
    with serve(real_gowalla_root) as server:
        argv = ["data", "download", "gowalla", "--cache-dir", str(tmp_path), "--base-url"]
        assert main([*argv, server.url]) == 0
    assert capsys.readouterr().out == f"gowalla: {tmp_path / 'gowalla'}\n"
    assert (tmp_path / "gowalla" / "test.txt").read_bytes() == (
        SHARED_DATA / "gowalla" / "test.txt"
    ).read_bytes()
    assert main(["data", "list", "--cache-dir", str(tmp_path)]) == 0
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0  # the same option
    assert re.search(r"gowalla\s+verified", capsys.readouterr().out)
