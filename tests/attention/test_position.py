"""Each position variant against its closed form."""

import math

import pytest
import torch

from attn_probe.attention import MultiHeadAttention, make_position
from attn_probe.attention.position import (
    ALiBi,
    LearnedAbsolute,
    RelativeShaw,
    Rotary,
    Sinusoidal,
    T5RelativeBias,
    alibi_slopes,
    t5_bucket,
)


def test_alibi_slopes_for_8_heads_are_powers_of_one_half():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))


def test_alibi_slopes_for_a_head_count_that_is_not_a_power_of_two():
    # Press et al.: the 8 slopes of 8 heads, then every other slope of 16 heads (2^-0.5, 2^-1.5, ...).
    expected = [2.0**-i for i in range(1, 9)] + [2.0 ** -(i + 0.5) for i in range(0, 4)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected))


def test_alibi_bias_is_minus_slope_times_distance():
    alibi = ALiBi(4)
    term = alibi.logit_term(torch.zeros(1, 4, 5, 2), torch.arange(5), torch.arange(5), scale=1.0)
    slopes = alibi_slopes(4)
    for head in range(4):
        for i in range(5):
            for j in range(5):
                assert term[0, head, i, j].item() == pytest.approx(-slopes[head].item() * abs(i - j))


def test_rotary_keeps_norms_and_depends_only_on_the_offset():
    rotary = Rotary(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> float:
        rq = rotary.apply(q, torch.tensor([m]))
        rk = rotary.apply(k, torch.tensor([n]))
        return (rq * rk).sum().item()

    for position in (0, 3, 100):
        torch.testing.assert_close(rotary.apply(q, torch.tensor([position])).norm(), q.norm())
    assert score(2, 7) == pytest.approx(score(12, 17), abs=1e-4)
    assert score(0, 5) == pytest.approx(score(40, 45), abs=1e-4)
    assert score(2, 7) != pytest.approx(score(2, 8), abs=1e-3)  # a different offset does change it


def test_rotary_matches_the_rotation_of_each_plane():
    """Plane (i, i + d/2) turns by p * base^(-2i/d): the closed form, written out by hand."""
    rotary = Rotary(8, base=100.0)
    x = torch.randn(8)
    p = 3
    rotated = rotary.apply(x.view(1, 1, 1, 8), torch.tensor([p])).view(8)
    for i in range(4):
        angle = p * 100.0 ** (-2 * i / 8)
        a, b = x[i].item(), x[i + 4].item()
        assert rotated[i].item() == pytest.approx(a * math.cos(angle) - b * math.sin(angle), abs=1e-5)
        assert rotated[i + 4].item() == pytest.approx(b * math.cos(angle) + a * math.sin(angle), abs=1e-5)


def test_t5_buckets_at_known_boundaries():
    def bucket(distance: int, bidirectional: bool = True) -> int:
        return int(t5_bucket(torch.tensor(distance), bidirectional=bidirectional, num_buckets=32, max_distance=128))

    # bidirectional: 16 buckets a side, exact below 8, log-spaced up to 128, keys to the right get +16
    assert [bucket(d) for d in (0, -1, -7, -8)] == [0, 1, 7, 8]
    assert [bucket(d) for d in (1, 7, 8)] == [17, 23, 24]
    assert bucket(-11) == 8 and bucket(-12) == 9  # 8 + floor(log(n/8) / log(16) * 8)
    assert bucket(-16) == 10 and bucket(-127) == 15 and bucket(-128) == 15 and bucket(-5000) == 15
    # unidirectional: 32 buckets for the past, exact below 16; the future all in bucket 0
    assert [bucket(d, False) for d in (0, -1, -15, -16, 3, 100)] == [0, 1, 15, 16, 0, 0]
    assert bucket(-128, False) == 31 and bucket(-10_000, False) == 31


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_buckets_match_hugging_face(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    distance = torch.arange(-300, 301)
    ours = t5_bucket(distance, bidirectional=bidirectional, num_buckets=32, max_distance=128)
    theirs = T5Attention._relative_position_bucket(
        distance, bidirectional=bidirectional, num_buckets=32, max_distance=128
    )
    assert torch.equal(ours, theirs)


def test_t5_bias_reads_one_learned_scalar_per_bucket_and_head():
    t5 = T5RelativeBias(num_heads=3)
    term = t5.logit_term(torch.zeros(1, 3, 4, 2), torch.arange(4), torch.arange(4), scale=1.0)  # [1, 3, 4, 4]
    buckets = t5.buckets(torch.arange(4), torch.arange(4))
    for i in range(4):
        for j in range(4):
            torch.testing.assert_close(term[0, :, i, j], t5.bias.weight[buckets[i, j]])


def test_shaw_clips_distances_and_matches_the_explicit_sum():
    shaw = RelativeShaw(head_dim=4, max_distance=2)
    index = shaw.distance_index(torch.arange(6), torch.arange(6))
    assert index[0].tolist() == [2, 3, 4, 4, 4, 4]  # clip(j - i, -2, 2) + 2 along the first row
    assert index[5].tolist() == [0, 0, 0, 0, 1, 2]

    q = torch.randn(2, 3, 6, 4)
    weights = torch.softmax(torch.randn(2, 3, 6, 6), dim=-1)
    term = shaw.logit_term(q, torch.arange(6), torch.arange(6), scale=0.5)
    values = shaw.value_term(weights, torch.arange(6), torch.arange(6))
    a_key = shaw.key_table.weight[index]  # [q, k, d]: the a^K_ij of the paper
    a_value = shaw.value_table.weight[index]
    torch.testing.assert_close(term, torch.einsum("bhqd,qkd->bhqk", q, a_key) * 0.5)
    torch.testing.assert_close(values, torch.einsum("bhqk,qkd->bhqd", weights, a_value))


def test_sinusoidal_closed_form():
    encodings = Sinusoidal(6).encodings(torch.arange(4))  # [4, 6]
    for p in range(4):
        for i in range(3):
            angle = p / 10000 ** (2 * i / 6)
            assert encodings[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert encodings[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_learned_positions_refuse_positions_beyond_the_table():
    with pytest.raises(ValueError, match="max_positions"):
        LearnedAbsolute(8, max_positions=4).embed(torch.zeros(1, 5, 8), torch.arange(5))


def test_absolute_variants_make_standalone_attention_position_aware():
    """Without positions attention is permutation-equivariant; an absolute variant breaks that."""
    x = torch.randn(1, 5, 16)
    order = torch.tensor([4, 2, 0, 1, 3])
    plain = MultiHeadAttention(16, 2).eval()
    out, _ = plain(x)
    torch.testing.assert_close(plain(x[:, order])[0], out[:, order])
    positioned = MultiHeadAttention(16, 2, position=Sinusoidal(16)).eval()
    out, _ = positioned(x)
    assert not torch.allclose(positioned(x[:, order])[0], out[:, order], atol=1e-4)


def test_unknown_variant_is_named_in_the_error():
    with pytest.raises(ValueError, match="choose one of"):
        make_position("xpos", embed_dim=8, num_heads=2, head_dim=4)
    with pytest.raises(ValueError, match="even head_dim"):
        Rotary(5)
