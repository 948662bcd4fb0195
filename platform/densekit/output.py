"""`ModelOutput`: what every model's forward returns (models compute scores, never losses). A
lowest-floor module (torch and densekit.candidates only): losses import it without loading any model
class; densekit.models.output re-exports it."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from densekit.candidates import Candidates, to_group


@dataclass
class ModelOutput:
    """Scores over a candidate set, the embeddings behind them, and per-layer views when asked.

    Attributes:
        scores: `[B, C]` scores of the B local queries over `candidates` (None: embeddings only,
            e.g. query-only batches for embedding alignment).
        candidates: what the C columns are (mode, target column, relevance, validity).
        query_emb: bi-encoder `[B, D]`; ColBERT `[B, Lq, D]` (L2-normalised tokens); None for
            cross-encoders.
        passage_emb: local passages, bi-encoder `[N, D]`; ColBERT `[N, Ld, D]`.
        query_mask: ColBERT `[B, Lq]`, the query tokens that score (with [MASK] augmentation).
        passage_mask: ColBERT `[N, Ld]`, False on padded document tokens.
        layer_scores: `[L, B, C]` per-layer scores over the same candidates (LEAD). Index l is
            transformer layer `layer_ids[l]`, 0 = the FIRST transformer layer's output (the
            embedding output is excluded), as in LEAD's code.
        layer_ids: the layer index of each row of `layer_scores`.
    """

    scores: Tensor | None = None
    candidates: Candidates | None = None
    query_emb: Tensor | None = None
    passage_emb: Tensor | None = None
    query_mask: Tensor | None = None
    passage_mask: Tensor | None = None
    layer_scores: Tensor | None = None
    layer_ids: list[int] = field(default_factory=list)

    @property
    def mode(self) -> str | None:
        return None if self.candidates is None else self.candidates.mode

    @property
    def num_layers(self) -> int:
        return 0 if self.layer_scores is None else self.layer_scores.shape[0]

    def in_mode(self, mode: str, layers: bool = False) -> tuple[Tensor, Candidates]:
        """Scores (or layer scores `[L, B, C]` with `layers`) over `mode`'s candidates.

        Global scores contain every query's own group, so they can be cut down to group mode;
        nothing else converts.

        Raises:
            ValueError: the scores were computed over candidates that do not contain `mode`'s.
        """
        if self.scores is None or self.candidates is None:
            raise ValueError("this output has no scores (it was computed without passages)")
        s = self.layer_scores if layers else self.scores
        if s is None:
            raise ValueError(
                "this output has no per-layer scores: run the model with output_layers=True"
            )
        if self.candidates.mode == mode:
            return s, self.candidates
        if mode == "group" and self.candidates.mode == "global":
            return to_group(s, self.candidates)
        raise ValueError(
            f"scores were computed over {self.candidates.mode} candidates, which do not contain {mode} candidates"
        )
