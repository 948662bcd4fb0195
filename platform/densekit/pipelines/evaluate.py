"""`densekit evaluate`: trec_eval measures (via pytrec_eval) of a run against qrels, per query and
averaged, and a paired significance test of a run against a baseline run.

Convention for queries (the one BEIR and MTEB report): the mean is over every query that has qrels.
A judged query the run did not retrieve anything for scores 0 on every measure, as `trec_eval -c`
does; plain `trec_eval` (and pytrec_eval) silently leave such queries out of the mean, which
inflates it. Queries in the run without qrels are ignored (and counted). BEIR/MTEB retrieve k
documents for every query, so for them both conventions agree.

The measures themselves (parse_metric, evaluate_run, paired_tests) live in densekit.metrics, which
imports nothing heavy; they are re-exported here.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from densekit.artifacts import (
    TableWriter,
    prepare_output,
    read_manifest,
    read_table,
    write_json_atomic,
    write_manifest,
)
from densekit.data import records as R
from densekit.errors import InputError
from densekit.metrics import (  # re-exported: densekit.pipelines.evaluate keeps its public names
    Metric,
    Qrels,
    Run,
    evaluate_run,
    mean_metrics,
    paired_tests,
    parse_metric,
    truncate_run,
)

__all__ = [
    "Metric", "Qrels", "Run", "evaluate", "evaluate_run", "load_qrels", "load_run", "mean_metrics", "paired_tests",
    "parse_metric", "read_metrics", "truncate_run",
]  # fmt: skip

logger = logging.getLogger(__name__)


# --- reading runs and qrels ------------------------------------------------------------------------


def load_run(path: str | Path) -> Run:
    """Read a run table (qid, pid, score) into qid -> pid -> score; duplicates are an error."""
    read_manifest(path)
    table = read_table(path, [R.QID, R.PID, R.SCORE])
    run: Run = {}
    for qid, pid, score in zip(
        table.column(R.QID).to_pylist(), table.column(R.PID).to_pylist(), table.column(R.SCORE).to_pylist()
    ):
        docs = run.setdefault(qid, {})
        if pid in docs:
            raise InputError(path, None, f"query {qid!r} lists document {pid!r} twice")
        if score is None or (isinstance(score, float) and math.isnan(score)):
            raise InputError(path, None, f"query {qid!r}, document {pid!r}: score is null/NaN")
        docs[pid] = float(score)
    return run


def load_qrels(path: str | Path) -> Qrels:
    """Read a qrels table (qid, pid, relevance) into qid -> pid -> relevance."""
    read_manifest(path)
    table = read_table(path, [R.QID, R.PID, R.RELEVANCE])
    qrels: Qrels = {}
    for qid, pid, rel in zip(
        table.column(R.QID).to_pylist(),
        table.column(R.PID).to_pylist(),
        table.column(R.RELEVANCE).to_pylist(),
    ):
        if rel is None:
            raise InputError(path, None, f"query {qid!r}, document {pid!r}: relevance is null")
        qrels.setdefault(qid, {})[pid] = int(rel)
    return qrels


# --- the step --------------------------------------------------------------------------------------


def evaluate(cfg) -> None:
    """Write metrics.json (means), per_query/ (one row per judged query) and comparison.json.

    Args:
        cfg: an EvaluateConfig.
    """
    out = Path(cfg.output)
    for path in (cfg.run, cfg.qrels, cfg.baseline):
        if path is not None:
            read_manifest(path)  # a missing or unfinished input fails before anything is written
    if not prepare_output(out, cfg, overwrite=cfg.overwrite):
        return
    metrics = [parse_metric(m) for m in cfg.metrics]
    names = list(dict.fromkeys(m.name for m in metrics))
    qrels = load_qrels(cfg.qrels)
    run = load_run(cfg.run)
    per_query = evaluate_run(run, qrels, metrics, cfg.relevance_level)
    means = mean_metrics(per_query, names)
    not_retrieved = sum(1 for q in qrels if not run.get(q))
    not_judged = sum(1 for q in run if q not in qrels)
    if not_retrieved:
        logger.warning("%d of %d judged queries have no retrieved document: they count as 0",
                       not_retrieved, len(qrels))
    if not_judged:
        logger.info("%d run queries have no qrels: ignored", not_judged)
    for name in names:
        logger.info("%s = %.4f", name, means[name])

    qids = sorted(per_query)
    schema = pa.schema([(R.QID, pa.string())] + [(n, pa.float64()) for n in names])
    with TableWriter(out / "per_query", schema) as w:
        cols: dict[str, list] = {R.QID: qids}
        cols.update({n: [per_query[q][n] for q in qids] for n in names})
        w.write(cols)
    write_manifest(out / "per_query", "evaluate")
    summary = {
        "run": str(cfg.run),
        "qrels": str(cfg.qrels),
        "relevance_level": cfg.relevance_level,
        "metrics": means,
        "num_queries": len(qrels),
        "num_queries_not_retrieved": not_retrieved,
        "num_run_queries_not_judged": not_judged,
        "convention": "mean over all judged queries; a judged query with no retrieved document "
        "scores 0 (trec_eval -c); run queries without qrels are ignored",
    }
    write_json_atomic(out / "metrics.json", summary)

    if cfg.baseline:
        base_run = load_run(cfg.baseline)
        base = evaluate_run(base_run, qrels, metrics, cfg.relevance_level)
        comparison = {"run": str(cfg.run), "baseline": str(cfg.baseline), "num_queries": len(qids),
                      "metrics": {}}
        for name in names:
            a = np.array([per_query[q][name] for q in qids])
            b = np.array([base[q][name] for q in qids])
            tests = paired_tests(a, b, cfg.permutations, cfg.seed)
            comparison["metrics"][name] = {"run": float(a.mean()), "baseline": float(b.mean()), **tests}
            logger.info(
                "%s: run %.4f vs baseline %.4f (diff %+.4f, t-test p=%s, randomisation p=%s)",
                name, a.mean(), b.mean(), tests["diff"], _fmt_p(tests["t_test_p"]),
                _fmt_p(tests["randomization_p"]),
            )
        write_json_atomic(out / "comparison.json", comparison)
    write_manifest(out, "evaluate", {"metrics": means, "num_queries": len(qrels)})


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.4g}"


def read_metrics(directory: str | Path) -> dict:
    """The metrics.json of a complete evaluate output (for methods and tune)."""
    read_manifest(directory)
    return json.loads((Path(directory) / "metrics.json").read_text(encoding="utf-8"))
