"""The VADER lexicon is read right from the installed wheel, and plausibility counts top-k valenced words
against the random baseline, at word level, with ties, special tokens and signs handled as documented."""

from __future__ import annotations

import math

import pytest
import torch

from attn_probe.capture import Target, resolve, tokenize
from attn_probe.data import lexicon as lex
from attn_probe.data.lexicon import PLAUSIBILITY_COLUMNS, load_valence_lexicon, plausibility
from attn_probe.methods.base import Explanation, MethodInfo, explain

TEXTS = ["a gorgeous, witty movie", "dull and unbelievably boring plot"]
# words:  a | gorgeous | , | witty | movie        dull | and | unbelievably | boring | plot
VALENCE = {"gorgeous": 3.0, "witty": 1.4, "dull": -1.7, "unbelievably": 2.0, "boring": -1.3, "movie": 0.1}


def make_explanation(batch, scores_by_word: list[dict[str, float]], method: str = "hand", special: float = 0.0):
    """An Explanation whose tokens score their word's value (every piece of a word the same), specials ``special``."""
    scores = torch.zeros(batch.input_ids.shape)
    for i, values in enumerate(scores_by_word):
        for j, w in enumerate(batch.word_ids[i]):
            column = batch.positions[i][j]
            scores[i, column] = special if w is None else values.get(batch.words[i][w], 0.0)
    info = MethodInfo(method, "attention", False, "none", "non-negative", "made by hand")
    target = resolve(Target.class_logit(1), torch.zeros(len(batch), 2))
    real = batch.attention_mask.bool()
    return Explanation(method, info, scores, target, batch.special_tokens_mask | ~real, real)


@pytest.fixture(scope="module")
def batch(tokenizer):
    return tokenize(tokenizer, TEXTS)


# ----------------------------------------------------------------------------------------------------
# the lexicon
# ----------------------------------------------------------------------------------------------------
def test_lexicon_rows_and_columns():
    table = load_valence_lexicon()
    assert tuple(table.columns) == lex.COLUMNS
    assert len(table) == lex.N_WORDS and table.word.is_unique
    assert table.valence.between(-4, 4).all() and (table.sd >= 0).all() and (table.n_ratings == 10).all()
    # The mean of the raw ratings is the valence (rounded to one decimal in the file), except for one entry
    # that the source itself lists inconsistently ('lmfao': 2.5 against a mean of 2.4).
    means = table.ratings.map(lambda r: sum(r) / len(r))
    off = table.word[(means - table.valence).abs() > 0.05 + 1e-9].tolist()
    assert off == ["lmfao"]
    words = table.set_index("word").valence
    assert words["gorgeous"] == 3.0 and words["bad"] == -2.5 and words["love"] == 3.2
    assert words["lol"] == 1.8 and words["ok"] == 1.2  # listed twice: the later line counts, as in VADER
    assert 0.5 < (table.valence.abs() >= lex.STRONG_VALENCE).mean() < 0.6


def test_lexicon_matches_what_vader_scores_with():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer().lexicon
    table = load_valence_lexicon()
    assert dict(zip(table.word, table.valence, strict=True)) == vader


def test_lexicon_is_parsed_once_and_handed_out_as_copies():
    first = load_valence_lexicon()
    first.loc[0, "valence"] = 99.0
    assert load_valence_lexicon().loc[0, "valence"] != 99.0
    assert lex._parsed.cache_info().currsize == 1


# ----------------------------------------------------------------------------------------------------
# plausibility
# ----------------------------------------------------------------------------------------------------
def test_known_answers(batch):
    # Example 0 ranks gorgeous > movie > witty > a > ','; example 1 ranks plot > and > dull > ...
    explanation = make_explanation(
        batch,
        [
            {"gorgeous": 0.9, "movie": 0.8, "witty": 0.7, "a": 0.1, ",": 0.05},
            {"plot": 0.9, "and": 0.8, "dull": 0.7, "unbelievably": 0.3, "boring": 0.2},
        ],
    )
    table = plausibility(explanation, batch, VALENCE, k=3, min_abs_valence=1.5)
    assert tuple(table.columns) == PLAUSIBILITY_COLUMNS
    first, second = table.iloc[0], table.iloc[1]
    # Strong valence (|v| >= 1.5): gorgeous only in example 0 (witty is 1.4); dull, unbelievably in example 1.
    assert (first.n_words, first.n_candidates, first.n_valenced, first.hits) == (5, 5, 1, 1.0)
    assert first.precision == pytest.approx(1 / 3) and first.random_precision == pytest.approx(1 / 5)
    assert first.expected_hits == pytest.approx(3 / 5)
    assert first.top_words == "gorgeous | movie | witty"
    assert (second.n_words, second.n_valenced, second.hits) == (5, 2, 1.0)
    assert second.expected_hits == pytest.approx(3 * 2 / 5) and second.random_precision == pytest.approx(2 / 5)
    assert table.method.eq("hand").all() and table.k.eq(3).all() and table.absolute.all()


def test_sub_word_pieces_add_up_to_their_word(batch):
    pieces = [t for t, w in zip(batch.tokens[1], batch.word_ids[1], strict=True) if w == 2]
    assert len(pieces) > 1  # 'unbelievably' is several WordPiece tokens
    scores = torch.zeros(batch.input_ids.shape)
    for j, w in enumerate(batch.word_ids[1]):
        column = batch.positions[1][j]
        scores[1, column] = {0: 0.3, 2: 0.1}.get(w, 0.0)  # each piece of 'unbelievably' is small; 'dull' is 0.3
    explanation = make_explanation(batch, [{}, {}])
    explanation.scores = scores
    summed = plausibility(explanation, batch, VALENCE, k=1).iloc[1]
    assert summed.top_words == "unbelievably" and summed.hits == 1
    assert plausibility(explanation, batch, VALENCE, k=1, how="max").iloc[1].top_words == "dull"


def test_ties_are_counted_fairly_so_a_constant_explanation_is_at_chance(batch):
    constant = make_explanation(batch, [dict.fromkeys(batch.words[0], 1.0), dict.fromkeys(batch.words[1], 1.0)])
    for k in (1, 2, 3, 5, 9):  # "max": constant per word too ('sum' would favour the 5-piece 'unbelievably')
        table = plausibility(constant, batch, VALENCE, k=k, how="max")
        assert table.precision.to_numpy() == pytest.approx(table.random_precision.to_numpy())
    # A tie for the last slot only: gorgeous for sure, then one of {witty, movie} (one valenced at >= 1.0).
    tie = make_explanation(batch, [{"gorgeous": 2.0, "witty": 1.0, "movie": 1.0}, {}])
    row = plausibility(tie, batch, VALENCE, k=2, min_abs_valence=1.0).iloc[0]
    assert row.hits == pytest.approx(1.5) and row.precision == pytest.approx(0.75)


def test_special_tokens_are_left_out_unless_asked(batch):
    explanation = make_explanation(batch, [{"gorgeous": 0.5, "witty": 0.4}, {"dull": 0.5}], special=5.0)
    left_out = plausibility(explanation, batch, VALENCE, k=2, min_abs_valence=1.0)
    # Example 1: dull, then a tie at 0 for the second slot among and, unbelievably, boring, plot (2 of 4 valenced).
    assert left_out.hits.tolist() == [2.0, 1.5]
    included = plausibility(explanation, batch, VALENCE, k=2, min_abs_valence=1.0, include_special=True)
    assert included.hits.tolist() == [0.0, 0.0]  # [CLS] and [SEP] take both slots and carry no valence
    assert (included.n_candidates == included.n_words + 2).all()
    assert included.top_words[0] == "[CLS] | [SEP]"
    assert included.random_precision[0] == pytest.approx(2 / 7)


def test_sign_decides_the_ranking_when_not_absolute(batch):
    explanation = make_explanation(batch, [{"gorgeous": -3.0, "movie": 0.5, "a": 0.4}, {}])
    assert plausibility(explanation, batch, VALENCE, k=1).iloc[0].hits == 1.0  # |-3| is the largest
    signed = plausibility(explanation, batch, VALENCE, k=1, absolute=False).iloc[0]
    assert signed.hits == 0.0 and signed.top_words == "movie" and not signed.absolute


def test_k_larger_than_the_example_and_capitalised_words(tokenizer):
    with pytest.warns(UserWarning, match="no token besides special ones"):  # said, not silent
        batch = tokenize(tokenizer, ["Gorgeous!", "   "])
    explanation = make_explanation(batch, [{"Gorgeous": 1.0, "!": 0.5}, {}])
    table = plausibility(explanation, batch, k=5)  # VADER's lexicon; 'Gorgeous' matches 'gorgeous'
    first, empty = table.iloc[0], table.iloc[1]
    assert (first.n_words, first.n_valenced, first.hits, first.precision) == (2, 1, 1.0, 0.5)
    assert empty.n_words == 0 and math.isnan(empty.precision) and math.isnan(empty.random_precision)


def test_several_methods_at_once_from_explain(batch, tiny_bert, tokenizer):
    explanations = explain(tiny_bert, batch, ["raw_attention", "saliency"], tokenizer=tokenizer)
    table = plausibility(explanations, batch, k=2)
    assert sorted(table.method.unique()) == ["raw_attention", "saliency"] and len(table) == 4
    assert ((table.hits >= 0) & (table.hits <= 2) & (table.hits <= table.n_valenced)).all()
    # VADER: gorgeous (3.0) / dull (-1.7); boring (-1.3) is below 1.5, witty and unbelievably are not listed.
    assert table.n_valenced.tolist() == [1, 1, 1, 1]


def test_refusals(batch, tokenizer):
    explanation = make_explanation(batch, [{}, {}])
    with pytest.raises(ValueError, match="pass the batch the explanation was computed on"):
        plausibility(explanation, tokenize(tokenizer, ["one text"]), VALENCE)
    with pytest.raises(ValueError, match="k must be a positive int"):
        plausibility(explanation, batch, VALENCE, k=0)
    with pytest.raises(ValueError, match="lacks the column"):
        plausibility(explanation, batch, load_valence_lexicon().rename(columns={"valence": "v"}))
    explanation.scores[0, 1] = float("nan")
    with pytest.raises(ValueError, match="hold NaN"):
        plausibility(explanation, batch, VALENCE)
