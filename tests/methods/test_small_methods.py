"""The small methods end to end on a shrunken generated task: one run folder for the module (the
common stages run once and every method reuses them), each method's student must beat the
no-distillation baseline (same start, steps and data, contrastive only) on the dev nDCG@10, and
results-<name>.json and the merged report must show both.

The scale is reduced (fewer documents and queries, shorter warm-ups and students) to fit a few
minutes on a 2-core CPU. Every method runs end to end (the mechanics); the student must beat the
baseline only for the methods of TESTED. Whether a method pays is measured on pretrained encoders
and real text, not here: configs/methods/real/ and docs/real-tier.md. The toy tier's randomly
initialised models cannot show it (margin_mse, PROD and STAR/ADORE lose to the baseline here, for
the reasons docs/benchmarks.md#toy-tier-methods measures), so those three have no quality test.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from densekit.methods import run

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.long]

ROOT = Path(__file__).resolve().parents[2]
METHODS_DIR = ROOT / "configs" / "methods"

# Shared by every method (they must be equal across methods: the common stages are reused).
COMMON = ["vars.num_docs=450", "vars.num_train_queries=1000", "vars.num_dev_queries=300",
          "vars.warmup_steps=80", "vars.teacher_steps=200", "vars.steps=60",
          "report_set.speed.enabled=false"]
# Each method's own knobs at the reduced scale (steps add up to vars.steps where a method splits them).
OWN = {
    "query_align": [],
    "lead": [],
    "star_adore": ["vars.star_steps=45", "vars.adore_steps=15"],
    "margin_mse": ["vars.ce_steps=120"],
    "prod": ["vars.ce_steps=120", "vars.de_kd_steps=18", "vars.ce_kd_steps=18", "vars.ce_large_kd_steps=18",
             "vars.final_steps=6"],
}
STUDENT = {"query_align": "query_align_student", "lead": "lead_student", "star_adore": "adore_student",
           "margin_mse": "margin_mse_student", "prod": "prod_student"}
TESTED = ["query_align", "lead"]
# Measured at this scale (450 documents, sparse training labels; baseline nDCG@10 0.7380, DE teacher
# 0.8081): query_align 0.8037, lead 0.7787.


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("small-methods") / "run"


def run_method(name: str, run_dir: Path) -> dict:
    args = [str(METHODS_DIR / f"{name}.yaml"), f"output={run_dir}", *COMMON, *OWN[name]]
    assert run(args) == 0
    return json.loads((run_dir / f"results-{name}.json").read_text())


ORDER = ["query_align", "lead", "star_adore", "margin_mse", "prod"]  # the first one makes the common stages


@pytest.mark.parametrize("name", ORDER)
def test_small_method_runs_end_to_end(name, run_dir, ray_session, caplog):
    caplog.set_level(logging.INFO, logger="densekit.methods")
    results = run_method(name, run_dir)["results"]
    student, baseline = results[STUDENT[name]], results["baseline"]
    assert student["stage"] != baseline["stage"] == "baseline_eval"
    for row in (student, baseline):
        assert 0.0 < row["metrics"]["ndcg@10"] <= 1.0 and "recall@100" in row["metrics"]
    # The report merges every method of the folder: the student's and the baseline's rows.
    report = json.loads((run_dir / "report.json").read_text())
    sources = {row["source"] for row in report["rows"]}
    assert {student["stage"], "baseline_eval"} <= sources
    text = (run_dir / "report.md").read_text()
    assert student["stage"] in text and "baseline" in text
    if name != ORDER[0]:
        # The common stages were made by the first method: this one skipped them.
        assert "baseline (train): complete, skipping" in caplog.text


@pytest.mark.parametrize("name", TESTED)
def test_small_method_student_beats_the_baseline(name, run_dir, ray_session):
    # Rerunning the finished method is a no-op (every stage complete): read its results.
    results = run_method(name, run_dir)["results"]
    s = results[STUDENT[name]]["metrics"]["ndcg@10"]
    b = results["baseline"]["metrics"]["ndcg@10"]
    assert s > b, f"{name}: student nDCG@10 {s:.4f} does not beat the baseline's {b:.4f}"
