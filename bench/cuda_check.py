"""Check densekit's encode and train paths on CUDA with bf16, in one process: torch, transformers and
densekit's model code only (no Ray, no FAISS), for the day a GPU is at hand.

- **encode**: `pipelines.encode.TextEncoder` (the code each Ray Data actor runs) encodes the same
  texts in fp32 and in bf16 autocast on the device; the bf16 embeddings must keep cosine >= 0.99
  with the fp32 ones; texts/s of both after a warm-up pass.
- **train**: `train.TrainModule` + `data.collate.TrainCollator` + the contrastive loss (the code each
  Ray Train worker runs), `--steps` AdamW steps under bf16 autocast on in-batch + 1 hard negative;
  every loss and gradient must be finite and the loss must fall; steps/s and peak device memory.

    python bench/cuda_check.py                          # a tiny model built offline, on cuda
    python bench/cuda_check.py --model $MODELS/all-MiniLM-L6-v2 --texts 4096 --batch-size 256
    python bench/cuda_check.py --device cpu             # the same checks in fp32 (what the tests run)

Prints one JSON object and exits 1 when a check fails (2 when CUDA is asked for and absent).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

WORDS = ("retrieval dense encoder query passage index shard vector corpus teacher student distil layer "
         "token embedding score rank cluster search train model batch gradient memory device").split()


def texts(n: int, seed: int, lo: int = 8, hi: int = 120) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(lo, hi))) for _ in range(n)]


def check_encode(model: str, device: str, n: int, batch_size: int) -> dict:
    import numpy as np
    import torch

    from densekit.pipelines.encode import TextEncoder

    docs = texts(n, seed=1)
    out: dict = {}
    embs = {}
    for precision in ("fp32", "bf16") if device == "cuda" else ("fp32",):
        enc = TextEncoder(model, "passages", batch_size=batch_size, precision=precision, use_gpu=device == "cuda")
        enc.encode(docs[: batch_size])  # warm-up: kernels, allocator
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        embs[precision] = enc.encode(docs)
        if device == "cuda":
            torch.cuda.synchronize()
        out[f"{precision}_texts_per_s"] = round(n / (time.perf_counter() - t0), 1)
    if "bf16" in embs:
        a, b = embs["fp32"], embs["bf16"]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        out["bf16_vs_fp32_cosine_min"] = round(float(cos.min()), 6)
        out["bf16_speedup"] = round(out["bf16_texts_per_s"] / out["fp32_texts_per_s"], 2)
        out["ok"] = bool(cos.min() >= 0.99 and np.isfinite(b).all())
    else:
        out["ok"] = bool(np.isfinite(embs["fp32"]).all())
    return out


def check_train(model: str, device: str, steps: int, batch_size: int, lr: float) -> dict:
    import torch

    from densekit.data.collate import TrainCollator
    from densekit.data.records import NEGATIVES, POSITIVES, QID, QUERY, passage
    from densekit.losses import build_objective
    from densekit.models import load_model
    from densekit.train import TrainModule

    dev = torch.device(device)
    student = load_model(model, kind="bi_encoder", device=device)
    module = TrainModule(student, None, build_objective({"contrastive": {"params": {"temperature": 0.05}}})).to(dev)
    module.train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    collate = TrainCollator(group_size=2, tokenizations=[student.tokenization])
    docs = texts(batch_size * 4, seed=2, lo=20, hi=60)
    rows = []
    for i in range(batch_size * 2):  # queries: the first 6 words of their positive
        pos = docs[i % len(docs)]
        rows.append({QID: f"q{i}", QUERY: " ".join(pos.split()[:6]), POSITIVES: [passage(f"d{i % len(docs)}", pos)],
                     NEGATIVES: [passage(f"d{(i + 7) % len(docs)}", docs[(i + 7) % len(docs)])]})
    amp = torch.bfloat16 if device == "cuda" else None
    losses, bad = [], []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for step in range(steps):
        chunk = rows[(step * batch_size) % len(rows):][:batch_size]
        batch = collate(chunk).to(dev)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = module(batch, "global")
        loss.backward()
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not torch.isfinite(loss) or not all(torch.isfinite(g).all() for g in grads):
            bad.append(step)
        opt.step()
        losses.append(float(loss.detach()))
    if device == "cuda":
        torch.cuda.synchronize()
    k = max(1, steps // 4)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    out = {"steps": steps, "steps_per_s": round(steps / (time.perf_counter() - t0), 2),
           "loss_first": round(first, 4), "loss_last": round(last, 4), "non_finite_steps": bad,
           "precision": "bf16 autocast" if amp else "fp32"}
    if device == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out["ok"] = not bad and last < first
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model directory (default: a tiny model built offline)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--texts", type=int, default=1024, help="texts encoded per precision")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"ok": False, "error": "CUDA is not available (use --device cpu)"}))
        return 2
    model = args.model
    if model is None:
        from densekit.models.tiny import build_tiny_model

        model = str(build_tiny_model(Path(tempfile.mkdtemp(prefix="densekit-cuda-check-")) / "tiny",
                                     [" ".join(WORDS)] * 8, layers=2, hidden=64, heads=2, intermediate=128))
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": Path(model).name,
        "encode": check_encode(model, args.device, args.texts, args.batch_size),
        "train": check_train(model, args.device, args.steps, min(args.batch_size, 32), args.lr),
    }
    result["ok"] = result["encode"]["ok"] and result["train"]["ok"]
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
