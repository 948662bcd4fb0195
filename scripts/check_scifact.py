"""Real-data check: import -> encode -> index -> search -> evaluate on BEIR SciFact with
all-MiniLM-L6-v2 must reproduce its published nDCG@10 (0.645, MTEB) within 0.005.

    /work/shared/tools/get-real-models .models minilm
    python scripts/check_scifact.py --data ../shared/data/scifact --model .models/all-MiniLM-L6-v2

The model directory is a sentence-transformers one: densekit reads its pooling (mean), its
Normalize module (cosine) and max_seq_length (256) from the files; passages are encoded as
`title + " " + text` (the spec's title_mode "prefix"), as the reference did. Exact (Flat) search.
Exits non-zero when the figure is off.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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

REFERENCE, TOLERANCE = 0.645, 0.005


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/scifact", help="BEIR SciFact folder")
    ap.add_argument("--model", default=".models/all-MiniLM-L6-v2")
    ap.add_argument("--work", help="output folder (default: a temporary one, kept)")
    ap.add_argument("--workers", type=int, default=2, help="encode actors (1 CPU each)")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    from densekit.config import (
        EncodeConfig,
        EvaluateConfig,
        ImportConfig,
        IndexConfig,
        SearchConfig,
        load_config,
    )
    from densekit.data.importer import import_data
    from densekit.logs import setup_logging
    from densekit.pipelines.encode import encode
    from densekit.pipelines.evaluate import evaluate
    from densekit.pipelines.index import index
    from densekit.pipelines.search import search

    setup_logging("INFO")
    logging.getLogger("ray").setLevel(logging.WARNING)
    work = Path(args.work or tempfile.mkdtemp(prefix="densekit-scifact-"))
    res = [f"resources.num_workers={args.workers}", "resources.cpus_per_worker=1"]
    times = {}

    def step(name, fn, cls, overrides):
        t0 = time.perf_counter()
        fn(load_config(cls, overrides=overrides))
        times[name] = time.perf_counter() - t0

    step("import", import_data, ImportConfig, ["format=beir", f"path={args.data}", f"output={work / 'scifact'}"])
    step("encode corpus", encode, EncodeConfig, [
        f"model={args.model}", f"input={work / 'scifact/corpus'}", f"output={work / 'emb'}",
        f"batch_size={args.batch_size}", *res])
    step("index", index, IndexConfig, [f"embeddings={work / 'emb'}", f"output={work / 'index'}", "factory=Flat"])
    step("encode queries + search", search, SearchConfig, [
        f"index={work / 'index'}", f"queries={work / 'scifact/queries'}", f"model={args.model}",
        f"output={work / 'run'}", "k=100", *res])
    step("evaluate", evaluate, EvaluateConfig, [
        f"run={work / 'run'}", f"qrels={work / 'scifact/qrels/test'}", f"output={work / 'eval'}",
        "metrics=[ndcg@10,mrr@10,recall@100,map]"])
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    ndcg = metrics["metrics"]["ndcg@10"]
    print(f"\nSciFact test ({metrics['num_queries']} queries), {args.model}, exact search:")
    for name, value in metrics["metrics"].items():
        print(f"  {name:12s} {value:.4f}")
    print("times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    ok = abs(ndcg - REFERENCE) <= TOLERANCE
    print(f"nDCG@10 = {ndcg:.4f}; reference {REFERENCE} +- {TOLERANCE}: {'OK' if ok else 'FAILED'}")
    print(f"outputs in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
