"""Tokenize a batch once, and keep everything later steps need to show and aggregate importance.

Why this exists: every method returns one float per *token position* (``[batch, n]``), but people read
words, and a table needs readable token strings. Hugging Face tokenizers return ids; readable strings,
word alignment, special-token marks and padding bookkeeping are each a small trap (``Ġ`` prefixes,
``##`` pieces, left padding, a ``[SEP]`` typed in the text, a truncated example). :func:`tokenize` does
it once and returns a :class:`TokenizedBatch`; :func:`aggregate_to_words` turns token scores into a
tidy word table.

    batch = tokenize(tokenizer, ["unbelievably gorgeous", "fine"])
    batch.tokens[0]       # ['[CLS]', 'un', '##bel', '##ie', '##va', '##bly', 'gorgeous', '[SEP]']
    batch.word_ids[0]     # [None, 0, 0, 0, 0, 0, 1, None]
    batch.words[0]        # ['unbelievably', 'gorgeous']
    logits = model(**batch.model_inputs()).logits
    aggregate_to_words(scores, batch)   # example_id, word_index, word, start, end, score, n_tokens

Conventions (decided here, relied on downstream):

- **Two indexings.** Tensors (``input_ids``, masks, scores) are ``[batch, n]`` with padding, in padded
  *columns*. The per-example lists (``tokens``, ``raw_tokens``, ``word_ids``, ``offsets``, ``positions``)
  hold the real tokens only (special tokens included, padding excluded); their index is the
  ``token_index`` of tidy tables and does not depend on the padding side. ``positions[i][j]`` is the
  column of ``tokens[i][j]`` in the tensors.
- **Special tokens** are those the tokenizer adds (``[CLS]``, ``[SEP]``, BOS/EOS), padding, and any
  special token typed in the text (``"a [SEP] b"``), except the unknown token: ``[UNK]`` stands for a real
  piece of the input and keeps its word.
- **Words follow the tokenizer's pre-tokenizer** (``word_split="tokenizer"``, the default): BERT splits
  ``"don't!"`` into ``don`` ``'`` ``t`` ``!``; GPT-2-style byte-level BPE into ``don`` ``'t`` ``!``. When the
  pre-tokenizer does not split at whitespace (SentencePiece models such as Llama 2 put the whole text in
  one "word"), that example falls back to whitespace words. ``word_split="whitespace"`` always uses
  whitespace-delimited words (the same words for every tokenizer: use it to compare models at word level).
  A word is the span of its tokens' character offsets, stripped of whitespace, so ``words`` are substrings
  of ``texts``. Tokens that cover only whitespace (a lone ``Ġ``, ``Ċ``, ``▁``) join the next word (the word
  they precede), or the previous one at the end of the text. ``word_ids`` is None for special tokens and for
  the whitespace tokens of a text without any word.
- **Empty or whitespace-only texts are allowed**: they give only special tokens (or none at all, for a
  tokenizer that adds none, in which case the row is all padding), and no words. Methods that need content
  call :meth:`TokenizedBatch.require_words` for a clear message instead of failing later.
- **Padding** is done here, not by the tokenizer, so a tokenizer without a pad token (GPT-2) works and is
  not modified; padded columns hold ``pad_token_id`` (else ``eos_token_id``, else 0) and are masked.
"""

from __future__ import annotations

import bisect
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

PaddingSide = Literal["left", "right"]
WordSplit = Literal["tokenizer", "whitespace"]
Aggregation = Literal["sum", "mean", "max", "absmax"]

_NO_LIMIT = 1_000_000  # a model_max_length at or above this is the tokenizer's "unset" sentinel
_WHITESPACE_WORD = re.compile(r"\S+")


@dataclass(eq=False)
class TokenizedBatch:
    """A padded batch plus the per-example bookkeeping needed to read and aggregate token scores.

    Tensors are padded ``[batch, n]``; the list fields hold the real (non-padding) tokens of each example in
    order, special tokens included. See the module docstring for the conventions.
    """

    input_ids: torch.Tensor  # [batch, n] long
    attention_mask: torch.Tensor  # [batch, n] long, 1 = real token (Hugging Face convention)
    special_tokens_mask: torch.Tensor  # [batch, n] bool, True = special token or padding
    tokens: list[list[str]]  # readable token strings, per example, without padding
    raw_tokens: list[list[str]]  # the vocabulary's strings ('Ġcats', '##bel'), aligned with tokens
    word_ids: list[list[int | None]]  # word index of each token; None for special tokens
    words: list[list[str]]  # the words, as substrings of texts
    word_spans: list[list[tuple[int, int]]]  # (start, end) character span of each word in its text
    offsets: list[list[tuple[int, int]]]  # (start, end) character span of each token; (0, 0) for added tokens
    positions: list[list[int]]  # column of each token in the padded tensors
    texts: list[str]
    truncated: list[bool]  # True where max_length cut tokens off the example
    padding_side: str

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return len(self.texts)

    @property
    def batch_size(self) -> int:
        return len(self.texts)

    @property
    def seq_len(self) -> int:
        """``n``, the padded length."""
        return int(self.input_ids.shape[1])

    @property
    def lengths(self) -> list[int]:
        """Number of real (non-padding) tokens per example, special tokens included."""
        return [len(t) for t in self.tokens]

    @property
    def empty(self) -> list[bool]:
        """True for examples without any word (empty or whitespace-only text)."""
        return [len(w) == 0 for w in self.words]

    # ------------------------------------------------------------------ use
    def to(self, device: torch.device | str) -> TokenizedBatch:
        """A copy with the tensors on ``device`` (the lists are shared)."""
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            special_tokens_mask=self.special_tokens_mask.to(device),
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """``{"input_ids", "attention_mask"}``, ready for ``model(**batch.model_inputs())``."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def require_words(self, what: str = "this step") -> None:
        """Raise a ``ValueError`` naming the examples without any word, if there are any.

        Tokenizing an empty text is allowed (it is a valid input to a model), but explaining it is not
        meaningful: methods call this to fail with a message rather than with an index error later.
        """
        empty = [i for i, is_empty in enumerate(self.empty) if is_empty]
        if empty:
            shown = ", ".join(f"{i} ({self.texts[i]!r})" for i in empty[:5])
            more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
            raise ValueError(
                f"{what} needs at least one word per example, but example(s) {shown}{more} are empty or "
                "whitespace only: drop them or give them text"
            )

    def token_frame(self) -> pd.DataFrame:
        """One row per real token: ``example_id, token_index, position, token_id, token, raw_token,
        word_index, is_special, start, end`` (``word_index`` is ``<NA>`` for special tokens)."""
        rows: dict[str, list[Any]] = {
            k: []
            for k in (
                "example_id",
                "token_index",
                "position",
                "token_id",
                "token",
                "raw_token",
                "word_index",
                "is_special",
                "start",
                "end",
            )
        }
        ids = self.input_ids.detach().cpu()
        special = self.special_tokens_mask.detach().cpu()
        for i in range(self.batch_size):
            for j, col in enumerate(self.positions[i]):
                rows["example_id"].append(i)
                rows["token_index"].append(j)
                rows["position"].append(col)
                rows["token_id"].append(int(ids[i, col]))
                rows["token"].append(self.tokens[i][j])
                rows["raw_token"].append(self.raw_tokens[i][j])
                rows["word_index"].append(self.word_ids[i][j])
                rows["is_special"].append(bool(special[i, col]))
                rows["start"].append(self.offsets[i][j][0])
                rows["end"].append(self.offsets[i][j][1])
        frame = pd.DataFrame(rows)
        frame["word_index"] = pd.array(rows["word_index"], dtype="Int64")
        return frame


# ----------------------------------------------------------------------------------------------------
# tokenize
# ----------------------------------------------------------------------------------------------------
def tokenize(
    tokenizer: Any,
    texts: str | Sequence[str],
    *,
    max_length: int | None = None,
    padding_side: PaddingSide | None = None,
    add_special_tokens: bool = True,
    word_split: WordSplit = "tokenizer",
) -> TokenizedBatch:
    """Tokenize ``texts`` into a padded :class:`TokenizedBatch` with readable tokens and word alignment.

    Args:
        tokenizer: a *fast* Hugging Face tokenizer (one backed by the ``tokenizers`` library; it provides the
            character offsets that words are built from). A slow one is refused.
        texts: the texts (a single string is one text).
        max_length: at most this many tokens per example, special tokens included; longer examples are
            truncated at the end and flagged in ``truncated``. None: the tokenizer's ``model_max_length``
            when it declares one (512 for BERT), so that the batch fits the model; otherwise no limit.
        padding_side: ``"left"`` or ``"right"``; None takes the tokenizer's ``padding_side``.
        add_special_tokens: add ``[CLS]``/``[SEP]``, BOS, ... as the tokenizer's template does.
        word_split: ``"tokenizer"`` (words of the tokenizer's pre-tokenizer) or ``"whitespace"``.

    Example::

        batch = tokenize(tokenizer, ["The cats are here", "Paris"], padding_side="left")
        batch.input_ids.shape        # [2, n]; example 1 is padded on the left
        batch.positions[1]           # columns of its real tokens, e.g. [4, 5, 6]
    """
    texts = _check_texts(texts)
    _check_tokenizer(tokenizer)
    side = padding_side if padding_side is not None else getattr(tokenizer, "padding_side", "right")
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    if word_split not in ("tokenizer", "whitespace"):
        raise ValueError(f"word_split must be 'tokenizer' or 'whitespace', got {word_split!r}")
    limit = _resolve_max_length(tokenizer, max_length, add_special_tokens)

    encoded = tokenizer(
        texts,
        add_special_tokens=add_special_tokens,
        padding=False,
        truncation=limit is not None,
        max_length=limit,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    encodings = getattr(encoded, "encodings", None)
    if encodings is None or len(encodings) != len(texts):
        raise TypeError(
            f"{type(tokenizer).__name__} returned no per-text encodings: use a fast tokenizer "
            "(AutoTokenizer.from_pretrained(..., use_fast=True))"
        )

    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    special_ids.discard(getattr(tokenizer, "unk_token_id", None))  # [UNK] stands for real input
    decode_cache: dict[str, str] = {}

    ids_per_example: list[list[int]] = []
    special_per_example: list[list[bool]] = []
    tokens, raw_tokens, word_ids, words, word_spans, offsets, truncated = [], [], [], [], [], [], []
    for i, text in enumerate(texts):
        ids = [int(t) for t in encoded["input_ids"][i]]
        spans = [(int(s), int(e)) for s, e in encoded["offset_mapping"][i]]
        special = [bool(m) or t in special_ids for m, t in zip(encoded["special_tokens_mask"][i], ids, strict=True)]
        raw = [str(r) for r in tokenizer.convert_ids_to_tokens(ids)]
        try:
            tokenizer_words: list[int | None] | None = list(encoded.word_ids(i))
        except (ValueError, AttributeError):  # pragma: no cover - fast tokenizers always have them
            tokenizer_words = None
        ids_per_example.append(ids)
        special_per_example.append(special)
        raw_tokens.append(raw)
        offsets.append(spans)
        tokens.append(
            [
                _readable(tokenizer, r, text, span, is_special, decode_cache)
                for r, span, is_special in zip(raw, spans, special, strict=True)
            ]
        )
        w_ids, w_spans = align_words(text, spans, special, tokenizer_words if word_split == "tokenizer" else None)
        word_ids.append(w_ids)
        word_spans.append(w_spans)
        words.append([text[s:e] for s, e in w_spans])
        truncated.append(limit is not None and len(getattr(encodings[i], "overflowing", []) or []) > 0)

    _warn_contentless(texts, special_per_example)
    input_ids, attention_mask, special_mask, positions = _pad(
        ids_per_example, special_per_example, side, _pad_id(tokenizer)
    )
    return TokenizedBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        special_tokens_mask=special_mask,
        tokens=tokens,
        raw_tokens=raw_tokens,
        word_ids=word_ids,
        words=words,
        word_spans=word_spans,
        offsets=offsets,
        positions=positions,
        texts=texts,
        truncated=truncated,
        padding_side=side,
    )


def _warn_contentless(texts: list[str], special: list[list[bool]]) -> None:
    """Warn about texts left with special tokens only (control characters the tokenizer drops, or a text that
    is literally "[CLS] [SEP]"): no method can rank anything in them, so their findings are not assessable."""
    empty = [i for i, flags in enumerate(special) if all(flags)]
    if empty:
        first = texts[empty[0]]
        shown = first if len(first) <= 40 else first[:40] + "..."
        warnings.warn(
            f"{len(empty)} of {len(texts)} texts have no token besides special ones after tokenization (e.g. text "
            f"{empty[0]}: {shown!r}): nothing in them can be ranked, so their findings will be not assessable",
            UserWarning,
            stacklevel=3,
        )


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Iterable) or isinstance(texts, (bytes, Mapping)):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    texts = list(texts)  # a list, tuple, pandas Series, generator, ...
    if not texts:
        raise ValueError("texts is empty: give at least one text")
    bad = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        shown = ", ".join(f"{i} ({name})" for i, name in bad[:5])
        raise TypeError(f"texts must all be strings; item(s) {shown} are not")
    return texts


def _check_tokenizer(tokenizer: Any) -> None:
    if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
        raise TypeError(
            "expected a Hugging Face tokenizer (e.g. from AutoTokenizer.from_pretrained), "
            f"got {type(tokenizer).__name__}"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is a slow (pure Python) tokenizer, which gives no character offsets: "
            "use a fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True), or a "
            "PreTrainedTokenizerFast) so that tokens can be aligned to words"
        )


def _resolve_max_length(tokenizer: Any, max_length: int | None, add_special_tokens: bool) -> int | None:
    if max_length is None:
        declared = getattr(tokenizer, "model_max_length", None)
        return int(declared) if isinstance(declared, int) and 0 < declared < _NO_LIMIT else None
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TypeError(f"max_length must be an int or None, got {type(max_length).__name__}")
    added = tokenizer.num_special_tokens_to_add() if add_special_tokens else 0
    if max_length < added + 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for text: this tokenizer adds {added} special token(s), "
            f"so max_length must be at least {added + 1}"
        )
    return max_length


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def _pad(
    ids: list[list[int]], special: list[list[bool]], side: str, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]]]:
    batch, n = len(ids), max(len(x) for x in ids)
    input_ids = torch.full((batch, n), pad_id, dtype=torch.long)  # [batch, n]
    attention_mask = torch.zeros(batch, n, dtype=torch.long)  # [batch, n]
    special_mask = torch.ones(batch, n, dtype=torch.bool)  # [batch, n]; padding counts as special
    positions = []
    for i, (row, row_special) in enumerate(zip(ids, special, strict=True)):
        start = n - len(row) if side == "left" else 0
        cols = list(range(start, start + len(row)))
        if row:
            input_ids[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, start : start + len(row)] = 1
            special_mask[i, start : start + len(row)] = torch.tensor(row_special, dtype=torch.bool)
        positions.append(cols)
    return input_ids, attention_mask, special_mask, positions


def _readable(tokenizer: Any, raw: str, text: str, span: tuple[int, int], special: bool, cache: dict[str, str]) -> str:
    """What a person should read for one token: the tokenizer's own decoding of it ('Ġcats' -> ' cats',
    'Ċ' -> newline, '##bel' stays), or its text span when it is a fragment of a multi-byte character."""
    if special:
        return raw
    if raw not in cache:
        try:
            cache[raw] = tokenizer.convert_tokens_to_string([raw])
        except Exception:  # pragma: no cover - a decoder that cannot take a single token
            cache[raw] = raw
    readable = cache[raw]
    if "\ufffd" in readable and "\ufffd" not in raw:  # part of a multi-byte character
        start, end = span
        return text[start:end] if end > start else raw
    return readable if readable else raw


# ----------------------------------------------------------------------------------------------------
# word alignment
# ----------------------------------------------------------------------------------------------------
def align_words(
    text: str,
    offsets: Sequence[tuple[int, int]],
    special: Sequence[bool],
    tokenizer_word_ids: Sequence[int | None] | None = None,
) -> tuple[list[int | None], list[tuple[int, int]]]:
    """Word index of each token, and the ``(start, end)`` span of each word in ``text``.

    With ``tokenizer_word_ids`` (from a fast tokenizer's ``word_ids()``) the tokenizer's words are kept,
    unless one of them contains whitespace, in which case this example uses whitespace words. Without
    them, tokens whose character spans overlap the same whitespace-delimited word share a word (a token
    spanning two words merges them). Tokens covering only whitespace join the next word, else the previous.

        align_words("ab cd", [(0, 0), (0, 1), (1, 2), (3, 5), (0, 0)], [True, False, False, False, True])
        # ([None, 0, 0, 1, None], [(0, 2), (3, 5)])
    """
    if tokenizer_word_ids is not None:
        aligned = _align_by_tokenizer(text, offsets, special, tokenizer_word_ids)
        if aligned is not None:
            return aligned
    return _align_by_whitespace(text, offsets, special)


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _attach_orphans(assigned: list[int | None], orphans: list[int]) -> None:
    """Give whitespace-only tokens the word of the next assigned token, else of the previous one."""
    for j in orphans:
        after = next((assigned[k] for k in range(j + 1, len(assigned)) if assigned[k] is not None), None)
        if after is None:
            after = next((assigned[k] for k in range(j - 1, -1, -1) if assigned[k] is not None), None)
        assigned[j] = after


def _align_by_tokenizer(
    text: str, offsets: Sequence[tuple[int, int]], special: Sequence[bool], word_ids: Sequence[int | None]
) -> tuple[list[int | None], list[tuple[int, int]]] | None:
    groups: dict[int, list[int]] = {}
    for j, (w, is_special) in enumerate(zip(word_ids, special, strict=True)):
        if w is not None and not is_special:
            groups.setdefault(w, []).append(j)
    assigned: list[int | None] = [None] * len(offsets)
    orphans = [j for j, (w, s) in enumerate(zip(word_ids, special, strict=True)) if w is None and not s]
    spans: list[tuple[int, int]] = []
    for members in sorted(groups.values(), key=lambda m: m[0]):
        start, end = _strip_span(text, min(offsets[j][0] for j in members), max(offsets[j][1] for j in members))
        if start >= end:  # whitespace only (a lone 'Ċ'): joins a neighbour
            orphans.extend(members)
            continue
        if any(c.isspace() for c in text[start:end]):  # the pre-tokenizer does not split at whitespace
            return None
        for j in members:
            assigned[j] = len(spans)
        spans.append((start, end))
    _attach_orphans(assigned, sorted(orphans))
    return assigned, spans


def _align_by_whitespace(
    text: str, offsets: Sequence[tuple[int, int]], special: Sequence[bool]
) -> tuple[list[int | None], list[tuple[int, int]]]:
    ws_words = [(m.start(), m.end()) for m in _WHITESPACE_WORD.finditer(text)]
    ends = [e for _, e in ws_words]
    parent = list(range(len(ws_words)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    token_word: list[int | None] = [None] * len(offsets)
    orphans: list[int] = []
    for j, ((s, e), is_special) in enumerate(zip(offsets, special, strict=True)):
        if is_special:
            continue
        hits = []
        k = bisect.bisect_right(ends, s)  # first word ending after s
        while k < len(ws_words) and ws_words[k][0] < e:
            hits.append(k)
            k += 1
        if not hits:
            orphans.append(j)
            continue
        for other in hits[1:]:  # a token spanning whitespace merges the words it touches
            parent[find(other)] = find(hits[0])
        token_word[j] = hits[0]

    # Number the merged words in text order; a word's span is its tokens' span, stripped.
    root_of = {j: find(w) for j, w in enumerate(token_word) if w is not None}
    index_of: dict[int, int] = {}
    bounds: list[list[int]] = []
    for j in sorted(root_of, key=lambda t: (offsets[t][0], t)):
        root = root_of[j]
        if root not in index_of:
            index_of[root] = len(bounds)
            bounds.append([offsets[j][0], offsets[j][1]])
        b = bounds[index_of[root]]
        b[0], b[1] = min(b[0], offsets[j][0]), max(b[1], offsets[j][1])
    assigned: list[int | None] = [index_of[root_of[j]] if j in root_of else None for j in range(len(offsets))]
    _attach_orphans(assigned, orphans)
    return assigned, [_strip_span(text, s, e) for s, e in bounds]


# ----------------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------------
def aggregate_to_words(
    scores: torch.Tensor | np.ndarray,
    batch: TokenizedBatch,
    *,
    how: Aggregation = "sum",
) -> pd.DataFrame:
    """Aggregate token scores ``[batch, n]`` (padded columns, as ``batch.input_ids``) to words.

    Returns a tidy DataFrame with one row per word: ``example_id, word_index, word, start, end, score,
    n_tokens`` (``start``/``end``: the word's character span in its text). Special tokens and padding are
    skipped, whatever their score.

    ``how``: ``"sum"`` (default: gradient-type attributions are additive, so a word's importance is the sum
    of its pieces' and the total over words equals the total over non-special tokens), ``"mean"``, ``"max"``,
    or ``"absmax"`` (the signed score of largest magnitude: keeps the sign, suits attention-type scores).

        batch = tokenize(tokenizer, ["unbelievably gorgeous"])    # [CLS] un ##bel ##ie ##va ##bly gorgeous [SEP]
        scores = torch.tensor([[9.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0, 9.0]])
        aggregate_to_words(scores, batch)   # unbelievably 1.5 (5 tokens), gorgeous 1.0; [CLS]/[SEP] skipped
    """
    if how not in ("sum", "mean", "max", "absmax"):
        raise ValueError(f"how must be one of 'sum', 'mean', 'max', 'absmax', got {how!r}")
    values = scores.detach().cpu().double().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    if values.dtype.kind not in "fiub":
        raise TypeError(f"scores must be numeric, got dtype {values.dtype}")
    expected = tuple(batch.input_ids.shape)
    if values.shape != expected:
        raise ValueError(
            f"scores have shape {values.shape}, but the batch is {expected} ([batch, n], padded like "
            "batch.input_ids); aggregate one target's importance at a time"
        )
    values = values.astype(np.float64)

    rows: dict[str, list[Any]] = {k: [] for k in ("example_id", "word_index", "word", "start", "end", "score")}
    counts: list[int] = []
    for i in range(batch.batch_size):
        per_word: list[list[float]] = [[] for _ in batch.words[i]]
        for j, w in enumerate(batch.word_ids[i]):
            if w is not None:
                per_word[w].append(values[i, batch.positions[i][j]])
        for w, pieces in enumerate(per_word):
            rows["example_id"].append(i)
            rows["word_index"].append(w)
            rows["word"].append(batch.words[i][w])
            rows["start"].append(batch.word_spans[i][w][0])
            rows["end"].append(batch.word_spans[i][w][1])
            rows["score"].append(_combine(np.asarray(pieces, dtype=np.float64), how))
            counts.append(len(pieces))
    frame = pd.DataFrame(rows)
    frame["n_tokens"] = pd.Series(counts, dtype="int64")
    frame["score"] = frame["score"].astype("float64")
    return frame


def _combine(pieces: np.ndarray, how: str) -> float:
    if pieces.size == 0:  # a word whose tokens were all truncated away cannot occur; kept for safety
        return float("nan")
    if how == "sum":
        return float(pieces.sum())
    if how == "mean":
        return float(pieces.mean())
    if how == "max":
        return float(pieces.max())
    return float(pieces[np.argmax(np.abs(pieces))])  # absmax
