"""The small models learn the toy tasks as far as the tasks allow, deterministically."""

import torch

from attn_probe.attention import TransformerConfig
from attn_probe.attention.toy_tasks import CLS, PAD, SEP, CopySequence, KeywordSentiment
from attn_probe.attention.training import build_model, train


def encoder_config(task: KeywordSentiment, position: str = "learned") -> TransformerConfig:
    return TransformerConfig(
        vocab_size=task.vocab_size, embed_dim=48, num_heads=4, num_layers=2, ffn_dim=96, position=position
    )


def test_keyword_task_labels_follow_the_markers():
    task = KeywordSentiment()
    batch = task.sample(64, torch.Generator().manual_seed(0))
    for row in range(64):
        ids = batch.input_ids[row]
        positives = sum(int(i) in task.positive_ids for i in ids)
        negatives = sum(int(i) in task.negative_ids for i in ids)
        assert positives != negatives and batch.labels[row] == int(positives > negatives)
        assert batch.relevant[row].sum() == positives + negatives
        assert ids[0] == CLS and ids[int(batch.attention_mask[row].sum()) - 1] == SEP
    assert torch.equal(batch.attention_mask, (batch.input_ids != PAD).long())


def test_copy_task_scores_only_the_copied_half():
    task = CopySequence()
    batch = task.sample(16, torch.Generator().manual_seed(0))
    for row in range(16):
        scored = (batch.labels[row] != -100).nonzero().flatten()
        length = len(scored)
        source = batch.input_ids[row, 1 : length + 1]
        assert torch.equal(batch.labels[row, scored], source)
        assert batch.input_ids[row, length + 1] == SEP
        assert torch.equal(batch.input_ids[row, scored + 1], source)  # label t is the token at t + 1


def test_encoder_learns_the_keyword_task():
    task = KeywordSentiment()
    model = build_model(encoder_config(task), task, seed=0)
    report = train(model, task, steps=200, seed=0)
    assert report.accuracy >= 0.97, report.accuracy  # the task allows 1.0
    assert report.evaluated == 512
    assert sum(report.losses[-20:]) / 20 < 0.2 < report.losses[0]


def test_decoder_learns_to_copy():
    task = CopySequence()
    config = TransformerConfig(
        vocab_size=task.vocab_size, embed_dim=64, num_heads=4, num_layers=2, ffn_dim=128,
        position="rotary", prenorm=True, norm="rmsnorm", embedding_norm=False, norm_eps=1e-6,
    )  # fmt: skip
    model = build_model(config, task, seed=0)
    report = train(model, task, steps=400, seed=0)
    assert report.accuracy >= 0.9, report.accuracy  # chance is 1/21


def test_training_is_deterministic_with_a_seed():
    task = KeywordSentiment()
    runs = []
    for _ in range(2):
        model = build_model(encoder_config(task, "alibi"), task, seed=7)
        runs.append((train(model, task, steps=15, seed=7).losses, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][name], runs[1][1][name]) for name in runs[0][1])
    other = build_model(encoder_config(task, "alibi"), task, seed=8)
    assert train(other, task, steps=15, seed=8).losses != runs[0][0]
