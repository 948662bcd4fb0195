"""One training step's loss (scores over the candidate set, then the weighted losses) and the
in-process dev evaluation the training loop runs on rank 0.

Kept apart from the worker loop so both can be tested without Ray Train: `compute_loss` on a batch, and
`evaluate_model` on a model and a small dev set.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from densekit.config import EvalConfig
from densekit.errors import ConfigError
from densekit.metrics import EVAL_METRICS

logger = logging.getLogger(__name__)


# --- the loss of one batch -------------------------------------------------------------------------


def compute_loss(module, batch, mode: str, teacher_mode=None, teacher=None, frozen=None, retriever=None):
    """Scores of the student (and teacher, and LwF's frozen student) over the candidate sets the
    losses need, then the weighted sum of the configured losses.

    Args:
        module: train.TrainModule (student, jointly trained teacher or None, objective).
        batch: a TrainBatch on the module's device.
        mode: the student's candidates: "global", "group", "retrieved" (ADORE) or "none"
            (queries only: embedding alignment).
        teacher_mode: the teacher's candidates ("group" for a cross-encoder teacher).
        teacher: the online teacher (frozen: run under no_grad; joint: module.teacher).
        frozen: the stage's frozen starting student (LwF's reference).
        retriever: `index_retriever(...)` over the fixed index (mode "retrieved").

    Returns:
        (total loss, {loss name: unweighted value}).
    """
    objective = module.objective
    layers = objective.needs_layers
    student_out = _forward(module.student, batch, mode, layers, retriever)
    teacher_out = None
    if teacher is not None:
        t_mode = teacher_mode or ("group" if teacher.kind == "cross_encoder" else mode)
        if module.teacher is not None:  # trained jointly: gradients flow into it
            teacher_out = _forward(module.teacher, batch, t_mode, layers, None)
        else:
            with torch.no_grad():
                teacher_out = _forward(teacher, batch, t_mode, layers, None)
    if teacher_out is None and getattr(batch, "teacher_query_emb", None) is not None:
        from densekit.output import ModelOutput

        teacher_out = ModelOutput(query_emb=batch.teacher_query_emb)  # read from disk, not run
    reference = None
    if frozen is not None:
        with torch.no_grad():
            reference = _forward(frozen, batch, mode, False, retriever)
    total = objective(student_out, batch, teacher=teacher_out, reference=reference)
    return total, dict(objective.last_terms)


def _forward(model, batch, mode: str, layers: bool, retriever):
    if mode == "retrieved":
        return model(batch, candidates="retrieved", retriever=retriever)
    if mode == "none" or batch.group_size == 0:
        return model(batch, candidates="global", output_layers=False)
    return model(batch, candidates=mode, output_layers=layers)


def index_retriever(searcher, k: int, append: str, model):
    """ADORE's retriever: the top-k of a fixed index for the batch's (detached) query embeddings.

    Returns `retrieve(query_emb [B, D], batch) -> (candidate_emb [B, C, D], Candidates)`, what
    BiEncoder.forward(candidates="retrieved") calls. Retrieved documents come with their index
    vectors; judged positives the search missed are appended below rank k (`append`), encoded by
    the model's frozen passage tower, which is the encoder the index was built with.

    Args:
        searcher: a pipelines.search.ShardedSearcher over the fixed document index.
        k: documents retrieved per query.
        append: "missing" or "if_none" (see candidates.retrieved_candidates).
        model: the student (its passage tower must be frozen: train_query_encoder_only).
    """
    from densekit.candidates import retrieved_candidates

    def retrieve(query_emb, batch):
        q = query_emb.detach().float().cpu().numpy()
        _, pids, vectors = searcher.search(q, k, return_vectors=True)  # [B, k], [B, k, D]
        got = [[p for p in row if p is not None] for row in pids]
        lists, cands = retrieved_candidates(got, batch.positive_pids, append=append)
        B, C = cands.valid.shape
        emb = torch.zeros(B, C, vectors.shape[2])
        missing: list[tuple[int, int, str, str]] = []  # (query, column, text, title)
        for i, (row, full) in enumerate(zip(got, lists)):
            emb[i, : len(row)] = torch.from_numpy(vectors[i, : len(row)])
            texts = dict(zip(batch.positive_pids[i], batch.positive_texts[i]))
            for j in range(len(row), len(full)):
                text, title = texts[full[j]]
                missing.append((i, j, text, title))
        if missing:
            with torch.no_grad():
                enc = model.tokenize_passages([m[2] for m in missing], [m[3] for m in missing])
                vecs = model.encode_passages(**{n: t.to(model.device) for n, t in enc.items()})
            for (i, j, _, _), v in zip(missing, vecs.float().cpu()):
                emb[i, j] = v
        return emb, cands

    return retrieve


# --- dev evaluation (rank 0, in-process) -----------------------------------------------------------


@torch.no_grad()
def encode_texts(model, texts: list[str], side: str, device, batch_size: int = 128, titles=None) -> np.ndarray:
    """Embeddings `[N, D]` float32 of `texts` as queries or passages, batched, sorted by length
    (less padding), returned in the input order."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), 0), dtype=np.float32)
    chunks = []
    for i in range(0, len(texts), batch_size):
        idx = order[i : i + batch_size]
        chunk = [texts[j] for j in idx]
        if side == "query":
            enc = model.tokenize_queries(chunk)
            emb = model.encode_queries(**{k: v.to(device) for k, v in enc.items()})
        else:
            t = None if titles is None else [titles[j] for j in idx]
            enc = model.tokenize_passages(chunk, t)
            emb = model.encode_passages(**{k: v.to(device) for k, v in enc.items()})
        chunks.append((idx, emb.float().cpu().numpy()))
    if chunks:
        out = np.zeros((len(texts), chunks[0][1].shape[1]), dtype=np.float32)
        for idx, emb in chunks:
            out[idx] = emb
    return out


def evaluate_model(model, ec: EvalConfig, device, metrics=EVAL_METRICS) -> dict[str, float]:
    """Mean dev metrics of a bi-encoder: its query embeddings searched exactly against the corpus
    it encodes (or against a fixed index, for asymmetric query-encoder distillation).

    Args:
        model: a BiEncoder (eval mode is set by the caller).
        ec: the EvalConfig (queries, qrels, corpus or index, k, batch size, max_queries).
        device: where the model is.
        metrics: names understood by densekit.metrics.parse_metric; `ec.metric` is added.

    Returns:
        {metric name: mean over judged queries}, e.g. {"ndcg@10": 0.41, ...}.
    """
    import faiss

    from densekit.artifacts import read_table
    from densekit.metrics import evaluate_run, mean_metrics
    from densekit.pipelines.evaluate import load_qrels
    from densekit.pipelines.search import search_index_in_process

    if getattr(model, "kind", "bi_encoder") != "bi_encoder":
        raise ConfigError(f"periodic evaluation retrieves with a bi-encoder; this model is a {model.kind}")
    qrels = load_qrels(ec.qrels)
    queries = read_table(ec.queries, columns=["qid", "text"])
    qids = queries.column("qid").to_pylist()
    texts = queries.column("text").to_pylist()
    keep = [i for i, q in enumerate(qids) if q in qrels]
    if ec.max_queries:
        keep = keep[: ec.max_queries]
    qids, texts = [qids[i] for i in keep], [texts[i] for i in keep]
    qrels = {q: qrels[q] for q in qids}
    q_emb = encode_texts(model, texts, "query", device, ec.batch_size)
    if ec.index:
        scores, pids = search_index_in_process(ec.index, q_emb, ec.k)
    else:
        corpus = read_table(ec.corpus, columns=["pid", "text", "title"])
        p_emb = encode_texts(
            model, corpus.column("text").to_pylist(), "passage", device, ec.batch_size,
            titles=corpus.column("title").to_pylist(),
        )  # fmt: skip
        index = faiss.IndexFlatIP(p_emb.shape[1])
        index.add(p_emb)
        d, i = index.search(q_emb, min(ec.k, p_emb.shape[0]))
        all_pids = np.asarray(corpus.column("pid").to_pylist(), dtype=object)
        scores, pids = d, all_pids[i]
    run = {q: {str(p): float(s) for p, s in zip(pids[j], scores[j]) if p is not None} for j, q in enumerate(qids)}
    names = list(dict.fromkeys([*metrics, ec.metric]))
    per_query = evaluate_run(run, qrels, names)
    return mean_metrics(per_query, names)
