"""Writing a report: the Markdown tables and the quality-against-speed plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from densekit.config import QuerySpeedConfig
from densekit.logs import format_duration
from densekit.report.collect import COLUMNS, Report, Row
from densekit.report.timing import Speed


def comparison_lines(rep: Report) -> list[str]:
    """One line per row compared with a baseline run: each measure's difference and p-values."""
    lines = []
    for r in rep.rows:
        c = r.comparison
        if not c or not c.get("metrics"):
            continue
        parts = [
            f"{name} {m['diff']:+.4f} (t-test p={m['t_test_p']:.2g}, randomisation p={m['randomization_p']:.2g})"
            for name, m in c["metrics"].items()
            if m.get("diff") is not None and m.get("t_test_p") is not None and m.get("randomization_p") is not None
        ]
        if parts:
            lines.append(f"{r.label} vs {c['baseline']} ({c.get('num_queries', '?')} queries, paired): " + "; ".join(parts))
    return lines



def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _fmt_params(n: int | None) -> str:
    if not n:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"


def _threads(n: int | None) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def speed_range(speed: Speed) -> tuple[float, float]:
    """(slowest, fastest) queries/s over the timed passes: the spread a single figure hides."""
    times = [t for t in speed.seconds if t > 0] or [speed.best_seconds]
    return speed.num_queries / max(times), speed.num_queries / min(times)


def _fmt_speed(speed: Speed | None) -> str:
    if speed is None:
        return "–"
    lo, hi = speed_range(speed)
    if len(speed.seconds) < 2:
        return f"{speed.queries_per_s:,.0f}"
    return f"{speed.queries_per_s:,.0f} ({lo:,.0f}–{hi:,.0f})"


def _fmt_losses(t: dict) -> str:
    terms = t.get("losses") or {}
    if not terms:
        return _fmt(t.get("loss"))
    return ", ".join(f"{name} {_fmt(v)}" for name, v in sorted(terms.items()))


def eval_sets(rep: Report) -> dict[str | None, list[Row]]:
    """The rows grouped by the qrels they were evaluated against, in order of appearance."""
    groups: dict[str | None, list[Row]] = {}
    for r in rep.rows:
        groups.setdefault(r.eval_set, []).append(r)
    return groups


def quality_table(rep: Report, rows: list[Row] | None = None) -> str:
    """The Markdown table of the models (`rows`, default all): quality, size and query-encoding
    speed; the speed-up is against the table's first timed row."""
    rows = rep.rows if rows is None else rows
    base = next((r.speed.queries_per_s for r in rows if r.speed), None)
    head = ["model", "layers x hidden", "params", *COLUMNS.values(), "queries/s", "speed-up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|"]
    for r in rows:
        size = f"{r.layers} x {r.hidden}" if r.layers and r.hidden else "–"
        qps = r.speed.queries_per_s if r.speed else None
        cells = [r.label, size, _fmt_params(r.params), *(_fmt(r.metrics.get(k)) for k in COLUMNS),
                 _fmt_speed(r.speed), f"{qps / base:.1f}x" if qps and base else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(
    rep: Report, sc: QuerySpeedConfig, plot: str | None, search_plots: list[str] | None = None
) -> str:
    out = [f"# {rep.title}", "", f"Report of the {rep.kind} in `{rep.run_dir}`.", ""]
    if rep.search:
        from densekit.report.search import render_search

        out += render_search(rep.search, search_plots or [])
    if rep.rows:
        groups = eval_sets(rep)
        if len(groups) > 1:  # one table per evaluation set (e.g. in-domain and zero-shot collections)
            out += ["## Models", ""]
            for name, rows in groups.items():
                out += [f"### Evaluated on `{name or 'unknown qrels'}`", "", quality_table(rep, rows), ""]
        else:
            out += ["## Models", "", quality_table(rep), ""]
        speeds = [r.speed for r in rep.rows if r.speed]
        if speeds:
            s = speeds[0]
            out.append(
                f"Query encoding: {s.num_queries} queries in batches of {s.batch_size}, "
                f"{_threads(s.threads)} on {sc.device}, tokenisation included; "
                f"{sc.warmup} warm-up pass then the fastest of {sc.repeats} passes interleaved across "
                "models, with the slowest and fastest pass in brackets. Speed-up is relative to the first row."
            )
        abouts = [f"- **{r.label}**: {r.about}" for r in rep.rows if r.about]
        if abouts:
            out += ["", *abouts]
        compared = comparison_lines(rep)
        if compared:
            out += ["", "Differences, paired over the same queries:", "", *(f"- {c}" for c in compared)]
        if plot:
            out += ["", f"![quality against query speed]({plot})"]
        out.append("")
    if rep.trainings:
        out += ["## Training", "", "| run | steps | best step | final losses (each term) | train queries/s | dev " +
                " | dev ".join(COLUMNS.values()) + " |", "|---|--:|--:|--:|--:|" + "--:|" * len(COLUMNS)]
        for t in rep.trainings:
            out.append("| " + " | ".join([t["name"], _fmt(t["steps"]), _fmt(t["best_step"]), _fmt_losses(t),
                                          _fmt(t["queries_per_s"], 0),
                                          *(_fmt(t["dev"].get(k)) for k in COLUMNS)]) + " |")
        out.append("")
    if rep.stages:
        total = sum(s["seconds"] or 0 for s in rep.stages)
        out += ["## Stages", "", "| # | stage | step | time | status |", "|--:|---|---|--:|---|"]
        for i, s in enumerate(rep.stages, 1):
            took = "–" if s["seconds"] is None else format_duration(s["seconds"])
            out.append(f"| {i} | {s['name']} | {s['step']} | {took} | {s['status']} |")
        out += ["", f"Total stage time: {format_duration(total)}.", ""]
    if rep.notes:
        out += ["## Notes", "", *(f"- {n}" for n in rep.notes), ""]
    return "\n".join(out)


def plot_quality_vs_speed(rep: Report, metric: str, path: Path) -> bool:
    """Scatter of `metric` against queries/s, one labelled point per model; False if nothing to
    plot (no model has both numbers)."""
    points = [(r.label, r.speed.queries_per_s, r.metrics[metric]) for r in rep.rows
              if r.speed and r.metrics.get(metric) is not None]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in Ray workers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    ranges = [speed_range(r.speed) for r in rep.rows if r.speed and r.metrics.get(metric) is not None]
    # Horizontal bars from the slowest to the fastest timed pass (the point is the fastest).
    xerr = [[x - lo for x, (lo, _) in zip(xs, ranges)], [hi - x for x, (_, hi) in zip(xs, ranges)]]
    ax.errorbar(xs, ys, xerr=xerr, fmt="none", ecolor="tab:gray", capsize=3, zorder=2)
    ax.scatter(xs, ys, s=60, color="tab:blue", zorder=3)
    for label, x, y in points:
        ax.annotate(label, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=9)
    if max(xs) / max(min(xs), 1e-9) > 8:
        ax.set_xscale("log")
    # Room for the labels: pad the y range, and the x range on the right.
    lo, hi = min(ys), max(ys)
    pad = max(0.05 * (hi - lo), 0.02)
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + 3 * pad) if hi <= 1 else hi + 3 * pad)
    left, right = ax.get_xlim()
    if ax.get_xscale() == "log":
        ax.set_xlim(left / 1.2, right * 1.6)
    else:
        ax.set_xlim(max(0.0, left - 0.05 * (right - left)), right + 0.15 * (right - left))
    s = next(r.speed for r in rep.rows if r.speed)
    ax.set_xlabel(f"query encoding, queries/s (batch {s.batch_size}, {_threads(s.threads)})")
    ax.set_ylabel(COLUMNS.get(metric, metric))
    ax.set_title(f"{rep.title}: quality against query speed", fontsize=10)
    ax.grid(True, alpha=0.3, zorder=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from densekit.artifacts import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return True
