"""The retrieval service behind ``hirex serve``: a trained run's model and index, searched by many
threads at once, with durable live item changes.

State on disk (``state_dir``, default ``<run>/serving``)::

    base.json     which index the changes apply to (its path and creation time)
    index/        the latest snapshot: the base index with the changes up to ``applied_seq``
                  (``save_index`` format, written atomically)
    updates.log   the journal of changes since (``hirex.serve.journal``)

An item change is validated, appended to the journal (fsynced) and then applied to the index
under the exclusive lock, with every derived array rebuilt before the lock is released: a search
sees the index before the change or after it, never half of it, and a change is acknowledged only
once it is on disk.  Opening the service loads the snapshot (or the base index) and replays the
journal before anything is served.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hirex.atomic_files import atomic_write_json
from hirex.data.interactions import IdMap, Interactions
from hirex.index.files import load_index, read_manifest, save_index
from hirex.index.hierarchy import HierarchicalIndex
from hirex.index.search import beam_search, parse_beam, prepare_index
from hirex.models.retrieval_model import RetrievalModel, resolve_device
from hirex.models.user_batch import UserBatch
from hirex.runs import INDEX_DIR, load_scoring_run
from hirex.serve.journal import Journal, JournalError
from hirex.serve.rwlock import ReadWriteLock

log = logging.getLogger(__name__)

MAX_BEAM = 4096
"""The widest beam a query may ask for."""
MAX_ABS = 1e6
"""Embedding values lie in [-MAX_ABS, MAX_ABS]: larger ones overflow float32 scores."""

STATE_DIR = "serving"
BASE_FILE = "base.json"
JOURNAL_FILE = "updates.log"


class ServiceError(Exception):
    """A request the service refuses: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Query:
    """One retrieval: a known ``user`` (original id), or an ad-hoc ``history`` of original item
    ids for a user the model has not seen.  ``exclude``: items never to return; the user's own
    history is excluded too unless ``keep_seen``.  ``beam``: None for the service default."""

    user: Any = None
    history: Sequence[Any] | None = None
    k: int = 20
    beam: int | Sequence[int] | None = None
    exclude: Sequence[Any] = ()
    keep_seen: bool = False


@dataclass(frozen=True)
class Retrieved:
    user: Any
    items: list
    """Original item ids, best first (at most k)."""
    scores: list[float]
    nodes_scored: int
    items_scored: int
    history_skipped: list = field(default_factory=list)
    """History items added after training: the model has no embedding to encode them with."""


class Coalescer:
    """Runs the calls that arrive while one is in progress together: each caller queues its
    request; whoever finds the runner free takes everything queued (up to ``max_items`` items)
    and runs it as one batch for all."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], max_items: int) -> None:
        self._run, self._max = run, max_items
        self._cond = threading.Condition()
        self._pending: list[_Waiting] = []
        self._busy = False

    def submit(self, request: list) -> Any:
        """The result of ``run`` for ``request``; an exception result is raised here."""
        me = _Waiting(request)
        with self._cond:
            self._pending.append(me)
        while True:
            with self._cond:
                while not me.done and self._busy:
                    self._cond.wait()
                if me.done:
                    break
                self._busy = True
                batch, size = [], 0
                while self._pending and (
                    not batch or size + len(self._pending[0].request) <= self._max
                ):
                    batch.append(self._pending.pop(0))
                    size += len(batch[-1].request)
            try:
                outs = self._run([w.request for w in batch])
            except Exception as err:  # noqa: BLE001 (handed to every caller of the batch)
                outs = [err] * len(batch)
            with self._cond:
                for w, out in zip(batch, outs, strict=True):
                    w.result, w.done = out, True
                self._busy = False
                self._cond.notify_all()
        if isinstance(me.result, Exception):
            raise me.result
        return me.result


@dataclass
class _Waiting:
    request: list
    result: Any = None
    done: bool = False


class IdTable:
    """Original ids <-> dense ids, growing as items are added (a user's ids never grow)."""

    def __init__(self, raw: list) -> None:
        self.raw = list(raw)
        self.lookup = {v: i for i, v in enumerate(self.raw)}
        self.integer = all(isinstance(v, int) for v in self.raw)

    @classmethod
    def of(cls, id_map: IdMap | None, n: int) -> IdTable:
        return cls(id_map.raw.tolist() if id_map is not None else list(range(n)))

    def key(self, value: Any, what: str) -> int | str:
        """A request's id in the stored type (ids in URLs arrive as strings)."""
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ServiceError(422, f"{what} {value!r}: ids are integers or strings")
        if self.integer:
            try:
                number = int(value)
            except ValueError:
                raise ServiceError(
                    422, f"{what} {value!r}: ids of this data are integers"
                ) from None
            if number < 0:
                raise ServiceError(
                    422, f"{what} {value!r}: ids of this data are non-negative integers"
                )
            return number
        return str(value)

    def dense(self, values: Sequence[Any], what: str) -> np.ndarray:
        """(n,) int64 dense ids; unknown ids are a 422 naming them."""
        keys = [self.key(v, what) for v in values]
        out = np.fromiter((self.lookup.get(k, -1) for k in keys), np.int64, len(keys))
        if (out < 0).any():
            missing = [values[i] for i in np.flatnonzero(out < 0)[:10]]
            raise ServiceError(422, f"unknown {what} {missing} ({int((out < 0).sum())} in all)")
        return out

    def to_raw(self, dense: np.ndarray) -> list:
        return [self.raw[i] for i in dense.tolist()]


class RetrievalService:
    """Search and live maintenance over one model and index; safe to call from many threads."""

    def __init__(
        self,
        model: RetrievalModel,
        index: HierarchicalIndex,
        history: Interactions,
        users: IdTable,
        items: IdTable,
        state_dir: Path,
        *,
        beam: int | Sequence[int] = 8,
        max_k: int = 1000,
        max_batch: int = 256,
        snapshot_every: int = 1000,
        applied_seq: int = 0,
    ) -> None:
        self.model, self.index, self.history = model.eval(), index, history
        self.users, self.items = users, items
        self.state_dir = state_dir
        self.beam = parse_beam(beam, len(index.sizes))
        self.max_k, self.max_batch, self.snapshot_every = max_k, max_batch, snapshot_every
        self._lock = ReadWriteLock()  # searches share it; applying a change takes it alone
        self._writer = threading.Lock()  # one change (or snapshot) at a time
        self._coalescer = Coalescer(self._retrieve_many, max_batch)
        self.journal = Journal(state_dir / JOURNAL_FILE)
        self.applied_seq = applied_seq
        first = self.journal.records[0]["seq"] if self.journal.records else None
        if first is not None and first > applied_seq + 1:
            raise JournalError(
                f"{self.journal.path} starts at change {first} but the index holds changes up to "
                f"{applied_seq}: the changes between are missing (was an older snapshot restored?)"
            )
        replay = [r for r in self.journal.records if r["seq"] > applied_seq]
        for record in replay:
            self._apply(record)
        if replay:
            log.info("replayed %d journaled item changes", len(replay))
        prepare_index(model, index)

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        run: str | os.PathLike,
        *,
        index: str | os.PathLike | None = None,
        state_dir: str | os.PathLike | None = None,
        device: str = "cpu",
        beam: int | Sequence[int] | None = None,
        **options: Any,
    ) -> RetrievalService:
        """Load a run (its data gives user histories and ids), its index (default
        ``<run>/index``) and the state of earlier changes, replaying the journal."""
        r = load_scoring_run(run, "cpu", "the retrieval service")
        base = Path(index) if index is not None else Path(run) / INDEX_DIR
        state = Path(state_dir) if state_dir is not None else Path(run) / STATE_DIR
        manifest = read_manifest(base)  # a clear error when it is missing or not an index
        # The index is known by its content (creation time and file checksums), not by where
        # it lies, so a run folder moved with its state is still the same index.
        identity = {
            "index": str(base.resolve()),  # informational: where it was when first served
            "created": manifest.get("created"),
            "sha256": {k: v.get("sha256") for k, v in sorted(manifest.get("files", {}).items())},
        }
        state.mkdir(parents=True, exist_ok=True)
        base_file = state / BASE_FILE
        if base_file.exists():
            try:
                recorded = json.loads(base_file.read_text())
                same = (
                    recorded["created"] == identity["created"]
                    and recorded.get(
                        "sha256",
                        identity["sha256"],  # older state files did not record them
                    )
                    == identity["sha256"]
                )
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{base_file} is damaged ({err}); it records which index the changes in "
                    f"{state} were made to. Restore it from a copy, or serve with --state and a "
                    "new folder (the changes in this one stay where they are)"
                ) from err
            if not same:
                raise ValueError(
                    f"{state} holds changes to another index (created {recorded['created']}, "
                    f"first served from {recorded.get('index')}); serve this index with --state "
                    "and a new folder (the changes in this one stay for the index they were "
                    "made to)"
                )
        else:
            atomic_write_json(base_file, identity)
        snapshot = state / INDEX_DIR
        dev = resolve_device(device)
        applied, added = 0, []
        if snapshot.exists():
            info = read_manifest(snapshot).get("info", {})
            applied, added = int(info.get("applied_seq", 0)), list(info.get("added_item_ids", []))
            model, ix = load_index(snapshot, device=dev)
        else:
            model, ix = load_index(base, device=dev)
        ds = r.dataset
        if (model.n_users, model.n_items) != (ds.n_users, ds.n_items):
            raise ValueError(
                f"the index at {base} was built for {model.n_items} items and {model.n_users} "
                f"users, the run {run} has {ds.n_items} and {ds.n_users}; build the index from "
                "this run (hirex index build)"
            )
        items = IdTable.of(ds.item_ids, ds.n_items)
        for raw in added:
            items.lookup[raw] = len(items.raw)
            items.raw.append(raw)
        if len(items.raw) != ix.n_items:
            raise ValueError(f"{snapshot}: {ix.n_items} item slots but {len(items.raw)} item ids")
        return cls(
            model,
            ix,
            ds.history("test"),
            IdTable.of(ds.user_ids, ds.n_users),
            items,
            state,
            beam=beam if beam is not None else r.config.index.beam,
            applied_seq=applied,
            **options,
        )

    # ---- search ----------------------------------------------------------------------------
    def retrieve(self, queries: Sequence[Query]) -> list[Retrieved]:
        """Top-k items for each query, through the index, ranked by the full model.

        Calls made from several threads at once are searched together, as one batch (up to
        ``max_batch`` queries): a search's fixed cost is paid once for all of them, and each call
        still gets its own results or its own error."""
        if not 1 <= len(queries) <= self.max_batch:
            raise ServiceError(422, f"give 1 to {self.max_batch} queries, got {len(queries)}")
        return self._coalescer.submit(list(queries))

    def _retrieve_many(self, requests: list[list[Query]]) -> list[list[Retrieved] | ServiceError]:
        """Each request's results, or the ServiceError that refuses it; one search for all."""
        with self._lock.read():
            outcome: list[list[Retrieved] | ServiceError] = []
            rows: list[tuple[int, int, dict[str, Any]]] = []  # (request, position, prepared)
            for r, queries in enumerate(requests):
                try:
                    prepared = [
                        self._prepare(q, i if len(queries) > 1 else None)
                        for i, q in enumerate(queries)
                    ]
                except ServiceError as err:
                    outcome.append(err)
                    continue
                outcome.append([])
                rows += [(r, i, p) for i, p in enumerate(prepared)]
            found: dict[tuple[int, int], Retrieved] = {}
            groups: dict[tuple[int, ...], list[tuple[int, int, dict[str, Any]]]] = {}
            for row in rows:
                groups.setdefault(row[2]["beam"], []).append(row)
            for beam, group in groups.items():
                results = self._search([p for _, _, p in group], beam)
                for (r, i, _), result in zip(group, results, strict=True):
                    found[r, i] = result
        for r, out in enumerate(outcome):
            if isinstance(out, list):
                out.extend(found[r, i] for i in range(len(requests[r])))
        return outcome

    def _prepare(self, q: Query, position: int | None) -> dict[str, Any]:
        """Validate one query and turn it into dense ids (a 422 names the problem)."""
        where = "" if position is None else f"query {position}: "
        try:
            if not isinstance(q.k, int) or not 1 <= q.k <= self.max_k:
                raise ServiceError(422, f"k must be an integer from 1 to {self.max_k}, got {q.k!r}")
            try:
                beam = self.beam if q.beam is None else parse_beam(q.beam, len(self.index.sizes))
            except (ValueError, TypeError) as err:
                raise ServiceError(422, str(err)) from None
            if max(beam) > MAX_BEAM:
                raise ServiceError(422, f"beam widths must be at most {MAX_BEAM}, got {q.beam}")
            if (q.user is None) == (q.history is None):
                raise ServiceError(422, "give either a user id or a history of item ids")
            skipped: list = []
            if q.user is not None:
                u = int(self.users.dense([q.user], "user id")[0])
                hist = self.history.items[self.history.indptr[u] : self.history.indptr[u + 1]]
                user_out, dense_user, seen = q.user, u, hist
            else:
                if len(q.history) == 0:
                    raise ServiceError(422, "history is empty; give at least one item id")
                given = self.items.dense(list(q.history), "history item ids")
                trained = given < self.model.n_items
                skipped = self.items.to_raw(given[~trained])
                hist = given[trained]
                if len(hist) == 0:
                    raise ServiceError(
                        422,
                        "none of the history items can be encoded: all were added after "
                        "training, and the model has no embedding for them",
                    )
                user_out, dense_user, seen = None, -1, given
            excl = self.items.dense(list(q.exclude), "exclude item ids")
            if not q.keep_seen:
                excl = np.concatenate([excl, seen])
        except ServiceError as err:
            raise ServiceError(err.status, where + err.message) from None
        if self.model.sequential:
            hist = hist[-self.model.cfg.max_history :]
        return {
            "user": user_out,
            "dense_user": dense_user,
            "history": np.asarray(hist, np.int64),
            "exclude": excl,
            "k": q.k,
            "beam": beam,
            "skipped": skipped,
        }

    def _search(self, rows: list[dict[str, Any]], beam: tuple[int, ...]) -> list[Retrieved]:
        lengths = np.array([len(r["history"]) for r in rows], np.int64)
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        batch = UserBatch(
            torch.tensor([r["dense_user"] for r in rows], dtype=torch.int64),
            torch.from_numpy(indptr),
            torch.from_numpy(np.concatenate([r["history"] for r in rows])),
        )
        k = max(r["k"] for r in rows)
        found = beam_search(
            self.model,
            self.index,
            batch,
            None,
            k,
            beam,
            exclude_ids=[r["exclude"] for r in rows],
        )
        out = []
        for b, r in enumerate(rows):
            ids = found.topk.ids[b, : r["k"]].numpy()
            keep = ids >= 0
            out.append(
                Retrieved(
                    user=r["user"],
                    items=self.items.to_raw(ids[keep]),
                    scores=[float(s) for s in found.topk.scores[b, : r["k"]][keep]],
                    nodes_scored=int(found.nodes_scored[b]),
                    items_scored=int(found.items_scored[b]),
                    history_skipped=r["skipped"],
                )
            )
        return out

    # ---- live changes ----------------------------------------------------------------------
    def put_item(self, item: Any, embedding: Any = None, text: str | None = None) -> dict[str, Any]:
        """Add or update an item from its embedding (Q x D numbers, nested or flat) or, for a
        model with text features, its text.  Durable once this returns."""
        key = self.items.key(item, "item id")
        if (embedding is None) == (text is None):
            raise ServiceError(422, "give the item's embedding or its text (one of the two)")
        q, d = self.index.item_emb.shape[1:]
        if text is not None:
            if not self.model.cfg.item_text:
                raise ServiceError(
                    422, "this model has no text features; give the item's embedding instead"
                )
            try:
                with torch.no_grad():
                    emb = self.model.encode_item_text([text])[0].float().cpu()
            except ValueError as err:
                raise ServiceError(422, str(err)) from None
        else:
            try:
                emb = torch.as_tensor(embedding, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                raise ServiceError(422, "embedding must be a list of numbers") from None
            if (
                emb.numel() != q * d
                or emb.ndim not in (1, 2)
                or (emb.ndim == 2 and emb.shape != (q, d))
            ):
                raise ServiceError(
                    422,
                    f"embedding must hold {q} x {d} numbers (a list of {q * d}, or {q} lists of "
                    f"{d}), got shape {list(emb.shape)}",
                )
            emb = emb.reshape(q, d)
            if not torch.isfinite(emb).all():
                raise ServiceError(422, "embedding holds NaN or infinite values")
            if emb.abs().max() > MAX_ABS:
                raise ServiceError(
                    422,
                    f"embedding values must lie in [-{MAX_ABS:g}, {MAX_ABS:g}] (larger ones "
                    f"overflow the scores), got {float(emb.abs().max()):g}",
                )
        with self._writer:
            dense = self.items.lookup.get(key, len(self.items.raw))
            created = dense == len(self.items.raw) or not self.index.active[dense]
            record = {"op": "put", "id": key, "dense": dense, "emb": emb.reshape(-1).tolist()}
            seq = self._commit(record)
            path = self.index.codes[dense].tolist()
        return {"id": item, "created": created, "path": path, "seq": seq}

    def delete_item(self, item: Any) -> dict[str, Any]:
        """Remove an item: it is never returned again.  Durable once this returns."""
        key = self.items.key(item, "item id")
        with self._writer:
            dense = self.items.lookup.get(key)
            if dense is None or not self.index.active[dense]:
                raise ServiceError(404, f"item {item!r} is not in the index")
            seq = self._commit({"op": "delete", "id": key, "dense": dense})
        return {"id": item, "deleted": True, "seq": seq}

    def item(self, item: Any, embedding: bool = False) -> dict[str, Any]:
        """What the index holds for an item (a 404 when it is not there)."""
        key = self.items.key(item, "item id")
        with self._lock.read():
            dense = self.items.lookup.get(key)
            if dense is None or not self.index.active[dense]:
                raise ServiceError(404, f"item {item!r} is not in the index")
            out = {
                "id": item,
                "path": self.index.codes[dense].tolist(),
                "trained": dense < self.model.n_items,
            }
            if embedding:
                out["embedding"] = self.index.item_emb[dense].cpu().tolist()
        return out

    def _commit(self, record: dict[str, Any]) -> int:
        """Journal a validated change, then apply it under the exclusive lock (writer held)."""
        seq = self.journal.append(record)
        with self._lock.write():
            self._apply({"seq": seq, **record})
            prepare_index(self.model, self.index)
        if len(self.journal.records) >= self.snapshot_every:
            self._snapshot()
        return seq

    def _apply(self, record: dict[str, Any]) -> None:
        key, dense = record["id"], int(record["dense"])
        known = self.items.lookup.get(key)
        if record["op"] == "put":
            if known is None:
                if dense != len(self.items.raw):
                    raise JournalError(f"journal record {record['seq']}: item {key!r} out of order")
                self.items.lookup[key] = dense
                self.items.raw.append(key)
            elif known != dense:
                raise JournalError(f"journal record {record['seq']}: item {key!r} changed slot")
            emb = torch.tensor(record["emb"], dtype=torch.float32)
            self.index.add_items(emb.reshape(1, *self.index.item_emb.shape[1:]), np.array([dense]))
        elif record["op"] == "delete":
            if known != dense:
                raise JournalError(f"journal record {record['seq']}: unknown item {key!r}")
            self.index.remove_items(np.array([dense]))
        else:
            raise JournalError(f"journal record {record['seq']}: unknown op {record['op']!r}")
        self.applied_seq = int(record["seq"])

    # ---- snapshots -------------------------------------------------------------------------
    def snapshot(self) -> None:
        """Save the index with every change so far and empty the journal."""
        with self._writer:
            self._snapshot()

    def _snapshot(self) -> None:
        t0 = time.perf_counter()
        with self._lock.read():  # searches go on; changes wait (the writer lock is held)
            info = {
                "applied_seq": self.applied_seq,
                "added_item_ids": self.items.raw[self.model.n_items :],
            }
            save_index(self.state_dir / INDEX_DIR, self.index, self.model, info=info)
        self.journal.reset(self.applied_seq)
        log.info(
            "snapshot at change %d written in %.2fs", self.applied_seq, time.perf_counter() - t0
        )

    def stats(self) -> dict[str, int]:
        return {
            "items_active": self.index.n_active,
            "item_slots": self.index.n_items,
            "journal_records": len(self.journal.records),
            "applied_seq": self.applied_seq,
        }

    def close(self, snapshot: bool = True) -> None:
        """Snapshot pending changes (so the next start replays nothing) and close the journal."""
        with self._writer:
            if snapshot and self.journal.records:
                self._snapshot()
            self.journal.close()
