"""Cross-encoder (BERT_CAT): `[CLS] q [SEP] d [SEP]` -> linear head on the CLS vector -> one logit.

The head is a plain Linear(hidden, 1) on the last layer's CLS (no pooler), as LEAD's and PROD's
rerankers; the same head on layer i's CLS gives LEAD's per-layer scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from densekit.candidates import group_candidates
from densekit.models.encoder import DenseModel, Head
from densekit.models.output import ModelOutput
from densekit.models.spec import ModelSpec


class CrossEncoder(DenseModel):
    """Scores (query, passage) pairs jointly; only per-query groups (mode 2) make sense."""

    kind = "cross_encoder"

    def __init__(self, spec: ModelSpec, query_tower, passage_tower=None):
        if not spec.shared:
            raise ValueError("a cross-encoder has one tower: set shared=true")
        super().__init__(spec, query_tower, passage_tower)

    @classmethod
    def _make_head(cls, spec: ModelSpec, hidden: int) -> Head | None:
        return Head(hidden, 1)

    def tokenize_pairs(
        self, queries: list[str], passages: list[str], titles: list[str] | None = None
    ) -> dict[str, Tensor]:
        """Pairs `[N, L]`: `[CLS] q [SEP] (title [SEP]) d [SEP]`, at most max_query + max_passage tokens."""
        return self.tokenization.pairs(queries, passages, titles)

    def _logits(
        self, enc: dict[str, Tensor], all_layers: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        tower = self.query_tower
        hidden, layers = tower.hidden(enc, all_layers)
        logits = tower.head(hidden[:, 0]).squeeze(-1)  # [N]
        layer_logits = None
        if layers is not None:
            layer_logits = tower.head(torch.stack([h[:, 0] for h in layers])).squeeze(-1)  # [L, N]
        return logits, layer_logits

    def score_pairs(self, **enc: Tensor) -> Tensor:
        """Tokenised pairs -> scores `[N]`."""
        return self._logits(enc)[0]

    def forward(self, batch, candidates: str = "group", output_layers: bool = False) -> ModelOutput:
        """Score each query's group: scores `[B, G]` (and layer_scores `[L, B, G]` when asked)."""
        if candidates != "group":
            raise ValueError(
                f"a cross-encoder scores each query's own group only ('group'), not {candidates!r}"
            )
        inputs = self.inputs(batch)
        if "pairs" not in inputs:
            raise ValueError("a cross-encoder needs passages: this batch holds queries only")
        B, G = len(batch), batch.group_size
        logits, layer_logits = self._logits(inputs["pairs"], output_layers)
        ids = batch.tensors(logits.device)
        cands = group_candidates(ids["passage_ids"], ids["positive_ids"], ids["positive_mask"], G)
        layer_scores = None if layer_logits is None else layer_logits.view(-1, B, G)
        layer_ids = [] if layer_logits is None else list(range(layer_logits.shape[0]))
        return ModelOutput(
            scores=logits.view(B, G),
            candidates=cands,
            layer_scores=layer_scores,
            layer_ids=layer_ids,
        )
