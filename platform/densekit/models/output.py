"""`ModelOutput`, kept at its old import path: it lives in densekit.output (which losses import
without loading the model classes)."""

from __future__ import annotations

from densekit.output import ModelOutput

__all__ = ["ModelOutput"]
