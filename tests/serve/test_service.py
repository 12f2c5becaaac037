"""RetrievalService in-process: original ids, live changes, snapshots and the state folder."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest

from hirex.cli.main import main
from hirex.data.synthetic import SyntheticConfig, make_synthetic
from hirex.serve.journal import JournalError
from hirex.serve.service import Query, RetrievalService, ServiceError


@pytest.fixture(scope="module")
def string_id_run(tmp_path_factory):
    """A run on a CSV table whose users and items have string ids."""
    root = tmp_path_factory.mktemp("strings")
    ds, _ = make_synthetic(SyntheticConfig(n_users=300, n_items=120, seed=5))
    path = root / "clicks.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item"])
        for u in range(ds.n_users):
            for i in ds.train.items[ds.train.indptr[u] : ds.train.indptr[u + 1]]:
                w.writerow([f"user-{u}", f"sku-{i}"])
    out = root / "run"
    flags = ["--data", str(path), "--quiet", "--set", "train.epochs=2", "--set", "model.dim=16"]
    assert main(["train", *flags, "--out", str(out)]) == 0
    assert main(["index", "build", "--run", str(out), "--levels", "4,4"]) == 0
    return out


def test_original_ids_in_and_out_and_new_items_get_new_slots(string_id_run, tmp_path):
    svc = RetrievalService.open(string_id_run, state_dir=tmp_path / "s", beam=100)
    assert svc.users.integer is False
    user = svc.users.raw[3]
    (got,) = svc.retrieve([Query(user=user, k=5)])
    assert got.user == user and all(i.startswith("sku-") for i in got.items)
    with pytest.raises(ServiceError, match=r"unknown user id \['nobody'\]"):
        svc.retrieve([Query(user="nobody")])
    d = svc.index.item_emb.shape[2]
    out = svc.put_item("sku-new", embedding=[0.1] * d)
    assert out["created"] and svc.items.lookup["sku-new"] == svc.model.n_items
    assert svc.item("sku-new")["trained"] is False
    # A live-added item in an ad-hoc history is skipped (the model cannot encode it).
    (adhoc,) = svc.retrieve([Query(history=[got.items[0], "sku-new"], k=3)])
    assert adhoc.history_skipped == ["sku-new"]
    with pytest.raises(ServiceError, match="none of the history items can be encoded"):
        svc.retrieve([Query(history=["sku-new"])])
    svc.close()
    again = RetrievalService.open(string_id_run, state_dir=tmp_path / "s", beam=100)
    assert again.items.lookup["sku-new"] == svc.model.n_items
    assert again.retrieve([Query(user=user, k=5)]) == svc.retrieve([Query(user=user, k=5)])
    again.close()


def test_snapshots_every_n_changes_and_reopening_replays_the_rest(served_run, tmp_path):
    state = tmp_path / "s"
    svc = RetrievalService.open(served_run, state_dir=state, snapshot_every=3)
    rng = np.random.default_rng(1)
    for i in range(5):
        svc.put_item(1000 + i, embedding=rng.standard_normal(16).tolist())
    svc.delete_item(3)
    # 6 changes: a snapshot after the 3rd and the 6th; the journal is empty again.
    assert (state / "index" / "manifest.json").exists() and svc.journal.records == []
    svc.put_item(2000, embedding=rng.standard_normal(16).tolist())
    want = svc.retrieve([Query(user=u, k=10) for u in range(20)])
    stats = svc.stats()
    svc.journal.close()  # no close(): the last change lives in the journal only
    again = RetrievalService.open(served_run, state_dir=state)
    assert again.stats() == stats and again.applied_seq == 7
    assert again.retrieve([Query(user=u, k=10) for u in range(20)]) == want
    with pytest.raises(ServiceError, match="not in the index"):
        again.item(3)
    again.close()


def test_a_state_folder_of_another_index_is_refused(served_run, tmp_path):
    state = tmp_path / "s"
    RetrievalService.open(served_run, state_dir=state).close()
    other = tmp_path / "other-index"
    assert (
        main(["index", "build", "--run", str(served_run), "--levels", "4", "--out", str(other)])
        == 0
    )
    with pytest.raises(ValueError, match="holds changes to another index") as err:
        RetrievalService.open(served_run, index=other, state_dir=state)
    assert "remove" not in str(err.value) and "--state and a new folder" in str(err.value)


def test_a_moved_run_folder_keeps_its_changes(served_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(served_run, run)
    svc = RetrievalService.open(run)
    svc.delete_item(3)
    svc.close()
    moved = tmp_path / "moved"
    run.rename(moved)
    again = RetrievalService.open(moved)  # the same index, found at a new path
    with pytest.raises(ServiceError, match="not in the index"):
        again.item(3)
    again.close()
    shutil.rmtree(moved)


def test_a_journal_that_skips_changes_is_refused(served_run, tmp_path):
    state = tmp_path / "s"
    svc = RetrievalService.open(served_run, state_dir=state, snapshot_every=2)
    for i in range(3):
        svc.put_item(1000 + i, embedding=[0.5] * 16)
    svc.journal.close()
    # Put back the first snapshot's predecessor: the base index (no snapshot) with a journal
    # that starts at change 3.
    import shutil

    shutil.rmtree(state / "index")
    with pytest.raises(JournalError, match="starts at change 3"):
        RetrievalService.open(served_run, state_dir=state)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--k", "0"], "--k must be positive"),
        (["--k", "50", "--max-k", "10"], "must lie in 1..--max-k"),
        (["--port", "70000"], "not a port number"),
        (["--beam", "2,2,2"], "beam needs 2"),
    ],
)
def test_serve_refuses_bad_options_before_opening_a_port(
    served_run, tmp_path, capsys, flags, message
):
    argv = ["serve", "--run", str(served_run), "--state", str(tmp_path / "s"), *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_serve_names_a_missing_run(tmp_path, capsys):
    assert main(["serve", "--run", str(tmp_path / "nothing")]) == 2
    assert "is not a finished hirex run" in capsys.readouterr().err


def test_concurrent_calls_are_searched_together_and_keep_their_own_answers(served_run, tmp_path):
    import threading

    svc = RetrievalService.open(served_run, state_dir=tmp_path / "s")
    want = {u: svc.retrieve([Query(user=u, k=8)])[0].items for u in range(24)}
    calls = []
    search = svc._search

    def counting(rows, beam):  # noqa: ANN001, ANN202
        if not calls:
            # The first search holds the runner until the other callers have queued behind it,
            # so the test does not depend on how the threads happen to be scheduled.
            deadline = time.monotonic() + 30
            while len(svc._coalescer._pending) < 10 and time.monotonic() < deadline:
                time.sleep(0.005)
        calls.append(len(rows))
        return search(rows, beam)

    svc._search = counting
    got, errors = {}, []
    gate = threading.Barrier(25)

    def ask(u):
        gate.wait()
        try:
            if u is None:
                svc.retrieve([Query(user=10**9)])
            else:
                got[u] = svc.retrieve([Query(user=u, k=8)])[0].items
        except ServiceError as err:
            errors.append(err.message)

    threads = [threading.Thread(target=ask, args=(u,)) for u in [*range(24), None]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == want  # each caller its own ranking, a bad query only fails its own call
    assert len(errors) == 1 and "unknown user id" in errors[0]
    assert len(calls) < 24 and max(calls) > 1  # searches were shared


def test_a_sequence_model_is_served_like_the_library_ranks_it(tmp_path):
    """Transformer user tower: a known user's history is its chronological train + valid items
    (the last max_history of them); the service equals beam_search over the same histories."""
    from hirex.index.search import beam_search
    from tests.cli.test_cli import SMALL

    run = tmp_path / "run"
    seq = ["--set", "data.synthetic_kind='sequence'", "--set", "model.user_encoder='transformer'"]
    seq += ["--set", "model.max_history=5", "--set", "model.use_user_id=false"]
    assert main(["train", *SMALL, *seq, "--out", str(run)]) == 0
    assert main(["index", "build", "--run", str(run), "--levels", "4,4"]) == 0
    svc = RetrievalService.open(run, state_dir=tmp_path / "s", beam=3)
    assert svc.model.sequential
    users = np.arange(0, 40, 3)
    want = beam_search(svc.model, svc.index, users, svc.history, 7, 3, exclude=svc.history)
    got = svc.retrieve([Query(user=int(u), k=7) for u in users])
    for b, r in enumerate(got):
        ids = want.topk.ids[b]
        assert r.items == ids[ids >= 0].tolist()
    h = svc.history
    last = h.items[h.indptr[4] : h.indptr[5]][-5:].tolist()
    (adhoc,) = svc.retrieve([Query(history=last, k=7, keep_seen=True)])
    (known,) = svc.retrieve([Query(user=4, k=7, keep_seen=True)])
    assert adhoc.items == known.items  # the same last five items: the same ranking


def test_a_hierarchical_kmeans_index_takes_live_changes(served_run, tmp_path):
    """A dot model over a hierarchical k-means index (faiss scan, centroid descent for new
    items): live puts and deletes are searched like beam_search over the changed index, and a
    reopened service replays them."""
    from hirex.index.search import beam_search

    ix = tmp_path / "hkm"
    argv = ["index", "build", "--run", str(served_run), "--levels", "8,4", "--out", str(ix)]
    assert main([*argv, "--kmeans", "hierarchical"]) == 0
    svc = RetrievalService.open(served_run, index=ix, state_dir=tmp_path / "s", beam=3)
    assert svc.index.assign == "centroids"
    near = svc.index.item_emb[5, 0] * 1.01
    svc.put_item(10_000, embedding=near[None].tolist())
    svc.delete_item(svc.items.raw[7])
    users = np.arange(20)
    want = beam_search(svc.model, svc.index, users, svc.history, 6, 3, exclude=svc.history)
    got = svc.retrieve([Query(user=svc.users.raw[int(u)], k=6) for u in users])
    for b, r in enumerate(got):
        ids = want.topk.ids[b]
        assert r.items == [svc.items.raw[i] for i in ids[ids >= 0].tolist()]
    new = svc.items.lookup[10_000]
    assert np.array_equal(
        svc.index.item_keys(1, np.array([new])), svc.index.item_keys(1, np.array([5]))
    )
    svc.close()
    again = RetrievalService.open(served_run, index=ix, state_dir=tmp_path / "s", beam=3)
    assert again.retrieve([Query(user=svc.users.raw[2], k=6)]) == [got[2]]
    again.close()
