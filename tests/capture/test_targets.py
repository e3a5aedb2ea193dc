"""Target / resolve / target_value on hand-built logits whose answers are known."""

from __future__ import annotations

import warnings

import pytest
import torch

from attn_probe.capture.targets import ResolvedTarget, Target, resolve, target_value
from attn_probe.capture.tokens import tokenize
from tests.capture.test_tokens import gpt2_style_tokenizer, minilm_path


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_style_tokenizer()


# ----------------------------------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------------------------------
def test_predicted_class_is_chosen_per_example_and_kept_fixed():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    resolved = resolve(Target.class_logit(), logits)
    assert resolved.ids.tolist() == [1, 0] and resolved.chosen_by_model
    assert resolved.values.tolist() == [2.0, 3.0]
    flipped = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])  # the model changed its mind
    assert target_value(resolved, flipped).tolist() == [0.0, 0.0]  # still the classes fixed at resolve


def test_fixed_class_and_probabilities():
    logits = torch.randn(4, 3)
    assert torch.equal(resolve(Target.class_logit(2), logits).values, logits[:, 2])
    prob = resolve(Target.class_probability(1), logits).values
    torch.testing.assert_close(prob, logits.softmax(-1)[:, 1])
    log_prob = resolve(Target.class_log_probability(0), logits).values
    torch.testing.assert_close(log_prob, logits.log_softmax(-1)[:, 0])
    predicted = resolve(Target.class_probability(), logits)
    torch.testing.assert_close(predicted.values, logits.softmax(-1).max(-1).values)


@pytest.mark.parametrize(
    "target",
    [Target.class_logit(), Target.class_probability(1), Target.class_log_probability(), Target.contrast(2, 0)],
    ids=lambda t: t.kind,
)
def test_target_value_matches_resolve_and_is_differentiable(target):
    logits = torch.randn(3, 4, requires_grad=True)
    resolved = resolve(target, logits)
    value = target_value(resolved, logits)
    torch.testing.assert_close(value.detach(), resolved.values)
    assert not resolved.values.requires_grad
    value.sum().backward()
    assert logits.grad is not None and bool(logits.grad.abs().sum(-1).gt(0).all())  # flows into every example


def test_class_logit_gradient_is_one_hot_on_the_fixed_class():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], requires_grad=True)
    target_value(resolve(Target.class_logit(), logits), logits).sum().backward()
    assert logits.grad.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def test_contrast_of_classes_is_the_logit_difference():
    logits = torch.randn(5, 3)
    resolved = resolve(Target.contrast(1, 0), logits)
    torch.testing.assert_close(resolved.values, logits[:, 1] - logits[:, 0])
    assert resolved.other_ids.tolist() == [0] * 5


# ----------------------------------------------------------------------------------------------------
# language models: positions under padding
# ----------------------------------------------------------------------------------------------------
def _marked_logits(columns: list[int], n: int = 5, vocab: int = 11, token: int = 7) -> torch.Tensor:
    """``[batch, n, vocab]`` logits where ``token`` is on top only at each example's given column; every
    other column votes for token 3."""
    logits = torch.zeros(len(columns), n, vocab)
    logits[:, :, 3] = 4.0
    for i, col in enumerate(columns):
        logits[i, col, 3] = 0.0
        logits[i, col, token] = 6.0 + i
    return logits


@pytest.mark.parametrize(
    ("mask", "last"),
    [
        ([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], [2, 4]),  # right padding
        ([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], [4, 4]),  # left padding
        ([[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]], [4, 4]),
    ],
    ids=["right", "left", "left-both"],
)
def test_next_token_reads_the_last_real_token(mask, last):
    mask = torch.tensor(mask)
    logits = _marked_logits(last)
    resolved = resolve(Target.next_token(), logits, mask)
    assert resolved.positions.tolist() == last
    assert resolved.ids.tolist() == [7, 7]  # the top token at the right column, not at the padding
    expected = torch.stack([logits[i, c].log_softmax(-1)[7] for i, c in enumerate(last)])
    torch.testing.assert_close(resolved.values, expected)
    fixed = resolve(Target.next_token(3), logits, mask)
    torch.testing.assert_close(fixed.values, torch.stack([logits[i, c].log_softmax(-1)[3] for i, c in enumerate(last)]))


def test_explicit_positions_count_real_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    logits = torch.randn(2, 5, 11)
    assert resolve(Target.next_token(position=0), logits, mask).positions.tolist() == [2, 0]
    assert resolve(Target.next_token(position=-2), logits, mask).positions.tolist() == [3, 2]
    assert resolve(Target.next_token(), logits).positions.tolist() == [4, 4]  # no mask: no padding
    with pytest.raises(ValueError, match=r"position 3 does not exist in example 0, which has 3 real token\(s\)"):
        resolve(Target.next_token(position=3), logits, mask)
    with pytest.raises(ValueError, match=r"example\(s\) \[1\] have no real token"):
        resolve(Target.next_token(), logits, torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        resolve(Target.next_token(), logits, torch.ones(2, 4))


def test_next_token_on_a_tokenized_batch_for_both_padding_sides(gpt2):
    """A 'copy' model whose logits at each column point at the token there: the top next token at the last
    real position must be each example's last real token, whichever side the padding is on."""
    texts = ["The cats are here", " Paris is", "The"]
    vocab = len(gpt2.get_vocab())
    for side in ("left", "right"):
        batch = tokenize(gpt2, texts, padding_side=side)
        logits = torch.nn.functional.one_hot(batch.input_ids, vocab).float() * 5.0  # [batch, n, vocab]
        resolved = resolve(Target.next_token(), logits, batch)
        assert resolved.positions.tolist() == [p[-1] for p in batch.positions]
        assert resolved.ids.tolist() == [batch.input_ids[i, p[-1]].item() for i, p in enumerate(batch.positions)]


@pytest.mark.parametrize("target", [Target.next_token(), Target.next_token(4), Target.contrast(5, 2, position=1)])
def test_lm_target_value_matches_and_flows_only_into_the_predicting_position(target):
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    logits = torch.randn(2, 4, 9, requires_grad=True)
    resolved = resolve(target, logits, mask)
    value = target_value(resolved, logits)
    torch.testing.assert_close(value.detach(), resolved.values)
    value.sum().backward()
    touched = logits.grad.abs().sum(-1).gt(0)  # [batch, n]
    expected = torch.zeros(2, 4, dtype=torch.bool)
    expected[torch.arange(2), resolved.positions] = True
    assert torch.equal(touched, expected)


def test_token_contrast_is_the_logit_difference_at_the_position():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    logits = torch.randn(2, 3, 6)
    resolved = resolve(Target.contrast(4, 1), logits, mask)
    expected = torch.stack([logits[0, 1, 4] - logits[0, 1, 1], logits[1, 2, 4] - logits[1, 2, 1]])
    torch.testing.assert_close(resolved.values, expected)


def test_take_and_repeat_interleave_follow_the_rows():
    logits = torch.randn(2, 3, 6)
    resolved = resolve(Target.next_token(), logits, torch.tensor([[1, 1, 0], [1, 1, 1]]))
    doubled = resolved.repeat_interleave(2)
    assert doubled.positions.tolist() == [1, 1, 2, 2]
    torch.testing.assert_close(target_value(doubled, logits.repeat_interleave(2, dim=0)), doubled.values)
    with pytest.raises(ValueError, match=r"repeat_interleave"):
        target_value(resolved, logits.repeat_interleave(2, dim=0))
    assert resolved.take([1]).ids.tolist() == resolved.ids[1:].tolist()


def test_half_precision_logits_are_computed_in_float32():
    logits = torch.randn(2, 5).bfloat16()
    value = resolve(Target.class_log_probability(1), logits).values
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, logits.float().log_softmax(-1)[:, 1])


# ----------------------------------------------------------------------------------------------------
# tokens given as text
# ----------------------------------------------------------------------------------------------------
def test_token_strings_become_single_ids(gpt2):
    vocab = gpt2.get_vocab()
    target = Target.next_token(" Paris", gpt2)
    assert target.token_id == vocab["ĠParis"]
    assert target.describe() == (
        "log-probability of next token ' Paris' at the last position; higher = the model expects it more"
    )
    assert Target.next_token("ĠParis", gpt2).token_id == vocab["ĠParis"]  # the raw vocabulary form
    contrast = Target.contrast(" are", " is", gpt2)
    assert contrast.contrast_ids == (vocab["Ġare"], vocab["Ġis"])
    assert contrast.describe().endswith("positive = the model prefers ' are' over ' is'")
    assert "at the last position" in contrast.describe()


def test_multi_piece_token_is_refused_with_its_pieces(gpt2):
    with pytest.raises(ValueError, match=r"'are' is 3 tokens for this tokenizer, \['a', 'r', 'e'\].*' are' is one"):
        Target.contrast("are", " is", gpt2)
    with pytest.raises(ValueError, match=r"'Parisian' is \d+ tokens"):
        Target.next_token("Parisian", gpt2)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        Target.next_token(" Paris")


def test_missing_leading_space_warns(gpt2):
    with pytest.warns(UserWarning, match=r"'is' is token \d+ without a leading space.*' is'"):
        Target.contrast(" are", "is", gpt2)


def test_wordpiece_tokens_need_no_leading_space():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        target = Target.contrast("are", "is", tokenizer)
    assert target.contrast_ids == (tokenizer.convert_tokens_to_ids("are"), tokenizer.convert_tokens_to_ids("is"))


def test_descriptions_name_the_fixed_choice(gpt2):
    vocab = gpt2.get_vocab()
    logits = torch.zeros(1, 2, len(vocab))
    logits[0, 1, vocab["ĠParis"]] = 9.0
    resolved = resolve(Target.next_token(), logits)
    (sentence,) = resolved.descriptions(gpt2)
    assert sentence.startswith("log-probability of next token ' Paris' at the last position")
    assert sentence.endswith("(chosen by the model)")
    frame = resolved.to_frame(gpt2)
    assert list(frame.columns) == ["example_id", "target", "id", "other_id", "position", "value", "description"]
    assert frame.loc[0, "position"] == 1
    classes = resolve(Target.class_logit(), torch.tensor([[0.0, 1.0]]))
    assert classes.descriptions() == ["logit of class 1; higher = more evidence for class 1 (chosen by the model)"]
    assert "predicted class" in Target.class_logit().describe()
    assert "positive = the model prefers" in Target.contrast(1, 0).describe()


# ----------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------
def test_out_of_range_ids_are_named_with_the_valid_range():
    with pytest.raises(ValueError, match=r"class index 3 is out of range: the logits have 3 classes.*0\.\.2"):
        resolve(Target.class_logit(3), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"token id 50 is out of range.*10 vocabulary entries.*0\.\.9"):
        resolve(Target.next_token(50), torch.randn(2, 4, 10))
    with pytest.raises(ValueError, match=r"token id 12 is out of range"):
        resolve(Target.contrast(12, 1), torch.randn(2, 4, 10))
    with pytest.raises(ValueError, match="must be >= 0"):
        Target.class_logit(-1)


def test_target_and_logits_kinds_must_match():
    with pytest.raises(ValueError, match=r"class_logit needs classification logits \[batch, classes\].*\(2, 4, 10\)"):
        resolve(Target.class_logit(), torch.randn(2, 4, 10))
    with pytest.raises(ValueError, match=r"next_token_log_prob needs language-model logits"):
        resolve(Target.next_token(), torch.randn(2, 10))
    with pytest.raises(ValueError, match="position=2, which applies to language-model logits"):
        resolve(Target.contrast(1, 0, position=2), torch.randn(2, 10))
    resolved = resolve(Target.class_logit(), torch.randn(2, 3))
    with pytest.raises(ValueError, match="resolved on classification"):
        target_value(resolved, torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="resolved on 3: the same model head"):
        target_value(resolved, torch.randn(2, 5))
    with pytest.raises(ValueError, match="expected \\[batch, classes\\]"):
        resolve(Target.class_logit(), torch.randn(3))


def test_invalid_targets():
    with pytest.raises(ValueError, match="with itself"):
        Target.contrast(4, 4)
    with pytest.raises(ValueError, match="unknown target kind"):
        Target("class_prob")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="position applies to language-model targets"):
        Target("class_logit", position=1)
    with pytest.raises(ValueError, match="single-logit head"):
        resolve(Target.class_probability(), torch.randn(2, 1))
    with pytest.raises(TypeError, match="must be a Target"):
        resolve("class_logit", torch.randn(2, 3))  # type: ignore[arg-type]
    assert isinstance(resolve(Target.class_logit(0), torch.randn(1, 2)), ResolvedTarget)
