"""Pass planning: every row once, similar lengths together, within the budget and the padding policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_probe.methods import ExplainContext
from attn_probe.methods.passes import (
    PaddingPolicy,
    can_trim,
    length_passes,
    padding_policy,
    real_lengths,
    trimmed_inputs,
)
from tests.methods.models import MODELS


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    lengths=st.lists(st.integers(0, 60), min_size=1, max_size=40),
    budget=st.integers(1, 12),
    allowance=st.sampled_from([0.0, 0.1, 1.0, float("inf")]),
    free_cells=st.sampled_from([0, 50, 10_000]),
    repeats=st.integers(1, 5),
)
def test_every_row_once_ascending_within_budget_and_policy(lengths, budget, allowance, free_cells, repeats):
    policy = PaddingPolicy(allowance, free_cells)
    passes = length_passes(lengths, lambda width: budget, policy, repeats=repeats)
    rows = np.concatenate(passes)
    assert sorted(rows.tolist()) == list(range(len(lengths)))  # every row exactly once
    ordered = [lengths[r] for r in rows]
    assert ordered == sorted(ordered)  # shortest first: passes hold neighbouring lengths
    for part in passes:
        assert len(part) >= 1 and (len(part) <= budget or len(part) == 1)
        width = max(max(lengths[r] for r in part), 1)
        real = sum(lengths[r] for r in part)
        cells = len(part) * width
        if len(part) > 1:
            assert cells <= (1 + allowance) * max(real, 1) or cells * repeats <= free_cells


def test_no_padding_allowed_means_one_pass_per_length():
    passes = length_passes([5, 3, 5, 3, 9], lambda width: 100, PaddingPolicy(0.0))
    assert [sorted(p.tolist()) for p in passes] == [[1, 3], [0, 2], [4]]


def test_the_budget_is_asked_per_width_once():
    asked = []
    length_passes([4] * 10 + [8] * 10, lambda width: asked.append(width) or 3, PaddingPolicy(float("inf")))
    assert sorted(asked) == [4, 8]


def test_policies_and_bad_allowance():
    assert 0 < padding_policy(torch.device("cpu")).free_cells < padding_policy(torch.device("cuda")).free_cells
    assert padding_policy(torch.device("cpu")).allowance < padding_policy(torch.device("cuda")).allowance
    with pytest.raises(ValueError, match="allowance must be >= 0"):
        length_passes([1, 2], lambda width: 2, PaddingPolicy(-1.0))


def test_trimming_right_padding_only():
    model, inputs = MODELS["hf-bert"]()
    ctx = ExplainContext(model, inputs)
    assert can_trim(ctx)
    lengths = real_lengths(ctx)
    rows = torch.tensor([1])
    cut = trimmed_inputs(ctx, rows, int(lengths[1]))
    assert cut["input_ids"].shape == (1, int(lengths[1]))
    assert torch.equal(cut["input_ids"][0], inputs["input_ids"][1, : int(lengths[1])])
    left = {k: v.flip(1) if v.dim() == 2 else v for k, v in inputs.items()}  # the same rows padded on the left
    assert not can_trim(ExplainContext(model, left))
