"""How good is a teacher as a ranker? Rerank a first-stage run's top k for every judged query with
each given model (a cross-encoder or a bi-encoder) and print nDCG@10 / MRR@10 (pytrec_eval),
against the first stage's own order.

A teacher that orders its training groups well can still rank badly: a distilled student learns
whatever order the teacher gives the candidates it will meet at search time. Run this on a
cross-encoder before spending GPU hours distilling from it. No Ray:
the models score in this process, one query's candidates per batch.

    # a small method run folder (configs/methods/*.yaml): the DE teacher's top 30 of each dev
    # query, reranked by the margin_mse cross-encoder and by PROD's two cross-encoders
    python bench/rerank_quality.py runs/small mmse_ce/model prod_ce/model prod_ce_large/model

Arguments name run-folder stages (or paths): --first-stage (a search output, its run table;
default teacher_run), --task (a generate or import output with corpus/, queries/ and
qrels/<--split>/), and the models to compare. Also printed per model: where the judged relevant
passages inside the top k land on average, and the share of them in the top 3, for the first
stage and for the reranker (a random order puts them at (k + 1) / 2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import torch  # noqa: E402

from densekit.artifacts import read_table  # noqa: E402
from densekit.models import load_model  # noqa: E402
from densekit.pipelines.evaluate import (  # noqa: E402
    evaluate_run,
    load_qrels,
    load_run,
    mean_metrics,
    truncate_run,
)

METRICS = ["ndcg@10", "mrr@10"]


def stage(root: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() or p.exists() else root / name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a method's run folder")
    ap.add_argument("models", nargs="+", help="model folders (stage names inside run_dir, or paths)")
    ap.add_argument("--first-stage", default="teacher_run", help="search output whose run is reranked")
    ap.add_argument("--task", default="task", help="generate/import output: corpus, queries, qrels")
    ap.add_argument("--split", default="dev", help="qrels split: the judged queries that are reranked")
    ap.add_argument("--k", type=int, default=30, help="rerank this many of the first stage's top")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    task = stage(args.run_dir, args.task)
    corpus_table = read_table(task / "corpus", ["pid", "text", "title"]).to_pydict()
    corpus = dict(zip(corpus_table["pid"], zip(corpus_table["text"], corpus_table["title"])))
    queries_table = read_table(task / "queries", ["qid", "text"]).to_pydict()
    queries = dict(zip(queries_table["qid"], queries_table["text"]))
    qrels = load_qrels(task / "qrels" / args.split)
    run_dir = stage(args.run_dir, args.first_stage)
    first = truncate_run({q: d for q, d in load_run(run_dir).items() if q in qrels}, args.k)
    if not first:
        sys.exit(f"{run_dir}: no query of qrels/{args.split} in the run")
    judged = {q: qrels[q] for q in first}

    def evaluate(run: dict[str, dict[str, float]]) -> tuple[float, float, float, float]:
        means = mean_metrics(evaluate_run(run, judged, METRICS), METRICS)
        ranks = []
        for q, scores in run.items():
            order = sorted(scores, key=lambda d: -scores[d])
            ranks += [order.index(d) + 1 for d in judged[q] if judged[q][d] > 0 and d in scores]
        return (
            means["ndcg@10"],
            means["mrr@10"],
            statistics.mean(ranks) if ranks else float("nan"),
            sum(r <= 3 for r in ranks) / max(1, len(ranks)),
        )

    print(f"{len(first)} judged queries, top {args.k} of {run_dir}")
    print(f"{'model':40s} {'nDCG@10':>8s} {'MRR@10':>8s} {'rel. rank':>9s} {'in top 3':>8s}")
    print("{:40s} {:8.4f} {:8.4f} {:9.1f} {:8.2f}".format(args.first_stage + " (first stage)", *evaluate(first)))
    for name in args.models:
        model = load_model(stage(args.run_dir, name))
        reranked = {}
        for qid, cands in first.items():
            pids = list(cands)
            scores = []
            for i in range(0, len(pids), args.batch_size):
                chunk = pids[i : i + args.batch_size]
                scores += score_candidates(model, queries[qid], [corpus[p] for p in chunk])
            reranked[qid] = dict(zip(pids, scores))
        print("{:40s} {:8.4f} {:8.4f} {:9.1f} {:8.2f}".format(name, *evaluate(reranked)))


def score_candidates(model, query: str, passages: list[tuple[str, str]]) -> list[float]:
    texts, titles = [p[0] for p in passages], [p[1] for p in passages]
    if model.kind not in ("cross_encoder", "bi_encoder"):
        sys.exit(f"{model.kind}: this check scores cross-encoders and bi-encoders only")
    if model.kind == "cross_encoder":
        return model.score_pairs(**model.tokenize_pairs([query] * len(texts), texts, titles)).tolist()
    q = model.encode_queries(**model.tokenize_queries([query]))
    p = model.encode_passages(**model.tokenize_passages(texts, titles))
    return model.similarity(q, p).reshape(-1).tolist()


if __name__ == "__main__":
    main()
