"""The same properties on every device this machine has (CUDA cases are skipped without a GPU).

Nothing in the attention code names a device: tensors follow the module. On CUDA, SDPA picks fused
kernels (flash / memory-efficient), so the fused-vs-explicit agreement is the check that matters there.
"""

import pytest
import torch

from attn_probe.attention import POSITION_VARIANTS, DecoderLM, MultiHeadAttention, TransformerConfig, make_position

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


pytestmark = pytest.mark.usefixtures("full_float32")  # see tests/conftest.py


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("position", POSITION_VARIANTS)
def test_paths_agree_and_masks_hold_on_device(device, position):
    module = make_position(position, embed_dim=64, num_heads=4, head_dim=16, causal=True)
    attention = MultiHeadAttention(64, 4, position=module).eval().to(device)
    x = torch.randn(3, 33, 64, device=device)
    mask = torch.ones(3, 33, dtype=torch.long, device=device)
    mask[1, 20:] = 0
    for causal in (False, True):
        fused, _ = attention(x, mask=mask, causal=causal)
        explicit, weights = attention(x, mask=mask, causal=causal, need_weights=True)
        assert fused.device.type == device and weights.device.type == device
        torch.testing.assert_close(fused, explicit, rtol=0, atol=2e-6)
        assert torch.all(weights[1, :, :, 20:] == 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_a_model_trains_a_step_and_gives_device_independent_logits(device):
    config = TransformerConfig(
        vocab_size=40, embed_dim=32, num_heads=4, num_kv_heads=2, position="rotary", prenorm=True
    )
    torch.manual_seed(0)
    reference = DecoderLM(config).eval()
    model = DecoderLM(config).eval().to(device)
    model.load_state_dict(reference.state_dict())
    ids = torch.randint(0, 40, (2, 12))
    torch.testing.assert_close(model(ids.to(device)).logits.cpu(), reference(ids).logits, rtol=0, atol=1e-5)
    model.train()
    loss = model(ids.to(device), output_attentions=True).logits.logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
