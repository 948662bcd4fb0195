"""Check that the generated task needs training: random encoder < small trained < bigger trained.

Generates the task (configs/generate/tiny.yaml unless overridden), builds tiny BERT bi-encoders
offline (densekit.models.tiny), trains each for the same number of steps with a plain PyTorch
in-batch-negatives loop (mean pooling, cosine scores x 20), and prints dev MRR@10 / nDCG@10 from
pytrec_eval, next to a BM25 baseline (what exact word overlap alone achieves).

    python scripts/check_generated_task.py                      # 600 steps per model
    python scripts/check_generated_task.py --steps 300 num_docs=1000   # GenerateConfig overrides
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]

SMALL = dict(layers=2, hidden=32, heads=2, intermediate=64)
BIG = dict(layers=2, hidden=128, heads=4, intermediate=256)


def load(task: Path):
    from densekit.artifacts import read_table

    corpus = read_table(task / "corpus").to_pylist()
    queries = {r["qid"]: r["text"] for r in read_table(task / "queries").to_pylist()}
    qrels = {}
    for split in ("train", "dev"):
        qrels[split] = {}
        for r in read_table(task / "qrels" / split).to_pylist():
            qrels[split].setdefault(r["qid"], {})[r["pid"]] = r["relevance"]
    return corpus, queries, qrels


def evaluate(run: dict, qrels: dict) -> dict:
    """Mean MRR@10 and nDCG@10 with pytrec_eval (run truncated to the top 10)."""
    import pytrec_eval

    top = {q: dict(sorted(d.items(), key=lambda x: -x[1])[:10]) for q, d in run.items()}
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "ndcg_cut.10"})
    res = ev.evaluate(top)
    return {
        "MRR@10": float(np.mean([r["recip_rank"] for r in res.values()])),
        "nDCG@10": float(np.mean([r["ndcg_cut_10"] for r in res.values()])),
    }


def bm25_run(corpus, queries, qids, k1=0.9, b=0.4) -> dict:
    docs = [(r["title"] + " " + r["text"]).split() for r in corpus]
    df = Counter(w for d in docs for w in set(d))
    n, avg = len(docs), np.mean([len(d) for d in docs])
    tfs = [Counter(d) for d in docs]
    idf = {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}
    run = {}
    for q in qids:
        terms = queries[q].split()
        scores = np.zeros(n)
        for i, (tf, d) in enumerate(zip(tfs, docs)):
            s = 0.0
            for t in terms:
                f = tf.get(t, 0)
                if f:
                    s += idf[t] * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avg))
            scores[i] = s
        best = np.argsort(-scores)[:100]
        run[q] = {corpus[i]["pid"]: float(scores[i]) for i in best}
    return run


class BiEncoder:
    def __init__(self, model_dir: Path, q_len=16, d_len=96):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModel.from_pretrained(str(model_dir))
        self.q_len, self.d_len = q_len, d_len

    def encode(self, texts, max_len):
        t = self.tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        h = self.model(**t).last_hidden_state  # [B, L, H]
        m = t["attention_mask"].unsqueeze(-1).float()
        e = (h * m).sum(1) / m.sum(1)  # mean pooling: [B, H]
        return self.torch.nn.functional.normalize(e, dim=-1)

    def train(self, pairs, steps, seconds, batch=64, lr=1e-3, seed=0):
        """In-batch negatives: query i's positive is passage i, the other passages are negatives."""
        torch = self.torch
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        opt = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.model.train()
        start, done = time.monotonic(), 0
        while done < steps and time.monotonic() - start < seconds:
            idx = rng.choice(len(pairs), size=batch, replace=False)
            q = self.encode([pairs[i][0] for i in idx], self.q_len)
            d = self.encode([pairs[i][1] for i in idx], self.d_len)
            scores = 20.0 * q @ d.T  # [B, B]
            # Two queries of a batch may share a positive: mask those false negatives.
            same = torch.tensor([[pairs[i][1] == pairs[j][1] and i != j for j in idx] for i in idx])
            scores = scores.masked_fill(same, -1e4)
            loss = torch.nn.functional.cross_entropy(scores, torch.arange(batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
        self.model.eval()
        return done, float(loss.detach())

    def run(self, corpus, queries, qids, k=100):
        torch = self.torch
        with torch.no_grad():
            d = torch.cat([self.encode([r["title"] + " " + r["text"] for r in corpus[i:i + 256]], self.d_len)
                           for i in range(0, len(corpus), 256)])
            q = torch.cat([self.encode([queries[x] for x in qids[i:i + 256]], self.q_len) for i in range(0, len(qids), 256)])
        s = (q @ d.T).numpy()
        run = {}
        for i, qid in enumerate(qids):
            best = np.argsort(-s[i])[:k]
            run[qid] = {corpus[j]["pid"]: float(s[i, j]) for j in best}
        return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="training steps per model (batch 64)")
    ap.add_argument("--seconds", type=float, default=600, help="wall-clock cap per model")
    ap.add_argument("--config", default=str(ROOT / "configs/generate/tiny.yaml"))
    ap.add_argument("--workdir", default=None, help="keep the task and models here (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared 2-core machine 2 threads spin and crawl)")
    ap.add_argument("overrides", nargs="*", help="GenerateConfig key=value overrides")
    args = ap.parse_args()

    import torch

    from densekit.config import GenerateConfig, load_config
    from densekit.data.synthetic import generate
    from densekit.models.tiny import build_tiny_model

    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="densekit-check-task-"))
    cfg = load_config(GenerateConfig, args.config, [f"output={work / 'task'}", *args.overrides])
    t0 = time.monotonic()
    generate(cfg)
    gen_s = time.monotonic() - t0
    corpus, queries, qrels = load(work / "task")
    dev = sorted(qrels["dev"])
    pairs = [(queries[q], next(corpus_by_pid[p] for p in rel))
             for corpus_by_pid in [{r["pid"]: r["title"] + " " + r["text"] for r in corpus}]
             for q, rel in sorted(qrels["train"].items())]
    print(f"task: {len(corpus)} docs, {len(qrels['train'])} train / {len(dev)} dev queries "
          f"(generated in {gen_s:.1f} s, seed {cfg.seed})")

    texts = [r["title"] + " " + r["text"] for r in corpus] + [queries[q] for q in sorted(qrels["train"])]
    small_dir = build_tiny_model(work / "small", texts, vocab_size=8000, max_positions=128, seed=0, **SMALL)
    big_dir = build_tiny_model(work / "big", texts, max_positions=128, seed=0, tokenizer_from=small_dir, **BIG)

    rows = [("BM25 (exact word overlap)", evaluate(bm25_run(corpus, queries, dev), qrels["dev"]), "")]
    rows.append(("random init, small (2x32)", evaluate(BiEncoder(small_dir).run(corpus, queries, dev), qrels["dev"]), ""))
    rows.append(("random init, bigger (2x128)", evaluate(BiEncoder(big_dir).run(corpus, queries, dev), qrels["dev"]), ""))
    for name, d in (("small (2 layers x 32)", small_dir), ("bigger (2 layers x 128)", big_dir)):
        enc = BiEncoder(d)
        t = time.monotonic()
        steps, loss = enc.train(pairs, args.steps, args.seconds)
        note = f"{steps} steps in {time.monotonic() - t:.0f} s, last loss {loss:.3f}"
        rows.append((f"trained, {name}", evaluate(enc.run(corpus, queries, dev), qrels["dev"]), note))
    print(f"\n{'model':<34} {'MRR@10':>7} {'nDCG@10':>8}")
    for name, m, note in rows:
        print(f"{name:<34} {m['MRR@10']:7.3f} {m['nDCG@10']:8.3f}  {note}")


if __name__ == "__main__":
    main()
