"""The datasets the command line knows by name: ``rotten_tomatoes[:split]`` and ``agreement[:n]``.

    dataset = builtin_dataset("rotten_tomatoes:test")   # held-out snippets, shuffled once (seed 0), labelled
    dataset.frame, dataset.text_column, dataset.label_column
    dataset.target(tokenizer)                           # None: the model's default target

Anything else is a file path for :func:`attn_probe.data.load_texts`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from attn_probe.capture import Target

BUILTIN = {
    "rotten_tomatoes": "the 10,605 human-rated Rotten Tomatoes snippets (label: mean rating > 0); "
    "rotten_tomatoes:test (default, the held-out split), :train or :all",
    "agreement": "subject-verb agreement prompts ('The keys near the cabinet'), target logit(' are') - logit(' is'), "
    "for causal language models; agreement:N for N prompts (default 200)",
}


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    frame: pd.DataFrame
    text_column: str
    label_column: str | None
    target: Callable[[Any], Target | None]  # tokenizer -> the target the dataset is made for (None: the default)
    description: str


def is_builtin(spec: str) -> bool:
    return spec.split(":", 1)[0] in BUILTIN


def builtin_dataset(spec: str) -> BuiltinDataset:
    """The dataset named ``spec`` (``name`` or ``name:option``, see :data:`BUILTIN`)."""
    name, _, option = spec.partition(":")
    if name == "rotten_tomatoes":
        return _rotten_tomatoes(option or "test")
    if name == "agreement":
        return _agreement(option)
    raise ValueError(f"no built-in dataset {name!r}; the built-in ones are {', '.join(BUILTIN)} (or give a file path)")


def _rotten_tomatoes(split: str) -> BuiltinDataset:
    from attn_probe.data.rotten_tomatoes import load_rotten_tomatoes

    if split not in ("test", "train", "all"):
        raise ValueError(f"rotten_tomatoes:{split}: the split must be test, train or all")
    table = load_rotten_tomatoes()
    if split != "all":
        table = table[table["split"] == split]
    # Snippets with a mean rating of exactly 0 have no label; the order is shuffled once, so that --limit N
    # takes a random sample rather than the archive's first N.
    table = table[table["label"].notna()].sample(frac=1.0, random_state=0).reset_index(drop=True)
    frame = pd.DataFrame(
        {"text": table["text"], "label": table["label"].astype(int), "snippet_id": table["snippet_id"]}
    )
    return BuiltinDataset(
        name=f"rotten_tomatoes:{split}",
        frame=frame,
        text_column="text",
        label_column="label",
        target=lambda tokenizer: None,
        description=f"{len(frame)} Rotten Tomatoes snippets ({split} split), shuffled with seed 0",
    )


def _agreement(option: str) -> BuiltinDataset:
    from attn_probe.data.agreement import agreement_prompts, agreement_target

    try:
        n = int(option) if option else 200
    except ValueError:
        raise ValueError(f"agreement:{option}: the option is the number of prompts, e.g. agreement:100") from None
    if n < 1:
        raise ValueError(f"agreement:{n}: ask for at least one prompt")
    prompts = agreement_prompts(n=n)
    return BuiltinDataset(
        name=f"agreement:{n}",
        frame=prompts,
        text_column="text",
        label_column=None,
        target=agreement_target,
        description=f"{n} subject-verb agreement prompts, target logit(' are') - logit(' is')",
    )
