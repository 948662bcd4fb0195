"""Fault injection lives in the tests only (tests/support/faultsite): the shipped package reads no
fault variable and has no fault hook; the test hook really reaches the processes it must."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "platform" / "densekit"
FAULT_WORDS = re.compile(r"DENSEKIT_FAULT|DKTEST_|maybe_inject_fault|inject(ed|ion)?_?fault|fault[ _]injection",
                         re.IGNORECASE)


def test_the_package_reads_no_fault_variable():
    hits = []
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".yaml", ".yml", ".json", ".txt", ".cfg", ".toml"):
            for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if FAULT_WORDS.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not hits, "fault injection in the shipped package:\n" + "\n".join(hits)
    assert not (PACKAGE / "train" / "faults.py").exists()
    # None of the DENSEKIT_* settings the package reads is a fault switch under another name.
    read = set()
    for path in PACKAGE.rglob("*.py"):
        read |= set(re.findall(r"DENSEKIT_[A-Z0-9_]+", path.read_text()))
    assert not [v for v in read if re.search(r"FAULT|KILL|HANG|INJECT|CRASH|FAIL", v)], read


def test_the_hook_patches_densekit_in_a_process_the_tests_start(tmp_path):
    """A subprocess gets the hook through PYTHONPATH (set by tests/conftest.py) and its plan file."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"kill_after_step": 3, "marker": str(tmp_path / "m")}))
    code = ("import densekit.train.progress as p, densekit.methods as m, densekit.train.checkpoints as c\n"
            "print(p.StepProgress.line.__module__, m.write_json_atomic.__module__, c.report_checkpoint.__module__)\n"
            "p.StepProgress(0, 9).line(2, 1.0)\n"
            "p.StepProgress(0, 9).line(3, 1.0)\n"
            "print('not killed')\n")
    env = {**os.environ, "DKTEST_FAULT_PLAN": str(plan)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.stdout.split()[:3] == ["densekit_faults"] * 3, r.stdout + r.stderr
    assert r.returncode == 1 and "not killed" not in r.stdout, r.stdout + r.stderr
    assert (tmp_path / "m").read_text() == "kill: rank 0, step 3\n"
    # Without a plan the same process is untouched.
    env["DKTEST_FAULT_PLAN"] = ""
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    modules = r.stdout.split()[:3]
    assert r.returncode == 0 and all(m.startswith("densekit.") for m in modules), r.stdout + r.stderr
