"""Hook points read and replace what they say, and never outlive their block."""

import pytest
import torch

from attn_probe.attention import (
    EncoderClassifier,
    MultiHeadAttention,
    TransformerConfig,
    hook_points,
    hooks,
    permute_weights,
    record,
    scale_weights,
    set_weights,
    uniform_weights,
)

ATTENTION_POINTS = {
    "hook_q": (2, 4, 6, 8),
    "hook_k": (2, 2, 6, 8),  # grouped-query: 2 key/value heads
    "hook_v": (2, 2, 6, 8),
    "hook_position": (1, 4, 6, 6),  # the T5 bias is shared by the batch
    "hook_logits": (2, 4, 6, 6),
    "hook_weights": (2, 4, 6, 6),
    "hook_head_output": (2, 4, 6, 8),
    "hook_output": (2, 6, 32),
}


def small_encoder(position: str = "t5") -> EncoderClassifier:
    config = TransformerConfig(
        vocab_size=20, embed_dim=32, num_heads=4, num_kv_heads=2, num_layers=2, position=position
    )
    return EncoderClassifier(config).eval()


def test_every_attention_hook_point_sees_the_documented_shape():
    model = small_encoder()
    names = [f"encoder.layers.1.attention.{point}" for point in ATTENTION_POINTS]
    names += [f"encoder.layers.0.{point}" for point in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")]
    with record(model, names) as seen:
        model(torch.randint(3, 20, (2, 6)))
    for point, shape in ATTENTION_POINTS.items():
        assert seen[f"encoder.layers.1.attention.{point}"].shape == shape, point
    assert seen["encoder.layers.0.hook_attn_out"].shape == (2, 6, 32)


def test_recorded_weights_equal_returned_weights():
    model = small_encoder()
    ids = torch.randint(3, 20, (2, 6))
    with record(model, ["encoder.layers.0.attention.hook_weights"]) as seen:
        output = model(ids, output_attentions=True)
    torch.testing.assert_close(seen["encoder.layers.0.attention.hook_weights"], output.attentions[0])


def test_a_read_only_hook_changes_nothing():
    model = small_encoder()
    ids = torch.randint(3, 20, (2, 6))
    plain = model(ids).logits
    with record(model, ["encoder.layers.0.attention.hook_weights"]):  # forces the explicit path
        observed = model(ids).logits
    torch.testing.assert_close(observed, plain, rtol=0, atol=1e-6)


def test_replacing_a_value_propagates():
    model = small_encoder()
    ids = torch.randint(3, 20, (2, 6))
    plain = model(ids).logits
    with hooks(model, {"encoder.layers.1.hook_attn_out": lambda t, _: torch.zeros_like(t)}):
        ablated = model(ids).logits
    assert not torch.allclose(plain, ablated)
    torch.testing.assert_close(model(ids).logits, plain)  # and it is gone after the block


def test_hooks_are_removed_even_when_the_forward_pass_raises():
    model = small_encoder()
    points = hook_points(model)

    def explode(tensor, point):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), hooks(model, {"encoder.layers.0.attention.hook_q": explode}):
        model(torch.randint(3, 20, (1, 4)))
    with (
        pytest.raises(ValueError, match="outside"),
        record(model, ["encoder.layers.0.attention.hook_weights", "encoder.layers.1.hook_resid_post"]),
    ):
        model(torch.tensor([[99]]))  # an id beyond the vocabulary raises inside the forward pass
    assert not any(point.has_hooks for point in points.values())


def test_a_replacement_of_the_wrong_shape_is_explained():
    model = small_encoder()
    with (
        pytest.raises(ValueError, match="same shape"),
        hooks(model, {"encoder.layers.0.attention.hook_weights": lambda t, _: t[..., :2]}),
    ):
        model(torch.randint(3, 20, (1, 4)))
    assert not any(point.has_hooks for point in hook_points(model).values())


def test_an_unknown_hook_point_lists_real_names():
    with (
        pytest.raises(KeyError, match=r"encoder\.layers\.0\.attention\.hook_weights"),
        hooks(small_encoder(), {"encoder.layers.9.attention.hook_weights": lambda t, _: None}),
    ):
        pass


def weights_under(intervention, mask=None):
    module = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    with record(module, ["hook_weights"]) as original:
        module(x, mask=mask)
    with hooks(module, {"hook_weights": intervention}), record(module, ["hook_weights"]) as seen:
        _, returned = module(x, mask=mask, need_weights=True)
    torch.testing.assert_close(returned, seen["hook_weights"])  # what is returned is what was used
    return original["hook_weights"], returned


def test_uniform_weights_spread_evenly_over_allowed_keys_of_chosen_heads():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    original, new = weights_under(uniform_weights(head=[1, 3]), mask)
    torch.testing.assert_close(new[0, 1], torch.full((6, 6), 1 / 6))
    torch.testing.assert_close(new[1, 3, :, :3], torch.full((6, 3), 1 / 3))
    assert torch.all(new[1, :, :, 3:] == 0)
    torch.testing.assert_close(new[:, [0, 2]], original[:, [0, 2]])  # other heads untouched


def test_permuted_weights_keep_each_row_and_its_support():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    original, new = weights_under(permute_weights(seed=3), mask)
    assert torch.all(new[1, :, :, 4:] == 0)
    torch.testing.assert_close(new.sort(-1).values, original.sort(-1).values)  # same values per row
    assert not torch.allclose(new, original)


def test_permutation_is_fixed_by_its_seed():
    weights = torch.softmax(torch.randn(2, 3, 5, 5), dim=-1)
    same = [permute_weights(seed=1)(weights, None) for _ in range(2)]
    assert torch.equal(same[0], same[1])
    assert not torch.equal(same[0], permute_weights(seed=2)(weights, None))


def test_set_weights_puts_a_given_matrix_in_place():
    target = torch.eye(6)
    _, new = weights_under(set_weights(target, head=0))
    torch.testing.assert_close(new[:, 0], target.expand(2, 6, 6))


def test_intervention_on_a_head_that_does_not_exist_is_explained():
    with pytest.raises(IndexError, match=r"heads 0\.\.3"):
        weights_under(uniform_weights(head=7))


def test_scaling_a_head_to_zero_removes_what_it_reads():
    module = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 5, 16)
    with record(module, ["hook_head_output"]) as plain:
        module(x)
    with hooks(module, {"hook_weights": scale_weights(0.0, head=1)}), record(module, ["hook_head_output"]) as seen:
        module(x)
    assert torch.all(seen["hook_head_output"][:, 1] == 0)
    torch.testing.assert_close(seen["hook_head_output"][:, 0], plain["hook_head_output"][:, 0])
    _, doubled = weights_under(scale_weights(2.0, head=[0, 3]))
    torch.testing.assert_close(doubled[:, [0, 3]].sum(-1), torch.full((2, 2, 6), 2.0))
