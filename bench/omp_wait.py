"""FAISS on several OpenMP threads while other processes use the cores: GNU OpenMP's default
spin-waiting against `OMP_WAIT_POLICY=PASSIVE`, the policy densekit gives its Ray workers
(densekit.raycluster.openmp_env, and openmp_options for its multi-threaded FAISS tasks and actors).

Each measurement runs in a fresh subprocess (OpenMP reads the policy once, when it loads) with
`--threads` FAISS threads: train an IVF-PQ index on a sample, add vectors, search queries in one
call and in batches of 10 (as a search actor receives them). Beside it run 0, 1, ... `--busy`
processes that each keep one core busy (a pure-Python loop), the way another job, Ray's own
processes or a second run share a machine. Prints each phase's seconds and the ratio
default / passive per load: above 1, passive is faster. With `--model` (a sentence-transformers
folder) and `--corpus` (BEIR corpus.jsonl) it also times densekit's TextEncoder (PyTorch, the
same OpenMP) encoding `--docs` documents on `--threads` threads.

    python bench/omp_wait.py                      # 200,000 vectors, IVF1024,PQ32, 2 threads
    python bench/omp_wait.py --vectors 1000000 --busy 2
    python bench/omp_wait.py --model $MODELS/all-MiniLM-L6-v2 --corpus ../shared/data/scifact/corpus.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import numpy as np, faiss
from densekit.pipelines.index import new_index, skip_polysemous_training
n, dim, threads, factory = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
centers = rng.standard_normal((4096, dim)).astype(np.float32)
x = centers[rng.integers(0, 4096, n)] + 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
sample = x[rng.choice(n, min(n, 100_000), replace=False)]
q = x[rng.choice(n, 2000, replace=False)]
faiss.omp_set_num_threads(threads)
index = new_index(factory, dim, "ip")
skip_polysemous_training(index)  # as densekit's index step trains it
out = {}
t = time.perf_counter(); index.train(sample); out["train"] = time.perf_counter() - t
t = time.perf_counter(); index.add(x); out["add"] = time.perf_counter() - t
faiss.ParameterSpace().set_index_parameter(index, "nprobe", 32)
t = time.perf_counter(); index.search(q, 100); out["search"] = time.perf_counter() - t
t = time.perf_counter()
for i in range(0, len(q), 10):
    index.search(q[i:i + 10], 100)
out["search10"] = time.perf_counter() - t
print(json.dumps(out))
"""

TORCH_CHILD = r"""
import json, sys, time, torch
from densekit.pipelines.text_encoder import TextEncoder
model, corpus, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
docs = [json.loads(line) for line, _ in zip(open(corpus), range(n))]
texts = [f"{d.get('title', '')} {d['text']}" for d in docs]
encoder = TextEncoder(model, "passages", batch_size=64, title="ignore", max_length=128)
encoder.encode(texts[:64])  # warm-up
t = time.perf_counter(); encoder.encode(texts); print(json.dumps({"encode": time.perf_counter() - t}))
"""
BUSY = "while True: pass"
PHASES = ("train", "add", "search", "search10", "encode")
PLATFORM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "platform")


def measure(args, policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = os.pathsep.join([PLATFORM, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    cmds = [[sys.executable, "-c", CHILD, str(args.vectors), str(args.dim), str(args.threads), args.factory]]
    if args.model:
        cmds.append([sys.executable, "-c", TORCH_CHILD, args.model, args.corpus, str(args.docs), str(args.threads)])
    out: dict = {}
    for cmd in cmds:
        got = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        out.update(json.loads(got.strip().splitlines()[-1]))
    if "encode" in out:
        out["encode_docs_per_s"] = args.docs / out["encode"]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vectors", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--factory", default="IVF1024,PQ32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--busy", type=int, default=2, help="measure with 0..BUSY busy processes beside")
    p.add_argument("--model", help="also time TextEncoder with this sentence-transformers folder")
    p.add_argument("--corpus", help="BEIR corpus.jsonl of the texts --model encodes")
    p.add_argument("--docs", type=int, default=300, help="documents --model encodes")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if bool(args.model) != bool(args.corpus):
        p.error("--model and --corpus go together")
    results = []
    for busy in range(args.busy + 1):
        procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
        try:
            time.sleep(0.5 if busy else 0)
            row = {"busy": busy, "default": measure(args, None), "passive": measure(args, "PASSIVE")}
        finally:
            for pr in procs:
                pr.kill()
                pr.wait()
        results.append(row)
        d, s = row["default"], row["passive"]
        print(f"{busy} busy process(es) beside, {args.threads} FAISS threads, {args.vectors:,} x {args.dim} "
              f"{args.factory}:")
        for ph in (ph for ph in PHASES if ph in d):
            print(f"  {ph:9s} default {d[ph]:7.2f} s   passive {s[ph]:7.2f} s   default/passive {d[ph] / s[ph]:5.2f}x")
        sys.stdout.flush()
    out = {"args": vars(args), "cpus": os.cpu_count(), "load_before": os.getloadavg(), "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
