"""Capture on every device this machine has (the CUDA cases are skipped without a GPU)."""

import pytest
import torch

from attn_probe.attention import uniform_weights
from attn_probe.capture import capture
from tests.capture.families import batch, build, twin

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


pytestmark = pytest.mark.usefixtures("full_float32")  # see tests/conftest.py


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ["bert", "llama", "t5", "bloom"])
def test_capture_on_device_matches_eager_and_reports_drift(device, family):
    model = build(family, "sdpa").to(device)
    inputs = {key: value.to(device) for key, value in batch(family).items()}
    captured = capture(model, inputs)
    reference = twin(family, model, "eager")
    with torch.no_grad():
        outputs = reference(**inputs, output_attentions=True)
    attentions = outputs.encoder_attentions if family == "t5" else outputs.attentions
    torch.testing.assert_close(captured.weights, torch.stack(attentions, dim=1), rtol=0, atol=1e-5)
    assert captured.weights.device.type == device
    assert captured.drift is not None and captured.drift < 1e-3  # fused kernels on the GPU round differently
    edited = capture(model, inputs, edits={0: uniform_weights()})
    assert edited.weights.device.type == device
