"""The sentence-transformers files of a bi-encoder directory: write them on save, read a Dense /
LayerNorm head from them on load.

Written in the long-standing layout that every sentence-transformers release reads (the layout of
the published models): modules.json, sentence_bert_config.json, config_sentence_transformers.json,
1_Pooling/config.json, then 2_Dense + 3_LayerNorm for a head, and a Normalize module.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from densekit.models.encoder import Head, Tower, load_head
from densekit.models.spec import ModelSpec

logger = logging.getLogger(__name__)


def write_sentence_transformers(
    directory: Path,
    spec: ModelSpec,
    tower: Tower,
    prefix: str | None = None,
    max_length: int | None = None,
) -> None:
    """Write the sentence-transformers module files for one bi-encoder tower in `directory`.

    Args:
        directory: the tower's directory (the HF files are already there).
        spec: the bi-encoder's spec.
        tower: the tower (its head, if any, is exported as Dense (+ LayerNorm)).
        prefix: for a separate tower, its text prefix (the default prompt); None for a shared
            tower, which gets "query" and "document" prompts from the spec.
        max_length: max_seq_length (default spec.max_passage_length: sentence-transformers has
            one length for both sides).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
    ]

    def add(kind: str, folder: str | None) -> Path | None:
        idx = len(modules)
        path = f"{idx}_{folder}" if folder else ""
        modules.append(
            {
                "idx": idx,
                "name": str(idx),
                "path": path,
                "type": f"sentence_transformers.models.{kind}",
            }
        )
        if folder:
            (directory / path).mkdir(parents=True, exist_ok=True)
            return directory / path
        return None

    pool_dir = add("Pooling", "Pooling")
    _dump(
        pool_dir / "config.json",
        {
            "word_embedding_dimension": tower.hidden_size,
            "pooling_mode_cls_token": spec.pooling == "cls",
            "pooling_mode_mean_tokens": spec.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    if tower.head is not None:
        lin = tower.head.linear
        dense_dir = add("Dense", "Dense")
        _dump(
            dense_dir / "config.json",
            {
                "in_features": lin.in_features,
                "out_features": lin.out_features,
                "bias": lin.bias is not None,
                "activation_function": "torch.nn.modules.linear.Identity",
            },
        )
        save_file(
            {f"linear.{k}": v.detach().cpu().contiguous() for k, v in lin.state_dict().items()},
            str(dense_dir / "model.safetensors"),
        )
        if tower.head.norm is not None:
            ln_dir = add("LayerNorm", "LayerNorm")
            _dump(ln_dir / "config.json", {"dimension": lin.out_features})
            save_file(
                {
                    f"norm.{k}": v.detach().cpu().contiguous()
                    for k, v in tower.head.norm.state_dict().items()
                },
                str(ln_dir / "model.safetensors"),
            )
    if spec.normalized:
        add("Normalize", "Normalize")
    _dump(directory / "modules.json", modules)
    max_len = max_length or spec.max_passage_length
    _dump(
        directory / "sentence_bert_config.json", {"max_seq_length": max_len, "do_lower_case": False}
    )
    st: dict = {
        "__version__": {"sentence_transformers": _st_version()},
        "similarity_fn_name": spec.similarity,
    }
    if prefix is None:
        prompts = {
            k: v for k, v in (("query", spec.query_prefix), ("document", spec.passage_prefix)) if v
        }
        st.update(prompts=prompts, default_prompt_name=None)
    elif prefix:
        st.update(prompts={"default": prefix}, default_prompt_name="default")
    _dump(directory / "config_sentence_transformers.json", st)


def load_st_head(directory: Path, head: Head) -> None:
    """Fill `head` from a sentence-transformers directory's Dense (+ LayerNorm) modules."""
    modules = json.loads((directory / "modules.json").read_text())
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ("Dense", "LayerNorm"):
            continue
        mdir = directory / m["path"]
        target = head.linear if kind == "Dense" else head.norm
        prefix = "linear." if kind == "Dense" else "norm."
        if (mdir / "model.safetensors").is_file():
            load_head(target, mdir / "model.safetensors", prefix_map={prefix: ""})
        elif (mdir / "pytorch_model.bin").is_file():
            import torch

            state = torch.load(mdir / "pytorch_model.bin", map_location="cpu", weights_only=True)
            state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
            target.load_state_dict(state, strict=True)
        else:
            raise FileNotFoundError(
                f"{mdir}: no model.safetensors or pytorch_model.bin for the {kind} module"
            )


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _st_version() -> str:
    try:
        import sentence_transformers

        return sentence_transformers.__version__
    except ImportError:  # writing the files does not need the library
        return "5.0.0"
