"""`densekit quickstart`: the method shipped in the package validates (and ships in the wheel), and a
scaled-down quickstart runs end to end (slow): three models evaluated, the table printed, the
report and its plot written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from densekit.cli import main
from densekit.errors import ConfigError
from densekit.quickstart import quickstart, recipe_path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["teacher", "student_distilled", "student_plain"]


def test_quickstart_validates(capsys, tmp_path):
    assert main(["quickstart", "--dry-run", f"output={tmp_path / 'qs'}"]) == 0
    plan = capsys.readouterr().out
    for stage in ["task", "teacher", "groups_hard", "student_distilled", "student_plain",
                  "eval_teacher", "eval_student_distilled", "eval_student_plain"]:
        assert f". {stage}: " in plan
    assert "index_teacher: index" in plan
    # The distilled student trains with the trained teacher online; the plain one without a teacher.
    distilled = plan.split("student_distilled: train")[1].split("student_plain: train")[0]
    plain = plan.split("student_plain: train")[1].split("\n1")[0]
    assert f"teacher.path = {tmp_path / 'qs' / 'teacher' / 'model'}" in distilled
    assert "teacher.path" not in plain and "data.train = " + str(tmp_path / "qs" / "groups_hard") in plain
    assert not (tmp_path / "qs").exists()
    # Overrides reach the method, and a bad one fails before any work.
    assert main(["quickstart", "--dry-run", "vars.teacher_steps=3"]) == 0
    with pytest.raises(ConfigError, match="quickstart.yaml: vars.teacher_stepz: unknown var.*Did you mean 'teacher_steps'"):
        quickstart(["--dry-run", "vars.teacher_stepz=3"])
    assert main(["quickstart", "--dry-run", "outptu=x"]) == 2


@pytest.mark.parametrize("name", ["quickstart_students", "quickstart_students_offline"])
def test_bench_student_files_validate(name, capsys, tmp_path):
    """The README's comparison of distillation settings reruns from these files on a quickstart run."""
    base = tmp_path / "qs"
    assert main(["run", str(ROOT / "bench" / f"{name}.yaml"), "--dry-run", f"output={tmp_path / 'x'}",
                 f"vars.base={base}"]) == 0
    plan = capsys.readouterr().out
    assert f"data.train = {base / 'groups_hard'}" in plan or f"groups = {base / 'groups_hard'}" in plan
    if name.endswith("offline"):
        assert "scored: score" in plan and f"data.train = {tmp_path / 'x' / 'scored'}" in plan
    else:
        assert f"teacher.path = {base / 'teacher' / 'model'}" in plan


def test_recipe_ships_in_the_wheel(tmp_path):
    """An installed densekit (not only this checkout) has the recipe: build a wheel and look."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "platform", src / "platform", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(src)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next((tmp_path / "dist").glob("densekit-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        shipped = z.read("densekit/recipes/quickstart.yaml").decode()
    assert shipped == recipe_path().read_text()


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.ray
def test_quickstart_end_to_end_small(tmp_path, capsys, ray_session):
    out = tmp_path / "qs"
    small = [
        f"output={out}", "vars.num_docs=120", "vars.num_train_queries=240", "vars.num_dev_queries=30",
        "vars.num_topics=6", "vars.num_concepts=120", "vars.teacher_steps=12", "vars.student_steps=8",
        "vars.batch_size=16", "vars.shard_rows=50", "vars.checkpoint_every=4",
        "report_set.speed.num_queries=32", "report_set.speed.repeats=2",
    ]
    assert main(["quickstart", *small]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in report["rows"]] == MODELS
    for row in report["rows"]:
        evaluated = json.loads((out / f"eval_{row['label']}" / "metrics.json").read_text())["metrics"]
        assert row["metrics"] == evaluated
        line = next(x for x in printed.splitlines() if x.startswith(f"| {row['label']} |"))
        assert f"| {evaluated['ndcg@10']:.4f} | {evaluated['mrr@10']:.4f} | {evaluated['recall@100']:.4f} |" in line
        assert row["speed"]["queries_per_s"] > 0
    # The students are smaller than the teacher and were trained on the teacher's hard negatives.
    assert report["rows"][1]["params"] < report["rows"][0]["params"]
    assert str(out / "report.md") in printed
    status = json.loads((out / "method-quickstart.json").read_text())
    assert all("seconds" in s for s in status["stages"].values())
    # The index the students are evaluated on is sharded.
    manifest = json.loads((out / "index_student_distilled" / "_manifest.json").read_text())
    assert len(manifest["shards"]) > 1
    from PIL import Image

    with Image.open(out / "quality_vs_speed.png") as img:
        assert img.format == "PNG"
    # A second run skips every stage and prints the same table.
    assert main(["quickstart", *small]) == 0
    assert all(s.get("skipped") for s in json.loads((out / "method-quickstart.json").read_text())["stages"].values())
