"""Bi-encoder (DE / BERT_DOT): pooled vector per text (CLS or mean), optional linear head
(+LayerNorm), dot or cosine score; shared or separate query/passage towers.

Saved directories also hold the sentence-transformers files, so
`sentence_transformers.SentenceTransformer(dir)` gives the same embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from densekit.candidates import all_gather, global_candidates, group_candidates, score_retrieved
from densekit.models.encoder import DenseModel, Head, Tower
from densekit.models.output import ModelOutput
from densekit.models.spec import ModelSpec


def pool(hidden: Tensor, attention_mask: Tensor, mode: str) -> Tensor:
    """`[N, L, H]` token states -> `[N, H]`: the first token (cls) or the mean over real tokens."""
    if mode == "cls":
        return hidden[:, 0]
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [N, L, 1]
    # Same clamp as sentence-transformers' Pooling, so embeddings match it exactly.
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class BiEncoder(DenseModel):
    """Queries and passages encoded separately; score = q·p (or cosine)."""

    kind = "bi_encoder"
    embed_cache = None  # an EmbedCache for a frozen teacher (models.embed_cache.attach)

    @classmethod
    def _make_head(cls, spec: ModelSpec, hidden: int) -> Head | None:
        if spec.head_dim is None:
            return None
        return Head(hidden, spec.head_dim, layernorm=spec.head_layernorm)

    @property
    def dim(self) -> int:
        """Embedding size: the head's output size, else the encoder's hidden size."""
        return self.spec.head_dim or self.query_tower.hidden_size

    # --- the encode/search API -------------------------------------------------------------------

    def tokenize_queries(self, texts: list[str]) -> dict[str, Tensor]:
        """Queries -> tokenizer outputs `[B, Lq]` (prefix and max_query_length from the spec)."""
        return self.tokenization.queries(texts)

    def tokenize_passages(
        self, texts: list[str], titles: list[str] | None = None
    ) -> dict[str, Tensor]:
        """Passages -> tokenizer outputs `[N, Lp]`; titles join as spec.title_mode says."""
        return self.tokenization.passages(texts, titles)

    def _embed(
        self, tower: Tower, enc: dict[str, Tensor], all_layers: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        cache = self.embed_cache
        if cache is not None and not torch.is_grad_enabled():  # a frozen teacher: read, or run and keep
            from densekit.models.embed_cache import precision_of

            side = "query" if tower is self.query_tower else "passage"
            key = cache.key(side, enc, all_layers, precision_of(self))
            got = cache.get(key, enc["attention_mask"].device)
            if got is None:
                got = self._run_embed(tower, enc, all_layers)
                cache.put(key, *got)
            return got
        return self._run_embed(tower, enc, all_layers)

    def _run_embed(
        self, tower: Tower, enc: dict[str, Tensor], all_layers: bool
    ) -> tuple[Tensor, Tensor | None]:
        hidden, layers = tower.hidden(enc, all_layers)
        mask = enc["attention_mask"]
        emb = pool(hidden, mask, self.spec.pooling)
        if tower.head is not None:
            emb = tower.head(emb)
        if self.spec.normalized:
            emb = F.normalize(emb, dim=-1)
        layer_emb = None
        if layers is not None:
            # Per-layer views (LEAD): pooled layer-i states, no head; normalised for cosine models.
            layer_emb = torch.stack([pool(h, mask, self.spec.pooling) for h in layers])  # [L, N, H]
            if self.spec.normalized:
                layer_emb = F.normalize(layer_emb, dim=-1)
        return emb, layer_emb

    def encode_queries(self, **enc: Tensor) -> Tensor:
        """Tokenised queries -> embeddings `[B, D]`."""
        return self._embed(self.query_tower, enc)[0]

    def encode_passages(self, **enc: Tensor) -> Tensor:
        """Tokenised passages -> embeddings `[N, D]`."""
        return self._embed(self.passage_tower, enc)[0]

    def similarity(self, q: Tensor, p: Tensor) -> Tensor:
        """All-pairs scores `[B, N]` of embeddings `[B, D]` and `[N, D]` (normalised already for cosine)."""
        return q @ p.T

    # --- training --------------------------------------------------------------------------------

    def forward(
        self,
        batch,
        candidates: str = "global",
        output_layers: bool = False,
        retriever: Callable | None = None,
    ) -> ModelOutput:
        """Score a TrainBatch.

        Args:
            batch: a densekit.data.collate.TrainBatch (queries `[B]`, passages `[B*G]`).
            candidates: "global" (every local query against the passages of all ranks),
                "group" (each query against its own G passages) or "retrieved" (ADORE: each
                query against the top-k of a fixed index, found by `retriever`).
            output_layers: also return `layer_scores` `[L, B, C]` (pooled layer-i vectors).
            retriever: for "retrieved": `retriever(query_emb.detach(), batch) ->
                (candidate_emb [B, C, D], Candidates)`, e.g. candidates.matrix_retriever or a
                FAISS search; called inside forward so DDP sees one forward pass.

        Returns:
            ModelOutput with scores `[B, C]`, query_emb `[B, D]`, passage_emb `[N, D]` (local).
        """
        inputs = self.inputs(batch)
        q, q_layers = self._embed(self.query_tower, inputs["queries"], output_layers)
        if candidates == "retrieved":
            if retriever is None:
                raise ValueError(
                    "retrieved candidates need a retriever (a search over a fixed index)"
                )
            cand_emb, cands = retriever(q.detach(), batch)
            scores = score_retrieved(q, cand_emb.to(q.device), cands.to(q.device))  # [B, C]
            return ModelOutput(scores=scores, candidates=cands.to(q.device), query_emb=q)
        if "passages" not in inputs:
            return ModelOutput(query_emb=q)
        p, p_layers = self._embed(self.passage_tower, inputs["passages"], output_layers)
        ids = batch.tensors(q.device)
        layer_ids = list(range(q_layers.shape[0])) if q_layers is not None else []
        if candidates == "group":
            cands = group_candidates(
                ids["passage_ids"], ids["positive_ids"], ids["positive_mask"], batch.group_size
            )
            B, G = q.shape[0], batch.group_size
            scores = torch.einsum("bd,bgd->bg", q, p.view(B, G, -1))  # [B, G]
            layer_scores = None
            if q_layers is not None:
                L = q_layers.shape[0]
                layer_scores = torch.einsum(
                    "lbd,lbgd->lbg", q_layers, p_layers.view(L, B, G, -1)
                )  # [L, B, G]
        elif candidates == "global":
            cands, _ = global_candidates(
                ids["passage_ids"], ids["positive_ids"], ids["positive_mask"], batch.group_size
            )
            scores = q @ all_gather(p).T  # [B, C]
            layer_scores = None
            if q_layers is not None:
                p_all = all_gather(p_layers.transpose(0, 1)).transpose(0, 1)  # [L, C, H]
                layer_scores = q_layers @ p_all.transpose(1, 2)  # [L, B, C]
        else:
            raise ValueError(
                f"a bi-encoder scores 'global' or 'group' candidates, not {candidates!r}"
            )
        return ModelOutput(
            scores=scores,
            candidates=cands,
            query_emb=q,
            passage_emb=p,
            layer_scores=layer_scores,
            layer_ids=layer_ids,
        )

    def _save_extra(self, directory: Path) -> None:
        from densekit.models.st_format import write_sentence_transformers

        if self.spec.shared:
            write_sentence_transformers(directory, self.spec, self.query_tower)
        else:
            write_sentence_transformers(
                directory / "query",
                self.spec,
                self.query_tower,
                self.spec.query_prefix,
                self.spec.max_query_length,
            )
            write_sentence_transformers(
                directory / "passage",
                self.spec,
                self.passage_tower,
                self.spec.passage_prefix,
                self.spec.max_passage_length,
            )
