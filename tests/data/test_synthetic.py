"""Synthetic tasks: the rule holds on every sample, the marked tokens really decide the label (changing them
changes it, changing any other token does not), and the training loop takes the tasks as they are."""

from __future__ import annotations

import pytest
import torch

from attn_probe.attention import TransformerConfig
from attn_probe.attention.toy_tasks import CLS, IGNORE, PAD, SEP
from attn_probe.attention.training import build_model, train
from attn_probe.data.synthetic import MarkedToken, OffsetToken, SyntheticBatch, TokenPair
from tests.threads import one_torch_thread

TASKS = {
    "marked": MarkedToken(),
    "marked3": MarkedToken(num_classes=3),
    "offset+2": OffsetToken(offset=2),
    "offset-1": OffsetToken(offset=-1, num_classes=3, vocab_size=20),
    "xor": TokenPair(rule="xor"),
    "match": TokenPair(rule="match"),
}


def sample(task, size: int = 64, seed: int = 0) -> SyntheticBatch:
    return task.sample(size, torch.Generator().manual_seed(seed))


def words_of(batch: SyntheticBatch, row: int) -> torch.Tensor:
    length = int(batch.attention_mask[row].sum())
    return batch.input_ids[row, 1 : length - 1]


def same_role_ids(task, token: int) -> list[int]:
    """Other tokens that play the same role as ``token`` (filler for filler, value for value)."""
    if isinstance(task, OffsetToken):
        return [v for v in task.value_ids if v != token]
    return [f for f in task.filler_ids if f != token]


@pytest.mark.parametrize("name", TASKS)
def test_layout_and_ground_truth_shape(name):
    task = TASKS[name]
    batch = sample(task)
    assert isinstance(batch, SyntheticBatch)
    assert batch.input_ids.shape == batch.relevant.shape == batch.cues.shape == (64, task.max_length + 2)
    assert torch.equal(batch.attention_mask, (batch.input_ids != PAD).long())
    lengths = batch.attention_mask.sum(1)
    assert (batch.input_ids[:, 0] == CLS).all()
    assert (batch.input_ids[torch.arange(64), lengths - 1] == SEP).all()
    assert ((lengths - 2 >= task.min_length) & (lengths - 2 <= task.max_length)).all()
    inner = batch.input_ids >= 3  # words only: never [CLS], [SEP] or padding
    assert not (batch.relevant & ~inner).any() and not (batch.cues & ~inner).any()
    assert not (batch.relevant & batch.cues).any()
    expected = {MarkedToken: (1, 0), OffsetToken: (1, 1), TokenPair: (2, 0)}[type(task)]
    assert (batch.relevant.sum(1) == expected[0]).all() and (batch.cues.sum(1) == expected[1]).all()
    assert set(batch.labels.tolist()) <= set(range(task.num_classes))


def test_rules_by_hand():
    """The rules on hand-written rows (words between [CLS] and [SEP]), independent of the samplers."""

    def row(*words: int) -> torch.Tensor:
        return torch.tensor([[CLS, *words, SEP, PAD]])

    marked = MarkedToken()  # markers 3 (class 0), 4 (class 1); fillers 5..
    assert marked.label(row(9, 4, 7)).item() == 1 and marked.label(row(3, 9)).item() == 0
    assert marked.label(row(9, 9)).item() == IGNORE and marked.label(row(3, 4)).item() == IGNORE
    offset = OffsetToken(offset=2)  # marker 3; value v has class (v - 4) % 2
    assert offset.label(row(3, 9, 5, 8)).item() == 1  # two after the marker: 5 -> class 1
    assert offset.label(row(8, 3, 9, 6)).item() == 0  # 6 -> class 0
    assert offset.label(row(9, 8, 3, 6)).item() == IGNORE  # would read past the last word
    assert OffsetToken(offset=-1).label(row(9, 5, 3, 8)).item() == 1  # the word before the marker
    xor = TokenPair(rule="xor")  # keys 3, 5 carry bit 0; keys 4, 6 bit 1
    assert xor.label(row(9, 3, 9, 5)).item() == 0 and xor.label(row(4, 9, 5)).item() == 1
    assert xor.label(row(4, 6, 9)).item() == 0 and xor.label(row(4, 9, 9)).item() == IGNORE
    match = TokenPair(rule="match")
    assert match.label(row(6, 9, 6)).item() == 1 and match.label(row(6, 9, 5)).item() == 0


@pytest.mark.parametrize("name", TASKS)
def test_samples_follow_the_rule(name):
    task = TASKS[name]
    batch = sample(task, 256)
    assert torch.equal(task.label(batch.input_ids), batch.labels)
    for i in range(256):  # and, spelled out, the relevant tokens are the ones the rule reads
        words, relevant = words_of(batch, i), batch.relevant[i, 1 : 1 + len(words_of(batch, i))]
        if isinstance(task, MarkedToken):
            assert int(words[relevant]) - 3 == batch.labels[i]
        elif isinstance(task, OffsetToken):
            (marker,) = (words == task.MARKER).nonzero().flatten().tolist()
            assert relevant.nonzero().item() == marker + task.offset
            assert batch.cues[i, 1 + marker]
            assert task.value_class(int(words[marker + task.offset])) == batch.labels[i]
        else:
            a, b = words[relevant].tolist()
            assert batch.labels[i] == (task.bit(a) ^ task.bit(b) if task.rule == "xor" else int(a == b))


@pytest.mark.parametrize("name", TASKS)
def test_relevant_tokens_decide_and_the_others_do_not(name):
    task = TASKS[name]
    batch = sample(task, 48, seed=1)
    generator = torch.Generator().manual_seed(2)
    for i in range(48):
        label = int(batch.labels[i])
        positions = batch.relevant[i].nonzero().flatten().tolist()
        # Changing a relevant token (to one of its role that the rule reads differently) changes the label.
        for column in positions:
            ids = batch.input_ids[i : i + 1].clone()
            ids[0, column] = flipping_replacement(task, ids[0], column, label)
            assert task.label(ids).item() not in (label, IGNORE)
        # Changing any other word to another token of its role leaves the label alone.
        for column in range(1, int(batch.attention_mask[i].sum()) - 1):
            if batch.relevant[i, column] or batch.cues[i, column]:
                continue
            ids = batch.input_ids[i : i + 1].clone()
            options = same_role_ids(task, int(ids[0, column]))
            ids[0, column] = options[int(torch.randint(len(options), (1,), generator=generator))]
            assert task.label(ids).item() == label


def flipping_replacement(task, ids: torch.Tensor, column: int, label: int) -> int:
    current = int(ids[column])
    if isinstance(task, MarkedToken):
        return next(m for m in task.marker_ids if m - 3 != label)
    if isinstance(task, OffsetToken):
        return next(v for v in task.value_ids if task.value_class(v) != label)
    other = next(int(ids[c]) for c in range(len(ids)) if c != column and int(ids[c]) in task.key_ids)
    if task.rule == "xor":
        return next(k for k in task.key_ids if task.bit(k) != task.bit(current))
    return next(k for k in task.key_ids if (k == other) != (current == other))


def test_the_offset_marker_says_where_to_look():
    """Moving the marker moves which token is read: the cue matters by its position, not its identity."""
    task = OffsetToken(offset=2)
    batch = sample(task, 64, seed=3)
    changed = 0
    for i in range(64):
        words = words_of(batch, i).clone()
        marker = int((words == task.MARKER).nonzero())
        for new in range(len(words) - task.offset):
            if new == marker or new + task.offset == marker:
                continue
            moved = words.clone()
            moved[marker], moved[new] = moved[new], task.MARKER
            expected = task.value_class(int(moved[new + task.offset]))
            ids = torch.tensor([[CLS, *moved.tolist(), SEP]])
            assert task.label(ids).item() == expected
            changed += expected != int(batch.labels[i])
    assert changed > 0


def test_labels_are_balanced_and_single_keys_say_nothing():
    for task in TASKS.values():
        batch = sample(task, 3000, seed=4)
        shares = torch.bincount(batch.labels, minlength=task.num_classes).float() / 3000
        assert (shares - 1 / task.num_classes).abs().max() < 0.04, (task, shares)
    for rule in ("xor", "match"):
        task = TokenPair(rule=rule)
        batch = sample(task, 4000, seed=5)
        keys = batch.input_ids.masked_fill(~batch.relevant, PAD).sort(dim=1, descending=True).values[:, :2]
        first = keys[torch.arange(4000), torch.randint(2, (4000,), generator=torch.Generator().manual_seed(0))]
        for label in (0, 1):  # each key's distribution is the same whatever the label: uniform over the keys
            shares = torch.bincount(first[batch.labels == label] - 3, minlength=task.num_keys).float()
            shares /= shares.sum()
            assert (shares - 1 / task.num_keys).abs().max() < 0.04, (rule, label, shares)


def test_sampling_is_deterministic_under_the_generator():
    for task in TASKS.values():
        a, b, c = sample(task, 16, 7), sample(task, 16, 7), sample(task, 16, 8)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.relevant, b.relevant)
        assert not torch.equal(a.input_ids, c.input_ids)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="num_classes"):
        MarkedToken(num_classes=1)
    with pytest.raises(ValueError, match="filler"):
        MarkedToken(vocab_size=6)
    with pytest.raises(ValueError, match="offset"):
        OffsetToken(offset=0)
    with pytest.raises(ValueError, match="min_length"):
        OffsetToken(offset=5, min_length=5)
    with pytest.raises(ValueError, match="value tokens"):
        OffsetToken(vocab_size=6)
    with pytest.raises(ValueError, match="even"):
        TokenPair(rule="xor", num_keys=3)
    with pytest.raises(ValueError, match="rule"):
        TokenPair(rule="and")


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and far faster when the two shared cores are busy elsewhere."""
    with one_torch_thread():
        yield


def config(task) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=task.vocab_size, embed_dim=32, num_heads=4, num_layers=2, ffn_dim=64, num_classes=task.num_classes
    )


def test_the_training_loop_takes_every_task(one_thread):
    for task in TASKS.values():
        model = build_model(config(task), task, seed=0)
        report = train(model, task, steps=2, batch_size=8, seed=0)
        assert report.steps == 2 and len(report.losses) == 2


def test_a_small_encoder_learns_the_offset_task(one_thread):
    """Reading by relative position is learnable by our small models: the ground truth is worth probing."""
    task = OffsetToken(offset=2)
    model = build_model(config(task), task, seed=0)
    report = train(model, task, steps=300, seed=0)
    assert report.accuracy >= 0.95, report.accuracy  # the task allows 1.0; chance is 0.5
