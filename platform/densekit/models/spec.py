"""`ModelSpec`: everything a saved model needs to encode and score, written as densekit_model.json.

The spec travels with every checkpoint, so encode/score/search never ask for `--pooling` by hand.
It also reads the sentence-transformers files (modules.json, 1_Pooling/config.json, ...) of a
directory that has no densekit_model.json, so published models load with their own pooling.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densekit.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

SPEC_FILE = "densekit_model.json"
KINDS = ("bi_encoder", "colbert", "cross_encoder")
POOLINGS = ("cls", "mean")
SIMILARITIES = ("dot", "cosine")
TITLE_MODES = ("prefix", "pair", "none")


@dataclass
class ModelSpec:
    """How a model encodes and scores. Saved beside the HF files as `densekit_model.json`.

    Tokenisation fields apply to every kind; the others only to the kinds named in their comment.
    """

    kind: str = "bi_encoder"  # bi_encoder | colbert | cross_encoder
    # --- bi-encoder
    pooling: str = "cls"  # cls | mean (also the pooling of the per-layer DE views)
    normalize: bool = False  # L2-normalise embeddings (always on when similarity is cosine)
    similarity: str = "dot"  # dot | cosine: what a score means; cosine implies normalised output
    head_dim: int | None = None  # linear head on the pooled vector (None: no head)
    head_layernorm: bool = False  # LayerNorm after the head (STAR's RobertaDot: Linear + LayerNorm)
    shared: bool = True  # one tower for queries and passages; False: query/ and passage/ subfolders
    # --- tokenisation (every kind)
    max_query_length: int = 32
    max_passage_length: int = 256  # cross-encoder pairs: max_query_length + max_passage_length
    query_prefix: str = ""  # prepended to every query text (E5-style "query: ")
    passage_prefix: str = ""  # prepended to every passage text
    title_mode: str = (
        "prefix"  # prefix: title + title_sep + text; pair: [CLS] title [SEP] text; none
    )
    title_sep: str = " "
    # --- ColBERT
    colbert_dim: int | None = 128  # compression linear (None: keep the hidden size)
    query_augmentation: bool = True  # pad queries to max_query_length with [MASK] (they score)
    query_marker: str | None = None  # e.g. "[unused0]" inserted after [CLS]; must be in the vocab
    doc_marker: str | None = None  # e.g. "[unused1]"
    # --- students
    layer_map: list[int] | None = None  # student layer i holds teacher layer layer_map[i]
    teacher: str | None = None  # the directory the student was built from
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the model

    @property
    def normalized(self) -> bool:
        """Whether embeddings leave the model L2-normalised (dot on them is then cosine)."""
        return self.normalize or self.similarity == "cosine"

    def validate(self) -> ModelSpec:
        """Check names and ranges; raise ConfigError with what was expected. Returns self."""
        for name, value, choices in (
            ("kind", self.kind, KINDS),
            ("pooling", self.pooling, POOLINGS),
            ("similarity", self.similarity, SIMILARITIES),
            ("title_mode", self.title_mode, TITLE_MODES),
        ):
            if value not in choices:
                close = difflib.get_close_matches(str(value), choices, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(
                    f"model spec: unknown {name} '{value}'; expected one of {', '.join(choices)}.{hint}"
                )
        for name in ("max_query_length", "max_passage_length"):
            if getattr(self, name) < 2:
                raise ConfigError(
                    f"model spec: {name} must be at least 2, got {getattr(self, name)}"
                )
        if self.head_dim is not None and self.head_dim < 1:
            raise ConfigError(f"model spec: head_dim must be positive or null, got {self.head_dim}")
        if self.head_layernorm and self.head_dim is None:
            raise ConfigError("model spec: head_layernorm needs a head (set head_dim)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model spec") -> ModelSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"format_version"})
        if unknown:
            raise ConfigError(
                f"{source}: unknown field(s) {', '.join(unknown)}; expected some of {', '.join(sorted(names))}"
            )
        return cls(**{k: v for k, v in data.items() if k in names}).validate()

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with `changes` applied (None values are ignored), validated."""
        changes = {k: v for k, v in changes.items() if v is not None}
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"model spec: unknown field(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes).validate()

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / SPEC_FILE
        data = {"format_version": 1, **self.to_dict()}
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return path


def read_spec(directory: str | Path) -> ModelSpec | None:
    """The spec saved in `directory`, or None when it has no densekit_model.json."""
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, e.lineno, f"not valid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise InputError(path, None, "expected a JSON object of spec fields")
    return ModelSpec.from_dict(data, source=str(path))


def spec_from_sentence_transformers(directory: str | Path) -> ModelSpec | None:
    """A bi-encoder spec from a sentence-transformers directory, or None if it is not one.

    Reads the pooling mode (1_Pooling/config.json), whether a Normalize module follows, the
    similarity function and prompts (config_sentence_transformers.json) and max_seq_length
    (sentence_bert_config.json). A Dense module is read as the head (loaded by the bi-encoder).

    Raises:
        InputError: a module or pooling mode densekit cannot reproduce (so results never silently
            differ from sentence-transformers).
    """
    root = Path(directory)
    modules_path = root / "modules.json"
    if not modules_path.is_file():
        return None
    modules = _read_json(modules_path)
    if not isinstance(modules, list):
        raise InputError(modules_path, None, "expected a JSON list of modules")
    spec: dict[str, Any] = {"kind": "bi_encoder"}
    dense: list[dict] = []
    saw_layernorm = False
    for i, module in enumerate(modules):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        mpath = root / module.get("path", "")
        if kind == "Transformer":
            if module.get("path", "") not in ("", "."):
                raise InputError(
                    modules_path,
                    None,
                    f"module {i}: the Transformer must be at the top level, not in '{module.get('path')}'",
                )
        elif kind == "Pooling":
            spec["pooling"] = pooling_mode(mpath / "config.json")
        elif kind == "Normalize":
            spec["normalize"] = True
        elif kind == "Dense":
            cfg = _read_json(mpath / "config.json")
            act = str(cfg.get("activation_function", "torch.nn.modules.linear.Identity"))
            if not act.endswith("Identity"):
                raise InputError(
                    mpath / "config.json",
                    None,
                    f"Dense activation '{act}' is not supported (densekit heads are linear)",
                )
            dense.append(cfg)
            spec["head_dim"] = int(cfg["out_features"])
        elif kind == "LayerNorm":
            saw_layernorm = True
        else:
            raise InputError(
                modules_path,
                None,
                f"module {i} of type '{module.get('type')}' is not supported; densekit reads Transformer, Pooling, Dense, LayerNorm, Normalize",
            )
    if len(dense) > 1:
        raise InputError(modules_path, None, "more than one Dense module is not supported")
    if saw_layernorm:
        if not dense:
            raise InputError(
                modules_path, None, "a LayerNorm module without a Dense head is not supported"
            )
        spec["head_layernorm"] = True
    # max_seq_length: sentence_bert_config.json (up to v5), else the tokenizer's model_max_length (v6)
    max_len = None
    bert_cfg, tok_cfg = root / "sentence_bert_config.json", root / "tokenizer_config.json"
    if bert_cfg.is_file():
        max_len = _read_json(bert_cfg).get("max_seq_length")
    if not max_len and tok_cfg.is_file():
        max_len = _read_json(tok_cfg).get("model_max_length")
        max_len = max_len if isinstance(max_len, int) and max_len < 100_000 else None
    if max_len:
        spec["max_query_length"] = spec["max_passage_length"] = int(max_len)
    st_cfg = root / "config_sentence_transformers.json"
    st = _read_json(st_cfg) if st_cfg.is_file() else {}
    sim = st.get("similarity_fn_name")
    if sim in ("cosine",):
        spec["similarity"] = "cosine"
    elif sim in ("dot", "dot_product"):
        spec["similarity"] = "dot"
    elif sim is not None:
        raise InputError(
            st_cfg, None, f"similarity_fn_name '{sim}' is not supported (dot or cosine)"
        )
    else:
        # Old files do not say; a Normalize module makes dot and cosine the same thing.
        spec["similarity"] = "cosine" if spec.get("normalize") else "dot"
    prompts = st.get("prompts") or {}
    spec["query_prefix"] = prompts.get("query", "")
    spec["passage_prefix"] = prompts.get("document", prompts.get("passage", ""))
    spec["title_mode"] = "prefix"
    return ModelSpec(**spec).validate()


def pooling_mode(path: Path) -> str:
    cfg = _read_json(path)
    mode = cfg.get("pooling_mode")
    if mode is None:  # legacy flags
        flags = {
            "cls": cfg.get("pooling_mode_cls_token", False),
            "mean": cfg.get("pooling_mode_mean_tokens", False),
            "max": cfg.get("pooling_mode_max_tokens", False),
            "mean_sqrt_len_tokens": cfg.get("pooling_mode_mean_sqrt_len_tokens", False),
            "weightedmean": cfg.get("pooling_mode_weightedmean_tokens", False),
            "lasttoken": cfg.get("pooling_mode_lasttoken", False),
        }
        on = [k for k, v in flags.items() if v]
        mode = on[0] if len(on) == 1 else on
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode not in POOLINGS:
        raise InputError(
            path,
            None,
            f"pooling mode {mode!r} is not supported; densekit pools with {' or '.join(POOLINGS)}",
        )
    if cfg.get("include_prompt") is False:
        raise InputError(path, None, "include_prompt=false is not supported")
    return mode


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(path, None, "file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, e.lineno, f"not valid JSON: {e.msg}") from None
