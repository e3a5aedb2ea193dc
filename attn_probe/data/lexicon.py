"""Human word valence (the VADER lexicon) as a token-level reference: do the top tokens carry sentiment?

Why: for a sentiment model there is a human opinion on *words*, not only on sentences. VADER's lexicon
(Hutto & Gilbert, ICWSM 2014) gives 7,506 words, emoticons and slang their mean valence from 10 raters on
-4 (extremely negative) .. +4 (extremely positive). :func:`plausibility` asks of one explanation per example:
how many of its top-k words are words people find clearly positive or negative, against what a random ranking
of the same words would give. That is *plausibility* (does it convince a person?), not faithfulness (did the
model use it?): attn_probe reports the two side by side, and a method can be one without the other.

    lexicon = load_valence_lexicon()          # word, valence, sd, n_ratings, ratings
    batch = tokenize(tokenizer, texts)
    explanations = explain(model, batch, ["raw_attention", "integrated_gradients"], tokenizer=tokenizer)
    plausibility(explanations, batch, k=3)    # one row per (method, example): hits, precision, random_precision

The lexicon is read from the installed ``vaderSentiment`` 3.3.2 package (a dependency; its file
``vaderSentiment/vader_lexicon.txt`` is in the wheel), parsed once per process.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import math
import warnings
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from attn_probe.capture.tokens import Aggregation, TokenizedBatch, aggregate_to_words

LEXICON_PACKAGE = "vaderSentiment"
LEXICON_FILE = "vader_lexicon.txt"
LEXICON_VERSION = "3.3.2"
LEXICON_SHA256 = "1ec9c6e9ee19aade328f8beb393a6afa71a5bb3acf7d3cc22d4ef568df374bf5"  # the file in the 3.3.2 wheel
N_WORDS = 7_506  # distinct entries (the file has 7,520 lines: 14 words appear twice, the later line counts)
VALENCE_RANGE = (-4.0, 4.0)
STRONG_VALENCE = 1.5  # |valence| at or above this: clearly positive or negative (about 56% of the entries)

COLUMNS = ("word", "valence", "sd", "n_ratings", "ratings")
PLAUSIBILITY_COLUMNS = (
    "example_id",
    "method",
    "k",
    "n_words",
    "n_candidates",
    "n_valenced",
    "hits",
    "precision",
    "expected_hits",
    "random_precision",
    "absolute",
    "top_words",
)


def load_valence_lexicon() -> pd.DataFrame:
    """VADER's word-valence lexicon, one row per entry, in the file's order (of first appearance).

    Columns: ``word`` (str, as written: mostly lowercase words, plus emoticons such as ``":)"`` and a few
    two-word entries such as ``"fed up"``), ``valence`` (float, the raters' mean on -4..+4), ``sd`` (float,
    their standard deviation), ``n_ratings`` (int, 10 for every entry) and ``ratings`` (tuple of the 10 ints).

    The 14 words listed twice in the file (``"lol"``, ``"ok"``, ...) keep their *last* line, as vaderSentiment
    itself does when it builds its dictionary (a later line overwrites), so the table matches what VADER scores
    with.

        lexicon = load_valence_lexicon()
        lexicon.set_index("word").loc["gorgeous", "valence"]    # 3.0
    """
    return _parsed().copy()  # a copy: callers may add columns without changing the cached table


@functools.lru_cache(maxsize=1)
def _parsed() -> pd.DataFrame:
    try:
        resource = importlib.resources.files(LEXICON_PACKAGE).joinpath(LEXICON_FILE)
        data = resource.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise ImportError(
            f"the VADER lexicon comes with the {LEXICON_PACKAGE} package, which is not installed (or lacks "
            f"{LEXICON_FILE}): pip install {LEXICON_PACKAGE}=={LEXICON_VERSION}"
        ) from error
    digest = hashlib.sha256(data).hexdigest()
    if digest != LEXICON_SHA256:  # another version: still a lexicon, but the numbers in docs and tests differ
        warnings.warn(
            f"{LEXICON_FILE} has SHA-256 {digest}, not that of {LEXICON_PACKAGE} {LEXICON_VERSION}: the installed "
            "version's lexicon is used as it is",
            UserWarning,
            stacklevel=3,
        )
    entries: dict[str, tuple[float, float, tuple[int, ...]]] = {}
    # UTF-8 with CRLF line ends; not str.splitlines(), which would also split at form feeds and the like.
    for number, line in enumerate(data.decode("utf-8").replace("\r\n", "\n").split("\n"), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            raise ValueError(f"{LEXICON_FILE} line {number}: expected 4 tab-separated fields, got {len(fields)}")
        word, mean, sd, raw = fields
        entries[word] = (float(mean), float(sd), tuple(int(r) for r in json.loads(raw)))
    table = pd.DataFrame(
        {
            "word": list(entries),
            "valence": [v for v, _, _ in entries.values()],
            "sd": [s for _, s, _ in entries.values()],
            "n_ratings": [len(r) for _, _, r in entries.values()],
            "ratings": [r for _, _, r in entries.values()],
        }
    )
    return table.astype({"valence": "float64", "sd": "float64", "n_ratings": "int64"})


# ----------------------------------------------------------------------------------------------------
# plausibility
# ----------------------------------------------------------------------------------------------------
def plausibility(
    explanation: Any,
    batch: TokenizedBatch,
    lexicon: pd.DataFrame | Mapping[str, float] | None = None,
    *,
    k: int = 3,
    min_abs_valence: float = STRONG_VALENCE,
    include_special: bool = False,
    absolute: bool = True,
    how: Aggregation = "sum",
) -> pd.DataFrame:
    """How many of an explanation's top-``k`` words carry strong human valence, against a random ranking.

    Args:
        explanation: an :class:`~attn_probe.methods.base.Explanation` (scores ``[batch, n]`` on ``batch``), or
            a mapping of them (what :func:`~attn_probe.methods.base.explain` returns): one table for all.
        batch: the :class:`TokenizedBatch` the explanation was computed on.
        lexicon: a table with ``word`` and ``valence`` columns, or a ``{word: valence}`` mapping; None: VADER's
            (:func:`load_valence_lexicon`). A word matches its entry as written, else in lowercase.
        k: how many top words to look at (fewer where an example has fewer candidates).
        min_abs_valence: a word "carries valence" when ``|valence| >=`` this (1.5: clearly positive or negative).
        include_special: also rank special tokens ([CLS], [SEP], BOS), each as a candidate of its own that never
            carries valence: a method that puts its mass on them then scores lower, as it should for a reader.
        absolute: rank by ``|score|`` (evidence either way; how attention, which is non-negative, is compared
            with signed gradients) or, when False, by the signed score (what pushes the target up).
        how: how sub-word scores make a word's score (see :func:`~attn_probe.capture.tokens.aggregate_to_words`).

    Returns one row per method and example: ``example_id``, ``method``, ``k`` (as asked), ``n_words`` (words of
    the example), ``n_candidates`` (words, plus special tokens when included), ``n_valenced`` (candidates with
    strong valence), ``hits`` (valenced among the top ``min(k, n_candidates)``), ``precision`` (hits per top
    slot), ``expected_hits`` and ``random_precision`` (the same under a uniformly random ranking: the
    hypergeometric mean ``min(k, n) * n_valenced / n`` and ``n_valenced / n``), ``absolute``, and ``top_words``
    (the top candidates in rank order, joined with ``" | "``). ``precision - random_precision`` is the lift
    over chance. An example without candidates gets NaN.

    **Ties** are counted fairly: when equal scores straddle the k-th place, ``hits`` is the expected count
    over the ways of breaking the tie (it can be fractional), so a constant explanation scores exactly the
    random baseline instead of whatever comes first in the text (``top_words`` breaks ties by position).

        table = plausibility(explain(model, batch, ["raw_attention", "saliency"]), batch, k=3)
        table.groupby("method")[["precision", "random_precision"]].mean()
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not isinstance(batch, TokenizedBatch):
        raise TypeError(f"batch must be a TokenizedBatch (from capture.tokenize), got {type(batch).__name__}")
    explanations = list(explanation.values()) if isinstance(explanation, Mapping) else [explanation]
    if not explanations:
        raise ValueError("no explanation given: pass an Explanation or the dict explain() returns")
    valence = _valence_lookup(load_valence_lexicon() if lexicon is None else lexicon)

    rows = []
    for item in explanations:
        scores = getattr(item, "scores", None)
        if not isinstance(scores, torch.Tensor):
            raise TypeError(f"expected an Explanation (with .scores [batch, n]), got {type(item).__name__}")
        if tuple(scores.shape) != tuple(batch.input_ids.shape):
            raise ValueError(
                f"the {item.method} scores have shape {tuple(scores.shape)}, the batch {tuple(batch.input_ids.shape)}: "
                "pass the batch the explanation was computed on"
            )
        values = scores.detach().cpu().double()
        words = aggregate_to_words(values, batch, how=how)
        special = (item.special & item.real).detach().cpu() if include_special else None
        for i in range(batch.batch_size):
            # Candidates: (score, text, valenced) in text order, words first then special tokens by position.
            mine = words[words.example_id == i]
            candidates = [
                (float(s), w, _carries(valence.get(w, valence.get(w.lower())), min_abs_valence))
                for s, w in zip(mine.score, mine.word, strict=True)
            ]
            if special is not None:
                candidates += [
                    (float(values[i, col]), batch.tokens[i][j], False)
                    for j, col in enumerate(batch.positions[i])
                    if bool(special[i, col])
                ]
            if any(math.isnan(s) for s, _, _ in candidates):
                raise ValueError(f"the {item.method} scores of example {i} hold NaN: they cannot be ranked")
            rows.append(_score_example(i, item.method, candidates, len(mine), k, absolute))
    return pd.DataFrame(rows, columns=list(PLAUSIBILITY_COLUMNS))


def _valence_lookup(lexicon: pd.DataFrame | Mapping[str, float]) -> dict[str, float]:
    """``{word: valence}`` with the exact entries, plus lowercase keys for matching words as written."""
    if isinstance(lexicon, pd.DataFrame):
        missing = [c for c in ("word", "valence") if c not in lexicon.columns]
        if missing:
            raise ValueError(
                f"the lexicon lacks the column(s) {missing} (it has {list(lexicon.columns)}): pass a table with "
                "'word' and 'valence', a {word: valence} mapping, or None for VADER's"
            )
        pairs = zip(lexicon["word"], lexicon["valence"], strict=True)
    elif isinstance(lexicon, Mapping):
        pairs = lexicon.items()
    else:
        raise TypeError(f"lexicon must be a DataFrame, a mapping or None, got {type(lexicon).__name__}")
    exact = {str(w): float(v) for w, v in pairs}
    # Lowercase keys for "Gorgeous" -> "gorgeous"; an entry already in lowercase wins over ":D" -> ":d".
    folded = {w.lower(): v for w, v in exact.items() if w.lower() not in exact}
    return {**folded, **exact}


def _carries(value: float | None, threshold: float) -> bool:
    return value is not None and abs(value) >= threshold


def _score_example(
    example: int, method: str, candidates: list[tuple[float, str, bool]], n_words: int, k: int, absolute: bool
) -> dict[str, Any]:
    n = len(candidates)
    n_valenced = sum(v for _, _, v in candidates)
    row: dict[str, Any] = {
        "example_id": example,
        "method": method,
        "k": k,
        "n_words": n_words,
        "n_candidates": n,
        "n_valenced": n_valenced,
        "absolute": absolute,
    }
    if n == 0:
        nan = float("nan")
        return {**row, "hits": nan, "precision": nan, "expected_hits": nan, "random_precision": nan, "top_words": ""}
    top = min(k, n)
    keys = [abs(s) if absolute else s for s, _, _ in candidates]
    order = sorted(range(n), key=lambda c: -keys[c])  # stable: ties keep text order (for top_words only)
    cut = keys[order[top - 1]]  # the k-th best key
    above = [c for c in range(n) if keys[c] > cut]
    tied = [c for c in range(n) if keys[c] == cut]
    # All candidates above the cut are in the top; the remaining slots go to the tied ones at random, so each
    # tied candidate is in with probability slots / len(tied): the expected number of hits among them.
    slots = top - len(above)
    hits = sum(candidates[c][2] for c in above) + slots * sum(candidates[c][2] for c in tied) / len(tied)
    return {
        **row,
        "hits": float(hits),
        "precision": float(hits) / top,
        "expected_hits": top * n_valenced / n,
        "random_precision": n_valenced / n,
        "top_words": " | ".join(candidates[c][1] for c in order[:top]),
    }
