"""Subject–verb agreement prompts with known ground truth: which noun must the verb agree with?

Why this data set: agreement is the cleanest case where the *right* evidence for a prediction is known. In
``"The keys near the cabinet ___"`` the verb must be ``are`` because of ``keys`` (the subject), not ``cabinet``
(the attractor: a nearer noun of the other number, which models are known to be distracted by). A faithful
explanation of ``logit(are) - logit(is)`` should therefore point at the subject, and an attention map that
points at the attractor is telling a different story than the model's computation.

The prompts come from our own templates and word lists (nothing is downloaded) and end right before the verb,
so a causal language model predicts the verb at the last position:

    frame = agreement_prompts(n=40, seed=0)
    frame.loc[0, ["text", "correct", "expected_sign"]]    # e.g. 'The cities near the pilot', 'are', 1
    batch = tokenize(tokenizer, frame.text.tolist())
    truth = token_positions(batch, frame)                 # the subject's and attractor's tokens, per prompt
    explanations = explain(model, batch, target=agreement_target(tokenizer))

**Sign convention.** A :class:`~attn_probe.capture.targets.Target` holds one contrast for the whole batch
(``resolve`` broadcasts ``contrast_ids``), while the correct verb differs per prompt. Rather than split batches
by number, the target is always ``logit(" are") - logit(" is")`` and each row records ``expected_sign``: +1
where ``are`` is correct (plural subject), -1 where ``is`` is. ``expected_sign * value`` is the margin of the
correct verb over the wrong one, and ``expected_sign[:, None] * scores`` turns importance for "are over is"
into importance for "correct over wrong" (:func:`correct_minus_wrong` does both).

**Masked language models** (BERT) predict the verb at a ``[MASK]``: append ``" " + tokenizer.mask_token`` to
each text (the word indices do not change) and pass ``agreement_target(tokenizer, position=-2)`` (the mask is
the second-to-last real token, before ``[SEP]``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from attn_probe.capture.targets import Target
from attn_probe.capture.tokens import TokenizedBatch

Number = Literal["singular", "plural"]
NounKind = Literal["any", "person"]

NUMBERS: tuple[Number, Number] = ("singular", "plural")
VERBS = {"singular": "is", "plural": "are"}  # the correct copula for a subject of each number
CONTRAST = (" are", " is")  # the target's (a, b), with the leading space byte-level BPE puts on a word

COLUMNS = (
    "prompt_id",
    "template",
    "text",
    "subject",
    "subject_lemma",
    "subject_number",
    "subject_irregular",
    "attractor",
    "attractor_lemma",
    "attractor_number",
    "congruent",
    "correct",
    "wrong",
    "expected_sign",
    "subject_word_index",
    "attractor_word_index",
)
ROLES = ("subject", "attractor")

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Noun:
    """A noun with both forms. ``irregular``: the plural is not the singular plus -s/-es/-ies (men, knives)."""

    singular: str
    plural: str
    kind: NounKind = "any"  # "person": can like something, so it may fill a relative clause's agent slot
    irregular: bool = False

    def form(self, number: Number) -> str:
        return self.singular if number == "singular" else self.plural


def _people(*pairs: tuple[str, str, bool]) -> tuple[Noun, ...]:
    return tuple(Noun(s, p, "person", irregular) for s, p, irregular in pairs)


def _things(*pairs: tuple[str, str, bool]) -> tuple[Noun, ...]:
    return tuple(Noun(s, p, "any", irregular) for s, p, irregular in pairs)


# Our own word lists. No noun whose singular and plural coincide (sheep, fish): its number would be ambiguous,
# and no form is another noun's form, so distinct choices always give distinct texts. Every form is one
# lowercase word without punctuation, so every tokenizer's pre-tokenizer keeps it one word.
NOUNS: tuple[Noun, ...] = _people(
    ("author", "authors", False),
    ("teacher", "teachers", False),
    ("farmer", "farmers", False),
    ("pilot", "pilots", False),
    ("doctor", "doctors", False),
    ("senator", "senators", False),
    ("singer", "singers", False),
    ("lawyer", "lawyers", False),
    ("man", "men", True),
    ("woman", "women", True),
    ("child", "children", True),
    ("person", "people", True),
) + _things(
    ("key", "keys", False),
    ("cabinet", "cabinets", False),
    ("table", "tables", False),
    ("book", "books", False),
    ("picture", "pictures", False),
    ("box", "boxes", False),
    ("bridge", "bridges", False),
    ("church", "churches", False),
    ("city", "cities", False),
    ("knife", "knives", True),
    ("leaf", "leaves", True),
    ("shelf", "shelves", True),
    ("mouse", "mice", True),
    ("tooth", "teeth", True),
    ("goose", "geese", True),
    ("foot", "feet", True),
)


@dataclass(frozen=True)
class AgreementTemplate:
    """A prompt pattern ending right before the verb, with ``{subject}`` (and maybe ``{attractor}``) as words.

    ``subject_kind`` / ``attractor_kind``: ``"person"`` restricts the slot to people (someone who *liked*
    something). Embedded verbs are in the past tense (``liked``), so that they agree with nothing and give no
    number cue of their own.

        AgreementTemplate("pp_near", "The {subject} near the {attractor}")
    """

    name: str
    pattern: str
    subject_kind: NounKind = "any"
    attractor_kind: NounKind = "any"

    def __post_init__(self) -> None:
        words = self.pattern.split()
        if words.count("{subject}") != 1:
            raise ValueError(
                f"template {self.name!r}: the pattern must hold '{{subject}}' exactly once, as a word of its own "
                f"(got {self.pattern!r})"
            )
        if words.count("{attractor}") > 1:
            raise ValueError(f"template {self.name!r}: '{{attractor}}' may appear at most once ({self.pattern!r})")
        stray = [w for w in words if w not in ("{subject}", "{attractor}") and ("{" in w or "}" in w)]
        if stray:
            raise ValueError(
                f"template {self.name!r}: {stray} are not whole-word slots; write '{{subject}}' and '{{attractor}}' "
                "as separate words"
            )
        if self.subject_kind not in ("any", "person") or self.attractor_kind not in ("any", "person"):
            raise ValueError(f"template {self.name!r}: a slot kind is 'any' or 'person'")

    @property
    def has_attractor(self) -> bool:
        return "{attractor}" in self.pattern.split()

    @property
    def subject_word_index(self) -> int:
        return self.pattern.split().index("{subject}")

    @property
    def attractor_word_index(self) -> int | None:
        words = self.pattern.split()
        return words.index("{attractor}") if "{attractor}" in words else None

    def fill(self, subject: str, attractor: str | None = None) -> str:
        words = self.pattern.split()  # normalises whitespace, so word indices are positions in this list
        filled = [subject if w == "{subject}" else attractor if w == "{attractor}" else w for w in words]
        return " ".join(str(w) for w in filled)


# The attractor sits between the subject and the verb in every template, as in the agreement-attraction
# literature (Linzen et al. 2016; Gulordava et al. 2018): prepositional phrases and relative clauses.
TEMPLATES: tuple[AgreementTemplate, ...] = (
    AgreementTemplate("pp_near", "The {subject} near the {attractor}"),
    AgreementTemplate("pp_behind", "The {subject} behind the {attractor}"),
    AgreementTemplate("pp_next_to", "The {subject} next to the {attractor}"),
    AgreementTemplate("pp_with", "The {subject} with the {attractor}"),
    AgreementTemplate("rc_object", "The {subject} that the {attractor} liked", attractor_kind="person"),
    AgreementTemplate("rc_subject", "The {subject} that liked the {attractor}", subject_kind="person"),
)
# Without a second noun: the only number cue is the subject (a control for the attractor templates).
PLAIN_TEMPLATES: tuple[AgreementTemplate, ...] = (
    AgreementTemplate("bare", "The {subject}"),
    AgreementTemplate("adjective", "The old {subject}"),
    AgreementTemplate("adverb", "The {subject} over there"),
    AgreementTemplate("participle", "The {subject} mentioned earlier"),
)


def agreement_prompts(
    n: int = 200,
    seed: int = 0,
    templates: Sequence[AgreementTemplate | str] | None = None,
    attractor: bool = True,
) -> pd.DataFrame:
    """``n`` distinct agreement prompts, balanced over subject × attractor number, deterministic under ``seed``.

    Args:
        n: how many prompts. They are split as evenly as possible (counts differ by at most one) over the
            number combinations: the 4 (subject, attractor) pairs of singular/plural, or the 2 subject numbers
            when ``attractor=False``; within those, over the templates.
        seed: the same seed gives the same table (numpy's ``default_rng``).
        templates: templates or names of built-in ones (:data:`TEMPLATES`, :data:`PLAIN_TEMPLATES`); None: all
            built-in templates of the kind ``attractor`` asks for.
        attractor: True: a second noun stands between subject and verb; False: none (a control).

    Returns one row per prompt, sorted by ``prompt_id`` (0..n-1, in a shuffled order of the draws):

    - ``template``, ``text``: the prompt, ending right before the verb (``"The keys near the cabinet"``);
    - ``subject``, ``subject_lemma`` (singular form), ``subject_number`` (``"singular"``/``"plural"``),
      ``subject_irregular`` (bool: men, knives, ...);
    - ``attractor``, ``attractor_lemma``, ``attractor_number``: the other noun (None without one);
    - ``congruent``: subject and attractor have the same number (nullable bool; <NA> without attractor);
    - ``correct``, ``wrong``: ``"are"``/``"is"``; ``expected_sign``: +1 where ``are`` is correct, else -1
      (see the module docstring for the sign convention of :func:`agreement_target`);
    - ``subject_word_index``, ``attractor_word_index`` (nullable int): positions of the nouns among the
      whitespace-separated words of ``text``; :func:`token_positions` maps them to tokens.

        frame = agreement_prompts(n=8, seed=1)
        frame.groupby(["subject_number", "attractor_number"]).size()    # 2 each
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    chosen = _choose_templates(templates, attractor)
    rng = np.random.default_rng(seed)
    combos: list[tuple[Number, Number | None]] = (
        [(s, a) for s in NUMBERS for a in NUMBERS] if attractor else [(s, None) for s in NUMBERS]
    )

    # Quotas: n over the combinations (±1), then each combination's share over the templates, giving the
    # extra prompts to the templates used least so far, so the template totals stay within one of each other.
    per_combo = _split(n, len(combos))
    template_totals = np.zeros(len(chosen), dtype=int)
    rows: list[dict[str, Any]] = []
    for (subject_number, attractor_number), quota in zip(combos, per_combo, strict=True):
        base, extra = divmod(quota, len(chosen))
        order = np.lexsort((rng.permutation(len(chosen)), template_totals))  # least used first, ties at random
        for rank, t in enumerate(order):
            count = base + (1 if rank < extra else 0)
            template_totals[t] += count
            if count:
                rows += _draw(chosen[t], subject_number, attractor_number, count, rng)

    frame = pd.DataFrame(rows).iloc[rng.permutation(len(rows))].reset_index(drop=True)
    frame.insert(0, "prompt_id", np.arange(len(frame), dtype=np.int64))
    frame["attractor_word_index"] = pd.array(frame["attractor_word_index"].tolist(), dtype="Int64")
    frame["congruent"] = pd.array(frame["congruent"].tolist(), dtype="boolean")
    frame["subject_word_index"] = frame["subject_word_index"].astype("int64")
    frame["expected_sign"] = frame["expected_sign"].astype("int64")
    return frame[list(COLUMNS)]


def _choose_templates(templates: Sequence[AgreementTemplate | str] | None, attractor: bool) -> list[AgreementTemplate]:
    if templates is None:
        return list(TEMPLATES if attractor else PLAIN_TEMPLATES)
    if isinstance(templates, (str, AgreementTemplate)):
        templates = [templates]
    known = {t.name: t for t in (*TEMPLATES, *PLAIN_TEMPLATES)}
    chosen = []
    for template in templates:
        if isinstance(template, str):
            if template not in known:
                raise ValueError(f"no built-in template named {template!r}; the built-in ones are: {', '.join(known)}")
            template = known[template]
        if not isinstance(template, AgreementTemplate):
            raise TypeError(f"a template is an AgreementTemplate or a built-in name, got {type(template).__name__}")
        if template.has_attractor != attractor:
            have = "has an {attractor} slot" if template.has_attractor else "has no {attractor} slot"
            raise ValueError(f"template {template.name!r} {have}, but attractor={attractor}: pick templates that match")
        chosen.append(template)
    if not chosen:
        raise ValueError("templates is empty: pass at least one template, or None for the built-in ones")
    names = [t.name for t in chosen]
    if len(set(names)) != len(names):
        raise ValueError(f"template names must be distinct, got {names}")
    return chosen


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _fits(noun: Noun, kind: NounKind) -> bool:
    return kind == "any" or noun.kind == kind


def _draw(
    template: AgreementTemplate, subject_number: Number, attractor_number: Number | None, count: int, rng: Any
) -> list[dict[str, Any]]:
    """``count`` distinct (subject, attractor) choices for one template and number combination."""
    subjects = [noun for noun in NOUNS if _fits(noun, template.subject_kind)]
    if attractor_number is None:
        pairs: list[tuple[Noun, Noun | None]] = [(s, None) for s in subjects]
    else:
        attractors = [noun for noun in NOUNS if _fits(noun, template.attractor_kind)]
        pairs = [(s, a) for s in subjects for a in attractors if a.singular != s.singular]
    if count > len(pairs):
        what = f"{subject_number} subject" + (f", {attractor_number} attractor" if attractor_number else "")
        raise ValueError(
            f"template {template.name!r} gives only {len(pairs)} distinct prompts with a {what}, but the balanced "
            f"split of n needs {count}: ask for fewer prompts or use more templates"
        )
    rows = []
    for index in sorted(rng.choice(len(pairs), size=count, replace=False)):
        subject, other = pairs[index]
        correct = VERBS[subject_number]
        rows.append(
            {
                "template": template.name,
                "text": template.fill(
                    subject.form(subject_number), None if other is None else other.form(attractor_number)
                ),
                "subject": subject.form(subject_number),
                "subject_lemma": subject.singular,
                "subject_number": subject_number,
                "subject_irregular": subject.irregular,
                "attractor": None if other is None else other.form(attractor_number),
                "attractor_lemma": None if other is None else other.singular,
                "attractor_number": attractor_number,
                "congruent": None if attractor_number is None else subject_number == attractor_number,
                "correct": correct,
                "wrong": VERBS["plural" if subject_number == "singular" else "singular"],
                "expected_sign": 1 if correct == "are" else -1,
                "subject_word_index": template.subject_word_index,
                "attractor_word_index": template.attractor_word_index,
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------------
# target and ground truth
# ----------------------------------------------------------------------------------------------------
def agreement_target(tokenizer: Any, *, position: int | None = None) -> Target:
    """The agreement target for every prompt: ``logit(" are") - logit(" is")``, read at ``position``.

    One target for the whole batch, with a fixed sign (a :class:`Target` has one contrast per batch); multiply
    by the frame's ``expected_sign`` for "correct minus wrong" (:func:`correct_minus_wrong`). The tokens carry
    a leading space, which byte-level BPE tokenizers (GPT-2, Llama 3) put on a word after another word and
    WordPiece (BERT) ignores; both must be single tokens for ``tokenizer``.

        target = agreement_target(tokenizer)                # at the last real token (causal LMs)
        target = agreement_target(tokenizer, position=-2)   # at a [MASK] before [SEP] (masked LMs)
    """
    return Target.contrast(*CONTRAST, tokenizer, position=position)


def correct_minus_wrong(values: torch.Tensor, frame: pd.DataFrame) -> torch.Tensor:
    """``values`` for "correct minus wrong": ``values * expected_sign`` per example (row of ``frame``).

    ``values`` is ``[batch]`` (a resolved target's values) or ``[batch, ...]`` (an explanation's scores,
    ``[batch, n]``): for a plural subject they are kept, for a singular one negated.

        margin = correct_minus_wrong(explanation.target.values, frame)    # > 0 where the model is right
    """
    sign = torch.tensor(frame["expected_sign"].tolist(), dtype=values.dtype, device=values.device)
    if values.shape[0] != sign.shape[0]:
        raise ValueError(f"values hold {values.shape[0]} examples but the frame has {sign.shape[0]} rows")
    return values * sign.reshape(-1, *([1] * (values.dim() - 1)))


def token_positions(batch: TokenizedBatch, frame: pd.DataFrame) -> pd.DataFrame:
    """The tokens of each prompt's subject and attractor in ``batch``: one row per token.

    ``batch`` must be ``tokenize(tokenizer, frame.text.tolist(), ...)`` (same texts, same order; a mask
    appended to every text is allowed). Columns: ``example_id`` (row of the batch), ``prompt_id``, ``role``
    (``"subject"``/``"attractor"``), ``word`` (the noun), ``word_index`` (in the text's whitespace words),
    ``token_index`` (among the example's real tokens, as in :meth:`Explanation.to_frame`), ``position``
    (padded column of the tensors) and ``token``.

    The noun's character span is found from its whitespace word, then every token of every batch word inside
    that span is taken, so a noun split into pieces (``cabin ##ets``) or words split further by the tokenizer
    all map correctly.

        truth = token_positions(batch, frame)
        scores = explanation.to_frame(batch).merge(truth, on=["example_id", "token_index"])
    """
    _check_batch(batch, frame)
    rows: dict[str, list[Any]] = {
        k: [] for k in ("example_id", "prompt_id", "role", "word", "word_index", "token_index", "position", "token")
    }
    for i, record in enumerate(frame.itertuples(index=False)):
        text = batch.texts[i]
        spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        for role in ROLES:
            word_index = getattr(record, f"{role}_word_index")
            if pd.isna(word_index):
                continue
            word_index = int(word_index)
            noun = getattr(record, role)
            if word_index >= len(spans) or text[slice(*spans[word_index])] != noun:
                raise ValueError(
                    f"row {i}: word {word_index} of {text!r} is not the {role} {noun!r}: the frame and batch disagree"
                )
            start, end = spans[word_index]
            inside = {w for w, (s, e) in enumerate(batch.word_spans[i]) if s >= start and e <= end}
            token_indices = [j for j, w in enumerate(batch.word_ids[i]) if w in inside]
            if not token_indices:
                raise ValueError(f"row {i}: the {role} {noun!r} has no token in the batch (truncated by max_length?)")
            for j in token_indices:
                rows["example_id"].append(i)
                rows["prompt_id"].append(int(record.prompt_id))
                rows["role"].append(role)
                rows["word"].append(noun)
                rows["word_index"].append(word_index)
                rows["token_index"].append(j)
                rows["position"].append(batch.positions[i][j])
                rows["token"].append(batch.tokens[i][j])
    integers = ("example_id", "prompt_id", "word_index", "token_index", "position")
    return pd.DataFrame(rows).astype(dict.fromkeys(integers, "int64"))


def role_mask(batch: TokenizedBatch, frame: pd.DataFrame, role: str = "subject") -> torch.Tensor:
    """``[batch, n]`` bool, True at the tokens of each prompt's ``role`` noun (``"subject"``/``"attractor"``).

    Aligned with ``batch.input_ids`` and with an explanation's ``scores``, so ground truth is one mask away:

        on_subject = (scores.abs() * role_mask(batch, frame)).sum(1) / scores.abs().sum(1)
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    truth = token_positions(batch, frame)
    truth = truth[truth.role == role]
    mask = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    rows = torch.tensor(truth.example_id.tolist(), dtype=torch.long)
    columns = torch.tensor(truth.position.tolist(), dtype=torch.long)
    mask[rows, columns] = True
    return mask.to(batch.input_ids.device)


def _check_batch(batch: TokenizedBatch, frame: pd.DataFrame) -> None:
    if not isinstance(batch, TokenizedBatch):
        raise TypeError(f"batch must be a TokenizedBatch (from capture.tokenize), got {type(batch).__name__}")
    needed = ("prompt_id", "text", "subject", "attractor", *(f"{r}_word_index" for r in ROLES))
    missing = [c for c in needed if c not in frame]
    if missing:
        raise ValueError(f"the frame lacks the column(s) {missing}: pass the table agreement_prompts() returned")
    if len(batch) != len(frame):
        raise ValueError(f"the batch has {len(batch)} examples but the frame {len(frame)} rows: tokenize frame.text")
    for i, (text, tokenized) in enumerate(zip(frame["text"], batch.texts, strict=True)):
        if not tokenized.startswith(text):
            raise ValueError(
                f"example {i} of the batch is {tokenized!r}, but row {i} of the frame is {text!r}: tokenize "
                "frame.text.tolist() in the frame's order"
            )
