"""On a CUDA device, every method, check and the probe give what they give on the CPU (skipped without a GPU).

CI has no GPU: these run where one is lent (``pytest tests/test_cuda.py``). Both sides run in full float32 (TF32
off, see ``tests/conftest.py``); CUDA kernels sum in other orders than CPU ones, so the tolerances are float32
noise amplified through a few layers, not exact equality.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from attn_probe.findings import assess
from attn_probe.methods import ExplainContext, explain, list_methods
from attn_probe.methods.passes import CUDA_FREE_CELLS, CUDA_PADDING_ALLOWANCE, PaddingPolicy, padding_policy
from tests.methods.models import MODELS

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.usefixtures("full_float32"),
]
STOCHASTIC = {"kernel_shap", "gradient_shap"}  # sampled: seeded, but CUDA and CPU generators differ
OPTIONS = {"integrated_gradients": {"n_steps": 64}}


def verdicts(findings: pd.DataFrame) -> pd.Series:
    """``holds`` as comparable strings: True / False / NA (pandas' missing values never compare equal)."""
    return findings["holds"].map(lambda holds: "NA" if pd.isna(holds) else str(bool(holds)))


def _on(inputs: dict, device: str) -> dict:
    return {key: value.to(device) for key, value in inputs.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_method_gives_the_cpu_scores(name):
    model, inputs = MODELS[name]()
    methods = [m for m in list_methods()["id"] if m not in STOCHASTIC]
    on_cpu = explain(model, inputs, methods, options=OPTIONS)
    on_gpu = explain(model.to("cuda"), _on(inputs, "cuda"), methods, options=OPTIONS)
    for method in methods:
        gpu = on_gpu[method].scores
        assert gpu.device.type == "cuda", method
        scale = on_cpu[method].scores.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(gpu.cpu() / scale, on_cpu[method].scores / scale, rtol=0, atol=2e-4, msg=method)


def test_a_gpu_pass_may_carry_more_padding():
    assert padding_policy(torch.device("cuda")) == PaddingPolicy(CUDA_PADDING_ALLOWANCE, CUDA_FREE_CELLS)
    model, inputs = MODELS["hf-bert"]()
    ctx = ExplainContext(model.to("cuda"), _on(inputs, "cuda"))
    from attn_probe.methods.gradient import integrated_gradients

    details = integrated_gradients(ctx, n_steps=8).details
    assert len(details["passes"]) == 1  # both examples in one call on the GPU (a small pass ignores padding)


@pytest.mark.parametrize("name", ["hf-bert", "our-encoder"])
def test_assess_gives_the_cpu_evidence_and_findings(name):
    """The numbers behind the findings match; a verdict may differ only where its value sits at its threshold.

    (Decision flips are left out: tiny random models predict with near-tied logits, where an argmax is noise.)"""
    model, inputs = MODELS[name]()
    checks = ("agreement", "erasure", "sinks", "position", "counterfactuals")
    methods = {"attention_methods": ("raw_attention", "attention_rollout"), "reference_methods": ("saliency",)}
    on_cpu = assess(model, inputs, checks=checks, **methods)
    on_gpu = assess(model.to("cuda"), _on(inputs, "cuda"), checks=checks, **methods)
    for table in ("eraser", "sinks", "position", "counterfactuals"):
        cpu, gpu = on_cpu.evidence[table], on_gpu.evidence[table]
        assert list(cpu.columns) == list(gpu.columns) and len(cpu) == len(gpu), table
        for column in cpu.select_dtypes("number").columns:
            torch.testing.assert_close(
                torch.tensor(gpu[column].to_numpy(float)), torch.tensor(cpu[column].to_numpy(float)),
                rtol=1e-3, atol=1e-4, equal_nan=True, msg=f"{table}.{column}",
            )  # fmt: skip
    keys = ["finding", "example_id", "subject", "layer", "head"]
    cpu = on_cpu.findings.sort_values(keys).reset_index(drop=True)
    gpu = on_gpu.findings.sort_values(keys).reset_index(drop=True)
    assert cpu[keys].equals(gpu[keys])
    # the findings drawn from the tables compared above (rank agreement is left out: a float tie between two
    # tokens' scores breaks one way on one device and the other way on the other, and tau moves by 2 / m(m-1))
    compared = cpu["finding"].isin(
        ["erasure_prefers_attributions", "attention_sink", "position_explains_head", "output_ignores_attention"]
    )
    clear = compared & ((cpu["value"] - cpu["threshold"]).abs() > 0.01)
    differ = clear & (verdicts(cpu) != verdicts(gpu))
    assert not differ.any(), cpu[differ].assign(gpu_holds=gpu["holds"], gpu_value=gpu["value"]).to_string()
