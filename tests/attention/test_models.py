"""Small models: padding never leaks, decoders never peek, outputs are shaped as documented."""

import pytest
import torch

from attn_probe.attention import POSITION_VARIANTS, DecoderLM, EncoderClassifier, TransformerConfig


def config(position: str, **overrides) -> TransformerConfig:
    settings = dict(vocab_size=30, embed_dim=32, num_heads=4, num_layers=2, ffn_dim=64, position=position)
    settings.update(overrides)
    return TransformerConfig(**settings)


@pytest.mark.parametrize("position", POSITION_VARIANTS)
def test_encoder_gives_the_same_answer_padded_in_a_batch_as_alone(position):
    model = EncoderClassifier(config(position)).eval()
    short, long = torch.randint(3, 30, (1, 5)), torch.randint(3, 30, (1, 9))
    batch = torch.zeros(2, 9, dtype=torch.long)
    batch[0, :5], batch[1] = short[0], long[0]
    mask = (torch.arange(9) < torch.tensor([[5], [9]])).long()
    together = model(batch, mask, output_attentions=True)
    torch.testing.assert_close(together.logits[0], model(short).logits[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(together.logits[1], model(long).logits[0], rtol=0, atol=1e-5)
    assert all(torch.all(weights[0, :, :, 5:] == 0) for weights in together.attentions)


@pytest.mark.parametrize("position", POSITION_VARIANTS)
def test_decoder_logits_never_depend_on_later_tokens(position):
    model = DecoderLM(config(position, prenorm=True, norm="rmsnorm", mlp="swiglu", bias=False)).eval()
    ids = torch.randint(3, 30, (2, 8))
    changed = ids.clone()
    changed[:, 5:] = torch.randint(3, 30, (2, 3))
    before, after = model(ids).logits, model(changed).logits
    torch.testing.assert_close(before[:, :5], after[:, :5], rtol=0, atol=1e-6)


def test_outputs_have_the_documented_shapes():
    model = DecoderLM(config("rotary", num_kv_heads=2, prenorm=True)).eval()
    output = model(torch.randint(3, 30, (3, 7)), output_attentions=True, output_hidden_states=True)
    assert output.logits.shape == (3, 7, 30)
    assert len(output.hidden_states) == 3 and output.hidden_states[0].shape == (3, 7, 32)
    assert len(output.attentions) == 2 and output.attentions[1].shape == (3, 4, 7, 7)
    plain = model(torch.randint(3, 30, (3, 7)))
    assert plain.attentions is None and plain.hidden_states is None


def test_tied_embeddings_share_one_matrix():
    model = DecoderLM(config("none", tie_embeddings=True))
    assert model.lm_head.weight is model.decoder.embed.tokens.weight


def test_absolute_positions_live_in_the_embeddings_not_in_every_layer():
    model = EncoderClassifier(config("learned"))
    assert model.encoder.embed.position is not None
    assert all(layer.attention.position is None for layer in model.encoder.layers)
    relative = EncoderClassifier(config("alibi"))
    assert relative.encoder.embed.position is None
    assert all(layer.attention.position is not None for layer in relative.encoder.layers)


def test_bad_inputs_are_explained():
    model = EncoderClassifier(config("none"))
    with pytest.raises(ValueError, match=r"outside 0\.\.29"):
        model(torch.tensor([[1, 2, 30]]))
    with pytest.raises(ValueError, match=r"\[batch, n\]"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="unknown position"):
        config("absolute")
