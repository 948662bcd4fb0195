"""What the three model kinds share: a Hugging Face encoder tower with an optional linear head,
tokenisation from the spec, per-layer hidden states, and the save/load layout.

Directory layout written by `save` (read back by `densekit.models.load_model`):
    densekit_model.json                 the ModelSpec
    config.json, model.safetensors, tokenizer files      one shared tower (AutoModel loads it)
    densekit_head.safetensors           the head, when there is one
    query/, passage/                    instead of the above, when the towers are separate
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from densekit.errors import InputError
from densekit.models.spec import SPEC_FILE, ModelSpec
from densekit.models.tokenization import Tokenization

logger = logging.getLogger(__name__)

HEAD_FILE = "densekit_head.safetensors"
# Architectures whose position ids start at padding_idx + 1 (max_position_embeddings counts those).
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "mpnet"})


class Head(nn.Module):
    """Linear (+ optional LayerNorm, as STAR's RobertaDot), applied to the last dimension."""

    def __init__(self, in_dim: int, out_dim: int, layernorm: bool = False, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=bias)
        self.norm = nn.LayerNorm(out_dim) if layernorm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x)
        return self.norm(x) if self.norm is not None else x


class Tower(nn.Module):
    """One transformer encoder (AutoModel) and its tokenizer, plus an optional head."""

    def __init__(self, transformer: nn.Module, tokenizer, head: Head | None = None):
        super().__init__()
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.head = head
        # BERT/RoBERTa poolers are never used (we pool ourselves); frozen, DDP needs no
        # find_unused_parameters and optimisers skip them. They are still saved, so AutoModel
        # loads the directory without "newly initialised" warnings.
        pooler = getattr(transformer, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)
        params = inspect.signature(transformer.forward).parameters
        self.input_names = {
            k for k in ("input_ids", "attention_mask", "token_type_ids") if k in params
        }
        # RoBERTa has one token type: pair encodings must not send type 1.
        if getattr(transformer.config, "type_vocab_size", 2) < 2:
            self.input_names.discard("token_type_ids")

    @property
    def hidden_size(self) -> int:
        cfg = self.transformer.config
        return getattr(cfg, "hidden_size", None) or cfg.dim

    @property
    def num_layers(self) -> int:
        cfg = self.transformer.config
        return getattr(cfg, "num_hidden_layers", None) or cfg.n_layers

    @property
    def max_tokens(self) -> int | None:
        """The longest input the transformer accepts (its position embeddings), None if unbounded.

        A spec may ask for more (e.g. max_passage_length 256 on a 128-position model); inputs are
        then truncated here instead of failing on the first long text.
        """
        cfg = self.transformer.config
        n = getattr(cfg, "max_position_embeddings", None)
        if not isinstance(n, int) or n <= 0:
            return None
        if getattr(cfg, "model_type", "") in _OFFSET_POSITIONS:
            n -= (getattr(cfg, "pad_token_id", None) or 0) + 1  # positions start after padding_idx
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < n:
            n = limit
        return n

    def hidden(
        self, enc: dict[str, Tensor], all_layers: bool = False
    ) -> tuple[Tensor, list[Tensor] | None]:
        """Last hidden states `[N, L, H]` and, with `all_layers`, each transformer layer's output.

        Layer list index 0 is the first transformer layer's output: HF's `hidden_states[0]` (the
        embedding output) is dropped, as in LEAD's patched encoders.
        """
        inputs = {k: v for k, v in enc.items() if k in self.input_names}
        out = self.transformer(**inputs, output_hidden_states=all_layers, return_dict=True)
        layers = list(out.hidden_states[1:]) if all_layers else None
        return out.last_hidden_state, layers

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        if self.head is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
            save_file(state, str(directory / HEAD_FILE))

    @classmethod
    def load(
        cls,
        directory: str | Path,
        head: Head | None = None,
        head_required: bool = False,
        with_head: bool = True,
        kind: str = "model",
    ) -> Tower:
        """Load a tower; `head` (constructed by the caller) gets the saved head weights unless
        `with_head` is False."""
        from transformers import AutoTokenizer

        directory = Path(directory)
        transformer = _load_transformer(directory)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        if head is not None and with_head:
            path = directory / HEAD_FILE
            if path.is_file() or head_required:
                check_head_file(head, path, kind)
                load_head(head, path)
            else:
                logger.info(
                    "%s: no saved head, the head starts from a random initialisation", directory
                )
        return cls(transformer, tokenizer, head)


# Weights a checkpoint may lack without harm: densekit pools hidden states itself, never the pooler.
_UNUSED_WEIGHTS = ("pooler.",)


def _config_summary(cfg) -> str:
    shape = ", ".join(f"{k}={getattr(cfg, k)}" for k in ("num_hidden_layers", "n_layers", "hidden_size", "dim")
                      if isinstance(getattr(cfg, k, None), int))
    return f"{cfg.model_type}: {shape}"


def _missing_message(missing: list[str], where: str, cfg) -> str:
    return (f"does not fit the weights: {len(missing)} weights it describes are missing from {where} "
            f"(e.g. {', '.join(sorted(missing)[:3])}); config ({_config_summary(cfg)}) and weights come "
            "from different models")


def safetensors_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from the headers of safetensors files (no tensor is read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), "pt") as fh:
                for k in fh.keys():
                    shapes[k] = tuple(fh.get_slice(k).get_shape())
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise InputError(f, None, f"not a readable safetensors file ({e})") from None
    return shapes


def check_tower_files(d: Path) -> int | None:
    """A tower's config.json against its safetensors weights (headers only: shapes built on the
    meta device). Returns the hidden size; None when there is nothing to check (no config.json,
    or weights in another format).

    Raises:
        InputError: naming config.json and the first weight that is missing or of another shape.
    """
    import torch
    from transformers import AutoConfig, AutoModel

    files = sorted(f for f in Path(d).glob("*.safetensors") if f.name != HEAD_FILE)
    if not (Path(d) / "config.json").is_file() or not files:
        return None
    cfg = AutoConfig.from_pretrained(str(d))
    with torch.device("meta"):  # the shapes config.json implies, with no memory behind them
        skeleton = AutoModel.from_config(cfg)
    prefix = f"{skeleton.base_model_prefix}."
    have = {k.removeprefix(prefix): v for k, v in safetensors_shapes(files).items()}
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items() if not k.startswith(_UNUSED_WEIGHTS)}
    missing = [k for k in want if k not in have]
    if missing:
        raise InputError(Path(d) / "config.json", None, _missing_message(missing, files[0].name, cfg))
    wrong = sorted(k for k in want if have[k] != want[k])
    if wrong:
        k = wrong[0]
        raise InputError(
            Path(d) / "config.json", None,
            f"does not fit the weights: {k} is {list(have[k])} in {files[0].name}, the config implies "
            f"{list(want[k])}; config ({_config_summary(cfg)}) and weights come from different models",
        )
    return getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None)


def check_head_file(head: nn.Module, path: Path, kind: str) -> None:
    """The head weights file against the head the spec declares (shapes from the headers)."""
    if not path.is_file():
        raise InputError(path, None, f"missing: {SPEC_FILE} declares a {kind} head, whose weights must "
                         "be saved beside it; the spec does not match the model files")
    want = {k: list(v.shape) for k, v in head.state_dict().items()}
    have = {k: list(v) for k, v in safetensors_shapes([path]).items()}
    if want != have:
        raise InputError(path, None, f"head weights {have} do not fit the {kind} head {SPEC_FILE} "
                         f"declares {want}; the spec does not match the model files")


def _load_transformer(directory: Path) -> nn.Module:
    """`AutoModel.from_pretrained`, refusing weights that do not fit config.json.

    transformers only warns when config.json describes weights the checkpoint lacks (e.g. it says
    4 layers and the weights hold 2) and initialises them randomly: a model that loads and computes
    garbage. Here that is an InputError, as is a shape mismatch.
    """
    from transformers import AutoModel

    check_tower_files(directory)  # safetensors: a precise message before transformers tries
    try:
        transformer, info = AutoModel.from_pretrained(str(directory), output_loading_info=True)
    except (RuntimeError, ValueError) as e:  # other formats: size mismatch, unreadable weights
        first = str(e).strip().splitlines()[0]
        raise InputError(directory / "config.json", None, f"does not fit the weights ({first})") from None
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(_UNUSED_WEIGHTS)]
    if missing:
        raise InputError(directory / "config.json", None,
                         _missing_message(missing, "the checkpoint", transformer.config))
    return transformer


def load_head(head: nn.Module, path: str | Path, prefix_map: dict[str, str] | None = None) -> None:
    """Load safetensors weights into `head`, strictly (every key, every shape)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    if prefix_map:
        state = {_rename(k, prefix_map): v for k, v in state.items()}
    try:
        missing, unexpected = head.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise InputError(path, None, f"head weights do not fit the model's spec: {detail}") from None
    if missing or unexpected:
        raise InputError(
            path, None, f"head weights do not match the spec (missing {missing}, unexpected {unexpected})"
        )


def _rename(key: str, prefix_map: dict[str, str]) -> str:
    for old, new in prefix_map.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


class DenseModel(nn.Module):
    """Base of BiEncoder, ColBERT and CrossEncoder: the spec, the towers and saving.

    Subclasses set `kind`, implement `forward(batch, ...) -> ModelOutput` and `_make_head`.
    """

    kind = ""

    def __init__(self, spec: ModelSpec, query_tower: Tower, passage_tower: Tower | None = None):
        super().__init__()
        self.spec = spec.validate()
        if spec.kind != self.kind:
            raise ValueError(
                f"{type(self).__name__} needs a spec of kind '{self.kind}', got '{spec.kind}'"
            )
        self.towers = nn.ModuleDict({"query": query_tower})
        if passage_tower is not None:
            if spec.shared:
                raise ValueError("spec.shared is true but a separate passage tower was given")
            self.towers["passage"] = passage_tower
        elif not spec.shared:
            raise ValueError("spec.shared is false: give a passage tower")

    @property
    def query_tower(self) -> Tower:
        return self.towers["query"]

    @property
    def passage_tower(self) -> Tower:
        return self.towers["passage"] if "passage" in self.towers else self.towers["query"]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def num_layers(self) -> int:
        return self.query_tower.num_layers

    # --- tokenisation --------------------------------------------------------------------------

    @property
    def tokenization(self) -> Tokenization:
        """Picklable text-to-tensor rules of this model (no weights); see models.tokenization."""
        if getattr(self, "_tokenization", None) is None or self._tokenization.spec is not self.spec:
            q, p = self.query_tower, self.passage_tower
            self._tokenization = Tokenization(
                self.spec, q.tokenizer, p.tokenizer, q.input_names, p.input_names,
                max_tokens=(q.max_tokens, p.max_tokens),
            )
        return self._tokenization

    def inputs(self, batch) -> dict[str, dict[str, Tensor]]:
        """This model's tokenised inputs for a TrainBatch (pre-tokenised by the collator, or now),
        on the model's device."""
        tok = self.tokenization
        cached = getattr(batch, "inputs", {}).get(tok.key)
        inputs = cached if cached is not None else tok.batch(batch)
        dev = self.device
        return {name: {k: v.to(dev) for k, v in enc.items()} for name, enc in inputs.items()}

    # --- saving ----------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the HF files (safetensors), the tokenizer(s), the heads and densekit_model.json.

        Atomic: everything is written under a temporary name beside `directory`, then renamed, so
        a crash never leaves a half-written model that would load as a plain HF encoder. An
        existing `directory` is REPLACED as a whole (save a model into its own folder).
        """
        from densekit.artifacts import atomic_path

        with atomic_path(directory) as out:
            out.mkdir(parents=True)
            if self.spec.shared:
                self.query_tower.save(out)
            else:
                self.query_tower.save(out / "query")
                self.passage_tower.save(out / "passage")
            self._save_extra(out)
            self.spec.save(out)
        logger.info("saved %s to %s", self.kind, directory)
        return Path(directory)

    def _save_extra(self, directory: Path) -> None:
        """Hook for extra files (sentence-transformers modules for bi-encoders)."""

    @classmethod
    def _make_head(cls, spec: ModelSpec, hidden: int) -> Head | None:
        return None

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        spec: ModelSpec,
        head_required: bool = True,
        load_heads: bool = True,
    ) -> DenseModel:
        """Load a saved model (or a plain HF encoder, with `head_required=False`) with `spec`;
        `load_heads=False` keeps freshly initialised heads."""
        from transformers import AutoConfig

        root = Path(directory)
        names = ["query"] if spec.shared else ["query", "passage"]
        towers = []
        for name in names:
            d = root if spec.shared else root / name
            if not (d / "config.json").is_file():
                raise FileNotFoundError(
                    f"{d}: no config.json (expected a Hugging Face model directory)"
                )
            cfg = AutoConfig.from_pretrained(str(d))
            hidden = getattr(cfg, "hidden_size", None) or cfg.dim
            head = cls._make_head(spec, hidden)
            towers.append(Tower.load(d, head, head_required=head_required, with_head=load_heads, kind=cls.kind))
        return cls(spec, *towers)

    @classmethod
    def build(cls, spec: ModelSpec, base_path: str | Path) -> DenseModel:
        """A fresh model from a Hugging Face encoder: pretrained tower(s), new head(s)."""
        if (Path(base_path) / SPEC_FILE).is_file():
            logger.warning(
                "%s holds a densekit model; build() reuses its encoder but not its heads", base_path
            )
        return cls.from_pretrained(
            base_path, spec.replace(shared=True), head_required=False, load_heads=False
        )._untie(spec)

    def _untie(self, spec: ModelSpec) -> DenseModel:
        """Return a model with separate towers (copies of the shared one) if `spec` asks for them."""
        if spec.shared:
            return self
        import copy

        return type(self)(spec, self.query_tower, copy.deepcopy(self.query_tower))
