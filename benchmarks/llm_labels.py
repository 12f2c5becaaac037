"""LLM relevance labels on TREC DL 2019 against the NIST labels (issue 13).

Phases (each resumable; labels live in a SQLite cache, so a rerun asks for nothing twice):

- ``label``: label a stratified sample of the judged pairs with local GGUF models and prompt
  variants (``--jobs model:template:variant,...``), timing each job;
- ``killcheck``: start a labelling run, ``kill -9`` it mid-run, rerun it, and count lost
  labels and duplicate requests (from the cache's request journal and the server's own count);
- ``rec``: ``hirex label --run`` on what three Amazon beauty runs recommend, against their
  held-out metrics; writes ``benchmarks/results/llm_labels_rec.json``;
- ``report``: agreement with the NIST labels (kappa graded and binary, weighted kappa,
  Krippendorff's alpha, confusion matrices, 95% bootstrap CIs over queries), the same for
  the non-LLM baselines (BM25 and MiniLM cosine with thresholds fitted on the pairs outside
  the sample), and Kendall tau / RBO between system rankings under gold and LLM labels.
  Writes ``benchmarks/results/llm_labels.json``.

    python benchmarks/llm_labels.py --phase label --n 600 --worker a --jobs ...
    python benchmarks/llm_labels.py --phase killcheck
    python benchmarks/llm_labels.py --phase report
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from common import RESULTS, SHARED_DATA, command_line, machine

from hirex.atomic_files import atomic_write_json
from hirex.data.passages import read_passages, read_queries
from hirex.eval.trec import read_qrels, trec_metrics
from hirex.label.backends import OpenAIBackend
from hirex.label.cache import LabelCache
from hirex.label.labeller import Labeller, label_key
from hirex.label.llama_server import LocalServer
from hirex.label.pairs import pairs_for, stratified_sample
from hirex.label.prompts import Prompt, load_template

HERE = Path(__file__).resolve().parent
DATA = SHARED_DATA / "trec-dl19"
CACHE = HERE.parent / "runs" / "llm_labels" / "labels.sqlite"


def load_sample(n: int, seed: int):
    qrels = read_qrels(DATA / "qrels-passage.txt")
    sample = stratified_sample(qrels, n, seed)
    queries = read_queries(DATA / "queries.tsv")
    passages = read_passages(DATA / "passages.jsonl")
    return qrels, sample, queries, passages


def phase_label(args: argparse.Namespace) -> None:
    _, sample, queries, passages = load_sample(args.n, args.seed)
    pairs = pairs_for(sample, queries, passages)
    out = RESULTS / f"llm_labels_jobs_{args.worker}.json"
    done = json.loads(out.read_text())["jobs"] if out.exists() else []
    cache = LabelCache(args.cache)
    for job in args.jobs.split(","):
        model, template, variant = job.split(":")
        prompt = Prompt.build(load_template(template), variant, judges=args.judges)
        t0 = time.perf_counter()
        with LocalServer(model, threads=1) as server:
            backend = OpenAIBackend(server.base_url, model, max_tokens=args.max_tokens)
            run = Labeller(prompt, backend, cache, model).label(pairs)
        row = {
            "model": model,
            "variant": prompt.name,
            "pairs": len(pairs),
            "requested": run.requested,
            "cache_hits": run.cache_hits,
            "failed": run.failed,
            "unparsed": run.unparsed,
            "seconds": round(time.perf_counter() - t0, 1),
            "label_seconds": round(run.seconds, 1),
            "labels_per_hour": round(run.labels_per_hour, 1),
            "prompt_tokens": run.prompt_tokens,
            "completion_tokens": run.completion_tokens,
        }
        print(json.dumps(row), flush=True)
        done = [d for d in done if (d["model"], d["variant"]) != (model, prompt.name)]
        if run.requested or not any(
            (d["model"], d["variant"]) == (model, prompt.name) for d in done
        ):
            done.append(row)
        atomic_write_json(
            out,
            {
                "command": command_line(),
                "machine": machine(),
                "note": "jobs of one worker; two workers ran at once, one llama.cpp thread "
                "each, on 2 cores",
                "jobs": done,
            },
        )


SYSTEMS = ("bm25", "bm25_b0", "minilm", "fusion_rrf", "term_overlap", "length", "random")


def system_scores(pairs, queries, passages, bm25, cosine) -> dict[str, np.ndarray]:
    """(P,) ranking scores of each system for the sampled pairs: BM25, BM25 without length
    normalisation, MiniLM cosine, their reciprocal-rank fusion, and three weaker ones."""
    from hirex.label.baselines import bm25_scores

    rng = np.random.default_rng(0)
    out = {
        "bm25": bm25,
        "bm25_b0": bm25_scores(pairs, queries, passages, b=0.0),
        "minilm": cosine,
        "term_overlap": np.array(
            [
                len(set(queries[q].lower().split()) & set(passages[d].lower().split()))
                + 1e-6 * len(passages[d])
                for q, d in pairs
            ]
        ),
        "length": np.array([float(len(passages[d].split())) for _, d in pairs]),
        "random": rng.random(len(pairs)),
    }
    # reciprocal-rank fusion (k = 60) of BM25 and MiniLM, within each query
    fused = np.zeros(len(pairs))
    by_query: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(pairs):
        by_query.setdefault(q, []).append(i)
    for idx in by_query.values():
        idx = np.array(idx)
        for s in (bm25, cosine):
            ranks = np.empty(len(idx))
            ranks[np.argsort(-s[idx], kind="stable")] = np.arange(1, len(idx) + 1)
            fused[idx] += 1.0 / (60 + ranks)
    out["fusion_rrf"] = fused
    return {k: out[k] for k in SYSTEMS}


def per_query_ndcg(pairs, grades, scores: dict[str, np.ndarray], qids: list[str]) -> np.ndarray:
    """(S, Q) nDCG@10 of each system per query, judged by ``grades`` (P,)."""
    qrels: dict[str, dict[str, int]] = {}
    for (q, d), g in zip(pairs, grades, strict=True):
        qrels.setdefault(q, {})[d] = int(g)
    rows = []
    for name in SYSTEMS:
        run: dict[str, dict[str, float]] = {}
        for (q, d), s in zip(pairs, scores[name], strict=True):
            run.setdefault(q, {})[d] = float(s)
        per = trec_metrics(qrels, run, ks=(10,), per_query=True)
        rows.append([per[q]["ndcg_cut_10"] for q in qids])
    return np.array(rows)


def phase_report(args: argparse.Namespace) -> None:
    from hirex.label.agreement import label_agreement, ranking_agreement
    from hirex.label.baselines import (
        apply_thresholds,
        bm25_scores,
        cosine_scores,
        fit_thresholds,
        prior_thresholds,
    )

    qrels, sample, queries, passages = load_sample(args.n, args.seed)
    pairs = [(p.qid, p.docid) for p in pairs_for(sample, queries, passages)]
    gold = np.array([sample[q][d] for q, d in pairs])
    fit_pairs = [
        (q, d) for q in sorted(qrels) for d in sorted(qrels[q]) if d not in sample.get(q, {})
    ]
    fit_gold = np.array([qrels[q][d] for q, d in fit_pairs])
    qids = sorted(sample)
    groups = [q for q, _ in pairs]

    t0 = time.perf_counter()
    bm25_all = bm25_scores(pairs + fit_pairs, queries, passages)
    t1 = time.perf_counter()
    cos_all = cosine_scores(pairs + fit_pairs, queries, passages)
    # each baseline's time to score every judged pair (BM25 includes indexing all passages)
    baseline_seconds = {"bm25": t1 - t0, "minilm_cosine": time.perf_counter() - t1}
    n = len(pairs)
    systems = system_scores(pairs, queries, passages, bm25_all[:n], cos_all[:n])
    gold_ndcg = per_query_ndcg(pairs, gold, systems, qids)

    rows = []

    def add(model: str, variant: str, grades_: np.ndarray, scale: int, extra: dict) -> None:
        g = np.minimum(gold, scale)
        ag = label_agreement(g, grades_, groups, scale, n_boot=args.boot, seed=args.seed)
        llm_ndcg = per_query_ndcg(pairs, grades_, systems, qids)
        rk = ranking_agreement(gold_ndcg, llm_ndcg, SYSTEMS, n_boot=args.boot, seed=args.seed)
        rows.append({"model": model, "variant": variant, **extra, **ag, **rk})
        print(
            f"{model:14s} {variant:28s} kappa {ag['kappa']} bin {ag['kappa_binary']} "
            f"alpha {ag['alpha']} tau {rk['kendall_tau']}",
            flush=True,
        )

    # -- the non-LLM baselines: thresholds fitted on the pairs outside the sample
    for name, scores in (("bm25", bm25_all), ("minilm_cosine", cos_all)):
        fit_s, eval_s = scores[n:], scores[:n]
        for how, th in (
            ("kappa-fit", fit_thresholds(fit_s, fit_gold, 3)),
            ("prior", prior_thresholds(fit_s, fit_gold, 3)),
        ):
            add(
                f"baseline:{name}",
                f"thresholds {how}",
                apply_thresholds(eval_s, th),
                3,
                {
                    "labels": "score thresholds",
                    "thresholds": [round(t, 4) for t in th],
                    "pairs_labelled": n,
                    "labels_per_hour": round(
                        3600 * (n + len(fit_pairs)) / baseline_seconds[name], 0
                    ),
                },
            )

    # -- the LLM labels, from the cache
    jobs = []
    for f in sorted(RESULTS.glob("llm_labels_jobs_*.json")):
        jobs += json.loads(f.read_text())["jobs"]
    cache = LabelCache(args.cache)
    all_pairs = pairs_for(sample, queries, passages)
    for job in jobs:
        model = job["model"]
        template, variant = job["variant"].split("/")
        prompt = Prompt.build(load_template(template), variant, judges=args.judges)
        keys = [label_key(prompt, model, prompt.messages(p), args.max_tokens) for p in all_pairs]
        got = cache.get_many(keys)
        labs = [got.get(k) for k in keys]
        missing = sum(lab is None for lab in labs)
        unparsed = sum(1 for lab in labs if lab is not None and not lab.ok)
        info = {
            "pairs": job["pairs"],
            "pairs_labelled": n - missing,
            "unparsed": unparsed,
            "missing": missing,
            "labels_per_hour": job["labels_per_hour"],
            "seconds": job["label_seconds"],
            "prompt_tokens": job["prompt_tokens"],
            "completion_tokens": job["completion_tokens"],
        }
        # An unparsed or missing answer is not a label: it counts as grade 0 here, and the
        # number of them is in the row, so it is never hidden.
        greedy = np.array([lab.grade if lab is not None and lab.ok else 0 for lab in labs])
        add(model, job["variant"], greedy, prompt.scale, {"labels": "greedy grade", **info})
        expected = np.array(
            [lab.expected if lab is not None and lab.expected is not None else 0.0 for lab in labs]
        )
        if any(lab is not None and lab.expected is not None for lab in labs):
            fit_g = np.minimum(fit_gold, prompt.scale)
            th = prior_thresholds(expected, fit_g, prompt.scale)
            add(
                model,
                job["variant"] + " expected+prior",
                apply_thresholds(expected, th),
                prompt.scale,
                {
                    "labels": "expected grade from log-probabilities, thresholds matching the "
                    "gold grade distribution of the pairs outside the sample",
                    "thresholds": [round(t, 4) for t in th],
                    **info,
                },
            )

    kill = RESULTS / "llm_labels_killcheck.json"
    killcheck = json.loads(kill.read_text()) if kill.exists() else None
    atomic_write_json(
        RESULTS / "llm_labels.json",
        {
            "command": command_line(),
            "machine": machine(),
            "data": "TREC DL 2019 passage judgments (../shared/data/trec-dl19)",
            "sample": {
                "pairs": n,
                "queries": len(qids),
                "seed": args.seed,
                "gold_distribution": np.bincount(gold, minlength=4).tolist(),
                "fit_pairs": len(fit_pairs),
                "how": "stratified by query and gold label, each cell keeping its share "
                "(at least one pair); thresholds are fitted on the judged pairs outside it",
            },
            "systems": list(SYSTEMS),
            "system_metric": "nDCG@10 over each query's sampled pairs",
            "bootstrap": {"replicates": args.boot, "unit": "query", "level": 0.95},
            "lost_labels": None if killcheck is None else killcheck["lost_labels"],
            "duplicate_requests": None if killcheck is None else killcheck["duplicate_requests"],
            "killcheck": killcheck,
            "rows": rows,
        },
    )


def _hirex(*args: str) -> list[str]:
    return [sys.executable, "-m", "hirex.cli.main", *args]


def phase_killcheck(args: argparse.Namespace) -> None:
    """kill -9 a `hirex label` run with the local server mid-run, rerun it, and count."""
    import signal
    import sqlite3
    import subprocess
    import tempfile
    from contextlib import closing

    from hirex.eval.trec import write_qrels

    _, sample, _, _ = load_sample(args.n, args.seed)
    pairs = [(q, d) for q in sorted(sample) for d in sorted(sample[q])][:: max(1, args.n // 60)]
    work = Path(tempfile.mkdtemp(prefix="hirex-killcheck-"))
    qrels = work / "pairs.txt"
    write_qrels(qrels, {q: {d: sample[q][d] for qq, d in pairs if qq == q} for q, _ in pairs})
    cache = work / "labels.sqlite"
    cmd = _hirex(
        "label", "--cache", str(cache), "--no-progress", "--variant", "R", "--qrels", str(qrels),
        "--queries", str(DATA / "queries.tsv"), "--passages", str(DATA / "passages.jsonl"),
        "--output", str(work / "llm.txt"),
    )  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_at = len(pairs) // 2
    while True:
        time.sleep(0.05)
        if cache.exists():
            try:
                if LabelCache(cache).count() >= kill_at:
                    break
            except ValueError:
                pass
        if proc.poll() is not None:
            raise SystemExit("the run ended before the kill")
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def snapshot() -> dict[str, tuple]:
        with closing(sqlite3.connect(cache)) as db:
            return {r[0]: r[1:] for r in db.execute("SELECT key, grade, raw FROM labels")}

    before = snapshot()
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    after = snapshot()
    journal = LabelCache(cache).journal()
    lost = sum(1 for k, v in before.items() if after.get(k) != v)
    result = {
        "command": command_line(),
        "machine": machine(),
        "what": "hirex label with the local server (smollm2-135m, umbrela/R) killed with "
        "SIGKILL after half its pairs were stored, then rerun to the end",
        "pairs": len(pairs),
        "stored_at_kill": len(before),
        "stored_after_rerun": len(after),
        "rerun_exit_code": rc,
        "lost_labels": lost + (len(pairs) - len(after)),
        "duplicate_requests": journal["duplicates"],
        "reissued_in_flight": journal["reissued"],
        "requests": journal["requests"],
    }
    print(json.dumps(result), flush=True)
    atomic_write_json(RESULTS / "llm_labels_killcheck.json", result)


REC_RUNS = ("beauty-reference", "beauty-gen-lmindexer", "beauty-gen-random")


def phase_rec(args: argparse.Namespace) -> None:
    """LLM labels of what hirex runs recommend on Amazon beauty, against held-out metrics."""
    import subprocess

    from hirex.eval.trec import read_qrels

    rows = []
    for name in REC_RUNS:
        run = HERE.parent / "runs" / "semantic_ids" / name
        if not run.exists():
            print(f"skipping {name}: {run} is missing (benchmarks/semantic_ids.py makes it)")
            continue
        out = CACHE.parent / f"rec_{name}.txt"
        t0 = time.perf_counter()
        subprocess.run(
            _hirex(
                "label",
                "--run",
                str(run),
                "--template",
                "recommendation",
                "--users",
                str(args.rec_users),
                "--k",
                str(args.rec_k),
                "--cache",
                str(args.cache),
                "--output",
                str(out),
                "--no-progress",
            ),  # fmt: skip
            check=True,
        )
        seconds = time.perf_counter() - t0
        labels = read_qrels(out)
        grades = np.array([g for v in labels.values() for g in v.values()])
        held_out = json.loads((run / "metrics.json").read_text())
        test = held_out.get("test", held_out)
        rows.append(
            {
                "run": name,
                "users": len(labels),
                "pairs": int(len(grades)),
                "mean_llm_grade": round(float(grades.mean()), 4),
                "llm_precision_at_k_grade_ge_2": round(float((grades >= 2).mean()), 4),
                "llm_grade_distribution": np.bincount(grades, minlength=4).tolist(),
                "held_out_recall@10": test.get("recall@10"),
                "held_out_ndcg@10": test.get("ndcg@10"),
                "seconds": round(seconds, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    atomic_write_json(
        RESULTS / "llm_labels_rec.json",
        {
            "command": command_line(),
            "machine": machine(),
            "what": "hirex label --run over the top-k items of each beauty run for evenly "
            "spaced test users, smollm2-135m with the recommendation template (RA); the user's "
            "last 5 items are the query",
            "k": args.rec_k,
            "rows": rows,
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--phase", choices=["label", "killcheck", "rec", "report"], required=True)
    ap.add_argument("--n", type=int, default=600, help="sample size (default 600)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", default="smollm2-135m:umbrela:RA")
    ap.add_argument("--judges", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--worker", default="a")
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap replicates")
    ap.add_argument("--rec-users", type=int, default=40)
    ap.add_argument("--rec-k", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    phases = {
        "label": phase_label,
        "killcheck": phase_killcheck,
        "rec": phase_rec,
        "report": phase_report,
    }
    phases[args.phase](args)


if __name__ == "__main__":
    main()
