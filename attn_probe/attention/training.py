"""A compact, deterministic training loop for our small models on the toy tasks.

Same seed, same thread count -> the same weights: the model is initialised under ``seed`` and the
batches come from a generator seeded from it, so a probe result on a toy model can be reproduced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from attn_probe.attention.models import DecoderLM, EncoderClassifier, TransformerConfig
from attn_probe.attention.toy_tasks import IGNORE, ToyBatch, ToyTask


@dataclass
class TrainingReport:
    losses: list[float] = field(default_factory=list)  # one per step
    accuracy: float = 0.0  # on fresh held-out batches, scored positions only
    steps: int = 0
    seconds: float = 0.0
    evaluated: int = 0  # how many scored predictions the accuracy is over


def build_model(config: TransformerConfig, task: ToyTask, seed: int = 0) -> EncoderClassifier | DecoderLM:
    """A fresh model for ``task``, initialised deterministically from ``seed``."""
    if config.vocab_size < task.vocab_size:
        raise ValueError(f"config.vocab_size {config.vocab_size} is smaller than the task's {task.vocab_size}")
    torch.manual_seed(seed)
    return EncoderClassifier(config) if task.kind == "classification" else DecoderLM(config)


def task_loss(model: nn.Module, batch: ToyBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy on the scored positions; also returns predictions and labels ``[scored]``."""
    logits = model(batch.input_ids, batch.attention_mask).logits  # [b, classes] or [b, n, vocab]
    labels = batch.labels
    if logits.dim() == 3:
        logits, labels = logits.flatten(0, 1), labels.flatten()
        scored = labels != IGNORE
        logits, labels = logits[scored], labels[scored]
    return F.cross_entropy(logits, labels), logits.argmax(-1), labels


def evaluate(
    model: nn.Module, task: ToyTask, *, batches: int = 4, batch_size: int = 128, seed: int = 10_000
) -> tuple[float, int]:
    """Accuracy on fresh batches drawn from a generator the training never uses."""
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for _ in range(batches):
            _, predicted, labels = task_loss(model, task.sample(batch_size, generator))
            correct += int((predicted == labels).sum())
            total += labels.numel()
    model.train(was_training)
    return correct / max(total, 1), total


def train(
    model: nn.Module,
    task: ToyTask,
    *,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainingReport:
    """Train with AdamW and a linear warm-up/decay, then measure held-out accuracy.

    ``on_step(step, loss)`` is called after every step (step counts from 1): a progress bar of a GUI, say.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / (steps - warmup + 1)))
    )
    report = TrainingReport()
    started = time.perf_counter()
    model.train()
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"training on {type(task).__name__}", unit="step")
    for step in iterator:
        loss, _, _ = task_loss(model, task.sample(batch_size, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        report.losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, report.losses[-1])
    model.eval()
    report.steps = steps
    report.accuracy, report.evaluated = evaluate(model, task)
    report.seconds = time.perf_counter() - started
    return report
