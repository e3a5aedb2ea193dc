"""Toy tasks whose answer depends on known tokens: the lab where an explanation can be checked.

Every batch carries ``relevant [batch, n]``: the tokens that decide the answer. A faithful
explanation of a model that solved the task must rank those first; attention may or may not.

Vocabulary layout shared by the tasks: ``0 = [PAD]``, ``1 = [CLS]`` (or BOS), ``2 = [SEP]``, then
task tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD, CLS, SEP = 0, 1, 2
IGNORE = -100  # label of positions that are not scored (cross_entropy's ignore_index)


@dataclass
class ToyBatch:
    input_ids: torch.Tensor  # [batch, n]
    attention_mask: torch.Tensor  # [batch, n], 1 = real token
    labels: torch.Tensor  # [batch] class ids, or [batch, n] next tokens with IGNORE where unscored
    relevant: torch.Tensor  # [batch, n] bool: tokens that decide the answer


@dataclass(frozen=True)
class KeywordSentiment:
    """Classify a sequence as positive when it holds more positive than negative marker tokens.

    ``[CLS] w1 ... wn [SEP]``: filler words plus 1-4 markers, never a tie, so a perfect model exists
    (accuracy 1.0 is what the task allows). ``relevant`` marks the markers.
    """

    vocab_size: int = 32
    num_markers: int = 4  # per polarity
    min_length: int = 6
    max_length: int = 14
    kind: str = "classification"

    @property
    def positive_ids(self) -> range:
        return range(3, 3 + self.num_markers)

    @property
    def negative_ids(self) -> range:
        return range(3 + self.num_markers, 3 + 2 * self.num_markers)

    @property
    def filler_ids(self) -> range:
        return range(3 + 2 * self.num_markers, self.vocab_size)

    def __post_init__(self) -> None:
        if len(self.filler_ids) < 2:
            raise ValueError(f"vocab_size {self.vocab_size} leaves no room for filler words")
        if self.min_length < 4 or self.max_length < self.min_length:
            raise ValueError("need 4 <= min_length <= max_length")

    def sample(self, batch_size: int, generator: torch.Generator) -> ToyBatch:
        total = self.max_length + 2  # with [CLS] and [SEP]
        input_ids = torch.full((batch_size, total), PAD, dtype=torch.long)
        relevant = torch.zeros(batch_size, total, dtype=torch.bool)
        labels = torch.zeros(batch_size, dtype=torch.long)
        for row in range(batch_size):
            length = int(torch.randint(self.min_length, self.max_length + 1, (1,), generator=generator))
            words = self._choice(self.filler_ids, length, generator)
            positives, negatives = self._marker_counts(generator)
            slots = torch.randperm(length, generator=generator)[: positives + negatives]
            markers = torch.cat(
                [
                    self._choice(self.positive_ids, positives, generator),
                    self._choice(self.negative_ids, negatives, generator),
                ]
            )
            words[slots] = markers
            input_ids[row, 0] = CLS
            input_ids[row, 1 : length + 1] = words
            input_ids[row, length + 1] = SEP
            relevant[row, 1 + slots] = True
            labels[row] = int(positives > negatives)
        return ToyBatch(input_ids, (input_ids != PAD).long(), labels, relevant)

    def _marker_counts(self, generator: torch.Generator) -> tuple[int, int]:
        while True:
            positives, negatives = (int(c) for c in torch.randint(0, 3, (2,), generator=generator))
            if positives != negatives:
                return positives, negatives

    @staticmethod
    def _choice(ids: range, count: int, generator: torch.Generator) -> torch.Tensor:
        return torch.tensor(ids)[torch.randint(len(ids), (count,), generator=generator)]


@dataclass(frozen=True)
class CopySequence:
    """Language modelling: ``[BOS] s1 ... sL [SEP] s1 ... sL``; after [SEP] every token is a copy.

    Only the copied half is scored (the first half is random), so accuracy 1.0 is what the task
    allows there. ``relevant`` marks, for the last scored position, the source token it copies.
    """

    vocab_size: int = 24
    min_length: int = 3
    max_length: int = 8
    kind: str = "language_model"

    def __post_init__(self) -> None:
        if self.vocab_size < 5:
            raise ValueError(f"vocab_size {self.vocab_size} leaves no room for content tokens")

    def sample(self, batch_size: int, generator: torch.Generator) -> ToyBatch:
        total = 2 * self.max_length + 2
        input_ids = torch.full((batch_size, total), PAD, dtype=torch.long)
        labels = torch.full((batch_size, total), IGNORE, dtype=torch.long)
        relevant = torch.zeros(batch_size, total, dtype=torch.bool)
        for row in range(batch_size):
            length = int(torch.randint(self.min_length, self.max_length + 1, (1,), generator=generator))
            source = torch.randint(3, self.vocab_size, (length,), generator=generator)
            sequence = torch.cat([torch.tensor([CLS]), source, torch.tensor([SEP]), source])  # [2L + 2]
            input_ids[row, : len(sequence)] = sequence
            # Position t predicts token t + 1; from [SEP] on, the next token is a copy.
            labels[row, length + 1 : 2 * length + 1] = source
            relevant[row, length] = True  # last position predicts s_L: it copies the source's s_L
        return ToyBatch(input_ids, (input_ids != PAD).long(), labels, relevant)


ToyTask = KeywordSentiment | CopySequence
