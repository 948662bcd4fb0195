"""A frozen teacher's embeddings on disk, keyed by its exact inputs.

An online teacher (LEAD's, a bi-encoder or ColBERT scoring each batch) is run under no_grad on every
step. Trials of a search and reruns that see the same batches (the same data, seed and batch size)
would run it again on the same inputs; with `teacher_cache` set they read what the first run wrote.
One file a batch and tower: `<folder>/<model fingerprint>/<key[:2]>/<key>.pt`, the key a SHA-256
of the tower, the per-layer flag, the precision the model runs in and every input tensor (token
ids, attention mask: max length, truncation and tokenizer show in them). The model fingerprint is
its config and its files' names, sizes and modification times: a teacher replaced in place gets a
new folder, never another teacher's vectors. Files are written under a temporary name and renamed,
so a killed run leaves no half-written entry.

Not for a teacher that trains (its weights change every step) or a cross-encoder (it scores pairs,
with no tower to cache): `attach` says which.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from densekit.errors import ConfigError

logger = logging.getLogger(__name__)

MARKER = ".densekit-teacher-cache"  # a folder densekit made for this: it writes only into such a folder


def model_fingerprint(model_config: dict[str, Any], path: str | Path) -> str:
    """A short digest of a model's config and its files (names, sizes, modification times)."""
    h = hashlib.sha256(json.dumps(model_config, sort_keys=True, default=str).encode())
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root) if root.is_dir() else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class EmbedCache:
    """Pooled embeddings (and per-layer views) of one frozen model's towers, by input.

    Args:
        folder: the cache folder (made with a marker; an existing folder without one is refused).
        fingerprint: `model_fingerprint` of the model it caches.
    """

    def __init__(self, folder: str | Path, fingerprint: str):
        root = Path(folder)
        if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not (root / MARKER).exists())):
            raise ConfigError(
                f"teacher_cache: {root} exists and is not a teacher cache densekit made (no {MARKER} in it); "
                "densekit writes only into a new folder or one it made: choose another"
            )
        root.mkdir(parents=True, exist_ok=True)
        (root / MARKER).touch()
        self.dir = root / fingerprint
        self.hits = self.misses = 0

    def key(self, tower: str, enc: dict[str, Tensor], all_layers: bool, precision: str) -> str:
        h = hashlib.sha256(f"{tower}\0{int(all_layers)}\0{precision}".encode())
        for name in sorted(enc):
            t = enc[name].detach().cpu().contiguous()
            h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pt"

    def get(self, key: str, device: torch.device) -> tuple[Tensor, Tensor | None] | None:
        path = self._path(key)
        try:
            got = torch.load(path, map_location=device, weights_only=True)
        except FileNotFoundError:
            self.misses += 1
            return None
        self.hits += 1
        return got["emb"], got.get("layers")

    def put(self, key: str, emb: Tensor, layers: Tensor | None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        value = {"emb": emb.detach().cpu()}
        if layers is not None:
            value["layers"] = layers.detach().cpu()
        torch.save(value, tmp)
        os.replace(tmp, path)


def precision_of(model: torch.nn.Module) -> str:
    """What the model's outputs depend on besides its inputs: parameter dtype, device type and autocast."""
    p = next(model.parameters())
    kind = p.device.type
    amp = torch.is_autocast_enabled(kind) if kind in ("cuda", "cpu") else False
    amp_dtype = torch.get_autocast_dtype(kind) if amp else None
    return f"{p.dtype}/{kind}/{amp_dtype}"


def attach(model, folder: str | Path, model_config: dict[str, Any], path: str | Path, trainable: bool) -> bool:
    """Give a frozen teacher an EmbedCache in `folder`; False (and why, logged) where it cannot have one."""
    if trainable:
        logger.info("teacher_cache: not used, the teacher trains with the student (its embeddings change)")
        return False
    if not hasattr(model, "_embed"):
        logger.info("teacher_cache: not used, a %s has no tower embeddings to cache", getattr(model, "kind", "model"))
        return False
    model.embed_cache = EmbedCache(folder, model_fingerprint(model_config, path))
    logger.info("teacher_cache: the teacher's embeddings are read from / kept in %s", model.embed_cache.dir)
    return True
