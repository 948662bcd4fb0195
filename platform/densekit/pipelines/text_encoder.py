"""The model side of `densekit encode`: `TextEncoder` (texts -> embeddings, one model per Ray Data
actor, also usable in-process) and `encode_texts` (in-process encoding for small inputs)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from densekit.data import records as R

ROW = "__row"  # global input row number, carried through the encode pipeline


def release_free_memory() -> bool:
    """Hand free memory back to the OS: Arrow's memory pool's and the C heap's (glibc
    `malloc_trim`). True where the C heap was trimmed, False where there is no malloc_trim.

    A model actor runs thousands of forward passes whose activations differ in size (batches are
    sorted by length), and glibc keeps the freed pages: the actor's RSS then grows with the corpus
    (measured: 1.5 GB at 100,000 documents, 2.0 GB at 320,000). Trimming after each batch cut that
    to 1.27 / 1.52 GB (1.72 GB at 1M) at no measurable cost (milliseconds against seconds of
    encoding); docs/benchmarks.md has the curve. Arrow's default pool (mimalloc or jemalloc)
    keeps the pages of the row groups an encode actor read (~64 MB of text each) as well: one
    process encoding MS-DOC-shaped row groups held ~190 MB less with them released.
    """
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Any:
    """The C library's malloc_trim, looked up once; None where it has none (macOS, musl)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def autocast_dtype(device: str, precision: str) -> Any:
    """The autocast dtype for `precision` on `device`, or None (no autocast: fp32, or CPU)."""
    import torch

    if not str(device).startswith("cuda") or precision == "fp32":
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16


class TextEncoder:
    """Callable class for Ray Data's map_batches: texts -> embeddings, with one model per actor.

    Also usable without Ray: `TextEncoder(model_dir, "passages")(batch)` on a dict of columns.

    Args:
        model: a bi-encoder directory (densekit checkpoint, sentence-transformers or plain HF).
        kind: "passages" or "queries" (which tower and tokenisation).
        batch_size: texts per forward pass.
        title: "model" (the spec's title handling), "prepend" (title + " " + text) or "ignore".
        max_length: override the spec's max length for this kind.
        precision: "auto" | "fp32" | "fp16" | "bf16" (autocast on CUDA only).
        use_gpu: put the model on CUDA when available.
        compile: run the encoder through `torch.compile` with frozen weights
            (densekit.models.compiled: 1.1-2x on CPU, by host; 10-25 s to compile; eager if it fails).
    """

    def __init__(
        self,
        model: str,
        kind: str,
        batch_size: int = 128,
        title: str = "model",
        max_length: int | None = None,
        precision: str = "auto",
        use_gpu: bool = False,
        compile: bool = False,
    ):
        import torch

        from densekit.models import load_model

        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        key = "max_query_length" if kind == "queries" else "max_passage_length"
        self.model = load_model(
            model,
            kind="bi_encoder",
            device=self.device,
            overrides={key: max_length} if max_length else None,
        )
        self.kind, self.batch_size, self.title = kind, batch_size, title
        self.amp = autocast_dtype(self.device, precision)
        run = self.model.encode_queries if kind == "queries" else self.model.encode_passages
        if compile:
            from densekit.models.compiled import CompiledInference

            run = CompiledInference(run, f"the {kind} encoder")
        self._run = run

    def encode(self, texts: list[str], titles: list[str] | None = None) -> np.ndarray:
        """`[N, D]` float32 embeddings of `texts`, in input order.

        Texts are sorted by length (longest first) so each forward pass pads to a similar length;
        the first batch is the longest, so an out-of-memory error shows up at once.
        """
        import torch

        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.model.dim), np.float32)
        for s in range(0, len(texts), self.batch_size):
            idx = order[s : s + self.batch_size]
            chunk = [texts[i] for i in idx]
            if self.kind == "queries":
                enc = self.model.tokenize_queries(chunk)
            else:
                enc = self.model.tokenize_passages(
                    chunk, [titles[i] for i in idx] if titles else None
                )
            enc = {k: v.to(self.device, non_blocking=True) for k, v in enc.items()}
            with (
                torch.inference_mode(),
                torch.autocast(
                    "cuda", dtype=self.amp or torch.float16, enabled=self.amp is not None
                ),
            ):
                emb = self._run(**enc)
            out[idx] = emb.float().cpu().numpy()
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data batch (numpy dict with __row, id, text[, title]) -> __row, id, embedding `[n, D]`."""
        texts = [t if t is not None else "" for t in batch[R.TEXT].tolist()]
        titles = None
        if self.kind == "passages" and R.TITLE in batch and self.title != "ignore":
            raw = [t if t is not None else "" for t in batch[R.TITLE].tolist()]
            if self.title == "prepend":
                texts = [f"{ti} {t}" if ti else t for ti, t in zip(raw, texts)]
            else:
                titles = raw
        out = {ROW: batch[ROW], R.ID: batch[R.ID], R.EMBEDDING: self.encode(texts, titles)}
        release_free_memory()
        return out


def encode_texts(
    model_dir: str | Path,
    texts: list[str],
    kind: str = "passages",
    titles: list[str] | None = None,
    batch_size: int = 128,
) -> np.ndarray:
    """In-process encoding (no Ray): `[N, D]` float32. For small inputs, tests and benchmarks."""
    enc = TextEncoder(str(model_dir), kind, batch_size=batch_size)
    return enc.encode(list(texts), titles)


CHARS_PER_TOKEN = 4.0  # English through a WordPiece or BPE vocabulary: about 4 characters a token


def estimated_tokens(part: str | Path, with_title: bool, cap: int, sample: int = 1_000) -> float:
    """The mean length in tokens of a table's texts as a model sees them (cut at `cap`, with its two
    special tokens), from the characters of the first `sample` rows of one Parquet part: no
    tokenizer is loaded on the driver. `cap` when the part has no rows."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    columns = [R.TEXT, R.TITLE] if with_title else [R.TEXT]
    batch = next(pq.ParquetFile(part).iter_batches(batch_size=sample, columns=columns), None)
    if batch is None or batch.num_rows == 0:
        return float(cap)
    chars = pc.fill_null(pc.utf8_length(batch.column(R.TEXT)), 0).to_numpy(zero_copy_only=False)
    if with_title:
        chars = chars + 1 + pc.fill_null(pc.utf8_length(batch.column(R.TITLE)), 0).to_numpy(zero_copy_only=False)
    return float(np.minimum(chars / CHARS_PER_TOKEN + 2, cap).mean())


def text_work(model: str, kind: str, with_title: bool, part: str | Path, max_length: int | None) -> float | None:
    """Forward FLOPs of one text of a table through `model` at the table's estimated length (the
    auto `compile` of encode); None when the model's config does not give its size."""
    from densekit.models.compiled import text_flops
    from densekit.models.spec import ModelSpec, read_spec, spec_from_sentence_transformers

    spec = read_spec(model) or spec_from_sentence_transformers(model) or ModelSpec()
    cap = max_length or (spec.max_query_length if kind == "queries" else spec.max_passage_length)
    return text_flops(model, estimated_tokens(part, with_title, cap))
