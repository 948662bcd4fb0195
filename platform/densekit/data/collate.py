"""The training batch: training-group records in, `TrainBatch` out (texts, ids, teacher scores,
and tokenised inputs for each model that will read it).

A record is a row of records.GROUPS_SCHEMA: {qid, query, positives: [{pid, text, title, score}],
negatives: [...]}. Each query gets a group of G passages, its positive first; negatives are
re-sampled every epoch (`random`, seeded per query and epoch) or taken hardest-first (`descend`,
PROD's data-progressive step). With G = 0 a batch holds queries only (embedding alignment, ADORE).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from densekit.candidates import pid_hash
from densekit.data.records import NEGATIVES, PID, POSITIVES, QID, QUERY, SCORE, TEXT, TITLE
from densekit.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class TrainBatch:
    """One training batch of B queries and B*G passages (group-major, positive first).

    Attributes:
        qids, query_texts: `[B]`.
        pids, passage_texts, passage_titles: `[B*G]`; passages i*G .. i*G+G-1 are query i's group.
        group_size: G (0 for query-only batches).
        positive_pids: per query, every judged-relevant pid (for relevance masks and ADORE).
        passage_ids: `[B*G]` long, hashed pids (candidates.pid_hash), all-gatherable.
        positive_ids: `[B, P]` long hashed positive pids; positive_mask `[B, P]` bool.
        teacher_scores: `[B, G]` float offline teacher scores (from the records' `score`), or None.
        teacher_query_emb: `[B, D]` the teacher's query embeddings read from disk
            (data.teacher_embeddings), or None.
        positive_texts: per query, (text, title) of every judged positive, aligned with
            positive_pids (ADORE encodes positives its index search did not retrieve).
        inputs: tokenised inputs per Tokenization.key (filled by the collator; models tokenise
            on the fly when their key is missing).
    """

    qids: list[str]
    query_texts: list[str]
    pids: list[str]
    passage_texts: list[str]
    passage_titles: list[str]
    group_size: int
    positive_pids: list[list[str]]
    passage_ids: Tensor
    positive_ids: Tensor
    positive_mask: Tensor
    teacher_scores: Tensor | None = None
    inputs: dict[str, dict[str, dict[str, Tensor]]] = field(default_factory=dict)
    positive_texts: list[list[tuple[str, str]]] = field(default_factory=list)
    teacher_query_emb: Tensor | None = None

    def __len__(self) -> int:
        return len(self.qids)

    def tensors(self, device: torch.device | str) -> dict[str, Tensor]:
        """The id tensors on `device` (what candidate sets are built from)."""
        return {
            "passage_ids": self.passage_ids.to(device),
            "positive_ids": self.positive_ids.to(device),
            "positive_mask": self.positive_mask.to(device),
        }

    def to(self, device: torch.device | str) -> TrainBatch:
        """A copy with every tensor on `device`."""
        inputs = {
            k: {n: {t: v.to(device) for t, v in enc.items()} for n, enc in d.items()}
            for k, d in self.inputs.items()
        }
        ts = None if self.teacher_scores is None else self.teacher_scores.to(device)
        return TrainBatch(
            self.qids, self.query_texts, self.pids, self.passage_texts, self.passage_titles, self.group_size,
            self.positive_pids, self.passage_ids.to(device), self.positive_ids.to(device),
            self.positive_mask.to(device), ts, inputs, self.positive_texts,
            None if self.teacher_query_emb is None else self.teacher_query_emb.to(device),
        )  # fmt: skip


class TrainCollator:
    """Turn training-group records into a TrainBatch (a DataLoader `collate_fn` / Ray Data batch fn).

    Args:
        group_size: G passages per query (1 positive + G-1 negatives); 0 = queries only.
        negatives: "random" (a seeded sample per query and epoch) or "descend" (the first G-1 in
            the stored order, i.e. hardest first when mined from a ranking).
        positive: "first" or "random" (seeded like the negatives) among the judged positives.
        seed: base seed; the draw for query q in epoch e depends on (seed, e, q) only, so it is the
            same whatever the worker, shard or batch order.
        teacher_scores: read each passage's `score` into `teacher_scores [B, G]`; a missing
            score is an error naming the query and passage.
        tokenizations: models.tokenization.Tokenization objects to pre-tokenise for (one per
            distinct model input; e.g. [student.tokenization, teacher.tokenization]).
        source: name of the input in error messages (the training-groups table path).
    """

    def __init__(
        self,
        group_size: int,
        negatives: str = "random",
        positive: str = "first",
        seed: int = 0,
        teacher_scores: bool = False,
        tokenizations: Sequence = (),
        source: str = "training groups",
    ):
        if negatives not in ("random", "descend"):
            raise ValueError(f"negatives must be 'random' or 'descend', got {negatives!r}")
        if positive not in ("first", "random"):
            raise ValueError(f"positive must be 'first' or 'random', got {positive!r}")
        if group_size < 0:
            raise ValueError(f"group_size must be >= 0, got {group_size}")
        self.group_size = group_size
        self.negatives = negatives
        self.positive = positive
        self.seed = seed
        self.teacher_scores = teacher_scores
        self.tokenizations = {t.key: t for t in tokenizations}
        self.source = source
        self.epoch = 0
        self.short_groups = 0  # groups that had fewer negatives than G-1 (negatives repeated)

    def set_epoch(self, epoch: int) -> None:
        """Negatives (and random positives) are re-drawn for every epoch."""
        self.epoch = epoch

    def __call__(self, records) -> TrainBatch:
        rows = _rows(records)
        if not rows:
            raise InputError(self.source, None, "empty batch")
        G = self.group_size
        qids, queries, pids, texts, titles, positives, scores = [], [], [], [], [], [], []
        positive_texts: list[list[tuple[str, str]]] = []
        for n, row in enumerate(rows):
            qid = str(row.get(QID, f"<row {n}>"))
            query = row.get(QUERY, row.get(TEXT))
            if not isinstance(query, str):
                raise InputError(
                    self.source, None, f"qid {qid}: expected a query string in '{QUERY}'"
                )
            pos = list(row.get(POSITIVES) or [])
            qids.append(qid)
            queries.append(query)
            positives.append([str(p[PID]) for p in pos])
            positive_texts.append([(p.get(TEXT) or "", p.get(TITLE) or "") for p in pos])
            if G == 0:
                continue
            if not pos:
                raise InputError(
                    self.source, None, f"qid {qid}: no positives (a group needs at least one)"
                )
            negs = list(row.get(NEGATIVES) or [])
            rng = random.Random(f"{self.seed}:{self.epoch}:{qid}")
            chosen = [pos[0] if self.positive == "first" else rng.choice(pos)] + self._negatives(
                qid, negs, rng
            )
            for p in chosen:
                if not isinstance(p.get(TEXT), str):
                    raise InputError(
                        self.source, None, f"qid {qid}, pid {p.get(PID)}: expected passage text"
                    )
                pids.append(str(p[PID]))
                texts.append(p[TEXT])
                titles.append(p.get(TITLE) or "")
                if self.teacher_scores:
                    s = p.get(SCORE)
                    if s is None:
                        raise InputError(
                            self.source,
                            None,
                            f"qid {qid}, pid {p[PID]}: no teacher score (run the `score` step, or set teacher_scores off)",
                        )
                    if not math.isfinite(s):
                        raise InputError(
                            self.source, None, f"qid {qid}, pid {p[PID]}: teacher score is {s}; expected a finite number"
                        )
                    scores.append(float(s))
        P = max(1, max(len(p) for p in positives))
        pos_ids = torch.zeros(len(rows), P, dtype=torch.long)
        pos_mask = torch.zeros(len(rows), P, dtype=torch.bool)
        for i, plist in enumerate(positives):
            if plist:
                pos_ids[i, : len(plist)] = torch.tensor(
                    [pid_hash(p) for p in plist], dtype=torch.long
                )
                pos_mask[i, : len(plist)] = True
        batch = TrainBatch(
            qids=qids,
            query_texts=queries,
            pids=pids,
            passage_texts=texts,
            passage_titles=titles,
            group_size=G,
            positive_pids=positives,
            passage_ids=torch.tensor([pid_hash(p) for p in pids], dtype=torch.long),
            positive_ids=pos_ids,
            positive_mask=pos_mask,
            teacher_scores=torch.tensor(scores, dtype=torch.float32).view(len(rows), G)
            if self.teacher_scores and G
            else None,
            positive_texts=positive_texts,
        )
        for key, tok in self.tokenizations.items():
            batch.inputs[key] = tok.batch(batch)
        return batch

    def _negatives(self, qid: str, negs: list, rng: random.Random) -> list:
        n = self.group_size - 1
        if n == 0:
            return []
        if not negs:
            raise InputError(
                self.source,
                None,
                f"qid {qid}: no negatives, but group_size {self.group_size} needs {n}",
            )
        if len(negs) < n:
            self.short_groups += 1
            if self.short_groups == 1:
                logger.warning(
                    "%s: qid %s has %d negatives for %d slots; repeating them (further cases counted in short_groups)",
                    self.source,
                    qid,
                    len(negs),
                    n,
                )
            order = negs if self.negatives == "descend" else rng.sample(negs, len(negs))
            return [order[i % len(order)] for i in range(n)]
        if self.negatives == "descend":
            return negs[:n]
        return rng.sample(negs, n)


def _rows(records) -> list[Mapping]:
    """Accept a list of dicts, a pandas DataFrame, or a columnar dict (Ray Data numpy batches)."""
    if hasattr(records, "to_dict") and hasattr(records, "columns"):
        return records.to_dict("records")
    if isinstance(records, Mapping):
        cols = list(records)
        n = len(records[cols[0]]) if cols else 0
        return [{c: _plain(records[c][i]) for c in cols} for i in range(n)]
    return list(records)


def _plain(v):
    # numpy object arrays of structs come back as arrays of dicts
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return v.tolist()
    return v
