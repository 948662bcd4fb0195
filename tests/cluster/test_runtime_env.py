"""jobs/runtime_env.yaml, packaged exactly as `ray job submit` packages it (Ray's own packaging code,
no cluster): the whole densekit package ships through py_modules, configs/ and jobs/ through
working_dir, and the bulky or private folders (.venv, .git, data/, runs/, out/, .models/) never do."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_ENV = ROOT / "jobs" / "runtime_env.yaml"


def _package(path: Path, out: Path, excludes: list[str], parent: bool) -> set[str]:
    """The file names Ray puts in the package of `path` (as the Jobs CLI does, .gitignore honoured)."""
    from ray._private.ray_constants import get_runtime_env_default_excludes
    from ray._private.runtime_env.packaging import create_package

    if not parent:  # working_dir: Ray adds its default excludes (.git, .venv, ...)
        excludes = get_runtime_env_default_excludes() + excludes
    create_package(
        str(path), out, include_gitignore=True, include_parent_dir=parent, excludes=excludes
    )
    with zipfile.ZipFile(out) as z:
        return {n for n in z.namelist() if not n.endswith("/")}


def _runtime_env() -> dict:
    return yaml.safe_load(RUNTIME_ENV.read_text(encoding="utf-8"))


def test_runtime_env_ships_densekit_as_a_py_module():
    env = _runtime_env()
    assert env["working_dir"] == "."
    assert env["py_modules"] == ["platform/densekit"]
    # Never platform/ itself: it would shadow the stdlib `platform` module on every worker.
    assert "platform" not in env["py_modules"]


@pytest.fixture
def repo_copy(tmp_path):
    """The repository as a user has it: sources plus the folders that must never be uploaded."""
    repo = tmp_path / "repo"
    for name in ("jobs", "configs", "platform"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    for junk in (
        "data/corpus.tsv",
        "runs/task/part-00000.parquet",
        "out/run.trec",
        ".models/bert/w.bin",
        ".venv/bin/python",
        ".git/HEAD",
        "configs/__pycache__/x.pyc",
    ):
        (repo / junk).parent.mkdir(parents=True, exist_ok=True)
        (repo / junk).write_text("x")
    return repo


def test_py_module_holds_every_densekit_file(repo_copy, tmp_path):
    excludes = _runtime_env().get("excludes", [])
    shipped = _package(
        repo_copy / "platform" / "densekit", tmp_path / "mod.zip", excludes, parent=True
    )
    expected = {
        "densekit/" + p.relative_to(repo_copy / "platform" / "densekit").as_posix()
        for p in (repo_copy / "platform" / "densekit").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    # e.g. a bare "data" in excludes would silently drop densekit/data/ (jobs then die on import).
    assert "densekit/data/records.py" in expected
    assert shipped == expected, (
        f"missing {sorted(expected - shipped)}, extra {sorted(shipped - expected)}"
    )


def test_working_dir_holds_configs_and_jobs_but_no_data_or_secrets(repo_copy, tmp_path):
    excludes = _runtime_env().get("excludes", [])
    shipped = _package(repo_copy, tmp_path / "wd.zip", excludes, parent=False)
    for p in list((repo_copy / "jobs").glob("*")) + list((repo_copy / "configs").rglob("*.yaml")):
        assert p.relative_to(repo_copy).as_posix() in shipped
    for prefix in ("data/", "runs/", "out/", ".models/", ".venv/", ".git/", "platform/"):
        leaked = sorted(n for n in shipped if n.startswith(prefix))
        assert not leaked, f"working_dir uploads {leaked}"
    assert not [n for n in shipped if n.endswith(".pyc")]
