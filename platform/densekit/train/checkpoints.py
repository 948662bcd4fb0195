"""Checkpoints of a training run: what rank 0 reports to Ray Train (student, best copy, teacher,
optimizer, schedule, scaler, objective, then the state file last), and resuming from one."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from densekit.errors import ConfigError

STATE_FILE = "trainer_state.json"  # written last into a checkpoint: its presence marks it complete


def report_checkpoint(metrics, state, inner, optimizer, scheduler, scaler, rank, is_best) -> None:
    """Report to Ray Train; rank 0 attaches a checkpoint (the other ranks hold the same weights)."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="densekit-ckpt-") as d:
        root = Path(d)
        inner.student.save(root / "model")
        if is_best:
            # A copy, so that keeping only the latest checkpoint still keeps the best model.
            shutil.copytree(root / "model", root / "best")
        if inner.teacher is not None:
            inner.teacher.save(root / "teacher")
        torch.save(optimizer.state_dict(), root / "optimizer.pt")
        torch.save(scheduler.state_dict(), root / "scheduler.pt")
        torch.save(scaler.state_dict(), root / "scaler.pt")
        if inner.objective_has_state:
            torch.save(inner.objective.state_dict(), root / "objective.pt")
        # Last: a checkpoint without its state file is incomplete and is never resumed from.
        (root / STATE_FILE).write_text(json.dumps(state, default=float))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(root)))


def load_checkpoint(d: Path, inner, optimizer, scheduler, scaler, device) -> dict[str, Any]:
    from densekit.models import load_model

    if not (d / STATE_FILE).is_file():
        raise ConfigError(f"{d}: checkpoint has no {STATE_FILE}: it was not written completely")
    state = json.loads((d / STATE_FILE).read_text())
    inner.student.load_state_dict(load_model(d / "model").state_dict())
    if inner.teacher is not None and (d / "teacher").is_dir():
        inner.teacher.load_state_dict(load_model(d / "teacher").state_dict())
    if inner.objective_has_state and (d / "objective.pt").is_file():
        inner.objective.load_state_dict(torch.load(d / "objective.pt", map_location=device, weights_only=True))
    optimizer.load_state_dict(torch.load(d / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(d / "scheduler.pt", weights_only=True))
    scaler.load_state_dict(torch.load(d / "scaler.pt", weights_only=True))
    return state
