"""Scale rehearsal (issue #19): densekit's pipeline on a synthetic corpus shaped like MS MARCO documents.

MS MARCO's document corpus (msmarco-docs.tsv) holds 3,213,835 documents in about 21 GB: `docid<TAB>
url<TAB>title<TAB>body`, ~6.5 KB a line on average, with a long tail of very long bodies. This bench
writes a file of that shape with --docs N documents (plus --queries queries and their qrels) into a
work folder, then runs import -> encode -> index (sharded, shards built in parallel by Ray tasks) ->
search -> evaluate through densekit's own step functions, and for every stage and size records:
wall time, rows/s, the peak RSS of the driver and of each kind of Ray process (the process tree is
sampled with psutil in a background thread and grouped by process title: `ray::MapWorker(...)`,
`ray::_build_shard`, `ray::_ShardGroup`, `ray::IDLE`, raylet, ...), and the bytes and files the
stage wrote. After the sizes it prints the ratios to check: t(largest)/t(smallest) per stage
against the size ratio, and peak RSS at the largest size / at the next one per process kind.

    python bench/scale.py --out $WORK/scale --docs 20000 50000 --json $WORK/scale.json
    python bench/scale.py --out $WORK/scale --docs 100000 320000 1000000 --json scale.json
    python bench/scale.py --out $WORK/scale --docs 3213835 --stages import,index,search,evaluate
    python bench/scale.py --out $WORK/scale --docs 50000 --factory Flat --compare

The documents: each starts with 24 words drawn uniformly from a 6,000-word vocabulary (its first
6 are the title), then a window of Zipf-distributed text; body lengths are log-normal (median
~4 KB, mean ~6.4 KB, 1% over ~40 KB, cut at 400 KB). A query is 6 of its document's 24 opening
words, shuffled, judged relevant to that document only: retrieval by word overlap finds it
(the hashed vectors below do; the default model's random weights retrieve at chance level).

Embeddings: with `encode` among --stages, densekit encode with --model (default: a 2-layer,
64-wide BERT with random weights built offline, its WordPiece vocabulary the generator's words,
so the curve is affordable on a CPU); the queries are encoded in the driver by the same
TextEncoder class the encode actors run (--queries-by-step: by the encode step). Without it
(e.g. the full 3.2M for import/index/search), hashed bag-of-words vectors (the first 32 words
of title + body, each word a fixed random 128-dim vector by its CRC-32, summed and normalised)
are written as the embeddings table in numpy: the result says which. Stages left out but needed by a later one (import before index)
run as preparation, timed apart.

--compare [N]: at size N (default the largest), one FAISS index built and searched in this
process (same factory, same vectors, same nprobe) against densekit's sharded parallel build (the
index stage's time) and sharded search (ShardedSearcher, the same queries): build-speed ratio,
queries/s ratio, recall@10 of both against exact search and against the qrels (Flat: identical
ids expected).

Every file is written under --out (per size: docs-N/); without --keep, a size's folder is removed
once it is measured. Nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Ray starts its workers at nice 15 (RayConfig worker_niceness); the in-process baseline of
# --compare runs at the driver's priority. Same priority for both (see bench/index_search.py).
os.environ.setdefault("RAY_worker_niceness", "0")
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "platform"))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from index_build import build_in_process  # noqa: E402  (bench/index_build.py: one in-process index)
from index_search import recall  # noqa: E402  (bench/index_search.py: recall@k of row ids)

MSDOC_DOCS = 3_213_835
STAGES = ("import", "encode", "index", "search", "evaluate")
LEAD_WORDS = 24  # opening words of a document, drawn uniformly: what its queries are made of
TITLE_WORDS = 6
QUERY_WORDS = 6
VOCAB_SIZE = 6_000
COMMON = 500  # the most frequent words are filler only, never opening words
BODY_MU, BODY_SIGMA, BODY_MAX = 8.25, 1.0, 400_000  # log-normal body length in characters
HASH_DIM, HASH_WORDS, HASH_BUCKETS = 128, 32, 1 << 16
GENERATOR_VERSION = 1
MB = 2**20
# Manifest key holding the rows a step wrote (checked against the documents given).
OUTPUT_ROWS = {"import": "rows", "encode": "count", "hash_embeddings": "count", "index": "ntotal"}


# --- the synthetic corpus --------------------------------------------------------------------------


def vocabulary(seed: int = 0) -> list[str]:
    """VOCAB_SIZE distinct lower-case pseudo-words, 3-9 letters, most frequent first."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: dict[str, None] = {}
    while len(words) < VOCAB_SIZE:
        words.setdefault("".join(rng.choice(letters, int(rng.integers(3, 10)))), None)
    return list(words)


def _zipf(n: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1)
    return p / p.sum()


def write_msdoc(
    folder: Path, n_docs: int, n_queries: int, seed: int = 0, chunk: int = 10_000
) -> dict:
    """Write msmarco-docs.tsv (n_docs documents), queries.tsv (`qid<TAB>text`) and qrels.tsv (TREC)
    into `folder`. The same seed gives the same documents, and a smaller n_docs is a prefix of a
    larger one. Returns what was written (bytes, lengths, seconds)."""
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary(seed)
    rng = np.random.default_rng(seed)
    # ~28 MB of Zipf-distributed filler; a body's tail is a window of it (cheap, and varied enough
    # that Parquet cannot compress the corpus away).
    pool = " ".join(
        np.array(vocab)[rng.choice(VOCAB_SIZE, 4_000_000, p=_zipf(VOCAB_SIZE))].tolist()
    )
    qrng = np.random.default_rng([seed, n_docs, n_queries])
    query_docs = set(qrng.choice(n_docs, size=min(n_queries, n_docs), replace=False).tolist())
    queries: list[tuple[int, str]] = []
    body_lengths = np.zeros(n_docs, np.int64)
    docs_bytes = 0
    with open(folder / "msmarco-docs.tsv", "w", encoding="utf-8") as f:
        for start in range(0, n_docs, chunk):
            # Every chunk draws `chunk` documents, whatever n_docs: hence the prefix property.
            lengths = np.minimum(rng.lognormal(BODY_MU, BODY_SIGMA, chunk), BODY_MAX).astype(
                np.int64
            )
            leads = rng.integers(COMMON, VOCAB_SIZE, (chunk, LEAD_WORDS))
            offsets = rng.integers(0, len(pool) - BODY_MAX - 1, chunk)
            untitled = rng.random(chunk) < 0.03
            picks = rng.random((chunk, LEAD_WORDS)).argsort(axis=1)[:, :QUERY_WORDS]
            lines = []
            for j in range(min(chunk, n_docs - start)):
                n = start + j
                lead = [vocab[w] for w in leads[j]]
                title = "" if untitled[j] else " ".join(lead[:TITLE_WORDS])
                head = " ".join(lead if untitled[j] else lead[TITLE_WORDS:])
                a = pool.find(" ", int(offsets[j])) + 1
                b = pool.rfind(" ", a, a + max(0, int(lengths[j]) - len(head)))
                body = f"{head} {pool[a:b]}" if b > a else head
                body_lengths[n] = len(body)
                lines.append(f"D{n}\thttp://www.example.com/{lead[0]}/{n}\t{title}\t{body}\n")
                if n in query_docs:
                    queries.append((n, " ".join(lead[k] for k in picks[j])))
            text = "".join(lines)
            f.write(text)
            docs_bytes += len(text.encode("utf-8"))
    with (
        open(folder / "queries.tsv", "w", encoding="utf-8") as fq,
        open(folder / "qrels.tsv", "w") as fr,
    ):
        for i, (n, text) in enumerate(queries):
            fq.write(f"{i}\t{text}\n")
            fr.write(f"{i} 0 D{n} 1\n")
    return {
        "docs": n_docs,
        "queries": len(queries),
        "bytes": docs_bytes,
        "bytes_per_doc": docs_bytes / max(1, n_docs),
        "body_chars_median": float(np.median(body_lengths)) if n_docs else 0.0,
        "body_chars_mean": float(body_lengths.mean()) if n_docs else 0.0,
        "body_chars_p99": float(np.percentile(body_lengths, 99)) if n_docs else 0.0,
        "body_chars_max": int(body_lengths.max()) if n_docs else 0,
        "wall_s": time.perf_counter() - t0,
        "msdoc_scale": f"{n_docs / MSDOC_DOCS:.4f} of MS MARCO documents' 3,213,835",
    }


def generated_input(folder: Path, n_docs: int, n_queries: int, seed: int) -> dict:
    """The generated files in `folder`, written unless a kept earlier run wrote the same ones."""
    params = {"version": GENERATOR_VERSION, "docs": n_docs, "queries": n_queries, "seed": seed}
    stamp = folder / "_generated.json"
    if stamp.exists():
        old = json.loads(stamp.read_text())
        if old.get("params") == params:
            return {**old["stats"], "reused": True}
    shutil.rmtree(folder, ignore_errors=True)
    stats = write_msdoc(folder, n_docs, n_queries, seed)
    stamp.write_text(json.dumps({"params": params, "stats": stats}))
    return stats


# --- measuring -------------------------------------------------------------------------------------


# An actor's title while it runs a method: ray::Class.method.
_METHOD = re.compile(r"\.[A-Za-z_]\w*$")


def process_kind(proc: psutil.Process) -> str:
    """A process's kind: its Ray title (`ray::IDLE`, `ray::_build_shard`, `ray::MapWorker(...)`; an
    actor's `ray::Class.method` counted as `ray::Class`, Ray Data's `ray::MapWorker(...).submit` as
    `ray::MapWorker(...)`), else its program or script name."""
    cmd = proc.cmdline()
    if not cmd:
        return proc.name()
    first = cmd[0].strip()
    if first.startswith("ray::"):
        return _METHOD.sub("", first)
    script = next((Path(a).name for a in cmd[1:] if a.endswith(".py")), None)
    return script or Path(first).name


class TreeSampler:
    """Samples the RSS of this process and of every process below it (a local Ray's raylet, GCS
    and workers are) every `interval` s, in a background thread.

    Result: driver peak RSS, and per process kind the peak RSS of one process, the peak of the
    kind's total at one sample and the most processes of that kind seen at once. RSS counts
    shared pages (e.g. the object store's) in every process that maps them.
    """

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.driver = 0
        self.kinds: dict[str, dict] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _sample(self, me: psutil.Process) -> None:
        self.driver = max(self.driver, me.memory_info().rss)
        total: dict[str, list[int]] = {}
        for p in me.children(recursive=True):
            try:
                kind = process_kind(p)
                rss = p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total.setdefault(kind, []).append(rss)
        for kind, values in total.items():
            k = self.kinds.setdefault(kind, {"peak_rss": 0, "peak_sum_rss": 0, "max_processes": 0})
            k["peak_rss"] = max(k["peak_rss"], max(values))
            k["peak_sum_rss"] = max(k["peak_sum_rss"], sum(values))
            k["max_processes"] = max(k["max_processes"], len(values))
        self.samples += 1

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                self._sample(me)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(psutil.Process())

    def result(self) -> dict:
        return {
            "driver_peak_rss_mb": round(self.driver / MB, 1),
            "workers": {
                kind: {
                    "peak_rss_mb": round(v["peak_rss"] / MB, 1),
                    "peak_sum_rss_mb": round(v["peak_sum_rss"] / MB, 1),
                    "max_processes": v["max_processes"],
                }
                for kind, v in sorted(self.kinds.items())
            },
            "rss_samples": self.samples,
        }


def written(paths: list[Path]) -> tuple[int, int]:
    """(bytes, files) under `paths` (a stage's output folders)."""
    size = files = 0
    for root in paths:
        if root.is_file():
            size, files = size + root.stat().st_size, files + 1
            continue
        for dirpath, _, names in os.walk(root):
            for name in names:
                try:
                    size += (Path(dirpath) / name).stat().st_size
                    files += 1
                except OSError:
                    pass
    return size, files


def measure(name: str, fn, outputs: list[Path], rows: int, queries: int | None = None) -> dict:
    """Run `fn()` under a TreeSampler; its record (wall time, rates, RSS, bytes and files written).

    The driver runs every stage and size in turn: its RSS at the stage's start is recorded beside
    its peak (memory an earlier stage left behind shows in both).
    """
    start_rss = psutil.Process().memory_info().rss
    with TreeSampler() as sampler:
        t0 = time.perf_counter()
        info = fn() or {}
        wall = time.perf_counter() - t0
    size, files = written(outputs)
    rec = {
        "stage": name,
        "wall_s": round(wall, 3),
        "rows": rows,
        "rows_per_s": round(rows / wall, 1),
        "driver_start_rss_mb": round(start_rss / MB, 1),
        **sampler.result(),
        "bytes_written": size,
        "files_written": files,
        **info,
    }
    if queries is not None:
        rec["queries"] = queries
        rec["queries_per_s"] = round(queries / wall, 1)
    return rec


# --- the model and the cheap embeddings -----------------------------------------------------------


def build_default_model(folder: Path, max_length: int, seed: int = 0) -> Path:
    """The default model: 2 layers x 64, random weights, mean pooling, a WordPiece vocabulary
    holding every word of the generator (so a query word is one token, as in its document)."""
    from densekit.models.tiny import build_tiny_model

    if folder.exists():
        shutil.rmtree(folder)
    words = vocabulary()
    return build_tiny_model(
        folder,
        [" ".join(words)],
        layers=2,
        hidden=64,
        heads=2,
        intermediate=128,
        vocab_size=len(words) + 200,
        max_positions=max(512, max_length),
        pooling="mean",
        seed=seed,
    )


def _hash_table(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, 7])
    return (rng.standard_normal((HASH_BUCKETS, HASH_DIM)) / math.sqrt(HASH_DIM)).astype(np.float32)


def hashed_vectors(texts, table: np.ndarray) -> np.ndarray:
    """`[n, HASH_DIM]` normalised sums of the word vectors of each text's first HASH_WORDS words
    (a pyarrow string array; lower-cased, split at spaces)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = pc.utf8_lower(pc.utf8_slice_codeunits(texts, 0, HASH_WORDS * 12))
    words = pc.split_pattern(texts, " ", max_splits=HASH_WORDS)
    words = pc.list_slice(words, 0, HASH_WORDS)
    lengths = pc.list_value_length(words).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(words)
    enc = (
        pc.dictionary_encode(flat).combine_chunks()
        if isinstance(flat, pa.ChunkedArray)
        else pc.dictionary_encode(flat)
    )
    buckets = np.array(
        [zlib.crc32(w.encode()) % HASH_BUCKETS for w in enc.dictionary.to_pylist()], np.int64
    )
    rows = table[buckets[enc.indices.to_numpy()]]
    out = np.zeros((len(lengths), HASH_DIM), np.float32)
    nonempty = lengths > 0
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    if rows.shape[0]:
        out[nonempty] = np.add.reduceat(rows, starts[nonempty], axis=0)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def write_hashed_embeddings(
    table_dir: Path, out: Path, id_column: str, rows_per_part: int, with_title: bool
) -> dict:
    """Hashed bag-of-words vectors of a corpus or queries table as a densekit embeddings table
    (Parquet parts of rows_per_part rows = the index's shards, and an encode-like manifest)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from densekit.artifacts import TableWriter, iter_table, write_manifest
    from densekit.data import records as R
    from densekit.pipelines.embeddings import embeddings_batch

    if out.exists():
        shutil.rmtree(out)
    table = _hash_table()
    columns = [id_column, R.TEXT] + ([R.TITLE] if with_title else [])
    n = 0
    with TableWriter(out, R.embeddings_schema(HASH_DIM), rows_per_part=rows_per_part) as w:
        for batch in iter_table(table_dir, columns, batch_size=4_096):
            text = batch.column(R.TEXT)
            if with_title:
                text = pc.binary_join_element_wise(batch.column(R.TITLE), text, " ")
            vectors = hashed_vectors(pa.array(text), table)
            w.write(embeddings_batch(batch.column(id_column).to_pylist(), vectors))
            n += len(vectors)
    write_manifest(
        out,
        "encode",
        {
            "dim": HASH_DIM,
            "metric": "ip",
            "normalized": True,
            "model": "hashed-bag-of-words",
            "model_fingerprint": f"hashed-bag-of-words-v1-{HASH_DIM}-{HASH_WORDS}",
            "count": n,
            "kind": "queries" if id_column == R.QID else "passages",
        },
    )
    return {"embeddings": "hashed bag-of-words (not a model)"}


def encode_queries_in_driver(model: str, queries: Path, out: Path, batch_size: int) -> dict:
    """The queries table encoded in this process by densekit's TextEncoder (the class each encode
    actor runs), written as an embeddings table with the manifest the encode step writes."""
    from densekit.artifacts import TableWriter, read_table, write_manifest
    from densekit.data import records as R
    from densekit.models.spec import read_spec, spec_from_sentence_transformers
    from densekit.pipelines.embeddings import embeddings_batch, model_fingerprint
    from densekit.pipelines.encode import TextEncoder

    if out.exists():
        shutil.rmtree(out)
    table = read_table(queries, [R.QID, R.TEXT])
    vectors = TextEncoder(model, "queries", batch_size=batch_size).encode(
        table.column(R.TEXT).to_pylist()
    )
    with TableWriter(out, R.embeddings_schema(vectors.shape[1])) as w:
        w.write(embeddings_batch(table.column(R.QID).to_pylist(), vectors))
    spec = read_spec(model) or spec_from_sentence_transformers(model)
    write_manifest(out, "encode", {
        "dim": int(vectors.shape[1]), "metric": "ip", "model": str(model),
        "normalized": bool(spec.normalized) if spec is not None else False,
        "model_fingerprint": model_fingerprint(model), "kind": "queries", "count": len(vectors),
    })  # fmt: skip
    return {"where": "in the driver (TextEncoder, no Ray)"}


# --- the stages ------------------------------------------------------------------------------------


def auto_factory(n: int, dim: int) -> tuple[str, int]:
    """IVF with about sqrt(n) lists (a power of two, at least 39 training points each) and PQ with
    4 dimensions per sub-quantizer (at most 64 bytes a vector); and the train_size it needs."""
    nlist = 2 ** max(4, round(math.log2(max(16.0, math.sqrt(n)))))
    while nlist > 16 and 39 * nlist > n:
        nlist //= 2
    m = max(d for d in range(1, min(64, max(1, dim // 4)) + 1) if dim % d == 0)
    return f"IVF{nlist},PQ{m}", min(n, max(100_000, 64 * nlist))


def _cfg(cls, **values):
    from densekit.config import load_config

    return load_config(cls, overrides=[f"{k}={v}" for k, v in values.items()])


class SizeRun:
    """Every stage of one size, in its folder `work`."""

    def __init__(self, args, n: int, work: Path, model: str | None):
        self.args, self.n, self.work, self.model = args, n, work, model
        self.input = work / "input"
        self.rows_per_shard = max(
            1, -(-n // max(1, args.shards or max(args.workers, -(-n // 100_000))))
        )
        self.cpus = max(1, (os.cpu_count() or 1) // max(1, args.workers))
        self.res = {"resources.num_workers": args.workers, "resources.cpus_per_worker": self.cpus}
        self.d = {
            k: work / k
            for k in ("corpus", "queries", "qrels", "emb", "qemb", "index", "run", "eval")
        }
        self.record: dict = {"docs": n, "stages": {}, "prep": {}, "extra": {}}
        self.embeddings_how = ""
        self.factory = ""
        self.nprobe: int | None = None

    def stage(
        self, name: str, timed: bool, fn, outputs, rows=None, queries=None, group=None
    ) -> dict:
        rec = measure(name, fn, outputs, self.n if rows is None else rows, queries)
        if name in OUTPUT_ROWS:  # what the step's manifest says it wrote: must be every document
            from densekit.artifacts import read_manifest

            got = int(read_manifest(outputs[0], deep=False)[OUTPUT_ROWS[name]])
            if got != rec["rows"]:
                raise RuntimeError(f"{name}: {got} rows written, expected {rec['rows']}")
        where = group or ("stages" if timed else "prep")
        self.record[where][name] = rec
        print_stage(self.n, rec, where)
        return rec

    def run(self, stages: list[str]) -> dict:
        from densekit.raycluster import init_ray

        a = self.args
        self.record["generate"] = generated_input(self.input, self.n, a.queries, a.seed)
        g = self.record["generate"]
        print(
            f"\n== {self.n:,} documents: {g['bytes'] / 1e9:.2f} GB ({g['bytes_per_doc']:.0f} B/doc, body median "
            f"{g['body_chars_median']:.0f} / mean {g['body_chars_mean']:.0f} / p99 {g['body_chars_p99']:.0f} / max "
            f"{g['body_chars_max']} chars), {g['queries']} queries; generated in {g['wall_s']:.1f} s"
            f"{' (reused)' if g.get('reused') else ''}",
            flush=True,
        )
        t0 = time.perf_counter()
        init_ray(None)
        self.record["ray_start_s"] = round(time.perf_counter() - t0, 2)
        last = max(STAGES.index(s) for s in stages)
        needed = STAGES[: last + 1]
        for name in needed:
            timed = name in stages
            getattr(self, f"_{name}")(timed)
        self.record["embeddings"] = self.embeddings_how
        if self.embeddings_how:
            print(f"   embeddings: {self.embeddings_how}", flush=True)
        return self.record

    # -- each stage --

    def _import(self, timed: bool) -> None:
        from densekit.config import ImportConfig
        from densekit.data.importer import import_data

        def imp(fmt: str, name: str, out: Path, **more) -> ImportConfig:
            return _cfg(
                ImportConfig,
                format=fmt,
                path=self.input / name,
                output=out,
                overwrite="true",
                **more,
            )

        cfg = imp("msmarco_docs", "msmarco-docs.tsv", self.d["corpus"])
        self.stage("import", timed, lambda: import_data(cfg), [self.d["corpus"]])
        q = imp("msmarco_collection", "queries.tsv", self.d["queries"], kind="queries")
        r = imp("trec_qrels", "qrels.tsv", self.d["qrels"])

        def queries_and_qrels() -> None:
            import_data(q)
            import_data(r)

        self.stage(
            "import_queries_qrels",
            timed,
            queries_and_qrels,
            [self.d["queries"], self.d["qrels"]],
            rows=self.args.queries,
            group="extra",
        )

    def _encode(self, timed: bool) -> None:
        from densekit.config import EncodeConfig
        from densekit.pipelines.encode import encode

        a = self.args
        if not timed:  # the cheap path: hashed bag-of-words vectors, no model
            self.embeddings_how = (
                f"hashed bag-of-words: the first {HASH_WORDS} words of title + body, "
                f"each a fixed random {HASH_DIM}-dim vector by CRC-32, summed, normalised (numpy; no model)"
            )
            self.stage(
                "hash_embeddings",
                False,
                lambda: write_hashed_embeddings(
                    self.d["corpus"], self.d["emb"], "pid", self.rows_per_shard, True
                ),
                [self.d["emb"]],
            )
            self.stage(
                "hash_query_embeddings",
                False,
                lambda: write_hashed_embeddings(
                    self.d["queries"], self.d["qemb"], "qid", 1_000_000, False
                ),
                [self.d["qemb"]],
                rows=a.queries,
                group="extra",
            )
            return
        self.embeddings_how = (
            f"densekit encode with {self.model} (max_length {a.max_length}, title=model, compile {a.compile})"
        )
        common = {
            "model": self.model,
            "max_length": a.max_length,
            "batch_size": a.batch_size,
            "overwrite": "true",
            **({"compile": a.compile} if a.compile != "auto" else {}),
            **self.res,
        }
        cfg = _cfg(
            EncodeConfig,
            input=self.d["corpus"],
            output=self.d["emb"],
            kind="passages",
            rows_per_shard=self.rows_per_shard,
            **common,
        )
        self.stage("encode", True, lambda: encode(cfg), [self.d["emb"]])

        def queries() -> dict | None:
            if a.queries_by_step:
                encode(_cfg(EncodeConfig, input=self.d["queries"], output=self.d["qemb"],
                            kind="queries", **common))  # fmt: skip
                return None
            # A few hundred short texts: a Ray Data pipeline would cost more than its work.
            return encode_queries_in_driver(
                self.model, self.d["queries"], self.d["qemb"], a.batch_size
            )

        self.stage("encode_queries", True, queries, [self.d["qemb"]], rows=a.queries, group="extra")

    def _index(self, timed: bool) -> None:
        from densekit.config import IndexConfig
        from densekit.pipelines.embeddings import read_embeddings_manifest
        from densekit.pipelines.index import index

        a = self.args
        dim = int(read_embeddings_manifest(self.d["emb"])["dim"])
        if a.factory == "auto":
            self.factory, train_size = auto_factory(self.n, dim)
        else:
            self.factory, train_size = a.factory, a.train_size
        self.nprobe = a.nprobe if "IVF" in self.factory else None
        cfg = _cfg(
            IndexConfig,
            embeddings=self.d["emb"],
            output=self.d["index"],
            factory=f"'{self.factory}'",
            train_size=train_size,
            overwrite="true",
            **self.res,
        )
        shards = len(list(self.d["emb"].glob("part-*.parquet")))
        self.stage(
            "index",
            timed,
            lambda: (
                index(cfg) or {"factory": self.factory, "shards": shards, "train_size": train_size}
            ),
            [self.d["index"]],
        )

    def _search(self, timed: bool) -> None:
        from densekit.config import SearchConfig
        from densekit.pipelines.search import search

        extra = {"nprobe": self.nprobe} if self.nprobe else {}
        cfg = _cfg(
            SearchConfig,
            index=self.d["index"],
            query_embeddings=self.d["qemb"],
            output=self.d["run"],
            k=self.args.k,
            overwrite="true",
            asymmetric="false",
            **extra,
            **self.res,
        )
        self.stage(
            "search",
            timed,
            lambda: search(cfg) or {"k": self.args.k, **extra},
            [self.d["run"]],
            queries=self.args.queries,
        )

    def _evaluate(self, timed: bool) -> None:
        from densekit.config import EvaluateConfig
        from densekit.pipelines.evaluate import evaluate, read_metrics

        cfg = _cfg(
            EvaluateConfig,
            run=self.d["run"],
            qrels=self.d["qrels"],
            output=self.d["eval"],
            metrics="[mrr@10,ndcg@10,recall@10,recall@100]",
            overwrite="true",
        )
        self.stage(
            "evaluate", timed, lambda: evaluate(cfg), [self.d["eval"]], queries=self.args.queries
        )
        self.record["metrics"] = {
            k: round(v, 4) for k, v in read_metrics(self.d["eval"])["metrics"].items()
        }
        print(f"   metrics: {self.record['metrics']}", flush=True)

    # -- one index in this process against densekit's shards --

    def compare(self) -> dict:
        """One FAISS index built and searched in this process vs densekit's shards (same vectors,
        factory, nprobe, queries)."""
        import faiss

        from densekit.pipelines.embeddings import iter_embeddings
        from densekit.pipelines.search import ShardedSearcher

        a = self.args
        ids, parts = [], []
        for b_ids, vec in iter_embeddings(self.d["emb"]):
            ids += b_ids
            parts.append(vec)
        x = np.concatenate(parts)
        del parts
        qids, qparts = [], []
        for b_ids, vec in iter_embeddings(self.d["qemb"]):
            qids += b_ids
            qparts.append(vec)
        q = np.concatenate(qparts)
        k = 10
        threads = os.cpu_count() or 1
        faiss.omp_set_num_threads(threads)
        exact = faiss.IndexFlatIP(x.shape[1])
        exact.add(x)
        _, truth = exact.search(q, k)
        del exact
        train_size = (
            self.record["stages"]
            .get("index", self.record["prep"].get("index", {}))
            .get("train_size", a.train_size)
        )

        def build_single(n_threads: int):
            index, seconds = build_in_process(x, self.factory, train_size, a.seed, n_threads)
            return index, sum(seconds.values())

        # One worker's share (1 thread): what adding workers is measured against; then all threads.
        single_1 = build_single(1)[1] if threads > 1 else None
        single, single_build = build_single(threads)
        if self.nprobe and faiss.try_extract_index_ivf(single) is not None:
            faiss.ParameterSpace().set_index_parameter(single, "nprobe", self.nprobe)
        t0 = time.perf_counter()
        _, single_rows = single.search(q, k)
        single_qps = len(q) / (time.perf_counter() - t0)
        with ShardedSearcher(
            self.d["index"], num_actors=a.workers, nprobe=self.nprobe, cpus_per_actor=self.cpus
        ) as searcher:
            searcher.search(q[:100], k)  # warm up (page in the memory-mapped shards)
            t0 = time.perf_counter()
            got = [searcher.search(q[s : s + 1000], k)[1] for s in range(0, len(q), 1000)]
            sharded_qps = len(q) / (time.perf_counter() - t0)
        row_of = {pid: i for i, pid in enumerate(ids)}
        sharded_rows = np.vectorize(
            lambda p: row_of.get(p, -1) if p is not None else -1, otypes=[np.int64]
        )(np.concatenate(got))
        judged = self._judged(qids, row_of)
        index_rec = self.record["stages"].get("index") or self.record["prep"].get("index")
        sharded_build = index_rec["wall_s"]
        rec = {
            "docs": self.n,
            "factory": self.factory,
            "nprobe": self.nprobe,
            "queries": len(q),
            "k": k,
            "threads": threads,
            "search_actors": a.workers,
            "single_build_s": round(single_build, 3),
            "sharded_build_s": sharded_build,
            "build_speed_ratio_sharded_over_single": round(single_build / sharded_build, 3),
            "single_build_1thread_s": None if single_1 is None else round(single_1, 3),
            "build_speed_ratio_sharded_over_single_1thread": (
                None if single_1 is None else round(single_1 / sharded_build, 3)
            ),
            "single_qps": round(single_qps, 1),
            "sharded_qps": round(sharded_qps, 1),
            "qps_ratio_sharded_over_single": round(sharded_qps / single_qps, 3),
            "single_recall@10_vs_exact": round(recall(single_rows, truth), 4),
            "sharded_recall@10_vs_exact": round(recall(sharded_rows, truth), 4),
            "single_judged_in_top10": round(_judged_rate(single_rows, judged), 4),
            "sharded_judged_in_top10": round(_judged_rate(sharded_rows, judged), 4),
            "identical_ids": round(float(np.mean(sharded_rows == single_rows)), 4),
        }
        self.record["compare"] = rec
        print_compare(rec)
        return rec

    def _judged(self, qids: list[str], row_of: dict) -> list[int]:
        from densekit.artifacts import read_table

        qrels = read_table(self.d["qrels"], ["qid", "pid"]).to_pydict()
        doc = dict(zip(qrels["qid"], qrels["pid"]))
        return [row_of.get(doc.get(q), -1) for q in qids]


def _judged_rate(rows: np.ndarray, judged: list[int]) -> float:
    return float(np.mean([j in set(r.tolist()) for r, j in zip(rows, judged)]))


# --- printing and ratios ---------------------------------------------------------------------------


def print_stage(n: int, rec: dict, where: str) -> None:
    rate = (
        f"{rec['queries_per_s']:>10,.1f} queries/s"
        if "queries_per_s" in rec
        else f"{rec['rows_per_s']:>10,.1f} rows/s   "
    )
    workers = ", ".join(
        f"{k} {v['peak_rss_mb']:.0f}"
        + (
            f" (x{v['max_processes']}, sum {v['peak_sum_rss_mb']:.0f})"
            if v["max_processes"] > 1
            else ""
        )
        for k, v in rec["workers"].items()
        if k.startswith("ray::")
    )
    tag = "" if where == "stages" else f" [{where}]"
    print(
        f"{rec['stage'] + tag:>28} {rec['wall_s']:9.2f} s {rate} driver {rec['driver_peak_rss_mb']:6.0f} MB | "
        f"{rec['bytes_written'] / MB:9.1f} MB in {rec['files_written']} files | peak RSS MB: {workers or '-'}",
        flush=True,
    )


def print_compare(c: dict) -> None:
    print(
        f"\n-- one in-process index vs densekit's shards ({c['docs']:,} docs, {c['factory']}, nprobe "
        f"{c['nprobe']}, {c['queries']} queries, k={c['k']}):"
    )
    print(
        f"   build: one index {c['single_build_s']:.2f} s ({c['threads']} threads); densekit index stage "
        f"{c['sharded_build_s']:.2f} s -> sharded is {c['build_speed_ratio_sharded_over_single']:.2f}x as fast"
    )
    if c.get("single_build_1thread_s") is not None:
        print(
            f"          one index on 1 thread (one worker's share) {c['single_build_1thread_s']:.2f} s -> "
            f"sharded is {c['build_speed_ratio_sharded_over_single_1thread']:.2f}x as fast"
        )
    print(
        f"   search: one index {c['single_qps']:,.0f} q/s; densekit {c['search_actors']} actors "
        f"{c['sharded_qps']:,.0f} q/s -> {c['qps_ratio_sharded_over_single']:.2f}x"
    )
    print(
        f"   recall@10 vs exact: one index {c['single_recall@10_vs_exact']:.4f}, densekit "
        f"{c['sharded_recall@10_vs_exact']:.4f}; judged document in the top 10: {c['single_judged_in_top10']:.4f} "
        f"vs {c['sharded_judged_in_top10']:.4f}; identical ids {c['identical_ids']:.4f}",
        flush=True,
    )


def ratios(sizes: list[dict]) -> dict:
    """t(largest)/t(smallest) per stage against the size ratio, and peak RSS at the largest size /
    at the next size per process kind (driver included)."""
    if len(sizes) < 2:
        return {}
    small, big = sizes[0], sizes[-1]
    nxt = sizes[-2]
    size_ratio = big["docs"] / small["docs"]
    out: dict = {"size_ratio": round(size_ratio, 3), "time": {}, "rss": {}}
    for stage, rec in big["stages"].items():
        if stage not in small["stages"]:
            continue
        tr = rec["wall_s"] / small["stages"][stage]["wall_s"]
        out["time"][stage] = {
            "time_ratio": round(tr, 3),
            "size_ratio": round(size_ratio, 3),
            "exponent": round(math.log(tr) / math.log(size_ratio), 3) if size_ratio > 1 else None,
        }
    peak_big, peak_next = _peaks(big), _peaks(nxt)
    for kind in sorted(set(peak_big) & set(peak_next)):
        out["rss"][kind] = {
            "largest_mb": peak_big[kind],
            "next_mb": peak_next[kind],
            "ratio": round(peak_big[kind] / max(peak_next[kind], 1e-9), 3),
            "sizes": [nxt["docs"], big["docs"]],
        }
    return out


def _peaks(size: dict) -> dict[str, float]:
    """Peak RSS of one process per kind over a size's timed stages (driver included)."""
    peaks: dict[str, float] = {}
    for rec in size["stages"].values():
        peaks["driver"] = max(peaks.get("driver", 0), rec["driver_peak_rss_mb"])
        for kind, v in rec["workers"].items():
            peaks[kind] = max(peaks.get(kind, 0), v["peak_rss_mb"])
    return peaks


def print_ratios(r: dict, sizes: list[dict]) -> None:
    if not r:
        return
    print(
        f"\n== scaling: {sizes[0]['docs']:,} -> {sizes[-1]['docs']:,} documents (x{r['size_ratio']:g})"
    )
    for stage, v in r["time"].items():
        print(
            f"   {stage:>10}: time x{v['time_ratio']:.2f} for size x{v['size_ratio']:g} "
            f"(time ~ size^{v['exponent']})"
        )
    print(f"== peak RSS (one process), {sizes[-1]['docs']:,} docs / {sizes[-2]['docs']:,} docs:")
    for kind, v in r["rss"].items():
        print(f"   {kind:>50}: {v['next_mb']:8.0f} -> {v['largest_mb']:8.0f} MB  x{v['ratio']:.2f}")


# --- main ------------------------------------------------------------------------------------------


def meta(args, argv: list[str]) -> dict:
    def version(mod):
        try:
            return __import__(mod).__version__
        except Exception:
            return None

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=BENCH,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python bench/scale.py " + " ".join(argv),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "commit": commit,
        "versions": {m: version(m) for m in ("ray", "faiss", "torch", "transformers", "pyarrow")},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="See the module docstring (python -c 'help()' or the file) for details.",
    )
    ap.add_argument(
        "--out", required=True, help="work folder (generated files and every step output)"
    )
    ap.add_argument(
        "--docs",
        type=int,
        nargs="+",
        default=[20_000],
        help="corpus sizes, e.g. 100000 320000 1000000",
    )
    ap.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="comma-separated subset of import,encode,index,search,evaluate; without encode, "
        "embeddings are hashed bag-of-words vectors",
    )
    ap.add_argument(
        "--model", default=None, help="bi-encoder folder (default: a tiny model built offline)"
    )
    ap.add_argument(
        "--max-length", type=int, default=512, help="passage tokens (encode max_length)"
    )
    ap.add_argument("--batch-size", type=int, default=64, help="encode batch size")
    ap.add_argument(
        "--compile",
        choices=["auto", "true", "false"],
        default="auto",
        help="encode's compile (auto: encode's default, on for CPU actors of >= 20,000 texts)",
    )
    ap.add_argument(
        "--workers", type=int, default=2, help="encode actors, search actors; CPUs split among them"
    )
    ap.add_argument(
        "--shards",
        type=int,
        default=0,
        help="embedding / index shards (default: max(workers, docs / 100,000))",
    )
    ap.add_argument(
        "--factory",
        default="auto",
        help="FAISS factory; auto: IVF<~sqrt(N)>,PQ<dim/4> (for millions); Flat for exact checks",
    )
    ap.add_argument(
        "--train-size", type=int, default=100_000, help="index train_size (not for auto)"
    )
    ap.add_argument("--nprobe", type=int, default=32, help="IVF lists visited per query")
    ap.add_argument("--queries", type=int, default=1_000, help="synthetic queries with qrels")
    ap.add_argument("--k", type=int, default=100, help="documents retrieved per query")
    ap.add_argument(
        "--compare",
        type=int,
        nargs="?",
        const=-1,
        default=None,
        help="at this size (default: the largest) also build and search one in-process index",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep every size's folder (default: removed when measured)",
    )
    ap.add_argument(
        "--queries-by-step",
        action="store_true",
        help="encode the queries with the encode step (Ray Data) too; default: in the driver",
    )
    ap.add_argument(
        "--one-ray",
        action="store_true",
        help="one local Ray for all sizes (default: a fresh one per size, started outside the stage times)",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="densekit's INFO lines")
    args = ap.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        ap.error(f"--stages: unknown {bad}; expected a subset of {','.join(STAGES)}")
    args.stage_list = [s for s in STAGES if s in stages]
    args.docs = sorted(set(args.docs))
    if min(args.docs) < 1:
        ap.error("--docs: sizes must be positive")
    if args.compare is not None:
        args.compare = args.docs[-1] if args.compare == -1 else args.compare
        if args.compare not in args.docs:
            ap.error(f"--compare {args.compare}: not one of --docs {args.docs}")
        if (
            "index" not in args.stage_list
            and "search" not in args.stage_list
            and "evaluate" not in args.stage_list
        ):
            ap.error("--compare needs the index (list index, search or evaluate in --stages)")
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import ray

    from densekit.logs import setup_logging

    setup_logging("INFO" if args.verbose else "WARNING")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta(args, argv), "stages": args.stage_list, "sizes": []}
    model = args.model
    if "encode" in args.stage_list and model is None:
        model = str(build_default_model(out / "model", args.max_length, args.seed))
        result["meta"]["model"] = (
            "tiny: BERT 2 layers x 64, random weights, mean pooling, built offline"
        )
    elif model:
        result["meta"]["model"] = model
    print(
        f"scale rehearsal: sizes {args.docs}, stages {','.join(args.stage_list)}, {args.queries} queries, "
        f"{args.workers} workers, factory {args.factory}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    for n in args.docs:
        work = out / f"docs-{n}"
        run = SizeRun(args, n, work, model)
        try:
            record = run.run(args.stage_list)
            if args.compare == n:
                run.compare()
        finally:
            # By default every size starts from a fresh Ray: no workers left from the last one.
            if ray.is_initialized() and (not args.one_ray or n == args.docs[-1]):
                ray.shutdown()
        result["sizes"].append(record)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        if args.json:
            _write_json(args.json, result)
    result["ratios"] = ratios(result["sizes"])
    print_ratios(result["ratios"], result["sizes"])
    result["meta"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        _write_json(args.json, result)
        print(f"\nresults: {args.json}")
    return result


def _write_json(path: str, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
