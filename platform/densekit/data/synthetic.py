"""A generated retrieval task (corpus, queries, train/dev qrels) that a retriever must be trained on.

Every document is about a *subject*: a few *concepts* of one *topic*. A concept has two surface words: the
document word, and a query synonym that documents never use. Queries name some of their document's
concepts mostly by synonym, plus a topic word and filler, so exact word overlap finds the topic
(fifty-odd documents sharing its words: hard negatives) but hardly the document; a model learns
the synonym map from the training queries and then solves the dev queries, whose concepts it saw
in training with other documents. With `doc_variants` > 1 each subject is written several times
(same concepts, other words), all relevant to its queries; `train_judged` then judges only some of
them for training queries, always the same ones (sparse labels, as in MS MARCO: a hard negative
mined with a good model is often a relevant document nobody judged) while dev queries judge all.
Written as the same tables as a BEIR import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from densekit.artifacts import TableWriter, prepare_output, write_manifest
from densekit.config import GenerateConfig
from densekit.data.records import CORPUS_SCHEMA, QRELS_SCHEMA, QUERIES_SCHEMA

logger = logging.getLogger(__name__)

_ONSETS = list("bdfgklmnprstvz") + ["ch", "sh", "th", "br", "kr", "pl", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "", "", "n", "r", "s", "l", "m"]


def make_words(rng: np.random.Generator, n: int, syllables: tuple[int, int] = (2, 2)) -> list[str]:
    """`n` distinct pronounceable pseudo-words (deterministic for the generator's state)."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        k = rng.integers(syllables[0], syllables[1] + 1)
        w = "".join(
            _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(k)
        )
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


@dataclass
class Task:
    """A generated task in memory (small by construction; written by `generate`)."""

    doc_ids: list[str]
    doc_texts: list[str]
    doc_titles: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, list[tuple[str, str]]]  # split -> [(qid, pid)]


def build_task(cfg: GenerateConfig) -> Task:
    """Draw the whole task from `cfg.seed` (same seed and sizes, same task)."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    n_words = 2 * cfg.num_concepts + cfg.num_topics * cfg.topic_words + cfg.noise_words
    words = make_words(rng, n_words)
    doc_form = words[: cfg.num_concepts]
    query_form = words[cfg.num_concepts : 2 * cfg.num_concepts]
    topic_vocab = np.array(words[2 * cfg.num_concepts : 2 * cfg.num_concepts + cfg.num_topics * cfg.topic_words])
    topic_vocab = topic_vocab.reshape(cfg.num_topics, cfg.topic_words)
    noise = np.array(words[-cfg.noise_words :])
    # Zipf-like noise: a few very common filler words, as in real text.
    noise_p = 1.0 / np.arange(1, cfg.noise_words + 1)
    noise_p /= noise_p.sum()
    # Concepts are split among topics: documents of a topic draw from the same pool.
    concept_topic = np.arange(cfg.num_concepts) % cfg.num_topics
    pools = [np.flatnonzero(concept_topic == t) for t in range(cfg.num_topics)]

    # A subject is a topic and a set of its concepts; each is written as `doc_variants` documents.
    num_subjects = cfg.num_docs // cfg.doc_variants
    subject_topic = rng.integers(cfg.num_topics, size=num_subjects)
    subject_concepts = []
    subject_docs: list[list[int]] = []
    doc_texts, doc_titles = [], []
    for s in range(num_subjects):
        t = subject_topic[s]
        cs = rng.choice(pools[t], size=min(cfg.concepts_per_doc, len(pools[t])), replace=False)
        subject_concepts.append(cs)
        subject_docs.append([])
        for _variant in range(cfg.doc_variants):
            kind = rng.random(cfg.doc_length)
            pick_c = rng.integers(len(cs), size=cfg.doc_length)
            pick_t = rng.integers(cfg.topic_words, size=cfg.doc_length)
            pick_n = rng.choice(cfg.noise_words, size=cfg.doc_length, p=noise_p)
            toks = [
                doc_form[cs[pick_c[i]]] if kind[i] < cfg.concept_share
                else topic_vocab[t, pick_t[i]] if kind[i] < cfg.concept_share + cfg.topic_share
                else noise[pick_n[i]]
                for i in range(cfg.doc_length)
            ]
            subject_docs[s].append(len(doc_texts))
            doc_texts.append(" ".join(toks))
            doc_titles.append(f"{topic_vocab[t, rng.integers(cfg.topic_words)]} {doc_form[cs[0]]}")
    # Variants of a subject get unrelated ids (with one variant, document d is subject d).
    perm = rng.permutation(cfg.num_docs) if cfg.doc_variants > 1 else np.arange(cfg.num_docs)
    width = len(str(cfg.num_docs - 1))
    doc_ids = [f"d{i:0{width}d}" for i in range(cfg.num_docs)]
    id_of = [doc_ids[i] for i in np.argsort(perm)]  # generated document -> its id

    query_ids, query_texts = [], []
    qrels: dict[str, list[tuple[str, str]]] = {"train": [], "dev": []}
    seen_texts: set[str] = set()
    width_q = len(str(cfg.num_train_queries + cfg.num_dev_queries - 1))
    splits = ["train"] * cfg.num_train_queries + ["dev"] * cfg.num_dev_queries
    for q, split in enumerate(splits):
        for _attempt in range(100):
            s = int(rng.integers(num_subjects))
            cs = subject_concepts[s]
            k = min(cfg.concepts_per_query, len(cs))
            named = rng.choice(cs, size=k, replace=False)
            toks = [query_form[c] if rng.random() < cfg.synonym_rate else doc_form[c] for c in named]
            toks.append(topic_vocab[subject_topic[s], rng.integers(cfg.topic_words)])
            while len(toks) < cfg.query_length:
                toks.append(noise[rng.choice(cfg.noise_words, p=noise_p)])
            rng.shuffle(toks)
            text = " ".join(toks)
            if text not in seen_texts:  # train and dev queries never share a text
                break
        seen_texts.add(text)
        qid = f"q{q:0{width_q}d}"
        query_ids.append(qid)
        query_texts.append(text)
        relevant = subject_docs[s]
        if split == "train" and cfg.train_judged:
            relevant = relevant[: cfg.train_judged]  # always the same ones: the others are never judged
        qrels[split].extend((qid, id_of[d]) for d in relevant)
    return Task(doc_ids, [doc_texts[g] for g in perm], [doc_titles[g] for g in perm], query_ids, query_texts, qrels)


def generate(cfg: GenerateConfig) -> None:
    """Write the task to `cfg.output`: corpus/, queries/ (train and dev), qrels/train/, qrels/dev/,
    each a table with its manifest, then a top manifest."""
    out = Path(cfg.output)
    cfg.validate()
    if not prepare_output(out, cfg, cfg.overwrite):
        return
    task = build_task(cfg)
    tables = {
        "corpus": (CORPUS_SCHEMA, {"pid": task.doc_ids, "text": task.doc_texts, "title": task.doc_titles}),
        "queries": (QUERIES_SCHEMA, {"qid": task.query_ids, "text": task.query_texts}),
    }
    for split, pairs in task.qrels.items():
        tables[f"qrels/{split}"] = (
            QRELS_SCHEMA,
            {"qid": [q for q, _ in pairs], "pid": [p for _, p in pairs], "relevance": [1] * len(pairs)},
        )
    for name, (schema, cols) in tables.items():
        with TableWriter(out / name, schema) as w:
            w.write(pa.table(cols, schema=schema))
        write_manifest(out / name, "generate", extra={"kind": name.split("/")[0], "seed": cfg.seed})
    write_manifest(
        out, "generate",
        extra={"format": "beir", "seed": cfg.seed, "tables": {k: len(next(iter(v[1].values()))) for k, v in tables.items()}},
    )
    logger.info("generated task in %s: %d docs, %d train / %d dev queries", out, cfg.num_docs,
                cfg.num_train_queries, cfg.num_dev_queries)
