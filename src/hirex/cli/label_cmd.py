"""``hirex label``: LLM relevance labels for (query, passage) pairs or for a run's
recommendations, and ``hirex label agree`` for their agreement with gold labels."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from hirex.atomic_files import atomic_write_json
from hirex.cli.common import _toml_str, add_index_options, beam_of, open_index
from hirex.config import RunConfig, apply_overrides, load_config
from hirex.eval.trec import ranked, read_qrels, read_run, write_qrels

log = logging.getLogger(__name__)


MAX_BOOT = 100_000
"""Bootstrap replicates at most (a huge count would run for ever)."""
MAX_SCALE = 100
"""The top grade at most (the confusion matrix is (scale + 1) squared)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label",
        help="judge (query, result) pairs with an LLM; `hirex label agree` compares labels",
        description="Judge pairs with an LLM and write the labels as TREC qrels. Pairs come "
        "from --qrels (the judged pairs, to measure agreement), --trec-run (a run's top "
        "--depth) with --queries and --passages text, or --run (a hirex run's top --k items "
        "for users, with the user's recent history as the query). Labels are cached in SQLite "
        "(--cache): an interrupted run resumes, and no pair is asked twice. The default "
        "backend is a local llama.cpp server that hirex starts on 127.0.0.1 with a small "
        "model that ships in a package; --backend openai talks to any OpenAI-compatible "
        "endpoint (vLLM, llama.cpp, Ollama, hosted APIs; key from $OPENAI_API_KEY).",
    )
    p.add_argument("--config", metavar="FILE", help="a config file; its [label] section is used")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="label.KEY=VALUE",
        help="override a [label] value, e.g. --set label.timeout=30 (repeatable)",
    )
    p.add_argument("--backend", choices=["local", "openai"], help="default: local")
    p.add_argument("--model", help="local: smollm2-135m, gemma3-270m or a .gguf; openai: name")
    p.add_argument("--base-url", help="openai: the endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument(
        "--template", help="umbrela (0-3), thomas (0-2), recommendation (0-3) or a TOML file"
    )
    p.add_argument(
        "--variant",
        help="parts switched on: letters of RDNAM (role, description, narrative, aspects, "
        "multiple judges); '-' for none (default: the template's, RA)",
    )
    p.add_argument("--concurrency", type=int, help="requests in flight (default: 1)")
    p.add_argument("--cache", help="label cache (default: ~/.cache/hirex/labels.sqlite)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--qrels", help="judge the pairs of these TREC qrels")
    src.add_argument("--trec-run", help="judge the top --depth results of this TREC run")
    src.add_argument("--run", help="judge the top --k items a hirex run retrieves for users")
    p.add_argument("--queries", help="with --qrels/--trec-run: `qid<TAB>text` file")
    p.add_argument("--passages", help='with --qrels/--trec-run: {"docid", "doc"} JSON lines')
    p.add_argument("--depth", type=int, default=10, help="--trec-run: results per query (10)")
    p.add_argument("--users", type=int, default=100, help="--run: evenly spaced users (100)")
    p.add_argument("--k", type=int, default=10, help="--run: items per user (default: 10)")
    p.add_argument("--history", type=int, default=5, help="--run: history items shown (5)")
    p.add_argument("--split", choices=["valid", "test"], default="test", help="--run: history of")
    add_index_options(p)
    p.add_argument("--device", default="auto", help="--run: auto, cpu, cuda")
    p.add_argument("--output", help="write the labels here as TREC qrels")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

    agree = p.add_subparsers(dest="label_command", metavar="agree")
    a = agree.add_parser(
        "agree",
        help="agreement of LLM qrels with gold qrels",
        description="Cohen's kappa (graded, binarised at --binary-at, linear and quadratic "
        "weights), Krippendorff's alpha and the confusion matrix over the pairs both files "
        "judge, with 95%% bootstrap intervals over queries. With --trec-runs, also Kendall tau "
        "and RBO between the systems' rankings by --metric under the two label sets.",
    )
    a.add_argument("--gold", required=True, help="gold (human) qrels")
    a.add_argument("--pred", required=True, help="LLM qrels, e.g. from hirex label --output")
    a.add_argument("--scale", type=int, help="top grade (default: the largest grade seen)")
    a.add_argument("--binary-at", type=int, default=2, help="relevant from this grade (2)")
    a.add_argument("--trec-runs", nargs="+", metavar="RUN", help="systems to rank (>= 2)")
    a.add_argument("--metric", default="ndcg_cut_10", help="system metric (ndcg_cut_10)")
    a.add_argument("--boot", type=int, default=1000, help="bootstrap replicates (1000)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--output", help="also write the statistics as JSON here")
    a.set_defaults(func=run_agree)


def label_config(args: argparse.Namespace):  # noqa: ANN201
    cfg = load_config(args.config) if args.config else RunConfig()
    overrides = []
    for text in args.overrides:
        if not text.startswith("label."):
            raise ValueError(f"--set {text!r}: hirex label takes only label.KEY=VALUE")
        overrides.append(text)
    for flag, key in (
        ("backend", "backend"),
        ("model", "model"),
        ("base_url", "base_url"),
        ("template", "template"),
        ("variant", "variant"),
        ("cache", "cache"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"label.{key}={_toml_str(value)}")
    if args.concurrency is not None:
        overrides.append(f"label.concurrency={args.concurrency}")
    if args.base_url and args.backend == "local":
        raise ValueError(
            "--base-url is for --backend openai; the local backend starts its own server"
        )
    if args.base_url and not args.backend:
        overrides.append('label.backend="openai"')
    return apply_overrides(cfg, overrides).label


def run(args: argparse.Namespace) -> int:
    from hirex.label.labeller import open_labeller

    if not (args.qrels or args.trec_run or args.run):
        raise ValueError("say what to judge: --qrels FILE, --trec-run FILE or --run DIR")
    if args.output and Path(args.output).is_dir():
        raise ValueError(f"--output {args.output} is a folder; give a file path for the qrels")
    cfg = label_config(args)
    pairs = _pairs(args)
    if not pairs:
        raise ValueError("there are no pairs to judge")
    for name in ("httpx", "httpx2"):  # one line per request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    with open_labeller(cfg) as labeller:
        print(
            f"judging {len(pairs):,} pairs with {labeller.model} ({labeller.prompt.name}, "
            f"{labeller.prompt.template.id}); cache {labeller.cache.path}",
            file=sys.stderr,
        )
        result = labeller.label(pairs, progress=not args.no_progress)
    labels = {}
    for pair, lab in zip(pairs, result.labels, strict=True):
        if lab is not None and lab.ok:
            labels.setdefault(pair.qid, {})[pair.docid] = lab.grade
    tokens = result.prompt_tokens + result.completion_tokens
    print(
        f"{len(pairs):,} pairs: {result.cache_hits:,} from the cache, {result.requested:,} "
        f"asked ({result.labels_per_hour:,.0f} labels/hour, {tokens:,} tokens), "
        f"{result.unparsed:,} unparsed answers, {result.failed:,} failed requests"
    )
    if args.output:
        write_qrels(args.output, labels)
        n = sum(len(v) for v in labels.values())
        print(f"wrote {n:,} labels to {args.output} (unparsed and failed pairs left out)")
    if result.failed:
        print(f"error: {result.errors[0]}", file=sys.stderr)
        print(
            "rerun the same command to retry them; labels already stored are kept", file=sys.stderr
        )
        return 1
    return 0


def _pairs(args: argparse.Namespace):  # noqa: ANN202
    from hirex.data.passages import read_passages, read_queries
    from hirex.label.pairs import pairs_for

    if args.run:
        return _run_pairs(args)
    if not args.queries or not args.passages:
        raise ValueError("--qrels and --trec-run need --queries FILE and --passages FILE")
    if args.qrels:
        wanted = read_qrels(args.qrels)
    else:
        if args.depth < 1:
            raise ValueError(f"--depth must be >= 1, got {args.depth}")
        trec = read_run(args.trec_run)
        wanted = {q: dict(ranked(docs)[: args.depth]) for q, docs in trec.items()}
    return pairs_for(wanted, read_queries(args.queries), read_passages(args.passages))


def _run_pairs(args: argparse.Namespace):  # noqa: ANN202
    from hirex.label.recommendation import recommendation_pairs
    from hirex.runs import load_run, run_topk

    if args.users < 1 or args.k < 1:
        raise ValueError(f"--users ({args.users}) and --k ({args.k}) must be >= 1")
    r = load_run(args.run, args.device)
    targets = r.dataset.targets(args.split)
    active = np.flatnonzero(targets.lengths() > 0)
    pick = np.unique(np.linspace(0, len(active) - 1, min(args.users, len(active))).round())
    users = active[pick.astype(np.int64)]
    top = run_topk(
        r, users, args.k, split=args.split, index=open_index(args, r), beam=beam_of(args, r)
    )
    return recommendation_pairs(r.dataset, users, top, history=args.history, split=args.split)


def run_agree(args: argparse.Namespace) -> int:
    from hirex.eval.trec import trec_metrics
    from hirex.label.agreement import label_agreement, ranking_agreement

    if not 1 <= args.boot <= MAX_BOOT:
        raise ValueError(f"--boot must lie in 1..{MAX_BOOT:,}, got {args.boot}")
    if args.scale is not None and not 1 <= args.scale <= MAX_SCALE:
        raise ValueError(f"--scale must lie in 1..{MAX_SCALE} (the top grade), got {args.scale}")
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must lie in 0..2**32 - 1, got {args.seed}")
    if args.output and Path(args.output).is_dir():
        raise ValueError(f"--output {args.output} is a folder; give a file path for the JSON")
    gold, pred = read_qrels(args.gold), read_qrels(args.pred)
    both = [(q, d) for q in sorted(pred) for d in sorted(pred[q]) if d in gold.get(q, {})]
    if not both:
        raise ValueError(f"{args.gold} and {args.pred} judge no pair in common")
    only = sum(len(v) for v in pred.values()) - len(both)
    g = np.array([gold[q][d] for q, d in both])
    m = np.array([pred[q][d] for q, d in both])
    scale = args.scale if args.scale is not None else int(max(g.max(), m.max()))
    if min(g.min(), m.min()) < 0 or max(g.max(), m.max()) > scale:
        raise ValueError(f"grades must lie in 0..{scale} (--scale); found {g.min()}..{g.max()}")
    out = label_agreement(
        g, m, [q for q, _ in both], scale, args.binary_at, n_boot=args.boot, seed=args.seed
    )
    out["pred_pairs_without_gold"] = only
    print(
        f"{len(both):,} pairs judged by both ({out['queries']} queries); {only:,} LLM labels "
        "have no gold label"
    )
    for name in ("kappa", "kappa_binary", "kappa_linear", "kappa_quadratic", "alpha"):
        print(f"  {name:16s} {_fmt(out[name])}  95% CI {out[name + '_ci']}")
    print("  confusion (rows gold, columns LLM):")
    for grade, row in enumerate(out["confusion"]):
        print(f"    {grade}: {row}")
    if args.trec_runs:
        if len(args.trec_runs) < 2:
            raise ValueError("--trec-runs needs at least two systems to rank")
        gq = {q: {d: gold[q][d] for d in pred[q] if d in gold.get(q, {})} for q in pred}
        pq = {q: {d: pred[q][d] for d in gq[q]} for q in gq}
        runs = [read_run(f) for f in args.trec_runs]
        qids = sorted(q for q in gq if gq[q] and all(q in r for r in runs))
        if not qids:
            raise ValueError("no query is in the qrels and in every run")
        names = [Path(f).name for f in args.trec_runs]

        def table(qrels):  # noqa: ANN001, ANN202
            rows = []
            for r in runs:
                per = trec_metrics({q: qrels[q] for q in qids}, r, per_query=True)
                if args.metric not in next(iter(per.values())):
                    raise ValueError(f"unknown --metric {args.metric!r}; e.g. ndcg_cut_10, P_10")
                rows.append([per[q][args.metric] for q in qids])
            return np.array(rows)

        rk = ranking_agreement(table(gq), table(pq), names, n_boot=args.boot, seed=args.seed)
        out["ranking"] = rk
        print(
            f"  system rankings by {args.metric} over {len(qids)} queries: Kendall tau "
            f"{_fmt(rk['kendall_tau'])} {rk['kendall_tau_ci']}, RBO {_fmt(rk['rbo'])}"
        )
        print(f"    gold: {' > '.join(rk['gold_order'])}")
        print(f"    LLM:  {' > '.join(rk['llm_order'])}")
    if args.output:
        atomic_write_json(args.output, out)
    return 0


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.4f}"
