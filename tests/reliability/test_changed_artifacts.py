"""Never accept a corrupted artifact (issue #17): the sha256 written into every manifest is checked
when a step starts reading the artifact, sizes always; a file that changed since it was written is
refused, naming the file, before Ray starts. (200 flipped bytes in an embedding shard used to be
indexed with exit 0.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from densekit.artifacts import TableWriter, read_manifest, write_manifest
from densekit.cli import STEPS
from densekit.config import load_config
from densekit.data import records as R
from densekit.errors import IncompleteOutputError


class RayStarted(AssertionError):
    """A step started Ray although its input was already known to be corrupt."""


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise RayStarted("the step started Ray before refusing its changed input")

    monkeypatch.setattr("densekit.raycluster.init_ray", refuse)


def _embeddings(directory: Path, n: int = 400, dim: int = 32) -> Path:
    from densekit.pipelines.embeddings import embeddings_batch

    directory.mkdir(parents=True)
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    batch = embeddings_batch([f"p{i}" for i in range(n)], x)
    pq.write_table(pa.Table.from_batches([batch]), directory / "part-00000.parquet", compression="none")
    write_manifest(directory, "encode", {"dim": dim, "metric": "ip"})
    return directory


def _table(directory: Path, schema: pa.Schema, columns: dict) -> Path:
    with TableWriter(directory, schema) as w:
        w.write(pa.table(columns, schema=schema))
    write_manifest(directory, "test")
    return directory


def _flip(path: Path, count: int = 200) -> None:
    """Flip `count` bytes in the middle of the file (its size stays the same)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 - count // 2
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def inputs(tmp_path, tiny_model_dir):
    n = 30
    corpus = _table(tmp_path / "corpus", R.CORPUS_SCHEMA, {R.PID: [f"p{i}" for i in range(n)],
                                                           R.TEXT: [f"passage {i}" for i in range(n)],
                                                           R.TITLE: [""] * n})
    run = _table(tmp_path / "run", R.RUN_SCHEMA, {R.QID: ["q0"] * 5, R.PID: [f"p{i}" for i in range(5)],
                                                  R.RANK: list(range(1, 6)), R.SCORE: [5.0, 4, 3, 2, 1]})
    qrels = _table(tmp_path / "qrels", R.QRELS_SCHEMA, {R.QID: ["q0"], R.PID: ["p0"], R.RELEVANCE: [1]})
    return {"emb": _embeddings(tmp_path / "emb"), "corpus": corpus, "run": run, "qrels": qrels,
            "model": tiny_model_dir, "out": tmp_path / "out"}


CASES = {
    "index: embedding shard": ("index", "emb", ["embeddings={emb}", "output={out}"]),
    "encode: corpus part": ("encode", "corpus", ["input={corpus}", "model={model}", "output={out}"]),
    "evaluate: run part": ("evaluate", "run", ["run={run}", "qrels={qrels}", "output={out}"]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("change", ["200 bytes flipped", "truncated"])
def test_an_input_that_changed_since_it_was_written_is_refused_before_ray(case, change, inputs, no_ray, tally):
    step, which, args = CASES[case]
    part = inputs[which] / "part-00000.parquet"
    if change == "truncated":
        part.write_bytes(part.read_bytes()[:-100])
    else:
        _flip(part)
    with pytest.raises(IncompleteOutputError) as e:
        cfg = load_config(STEPS[step].config_cls(), None, [a.format(**inputs) for a in args])
        STEPS[step].function()(cfg)
    tally.bad_input(f"{case} with {change} after it was written")
    msg = str(e.value)
    assert str(part) in msg and "changed since it was written" in msg, msg
    assert not (inputs["out"] / "_manifest.json").exists()


def test_each_file_is_hashed_once_per_process_and_the_check_can_be_turned_off(tmp_path, monkeypatch):
    """Hashing is the cost of the check: a file is hashed once per process while unchanged on disk
    (write_manifest counts as a check), and DENSEKIT_VERIFY_CHECKSUMS=0 leaves only the sizes."""
    import densekit.artifacts.manifest as A  # where read_manifest looks up sha256_file and _VERIFIED

    emb = _embeddings(tmp_path / "emb")
    monkeypatch.setattr(A, "_VERIFIED", set())  # as in a process that did not write it
    calls = []
    real = A.sha256_file
    monkeypatch.setattr(A, "sha256_file", lambda p, *a: calls.append(Path(p).name) or real(p, *a))
    read_manifest(emb)
    read_manifest(emb)
    assert calls == ["part-00000.parquet"], calls
    assert read_manifest(emb, deep=False)  # sizes only
    _flip(emb / "part-00000.parquet")
    with pytest.raises(IncompleteOutputError, match="changed since it was written"):
        read_manifest(emb)  # the file changed on disk: hashed again
    monkeypatch.setenv("DENSEKIT_VERIFY_CHECKSUMS", "0")
    read_manifest(emb)  # the user turned the hashes off; sizes are still checked
    (emb / "part-00000.parquet").write_bytes(b"short")
    with pytest.raises(IncompleteOutputError, match="changed since it was written"):
        read_manifest(emb)
