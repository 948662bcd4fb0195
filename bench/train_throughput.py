"""Training throughput of `densekit train` (1 Ray Train worker) against a plain PyTorch loop on the
same model, batches, tokenisation and loss (InfoNCE over in-batch + hard negatives), in one run.

    python bench/train_throughput.py [--layers 4 --hidden 256 --batch-size 16 --group-size 4 --steps 25]

Both loops run AT THE SAME TIME, each in a Ray process holding 1 CPU (1 torch thread) of a 2-CPU
Ray: on a shared machine whose load changes minute to minute, running them one after the other
measured noise (ratios from 0.87 to 2.0 in successive runs); running them side by side, both see
the same load. densekit's figure is the steady state of its loop: `train` reports queries_per_s
and the end time of each interval between two checkpoints (reading, collating and tokenising the
batches, forward, backward, optimizer; not the checkpoint writing). The first interval (warm-up)
is dropped, so Ray start-up and model loading are not counted. The plain loop records the start
and end of each of its steps; its throughput is taken over exactly densekit's timed intervals.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_data(root: Path, num_queries: int, num_negatives: int, words: int, seed: int = 0) -> dict:
    """Training groups over random words: queries of 8 words, passages of `words` words."""
    from densekit.artifacts import TableWriter, write_manifest
    from densekit.data.records import GROUPS_SCHEMA, passage

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    docs = [" ".join(rng.choices(vocab, k=words)) for _ in range(num_queries * 4)]
    data = {"qid": [], "query": [], "positives": [], "negatives": []}
    for i in range(num_queries):
        pos = docs[i]
        data["qid"].append(f"q{i}")
        data["query"].append(" ".join(rng.sample(pos.split(), 8)))
        data["positives"].append([passage(f"d{i}", pos)])
        negs = rng.sample(range(num_queries, len(docs)), num_negatives)
        data["negatives"].append([passage(f"d{j}", docs[j]) for j in negs])
    with TableWriter(root / "groups", GROUPS_SCHEMA) as w:
        w.write(data)
    write_manifest(root / "groups", "bench")
    return {"groups": root / "groups", "texts": docs[:2000], "vocab": vocab}


# --- the plain PyTorch loop ------------------------------------------------------------------------


def plain_loop(model_dir: Path, groups: Path, args, stop_file: Path) -> list[tuple[float, float]]:
    """A hand-written loop (HF tokenizer + AutoModel, mean pooling, dot scores, cross-entropy over
    every passage of the batch, AdamW with warm-up/decay and clipping) run until `stop_file`
    exists. Returns (start, end) unix times of every step."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    from densekit.artifacts import read_table

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / 2, 1.0))
    rows = read_table(groups).to_pylist()
    random.Random(0).shuffle(rows)
    B, G = args.batch_size, args.group_size

    def encode(texts, max_length):
        enc = tok(
            texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
        )
        hidden = model(**enc).last_hidden_state  # [N, L, H]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # mean pooling, [N, H]

    times = []
    i = 0
    while not stop_file.exists():
        t0 = time.time()
        start = (i * B) % (len(rows) - B)
        batch = rows[start : start + B]
        rng = random.Random(i)
        queries = [r["query"] for r in batch]
        passages = [
            p["text"]
            for r in batch
            for p in [r["positives"][0], *rng.sample(r["negatives"], G - 1)]
        ]
        q, p = encode(queries, 32), encode(passages, args.passage_length)
        scores = q @ p.T  # [B, B*G]: every query against every passage of the batch
        loss = F.cross_entropy(scores / args.temperature, torch.arange(B) * G)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step()
        float(loss.detach())  # as densekit logs it
        times.append((t0, time.time()))
        i += 1
    return times


def queries_in(times: list[tuple[float, float]], lo: float, hi: float, batch_size: int) -> float:
    """Queries the plain loop processed in [lo, hi]: steps cut by the window count pro rata."""
    done = 0.0
    for a, b in times:
        overlap = min(b, hi) - max(a, lo)
        if overlap > 0:
            done += batch_size * overlap / (b - a)
    return done


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# --- densekit train --------------------------------------------------------------------------------


def densekit_train(model_dir: Path, groups: Path, out: Path, args) -> list[dict]:
    """Train with densekit; return its metrics rows (step, queries_per_s, time)."""
    from densekit.config import TrainConfig, load_config
    from densekit.train import train

    cfg = load_config(
        TrainConfig,
        None,
        [
            f"model.path={model_dir}",
            "model.pooling=mean",
            "model.max_query_length=32",
            f"model.max_passage_length={args.passage_length}",
            f"data.train={groups}",
            f"data.group_size={args.group_size}",
            "losses.contrastive.weight=1.0",
            f"losses.contrastive.params.temperature={args.temperature}",
            "optim.lr=1e-4",
            f"optim.batch_size={args.batch_size}",
            f"optim.max_steps={args.interval + args.steps}",
            "optim.warmup_steps=2",
            f"checkpoint_every={args.interval}",
            "keep_checkpoints=1",
            "eval.every=0",
            "resources.num_workers=1",
            "resources.cpus_per_worker=1",
            f"output={out}",
        ],
    )
    train(cfg)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--passage-words", type=int, default=60)
    ap.add_argument("--passage-length", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument(
        "--steps", type=int, default=25, help="densekit's timed steps (after one warm-up interval)"
    )
    ap.add_argument("--interval", type=int, default=5, help="steps between densekit's checkpoints")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    if args.steps % args.interval:
        ap.error("--steps must be a multiple of --interval")

    import ray
    import torch

    from densekit.logs import setup_logging
    from densekit.models.tiny import build_tiny_model

    setup_logging()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="densekit-bench-"))
    data = make_data(
        root,
        (args.interval + args.steps) * args.batch_size,
        num_negatives=15,
        words=args.passage_words,
    )
    model_dir = build_tiny_model(
        root / "model", data["texts"] + [" ".join(data["vocab"])], layers=args.layers, hidden=args.hidden,
        heads=max(1, args.hidden // 64), intermediate=4 * args.hidden, vocab_size=4000, max_positions=256,
    )  # fmt: skip
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    stop = root / "stop"
    # 1 CPU each: Ray sets OMP_NUM_THREADS=1 in both processes, so both use one torch thread.
    plain = ray.remote(num_cpus=1)(plain_loop).remote(model_dir, data["groups"], args, stop)
    history = densekit_train(model_dir, data["groups"], root / "run", args)
    stop.touch()
    times = ray.get(plain)
    threads = ray.get(ray.remote(num_cpus=1)(torch_threads).remote())
    ray.shutdown()

    print(
        f"model: {args.layers} layers, hidden {args.hidden}; batch {args.batch_size} queries x "
        f"{args.group_size} passages (<= {args.passage_length} tokens); {args.steps} timed steps "
        f"after {args.interval} warm-up; {threads} torch thread per loop, both loops at once; "
        f"torch {torch.__version__}, ray {ray.__version__}"
    )
    ours_q = base_q = seconds = 0.0
    print("interval (steps)   densekit q/s   plain q/s   ratio")
    for prev, row in zip(history, history[1:]):
        n = row["step"] - prev["step"]
        dur = n * args.batch_size / row["queries_per_s"]
        base = queries_in(times, row["time"] - dur, row["time"], args.batch_size)
        ours_q, base_q, seconds = ours_q + n * args.batch_size, base_q + base, seconds + dur
        print(
            f"{prev['step']:>5}-{row['step']:<5}      {row['queries_per_s']:10.2f}   {base / dur:9.2f}   "
            f"{row['queries_per_s'] / (base / dur):.3f}"
        )
    ratio = ours_q / base_q
    print(
        f"densekit train: {ours_q / seconds:.2f} queries/s; plain PyTorch loop over the same {seconds:.0f} s: "
        f"{base_q / seconds:.2f} queries/s ({len(times)} steps in all)"
    )
    print(
        f"ratio densekit/plain: {ratio:.3f}   overhead: {100 * (1 - ratio):+.1f}%  (target <= 10%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
