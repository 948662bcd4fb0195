"""Build small transformer encoders and their tokenizers offline (no hub access), for tests,
the quickstart and the generated task.

`build_tiny_model` trains a WordPiece tokenizer on the given texts, builds a randomly initialised
BERT / DistilBERT / RoBERTa-style encoder from a config, and writes both with `save_pretrained`,
so every caller goes through the real `AutoModel.from_pretrained(directory)` path, plus the
1_Pooling/config.json that says how a bi-encoder pools it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

SPECIAL_BERT = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SPECIAL_ROBERTA = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4000,
    arch: Literal["bert", "distilbert", "roberta"] = "bert",
    model_max_length: int = 512,
):
    """Build a lower-casing WordPiece tokenizer from `texts`; return a transformers fast tokenizer.

    The vocabulary is deterministic: the special tokens, every character seen (alone and as a
    `##` continuation, so any word of these texts can be spelled), then whole words by falling
    count (ties alphabetical) up to `vocab_size`. The `tokenizers` WordPiece trainer is not used:
    it breaks ties between equally frequent merges in hash-map order, so two trainings on the same
    texts give different vocabularies, differently initialised models, and a rerun of a method
    that does not reproduce its outputs.

    BERT and DistilBERT use the BERT special tokens; RoBERTa-style models get RoBERTa's special
    tokens on the same WordPiece model (what matters in tests is the loading path, not BPE).
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    specials = SPECIAL_ROBERTA if arch == "roberta" else SPECIAL_BERT
    unk = "<unk>" if arch == "roberta" else "[UNK]"
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    char_counts: Counter[str] = Counter()
    for w, n in words.items():
        for c in w:
            char_counts[c] += n
    # Characters by falling count; at most half the vocabulary (each takes two entries), the rarest
    # beyond that become unknown.
    ranked = sorted(char_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    room = max(0, (vocab_size - len(specials)) // 4)
    if len(ranked) > room:
        logger.warning("tokenizer: %d distinct characters, keeping the %d most frequent (vocab_size=%d)",
                       len(ranked), room, vocab_size)
    chars = sorted(c for c, _ in ranked[:room])
    vocab = list(specials) + chars + [f"##{c}" for c in chars]
    seen = set(vocab)
    for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    tok = Tokenizer(WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token=unk))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    if arch == "roberta":
        bos, eos = "<s>", "</s>"
    else:
        bos, eos = "[CLS]", "[SEP]"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B:1 {eos}:1",
        special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))],
    )
    if arch == "roberta":
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            sep_token="</s>",
            cls_token="<s>",
            unk_token="<unk>",
            pad_token="<pad>",
            mask_token="<mask>",
            model_max_length=model_max_length,
        )
    from transformers import BertTokenizerFast

    return BertTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length)


def tiny_config(
    vocab_size: int,
    arch: Literal["bert", "distilbert", "roberta"] = "bert",
    layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    intermediate: int = 64,
    max_positions: int = 128,
    pad_token_id: int = 0,
):
    """A transformers config for a small encoder of the given architecture."""
    from transformers import BertConfig, DistilBertConfig, RobertaConfig

    if arch == "bert":
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            max_position_embeddings=max_positions,
            pad_token_id=pad_token_id,
        )
    if arch == "distilbert":
        return DistilBertConfig(
            vocab_size=vocab_size,
            dim=hidden,
            n_layers=layers,
            n_heads=heads,
            hidden_dim=intermediate,
            max_position_embeddings=max_positions,
            pad_token_id=pad_token_id,
        )
    if arch == "roberta":
        return RobertaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            # RoBERTa positions start after padding_idx, hence the +2.
            max_position_embeddings=max_positions + 2,
            pad_token_id=pad_token_id,
            bos_token_id=0,
            eos_token_id=2,
        )
    raise ValueError(f"unknown arch '{arch}'; expected bert, distilbert or roberta")


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    arch: Literal["bert", "distilbert", "roberta"] = "bert",
    layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    intermediate: int = 64,
    vocab_size: int = 4000,
    max_positions: int = 128,
    seed: int = 0,
    tokenizer_from: str | Path | None = None,
    pooling: Literal["cls", "mean"] = "cls",
) -> Path:
    """Write a randomly initialised encoder and its tokenizer to `out_dir` with save_pretrained.

    Args:
        out_dir: directory to create (AutoModel/AutoTokenizer.from_pretrained load it back).
        texts: corpus to train the tokenizer on (ignored when `tokenizer_from` is given).
        arch: "bert", "distilbert" or "roberta".
        layers, hidden, heads, intermediate: encoder size.
        vocab_size: WordPiece vocabulary size (the trained vocabulary may be smaller).
        max_positions: maximum sequence length.
        seed: weights are a deterministic function of the seed and the config.
        tokenizer_from: reuse the tokenizer saved in this directory (teacher and student of
            different sizes must share a tokenizer).
        pooling: written to 1_Pooling/config.json: how the folder pools when loaded as a
            bi-encoder without a pooling given (a plain HF folder without it is refused).

    Returns:
        The output directory.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
    else:
        tokenizer = train_tokenizer(texts, vocab_size=vocab_size, arch=arch, model_max_length=max_positions)
    config = tiny_config(
        len(tokenizer),
        arch=arch,
        layers=layers,
        hidden=hidden,
        heads=heads,
        intermediate=intermediate,
        max_positions=max_positions,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # How a bi-encoder pools it until a train config says otherwise (a plain HF folder must say):
    # CLS, as densekit has always encoded a freshly built model. ColBERT and cross-encoders ignore it.
    pooling_dir = out / "1_Pooling"
    pooling_dir.mkdir(exist_ok=True)
    (pooling_dir / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode": pooling,
    }, indent=2) + "\n")
    logger.info(
        "built %s encoder (%d layers, hidden %d, vocab %d) in %s", arch, layers, hidden, len(tokenizer), out
    )
    return out
