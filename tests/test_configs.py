"""Every configs/**/*.yaml loads into its step's dataclass: keys and types checked, recursively
(torchtune checks only the top folder). Required values left as ??? are allowed here."""

from __future__ import annotations

from pathlib import Path

import pytest

from densekit.cli import STEPS
from densekit.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "methods" not in p.relative_to(ROOT / "configs").parts)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_config_loads(path):
    step = path.relative_to(ROOT / "configs").parts[0]
    assert step in STEPS, f"{path}: folder is not a step"
    cls = STEPS[step].config_cls()
    load_config(cls, path, allow_missing=True)


def test_configs_exist():
    assert CONFIGS
