"""One training step's loss and the in-process dev evaluation, kept at their old import path: they
live in densekit.train.step."""

from __future__ import annotations

from densekit.train.step import compute_loss, encode_texts, evaluate_model, index_retriever

__all__ = ["compute_loss", "encode_texts", "evaluate_model", "index_retriever"]
