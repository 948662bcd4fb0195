"""FAISS tasks and actors on several threads run with OMP_WAIT_POLICY=PASSIVE (their OpenMP threads
sleep, not spin, while waiting: spinning starves them when other processes share the cores,
bench/omp_wait.py), unless the user chose a policy; one-thread work keeps Ray's default workers."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from densekit.config import IndexConfig, load_config
from densekit.pipelines.index import index
from densekit.pipelines.search import ShardedSearcher
from densekit.raycluster import openmp_options


@pytest.fixture
def no_user_policy(monkeypatch):
    for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(k, raising=False)


def test_options_only_for_several_threads_and_never_over_the_users_choice(no_user_policy, monkeypatch):
    assert openmp_options(1) == {}
    assert openmp_options(2) == {"runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert openmp_options(4) == {}
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    assert openmp_options(4) == {}


def _policy() -> str | None:
    return os.environ.get("OMP_WAIT_POLICY")


@pytest.mark.ray
def test_a_task_with_the_options_runs_with_the_policy(ray_session, no_user_policy):
    import ray

    with_env = ray.remote(num_cpus=1, **openmp_options(2))(_policy)
    without = ray.remote(num_cpus=1, **openmp_options(1))(_policy)
    assert ray.get(with_env.remote()) == "PASSIVE"
    # One thread adds nothing: such a task sees what every worker of this Ray's job sees (None when
    # the tests' Ray was started without densekit's job runtime_env, PASSIVE when with it).
    assert ray.get(without.remote()) == _job_policy()


def _job_policy() -> str | None:
    import ray

    return ray.get(ray.remote(num_cpus=1)(_policy).remote())


@pytest.mark.ray
def test_index_training_and_search_actors_use_it(tmp_path, ray_session, write_embeddings, caplog,
                                                 no_user_policy):
    x = np.random.default_rng(0).normal(size=(2000, 16)).astype("float32")
    emb = write_embeddings(tmp_path / "emb", x, rows_per_part=1000)
    policies = {}
    for train_cpus in (2, 1):
        out = tmp_path / f"index{train_cpus}"
        cfg = load_config(IndexConfig, overrides=[
            f"embeddings={emb}", f"output={out}", "factory='IVF16,Flat'", "train_size=2000",
            f"train_cpus={train_cpus}", "resources.cpus_per_worker=1"])
        with caplog.at_level(logging.INFO, logger="densekit.pipelines.index"):
            caplog.clear()
            index(cfg)
        line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("trained in"))
        policies[train_cpus] = line.rsplit(" ", 1)[-1].rstrip(")")
    job = _job_policy()
    assert policies == {2: "PASSIVE", 1: job or "default"}

    for cpus, expected in ((2, "PASSIVE"), (1, job)):
        with ShardedSearcher(tmp_path / "index2", num_actors=1, cpus_per_actor=cpus) as searcher:
            import ray

            got = ray.get([a.__ray_call__.remote(lambda self: os.environ.get("OMP_WAIT_POLICY"))
                           for a in searcher.actors])
            assert got == [expected]
