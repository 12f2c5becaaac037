"""``hirex eval``: full-ranking metrics of a trained run."""

from __future__ import annotations

import argparse

import numpy as np

from hirex.atomic_files import atomic_write_json
from hirex.cli.common import MAX_K, add_index_options, beam_of, open_index, print_metrics
from hirex.eval.protocols import evaluate, evaluate_index, evaluate_ranker
from hirex.runs import load_run
from hirex.train.trainer import eval_ks


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a trained run by full ranking (exhaustive, or through an index)",
        description="Rank all items for every user with targets in --split, masking the "
        "items the user already has, and report Recall, NDCG, HitRate, MRR and Precision. "
        "With --index, rank through beam search and report the share of items scored.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", help="run folder written by `hirex train`")
    what.add_argument("--trec-run", help="with --qrels: a TREC run file to score")
    p.add_argument(
        "--qrels",
        help="score against these TREC qrels (e.g. LLM labels from `hirex label --run`) "
        "instead of the held-out split: a --run retrieves --k items for each query id, read "
        "as a user id; reports trec_eval's ndcg_cut, P, recall, map and recip_rank",
    )
    p.add_argument("--k", type=int, default=10, help="with --qrels --run: depth (default 10)")
    p.add_argument("--split", choices=["valid", "test"], default="test", help="default: test")
    p.add_argument(
        "--ks",
        help="comma-separated cut-offs (default: the protocol's: 20, or 5,10 for sequences)",
    )
    p.add_argument("--max-users", type=int, help="evaluate an evenly spaced subset of users")
    add_index_options(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--output", help="also write the metrics as JSON to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.qrels or args.trec_run:
        return _run_qrels(args)
    r = load_run(args.run, args.device)
    ks = _parse_ks(args.ks) if args.ks else eval_ks(r.config, r.dataset)
    index = open_index(args, r)
    if r.retriever is not None:
        ev = evaluate_ranker(
            r.retriever.ranker(), r.dataset, args.split, ks, max_users=args.max_users
        )
    elif index is not None:
        ev = evaluate_index(
            index[0],
            index[1],
            r.dataset,
            args.split,
            ks,
            beam_of(args, r),
            max_users=args.max_users,
        )
    else:
        ev = evaluate(
            r.model,
            r.dataset,
            args.split,
            ks,
            user_batch=r.config.eval.user_batch,
            item_chunk=r.config.eval.item_chunk,
            max_users=args.max_users,
            progress=True,
        )
    print(
        f"{r.dataset.summary()}\n{ev.n_users:,} users in {ev.seconds:.1f}s "
        f"({ev.users_per_second:,.0f} users/s)"
    )
    print_metrics(args.split, ev.metrics)
    cost = ev.cost or {}
    if cost:
        print(
            f"through the index: {cost['items_scored_fraction']:.2%} of the items scored per "
            f"user ({cost['items_scored']:,.0f} items, {cost['nodes_scored']:,.0f} nodes)"
        )
    if args.output:
        atomic_write_json(
            args.output, {"split": args.split, "users": ev.n_users, **ev.metrics, **cost}
        )
    return 0


def _run_qrels(args: argparse.Namespace) -> int:
    from hirex.eval.trec import read_qrels, read_run, trec_metrics

    if not args.qrels:
        raise ValueError("--trec-run needs --qrels FILE to score it against")
    if args.max_users is not None:
        raise ValueError("--max-users does not apply with --qrels: the qrels say which queries")
    qrels = read_qrels(args.qrels)
    ks = _parse_ks(args.ks) if args.ks else (10,)
    if args.trec_run:
        run_ = read_run(args.trec_run)
        source = args.trec_run
    else:
        if args.k < 1:
            raise ValueError(f"--k must be positive, got {args.k}")
        run_ = _retrieve_for_qrels(args, qrels, max(args.k, *ks))
        source = args.run
    common = sorted(set(qrels) & set(run_))
    if not common:
        raise ValueError(f"{args.qrels} and {source} share no query id")
    metrics = trec_metrics(qrels, run_, ks)
    print(f"{len(common):,} queries of {args.qrels} scored ({len(qrels) - len(common):,} absent)")
    print_metrics("qrels", metrics)
    if args.output:
        atomic_write_json(
            args.output, {"qrels": str(args.qrels), "queries": len(common), **metrics}
        )
    return 0


def _retrieve_for_qrels(args: argparse.Namespace, qrels, k: int):  # noqa: ANN001, ANN202
    from hirex.runs import run_topk

    r = load_run(args.run, args.device)
    ds = r.dataset
    raw = sorted(qrels)
    if ds.user_ids is not None:
        dense = ds.user_ids.find(raw)
    else:
        dense = np.array([int(q) if q.isdigit() else -1 for q in raw])
        dense[dense >= ds.n_users] = -1
    unknown = [q for q, d in zip(raw, dense, strict=True) if d < 0]
    if unknown:
        raise ValueError(
            f"{args.qrels}: query id {unknown[0]!r} is not a user of {args.run} "
            f"({len(unknown)} unknown); qrels for a run use user ids as query ids"
        )
    top = run_topk(r, dense, k, split=args.split, index=open_index(args, r), beam=beam_of(args, r))
    items = top.ids.numpy()
    scores = top.scores.numpy()
    out = {}
    for q, ids, sc in zip(raw, items, scores, strict=True):
        keep = ids >= 0
        docs = ds.item_ids.to_raw(ids[keep]) if ds.item_ids is not None else ids[keep].tolist()
        out[q] = {str(d): float(s) for d, s in zip(docs, sc[keep], strict=True)}
    return out


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise ValueError(f"--ks {text!r} must be comma-separated integers, e.g. 10,20") from None
    if min(ks) <= 0 or max(ks) > MAX_K:
        raise ValueError(f"--ks {text!r}: cut-offs must lie in 1..{MAX_K:,}")
    return ks
