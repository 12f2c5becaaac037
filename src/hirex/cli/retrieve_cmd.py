"""``hirex retrieve``: top-K items for given users, in the data's original ids."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from hirex.atomic_files import atomic_write_text
from hirex.cli.common import MAX_K, add_index_options, beam_of, open_index
from hirex.runs import load_run, run_topk


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrieve",
        help="top-K items for users of a trained run (exhaustive, or through an index)",
        description="Score every item for each user with the run's model and return the K "
        "best, masking the items the user already has; with --index, beam search through the "
        "hierarchical index and rank the items under the kept nodes with the full model. Users "
        "and items are in the data's original ids.",
    )
    p.add_argument("--run", required=True, help="run folder written by `hirex train`")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", help="comma-separated user ids, e.g. --users 12,40,7")
    who.add_argument("--users-file", help="file with one user id per line")
    who.add_argument("--all-users", action="store_true", help="every user of the dataset")
    p.add_argument("--k", type=int, default=20, help="items per user (default: 20)")
    p.add_argument(
        "--format",
        choices=["json", "csv"],
        default="json",
        help="json: one object per user; csv: user,rank,item,score rows (default: json)",
    )
    p.add_argument("--output", help="write here instead of standard output")
    p.add_argument(
        "--keep-seen",
        action="store_true",
        help="do not mask items the user already interacted with",
    )
    add_index_options(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.k <= MAX_K:
        raise ValueError(f"--k must lie in 1..{MAX_K:,}, got {args.k}")
    if args.users is not None and not args.users.strip():
        raise ValueError("--users is empty; give comma-separated user ids, e.g. --users 12,40,7")
    r = load_run(args.run, args.device)
    ds = r.dataset
    if args.all_users:
        dense = np.arange(ds.n_users)
    else:
        if args.users is not None:
            raw = args.users.split(",")
        else:
            path = Path(args.users_file)
            if not path.is_file():
                raise ValueError(f"--users-file {path} is not a file")
            raw = path.read_text(encoding="utf-8", errors="replace").split()
        raw = [x.strip() for x in raw if x.strip()]
        if not raw:
            raise ValueError("no user ids given")
        dense = _to_dense(raw, ds.user_ids, ds.n_users)
    top = run_topk(
        r, dense, args.k, keep_seen=args.keep_seen, index=open_index(args, r), beam=beam_of(args, r)
    )
    users_out = ds.user_ids.to_raw(dense) if ds.user_ids is not None else dense.tolist()
    rows = []
    for u, ids, scores in zip(users_out, top.ids.numpy(), top.scores.numpy(), strict=True):
        keep = ids >= 0
        items = ds.item_ids.to_raw(ids[keep]) if ds.item_ids is not None else ids[keep].tolist()
        rows.append(
            {"user": u, "items": items, "scores": [round(float(s), 5) for s in scores[keep]]}
        )
    text = _format(rows, args.format)
    if args.output:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _to_dense(raw: list[str], id_map, n_users: int) -> np.ndarray:
    if id_map is not None:
        return id_map.to_dense(raw)
    try:
        ids = [int(x) for x in raw]
    except ValueError:
        raise ValueError(f"user ids of this dataset are integers; got {raw[:5]}") from None
    bad = [u for u in ids if not 0 <= u < n_users]
    if bad:
        raise ValueError(f"unknown user ids {bad[:10]}; valid ids are 0..{n_users - 1}")
    return np.array(ids, dtype=np.int64)


def _format(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return "".join(json.dumps(r) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["user", "rank", "item", "score"])
    for r in rows:
        for rank, (item, score) in enumerate(zip(r["items"], r["scores"], strict=True), 1):
            w.writerow([r["user"], rank, item, score])
    return buf.getvalue()
