"""Property tests (hypothesis): our attention's weights are distributions over the keys a query may see.

For any small shape (batch, length, heads, grouped key/value heads, head width), any mask (key padding,
per-query or per-head masks, examples with no real token at all), causal or not, every position variant:

- the weights are finite, non-negative, exactly 0 on masked / future keys;
- a query's row sums to 1 over its allowed keys, and is all 0 when it has none;
- nothing is NaN, and an example's outputs do not depend on the other examples of its batch (a fully
  padded neighbour included);
- the fused path (no weights asked for) computes the same output as the explicit one.

Hypothesis runs derandomized (the same examples on every run) and without its example database.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import example as regression  # an explicit case, always run first
from hypothesis import strategies as st

from attn_probe.attention import POSITION_VARIANTS, DecoderLM, EncoderClassifier, MultiHeadAttention, make_position
from attn_probe.attention.models import TransformerConfig
from tests.threads import one_torch_thread

PROPERTIES = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    # conftest's autouse seed fixture is function-scoped; every example seeds torch itself.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: threads only add overhead (and noise on a shared machine)."""
    with one_torch_thread():
        yield


# ----------------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------------
@st.composite
def head_layouts(draw) -> tuple[int, int]:
    """``(num_heads, num_kv_heads)``: plain multi-head, grouped-query and multi-query layouts."""
    num_kv_heads = draw(st.sampled_from([1, 2]))
    return num_kv_heads * draw(st.sampled_from([1, 2, 3])), num_kv_heads


@st.composite
def padding_masks(draw, batch: int, length: int, *, allow_empty: bool = True) -> torch.Tensor:
    """``[batch, length]`` bool: any pattern with at least one real token per example, and (sometimes) one
    example with no real token at all."""
    rows = []
    for _ in range(batch):
        row = draw(st.lists(st.booleans(), min_size=length, max_size=length))
        if not any(row):
            row[draw(st.integers(0, length - 1))] = True
        rows.append(row)
    mask = torch.tensor(rows, dtype=torch.bool)
    if allow_empty and draw(st.booleans()):
        mask[draw(st.integers(0, batch - 1))] = False  # a fully padded example
    return mask


@st.composite
def attention_masks(draw, batch: int, heads: int, queries: int, keys: int) -> torch.Tensor | None:
    """None, a key padding mask ``[batch, k]``, a mask per query ``[batch, q, k]`` or per head ``[b, h, q, k]``."""
    layout = draw(st.sampled_from(["none", "padding", "query", "head"]))
    if layout == "none":
        return None
    if layout == "padding":
        mask = draw(padding_masks(batch, keys))
    else:
        shape = (batch, queries, keys) if layout == "query" else (batch, heads, queries, keys)
        bits = draw(st.lists(st.booleans(), min_size=1, max_size=64))
        mask = torch.tensor([bits[i % len(bits)] for i in range(torch.Size(shape).numel())], dtype=torch.bool)
        mask = mask.view(shape)
    return mask.long() if draw(st.booleans()) else mask  # 0/1 integers are accepted as well as booleans


def allowed_keys(
    mask: torch.Tensor | None, causal: bool, batch: int, heads: int, queries: int, keys: int | None = None
) -> torch.Tensor:
    """``[batch, heads, q, k]`` bool, built independently of ``attn_probe.attention.masks``. Under causality
    with fewer queries than keys, the queries are the last positions (the keys hold the earlier context)."""
    keys = queries if keys is None else keys
    allowed = torch.ones(batch, heads, queries, keys, dtype=torch.bool)
    if mask is not None:
        mask = mask.bool()
        if mask.dim() == 2:
            allowed = allowed & mask[:, None, None, :]
        elif mask.dim() == 3:
            allowed = allowed & mask[:, None, :, :]
        else:
            allowed = allowed & mask
    if causal:
        query_positions = torch.arange(queries)[:, None] + (keys - queries)
        allowed = allowed & (torch.arange(keys)[None, :] <= query_positions)
    return allowed


def assert_distributions(weights: torch.Tensor, allowed: torch.Tensor) -> None:
    """Finite, >= 0, exactly 0 where not allowed; rows sum to 1 over allowed keys, rows without any are 0."""
    assert weights.shape == allowed.shape
    assert torch.isfinite(weights).all()
    assert torch.all(weights >= 0)
    assert torch.all(weights[~allowed] == 0.0)
    sums = weights.sum(-1)  # [b, h, q]
    has_keys = allowed.any(-1)
    torch.testing.assert_close(sums[has_keys], torch.ones_like(sums[has_keys]), rtol=0, atol=1e-5)
    assert torch.all(sums[~has_keys] == 0.0)


# ----------------------------------------------------------------------------------------------------
# MultiHeadAttention on its own
# ----------------------------------------------------------------------------------------------------
@st.composite
def attention_cases(draw) -> dict:
    num_heads, num_kv_heads = draw(head_layouts())
    batch, queries = draw(st.integers(1, 3)), draw(st.integers(1, 10))
    cross = draw(st.booleans())  # cross-attention: keys and values from another sequence, of another length
    keys = draw(st.integers(1, 10)) if cross else queries
    positions = None
    layout = "default" if cross else draw(st.sampled_from(["default", "shared", "per-example"]))
    if layout != "default":  # self-attention may be given its positions: [n] or [batch, n], in any order
        shape = (queries,) if layout == "shared" else (batch, queries)
        count = torch.Size(shape).numel()
        positions = torch.tensor(draw(st.lists(st.integers(0, 15), min_size=count, max_size=count))).view(shape)
    return {
        "position": draw(st.sampled_from(POSITION_VARIANTS)),
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "head_dim": draw(st.sampled_from([2, 4])),
        "embed_dim": draw(st.sampled_from([4, 8])),
        "batch": batch,
        "queries": queries,
        "keys": keys,
        "cross": cross,
        "positions": positions,
        "causal": draw(st.booleans()),
        "mask": draw(attention_masks(batch, num_heads, queries, keys)),
        # a low temperature and large inputs give near-one-hot weights and large logits
        "temperature": draw(st.sampled_from([1.0, 0.05])),
        "input_scale": draw(st.sampled_from([1.0, 30.0])),
        "seed": draw(st.integers(0, 2**16)),
    }


def build_attention(case: dict) -> MultiHeadAttention:
    torch.manual_seed(case["seed"])
    position = make_position(
        case["position"],
        embed_dim=case["embed_dim"],
        num_heads=case["num_heads"],
        head_dim=case["head_dim"],
        max_positions=16,
        causal=case["causal"],
    )
    return MultiHeadAttention(
        case["embed_dim"],
        case["num_heads"],
        position=position,
        num_kv_heads=case["num_kv_heads"],
        head_dim=case["head_dim"],
        temperature=case["temperature"],
    ).eval()


@settings(PROPERTIES, max_examples=300)
@given(case=attention_cases())
# Found by hypothesis: causal cross-attention with more queries than keys left query 0 without a key, and no
# mask was given, so its row was not detected and softmaxed to NaN.
@regression(
    case={
        "position": "none",
        "num_heads": 1,
        "num_kv_heads": 1,
        "head_dim": 2,
        "embed_dim": 4,
        "batch": 1,
        "queries": 2,
        "keys": 1,
        "cross": True,
        "positions": None,
        "causal": True,
        "mask": None,
        "temperature": 1.0,
        "input_scale": 1.0,
        "seed": 0,
    }
)
def test_attention_weights_are_distributions_over_the_allowed_keys(case):
    module = build_attention(case)
    batch, queries, keys, heads = case["batch"], case["queries"], case["keys"], case["num_heads"]
    generator = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(batch, queries, case["embed_dim"], generator=generator) * case["input_scale"]
    memory = torch.randn(batch, keys, case["embed_dim"], generator=generator) * case["input_scale"]
    mask, causal, positions = case["mask"], case["causal"], case["positions"]

    def run(rows: slice = slice(None), *, need_weights: bool = False):
        inputs = (x[rows], memory[rows], memory[rows]) if case["cross"] else (x[rows],)
        with torch.no_grad():
            return module(
                *inputs,
                mask=None if mask is None else mask[rows],
                causal=causal,
                positions=positions[rows] if positions is not None and positions.dim() == 2 else positions,
                need_weights=need_weights,
            )

    output, weights = run(need_weights=True)
    fused, no_weights = run()
    assert no_weights is None
    assert_distributions(weights, allowed_keys(mask, causal, batch, heads, queries, keys))
    assert output.shape == (batch, queries, case["embed_dim"])
    assert torch.isfinite(output).all()
    # Both paths compute the same thing (the fused one forms no weights; rows with no key are zeroed there too).
    torch.testing.assert_close(fused, output, rtol=1e-4, atol=1e-4 * case["input_scale"])

    # Each example gets what it gets alone: no mixing across the batch, a fully padded neighbour included.
    # (Batched and single matmuls round differently; logits in the hundreds move the weights by ~1e-5.)
    for example in range(batch):
        alone, alone_weights = run(slice(example, example + 1), need_weights=True)
        torch.testing.assert_close(alone_weights[0], weights[example], rtol=0, atol=1e-5 * case["input_scale"])
        torch.testing.assert_close(alone[0], output[example], rtol=1e-5, atol=1e-5 * case["input_scale"])


# ----------------------------------------------------------------------------------------------------
# the small models built from it
# ----------------------------------------------------------------------------------------------------
@st.composite
def model_cases(draw) -> dict:
    decoder = draw(st.booleans())
    num_heads, num_kv_heads = draw(head_layouts())
    batch, length = draw(st.integers(1, 3)), draw(st.integers(1, 10))
    prenorm = draw(st.booleans())
    return {
        "decoder": decoder,
        "config": {
            "vocab_size": 16,
            "embed_dim": 4 * num_heads,
            "num_heads": num_heads,
            "num_kv_heads": num_kv_heads,
            "num_layers": draw(st.integers(1, 2)),
            "ffn_dim": 8,
            "position": draw(st.sampled_from(POSITION_VARIANTS)),
            "max_positions": 16,
            "prenorm": prenorm,
            "norm": draw(st.sampled_from(["layernorm", "rmsnorm"])),
            "mlp": draw(st.sampled_from(["gelu", "swiglu"])),
            "embedding_norm": not prenorm,
        },
        "batch": batch,
        "length": length,
        "mask": draw(padding_masks(batch, length)),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(PROPERTIES, max_examples=150)
@given(case=model_cases())
def test_model_attentions_are_distributions_and_padding_never_leaks(case):
    torch.manual_seed(case["seed"])
    config = TransformerConfig(**case["config"])
    model = (DecoderLM if case["decoder"] else EncoderClassifier)(config).eval()
    batch, length, heads = case["batch"], case["length"], config.num_heads
    generator = torch.Generator().manual_seed(case["seed"])
    input_ids = torch.randint(0, config.vocab_size, (batch, length), generator=generator)
    mask = case["mask"].long()

    with torch.no_grad():
        out = model(input_ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == config.num_layers
    allowed = allowed_keys(mask, case["decoder"], batch, heads, length)
    for weights in out.attentions:
        assert_distributions(weights, allowed)
    # No NaN anywhere, neither in the real examples nor in a fully padded one.
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(state).all() for state in out.hidden_states)

    # An example's results do not depend on its batch (a fully padded neighbour included).
    for example in range(batch):
        with torch.no_grad():
            alone = model(
                input_ids[example : example + 1], attention_mask=mask[example : example + 1], output_attentions=True
            )
        torch.testing.assert_close(alone.logits[0], out.logits[example], rtol=1e-4, atol=1e-4)
        for layer, weights in enumerate(out.attentions):
            torch.testing.assert_close(alone.attentions[layer][0], weights[example], rtol=0, atol=1e-5)


@settings(PROPERTIES, max_examples=100)
@given(case=model_cases())
def test_a_decoder_given_positions_from_its_mask_equals_the_example_without_padding(case):
    """With ``positions = cumsum(mask) - 1`` a decoder's real tokens are the unpadded example, whatever the
    padding pattern (left, right, or holes) and the position variant (per-example positions in every variant)."""
    torch.manual_seed(case["seed"])
    model = DecoderLM(TransformerConfig(**case["config"])).eval()
    generator = torch.Generator().manual_seed(case["seed"])
    input_ids = torch.randint(0, model.config.vocab_size, (case["batch"], case["length"]), generator=generator)
    mask = case["mask"]
    positions = (mask.long().cumsum(dim=1) - 1).clamp_min(0)  # [batch, n]
    with torch.no_grad():
        out = model(input_ids, attention_mask=mask, positions=positions, output_attentions=True)
    for example in range(case["batch"]):
        real = mask[example]
        if not real.any():
            continue
        with torch.no_grad():
            alone = model(input_ids[example : example + 1, real], output_attentions=True)
        torch.testing.assert_close(out.logits[example, real], alone.logits[0], rtol=1e-4, atol=1e-4)
        for layer, weights in enumerate(out.attentions):
            torch.testing.assert_close(
                weights[example][:, real][:, :, real], alone.attentions[layer][0], rtol=0, atol=1e-5
            )
