"""bench/scale.py, the MS-DOC-shaped scale rehearsal (issue #19), end to end at a tiny size: two
corpus sizes through import -> encode (the tiny model) -> index (Flat) -> search -> evaluate, and the
in-process comparison, in its own process (its own local Ray, whose process tree it samples)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["import", "encode", "index", "search", "evaluate"]
SIZES = [1500, 3000]

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    work = tmp_path_factory.mktemp("scale")
    out_json = work / "scale.json"
    cmd = [
        sys.executable, str(ROOT / "bench" / "scale.py"), "--out", str(work / "work"),
        "--docs", *map(str, SIZES), "--queries", "100", "--factory", "Flat", "--compare",
        "--workers", "1", "--max-length", "64", "--one-ray", "--json", str(out_json),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out_json.read_text())
    data["stdout"] = proc.stdout
    # Every size's folder is removed once measured (no --keep); the model stays in the work folder.
    assert not any((work / "work").glob("docs-*"))
    return data


def test_every_stage_of_every_size_is_measured(result):
    assert result["stages"] == STAGES
    assert [s["docs"] for s in result["sizes"]] == SIZES
    for size in result["sizes"]:
        assert list(size["stages"]) == STAGES
        for name, rec in size["stages"].items():
            assert rec["wall_s"] > 0, name
            assert rec["rows"] == size["docs"], name
            assert rec["rows_per_s"] > 0 and rec["driver_peak_rss_mb"] > 0, name
            assert rec["files_written"] > 0 and rec["bytes_written"] > 0, name
        assert size["generate"]["docs"] == size["docs"] and size["generate"]["queries"] == 100
        assert 4_000 < size["generate"]["bytes_per_doc"] < 10_000  # MS-DOC: ~6.5 KB a line
        assert size["embeddings"].startswith("densekit encode")
        assert size["stages"]["search"]["queries"] == 100
        # The Ray process kinds the issue asks about, by their process titles.
        assert any(k.startswith("ray::MapWorker(") for k in size["stages"]["encode"]["workers"])
        assert "ray::_ShardGroup" in size["stages"]["search"]["workers"]


def test_evaluate_metrics_exist(result):
    for size in result["sizes"]:
        metrics = size["metrics"]
        assert set(metrics) == {"mrr@10", "ndcg@10", "recall@10", "recall@100"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_flat_search_equals_one_in_process_index(result):
    compare = result["sizes"][-1]["compare"]
    assert compare["docs"] == SIZES[-1] and compare["factory"] == "Flat"
    assert compare["sharded_recall@10_vs_exact"] == compare["single_recall@10_vs_exact"] == 1.0
    assert compare["identical_ids"] == 1.0
    assert compare["sharded_judged_in_top10"] == compare["single_judged_in_top10"]
    assert compare["single_qps"] > 0 and compare["sharded_qps"] > 0
    assert "single_build_1thread_s" in compare and "build_speed_ratio_sharded_over_single_1thread" in compare


def test_ratios_are_reported(result):
    ratios = result["ratios"]
    assert ratios["size_ratio"] == SIZES[-1] / SIZES[0]
    assert set(ratios["time"]) == set(STAGES)
    assert "driver" in ratios["rss"] and any(k.startswith("ray::MapWorker(") for k in ratios["rss"])
    assert "== scaling:" in result["stdout"] and "peak RSS" in result["stdout"]
