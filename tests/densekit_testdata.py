"""The small texts many tests share: eight passages, three queries and training groups over them.

Test modules and conftest files import this module directly (`from densekit_testdata import ...`):
pyproject.toml puts tests/ on pytest's `pythonpath`, while under `--import-mode=importlib` no test
module can import a conftest. The name is unique so it cannot clash with a library or a test module.
"""

from __future__ import annotations

import shutil

import pytest

from densekit.data.records import passage

# torch.compile's CPU backend (inductor) builds C++ kernels: where no C++ compiler is installed,
# densekit falls back to eager models (tests/models/test_compiled.py tests that fallback anywhere),
# and the tests that check a compile happened do not apply.
needs_cxx = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="no C++ compiler: torch.compile cannot build kernels here (densekit runs eagerly)",
)

PASSAGES = [
    "dense retrieval trains small query and passage encoders",
    "a cross encoder teacher scores each query passage pair",
    "hard negatives are mined from a faiss index of the corpus",
    "margin mse distils the score margin of positive and negative",
    "layer wise distillation aligns the scores of chosen layers",
    "progressive distillation moves from weaker to stronger teachers",
    "static hard negatives and dynamic hard negatives train the query encoder",
    "the quick brown fox jumps over the lazy dog",
]
QUERIES = [
    "which encoders does dense retrieval train",
    "who scores query passage pairs",
    "where are hard negatives mined",
]


def make_groups(n_neg: int = 2, scores: bool = False) -> list[dict]:
    """Training-group records: query i has positive PASSAGES[i] and the next passages as negatives."""
    groups = []
    for i, q in enumerate(QUERIES):
        negs = [(i + 1 + k) % len(PASSAGES) for k in range(n_neg)]
        sc = (lambda j: float(10 - j)) if scores else (lambda j: None)
        groups.append(
            {
                "qid": f"q{i}",
                "query": q,
                "positives": [passage(f"p{i}", PASSAGES[i], f"title {i}", sc(i))],
                "negatives": [passage(f"p{j}", PASSAGES[j], "", sc(j)) for j in negs],
            }
        )
    return groups
