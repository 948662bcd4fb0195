"""Model actors hand freed memory back to the OS after each batch (glibc `malloc_trim`, Arrow's
pool's `release_unused`), so their RSS grows far less with the corpus: the helper really lowers a
fragmented heap's RSS and what Arrow's pool kept, and the encode and score actors' batch calls
run it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from densekit.data import records as R
from densekit.pipelines import score, text_encoder
from densekit.pipelines.text_encoder import TextEncoder, release_free_memory

# A heap left fragmented the way a long-running actor's is: 200 MB of 2 KB blocks freed, one block
# allocated after them still live, so glibc cannot shrink the heap from its top by itself.
FRAGMENT = textwrap.dedent(
    """
    import sys, psutil
    sys.path[:0] = {paths!r}
    from densekit.pipelines.text_encoder import release_free_memory
    me = psutil.Process()
    blocks = [bytes(2000) for _ in range(100_000)]
    pin = bytes(2000)
    del blocks
    before = me.memory_info().rss
    trimmed = release_free_memory()
    after = me.memory_info().rss
    print(int(trimmed), before >> 20, after >> 20)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_release_free_memory_lowers_a_fragmented_heap():
    code = FRAGMENT.format(paths=[p for p in sys.path if p])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    trimmed, before, after = map(int, out.stdout.split())
    if not trimmed:
        pytest.skip("this C library has no malloc_trim (not glibc)")
    assert before - after > 100, (before, after)  # MB: most of the 200 MB freed goes back


# Arrow's pool keeps what a read row group freed: 200 MB of strings, read and dropped.
ARROW = textwrap.dedent(
    """
    import sys, psutil, pyarrow as pa
    sys.path[:0] = {paths!r}
    from densekit.pipelines.text_encoder import release_free_memory
    me = psutil.Process()
    pool = pa.default_memory_pool()
    for _ in range(4):
        col = pa.array(["x" * 5000] * 10_000)  # 50 MB of text, as a read row group holds
        del col
    assert pool.bytes_allocated() == 0
    before = me.memory_info().rss
    release_free_memory()
    after = me.memory_info().rss
    print(pool.backend_name, before >> 20, after >> 20)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS as Linux reports it")
def test_release_free_memory_hands_back_what_arrows_pool_kept():
    code = ARROW.format(paths=[p for p in sys.path if p])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    backend, before, after = out.stdout.split()
    if backend == "system":
        pytest.skip("Arrow built without its own allocator: the C heap's trim covers it")
    assert int(before) - int(after) > 30, (backend, before, after)  # MB


def test_release_free_memory_is_harmless_to_call_repeatedly():
    first = release_free_memory()
    assert release_free_memory() is first
    assert np.ones(1000).sum() == 1000  # the heap still works


def test_encode_and_score_actors_trim_after_each_batch(monkeypatch, tiny_model_dir):
    calls = []
    monkeypatch.setattr(text_encoder, "release_free_memory", lambda: calls.append(1) or True)
    enc = TextEncoder(str(tiny_model_dir), "passages", batch_size=4)
    batch = {R.ID: np.array(["a", "b"], dtype=object),
             R.TEXT: np.array(["dense retrieval", "hard negatives"], dtype=object),
             "__row": np.arange(2)}
    enc(batch)
    enc(batch)
    assert len(calls) == 2

    table = pa.table({R.QID: ["q1"], R.QUERY: ["dense retrieval"],
                      R.POSITIVES: [[R.passage("p1", "hard negatives are mined", None)]],
                      R.NEGATIVES: [[R.passage("p2", "quick brown fox", None)]]}, schema=R.GROUPS_SCHEMA)
    monkeypatch.setattr(score, "release_free_memory", lambda: calls.append(2) or True)
    score.TeacherScorer(str(tiny_model_dir), kind="bi_encoder", batch_size=4)(table)
    assert calls == [1, 1, 2]
