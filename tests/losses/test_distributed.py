"""The gathered contrastive loss on 2 CPU ranks (gloo, DDP) equals the single-process loss on the
concatenated batch: the mean of the ranks' losses and the DDP-averaged gradients, for a
bi-encoder and for ColBERT (whose token axes differ between ranks)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from densekit.data.collate import TrainCollator
from densekit.losses import build_objective
from densekit.models import ModelSpec, build_model, load_model
from densekit_testdata import PASSAGES

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from densekit.data.collate import TrainCollator
    from densekit.losses import build_objective
    from densekit.models import load_model

    rank, world, port, model_dir, groups_file, out = sys.argv[1:]
    rank, world = int(rank), int(world)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    groups = json.load(open(groups_file))
    half = len(groups) // world
    batch = TrainCollator(2, negatives="descend")(groups[rank * half:(rank + 1) * half])
    model = load_model(model_dir)  # eval mode: no dropout, so ranks and the reference agree
    ddp = DDP(model)  # no find_unused_parameters: every trainable parameter must get a gradient
    loss = build_objective({"contrastive": {"params": {"temperature": 0.1}}})(ddp(batch, candidates="global"), batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"loss": loss.item(), "grads": grads}, f"{out}/rank{rank}.pt")
    # Tear down while the interpreter is whole: drop DDP's reducer (it holds gloo work), let both
    # ranks finish before rank 0's store goes, and skip interpreter finalisation, where gloo's
    # threads can still touch Python objects and abort the process (SIGABRT, "terminate called
    # without an active exception", once in CI after the results were saved).
    del ddp, loss
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)
    """
)


def _group(qid, query, pos_pid, pos_text, neg_pid, neg_text) -> dict:
    p = lambda pid, text: {"pid": pid, "text": text, "title": "", "score": None}  # noqa: E731
    return {
        "qid": qid,
        "query": query,
        "positives": [p(pos_pid, pos_text)],
        "negatives": [p(neg_pid, neg_text)],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["bi_encoder", "colbert"])
def test_two_ranks_equal_one_process(tmp_path, tiny_model_dir, kind):
    spec = ModelSpec(kind=kind, pooling="mean", colbert_dim=8, max_query_length=8)
    model = build_model(spec, tiny_model_dir)
    model.save(tmp_path / "model")
    # 4 queries, 2 per rank; rank 1 gets the longest passages, so ColBERT's token axes differ.
    # q1's negative is q0's positive: the relevance mask must be gathered too.
    groups = [
        _group("q0", "dense retrieval encoders", "p0", PASSAGES[0], "p1", PASSAGES[1]),
        _group("q1", "cross encoder teacher", "p1", PASSAGES[1], "p0", PASSAGES[0]),
        _group(
            "q2",
            "hard negatives faiss",
            "p2",
            PASSAGES[2] + " " + PASSAGES[3],
            "p4",
            PASSAGES[4] + " " + PASSAGES[5],
        ),
        _group("q3", "the lazy dog", "p7", PASSAGES[7] + " " + PASSAGES[6], "p6", PASSAGES[6]),
    ]
    (tmp_path / "groups.json").write_text(json.dumps(groups))
    (tmp_path / "worker.py").write_text(WORKER)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(tmp_path / "worker.py"),
                str(r),
                "2",
                str(port),
                str(tmp_path / "model"),
                str(tmp_path / "groups.json"),
                str(tmp_path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out.decode()[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    ref_model = load_model(tmp_path / "model")
    batch = TrainCollator(2, negatives="descend")(groups)
    if kind == "colbert":
        assert batch.passage_texts[:4] != batch.passage_texts[4:]
    loss = build_objective({"contrastive": {"params": {"temperature": 0.1}}})(
        ref_model(batch, candidates="global"), batch
    )
    loss.backward()

    # each rank averages over its own queries; DDP averages gradients over the ranks
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(loss.item(), rel=1e-5)
    assert ranks[0]["loss"] != pytest.approx(ranks[1]["loss"])
    checked = 0
    for name, p in ref_model.named_parameters():
        if not p.requires_grad:
            continue
        torch.testing.assert_close(ranks[0]["grads"][name], ranks[1]["grads"][name])
        torch.testing.assert_close(
            ranks[0]["grads"][name], p.grad, atol=1e-4, rtol=1e-4
        )  # grads reach ~20
        checked += 1
    assert checked > 10
