"""bench/omp_wait.py and bench/index_build.py run end to end at a tiny size and report what they
say they measure: every phase under both OpenMP wait policies, and densekit's index step beside
one in-process build of the same vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_omp_wait_measures_both_policies_at_each_load(tmp_path):
    out = tmp_path / "omp.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "omp_wait.py"), "--vectors", "4000", "--factory",
                    "IVF16,PQ8", "--busy", "1", "--json", str(out)], check=True, capture_output=True, timeout=300)
    got = json.loads(out.read_text())
    assert [r["busy"] for r in got["results"]] == [0, 1]
    for row in got["results"]:
        for policy in ("default", "passive"):
            assert set(row[policy]) == {"train", "add", "search", "search10"}
            assert all(v > 0 for v in row[policy].values())


@pytest.mark.ray
@pytest.mark.slow
def test_index_build_times_the_step_against_one_index(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "index_build.py"), "--out", str(tmp_path),
                          "--vectors", "20000", "--shard-rows", "5000", "--factory", "IVF64,PQ8",
                          "--train-size", "5000", "--repeats", "1"],
                         check=True, capture_output=True, text=True, timeout=600)
    assert "one in-process index, 1 thread(s)" in run.stdout
    assert "densekit index step, run 1:" in run.stdout
    manifest = json.loads((tmp_path / "index" / "_manifest.json").read_text())
    assert (manifest["ntotal"], manifest["num_shards"], manifest["factory"]) == (20000, 4, "IVF64,PQ8")
