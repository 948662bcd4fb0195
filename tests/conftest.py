"""Shared fixtures: a local Ray started once per session, and small on-disk inputs.

Tests never touch the network: models are built from configs with locally trained tokenizers
(densekit.models.tiny) and saved with save_pretrained, so the real from_pretrained path runs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from densekit_testdata import PASSAGES

# Keep Ray quiet and small on a 2-core CI machine; no usage stats, no dashboard.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Test-only fault injection (tests/support/faultsite/densekit_faults.py): every Python process the
# tests start from here on (subprocesses, the workers of a local Ray) imports its sitecustomize,
# which hooks densekit's modules when DKTEST_FAULT_PLAN is set. The plan file is written by the
# `fault_plan` fixture; the package itself reads no fault variable.
FAULTSITE = Path(__file__).resolve().parent / "support" / "faultsite"
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in [str(FAULTSITE), os.environ.get("PYTHONPATH", "")] if p
)
os.environ.setdefault(
    "DKTEST_FAULT_PLAN", str(Path(tempfile.gettempdir()) / f"densekit-fault-plan-{os.getpid()}.json")
)


def start_local_ray(num_cpus: int = 2) -> None:
    import ray

    # address="local": never attach to a cluster some other process started with `ray start`
    # (ray.init() without an address reads /tmp/ray/ray_current_cluster).
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=1_000_000_000,
        logging_level="WARNING",
        log_to_driver=True,
    )


@pytest.fixture
def ray_session():
    """A local Ray cluster shared by every test that asks for it (started on first use).

    Tests that build their own multi-node cluster shut this one down first; the next test that
    asks for `ray_session` starts a fresh one.
    """
    import ray

    if not ray.is_initialized():
        start_local_ray()
    yield
    # Left running on purpose: start-up costs ~5-10 s on 2 cores.


def pytest_sessionfinish(session, exitstatus):
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass


@pytest.fixture
def fault_plan():
    """Set the fault plan every test-started process reads (tests/support/faultsite/densekit_faults.py):
    fault_plan(kill_after_step=5, marker=str(path)). Removed after the test."""
    path = Path(os.environ["DKTEST_FAULT_PLAN"])

    def set_plan(**plan) -> Path:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(plan))
        os.replace(tmp, path)
        return path

    yield set_plan
    path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def tiny_texts():
    """densekit_testdata.PASSAGES, the texts tiny_model_dir's tokenizer is trained on."""
    return list(PASSAGES)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT with a tokenizer trained on PASSAGES (save_pretrained directory).

    Session-scoped: treat it as read-only; copy it (shutil.copytree) before changing it.
    """
    from densekit.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "bert", PASSAGES, layers=2, hidden=32, seed=0)
