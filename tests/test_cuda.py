"""On a CUDA device, every method, check and the probe give what they give on the CPU (skipped without a GPU).

CI has no GPU: these run where one is lent (``pytest tests/test_cuda.py``). Both sides run in full float32 (TF32
off, see ``tests/conftest.py``); CUDA kernels sum in other orders than CPU ones, so the tolerances are float32
noise amplified through a few layers, not exact equality.
"""

from __future__ import annotations

import pytest
import torch

from attn_probe.findings import assess
from attn_probe.methods import ExplainContext, explain, list_methods
from attn_probe.methods.passes import CUDA_PADDING_ALLOWANCE, padding_allowance
from tests.methods.models import MODELS

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.usefixtures("full_float32"),
]
STOCHASTIC = {"kernel_shap", "gradient_shap"}  # sampled: seeded, but CUDA and CPU generators differ
OPTIONS = {"integrated_gradients": {"n_steps": 64}}


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
    assert padding_allowance(torch.device("cuda")) == CUDA_PADDING_ALLOWANCE
    model, inputs = MODELS["hf-bert"]()
    ctx = ExplainContext(model.to("cuda"), _on(inputs, "cuda"))
    from attn_probe.methods.gradient import integrated_gradients

    details = integrated_gradients(ctx, n_steps=8).details
    assert len(details["passes"]) == 1  # both examples in one call on the GPU (lengths within 2x)


@pytest.mark.parametrize("name", ["hf-bert", "our-encoder"])
def test_assess_draws_the_same_findings(name):
    model, inputs = MODELS[name]()
    checks = ("agreement", "erasure", "flips", "sinks", "position", "counterfactuals")
    methods = {"attention_methods": ("raw_attention", "attention_rollout"), "reference_methods": ("saliency",)}
    on_cpu = assess(model, inputs, checks=checks, **methods)
    on_gpu = assess(model.to("cuda"), _on(inputs, "cuda"), checks=checks, **methods)
    keys = ["finding", "example_id", "subject", "layer", "head"]
    cpu = on_cpu.findings.sort_values(keys).reset_index(drop=True)
    gpu = on_gpu.findings.sort_values(keys).reset_index(drop=True)
    assert cpu[keys].equals(gpu[keys])
    assert (cpu["holds"].astype(str) == gpu["holds"].astype(str)).mean() >= 0.95  # a threshold may sit at noise
