"""Rebuild the results table in benchmarks/README.md from benchmarks/results/*.json.

python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
COLUMNS = {
    "gowalla": ["recall@20", "ndcg@20"],
    "beauty": ["recall@5", "recall@10", "ndcg@5", "ndcg@10"],
}


def table(name: str, result: dict) -> str:
    cols = COLUMNS[name.split("-")[0]]
    lines = [
        f"### {name}",
        "",
        f"{result['dataset']}. Protocol: {result['protocol']}.",
        "",
        "| system | " + " | ".join(cols) + " | notes |",
        "| --- | " + " | ".join("---" for _ in cols) + " | --- |",
    ]
    scorer = result["config"]["model"]["scorer"]
    command = result["command"]
    config = (
        command.split("--config ")[1].split()[0]
        if "--config " in command
        else f"configs/{name.split('-')[0]}.toml"
    )
    select = result["config"]["eval"].get("select_metric") or cols[-1]
    note = (
        f"`{config}`; valid {select} {result['valid'][select]:.4f}; trained "
        f"{result['train_seconds'] / 60:.1f} min, best epoch {result['best_epoch']}"
    )
    start = result.get("init_from")
    if start:  # grown from another run: its training counts too
        note += (
            f"; started from `{start['model']}` ({start['train_seconds'] / 60:.1f} min), "
            f"{result['total_train_seconds'] / 60:.1f} min in all"
        )
    lines.append(
        f"| **hirex** ({scorer}) | "
        + " | ".join(f"**{result[c]:.4f}**" for c in cols)
        + f" | {note} |"
    )
    for base, metrics in result["baselines"].items():
        secs = f"{metrics['seconds']:.0f} s" if "seconds" in metrics else ""
        lines.append(
            f"| {base} | " + " | ".join(f"{metrics[c]:.4f}" for c in cols) + f" | {secs} |"
        )
    lines.append(
        "| target | "
        + " | ".join(
            f"{result['targets'].get(c, float('nan')):.4f}" if c in result["targets"] else ""
            for c in cols
        )
        + " | |"
    )
    m = result["machine"]
    tput = ", ".join(f"{k}: {v:,.0f}" for k, v in result["exhaustive_users_per_second"].items())
    lines += [
        "",
        f"Exhaustive scoring, users/s: {tput}.",
        f"Command: `{result['command']}`. Machine: {m['cores']} cores, {m['cpu_model']}, "
        f"torch {m['torch']} ({m['torch_threads']} threads).",
        "",
    ]
    return "\n".join(lines)


def index_table(name: str, result: dict) -> str:
    """Rows of an index benchmark: quality against the share of items scored."""
    rows = result["rows"]
    metrics = [k for k in rows[0] if "@" in k and k.split("@")[0] in ("recall", "ndcg")]
    lines = [
        f"### {name}",
        "",
        f"{result['dataset']}. ![{name}](results/{name}.png)",
        "",
        "| method | setting | items scored | " + " | ".join(metrics) + " | recall kept |",
        "| --- | --- | --- | " + " | ".join("---" for _ in metrics) + " | --- |",
    ]
    for r in rows:
        setting = ", ".join(
            f"{k} {r[k]}" for k in ("beam", "nlist", "nprobe", "efSearch") if r.get(k)
        )
        kept = f"{r['recall_kept']:.3f}" if "recall_kept" in r else ""
        lines.append(
            f"| {r['method']} | {setting} | {r['items_scored_fraction']:.2%} | "
            + " | ".join(f"{r[m]:.4f}" for m in metrics)
            + f" | {kept} |"
        )
    m = result["machine"]
    lines += [
        "",
        f"Command: `{result['command']}`. Machine: {m['cores']} cores, {m['cpu_model']}.",
        "",
    ]
    return "\n".join(lines)


def _best(rows: list[dict], method: str, quality: str, target: float = 0.95) -> dict | None:
    ok = [r for r in rows if r["method"] == method and r[quality] >= target]
    return max(ok, key=lambda r: r["qps"]) if ok else None


def scale_table(result: dict, name: str = "index_scale") -> str:
    """Per corpus size: the fastest setting reaching quality 0.95 for each method."""
    lines = [
        f"### {name}",
        "",
        "Synthetic clustered corpora; quality is overlap@100 with the exhaustive top 100 "
        "(mixture of logits) or recall@10 against the exact top 10 (dot product). Each cell: "
        "the fastest setting that reaches 0.95, queries per second, model evaluations (or faiss "
        f"distances) per query. ![{name}](results/{name}.png)",
        "",
        "| items | scorer | exhaustive | hirex index | speed-up | faiss IVF-Flat | faiss HNSW |"
        " index build |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(r: dict | None, knob: str = "") -> str:
        if r is None:
            return "not reached"
        setting = f"{knob} {r[knob]}, " if knob else ""
        scan = f" ({r['scan']} scan)" if "scan" in r else ""
        return f"{setting}{r['qps']:,.1f} q/s, {r['scored_per_query']:,.0f} evals{scan}"

    for size in result["sizes"]:
        for scorer, quality in (("mol", "overlap@100"), ("dot", "recall@10")):
            part = size.get(scorer)
            if not part:
                continue
            rows = part["rows"]
            ex = _best(rows, "exhaustive", quality)
            ix = _best(rows, "hirex index", quality)
            speed = f"{ix['qps'] / ex['qps']:.1f}x" if ex and ix else ""
            ivf = _best(rows, "faiss ivf-flat", quality) if scorer == "dot" else None
            hnsw = _best(rows, "faiss hnsw", quality) if scorer == "dot" else None
            build = part["build"]
            lines.append(
                f"| {size['n_items']:,} | {scorer} | {cell(ex)} | {cell(ix, 'beam')} | {speed} | "
                + (cell(ivf, "nprobe") if scorer == "dot" else "")
                + " | "
                + (
                    cell(hnsw, "efSearch")
                    if scorer == "dot" and any(r["method"] == "faiss hnsw" for r in rows)
                    else ""
                )
                + f" | {build.get('kmeans', 'residual')} k-means, levels {build['levels']}, "
                f"{build['seconds']:.1f} s, peak {build['memory_gib']['peak']:.2f} GiB"
                + (
                    f" (+ {build['faiss_lists']['seconds']:.1f} s faiss lists)"
                    if "faiss_lists" in build
                    else ""
                )
                + " |"
            )
    m = result["machine"]
    lines += [
        "",
        f"Command: `{result['command']}`. Machine: {m['cores']} cores, {m['cpu_model']}.",
        "",
    ]
    return "\n".join(lines)


def ttt_table(results: dict) -> str:
    lines = ["### ttt", ""]
    for r in results.values():
        m0, m1 = r["metrics"]
        cols = [
            f"valid_index/{m0}",
            f"test_exhaustive/{m0}",
            f"test_index/{m0}",
            f"test_index/{m1}",
        ]
        lines += [
            f"{r['dataset']}. Mean ± standard deviation over "
            f"{len(r['without_ttt'][cols[0]]['values'])} seeds; index search at beam "
            f"{r['config']['index']['beam']}.",
            "",
            "| setting | " + " | ".join(c.replace("_", " ") for c in cols) + " | mined pairs | "
            "users covered | seeds where fine-tuning beat the start on validation |",
            "| --- |" + " --- |" * (len(cols) + 3),
        ]

        def cell(stats: dict, key: str) -> str:
            return f"{stats[key]['mean']:.4f} ± {stats[key]['std']:.4f}"

        lines.append(
            "| without TTT | " + " | ".join(cell(r["without_ttt"], c) for c in cols) + " | | | |"
        )
        for setting, stats in r["with_ttt"].items():
            mined = r["mined"][setting]
            pairs = np.mean([m["pairs"] for m in mined])
            covered = np.mean([m["users_covered"] for m in mined])
            kept = sum(m["best_epoch"] > 0 for m in mined)
            lines.append(
                f"| {setting} | "
                + " | ".join(cell(stats, c) for c in cols)
                + f" | {pairs:,.0f} | {covered:.1%} | {kept} of {len(mined)} |"
            )
        sel = r.get("selected_on_valid")
        if sel:
            verdict = "a real gain" if sel["real_gain"] else "no real gain"
            lines += [
                "",
                f"Chosen on validation: {sel['setting']}; test {m0} through the index "
                f"{sel['test_index_gain']:+.4f} against two standard deviations "
                f"{sel['two_std']:.4f}: {verdict}.",
            ]
        lines += ["", _footer(r, "."), ""]
    return "\n".join(lines)


def _footer(r: dict, tail: str) -> str:
    """The command and the machine a result came from."""
    m = r["machine"]
    return f"Command: `{r['command']}`. Machine: {m['cores']} cores, {m['cpu_model']}{tail}"


def serve_table(r: dict) -> str:
    """The load benchmark: throughput, errors, lost updates and latency, HTTP beside in-process."""
    kinds = r["by_kind"]
    lines = [
        "### serve_load",
        "",
        f"{r['dataset']}. Model: {r['model']}; index levels {r['index']['levels']}, beam "
        f"{r['index']['beam']}. {r['clients']} concurrent clients over loopback, "
        f"{r['requests']:,} requests ({kinds['put']['requests'] + kinds['delete']['requests']:,} "
        f"item updates) in {r['wall_seconds']:.1f} s: {r['requests_per_second']:,.1f} requests/s, "
        f"**{r['errors']} errors**, **{r['lost_acknowledged_updates']} lost acknowledged "
        f"updates** ({r['lost_after_kill_9_restart']} after a kill -9 and restart, over "
        f"{r['items_changed']:,} items changed).",
        "",
        "| latency | requests | p50 ms | p95 ms | p99 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows = [(f"HTTP {k}, under load", v) for k, v in kinds.items()]
    rows += [
        ("HTTP retrieve, one client alone", r["http_one_client_sequential"]),
        ("in-process library call (beam_search, one query)", r["in_process_library"]),
    ]
    for name, v in rows:
        n = v.get("requests", v.get("calls"))
        lines.append(f"| {name} | {n:,} | {v['p50_ms']} | {v['p95_ms']} | {v['p99_ms']} |")
    lines += ["", _footer(r, f"; server with {r['server_threads']} torch thread(s)."), ""]
    return "\n".join(lines)


def updates_table(r: dict) -> str:
    """One live change in the index: patched in place beside a full rebuild."""
    lines = [
        "### index_updates",
        "",
        "One change, then the arrays a search needs (dot: and the faiss inverted lists); median "
        "ms over the changes of each kind.",
        "",
        "| layout | items | full rebuild ms | add ms | re-embed ms | remove ms | changes patched |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row.get('layout', 'mol')} | {row['items']:,} | {row['full_rebuild_ms']:,.1f} | "
            f"{row['add_ms_median']} | "
            f"{row['update_ms_median']} | {row['remove_ms_median']} | {row['patched_share']:.0%} |"
        )
    lines += ["", _footer(r, f" ({r['machine']['torch_threads']} torch thread)."), ""]
    return "\n".join(lines)


def sid_table(r: dict) -> str:
    """Generative retrieval per dataset x ID method, beside hirex's scoring model."""
    lines = [
        "### semantic_ids",
        "",
        "Leave-one-out, full ranking, history items masked (the protocol of `beauty.py`). One "
        "generator per ID method, same architecture and budget; the reference row is hirex's "
        "scoring model on the same split (exhaustive users/s; through its index in brackets). "
        "Cold start: R@10 on test targets among 5% of items held out of training.",
        "",
        "| dataset | method | R@5 | R@10 | N@5 | N@10 | cold-start R@10 | collisions | "
        "perplexity | train s (epochs) | users/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        cold = row.get("cold_start_recall@10")
        cold = "-" if cold is None else f"{cold:.4f}"
        ppl = row.get("perplexity")
        ppl = "-" if ppl is None else " / ".join(f"{p:.0f}" for p in ppl)
        coll = "-" if "collision_rate" not in row else f"{row['collision_rate']:.3f}"
        ups = f"{row['users_per_second']:,.0f}"
        if "index_users_per_second" in row:
            ups += f" ({row['index_users_per_second']:,.0f})"
        lines.append(
            f"| {row['dataset']} | {row['method']} | {row['recall@5']:.4f} | "
            f"{row['recall@10']:.4f} | {row['ndcg@5']:.4f} | {row['ndcg@10']:.4f} | "
            f"{cold} | {coll} | {ppl} | "
            f"{row['train_seconds']:,.0f} ({row['epochs']}) | {ups} |"
        )
    pub = r.get("published", {})
    if pub:
        shown = "; ".join(
            f"{ds}: "
            + ", ".join(f"{k} R@10 {v['recall@10']} / N@10 {v['ndcg@10']}" for k, v in p.items())
            for ds, p in pub.items()
        )
        lines += ["", f"Published (REFERENCES.md): {shown}."]
    for c in r.get("commands", [r.get("command")]):
        lines += ["", f"Command: `{c}`."]
    m = r["machine"]
    lines += ["", f"Machine: {m['cores']} cores, {m['cpu_model']}.", ""]
    return "\n".join(lines)


def labels_table(r: dict, rec: dict | None) -> str:
    """LLM labels against NIST labels on TREC DL 2019, beside the score baselines."""
    sample = r["sample"]
    lines = [
        "### llm_labels",
        "",
        f"TREC DL 2019 passages: {sample['pairs']:,} judged pairs of {sample['queries']} "
        f"queries, {sample['how']} ({sample['fit_pairs']:,} pairs). Gold grades in the sample: "
        f"{sample['gold_distribution']}. Kappa is 4-level (the 0-2 template: gold clipped at "
        "2) and binary at >= 2; alpha is Krippendorff's, ordinal; tau and RBO compare the "
        f"orders of {len(r['systems'])} systems ({', '.join(r['systems'])}) by "
        f"{r['system_metric']} under gold and under these labels. Brackets: 95% bootstrap "
        "intervals over queries. Greedy: the grade the model wrote; expected+prior: its "
        "expected grade from the log-probabilities, cut at the gold grade distribution of the "
        "pairs outside the sample.",
        "",
        "| labeller | variant | pairs | unparsed | labels/hour | tokens/pair | kappa | "
        "kappa binary | alpha | Kendall tau | RBO |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def ci(row: dict, key: str) -> str:
        v, c = row.get(key), row.get(key + "_ci")
        if v is None:
            return "undefined"
        return f"{v:.3f}" + (f" [{c[0]:.2f}, {c[1]:.2f}]" if c else "")

    for row in r["rows"]:
        tokens = "-"
        if row.get("prompt_tokens"):
            tokens = f"{(row['prompt_tokens'] + row['completion_tokens']) / row['pairs']:.0f}"
        lines.append(
            f"| {row['model']} | {row['variant']} | {row['pairs_labelled']:,} | "
            f"{row.get('unparsed', 0)} | {row['labels_per_hour']:,.0f} | {tokens} | "
            f"{ci(row, 'kappa')} | {ci(row, 'kappa_binary')} | {ci(row, 'alpha')} | "
            f"{ci(row, 'kendall_tau')} | {ci(row, 'rbo')} |"
        )
    k = r.get("killcheck")
    if k:
        lines += [
            "",
            f"kill -9 check: {k['what']}: {k['stored_at_kill']} of {k['pairs']} stored at the "
            f"kill, {k['stored_after_rerun']} after the rerun; **{k['lost_labels']} lost labels, "
            f"{k['duplicate_requests']} duplicate requests** ({k['reissued_in_flight']} "
            "request(s) in flight at the kill were sent again; their answers had not been "
            "stored).",
        ]
    if rec:
        lines += [
            "",
            f"Recommendations judged by the LLM (`hirex label --run`, beauty, top {rec['k']}): "
            f"{rec['what']}.",
            "",
            "| run | users | pairs | mean LLM grade | share graded >= 2 | held-out R@10 | "
            "held-out N@10 |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in rec["rows"]:
            lines.append(
                f"| {row['run']} | {row['users']} | {row['pairs']} | {row['mean_llm_grade']:.3f} "
                f"| {row['llm_precision_at_k_grade_ge_2']:.3f} | "
                f"{row['held_out_recall@10']:.4f} | {row['held_out_ndcg@10']:.4f} |"
            )
        lines += ["", f"Command: `{rec['command']}`."]
    lines += ["", f"Command: `{r['command']}`."]
    m = r["machine"]
    lines += ["", f"Machine: {m['cores']} cores, {m['cpu_model']}.", ""]
    return "\n".join(lines)


def distributed_table(r: dict, name: str) -> str:
    """hirex train --distributed against one process: same metrics, weights, wall time."""
    lines = [
        f"### {name}",
        "",
        f"{r['note']}; config: `{' '.join(r['config'])}`.",
        "",
        "| setup | processes | wall s | test R@20 | test N@20 | max weight diff vs 1 process "
        "| max test metric diff |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for setup, e in r["setups"].items():
        diff = e.get("max_abs_weight_diff")
        mdiff = e.get("max_abs_test_metric_diff")
        lines.append(
            f"| {setup} | {e['processes']} | {e['wall_seconds']:.0f} | "
            f"{e['test']['recall@20']:.4f} | {e['test']['ndcg@20']:.4f} | "
            f"{'-' if diff is None else f'{diff:.1e}'} | "
            f"{'-' if mdiff is None else f'{mdiff:.1e}'} |"
        )
    return "\n".join([*lines, "", _footer(r, "."), ""])


def dmt_table(r: dict) -> str:
    """DMT: SPTT exactness, bytes per step within and across hosts, quality, modelled speedup."""
    b = r["bytes"]
    lines = [
        "### dmt",
        "",
        f"SPTT with identity towers against the flat model (2 hosts x 2 ranks): max abs "
        f"difference of logits and gradients **{r['sptt_max_abs_diff']:.1e}**.",
        "",
        f"Bytes each rank sends per step ({b['world_size']} ranks, {b['local_world_size']} per "
        f"host, batch {b['batch_per_rank']} per rank), counted in the collectives:",
        "",
        "| variant | within host | across hosts | embedding traffic across hosts | step s "
        "(this machine) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for variant, v in r["bytes_summary"].items():
        lines.append(
            f"| {variant} | {v['within_host']:,} | {v['cross_host']:,} | "
            f"{v['embedding_cross_host']:,} | {v['step_seconds']:.4f} |"
        )
    lines += [
        "",
        f"Cross-host reduction, flat over SPTT: {r['cross_host_reduction']:.2f} against flat "
        f"table-wise, {r['cross_host_reduction_vs_row_wise']:.2f} against flat row-wise; with "
        f"tower modules of width {r['chosen_width']}: {r['cross_host_reduction_tm']:.2f} and "
        f"{r['cross_host_reduction_tm_vs_row_wise']:.2f}.",
        "",
        "Quality on held-out synthetic data (trained in one process; mean over seeds):",
        "",
        "| model | AUC | AUC sd | NE |",
        "| --- | --- | --- | --- |",
    ]
    for model, q in r["quality_summary"].items():
        lines.append(f"| {model} | {q['auc_mean']:.4f} | {q['auc_sd']:.4f} | {q['ne_mean']:.4f} |")
    lines += [
        "",
        f"AUC gap, flat minus partitioned DMT: {r['auc_gap_2_towers']:+.4f} with 2 towers, "
        f"{r['auc_gap_4_towers']:+.4f} with 4 (headline: {r['headline_towers']} towers).",
        "",
        f"Modelled speedup of DMT over flat at 64 GPUs (8 per host): "
        f"**{r['modeled_speedup_64']:.2f}** with this machine's CPU compute per step, "
        f"{r['modeled_speedup_64_comm_only']:.2f} for the communication alone, "
        f"{r['modeled_speedup_64_comm_only_batch_x16']:.2f} for the communication alone at "
        "16x the batch. Assumptions: `hirex.distributed.cost_model`.",
    ]
    return "\n".join([*lines, "", _footer(r, "."), ""])


def main() -> None:
    parts = []
    for path in sorted((HERE / "results").glob("*.json")):
        if path.stem.split("-")[0] in COLUMNS:
            parts.append(table(path.stem, json.loads(path.read_text())))
        elif path.stem in ("index_gowalla", "index_beauty"):
            parts.append(index_table(path.stem, json.loads(path.read_text())))
        elif path.stem.startswith("index_scale"):
            parts.append(scale_table(json.loads(path.read_text()), path.stem))
        elif path.stem == "ttt":
            parts.append(ttt_table(json.loads(path.read_text())))
        elif path.stem == "index_updates":
            parts.append(updates_table(json.loads(path.read_text())))
        elif path.stem == "serve_load":
            parts.append(serve_table(json.loads(path.read_text())))
        elif path.stem == "semantic_ids":
            parts.append(sid_table(json.loads(path.read_text())))
        elif path.stem.startswith("distributed_train"):
            parts.append(distributed_table(json.loads(path.read_text()), path.stem))
        elif path.stem == "dmt":
            parts.append(dmt_table(json.loads(path.read_text())))
        elif path.stem == "llm_labels":
            rec = HERE / "results" / "llm_labels_rec.json"
            rec_r = json.loads(rec.read_text()) if rec.exists() else None
            parts.append(labels_table(json.loads(path.read_text()), rec_r))
    readme = HERE / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + BEGIN + "\n" + "\n".join(parts) + END + tail)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
