"""PQ indexes are trained without FAISS's polysemous re-ordering of the centroids (which only
polysemous search uses, and densekit's search never does): the same search results, and a
fraction of the training time."""

from __future__ import annotations

import time

import faiss
import numpy as np
import pytest

from densekit.pipelines.index import new_index, pq_parts, skip_polysemous_training


def _flags(index) -> list[bool]:
    return [p.do_polysemous_training for p in pq_parts(index)]


@pytest.mark.parametrize("factory", ["PQ8", "IVF16,PQ8", "OPQ8,IVF16,PQ8", "IVF16,PQ8np"])
def test_pq_factories_skip_polysemous_training(factory):
    index = new_index(factory, 32, "ip")
    skip_polysemous_training(index)
    assert _flags(index) and not any(_flags(index))


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW8"])
def test_other_factories_are_left_alone(factory):
    skip_polysemous_training(new_index(factory, 32, "ip"))  # nothing to switch off, no error


def test_same_results_as_with_polysemous_training_and_faster():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 32)).astype("float32")
    q = rng.normal(size=(50, 32)).astype("float32")
    faiss.omp_set_num_threads(1)
    results, seconds = [], []
    for skip in (False, True):
        index = new_index("IVF16,PQ8", 32, "ip")
        faiss.downcast_index(faiss.extract_index_ivf(index)).cp.seed = 0
        if skip:
            skip_polysemous_training(index)
        assert any(_flags(index)) != skip
        t = time.perf_counter()
        index.train(x)
        seconds.append(time.perf_counter() - t)
        index.add(x)
        faiss.extract_index_ivf(index).nprobe = 4
        results.append(index.search(q, 10))
    (d0, i0), (d1, i1) = results
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_allclose(d0, d1, rtol=1e-5, atol=1e-5)
    assert seconds[1] < seconds[0]
