"""`densekit train`: the one training loop for every method, on Ray Train (DDP: gloo on CPU, NCCL on GPU).

A method is a config: the student, an optional online teacher (frozen or trained jointly), the
candidate set, and named losses with weights. Nothing method-specific lives in the loop.

Driver (`train`): checks the config (losses are built once here, so a typo in their params fails in
seconds), starts a TorchTrainer whose checkpoints live in `<output>/checkpoints`, and exports the
final and best students as directories that transformers and sentence-transformers load.
Workers (`train_loop_per_worker`): [1] models, [2] optimizer and schedule, [3] resume from the
latest checkpoint, [4] the deterministic global-batch stream, [5] the loop with periodic evaluation
and checkpoints reported to Ray Train.

The package: `driver` (train, fit, check_inputs, export), `worker` (the loop), `model` (models,
objective, candidate modes, TrainModule), `step` (one step's loss, dev evaluation), `checkpoints`,
and `progress`.
"""

from __future__ import annotations

from densekit.train.checkpoints import STATE_FILE
from densekit.train.driver import check_inputs, check_train_table, fit, train, warn_if_no_node_fits
from densekit.train.model import (
    TrainModule,
    build_objective,
    candidate_modes,
    freeze_passage_tower,
    load_configured_model,
    model_kind,
)
from densekit.train.progress import StepProgress
from densekit.train.worker import train_loop_per_worker

__all__ = [
    "STATE_FILE", "StepProgress", "TrainModule", "build_objective", "candidate_modes", "check_inputs",
    "check_train_table", "fit", "freeze_passage_tower", "load_configured_model", "model_kind", "train",
    "train_loop_per_worker", "warn_if_no_node_fits",
]  # fmt: skip
