"""Configs of the steps around training that methods use: report (with its query-speed
measurement), build, trainset, select, speed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional  # noqa: UP035

from omegaconf import MISSING

from densekit.config.common import ResourcesConfig
from densekit.config.loader import opt, unknown_name
from densekit.errors import ConfigError

# --- reports (densekit report, and the end of train / tune / run) -----------------------------------


@dataclass
class QuerySpeedConfig:
    """How query-encoding speed is measured: identically for every model of one report."""

    enabled: bool = opt(True, "time each model's query encoding (false: quality only)")
    queries: Optional[str] = opt(
        None, "queries table timed (default: the queries of the first evaluated model)"
    )
    num_queries: int = opt(512, "queries timed: the first N of the table (all models get the same)")
    batch_size: int = opt(64, "queries per forward pass (tokenisation included in the time)")
    threads: int = opt(1, "torch CPU threads while timing (1: steadiest on a shared machine)")
    warmup: int = opt(1, "untimed passes over the queries per model first")
    repeats: int = opt(5, "timed passes per model, interleaved across models; the fastest counts")
    device: str = opt("cpu", "cpu or cuda (CUDA time includes a synchronize per batch)")

    def validate(self) -> None:
        if min(self.num_queries, self.batch_size, self.threads, self.repeats) < 1 or self.warmup < 0:
            raise ConfigError("speed: num_queries, batch_size, threads and repeats must be >= 1, warmup >= 0")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(unknown_name("speed.device", self.device, ("cpu", "cuda")))


@dataclass
class ReportConfig:
    """A report of a method run, a train output or a tune output: report.md, report.json, a PNG."""

    run: str = opt(MISSING, "a method run folder (method-<name>.json), a train output or a tune output")
    output: Optional[str] = opt(None, "folder for report.md, report.json, quality_vs_speed.png (default: `run`)")
    title: Optional[str] = opt(None, "report title (default: the method's name or the folder name)")
    metric: str = opt("ndcg@10", "quality measure on the plot's y axis (a key of the metrics.json files)")
    speed: QuerySpeedConfig = opt(QuerySpeedConfig, "query-encoding speed measurement")


# --- methods: build, select, speed -----------------------------------------------------------------

BUILD_ARCHS = ("bert", "distilbert", "roberta")


@dataclass
class BuildConfig:
    """Build a small randomly initialised encoder offline: a config, its weights and a tokenizer."""

    output: str = opt(MISSING, "model directory (save_pretrained: config, weights, tokenizer)")
    arch: str = opt("bert", f"architecture: one of {', '.join(BUILD_ARCHS)}")
    layers: int = opt(2, "transformer layers")
    hidden: int = opt(32, "hidden size")
    heads: int = opt(2, "attention heads (must divide hidden)")
    intermediate: Optional[int] = opt(None, "feed-forward size (default 4 x hidden)")
    max_positions: int = opt(128, "longest sequence in tokens")
    vocab_size: int = opt(8000, "WordPiece vocabulary size (the trained vocabulary may be smaller)")
    texts: List[str] = opt(  # noqa: UP006
        [], "tables whose text (and title) columns train the tokenizer, e.g. [corpus, queries]"
    )
    max_texts: Optional[int] = opt(None, "read at most this many rows of each table for the tokenizer")
    tokenizer_from: Optional[str] = opt(
        None, "copy this model directory's tokenizer instead of training one (teacher and student share it)"
    )
    seed: int = opt(0, "seed of the random weights")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if self.arch not in BUILD_ARCHS:
            raise ConfigError(unknown_name("arch", self.arch, BUILD_ARCHS))
        if bool(self.texts) == (self.tokenizer_from is not None):
            raise ConfigError("build: give either texts=[tables] (train a tokenizer) or tokenizer_from=<model dir>")
        sizes = ("layers", "hidden", "heads", "max_positions", "vocab_size")
        bad = [k for k in sizes if getattr(self, k) < 1]
        if bad or (self.intermediate is not None and self.intermediate < 1):
            raise ConfigError(f"build: {', '.join(bad or ['intermediate'])} must be >= 1")
        if self.hidden % self.heads:
            raise ConfigError(f"build: hidden={self.hidden} must divide by heads={self.heads}")


@dataclass
class TrainsetConfig:
    """Training and dev splits of a labelled collection, plus pseudo-queries from its corpus
    (document titles judging their own document; unjudged sentences for query-only training)."""

    corpus: str = opt(MISSING, "corpus table (pid, text, title)")
    queries: str = opt(MISSING, "queries table (qid, text) holding every query of `qrels`")
    qrels: str = opt(MISSING, "training qrels (the split to divide: e.g. a BEIR import's qrels/train)")
    output: str = opt(MISSING, "folder: queries/, train_queries/, labelled_queries/, qrels/train/, qrels/dev/")
    dev_queries: int = opt(0, "judged queries held out as dev (a seeded draw); 0 = no dev split")
    title_queries: bool = opt(False, "each document's title as a query judging its own document (relevance 1)")
    sentence_queries: int = opt(0, "up to n unjudged sentences of the documents as training queries (query-only methods)")
    min_words: int = opt(4, "sentence pseudo-queries have at least this many words")
    id_prefix: str = opt("", "prefix of the pseudo-queries' ids (t-<pid>, s-<pid>-<i>) when they would clash")
    seed: int = opt(0, "seed of the dev draw and the sentence sample")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if self.dev_queries < 0 or self.sentence_queries < 0 or self.min_words < 1:
            raise ConfigError("trainset: dev_queries and sentence_queries must be >= 0, min_words >= 1")


@dataclass
class SelectConfig:
    """PROD's data-progressive selection: keep the queries the teacher ranks right and the student
    ranks just below the top, as training groups with the hardest negatives first."""

    run: str = opt(MISSING, "the student's run over the training queries (densekit search)")
    groups: str = opt(
        MISSING,
        "the student's candidates with teacher scores: `mine` of the same run (strategy=top) then `score`",
    )
    qrels: str = opt(MISSING, "training qrels (positives: relevance >= positive_level)")
    output: str = opt(MISSING, "training groups of the kept queries (teacher scores kept)")
    student_min_rank: int = opt(2, "keep a query if the student ranks its first positive at this rank or lower")
    student_max_rank: int = opt(15, "... and at this rank or higher (PROD: 2..15)")
    teacher_max_rank: int = opt(1, "... and the teacher's reranking puts a positive within this rank (PROD: 1)")
    num_negatives: int = opt(15, "negatives kept per query: the group's first n, in retrieval order (hardest first)")
    positive_level: int = opt(1, "qrels with relevance >= this are positives")
    rows_per_part: int = opt(100_000, "groups per Parquet part")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if not 1 <= self.student_min_rank <= self.student_max_rank:
            raise ConfigError(
                f"select: need 1 <= student_min_rank <= student_max_rank, got {self.student_min_rank}..{self.student_max_rank}"
            )
        if self.teacher_max_rank < 1 or self.num_negatives < 1 or self.positive_level < 1:
            raise ConfigError("select: teacher_max_rank, num_negatives and positive_level must be >= 1")


@dataclass
class SpeedConfig:
    """Encoding throughput of several models on the same texts, measured in turn on one Ray worker."""

    models: List[str] = opt([], "model directories; the first is the reference (e.g. the teacher)")  # noqa: UP006
    input: str = opt(MISSING, "queries table (qid, text) or corpus table (pid, text, title)")
    output: str = opt(MISSING, "folder: speed.json (texts/s per model, speed-up against the first) + manifest")
    kind: Literal["auto", "queries", "passages"] = opt(
        "auto", "which tower encodes; auto: queries if the input has a qid column"
    )
    batch_size: int = opt(64, "texts per forward pass (the query-distillation paper measures at 64)")
    max_texts: int = opt(2048, "encode the first N texts of the input")
    repeats: int = opt(3, "timed passes per model, interleaved across models; the fastest counts")
    threads: Optional[int] = opt(None, "torch CPU threads (default: the worker's CPUs)")
    resources: ResourcesConfig = opt(ResourcesConfig, "the one worker: cpus_per_worker, use_gpu")
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("speed: models is empty: give the reference model first, then the others")
        if self.batch_size < 1 or self.max_texts < 1 or self.repeats < 1:
            raise ConfigError("speed: batch_size, max_texts and repeats must be >= 1")
