"""Text to tensors for one model, following its spec: prefixes, titles, max lengths, ColBERT's
[MASK] query augmentation and markers, cross-encoder pairs.

`Tokenization` holds tokenizers and the spec but no weights, so a collator running in a data
worker can pre-tokenise training batches for every model that will read them (`batch()`), keyed by
`key` (models with the same tokenisation, e.g. a student and its frozen copy, share one entry).
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import Tensor

from densekit.models.spec import ModelSpec

_TOKEN_FIELDS = (
    "kind", "max_query_length", "max_passage_length", "query_prefix", "passage_prefix", "title_mode",
    "title_sep", "query_augmentation", "query_marker", "doc_marker", "shared",
)  # fmt: skip


class Tokenization:
    """Tokenise queries, passages and pairs the way one model expects.

    Args:
        spec: the model's spec.
        query_tokenizer, passage_tokenizer: HF tokenizers (the same object for shared towers).
        query_inputs, passage_inputs: the input names each tower's transformer accepts
            (token_type_ids is dropped for DistilBERT and RoBERTa).
        max_tokens: the longest input each tower (query, passage) accepts; the spec's max lengths
            are capped to it, so a long text is truncated, never fed past the position embeddings.
    """

    def __init__(
        self,
        spec: ModelSpec,
        query_tokenizer,
        passage_tokenizer,
        query_inputs: set[str],
        passage_inputs: set[str],
        max_tokens: tuple[int | None, int | None] = (None, None),
    ):
        self.spec = spec
        self.query_tokenizer = query_tokenizer
        self.passage_tokenizer = passage_tokenizer
        self.query_inputs = set(query_inputs)
        self.passage_inputs = set(passage_inputs)
        fields = {f: getattr(spec, f) for f in _TOKEN_FIELDS}
        fields["tokenizers"] = [_tokenizer_id(query_tokenizer), _tokenizer_id(passage_tokenizer)]
        self.query_limit, self.passage_limit = max_tokens
        fields["max_tokens"] = list(max_tokens)
        self.key = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    @staticmethod
    def _cap(length: int, limit: int | None) -> int:
        return length if limit is None else min(length, limit)

    # --- text ------------------------------------------------------------------------------------

    def _query_texts(self, texts: list[str]) -> list[str]:
        p = self.spec.query_prefix
        return [p + t for t in texts]

    def _passage_segments(
        self, texts: list[str], titles: list[str] | None
    ) -> tuple[list[str], list[str] | None]:
        p = self.spec.passage_prefix
        if titles is not None and len(titles) != len(texts):
            raise ValueError(f"titles has {len(titles)} entries but texts has {len(texts)}")
        if titles is None or self.spec.title_mode == "none":
            return [p + t for t in texts], None
        if self.spec.title_mode == "pair":
            return [p + (ti or "") for ti in titles], list(texts)
        sep = self.spec.title_sep
        return [p + (f"{ti}{sep}{t}" if ti else t) for ti, t in zip(titles, texts)], None

    @staticmethod
    def _encode(
        tokenizer, inputs: set[str], first, second, max_length: int, padding="longest"
    ) -> dict[str, Tensor]:
        enc = tokenize_long_texts(
            tokenizer,
            first,
            second,
            max_length,
            padding=padding,
            truncation="only_second" if second is not None else True,
        )
        return {k: v for k, v in enc.items() if k in inputs}

    # --- the three inputs ------------------------------------------------------------------------

    def queries(self, texts: list[str]) -> dict[str, Tensor]:
        """Queries `[B, Lq]`. ColBERT adds `token_mask` (the tokens that score) and augmentation."""
        texts = self._query_texts(list(texts))
        if self.spec.kind == "colbert":
            return self._colbert(
                self.query_tokenizer,
                self.query_inputs,
                texts,
                None,
                self._cap(self.spec.max_query_length, self.query_limit),
                self.spec.query_marker,
                augment=self.spec.query_augmentation,
            )
        return self._encode(
            self.query_tokenizer,
            self.query_inputs,
            texts,
            None,
            self._cap(self.spec.max_query_length, self.query_limit),
        )

    def passages(self, texts: list[str], titles: list[str] | None = None) -> dict[str, Tensor]:
        """Passages `[N, Lp]`; titles join the text as spec.title_mode says."""
        first, second = self._passage_segments(list(texts), titles)
        if self.spec.kind == "colbert":
            return self._colbert(
                self.passage_tokenizer,
                self.passage_inputs,
                first,
                second,
                self._cap(self.spec.max_passage_length, self.passage_limit),
                self.spec.doc_marker,
                augment=False,
            )
        return self._encode(
            self.passage_tokenizer,
            self.passage_inputs,
            first,
            second,
            self._cap(self.spec.max_passage_length, self.passage_limit),
        )

    def pairs(
        self, queries: list[str], texts: list[str], titles: list[str] | None = None
    ) -> dict[str, Tensor]:
        """Cross-encoder input `[CLS] q [SEP] (title [SEP]) d [SEP]`, at most max_query + max_passage tokens."""
        if len(queries) != len(texts):
            raise ValueError(f"pairs: {len(queries)} queries but {len(texts)} passages")
        first, second = self._passage_segments(list(texts), titles)
        tok = self.query_tokenizer
        if second is not None:  # title and text become one segment joined by the separator token
            first = [f"{a} {tok.sep_token} {b}" for a, b in zip(first, second)]
        budget = self._cap(
            self.spec.max_query_length + self.spec.max_passage_length, self.query_limit
        )
        enc = tok(
            clip_long_texts(tok, self._query_texts(list(queries)), budget),
            clip_long_texts(tok, first, budget),
            padding="longest",
            truncation="longest_first",
            max_length=budget,
            return_tensors="pt",
        )
        return {k: v for k, v in enc.items() if k in self.query_inputs}

    def _colbert(
        self, tokenizer, inputs, first, second, max_length: int, marker: str | None, augment: bool
    ) -> dict[str, Tensor]:
        # Room for the marker token, which goes right after [CLS] (as in ColBERT).
        n = max_length - (1 if marker else 0)
        enc = self._encode(
            tokenizer,
            inputs | {"attention_mask"},
            first,
            second,
            n,
            padding="max_length" if augment else "longest",
        )
        ids, att = enc["input_ids"], enc["attention_mask"]
        token_mask = att.clone()
        if augment:
            if tokenizer.mask_token_id is None:
                raise ValueError("query_augmentation needs a tokenizer with a mask token")
            # ColBERT: padding becomes [MASK]; those tokens are not attended to, but they score.
            ids = ids.masked_fill(att == 0, tokenizer.mask_token_id)
            token_mask = torch.ones_like(att)
        if marker:
            mid = tokenizer.convert_tokens_to_ids(marker)
            if mid is None or mid == tokenizer.unk_token_id:
                raise ValueError(f"marker token {marker!r} is not in the tokenizer's vocabulary")
            col = lambda t, v: torch.cat([t[:, :1], torch.full_like(t[:, :1], v), t[:, 1:]], dim=1)  # noqa: E731
            ids, att, token_mask = col(ids, mid), col(att, 1), col(token_mask, 1)
            if "token_type_ids" in enc:
                enc["token_type_ids"] = col(enc["token_type_ids"], 0)
        enc.update(input_ids=ids, attention_mask=att, token_mask=token_mask)
        return enc

    # --- training batches ------------------------------------------------------------------------

    def batch(self, batch) -> dict[str, dict[str, Tensor]]:
        """Tokenise a TrainBatch for this model: {"queries", "passages"} or {"pairs"} (cross-encoder).

        Query-only batches (group_size 0) give {"queries"} only.
        """
        out: dict[str, dict[str, Tensor]] = {}
        has_passages = batch.group_size > 0
        if self.spec.kind == "cross_encoder":
            if not has_passages:
                raise ValueError("a cross-encoder needs passages: this batch holds queries only")
            rep = [q for q in batch.query_texts for _ in range(batch.group_size)]
            out["pairs"] = self.pairs(rep, batch.passage_texts, batch.passage_titles)
            return out
        out["queries"] = self.queries(batch.query_texts)
        if has_passages:
            out["passages"] = self.passages(batch.passage_texts, batch.passage_titles)
        return out


CHARS_PER_TOKEN = 10  # first guess of a prefix long enough for n tokens (English: ~4-5 chars/token)


def clip_long_texts(tokenizer, texts: list[str], n_tokens: int) -> list[str]:
    """`texts` with every very long text cut to a prefix that still holds its first `n_tokens` tokens.

    Fast tokenizers encode a whole text before truncating it: a 10 MB document costs about a
    minute and 1 GB. A text longer than `n_tokens * CHARS_PER_TOKEN` characters is cut at a
    whitespace (so no word before the cut is split differently) to a prefix that yields at least
    `n_tokens` tokens on its own, grown x4 until it does; truncation then gives exactly the tokens
    the whole text would have given.
    """
    limit = n_tokens * CHARS_PER_TOKEN
    long = [i for i, t in enumerate(texts) if t is not None and len(t) > limit]
    if not long:
        return texts
    out = list(texts)
    for i in long:
        text, size = texts[i], limit
        while size < len(text):
            cut = _whitespace_cut(text, size)
            if cut > 0:
                prefix = text[:cut]
                ids = tokenizer(
                    prefix, add_special_tokens=False, truncation=True, max_length=n_tokens
                )
                if len(ids["input_ids"]) >= n_tokens:
                    out[i] = prefix
                    break
            size *= 4
    return out


def _whitespace_cut(text: str, size: int) -> int:
    """The last whitespace in text[size // 2 : size], or -1. Texts are cut only at whitespace: a
    word cut in two may split into other tokens than the whole word."""
    return max(text.rfind(c, size // 2, size) for c in " \n\t")


def tokenize_long_texts(
    tokenizer, first: list[str], second: list[str] | None, max_length: int, **kwargs
):
    """`tokenizer(first, second, max_length=max_length, return_tensors="pt", **kwargs)` (kwargs:
    padding, truncation), with the same result, but every text is tokenised about once.

    A text longer than `max_length * CHARS_PER_TOKEN` characters is cut at a whitespace to about
    that many characters *without* tokenising it first, and the batch is tokenised once. A row
    built from a cut text that still fills all `max_length` positions holds exactly the tokens the
    whole text gives: the cut is at a word boundary, so the prefix's tokens are the first tokens
    of the whole text, and truncation keeps only as many as the prefix yielded. Only the rows that
    do not fill them (a prefix of unusually long tokens: more than CHARS_PER_TOKEN characters
    each) are cut again by `clip_long_texts`, which checks its prefix, and the batch is tokenised
    a second time. `clip_long_texts` alone tokenised every long text twice: once to check its
    prefix, once in the batch.
    """
    segments = [list(first)] + ([list(second)] if second is not None else [])
    limit = max_length * CHARS_PER_TOKEN
    cut_rows: set[int] = set()
    for seg in segments:
        for i, text in enumerate(seg):
            if text is None or len(text) <= limit:
                continue
            cut = _whitespace_cut(text, limit)
            if cut > 0:
                seg[i] = text[:cut]
                cut_rows.add(i)
            else:  # no whitespace near the budget: the checked cut (which grows it) at once
                seg[i] = clip_long_texts(tokenizer, [text], max_length)[0]

    def run():
        return tokenizer(*segments, max_length=max_length, return_tensors="pt", **kwargs)

    enc = run()
    if cut_rows:
        mask = enc.get("attention_mask")
        if mask is None:  # a tokenizer set not to return it: no row can be told complete
            redo = sorted(cut_rows)
        else:
            filled = mask.sum(dim=1) >= max_length
            redo = sorted(i for i in cut_rows if not bool(filled[i]))
        if redo:
            originals = [list(first)] + ([list(second)] if second is not None else [])
            for seg, orig in zip(segments, originals):
                for i in redo:
                    if orig[i] is not None and len(orig[i]) > limit:
                        seg[i] = clip_long_texts(tokenizer, [orig[i]], max_length)[0]
            enc = run()
    return enc


def _tokenizer_id(tok) -> str:
    vocab = tok.get_vocab()
    h = hashlib.sha1(json.dumps(sorted(vocab.items())[:2000]).encode()).hexdigest()[:12]
    return f"{tok.name_or_path}|{len(vocab)}|{h}"
