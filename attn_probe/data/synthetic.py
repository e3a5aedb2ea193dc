"""Synthetic classification tasks for our small models, each knowing exactly which tokens decide the label.

Why: on real text nobody knows which tokens a model *had* to use, so an explanation can only be compared
with other explanations. Here the rule is ours, so the tokens that decide the label are known, and a model
that solves the task must use them. Three shapes of evidence, each a different test for attention:

- :class:`MarkedToken`: one marker token anywhere; its identity is the label (one decisive token, found by
  content: attention can simply look at it).
- :class:`OffsetToken`: the label is the class of the token ``offset`` places after (or before) a marker;
  every other token is drawn from the same values, so the model must find the marker and then read by
  *relative position* (the decisive token is not special by content, the marker only says where to look).
- :class:`TokenPair`: two key tokens anywhere; the label is their XOR (or whether they match). Each key alone
  is independent of the label, so no single token explains it (a test for explanations that rank tokens one
  at a time).

:class:`~attn_probe.attention.toy_tasks.KeywordSentiment` (marker counts decide) is re-exported beside them.

All follow the toy-task protocol of :mod:`attn_probe.attention.toy_tasks` (``vocab_size``, ``kind``,
``sample(batch_size, generator)``), so :func:`attn_probe.attention.training.train` trains on them, with the
same layout: ``[CLS] w1 ... wL [SEP] [PAD] ...`` and ids ``0 = [PAD]``, ``1 = [CLS]``, ``2 = [SEP]``.

    task = OffsetToken(offset=2)
    model = build_model(TransformerConfig(vocab_size=task.vocab_size, num_classes=task.num_classes), task)
    train(model, task, steps=300)
    batch = task.sample(8, torch.Generator().manual_seed(0))
    batch.relevant      # [8, n] the token whose class is the label
    batch.cues          # [8, n] the marker that says where it is
    task.label(batch.input_ids)   # the rule itself, e.g. to label perturbed inputs

Ground truth, in :class:`SyntheticBatch`: ``relevant`` marks the tokens whose *identity* sets the label (change
one in the right way and the label changes; change any other token within its role and it does not);
``cues`` marks tokens that only say *where* to look (the offset task's marker). An explanation may fairly
rank cues high too: compare with ``relevant | cues`` for the lenient reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from attn_probe.attention.toy_tasks import CLS, IGNORE, PAD, SEP, KeywordSentiment, ToyBatch

FIRST_TASK_ID = 3  # after [PAD], [CLS], [SEP]


@dataclass
class SyntheticBatch(ToyBatch):
    """A :class:`ToyBatch` plus ``cues [batch, n]`` bool: tokens that locate the decisive ones (may be all False)."""

    cues: torch.Tensor


def _check_lengths(min_length: int, max_length: int, least: int) -> None:
    if min_length < least or max_length < min_length:
        raise ValueError(f"need {least} <= min_length <= max_length, got {min_length} and {max_length}")


def _choice(ids: range | list[int], count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.tensor(list(ids), dtype=torch.long)[torch.randint(len(ids), (count,), generator=generator)]


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """One integer in ``[low, high]`` (both included)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


class _Layout:
    """Writes rows as ``[CLS] words [SEP]`` into padded tensors; collects labels and ground truth."""

    def __init__(self, batch_size: int, max_length: int) -> None:
        total = max_length + 2  # with [CLS] and [SEP]
        self.input_ids = torch.full((batch_size, total), PAD, dtype=torch.long)  # [batch, n]
        self.relevant = torch.zeros(batch_size, total, dtype=torch.bool)  # [batch, n]
        self.cues = torch.zeros(batch_size, total, dtype=torch.bool)  # [batch, n]
        self.labels = torch.zeros(batch_size, dtype=torch.long)  # [batch]

    def write(
        self, row: int, words: torch.Tensor, label: int, relevant: Sequence[int], cues: Sequence[int] = ()
    ) -> None:
        """``relevant`` / ``cues`` are indices into ``words`` (the column is one more, after [CLS])."""
        length = len(words)
        self.input_ids[row, 0] = CLS
        self.input_ids[row, 1 : length + 1] = words
        self.input_ids[row, length + 1] = SEP
        self.relevant[row, [1 + i for i in relevant]] = True
        if cues:
            self.cues[row, [1 + i for i in cues]] = True
        self.labels[row] = label

    def batch(self) -> SyntheticBatch:
        return SyntheticBatch(self.input_ids, (self.input_ids != PAD).long(), self.labels, self.relevant, self.cues)


def _words(input_ids: torch.Tensor) -> list[torch.Tensor]:
    """The words of each row: the tokens between [CLS] and the first [SEP] (rows that are not well formed give
    an empty tensor, which every rule labels IGNORE)."""
    rows = []
    for ids in input_ids.reshape(-1, input_ids.shape[-1]).cpu():
        ends = (ids == SEP).nonzero().flatten()
        rows.append(ids[1 : int(ends[0])] if ids[0] == CLS and len(ends) else ids[:0])
    return rows


@dataclass(frozen=True)
class MarkedToken:
    """One marker token at a random place among filler words; which marker it is, is the label.

    ``[CLS] f f m_c f ... [SEP]``: label ``c`` for marker ``m_c = 3 + c``. ``relevant`` marks the marker: any
    other marker there changes the label, any filler elsewhere does not.

        task = MarkedToken(num_classes=3)
        batch = task.sample(4, torch.Generator().manual_seed(0))   # labels in {0, 1, 2}
    """

    vocab_size: int = 24
    num_classes: int = 2
    min_length: int = 4
    max_length: int = 12
    kind: str = "classification"

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if len(self.filler_ids) < 2:
            raise ValueError(f"vocab_size {self.vocab_size} leaves fewer than 2 filler words")
        _check_lengths(self.min_length, self.max_length, 1)

    @property
    def marker_ids(self) -> range:
        return range(FIRST_TASK_ID, FIRST_TASK_ID + self.num_classes)

    @property
    def filler_ids(self) -> range:
        return range(FIRST_TASK_ID + self.num_classes, self.vocab_size)

    def sample(self, batch_size: int, generator: torch.Generator) -> SyntheticBatch:
        layout = _Layout(batch_size, self.max_length)
        for row in range(batch_size):
            length = _randint(self.min_length, self.max_length, generator)
            words = _choice(self.filler_ids, length, generator)
            slot = _randint(0, length - 1, generator)
            label = _randint(0, self.num_classes - 1, generator)  # labels uniform over the classes
            words[slot] = self.marker_ids[label]
            layout.write(row, words, label, [slot])
        return layout.batch()

    def label(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The rule: ``[batch]`` labels of ``[batch, n]`` ids; ``IGNORE`` (-100) where there is not exactly one
        marker (the rule says nothing there)."""
        out = []
        for words in _words(input_ids):
            markers = [int(t) - FIRST_TASK_ID for t in words if int(t) in self.marker_ids]
            out.append(markers[0] if len(markers) == 1 else IGNORE)
        return torch.tensor(out, dtype=torch.long)


@dataclass(frozen=True)
class OffsetToken:
    """The label is the class of the token ``offset`` places from the one marker (after it when positive).

    Every non-marker token is a value token ``v`` (id 4 and up) of class ``(v - 4) % num_classes``, so the
    decisive token looks like all the others: only its position relative to the marker (id 3) singles it out.
    ``relevant`` marks it; ``cues`` marks the marker.

        task = OffsetToken(offset=-1)     # the label is read from the token just before the marker
    """

    vocab_size: int = 16
    num_classes: int = 2
    offset: int = 2
    min_length: int = 5
    max_length: int = 12
    kind: str = "classification"

    MARKER = FIRST_TASK_ID

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if len(self.value_ids) < 2 * self.num_classes:
            raise ValueError(
                f"vocab_size {self.vocab_size} leaves {len(self.value_ids)} value tokens; need at least "
                f"{2 * self.num_classes} (two per class)"
            )
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or self.offset == 0:
            raise ValueError(f"offset must be a nonzero int, got {self.offset!r}")
        _check_lengths(self.min_length, self.max_length, abs(self.offset) + 1)

    @property
    def value_ids(self) -> range:
        return range(FIRST_TASK_ID + 1, self.vocab_size)

    def value_class(self, token_id: int) -> int:
        """The class a value token stands for."""
        return (token_id - FIRST_TASK_ID - 1) % self.num_classes

    def sample(self, batch_size: int, generator: torch.Generator) -> SyntheticBatch:
        layout = _Layout(batch_size, self.max_length)
        by_class = [[v for v in self.value_ids if self.value_class(v) == c] for c in range(self.num_classes)]
        for row in range(batch_size):
            length = _randint(self.min_length, self.max_length, generator)
            words = _choice(self.value_ids, length, generator)
            # The marker goes where marker + offset still falls on a word.
            first, last = max(0, -self.offset), min(length - 1, length - 1 - self.offset)
            marker = _randint(first, last, generator)
            target = marker + self.offset
            label = _randint(0, self.num_classes - 1, generator)  # chosen first: labels uniform
            words[target] = int(_choice(by_class[label], 1, generator))
            words[marker] = self.MARKER
            layout.write(row, words, label, [target], cues=[marker])
        return layout.batch()

    def label(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The rule: ``[batch]`` labels; ``IGNORE`` where there is not exactly one marker, or where marker +
        offset falls outside the words."""
        out = []
        for words in _words(input_ids):
            markers = (words == self.MARKER).nonzero().flatten().tolist()
            target = markers[0] + self.offset if len(markers) == 1 else -1
            out.append(self.value_class(int(words[target])) if 0 <= target < len(words) else IGNORE)
        return torch.tensor(out, dtype=torch.long)


@dataclass(frozen=True)
class TokenPair:
    """Two key tokens anywhere among fillers; the label is a function of *both*.

    ``rule="xor"``: each key carries a bit (``(id - 3) % 2``), the label is their XOR. ``rule="match"``: the
    label is 1 when the two keys are the same token. The labels are balanced and each key alone is
    independent of the label (its marginal distribution is the same under both labels), so a model must
    combine the two. ``relevant`` marks both keys.

        task = TokenPair(rule="match")
    """

    vocab_size: int = 20
    rule: Literal["xor", "match"] = "xor"
    num_keys: int = 4
    min_length: int = 4
    max_length: int = 12
    kind: str = "classification"
    num_classes: int = 2

    def __post_init__(self) -> None:
        if self.rule not in ("xor", "match"):
            raise ValueError(f"rule must be 'xor' or 'match', got {self.rule!r}")
        if self.num_keys < 2 or (self.rule == "xor" and self.num_keys % 2):
            raise ValueError(f"num_keys must be at least 2 (and even for 'xor', one half per bit), got {self.num_keys}")
        if self.num_classes != 2:
            raise ValueError("TokenPair is a binary task: num_classes must be 2")
        if len(self.filler_ids) < 2:
            raise ValueError(f"vocab_size {self.vocab_size} leaves fewer than 2 filler words")
        _check_lengths(self.min_length, self.max_length, 2)

    @property
    def key_ids(self) -> range:
        return range(FIRST_TASK_ID, FIRST_TASK_ID + self.num_keys)

    @property
    def filler_ids(self) -> range:
        return range(FIRST_TASK_ID + self.num_keys, self.vocab_size)

    def bit(self, token_id: int) -> int:
        """The bit a key stands for under ``rule="xor"``."""
        return (token_id - FIRST_TASK_ID) % 2

    def sample(self, batch_size: int, generator: torch.Generator) -> SyntheticBatch:
        layout = _Layout(batch_size, self.max_length)
        keys = list(self.key_ids)
        for row in range(batch_size):
            length = _randint(self.min_length, self.max_length, generator)
            words = _choice(self.filler_ids, length, generator)
            slots = torch.randperm(length, generator=generator)[:2].tolist()
            label = _randint(0, 1, generator)
            first = int(_choice(keys, 1, generator))  # uniform, whatever the label
            if self.rule == "xor":
                wanted = self.bit(first) ^ label
                second = int(_choice([k for k in keys if self.bit(k) == wanted], 1, generator))
            else:  # uniform over the others when not matching, so the second key is uniform as well
                second = first if label else int(_choice([k for k in keys if k != first], 1, generator))
            words[slots[0]], words[slots[1]] = first, second
            layout.write(row, words, label, sorted(slots))
        return layout.batch()

    def label(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The rule: ``[batch]`` labels; ``IGNORE`` where there are not exactly two keys."""
        out = []
        for words in _words(input_ids):
            found = [int(t) for t in words if int(t) in self.key_ids]
            if len(found) != 2:
                out.append(IGNORE)
            elif self.rule == "xor":
                out.append(self.bit(found[0]) ^ self.bit(found[1]))
            else:
                out.append(int(found[0] == found[1]))
        return torch.tensor(out, dtype=torch.long)


SyntheticTask = MarkedToken | OffsetToken | TokenPair | KeywordSentiment

__all__ = [
    "KeywordSentiment",
    "MarkedToken",
    "OffsetToken",
    "SyntheticBatch",
    "SyntheticTask",
    "TokenPair",
]
