"""Model kinds by name, and the loading contract.

`load_model(path)` reads densekit_model.json when present; a sentence-transformers directory loads
as a bi-encoder with ITS pooling, normalisation, head and max length; a plain Hugging Face
directory loads as a bi-encoder only with a pooling said (`overrides["pooling"]`, or a
1_Pooling/config.json in the folder; similarity dot unless overridden), or as the ColBERT or
cross-encoder `kind` asks for.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from densekit.errors import ConfigError
from densekit.models.bi_encoder import BiEncoder
from densekit.models.colbert import ColBERT
from densekit.models.cross_encoder import CrossEncoder
from densekit.models.encoder import HEAD_FILE, DenseModel, check_head_file, check_tower_files
from densekit.models.spec import (
    KINDS,
    SPEC_FILE,
    ModelSpec,
    read_spec,
    spec_from_sentence_transformers,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MODELS", "BiEncoder", "ColBERT", "CrossEncoder", "DenseModel", "ModelSpec", "load_model", "build_model",
    "model_class", "model_from_config", "frozen_copy", "check_model_files", "missing_model_files",
]  # fmt: skip

MODELS: dict[str, type] = {
    "bi_encoder": BiEncoder,
    "colbert": ColBERT,
    "cross_encoder": CrossEncoder,
}


def model_class(kind: str) -> type:
    """The model class for `kind`, with a did-you-mean error for unknown names."""
    if kind not in MODELS:
        import difflib

        close = difflib.get_close_matches(kind, list(KINDS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown model kind '{kind}'; expected one of {', '.join(KINDS)}.{hint}")
    return MODELS[kind]


def load_model(
    path: str | Path,
    kind: str | None = None,
    device: Any = None,
    overrides: dict[str, Any] | None = None,
):
    """Load a model directory for encoding, scoring or training.

    Args:
        path: a densekit save (densekit_model.json), a sentence-transformers directory, or a
            plain Hugging Face encoder directory (as a bi-encoder: with overrides["pooling"] or a
            1_Pooling/config.json; refused otherwise).
        kind: expected kind; checked against a saved spec, or chosen for a plain HF directory
            (default bi_encoder); a cross_encoder or colbert from a sentence-transformers
            directory starts from its transformer with a new head.
        device: move the model there (e.g. "cuda:0"); default: stay on CPU.
        overrides: spec fields to change (None values ignored), e.g. {"max_passage_length": 512}.

    Returns:
        A BiEncoder, ColBERT or CrossEncoder in eval mode.
    """
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"{root}: model directory not found")
    _check_complete(root)
    overrides = overrides or {}
    spec = read_spec(root)
    if spec is not None:
        _check_kind(root, kind, spec.kind)
        spec = spec.replace(**overrides)
        model = model_class(spec.kind).from_pretrained(root, spec, head_required=True)
    elif kind not in (None, "bi_encoder") and spec_from_sentence_transformers(root) is not None:
        # A sentence encoder as the start of a cross-encoder or ColBERT (PROD's CEs start from
        # pretrained encoders): its transformer, a new head.
        spec = ModelSpec(kind=kind).replace(**overrides)
        logger.warning("%s: sentence-transformers encoder as the start of a new %s: its head starts "
                       "untrained (its pooling and normalisation are not used)", root, kind)
        model = model_class(kind).from_pretrained(root, spec, head_required=False)
    elif (spec := spec_from_sentence_transformers(root)) is not None:
        _check_kind(root, kind, "bi_encoder")
        spec = spec.replace(**overrides)
        model = model_class("bi_encoder").from_pretrained(root, spec, head_required=False)
        if spec.head_dim is not None:
            from densekit.models.st_format import load_st_head

            load_st_head(root, model.query_tower.head)
        logger.info(
            "%s: sentence-transformers model, pooling %s, normalised %s",
            root,
            spec.pooling,
            spec.normalized,
        )
    elif (root / "config.json").is_file():
        spec = ModelSpec(kind=kind or "bi_encoder").replace(**_plain_hf_pooling(root, kind, overrides))
        if (
            spec.head_dim is not None
            or spec.kind == "cross_encoder"
            or (spec.kind == "colbert" and spec.colbert_dim)
        ):
            logger.warning(
                "%s: plain Hugging Face encoder: the %s head starts untrained", root, spec.kind
            )
        model = model_class(spec.kind).from_pretrained(root, spec, head_required=False)
    else:
        raise ConfigError(
            f"{root}: not a model directory (no {SPEC_FILE}, modules.json or config.json)"
        )
    model.eval()
    if device is not None:
        model.to(device)
    return model


POOLING_FILE = "1_Pooling/config.json"


def _plain_hf_pooling(root: Path, kind: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The spec fields of a plain Hugging Face folder loaded as a bi-encoder: its pooling must be
    said, by the caller (`overrides["pooling"]`, e.g. model.pooling=mean) or by the folder
    (1_Pooling/config.json, as sentence-transformers writes it; `densekit build` writes one).
    Guessing (CLS pooling and dot product, the old default) gave vectors that differ from what the
    model was trained for, without a word. ColBERT and cross-encoders do not pool.

    Raises:
        ConfigError: naming the folder and how to say the pooling.
    """
    from densekit.models.spec import pooling_mode

    if (kind or "bi_encoder") != "bi_encoder" or overrides.get("pooling") is not None:
        return overrides
    if (root / POOLING_FILE).is_file():
        return {**overrides, "pooling": pooling_mode(root / POOLING_FILE)}
    raise ConfigError(
        f"{root}: a plain Hugging Face model folder (no {SPEC_FILE}, no sentence-transformers "
        f"modules.json or {POOLING_FILE}) does not say how its token vectors are pooled into one "
        "embedding, so densekit will not guess. Say it: model.pooling=cls or model.pooling=mean "
        "(and model.similarity=dot or cosine; default dot) in a train config, or write "
        f'{root / POOLING_FILE} holding {{"pooling_mode": "mean"}} (or "cls") for steps that take a '
        "model folder (encode, search, score). Models densekit trained carry their pooling"
    )


def build_model(spec: ModelSpec, base_path: str | Path):
    """A fresh model of `spec.kind` from a Hugging Face encoder (pretrained towers, new heads)."""
    return model_class(spec.validate().kind).build(spec, base_path)


_SPEC_OVERRIDES = (
    "pooling", "normalize", "similarity", "head_dim", "head_layernorm", "shared", "max_query_length",
    "max_passage_length", "colbert_dim", "query_augmentation",
)  # fmt: skip


def model_from_config(cfg) -> DenseModel:
    """The model a `ModelConfig` describes: loaded, or a student built from `cfg.path`'s layers,
    or a projected student of `cfg.project_to`. Returned in eval mode (call .train() to train).
    """
    from densekit.models.student import student_from_model, student_from_teacher

    overrides = {f: getattr(cfg, f) for f in _SPEC_OVERRIDES if getattr(cfg, f, None) is not None}
    if cfg.project_to is not None:
        model = student_from_model(cfg.path, cfg.project_to, pooling=cfg.pooling or "mean")
        return model.eval()
    model = load_model(cfg.path, kind=cfg.kind, overrides=overrides)
    if cfg.student_layers is not None or cfg.student_num_layers is not None:
        model = student_from_teacher(
            model, layers=cfg.student_layers, num_layers=cfg.student_num_layers
        )
        model.spec = model.spec.replace(teacher=str(cfg.path))
    return model.eval()


def frozen_copy(model) -> DenseModel:
    """A frozen copy of `model` (eval mode, no gradients): LwF's reference, taken at the start of a
    stage. Unwraps DDP (`model.module`)."""
    import copy

    ref = copy.deepcopy(getattr(model, "module", model))
    return ref.eval().requires_grad_(False)


def _check_kind(root: Path, wanted: str | None, found: str) -> None:
    if wanted is not None and wanted != found:
        raise ConfigError(f"{root}: holds a {found} model, but a {wanted} was asked for")


def check_model_files(path: str | Path) -> None:
    """Check that a model directory's configs fit its weight files, without loading any weight.

    config.json is checked against the safetensors headers of each tower (every weight it
    describes present, with its shape), and the head densekit_model.json declares (kind, head_dim,
    colbert_dim) against densekit_head.safetensors. Headers only: cheap enough for a driver to
    call before starting Ray, so a mismatched checkpoint fails in seconds, not in every actor.

    Raises:
        ConfigError: not a directory. InputError: naming the file that does not fit, and how.
    """
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"{root}: model directory not found")
    _check_complete(root)
    spec = read_spec(root)
    towers = [root] if spec is None or spec.shared else [root / "query", root / "passage"]
    for d in towers:
        hidden = check_tower_files(d)
        if spec is None or hidden is None or spec.kind not in MODELS:
            continue
        head = model_class(spec.kind)._make_head(spec, hidden)
        if head is not None:
            check_head_file(head, d / HEAD_FILE, spec.kind)


# A tower's files: transformers needs config.json, weights in one of these forms and a tokenizer in
# one of these forms (a fast tokenizer.json, WordPiece's vocab.txt, a SentencePiece model, or BPE's
# vocab.json with merges.txt). Without a tokenizer file AutoTokenizer may still build one with an
# empty vocabulary: every word then becomes [UNK] and encoding "works".
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # fmt: skip
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def _missing_in_tower(d: Path) -> list[str]:
    if not d.is_dir():
        return [f"{d.name}/ (the tower folder)"]
    missing = []
    if not (d / "config.json").is_file():
        missing.append("config.json")
    if not any((d / f).is_file() for f in WEIGHT_FILES):
        missing.append("the weights (model.safetensors or pytorch_model.bin)")
    bpe = (d / "vocab.json").is_file() and (d / "merges.txt").is_file()
    if not bpe and not any((d / f).is_file() for f in TOKENIZER_FILES):
        missing.append(
            "the tokenizer (tokenizer.json, or vocab.txt, a SentencePiece model, or vocab.json with merges.txt)"
        )
    return missing


def missing_model_files(path: str | Path) -> list[str]:
    """What a model folder lacks for loading: config.json, weights, tokenizer, per tower (a save
    with separate towers holds them in query/ and passage/). Empty when complete."""
    root = Path(path)
    spec = read_spec(root)
    if spec is not None and not spec.shared:
        return [f"{t}/{m}" if not m.endswith("(the tower folder)") else m
                for t in ("query", "passage") for m in _missing_in_tower(root / t)]
    return _missing_in_tower(root)


def _check_complete(root: Path) -> None:
    from densekit.errors import InputError

    missing = missing_model_files(root)
    if len(missing) == 3 and read_spec(root) is None and not (root / "modules.json").is_file():
        raise ConfigError(
            f"{root}: not a model directory (no {SPEC_FILE}, modules.json or config.json, no weights, "
            "no tokenizer)"
        )
    if missing:
        raise InputError(
            root, None,
            f"not a complete model folder: missing {'; '.join(missing)}. A model folder holds "
            "config.json, the weights and the tokenizer files (as save_pretrained writes them); "
            "copy the missing files from where the model came from",
        )
