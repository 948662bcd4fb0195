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

Arguments name run-folder stages (or paths): --first-stage (a search output with run.trec,
default teacher_run), --task (a generate or import output with corpus/, queries/ and
qrels/<--split>/), and the models to compare. Also printed per model: where the judged relevant
passages inside the top k land on average, and the share of them in the top 3, for the first
stage and for the reranker (a random order puts them at (k + 1) / 2).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import pyarrow.parquet as pq  # noqa: E402
import pytrec_eval  # noqa: E402
import torch  # noqa: E402

from densekit.models import load_model  # noqa: E402


def table(path: Path) -> list[dict]:
    parts = sorted(path.glob("*.parquet"))
    if not parts:
        sys.exit(f"{path}: no Parquet parts (expected a densekit table folder)")
    return [row for p in parts for row in pq.read_table(p).to_pylist()]


def stage(root: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() or p.exists() else root / name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a method's run folder")
    ap.add_argument("models", nargs="+", help="model folders (stage names inside run_dir, or paths)")
    ap.add_argument("--first-stage", default="teacher_run", help="search output whose run.trec is reranked")
    ap.add_argument("--task", default="task", help="generate/import output: corpus, queries, qrels")
    ap.add_argument("--split", default="dev", help="qrels split: the judged queries that are reranked")
    ap.add_argument("--k", type=int, default=30, help="rerank this many of the first stage's top")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    task = stage(args.run_dir, args.task)
    corpus = {r["pid"]: (r["text"], r.get("title") or "") for r in table(task / "corpus")}
    queries = {r["qid"]: r["text"] for r in table(task / "queries")}
    qrels: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for r in table(task / "qrels" / args.split):
        qrels[r["qid"]][r["pid"]] = int(r["relevance"])
    run_file = stage(args.run_dir, args.first_stage) / "run.trec"
    first: dict[str, dict[str, float]] = collections.defaultdict(dict)
    with open(run_file) as f:
        for n, line in enumerate(f, 1):
            cols = line.split()
            if len(cols) != 6:
                sys.exit(f"{run_file}:{n}: expected 'qid Q0 docid rank score tag', got {line.strip()!r}")
            qid, _, pid, rank, score, _ = cols
            if qid in qrels and int(rank) <= args.k:
                first[qid][pid] = float(score)
    if not first:
        sys.exit(f"{run_file}: no query of qrels/{args.split} in the run")

    def evaluate(run: dict[str, dict[str, float]]) -> tuple[float, float, float, float]:
        ev = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in run}, {"ndcg_cut.10", "recip_rank"})
        res = ev.evaluate(run)
        ranks = []
        for q, scores in run.items():
            order = sorted(scores, key=lambda d: -scores[d])
            ranks += [order.index(d) + 1 for d in qrels[q] if qrels[q][d] > 0 and d in scores]
        mrr10 = statistics.mean(  # MRR@10: trec_eval's recip_rank counts any depth
            0.0 if v["recip_rank"] < 0.1 else v["recip_rank"] for v in res.values()
        )
        return (
            statistics.mean(v["ndcg_cut_10"] for v in res.values()),
            mrr10,
            statistics.mean(ranks) if ranks else float("nan"),
            sum(r <= 3 for r in ranks) / max(1, len(ranks)),
        )

    print(f"{len(first)} judged queries, top {args.k} of {run_file}")
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
