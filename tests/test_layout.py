"""The fixed top level: platform/ is a source root (never a package), and every step has its five
places (STEPS entry, jobs/<step>.py, configs/<step>/, a config class, a test file)."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from densekit.cli import STEPS

ROOT = Path(__file__).resolve().parents[1]


def test_platform_is_not_a_package():
    assert not (ROOT / "platform" / "__init__.py").exists(), (
        "platform/__init__.py would shadow Python's stdlib `platform` (Ray workers die at start-up)"
    )


def test_import_platform_is_stdlib_from_repo_root():
    # Ray jobs put the working dir first on PYTHONPATH: reproduce that.
    out = subprocess.run(
        [sys.executable, "-c", "import platform, uuid; print(platform.__file__, platform.system())"],
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'platform'}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    path, system = out.stdout.split()
    assert "densekit" not in path and Path(path).name == "platform.py"
    assert system


def test_jobs_is_not_importable_and_holds_thin_scripts():
    assert not (ROOT / "jobs" / "__init__.py").exists()
    for script in (ROOT / "jobs").glob("*.py"):
        tree = ast.parse(script.read_text())
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not funcs, f"{script} must stay a thin wrapper around densekit.cli.main"
        assert f'main(["{script.stem}"' in script.read_text(), f"{script} must call main for its own step"


def test_every_step_has_its_places():
    jobs = {p.stem for p in (ROOT / "jobs").glob("*.py")}
    assert jobs == set(STEPS), f"jobs/ and cli.STEPS disagree: {jobs ^ set(STEPS)}"
    test_files = {p.stem for p in (ROOT / "tests").rglob("test_*.py")}
    for name, step in STEPS.items():
        module, _, func = step.run.partition(":")
        assert hasattr(importlib.import_module(module), func), f"{step.run} does not exist"
        assert f"test_{name}" in test_files, f"step {name} has no tests/**/test_{name}.py"
        if step.config is not None:
            assert step.config_cls() is not None
            assert (ROOT / "configs" / name).is_dir(), f"step {name} has no configs/{name}/"
            assert list((ROOT / "configs" / name).glob("*.yaml")), f"configs/{name}/ is empty"
    config_dirs = {p.name for p in (ROOT / "configs").iterdir() if p.is_dir()} - {"methods"}
    assert config_dirs <= set(STEPS), f"configs/ folders without a step: {config_dirs - set(STEPS)}"


@pytest.mark.parametrize("name", sorted(STEPS))
def test_step_help_lists_fields(name, capsys):
    from densekit.cli import main

    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"densekit {name}" in out
    cls = STEPS[name].config_cls()
    if cls is not None:
        import dataclasses

        for f in dataclasses.fields(cls):
            assert f.name in out, f"`densekit {name} --help` does not list {f.name}"


def test_job_wrappers_run_as_scripts_without_shadowing_the_stdlib(tmp_path):
    # `python jobs/<step>.py` puts jobs/ first on sys.path, and jobs/select.py is also the name of a
    # standard-library module that socket, asyncio and pyarrow import. The CI job-submit test died
    # on exactly that; run a wrapper the same way, outside Ray.
    shadowing = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if p.stem in sys.stdlib_module_names)
    assert shadowing, "no wrapper shadows a stdlib module any more: this test then checks nothing"
    out = tmp_path / "task"
    r = subprocess.run(
        [sys.executable, "jobs/generate.py", "configs/generate/tiny.yaml", f"output={out}",
         "num_docs=30", "num_train_queries=5", "num_dev_queries=5", "seed=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "platform")},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "_manifest.json").is_file()


def test_ruff_finds_nothing():
    """The lint rules of pyproject.toml hold over the whole tree (ruff comes with the dev extra).
    They have caught real defects: a step registered twice in STEPS, unused imports, closures over
    loop variables."""
    pytest.importorskip("ruff")
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert out.returncode == 0, f"ruff check . found:\n{out.stdout}{out.stderr}"


# --- package seams (issue #18) ---------------------------------------------------------------------

PACKAGE = ROOT / "platform" / "densekit"
MAX_MODULE_LINES = 500


def _modules() -> dict[str, Path]:
    """densekit's modules by dotted name (a package by its own name, for its __init__.py)."""
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def test_no_module_over_500_lines():
    long = {}
    for p in PACKAGE.rglob("*.py"):
        n = len(p.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            long[p.relative_to(PACKAGE).as_posix()] = n
    assert not long, (
        f"modules over {MAX_MODULE_LINES} lines (split them, as report/, data/formats/ and artifacts/ "
        f"were): {long}"
    )


def test_losses_do_not_load_the_model_classes():
    """The losses need ModelOutput and the candidate sets (densekit.output, densekit.candidates),
    never the models package: it loads every model class and transformers."""
    code = "import sys, densekit.losses; print(sorted(m for m in sys.modules if m.startswith('densekit.models')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "platform")})
    assert out.stdout.strip() == "[]", f"import densekit.losses loaded {out.stdout.strip()}"


def test_no_private_name_is_imported_across_modules():
    """`from densekit.x import _name` (or `module._name` on an imported densekit module) reaches
    into another module's internals: make the name public, or move the code."""
    modules = _modules()
    found = []
    for path in modules.values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = set()  # local names bound to densekit modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("densekit"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {a.name}")
                    if f"{node.module}.{a.name}" in modules:
                        aliases.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                aliases.update(a.asname for a in node.names if a.asname and a.name.startswith("densekit"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, "private names used across modules:\n" + "\n".join(found)


def _module_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The densekit modules `path` imports when it is imported (not inside functions, not under
    `if TYPE_CHECKING:`)."""

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    out: set[str] = set()

    def visit(body: list) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                out.update(filter(None, (resolve(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.update(filter(None, (resolve(f"{node.module}.{a.name}") for a in node.names)))
            for field in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(node, field, None)
                if isinstance(sub, list):
                    visit(sub)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return out


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = {m: _module_level_imports(p, modules) - {m} for m, p in modules.items()}
    cycles, state = [], {}  # state: 1 = on the current path, 2 = done

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                walk(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    assert not cycles, "import cycles (module level):\n" + "\n".join(cycles)
