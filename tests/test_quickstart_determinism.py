"""The quickstart's numbers are reproducible: the scaled-down quickstart run twice (two output
folders, nothing reused) gives the same metrics and bit-identical trained weights on one machine
(docs/models-and-losses.md, "Reproducibility", says what may still differ across machines)."""

from __future__ import annotations

import hashlib
import json

import pytest

from densekit.cli import main

SMALL = [
    "vars.num_docs=120", "vars.num_train_queries=240", "vars.num_dev_queries=30", "vars.num_topics=6",
    "vars.num_concepts=120", "vars.teacher_steps=12", "vars.student_steps=8", "vars.batch_size=16",
    "vars.shard_rows=50", "vars.checkpoint_every=4", "report=false",
]  # fmt: skip
MODELS = ["teacher", "student_distilled", "student_plain"]


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.ray
def test_quickstart_twice_gives_the_same_numbers(tmp_path):  # Ray: densekit starts its own (patient start-up)
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        assert main(["quickstart", f"output={out}", *SMALL]) == 0
    for label in MODELS:
        metrics = [json.loads((out / f"eval_{label}" / "metrics.json").read_text())["metrics"] for out in runs]
        assert metrics[0] == metrics[1], label
        weights = [_sha256(out / label / "model" / "model.safetensors") for out in runs]
        assert weights[0] == weights[1], f"{label}: the trained weights differ between two runs"
    # The runs themselves (every retrieved document and score), not only their averages.
    for stage in ("search_teacher", "search_student_distilled"):
        trec = [next(p for p in (out / stage / "_run.trec", out / stage / "run.trec") if p.is_file()).read_text()
                for out in runs]
        assert trec[0] == trec[1], stage
