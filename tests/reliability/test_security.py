"""Security: densekit never unpickles or evaluates what it reads, never runs a shell on built strings
(shell=True, os.system, os.popen), and its docs never put a Ray dashboard on the public network.

The code scan works on the syntax tree (aliases like `import pickle as pk` resolved), so comments,
docstrings and method calls such as `model.eval()` do not count. It is itself tested on planted code.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "platform" / "densekit"

PICKLE_MODULES = ("pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib")
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def _dotted(node: ast.AST) -> str | None:
    """`a.b.c` for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> fully qualified name, from the module's imports."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = (
                    a.name if a.asname else a.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _problem(call: ast.Call, name: str) -> str | None:
    """Why this call (with its fully qualified name) is unsafe, or None."""
    module, _, func = name.rpartition(".")
    if module in PICKLE_MODULES and func in ("load", "loads", "Unpickler"):
        return f"{name}() unpickles data"
    if name in ("pandas.read_pickle", "torch.serialization.load"):
        return f"{name}() unpickles data"
    if name == "torch.load" and not _is_true(_keyword(call, "weights_only")):
        return "torch.load() without weights_only=True"
    if name in ("numpy.load", "np.load") and _is_true(_keyword(call, "allow_pickle")):
        return "numpy.load(allow_pickle=True)"
    if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
        return f"{func or name}() of a string"
    if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
        return f"{name}() builds arbitrary objects"
    if name in ("yaml.load", "yaml.load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        if (_dotted(loader) or "").rpartition(".")[2] not in SAFE_YAML_LOADERS:
            return f"{name}() without Loader=yaml.SafeLoader"
    if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
        return f"{name}() runs its argument through a shell"
    if _is_true(_keyword(call, "shell")):
        return f"{name}(shell=True)"
    return None


def scan_unsafe(root: Path) -> list[str]:
    """`file:line: problem` for every unsafe call in the .py files under `root`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as e:
            found.append(f"{rel}:{e.lineno}: cannot parse ({e.msg})")
            continue
        aliases = _aliases(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            if name is None:
                if _is_true(_keyword(node, "shell")):
                    found.append(f"{rel}:{node.lineno}: call with shell=True")
                continue
            head, _, rest = name.partition(".")
            # Resolve the first component through the imports; bare builtins stay as they are.
            if head in aliases:
                name = aliases[head] + ("." + rest if rest else "")
            elif isinstance(node.func, ast.Attribute) and head not in PICKLE_MODULES + (
                "yaml",
                "torch",
                "numpy",
                "np",
                "pandas",
                "builtins",
                "subprocess",
                "os",
            ):
                # A method on some object (model.eval(), cfg.load(...)): only shell=True matters.
                if _is_true(_keyword(node, "shell")):
                    found.append(f"{rel}:{node.lineno}: {name}(shell=True)")
                continue
            problem = _problem(node, name)
            if problem:
                found.append(f"{rel}:{node.lineno}: {problem}")
    return found


def test_package_has_no_unsafe_calls():
    assert PACKAGE.is_dir()
    problems = scan_unsafe(PACKAGE)
    assert not problems, "unsafe calls in densekit:\n" + "\n".join(problems)


PLANTED_BAD = """\
import pickle
import pickle as pk
import torch, yaml, subprocess
from pickle import loads
from torch import load as tload
import numpy as np
import pandas as pd
import os

a = pickle.load(f)
b = pk.loads(data)
c = loads(data)
d = torch.load("model.pt")
e = torch.load("model.pt", weights_only=False)
g = tload("x.pt")
h = eval(text)
exec(code)
i = yaml.load(stream)
j = yaml.load(stream, Loader=yaml.Loader)
k = yaml.unsafe_load(stream)
subprocess.run(cmd, shell=True)
subprocess.check_output(f"ls {path}", shell=True)
m = np.load("x.npy", allow_pickle=True)
n = pd.read_pickle("x.pkl")
os.system("ray job submit -- python " + script)
o = subprocess.getoutput(f"ls {path}")
"""

PLANTED_GOOD = '''\
"""A docstring may say pickle.load(f), eval(x) or shell=True: text is not code."""
import torch, yaml, subprocess
import numpy as np

# pickle.loads(x) in a comment does not count either
state = torch.load("model.pt", weights_only=True, map_location="cpu")
cfg = yaml.safe_load(stream)
cfg2 = yaml.load(stream, Loader=yaml.SafeLoader)
cfg3 = yaml.load(stream, yaml.CSafeLoader)
model.eval()
self.model.eval()
subprocess.run(["ray", "job", "submit", "--", "python", script], check=True)
subprocess.run(cmd, shell=False)
arr = np.load("x.npy")
value = table.load(path)
'''


def test_scan_catches_every_planted_unsafe_call(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "bad.py").write_text(PLANTED_BAD)
    (pkg / "good.py").write_text(PLANTED_GOOD)
    problems = scan_unsafe(pkg)
    flagged_lines = sorted(int(p.split(":")[1]) for p in problems)
    # Every call line of PLANTED_BAD (lines 10-26), and nothing from PLANTED_GOOD.
    assert flagged_lines == list(range(10, 27)), "\n".join(problems)
    assert all(p.startswith("pkg/sub/bad.py:") for p in problems)
    assert "pkg/sub/bad.py:13: torch.load() without weights_only=True" in problems
    assert "pkg/sub/bad.py:16: eval() of a string" in problems
    assert "pkg/sub/bad.py:21: subprocess.run(shell=True)" in problems


def test_scan_reports_unparsable_files(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "broken.py").write_text("def f(:\n")
    assert scan_unsafe(tmp_path / "pkg") == ["pkg/broken.py:1: cannot parse (invalid syntax)"]


# --- the docs: no public dashboard -----------------------------------------------------------------

PUBLIC_HOSTS = r"(?:0\.0\.0\.0|::|\[::\]|\*)"
PUBLIC_DASHBOARD = [
    re.compile(rf"dashboard[-_]host\s*[= ]\s*['\"]?{PUBLIC_HOSTS}(?![\w.:])", re.I),
    re.compile(rf"dashboard_host\s*=\s*['\"]{PUBLIC_HOSTS}['\"]", re.I),
    re.compile(
        r"(?:8265|6379|10001)\b[^\n]*0\.0\.0\.0/0|0\.0\.0\.0/0[^\n]*\b(?:8265|6379|10001)\b"
    ),
    re.compile(r"RAY_AUTH_MODE\s*=\s*['\"]?disabled", re.I),
]


def public_dashboard_advice(text: str) -> list[str]:
    """Lines of `text` that start a dashboard or GCS on a public interface, open their ports to the
    internet, or turn token authentication off. Comment lines that warn against it still count
    unless they say "never"/"not"."""
    hits = []
    for n, line in enumerate(text.splitlines(), 1):
        if re.search(r"\b(never|not|don't|do not)\b", line, re.I):
            continue
        if any(p.search(line) for p in PUBLIC_DASHBOARD):
            hits.append(f"{n}: {line.strip()}")
    return hits


def test_docs_never_open_the_dashboard_publicly():
    for name in ("README.md", "cluster.yaml", "jobs/runtime_env.yaml"):
        hits = public_dashboard_advice((ROOT / name).read_text(encoding="utf-8"))
        assert not hits, f"{name} tells users to expose Ray:\n" + "\n".join(hits)


def test_readme_says_how_to_reach_the_cluster_safely():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "ray dashboard cluster.yaml" in readme  # the SSH tunnel
    assert "RAY_AUTH_MODE=token" in readme
    assert "ray get-auth-token --generate" in readme


def test_docs_check_catches_planted_advice():
    planted = [
        "ray start --head --dashboard-host=0.0.0.0",
        "ray start --head --dashboard-host 0.0.0.0 --port 6379",
        'ray.init(dashboard_host="0.0.0.0")',
        "      IpPermissions: [{FromPort: 8265, ToPort: 8265, IpRanges: [{CidrIp: 0.0.0.0/0}]}]",
        "export RAY_AUTH_MODE=disabled",
    ]
    for line in planted:
        assert public_dashboard_advice(f"intro\n{line}\n"), line
    safe = [
        "ray start --head --dashboard-host=127.0.0.1",
        "Never bind the dashboard to 0.0.0.0 (--dashboard-host=0.0.0.0).",
        "ssh -L 8265:localhost:8265 head",
    ]
    for line in safe:
        assert not public_dashboard_advice(line), line
