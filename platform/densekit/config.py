"""Typed configs: one dataclass per step, loaded from YAML plus dotted `key=value` overrides.

OmegaConf (structured configs) is used here and only here: `load_config` merges the dataclass
defaults, the YAML file and the overrides, checks keys and types, and returns a plain dataclass
instance. Each field carries a one-line `help` that `densekit <step> --help` prints.

Conventions: required values use `MISSING`; nested groups are dataclasses; anything chosen by name
(models, losses, index types) is a string key into a registry dict, checked by `validate()`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    ConfigTypeError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from densekit.errors import ConfigError

__all__ = ["MISSING", "load_config", "describe_fields", "opt", "ConfigError"]


def opt(default: Any = MISSING, help: str = "") -> Any:
    """A dataclass field with a default (copied per instance when mutable) and a one-line help."""
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return field(default_factory=default, metadata={"help": help})
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# --- shared pieces ---------------------------------------------------------------------------------


@dataclass
class ResourcesConfig:
    """Where and how wide a step runs. Deliberately not called ScalingConfig (Ray has one)."""

    num_workers: int = opt(1, "Ray workers / actors for this step (pool size, DDP world size)")
    use_gpu: bool = opt(False, "give each worker a GPU (num_gpus=1 per actor / worker)")
    cpus_per_worker: float = opt(1.0, "CPUs reserved per worker or actor")
    gpus_per_worker: float = opt(1.0, "GPUs per worker when use_gpu (fractions share a GPU)")
    address: Optional[str] = opt(
        None, "Ray address; None = the job's cluster under `ray job submit`, else a local Ray"
    )


# --- foundation steps ------------------------------------------------------------------------------

IMPORT_FORMATS = (
    "msmarco_collection",  # id<TAB>text (collection.tsv, queries.*.tsv)
    "msmarco_docs",  # docid<TAB>url<TAB>title<TAB>body
    "dpr_tsv",  # id<TAB>text<TAB>title with a header (LEAD psgs_w100.tsv)
    "beir",  # a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv
    "beir_corpus",  # corpus.jsonl alone
    "beir_queries",  # queries.jsonl alone
    "beir_qrels",  # qrels/<split>.tsv alone (header query-id corpus-id score)
    "trec_qrels",  # qid 0 docid rel
    "trec_run",  # qid Q0 docid rank score tag
    "margin_mse_tsv",  # pos_score neg_score qid pos_pid neg_pid
    "dpr_json",  # LEAD / DPR biencoder-*.json
    "prod_json",  # PROD training JSON (query_id, pos_id, neg_id, ...)
)


@dataclass
class ImportConfig:
    """Import a text-format file (or a BEIR folder) into densekit's Parquet tables."""

    format: str = opt(MISSING, f"input format: one of {', '.join(IMPORT_FORMATS)}")
    path: str = opt(MISSING, "input file (a folder for format=beir)")
    output: str = opt(MISSING, "output table directory (format=beir: a folder of tables)")
    corpus: Optional[str] = opt(
        None, "imported corpus table: checks pids of qrels/runs/training rows and fills passage text"
    )
    queries: Optional[str] = opt(
        None, "imported queries table: checks qids and fills query text of training rows"
    )
    kind: Optional[Literal["corpus", "queries"]] = opt(
        None, "msmarco_collection only: whether the file holds passages or queries (default corpus)"
    )
    pid_offset: int = opt(
        0, "dpr_json only: added to integer passage ids (LEAD biencoder json: 1, psgs_w100.tsv is 1-based)"
    )
    on_error: Literal["raise", "skip"] = opt(
        "raise", "bad rows and unknown ids: raise (default) or skip and count them in the manifest"
    )
    max_logged_errors: int = opt(20, "with on_error=skip, log at most this many skipped rows")
    batch_rows: int = opt(8192, "rows per record batch read from the input (bounds memory with batch_bytes)")
    batch_bytes: int = opt(32 << 20, "bytes of input text per record batch at most (about)")
    rows_per_part: int = opt(1_000_000, "rows per Parquet part file")
    lookup_cache: Optional[str] = opt(
        None, "folder for the id lookups of corpus/queries (default: lookup-<key>/ inside each table)"
    )
    overwrite: bool = opt(False, "replace a complete output made with another config")

    def validate(self) -> None:
        if self.format not in IMPORT_FORMATS:
            raise ConfigError(_unknown_name("format", self.format, IMPORT_FORMATS))
        if self.kind is not None and self.format != "msmarco_collection":
            raise ConfigError(f"kind={self.kind} applies to format=msmarco_collection only")
        if self.format == "margin_mse_tsv" and (self.corpus is None or self.queries is None):
            raise ConfigError("format=margin_mse_tsv needs corpus=<table> and queries=<table> for the texts")
        if self.format == "prod_json" and self.corpus is None:
            raise ConfigError("format=prod_json needs corpus=<table> for the passage texts")
        if self.format == "beir" and (self.corpus or self.queries):
            raise ConfigError("format=beir imports its own corpus and queries; leave corpus/queries unset")
        if self.batch_rows < 1 or self.batch_bytes < 1 or self.rows_per_part < 1:
            raise ConfigError("batch_rows, batch_bytes and rows_per_part must be >= 1")


EXPORT_FORMATS = ("trec_run", "trec_qrels", "margin_mse_tsv", "msmarco_collection", "beir")


@dataclass
class ExportConfig:
    """Export a densekit table to a text format at the edges (TREC run/qrels, teacher TSV, ...)."""

    format: str = opt(MISSING, f"output format: one of {', '.join(EXPORT_FORMATS)}")
    input: str = opt(MISSING, "table directory to export (for beir: a folder with corpus/, queries/, qrels/<split>/)")
    output: str = opt(MISSING, "output file (a folder for beir)")
    tag: str = opt("densekit", "run tag (trec_run)")
    overwrite: bool = opt(False, "replace an existing output file")

    def validate(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ConfigError(_unknown_name("format", self.format, EXPORT_FORMATS))
        if not self.tag or any(c.isspace() for c in self.tag):
            raise ConfigError(f"tag={self.tag!r}: a run tag must be non-empty, without whitespace")


@dataclass
class GenerateConfig:
    """Write a generated retrieval task: corpus, queries, train and dev qrels (BEIR-like tables)."""

    output: str = opt(MISSING, "output folder (corpus/, queries/, qrels/train/, qrels/dev/)")
    seed: int = opt(0, "random seed: the same seed and sizes give the same files")
    num_docs: int = opt(2000, "documents in the corpus")
    num_train_queries: int = opt(1000, "training queries (each with one relevant document)")
    num_dev_queries: int = opt(200, "dev queries (each with one relevant document)")
    num_topics: int = opt(40, "topics; documents of one topic share vocabulary (hard negatives)")
    vocab_size: int = opt(3000, "distinct content words")
    doc_length: int = opt(40, "words per document")
    query_length: int = opt(6, "words per query")
    synonym_rate: float = opt(
        0.5, "share of query words replaced by a synonym the document never uses"
    )
    overwrite: bool = opt(False, "replace a complete output made with another config")


# --- loading ---------------------------------------------------------------------------------------


def _unknown_name(what: str, value: str, choices: typing.Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown {what} '{value}'; expected one of: {', '.join(choices)}.{hint}"


def _field_names(cls: type, dotted: str) -> list[str]:
    """Field names valid at the dotted prefix `dotted` of dataclass `cls` (for did-you-mean)."""
    t: Any = cls
    for part in [p for p in dotted.split(".") if p]:
        if typing.get_origin(t) in (dict, typing.Dict):  # noqa: UP006
            t = typing.get_args(t)[1]  # `part` is a mapping key: step into the value type
        elif isinstance(t, type) and dataclasses.is_dataclass(t):
            t = typing.get_type_hints(t).get(part)
        else:
            return []
        t = _strip_optional(t)
    return [f.name for f in dataclasses.fields(t)] if dataclasses.is_dataclass(t) else []


def _strip_optional(t: Any) -> Any:
    if typing.get_origin(t) is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args[0] if len(args) == 1 else t
    return t


def _unwrap(t: Any) -> Any:
    """Optional[X] -> X; Dict[str, X] -> X (so dotted paths walk into mapping values)."""
    origin = typing.get_origin(t)
    if origin is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else t
    if origin in (dict, typing.Dict):  # noqa: UP006
        return _unwrap(typing.get_args(t)[1])
    return t


def _explain(e: OmegaConfBaseException, cls: type) -> str:
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or ""
    msg = getattr(e, "msg", None) or str(e).splitlines()[0]
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and "not in" in msg:
        parent, _, leaf = str(key).rpartition(".")
        # Mapping-valued groups (losses.<name>.params) list their own keys.
        names = _field_names(cls, parent)
        close = difflib.get_close_matches(leaf, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        where = f"in '{parent}'" if parent else f"in {cls.__name__}"
        return f"unknown config key '{key}' {where}.{hint} Valid keys: {', '.join(names)}"
    if isinstance(e, MissingMandatoryValue):
        return f"missing required value '{key}' (set it in the YAML or as {key}=...)"
    if isinstance(e, (ValidationError, ConfigTypeError)):
        first = msg.splitlines()[0]
        return f"invalid value for '{key}': {first}"
    return f"{key}: {msg}" if key else msg


def _missing_keys(obj: Any, prefix: str = "") -> list[str]:
    out = []
    keys = range(len(obj)) if OmegaConf.is_list(obj) else list(obj.keys())
    for k in keys:
        node = obj._get_node(k)
        name = f"{prefix}{k}"
        if OmegaConf.is_missing(obj, k):
            out.append(name)
        elif OmegaConf.is_config(node):
            out += _missing_keys(node, name + ".")
    return out


def load_config(
    cls: type,
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    allow_missing: bool = False,
) -> Any:
    """Load a step config: dataclass defaults < YAML file < dotted `key=value` overrides.

    Fails with a ConfigError, before any work starts, on an unknown key (with a did-you-mean
    suggestion), a value of the wrong type, a missing required value, or an unreadable file.

    Returns:
        An instance of `cls` (plain dataclasses all the way down). With `allow_missing` (config
        checks, `--dry-run`), required values may stay unset and the merged, type-checked
        OmegaConf object is returned instead.
    """
    layers = [OmegaConf.structured(cls)]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = OmegaConf.load(p)
        except Exception as e:  # yaml.YAMLError and friends, with line and column
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if not OmegaConf.is_dict(loaded):
            raise ConfigError(f"{p}: expected a mapping of config keys at the top level")
        layers.append(loaded)
    for item in overrides or []:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value")
    if overrides:
        try:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as e:
            raise ConfigError(f"bad override: {e}") from e
    try:
        merged = OmegaConf.merge(*layers)
        if allow_missing:
            return merged
        missing = _missing_keys(merged)
        if missing:
            raise ConfigError(
                "missing required value(s): "
                + ", ".join(missing)
                + (f" (in {path})" if path else "")
                + "; set them in the YAML or as key=value"
            )
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        where = f"{path}: " if path else ""
        raise ConfigError(where + _explain(e, cls)) from None
    _validate_tree(obj)
    return obj


def _validate_tree(obj: Any) -> None:
    """Call `validate()` on every dataclass in the tree, children first."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _validate_tree(getattr(obj, f.name))
        if hasattr(obj, "validate"):
            obj.validate()
    elif isinstance(obj, dict):
        for v in obj.values():
            _validate_tree(v)
    elif isinstance(obj, list):
        for v in obj:
            _validate_tree(v)


def describe_fields(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, help) of every field, recursing into nested dataclasses."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = _unwrap(hints[f.name])
        name = prefix + f.name
        if isinstance(t, type) and dataclasses.is_dataclass(t) and typing.get_origin(hints[f.name]) not in (
            dict,
            typing.Dict,  # noqa: UP006
        ):
            rows.append((name, t.__name__, "", f.metadata.get("help", "")))
            rows += describe_fields(t, name + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = "(required)" if f.default == MISSING else repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def _type_name(t: Any) -> str:
    s = str(t).replace("typing.", "")
    return getattr(t, "__name__", s) if typing.get_origin(t) is None else s
