"""ColBERT (late interaction): L2-normalised token embeddings, optional linear compression,
score = Σ over query tokens of the max over document tokens of q·d, padded document tokens masked.

Queries are padded to max_query_length with [MASK] tokens (query augmentation): they are not
attended to, but their output embeddings take part in MaxSim, as in ColBERT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from densekit.candidates import all_gather, global_candidates, group_candidates
from densekit.models.encoder import DenseModel, Head, Tower
from densekit.models.output import ModelOutput
from densekit.models.spec import ModelSpec

# Cap on the [B, chunk, Lq, Ld] similarity block, in elements (~256 MB in fp32).
_MAXSIM_BLOCK = 1 << 26


def maxsim(q: Tensor, q_mask: Tensor, d: Tensor, d_mask: Tensor) -> Tensor:
    """All-pairs MaxSim.

    Args:
        q: `[B, Lq, D]` query token embeddings; q_mask `[B, Lq]` (tokens that score).
        d: `[N, Ld, D]` document token embeddings; d_mask `[N, Ld]` (False on padding).

    Returns:
        `[B, N]`: score[b, n] = Σ_i q_mask[b,i] · max_{j: d_mask[n,j]} q[b,i]·d[n,j].
    """
    B, Lq, _ = q.shape
    N, Ld, _ = d.shape
    chunk = max(1, _MAXSIM_BLOCK // max(1, B * Lq * Ld))
    qm = q_mask.to(q.dtype)
    out = []
    for s in range(0, N, chunk):
        sim = torch.einsum("bid,njd->bnij", q, d[s : s + chunk])  # [B, n, Lq, Ld]
        sim = sim.masked_fill(~d_mask[s : s + chunk].bool()[None, :, None, :], float("-inf"))
        out.append((sim.max(-1).values * qm[:, None, :]).sum(-1))  # [B, n]
    return torch.cat(out, dim=1)


def maxsim_group(q: Tensor, q_mask: Tensor, d: Tensor, d_mask: Tensor) -> Tensor:
    """MaxSim of each query against its own group: q `[B, Lq, D]`, d `[B, G, Ld, D]` -> `[B, G]`."""
    sim = torch.einsum("bid,bgjd->bgij", q, d)  # [B, G, Lq, Ld]
    sim = sim.masked_fill(~d_mask.bool()[:, :, None, :], float("-inf"))
    return (sim.max(-1).values * q_mask.to(q.dtype)[:, None, :]).sum(-1)


class ColBERT(DenseModel):
    """Late-interaction model; `encode_*` return (token embeddings, mask)."""

    kind = "colbert"

    @classmethod
    def _make_head(cls, spec: ModelSpec, hidden: int) -> Head | None:
        # ColBERT's compression layer has no bias.
        return None if spec.colbert_dim is None else Head(hidden, spec.colbert_dim, bias=False)

    @property
    def dim(self) -> int:
        return self.spec.colbert_dim or self.query_tower.hidden_size

    def tokenize_queries(self, texts: list[str]) -> dict[str, Tensor]:
        """Queries `[B, Lq]`, [MASK]-augmented to max_query_length; `token_mask` marks scoring tokens."""
        return self.tokenization.queries(texts)

    def tokenize_passages(
        self, texts: list[str], titles: list[str] | None = None
    ) -> dict[str, Tensor]:
        """Passages `[N, Ld]` padded to the longest; `token_mask` = attention mask."""
        return self.tokenization.passages(texts, titles)

    def _tokens(self, tower: Tower, enc: dict[str, Tensor], all_layers: bool = False):
        hidden, layers = tower.hidden(enc, all_layers)
        mask = enc.get("token_mask", enc["attention_mask"]).bool()
        emb = tower.head(hidden) if tower.head is not None else hidden
        emb = F.normalize(emb, dim=-1) * mask.unsqueeze(-1)  # [N, L, D], padding zeroed
        layer_emb = None
        if layers is not None:
            # Layer-i views (LEAD): the raw layer-i token states, L2-normalised, no compression.
            layer_emb = F.normalize(torch.stack(layers), dim=-1) * mask.unsqueeze(
                -1
            )  # [Lyr, N, L, H]
        return emb, mask, layer_emb

    def encode_queries(self, **enc: Tensor) -> tuple[Tensor, Tensor]:
        """Tokenised queries -> (embeddings `[B, Lq, D]`, scoring mask `[B, Lq]` bool)."""
        emb, mask, _ = self._tokens(self.query_tower, enc)
        return emb, mask

    def encode_passages(self, **enc: Tensor) -> tuple[Tensor, Tensor]:
        """Tokenised passages -> (embeddings `[N, Ld, D]`, mask `[N, Ld]` bool, False on padding)."""
        emb, mask, _ = self._tokens(self.passage_tower, enc)
        return emb, mask

    @staticmethod
    def maxsim(q: Tensor, q_mask: Tensor, d: Tensor, d_mask: Tensor) -> Tensor:
        """All-pairs MaxSim `[B, N]`; see the module-level `maxsim`."""
        return maxsim(q, q_mask, d, d_mask)

    def forward(
        self, batch, candidates: str = "global", output_layers: bool = False
    ) -> ModelOutput:
        """Score a TrainBatch over "global" or "group" candidates (see BiEncoder.forward).

        Returns:
            ModelOutput with scores `[B, C]`, query_emb `[B, Lq, D]` + query_mask, passage_emb
            `[N, Ld, D]` + passage_mask (local), and layer_scores `[L, B, C]` when asked.
        """
        inputs = self.inputs(batch)
        q, qm, q_layers = self._tokens(self.query_tower, inputs["queries"], output_layers)
        if "passages" not in inputs:
            return ModelOutput(query_emb=q, query_mask=qm)
        d, dm, d_layers = self._tokens(self.passage_tower, inputs["passages"], output_layers)
        ids = batch.tensors(q.device)
        layer_scores = None
        if candidates == "group":
            cands = group_candidates(
                ids["passage_ids"], ids["positive_ids"], ids["positive_mask"], batch.group_size
            )
            B, G = q.shape[0], batch.group_size
            scores = maxsim_group(q, qm, d.view(B, G, *d.shape[1:]), dm.view(B, G, -1))
            if q_layers is not None:
                layer_scores = torch.stack(
                    [
                        maxsim_group(ql, qm, dl.view(B, G, *dl.shape[1:]), dm.view(B, G, -1))
                        for ql, dl in zip(q_layers, d_layers)
                    ]
                )  # [L, B, G]
        elif candidates == "global":
            cands, _ = global_candidates(
                ids["passage_ids"], ids["positive_ids"], ids["positive_mask"], batch.group_size
            )
            # Token counts differ between ranks: pad the token axis before gathering.
            d_all = all_gather(d, pad_dim=1)
            dm_all = all_gather(dm.long(), pad_dim=1).bool()
            scores = maxsim(q, qm, d_all, dm_all)
            if q_layers is not None:
                dl_all = all_gather(d_layers.transpose(0, 1), pad_dim=2).transpose(
                    0, 1
                )  # [L, C, Ld, H]
                layer_scores = torch.stack(
                    [maxsim(ql, qm, dl, dm_all) for ql, dl in zip(q_layers, dl_all)]
                )
        else:
            raise ValueError(f"ColBERT scores 'global' or 'group' candidates, not {candidates!r}")
        layer_ids = list(range(q_layers.shape[0])) if q_layers is not None else []
        return ModelOutput(
            scores=scores, candidates=cands, query_emb=q, passage_emb=d, query_mask=qm, passage_mask=dm,
            layer_scores=layer_scores, layer_ids=layer_ids,
        )  # fmt: skip
