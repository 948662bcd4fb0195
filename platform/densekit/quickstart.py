"""`densekit quickstart`: the quickstart method shipped inside the package (recipes/quickstart.yaml),
run by the same runner as any method, then its table printed.

It generates a retrieval task with sparse training labels, trains a teacher, mines hard negatives
with it, distils a smaller student from the teacher's scores of each batch (and trains the same
student without the teacher, for comparison), builds sharded indexes, evaluates all three, and
writes the report into the run folder.
"""

from __future__ import annotations

import logging
import sys
from importlib import resources
from pathlib import Path

from densekit.config import load_config

logger = logging.getLogger(__name__)

RECIPE = "quickstart.yaml"


def recipe_path() -> Path:
    """The quickstart method file inside the installed package."""
    path = Path(str(resources.files("densekit") / "recipes" / RECIPE))
    if not path.is_file():  # pragma: no cover - a broken installation
        raise FileNotFoundError(f"{path}: the package was installed without its recipes")
    return path


def quickstart(argv: list[str]) -> int:
    """densekit quickstart [key=value ...] [--dry-run] [--from STAGE]

    Runs the packaged quickstart method (densekit/recipes/quickstart.yaml) on a local Ray that
    starts by itself and prints the table of the teacher, the distilled student and the same
    student trained without distillation. Overrides apply to the method, e.g. output=runs/qs
    (default runs/quickstart), vars.teacher_steps=600, vars.num_docs=500; see the file for all vars.
    Running it again skips the finished stages; --from STAGE reruns from a stage.
    """
    from densekit.methods import MethodConfig, run

    path = recipe_path()  # a misspelt vars.x= fails in load_method, before any work
    rc = run([str(path), *argv])
    if rc or "--dry-run" in argv:
        return rc
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    method: MethodConfig = load_config(MethodConfig, path, overrides)
    out = Path(method.output)
    report = out / "report.json"
    if not report.is_file():  # report=false
        return rc
    from densekit.report import PLOT_PNG, REPORT_MD, Report, comparison_lines, quality_table

    rep = Report.load(report)
    table = quality_table(rep)
    compared = "".join(f"{c}\n" for c in comparison_lines(rep))
    total = sum(s.get("seconds") or 0 for s in rep.stages)
    # The command's result, like --dry-run's plan: printed, not logged.
    sys.stdout.write(
        f"\n{table}\n\n{compared}Report: {out / REPORT_MD} (plot: {out / PLOT_PNG}); stages took {total:.0f} s.\n"
    )
    return rc
