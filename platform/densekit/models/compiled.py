"""Compiled inference: a model's encode function through `torch.compile` with inductor's
*freezing* (weights folded in as constants, linear layers' weights pre-packed for oneDNN).

For inference only (no gradients). Measured on a 2-core CPU with all-MiniLM-L6-v2 in fp32:
1.8-2.0x the eager model's texts/s at max lengths 32-256, embeddings equal to 1e-6
(docs/benchmarks.md, "Compiled encoders"). Compiling costs 10-25 s in each process (its first
batches; inductor's on-disk cache shortens it for the next process). If compiling fails (no C++
compiler, an operator inductor cannot lower, ...) the eager function is used from then on, with
one warning: a slower run, never a failed one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
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
COMPILE_MIN_TEXTS = 20_000


def compile_wanted(setting: bool | None, texts_per_process: float, on_gpu: bool) -> bool:
    """The `compile` option resolved: True/False as set; None (auto) compiles on CPU when each
    process has at least COMPILE_MIN_TEXTS texts (or query-passage pairs) to run through the model
    (on GPU only when asked)."""
    if setting is not None:
        return bool(setting)
    return not on_gpu and texts_per_process >= COMPILE_MIN_TEXTS


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
