"""Students from teachers: keep a subset of the teacher's transformer layers (e.g. [0, 11], or the
first n as PROD), or start from another encoder with a linear projection to the teacher's size.

Weights are copied key by key with shape asserts (nanoGPT's `from_pretrained` discipline): the
student's layer i is exactly the teacher's layer `layers[i]`; embeddings, heads and everything
outside the layer stack are the teacher's. The spec records the layer map and the teacher.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from densekit.models.encoder import DenseModel, Tower
from densekit.models.spec import ModelSpec

logger = logging.getLogger(__name__)


def layer_stack_path(transformer: nn.Module) -> str:
    """Dotted path of the transformer's layer ModuleList ("encoder.layer" for BERT/RoBERTa,
    "transformer.layer" for DistilBERT)."""
    n = transformer.config.num_hidden_layers
    for name, module in transformer.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) == n
            and name.rsplit(".", 1)[-1] in ("layer", "layers")
        ):
            return name
    raise ValueError(
        f"{type(transformer).__name__}: no ModuleList of {n} layers named 'layer' or 'layers' found"
    )


def check_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    """Validate teacher layer indices (0-based; negatives count from the top): strictly increasing."""
    keep = [i + num_layers if i < 0 else i for i in layers]
    if not keep:
        raise ValueError("layers must name at least one teacher layer")
    bad = [i for i in layers if not -num_layers <= i < num_layers]
    if bad:
        raise ValueError(
            f"layers {bad} out of range: the teacher has {num_layers} layers (0 .. {num_layers - 1})"
        )
    if any(b <= a for a, b in zip(keep, keep[1:])):
        raise ValueError(f"layers must be strictly increasing, got {list(layers)}")
    return keep


@torch.no_grad()
def slice_layers(transformer: nn.Module, layers: Sequence[int]) -> nn.Module:
    """A new transformer of the same architecture holding only the teacher layers `layers`.

    Args:
        transformer: a Hugging Face encoder (AutoModel) to copy from; not modified.
        layers: teacher layer indices, 0 = the first transformer layer.

    Returns:
        A transformer with `len(layers)` layers; config.num_hidden_layers updated.
    """
    from transformers import AutoModel

    keep = check_layers(layers, transformer.config.num_hidden_layers)
    cfg = copy.deepcopy(transformer.config)
    cfg.num_hidden_layers = len(keep)  # DistilBERT maps this onto n_layers
    student = AutoModel.from_config(
        cfg, attn_implementation=transformer.config._attn_implementation
    ).to(dtype=next(transformer.parameters()).dtype)
    prefix = layer_stack_path(transformer) + "."
    t_sd, s_sd = transformer.state_dict(), student.state_dict()
    used = set()
    for key, value in s_sd.items():
        src = key
        if key.startswith(prefix):
            i, rest = key[len(prefix) :].split(".", 1)
            src = f"{prefix}{keep[int(i)]}.{rest}"  # student layer i <- teacher layer keep[i]
        assert src in t_sd, f"{key}: teacher has no {src}"
        assert t_sd[src].shape == value.shape, (
            f"{key}: shape {tuple(value.shape)} != teacher {src} {tuple(t_sd[src].shape)}"
        )
        value.copy_(t_sd[src])
        used.add(src)
    dropped = {
        k
        for k in t_sd
        if k.startswith(prefix) and int(k[len(prefix) :].split(".", 1)[0]) not in keep
    }
    leftover = set(t_sd) - used - dropped
    assert not leftover, f"teacher weights not copied: {sorted(leftover)[:5]}"
    return student.train(transformer.training)


def student_from_teacher(
    teacher: DenseModel | str | Path,
    layers: Sequence[int] | None = None,
    num_layers: int | None = None,
) -> DenseModel:
    """A student of the teacher's kind and spec, keeping `layers` (or the first `num_layers`).

    Args:
        teacher: a loaded model or a directory (anything `load_model` reads).
        layers: teacher layers to keep, e.g. [0, 11] (bottom + top) or [0, 1, 10, 11].
        num_layers: keep the first n layers instead (PROD's 6-layer students).

    Returns:
        A model whose every tower holds the chosen layers; heads are copies of the teacher's;
        spec.layer_map = the kept teacher layers, spec.teacher = the teacher's path (if given).
    """
    if (layers is None) == (num_layers is None):
        raise ValueError(
            "give exactly one of layers (a list of teacher layers) or num_layers (the first n)"
        )
    teacher_path = None
    if not isinstance(teacher, nn.Module):
        from densekit.models import load_model

        teacher_path = str(teacher)
        teacher = load_model(teacher)
    total = teacher.num_layers
    keep = list(range(num_layers)) if num_layers is not None else list(layers)
    keep = check_layers(keep, total)
    towers = []
    for name in ["query"] if teacher.spec.shared else ["query", "passage"]:
        t = teacher.towers[name]
        head = copy.deepcopy(t.head) if t.head is not None else None
        towers.append(Tower(slice_layers(t.transformer, keep), t.tokenizer, head))
    spec = teacher.spec.replace(layer_map=keep, teacher=teacher_path or teacher.spec.teacher)
    logger.info(
        "student of %s: keeps teacher layers %s of %d", teacher_path or "the teacher", keep, total
    )
    return type(teacher)(spec, *towers)


def student_from_model(
    base_path: str | Path, teacher: DenseModel | str | Path, pooling: str = "mean"
) -> DenseModel:
    """A bi-encoder student from another encoder, with a linear projection to the teacher's
    embedding size (distill-retriever's `init_from_another_model`, with a linear head).

    Args:
        base_path: a Hugging Face encoder directory (its own tokenizer).
        teacher: the bi-encoder teacher (model or directory): its embedding size, normalisation,
            similarity, prefixes and max lengths are copied into the student's spec.
        pooling: the student's pooling.
    """
    from densekit.models import build_model, load_model

    teacher_path = None if isinstance(teacher, nn.Module) else str(teacher)
    if teacher_path is not None:
        teacher = load_model(teacher)
    if teacher.kind != "bi_encoder":
        raise ValueError(f"a projected student needs a bi-encoder teacher, got {teacher.kind}")
    t = teacher.spec
    spec = ModelSpec(
        kind="bi_encoder", pooling=pooling, normalize=t.normalize, similarity=t.similarity, head_dim=teacher.dim,
        max_query_length=t.max_query_length, max_passage_length=t.max_passage_length, query_prefix=t.query_prefix,
        passage_prefix=t.passage_prefix, title_mode=t.title_mode, title_sep=t.title_sep, teacher=teacher_path,
    )  # fmt: skip
    return build_model(spec, base_path)
