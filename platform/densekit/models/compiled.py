"""Compiled inference: a model's encode function through `torch.compile` with inductor's
*freezing* (weights folded in as constants, linear layers' weights pre-packed for oneDNN).

For inference only (no gradients). Measured on a 2-core CPU with all-MiniLM-L6-v2 in fp32:
1.8-2.0x the eager model's texts/s at max lengths 32-256 (1.1-1.3x on another host of the same
kind), embeddings equal to 1e-6
(docs/benchmarks.md, "Compiled encoders"). Compiling costs 10-25 s in each process (its first
batches; inductor's on-disk cache shortens it for the next process). If compiling fails (no C++
compiler, an operator inductor cannot lower, ...) the eager function is used from then on, with
one warning: a slower run, never a failed one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# A compiled model's linear layers run oneDNN primitives made for each input shape (batch size x
# length), kept in two caches of 1,024 entries (oneDNN's own, PyTorch's ideep LRU). A model actor
# meets ever new shapes: one process encoding MS-DOC-shaped text grew 660 -> 966 MB over 40,000
# documents (eager: flat); with both caches at 16 entries it stayed at 584-605 MB, at the same speed
# (docs/benchmarks.md). Set when a compiled model is made, before its first primitive; a value the
# user set wins.
ONEDNN_CACHE_ENV = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16", "LRU_CACHE_CAPACITY": "16"}

# Below this many texts per process, compiling (10-25 s) costs more than it saves (an eager
# 6-layer MiniLM encodes ~55 passages/s on 2 CPU threads): `compile: null` (auto) leaves it off.
# The rule where the work is not estimated: scoring and reranking (a MiniLM-sized cross-encoder
# scored 6,000 pairs in 120 s eager, 116 s compiled after 19 s of compiling: no gain to decide on,
# docs/benchmarks.md) and a frozen teacher in training.
COMPILE_MIN_TEXTS = 20_000

# Where it can (encode: the model's config.json and the texts' length), the rule is on the work
# itself: compile when a process has at least this many forward FLOPs to run. Measured encoding
# SciFact's 5,183 abstracts at 256 tokens on 2 actors of 1 CPU (docs/benchmarks.md): the 6-layer
# all-MiniLM-L6-v2 (~16e12 FLOPs an actor) took 152 s compiled against 242 s eager; its 2-layer cut
# (~5e12) 67 s against 66-68 s, even. 20,000 texts of 32 tokens through the 6-layer model, the
# rule above, are ~14e12.
COMPILE_MIN_FLOPS = 10e12


def compile_wanted(
    setting: bool | None, texts_per_process: float, on_gpu: bool, flops_per_text: float | None = None
) -> bool:
    """The `compile` option resolved: True/False as set; None (auto) compiles on CPU when each
    process has at least COMPILE_MIN_FLOPS to run (texts x `flops_per_text`, see `text_flops`) or,
    without an estimate of a text's work, at least COMPILE_MIN_TEXTS texts (or query-passage
    pairs); on GPU only when asked."""
    if setting is not None:
        return bool(setting)
    if on_gpu:
        return False
    if flops_per_text is None:
        return texts_per_process >= COMPILE_MIN_TEXTS
    return texts_per_process * flops_per_text >= COMPILE_MIN_FLOPS


def text_flops(model_dir: str | Path, tokens: float) -> float | None:
    """Forward FLOPs of one text of `tokens` tokens through the transformer in `model_dir`, from
    its config.json (a two-tower save: its passage tower's): per token and layer, 2 per weight of
    the attention projections (4 h^2) and the feed-forward (2 h i), and attention over the text
    (4 tokens h). None when no config gives the layers and widths."""
    root = Path(model_dir)
    for path in (root / "config.json", root / "passage" / "config.json"):
        try:
            conf = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(conf, dict):
            continue
        layers = conf.get("num_hidden_layers", conf.get("n_layers"))
        hidden = conf.get("hidden_size", conf.get("dim"))
        if not isinstance(layers, int) or not isinstance(hidden, int) or layers < 1 or hidden < 1:
            continue
        inter = conf.get("intermediate_size", conf.get("hidden_dim"))
        inter = inter if isinstance(inter, int) and inter > 0 else 4 * hidden
        per_token = layers * (2 * (4 * hidden * hidden + 2 * hidden * inter) + 4 * tokens * hidden)
        return float(tokens * per_token)
    return None


class CompiledInference:
    """`fn(**tensors)` compiled once (dynamic shapes: batch size and length vary), run with
    freezing under inference mode. Falls back to `fn` itself if compiling fails."""

    def __init__(self, fn: Callable[..., Any], label: str, backend: str | Callable = "inductor",
                 inference_mode: bool = True):
        import torch

        for key, value in ONEDNN_CACHE_ENV.items():
            os.environ.setdefault(key, value)
        self.fn, self.label = fn, label
        self.compiled = torch.compile(fn, dynamic=True, backend=backend)
        # inference_mode for outputs that stay outputs (encode, score); no_grad for a frozen
        # teacher's, which a student's loss uses (inference tensors cannot be saved for backward).
        self.grad_off = torch.inference_mode if inference_mode else torch.no_grad
        self.failed = False
        self.calls = 0

    def __call__(self, *args: Any, **inputs: Any) -> Any:
        if self.failed:
            return self.fn(*args, **inputs)
        import torch._inductor.config as inductor_config
        from torch._dynamo.exc import TorchDynamoException

        t0 = time.perf_counter()
        try:
            with self.grad_off(), inductor_config.patch(freezing=True):
                out = self.compiled(*args, **inputs)
        except TorchDynamoException as e:
            self.failed = True
            cause = getattr(e, "inner_exception", None) or e.__cause__ or e
            lines = [line for line in str(cause).splitlines() if line.strip()]
            logger.warning(
                "compiling %s failed (%s: %s); running the eager model instead",
                self.label, type(cause).__name__, lines[0] if lines else "",
            )
            return self.fn(*args, **inputs)
        self.calls += 1
        if self.calls == 1:
            logger.info("compiled %s in %.1f s (first batch)", self.label, time.perf_counter() - t0)
        return out


def compile_frozen_towers(model: Any, label: str) -> list[CompiledInference]:
    """Compile, in place, the transformer of each tower of a frozen model (an online teacher):
    its forward then runs compiled under no_grad, wherever the model calls it (bi-encoder,
    ColBERT and cross-encoder towers alike; a shared tower once). The model must not train.
    Returns the compiled forwards (their `failed` says whether one fell back to eager)."""
    compiled = {}
    for name, tower in model.towers.items():
        net = tower.transformer
        if id(net) not in compiled:
            net.forward = CompiledInference(net.forward, f"{label}'s {name} tower", inference_mode=False)
            compiled[id(net)] = net.forward
    return list(compiled.values())
