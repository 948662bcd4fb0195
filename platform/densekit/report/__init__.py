"""`densekit report RUN_DIR`: quality and query-encoding speed of the models of a method run, a train
output or a tune output, as report.md (tables), report.json (the numbers) and quality_vs_speed.png.

Speed is measured here, not by evaluate/search: every model is timed in one process, on the same
queries, batch size and threads, interleaved pass by pass, so the numbers compare with each other.

The package: `collect` reads what a run holds, `timing` times query encoding (shared with
`densekit speed`), `render` writes the Markdown and the plot; this module ties them together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from densekit.artifacts import read_table, write_json_atomic, write_text_atomic
from densekit.config import QuerySpeedConfig, ReportConfig, load_config
from densekit.errors import ConfigError, InputError
from densekit.report.collect import COLUMNS, Report, Row, collect, model_facts
from densekit.report.render import (
    comparison_lines,
    eval_sets,
    plot_quality_vs_speed,
    quality_table,
    render_markdown,
    speed_range,
)
from densekit.report.search import plot_search
from densekit.report.timing import Speed, measure_query_speed, time_encoders

__all__ = [
    "COLUMNS", "PLOT_PNG", "REPORT_JSON", "REPORT_MD", "Report", "Row", "Speed", "build_report", "collect",
    "comparison_lines", "eval_sets", "measure_query_speed", "model_facts", "plot_quality_vs_speed",
    "quality_table", "render_markdown", "report", "report_run", "speed_range", "time_encoders", "write_report",
]  # fmt: skip

logger = logging.getLogger(__name__)

REPORT_MD, REPORT_JSON, PLOT_PNG = "report.md", "report.json", "quality_vs_speed.png"


def _timing_queries(rep: Report, sc: QuerySpeedConfig) -> list[str]:
    table = sc.queries or next(
        (r.queries for r in rep.rows if r.queries and Path(r.queries).is_dir()), None
    )
    if table is None:
        raise ConfigError(
            f"{rep.run_dir}: no queries table found to time the models; set speed.queries=<table>"
        )
    t = read_table(table, ["text"] if "query" not in _columns(table) else ["query"])
    texts = [x for x in t.column(0).to_pylist() if x][: sc.num_queries]
    if not texts:
        raise InputError(table, None, "no query texts to time")
    return texts


def _columns(table: str) -> list[str]:
    import pyarrow.parquet as pq

    from densekit.artifacts import table_parts

    parts = table_parts(table)
    return pq.read_schema(parts[0]).names if parts else []


def build_report(cfg: ReportConfig) -> Report:
    """Collect the run's numbers and time its models' query encoding."""
    rep = collect(cfg.run)
    if cfg.title:
        rep.title = cfg.title
    for row in rep.rows:
        model_facts(row)
    # One timing per model folder: a teacher evaluated on three collections is timed once, not thrice.
    first_label: dict[Path, str] = {}
    for r in rep.rows:
        if r.model and Path(r.model).is_dir():
            first_label.setdefault(Path(r.model).resolve(), r.label)
    if cfg.speed.enabled and first_label:
        texts = _timing_queries(rep, cfg.speed)
        speeds = measure_query_speed(
            {label: str(path) for path, label in first_label.items()}, texts, cfg.speed
        )
        for row in rep.rows:
            if row.model and Path(row.model).is_dir():
                row.speed = speeds.get(first_label[Path(row.model).resolve()])
    return rep


def write_report(cfg: ReportConfig) -> Report:
    """Build the report and write report.md, report.json and quality_vs_speed.png (each atomically)."""
    rep = build_report(cfg)
    out = Path(cfg.output or cfg.run)
    out.mkdir(parents=True, exist_ok=True)
    plotted = plot_quality_vs_speed(rep, cfg.metric, out / PLOT_PNG)
    search_plots = plot_search(rep.search, out) if rep.search else []
    write_text_atomic(
        out / REPORT_MD,
        render_markdown(rep, cfg.speed, PLOT_PNG if plotted else None, search_plots),
    )
    write_json_atomic(out / REPORT_JSON, {**asdict(rep), "speed_config": asdict(cfg.speed)})
    plots = ([PLOT_PNG] if plotted else []) + search_plots
    logger.info("report: %s%s", out / REPORT_MD, f" and {', '.join(str(out / p) for p in plots)}" if plots else "")
    return rep


def report_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> Report:
    """The report at the end of `train` / `tune` / `run`: defaults plus `report.*`-style overrides."""
    cfg = load_config(ReportConfig, None, [f"run={run_dir}", *overrides])
    return write_report(cfg)


def report(argv: list[str]) -> int:
    """densekit report RUN_DIR [key=value ...]

    Writes RUN_DIR/report.md (models: nDCG@10, MRR@10, Recall@100, query-encoding queries/s;
    training runs; stages with their times), report.json and quality_vs_speed.png. RUN_DIR is a
    `densekit run` folder, a train output or a tune output. Keys: output=DIR, title=..., metric=
    ndcg@10 (plot), speed.enabled, speed.queries=TABLE, speed.num_queries=512,
    speed.batch_size=64, speed.threads=1, speed.warmup=1, speed.repeats=5, speed.device=cpu.
    """
    positional = [a for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    if len(positional) != 1:
        raise ConfigError(f"usage: {report.__doc__.splitlines()[0]}")
    run_dir = Path(positional[0])
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder")
    write_report(load_config(ReportConfig, None, [f"run={run_dir}", *overrides]))
    return 0
