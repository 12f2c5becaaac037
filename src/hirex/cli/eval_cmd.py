"""``hirex eval``: full-ranking metrics of a trained run."""

from __future__ import annotations

import argparse

from hirex.atomic_files import atomic_write_json
from hirex.cli.common import add_index_options, beam_of, open_index, print_metrics
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
    p.add_argument("--run", required=True, help="run folder written by `hirex train`")
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


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise ValueError(f"--ks {text!r} must be comma-separated integers, e.g. 10,20") from None
    if min(ks) <= 0:
        raise ValueError(f"--ks {text!r}: cut-offs must be positive")
    return ks
