"""Agreement prompts: balanced, deterministic, distinct, grammatical by construction, and their ground-truth
positions land on the subject and attractor tokens after real tokenization."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from attn_probe.capture import Target, resolve, tokenize
from attn_probe.data.agreement import (
    COLUMNS,
    NOUNS,
    PLAIN_TEMPLATES,
    TEMPLATES,
    AgreementTemplate,
    agreement_prompts,
    agreement_target,
    correct_minus_wrong,
    role_mask,
    token_positions,
)

FORMS = {noun.singular: noun for noun in NOUNS}


def test_columns_and_types():
    frame = agreement_prompts(n=16, seed=0)
    assert tuple(frame.columns) == COLUMNS
    assert frame.prompt_id.tolist() == list(range(16))
    assert frame.subject_word_index.dtype == "int64" and frame.attractor_word_index.dtype == "Int64"
    assert frame.expected_sign.dtype == "int64"


@pytest.mark.parametrize("n", [40, 42, 7])
def test_balanced_over_number_combinations_and_templates(n):
    frame = agreement_prompts(n=n, seed=3)
    combos = frame.groupby(["subject_number", "attractor_number"]).size()
    assert len(combos) == min(4, n) and combos.sum() == n
    assert combos.max() - combos.min() <= 1
    templates = frame.template.value_counts()
    assert templates.max() - templates.min() <= 1
    if n >= len(TEMPLATES):
        assert set(templates.index) == {t.name for t in TEMPLATES}
    assert (frame.congruent == (frame.subject_number == frame.attractor_number)).all()


def test_without_attractor_balances_the_subject_number():
    frame = agreement_prompts(n=21, seed=0, attractor=False)
    counts = frame.subject_number.value_counts()
    assert sorted(counts.tolist()) == [10, 11]
    assert set(frame.template) == {t.name for t in PLAIN_TEMPLATES}
    assert frame.attractor.isna().all() and frame.attractor_word_index.isna().all() and frame.congruent.isna().all()


def test_deterministic_under_the_seed():
    pd.testing.assert_frame_equal(agreement_prompts(n=60, seed=5), agreement_prompts(n=60, seed=5))
    assert agreement_prompts(n=60, seed=5).text.tolist() != agreement_prompts(n=60, seed=6).text.tolist()


def test_no_duplicates_even_when_large():
    frame = agreement_prompts(n=3000, seed=0)
    assert frame.text.is_unique
    assert not frame.duplicated(["template", "subject", "attractor"]).any()


def test_rows_are_grammatical_by_construction():
    frame = agreement_prompts(n=400, seed=1)
    for row in frame.itertuples():
        words = row.text.split()
        assert words[0] == "The"
        assert words[row.subject_word_index] == row.subject
        assert words[row.attractor_word_index] == row.attractor
        noun, other = FORMS[row.subject_lemma], FORMS[row.attractor_lemma]
        assert row.subject == noun.form(row.subject_number) and row.attractor == other.form(row.attractor_number)
        assert row.subject_lemma != row.attractor_lemma
        assert row.subject_irregular == noun.irregular
        assert row.subject_word_index < row.attractor_word_index  # the attractor stands between subject and verb
        assert (row.correct, row.wrong, row.expected_sign) == (
            ("are", "is", 1) if row.subject_number == "plural" else ("is", "are", -1)
        )
    # Slots that need someone who can "like" get people only.
    assert frame[frame.template == "rc_object"].attractor_lemma.map(lambda w: FORMS[w].kind).eq("person").all()
    assert frame[frame.template == "rc_subject"].subject_lemma.map(lambda w: FORMS[w].kind).eq("person").all()


def test_noun_lists_have_unambiguous_number():
    forms = [form for noun in NOUNS for form in (noun.singular, noun.plural)]
    assert len(forms) == len(set(forms))  # no shared form (sheep), no form of two nouns
    assert any(noun.irregular for noun in NOUNS) and any(not noun.irregular for noun in NOUNS)
    assert all(form.isalpha() and form.islower() for form in forms)


def test_template_choice_and_errors():
    frame = agreement_prompts(n=8, templates=["pp_near", "rc_object"])
    assert set(frame.template) == {"pp_near", "rc_object"}
    custom = AgreementTemplate("pp_under", "The {subject} under the {attractor}")
    frame = agreement_prompts(n=4, templates=[custom])
    assert frame.text.str.contains(" under the ").all() and frame.attractor_word_index.eq(4).all()
    with pytest.raises(ValueError, match="no built-in template named 'nope'"):
        agreement_prompts(n=4, templates=["nope"])
    with pytest.raises(ValueError, match="has no \\{attractor\\} slot, but attractor=True"):
        agreement_prompts(n=4, templates=["bare"])
    with pytest.raises(ValueError, match="exactly once"):
        AgreementTemplate("bad", "The {attractor} near")
    with pytest.raises(ValueError, match="whole-word slots"):
        AgreementTemplate("bad", "The {subject} near the {attractor}s")
    with pytest.raises(ValueError, match="ask for fewer prompts"):
        agreement_prompts(n=1300, templates=["rc_subject"])  # 12 people x 27 others x 4
    with pytest.raises(ValueError, match="positive int"):
        agreement_prompts(n=0)


def check_ground_truth(tokenizer, frame, batch):
    truth = token_positions(batch, frame)
    per_noun = truth.groupby(["example_id", "role"])
    assert len(per_noun) == 2 * len(frame)  # every prompt has a subject and an attractor
    for (i, role), rows in per_noun:
        noun = frame.loc[i, role]
        # The ids at those columns are exactly the noun's tokens, in order (the leading space as BPE writes it).
        columns = rows.position.tolist()
        assert columns == sorted(columns) and columns == list(range(columns[0], columns[-1] + 1))
        ids = batch.input_ids[i, columns].tolist()
        assert tokenizer.decode(ids).strip().lower() == noun
        assert rows.token_index.map(lambda j, i=i: batch.positions[i][j]).tolist() == columns
    return truth


def test_positions_point_at_the_nouns_with_wordpiece(tokenizer):
    frame = agreement_prompts(n=48, seed=2)
    for side in ("right", "left"):
        batch = tokenize(tokenizer, frame.text.tolist(), padding_side=side)
        truth = check_ground_truth(tokenizer, frame, batch)
    assert (truth.groupby(["example_id", "role"]).size() == 1).all()  # every noun is one WordPiece token


def test_positions_point_at_the_nouns_with_byte_level_bpe(byte_level_tokenizer):
    frame = agreement_prompts(n=24, seed=2)
    batch = tokenize(byte_level_tokenizer, frame.text.tolist(), padding_side="left")
    truth = check_ground_truth(byte_level_tokenizer, frame, batch)
    assert truth.groupby(["example_id", "role"]).size().min() > 2  # nouns fall apart into bytes here


def test_role_mask_and_masked_lm_prompts(tokenizer):
    frame = agreement_prompts(n=12, seed=0)
    masked = [f"{text} {tokenizer.mask_token}" for text in frame.text]
    batch = tokenize(tokenizer, masked)  # an appended [MASK] keeps the word indices
    subject, attractor = role_mask(batch, frame, "subject"), role_mask(batch, frame, "attractor")
    assert subject.shape == batch.input_ids.shape and subject.dtype == torch.bool
    assert not (subject & attractor).any() and not (subject & batch.special_tokens_mask).any()
    for i in range(len(frame)):
        assert tokenizer.decode(batch.input_ids[i][subject[i]]) == frame.subject[i]
        assert tokenizer.decode(batch.input_ids[i][attractor[i]]) == frame.attractor[i]


def test_mismatched_batch_is_refused(tokenizer):
    frame = agreement_prompts(n=4, seed=0)
    with pytest.raises(ValueError, match=r"frame\.text"):
        token_positions(tokenize(tokenizer, frame.text.tolist()[::-1]), frame)
    with pytest.raises(ValueError, match="3 examples but the frame 4 rows"):
        token_positions(tokenize(tokenizer, frame.text.tolist()[:3]), frame)
    with pytest.raises(ValueError, match="role must be"):
        role_mask(tokenize(tokenizer, frame.text.tolist()), frame, "verb")


@pytest.mark.parametrize("which", ["tokenizer", "byte_level_tokenizer"])
def test_target_is_are_minus_is_and_the_sign_makes_it_correct_minus_wrong(which, request):
    tokenizer = request.getfixturevalue(which)
    target = agreement_target(tokenizer)
    are, is_ = (tokenizer(word, add_special_tokens=False)["input_ids"] for word in (" are", " is"))
    assert target.kind == "token_contrast" and target.contrast_ids == (are[0], is_[0])

    frame = agreement_prompts(n=8, seed=0)
    logits = torch.zeros(8, 3, max(target.contrast_ids) + 1)  # [batch, n, vocab]: a model that always says "are"
    logits[:, -1, are[0]] = 2.0
    resolved = resolve(target, logits)
    assert torch.equal(resolved.values, torch.full((8,), 2.0))
    margin = correct_minus_wrong(resolved.values, frame)  # right on plural subjects, wrong on singular ones
    assert torch.equal(margin > 0, torch.tensor(frame.subject_number.eq("plural").tolist()))
    scores = torch.ones(8, 5)
    assert torch.equal(correct_minus_wrong(scores, frame)[:, 0], torch.tensor(frame.expected_sign.tolist()).float())
    assert isinstance(agreement_target(tokenizer, position=-2), Target)
