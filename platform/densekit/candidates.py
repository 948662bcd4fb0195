"""Candidate sets: which passages each query is scored against, and the cross-rank gather.

Three modes (METHODS.md "Candidate sets"):
    global     every query against every passage of the batch, all-gathered across DDP ranks
               (its positive, the other queries' positives, all hard negatives)
    group      each query against its own group [pos, neg_1 .. neg_{G-1}]
    retrieved  each query against the top-k of a fixed index, missing positives appended (ADORE)

A `Candidates` object says what the columns of a `[B, C]` score matrix are. Models compute the
scores; losses read `Candidates` for targets and relevance masks. Nothing here runs a model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

MODES = ("global", "group", "retrieved")


@dataclass
class Candidates:
    """The columns of a score matrix `[B, C]` over one candidate set.

    Attributes:
        mode: "global", "group" or "retrieved".
        target: `[B]` long, the column of each query's own (sampled) positive.
        relevant: `[B, C]` bool, candidate judged relevant to the query (includes `target`).
        valid: `[B, C]` bool, False for padding columns (retrieved lists of unequal length).
        group_index: `[B, G]` long, global mode only: the columns of each query's own group,
            positive first, so a global score matrix can be cut down to group mode.
        ranks: `[B, C]` long, retrieved mode only: 1-based rank in the retrieved list (appended
            positives rank after the retrieved ones).
    """

    mode: str
    target: Tensor
    relevant: Tensor
    valid: Tensor
    group_index: Tensor | None = None
    ranks: Tensor | None = None

    def to(self, device: torch.device | str) -> Candidates:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Candidates(
            self.mode,
            move(self.target),
            move(self.relevant),
            move(self.valid),
            move(self.group_index),
            move(self.ranks),
        )


def pid_hash(pid: str) -> int:
    """A stable signed 64-bit id for a string pid, so relevance masks can be all-gathered as tensors."""
    return int.from_bytes(
        hashlib.blake2b(pid.encode("utf-8"), digest_size=8).digest(), "little", signed=True
    )


# --- distributed gather ----------------------------------------------------------------------------


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for each slice and returns the own slice.

    With DDP averaging over W ranks this gives exactly the gradient of the single-process loss on
    the concatenated batch: a remote query's loss reaches this rank's passages through the
    all-reduce. (The plain "all_gather, then put the local tensor back" trick keeps only the
    gradient of this rank's queries on its passages: `cross_rank_grad=False`.)
    """

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int]) -> Tensor:  # type: ignore[override]
        rank, ws = world()
        ctx.rank, ctx.sizes = rank, sizes
        parts = [x.new_empty((max(sizes), *x.shape[1:])) for _ in range(ws)]
        dist.all_gather(parts, _pad0(x, max(sizes)).contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def _pad0(x: Tensor, n: int) -> Tensor:
    if x.shape[0] == n:
        return x
    return torch.cat([x, x.new_zeros((n - x.shape[0], *x.shape[1:]))], dim=0)


def _pad_dim(x: Tensor, dim: int, n: int, value: float = 0) -> Tensor:
    if x.shape[dim] == n:
        return x
    shape = list(x.shape)
    shape[dim] = n - x.shape[dim]
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


def gather_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's local row count (uneven last batches are allowed)."""
    rank, ws = world()
    if ws == 1:
        return [n]
    t = torch.tensor([n], device=device, dtype=torch.long)
    out = [torch.zeros_like(t) for _ in range(ws)]
    dist.all_gather(out, t)
    return [int(s.item()) for s in out]


def all_gather(
    x: Tensor, cross_rank_grad: bool = True, pad_dim: int | None = None, pad_value: float = 0
) -> Tensor:
    """Concatenate `x` from every rank along dim 0, keeping the autograd graph of the local slice.

    Args:
        x: `[n_r, ...]`; n_r may differ between ranks.
        cross_rank_grad: also return other ranks' gradients for the local slice (exact DDP
            gradients, see `_GatherWithGrad`); False = the local slice only.
        pad_dim: a second dimension whose size may differ between ranks (ColBERT token axis);
            it is padded with `pad_value` to the largest size first.

    Returns:
        `[sum_r n_r, ...]`, rank 0's rows first. Without a process group, `x` itself.
    """
    rank, ws = world()
    if ws == 1:
        return x
    if pad_dim is not None:
        m = torch.tensor([x.shape[pad_dim]], device=x.device, dtype=torch.long)
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
        x = _pad_dim(x, pad_dim, int(m.item()), pad_value)
    sizes = gather_sizes(x.shape[0], x.device)
    if x.requires_grad and cross_rank_grad:
        return _GatherWithGrad.apply(x, sizes)
    parts = [x.new_empty((max(sizes), *x.shape[1:])) for _ in range(ws)]
    dist.all_gather(parts, _pad0(x.detach(), max(sizes)).contiguous())
    parts = [p[:n] for p, n in zip(parts, sizes)]
    parts[rank] = x  # the local slice keeps its graph
    return torch.cat(parts, dim=0)


# --- the three modes -------------------------------------------------------------------------------


def _relevance(cand_ids: Tensor, positive_ids: Tensor, positive_mask: Tensor) -> Tensor:
    # [B, C, 1] == [B, 1, P] -> [B, C, P] -> any over P -> [B, C]
    hit = (cand_ids.unsqueeze(-1) == positive_ids.unsqueeze(1)) & positive_mask.unsqueeze(1)
    return hit.any(-1)


def global_candidates(
    passage_ids: Tensor, positive_ids: Tensor, positive_mask: Tensor, group_size: int
) -> tuple[Candidates, Tensor]:
    """Mode 1: the local queries against the passages of every rank.

    Args:
        passage_ids: `[B*G]` long, hashed pids of the local passages, group-major, positive first.
        positive_ids: `[B, P]` long, hashed pids of all judged positives of each local query.
        positive_mask: `[B, P]` bool, False for padding.
        group_size: G.

    Returns:
        (candidates over `C = sum over ranks of B_r*G` columns, gathered passage ids `[C]`).
    """
    B = positive_ids.shape[0]
    _check_len("passage_ids", passage_ids, B * group_size)
    rank, ws = world()
    all_ids = all_gather(passage_ids)
    offset = sum(gather_sizes(passage_ids.shape[0], passage_ids.device)[:rank]) if ws > 1 else 0
    dev = passage_ids.device
    # [B, G]: local group g of query i sits at offset + i*G + g in the gathered passages
    group_index = (
        offset
        + torch.arange(B, device=dev).unsqueeze(1) * group_size
        + torch.arange(group_size, device=dev)
    )
    relevant = _relevance(all_ids.unsqueeze(0).expand(B, -1), positive_ids, positive_mask)
    target = group_index[:, 0]
    relevant[torch.arange(B, device=dev), target] = True
    valid = torch.ones_like(relevant)
    return Candidates("global", target, relevant, valid, group_index=group_index), all_ids


def group_candidates(
    passage_ids: Tensor, positive_ids: Tensor, positive_mask: Tensor, group_size: int
) -> Candidates:
    """Mode 2: each query against its own group `[B, G]`, positive in column 0."""
    B = positive_ids.shape[0]
    _check_len("passage_ids", passage_ids, B * group_size)
    ids = passage_ids.view(B, group_size)
    relevant = _relevance(ids, positive_ids, positive_mask)
    relevant[:, 0] = True
    target = torch.zeros(B, dtype=torch.long, device=passage_ids.device)
    return Candidates("group", target, relevant, torch.ones_like(relevant))


def retrieved_candidates(
    retrieved_pids: Sequence[Sequence[str]],
    positive_pids: Sequence[Sequence[str]],
    append: str = "missing",
    device: torch.device | str = "cpu",
) -> tuple[list[list[str]], Candidates]:
    """Mode 3 (ADORE): the top-k retrieved from a fixed index, positives not retrieved appended.

    Args:
        retrieved_pids: per query, the retrieved pids in rank order (k each, or fewer).
        positive_pids: per query, every judged-relevant pid.
        append: "missing" (METHODS.md: every positive not retrieved is appended below the list)
            or "if_none" (DRhard's code: positives are appended only when none was retrieved).

    Returns:
        (candidate pids per query, in column order; Candidates with `ranks` 1-based and `valid`
        False on padding). The caller looks up the candidates' embeddings in the fixed index and
        scores them (`score_retrieved`). `target` is the best-ranked positive.
    """
    if append not in ("missing", "if_none"):
        raise ValueError(f"append must be 'missing' or 'if_none', got {append!r}")
    if len(retrieved_pids) != len(positive_pids):
        raise ValueError(
            f"retrieved_pids has {len(retrieved_pids)} queries but positive_pids has {len(positive_pids)}"
        )
    lists: list[list[str]] = []
    labels: list[list[bool]] = []
    for i, (got, pos) in enumerate(zip(retrieved_pids, positive_pids)):
        pos_set = set(pos)
        if not pos_set:
            raise ValueError(
                f"query {i} has no positive pid: ADORE needs at least one judged-relevant passage"
            )
        got = list(got)
        lab = [p in pos_set for p in got]
        missing = [p for p in dict.fromkeys(pos) if p not in set(got)]
        if append == "missing" or not any(lab):
            got += missing
            lab += [True] * len(missing)
        lists.append(got)
        labels.append(lab)
    B, C = len(lists), max(len(x) for x in lists)
    relevant = torch.zeros(B, C, dtype=torch.bool)
    valid = torch.zeros(B, C, dtype=torch.bool)
    for i, lab in enumerate(labels):
        relevant[i, : len(lab)] = torch.tensor(lab, dtype=torch.bool)
        valid[i, : len(lab)] = True
    ranks = torch.arange(1, C + 1).expand(B, C).clone()
    target = relevant.float().argmax(1)  # first relevant column = best-ranked positive
    cands = Candidates("retrieved", target, relevant, valid, ranks=ranks).to(device)
    return lists, cands


def score_retrieved(query_emb: Tensor, candidate_emb: Tensor, candidates: Candidates) -> Tensor:
    """Scores `[B, C]` of queries `[B, D]` against their retrieved candidates `[B, C, D]` (dot).

    Padding columns (`valid` False) score 0; every loss masks them out with `valid`.
    """
    if candidate_emb.dim() != 3 or candidate_emb.shape[:2] != candidates.valid.shape:
        raise ValueError(
            f"candidate_emb must be [B, C, D] = [{candidates.valid.shape[0]}, {candidates.valid.shape[1]}, D], got {list(candidate_emb.shape)}"
        )
    scores = torch.einsum("bd,bcd->bc", query_emb, candidate_emb.to(query_emb.dtype))  # [B, C]
    return scores.masked_fill(~candidates.valid, 0.0)


def matrix_retriever(doc_emb: Tensor, doc_pids: Sequence[str], k: int, append: str = "missing"):
    """An exact top-k retriever over a fixed embedding matrix, for ADORE on small corpora and tests.

    Args:
        doc_emb: `[N, D]` document embeddings (fixed: no gradient).
        doc_pids: the N pids, in row order.
        k: documents retrieved per query.
        append: see `retrieved_candidates`.

    Returns:
        `retriever(query_emb [B, D], batch) -> (candidate_emb [B, C, D], Candidates)`, the
        callable BiEncoder.forward(candidates="retrieved") expects. A FAISS index does the same
        search at scale.
    """
    doc_emb = doc_emb.detach()
    row = {p: i for i, p in enumerate(doc_pids)}

    def retrieve(query_emb: Tensor, batch) -> tuple[Tensor, Candidates]:
        top = (
            (query_emb.to(doc_emb.dtype) @ doc_emb.T).topk(min(k, len(doc_pids)), dim=1).indices
        )  # [B, k]
        got = [[doc_pids[i] for i in r] for r in top.tolist()]
        lists, cands = retrieved_candidates(got, batch.positive_pids, append=append)
        missing = {p for pl in batch.positive_pids for p in pl if p not in row}
        if missing:
            raise ValueError(f"positive pid(s) not in the index: {sorted(missing)[:5]}")
        idx = torch.zeros(cands.valid.shape, dtype=torch.long)
        for i, lst in enumerate(lists):
            idx[i, : len(lst)] = torch.tensor([row[p] for p in lst])
        return doc_emb[idx], cands  # [B, C, D]

    return retrieve


def to_group(scores: Tensor, candidates: Candidates) -> tuple[Tensor, Candidates]:
    """Cut global-mode scores `[..., B, C]` down to each query's own group `[..., B, G]`."""
    if candidates.mode == "group":
        return scores, candidates
    if candidates.mode != "global" or candidates.group_index is None:
        raise ValueError(f"cannot turn {candidates.mode} candidates into per-query groups")
    idx = candidates.group_index  # [B, G]
    lead = scores.shape[:-2]
    g_scores = torch.gather(scores, -1, idx.expand(*lead, *idx.shape))  # [..., B, G]
    rel = torch.gather(candidates.relevant, 1, idx)
    return g_scores, Candidates(
        "group", torch.zeros_like(candidates.target), rel, torch.ones_like(rel)
    )


def _check_len(name: str, t: Tensor, n: int) -> None:
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be 1-D of length {n}, got shape {list(t.shape)}")
