"""Attention flow: the same values as networkx's max-flow, certified bounds, and the method on real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attn_probe.attention import EncoderClassifier, TransformerConfig
from attn_probe.capture import capture
from attn_probe.methods import explain
from attn_probe.methods.flow import flow_matrix, flow_to, layer_flows_to
from attn_probe.methods.graph import residual_attention
from attn_probe.methods.layered_maxflow import max_flows
from tests.capture.families import batch, build

nx = pytest.importorskip("networkx")


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def random_graph(layers: int, n: int, seed: int, *, residual: float = 0.5, kind: str = "dense") -> np.ndarray:
    """``[layers, n, n]`` row-stochastic matrices mixed with the identity, rounded through float32 like
    :func:`residual_attention`. ``kind``: "dense" (Dirichlet rows), "peaked" (most weight on few keys),
    "sparse" (about half the entries exactly 0) or "causal" (no weight on later keys)."""
    rng = np.random.default_rng(seed)
    concentration = 0.2 if kind == "peaked" else 1.0
    weights = rng.dirichlet(np.full(n, concentration), size=(layers, n))
    if kind == "sparse":
        weights = weights * (rng.random((layers, n, n)) < 0.5)
    if kind == "causal":
        weights = np.tril(weights)
    weights = weights + 1e-12 * np.eye(n)  # no empty row
    weights = weights / weights.sum(-1, keepdims=True)
    mixed = (1 - residual) * weights + residual * np.eye(n)
    return (mixed / mixed.sum(-1, keepdims=True)).astype(np.float32).astype(np.float64)


def networkx_flows(matrices: np.ndarray, target: int, *, flow_func=None) -> np.ndarray:
    """The public-copy way: one DiGraph, one ``maximum_flow_value`` per input token."""
    layers, n, _ = matrices.shape
    graph = nx.DiGraph()
    for layer in range(1, layers + 1):
        for query in range(n):
            for key in range(n):
                graph.add_edge((layer - 1, key), (layer, query), capacity=float(matrices[layer - 1][query, key]))
    return np.array([nx.maximum_flow_value(graph, (0, j), (layers, target), flow_func=flow_func) for j in range(n)])


def widest_path(matrices: np.ndarray, target: int) -> np.ndarray:
    """``[n]`` the best single-path bottleneck from each input to the target: a feasible flow, a lower bound."""
    width = np.eye(matrices.shape[-1])  # width[j, k]: best bottleneck from input j to node k of this layer
    for matrix in matrices:
        width = np.max(np.minimum(width[:, None, :], matrix[None, :, :]), axis=-1)  # [j, i] over keys k
    return width[:, target]


CASES = [
    (layers, n, seed, kind)
    for layers in (1, 2, 3, 4)
    for n in (2, 3, 5, 7)
    for seed, kind in enumerate(("dense", "peaked", "sparse", "causal"))
]


# ----------------------------------------------------------------------------------------------------
# exactness
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("layers", "n", "seed", "kind"), CASES)
def test_flow_equals_networkx(layers, n, seed, kind):
    matrices = random_graph(layers, n, seed, kind=kind)
    target = seed % n
    values, bound = flow_to(matrices, target, return_bound=True)
    reference = networkx_flows(matrices, target)
    np.testing.assert_allclose(values, reference, rtol=0, atol=1e-6)
    assert values.shape == (n,) and values.dtype == np.float64
    assert np.all(bound <= 1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_tight_tolerance_equals_networkx_on_deeper_graphs(seed):
    matrices = random_graph(6 + seed, 8, seed, residual=0.3, kind=("dense", "peaked", "sparse", "causal")[seed])
    target = seed % 8
    values, bound = flow_to(matrices, target, tolerance=1e-12, return_bound=True)
    np.testing.assert_allclose(values, networkx_flows(matrices, target), rtol=0, atol=1e-9)
    assert np.all(bound <= 1e-12)


def test_the_solver_brackets_the_exact_value():
    """The compiled solver's two numbers: a flow's value (lower) and a cut's capacity (upper) around networkx's."""
    matrices = random_graph(5, 6, 21, kind="peaked")
    upper, lower = max_flows(matrices, np.arange(6), np.full(6, 4), 1e-9)
    reference = networkx_flows(matrices, 4)
    assert np.all(lower <= reference + 1e-12) and np.all(reference <= upper + 1e-12)
    assert np.all(upper - lower <= 1e-9 * 5 * 6 * 7)  # eps per crossing edge and per node holding excess


def test_the_real_benchmark_size_equals_networkx():
    """12 layers x 16 tokens of softmaxed random attention (the benchmark's case), one target row."""
    weights = (2.0 * torch.randn(1, 12, 4, 16, 16, generator=torch.Generator().manual_seed(3))).softmax(-1)
    matrices = residual_attention(weights, torch.ones(1, 16))[0].double().numpy()
    np.testing.assert_allclose(flow_to(matrices, 0), networkx_flows(matrices, 0), rtol=0, atol=1e-9)


def test_scaled_capacities_scale_the_flow():
    matrices = random_graph(4, 5, 8)
    np.testing.assert_allclose(flow_to(1e6 * matrices, 2), 1e6 * flow_to(matrices, 2), rtol=1e-9)
    np.testing.assert_allclose(flow_to(1e-6 * matrices, 2, tolerance=1e-14), 1e-6 * flow_to(matrices, 2), rtol=1e-7)
    np.testing.assert_array_equal(flow_to(np.zeros((3, 4, 4)), 0), np.zeros(4))


def test_raw_attention_without_residual_equals_networkx():
    matrices = random_graph(4, 6, 3, residual=0.0, kind="sparse")
    for target in range(6):
        np.testing.assert_allclose(flow_to(matrices, target), networkx_flows(matrices, target), atol=1e-6)


def test_flow_matrix_and_layer_flows_agree_with_flow_to():
    matrices = random_graph(4, 5, 11)
    table = flow_matrix(matrices)
    assert table.shape == (5, 5)
    for target in range(5):
        np.testing.assert_allclose(table[target], flow_to(matrices, target), atol=1e-9)
    np.testing.assert_allclose(table[2], networkx_flows(matrices, 2), atol=1e-6)
    per_layer = layer_flows_to(matrices, 3)
    assert per_layer.shape == (4, 5)
    for layer in range(4):
        np.testing.assert_allclose(per_layer[layer], flow_to(matrices[: layer + 1], 3), atol=1e-12)
    np.testing.assert_allclose(per_layer[0], matrices[0][3])  # one layer: the edge itself


def test_torch_input_and_negative_target():
    matrices = random_graph(3, 4, 5)
    np.testing.assert_allclose(flow_to(torch.from_numpy(matrices).float(), -1), flow_to(matrices, 3), atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# hand-made graphs and bounds
# ----------------------------------------------------------------------------------------------------
def test_one_layer_flow_is_the_edge_capacity():
    matrix = np.array([[[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.25, 0.25, 0.5]]])
    np.testing.assert_array_equal(flow_to(matrix, 0), [0.7, 0.2, 0.1])
    np.testing.assert_array_equal(flow_to(matrix, 2), [0.25, 0.25, 0.5])
    np.testing.assert_array_equal(flow_matrix(matrix), matrix[0])


def test_two_layers_sum_the_bottlenecks_of_disjoint_paths():
    first = np.array([[0.6, 0.4], [0.3, 0.7]])  # A_1[query, key]
    second = np.array([[0.5, 0.5], [0.2, 0.8]])
    # from input 0 to (2, 0): via (1, 0): min(0.6, 0.5); via (1, 1): min(0.3, 0.5)
    np.testing.assert_allclose(flow_to(np.stack([first, second]), 0), [0.5 + 0.3, 0.4 + 0.5])


def test_a_narrow_middle_edge_is_the_bottleneck():
    """Three layers, one path: input 0 -> (1, 0) -> (2, 1) -> (3, 1); the middle edge has capacity 0.05."""
    layers = np.zeros((3, 2, 2))
    layers[0][0, 0] = 1.0
    layers[1][1, 0] = 0.05
    layers[2][1, 1] = 1.0
    np.testing.assert_allclose(flow_to(layers, 1), [0.05, 0.0], atol=1e-12)
    np.testing.assert_allclose(flow_to(layers, 0), [0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_flows_respect_the_capacity_bounds(seed):
    """0 <= flow <= the target node's inflow (its attention row: 1 up to float32 rounding), <= what the token
    sends into layer 1 (its column sum), and >= the widest single path."""
    layers, n = 2 + seed, 6
    matrices = random_graph(layers, n, seed, kind=("dense", "peaked", "sparse")[seed % 3])
    target = seed % n
    values = flow_to(matrices, target)
    assert np.all(values >= 0)
    assert np.all(values <= matrices[-1][target].sum() + 1e-9) and np.all(values <= 1 + 1e-6)
    assert np.all(values <= matrices[0].sum(0) + 1e-9)
    assert np.all(values >= widest_path(matrices, target) - 1e-9)
    table = flow_matrix(matrices)
    assert np.all(table <= matrices[-1].sum(-1, keepdims=True) + 1e-9)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="layers >= 1, n, n"):
        flow_to(np.ones((2, 3)), 0)
    with pytest.raises(ValueError, match="non-negative"):
        flow_to(-np.ones((2, 3, 3)), 0)
    with pytest.raises(ValueError, match="out of range"):
        flow_to(np.ones((2, 3, 3)) / 3, 3)
    with pytest.raises(ValueError, match="tolerance"):
        flow_to(np.ones((1, 3, 3)) / 3, 0, tolerance=0.0)


# ----------------------------------------------------------------------------------------------------
# the method
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert():
    return build("bert")


def test_method_on_a_tiny_bert(tiny_bert):
    inputs = batch("bert", lengths=(7, 4))
    result = explain(tiny_bert, inputs, ["attention_flow"])["attention_flow"]
    assert result.info.family == "attention" and not result.info.needs_gradients
    assert result.scores.shape == (2, 7) and result.scores.dtype == torch.float32
    assert torch.all(result.scores[1, 4:] == 0)
    assert torch.all(result.scores >= 0) and torch.all(result.scores <= 1 + 1e-6)
    assert result.layer_scores.shape == (2, 2, 7)
    torch.testing.assert_close(result.layer_scores[:, -1], result.scores)
    assert result.details["max_error_bound"] <= 1e-6
    # the same numbers as networkx on the graph the method builds (real tokens only, target row 0)
    graph = residual_attention(capture(tiny_bert, inputs).weights, inputs["attention_mask"])
    for example, length in enumerate((7, 4)):
        matrices = graph[example][:, :length, :length].double().numpy()
        np.testing.assert_allclose(result.scores[example, :length].numpy(), networkx_flows(matrices, 0), atol=1e-6)


def test_padded_batch_equals_single_examples(tiny_bert):
    inputs = batch("bert", lengths=(7, 4, 5), seed=3)
    together = explain(tiny_bert, inputs, ["attention_flow"])["attention_flow"]
    for example in range(3):
        length = int(inputs["attention_mask"][example].sum())
        alone = {key: value[example : example + 1, :length] for key, value in inputs.items()}
        single = explain(tiny_bert, alone, ["attention_flow"])["attention_flow"]
        torch.testing.assert_close(together.scores[example, :length], single.scores[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            together.layer_scores[example, :, :length], single.layer_scores[0], atol=1e-5, rtol=0
        )


def test_method_options(tiny_bert):
    inputs = batch("bert", lengths=(6, 6), seed=2)
    default = explain(tiny_bert, inputs, ["attention_flow"])["attention_flow"]
    first = explain(tiny_bert, inputs, ["attention_flow"], options={"attention_flow": {"output_layer": 0}})
    first = first["attention_flow"]
    torch.testing.assert_close(first.scores, default.layer_scores[:, 0])
    assert first.options["output_layer"] == 0
    lean = explain(tiny_bert, inputs, ["attention_flow"], options={"attention_flow": {"layer_scores": False}})
    assert lean["attention_flow"].layer_scores is None
    torch.testing.assert_close(lean["attention_flow"].scores, default.scores)
    normalized = explain(tiny_bert, inputs, ["attention_flow"], options={"attention_flow": {"normalize": True}})
    torch.testing.assert_close(normalized["attention_flow"].scores.sum(-1), torch.ones(2))
    for options in ({"heads": "max"}, {"residual": 0.0}, {"residual": 0.9}):
        result = explain(tiny_bert, inputs, ["attention_flow"], options={"attention_flow": options})
        assert torch.isfinite(result["attention_flow"].scores).all()
    with pytest.raises(ValueError, match="output_layer"):
        explain(tiny_bert, inputs, ["attention_flow"], options={"attention_flow": {"output_layer": 2}})
    with pytest.raises(ValueError, match="heads"):
        explain(tiny_bert, inputs, ["attention_flow"], options={"attention_flow": {"heads": "sum"}})


def test_method_on_a_decoder_reads_the_predicting_row():
    model = build("gpt2")
    inputs = batch("gpt2", lengths=(6, 4))
    result = explain(model, inputs, ["attention_flow"])["attention_flow"]
    assert result.scores.shape == (2, 6) and torch.all(result.scores[1, 4:] == 0)
    assert torch.all(result.scores[:, 0] > 0)  # the first token reaches every later position


def test_method_on_our_encoder_classifier():
    torch.manual_seed(0)
    model = EncoderClassifier(TransformerConfig(vocab_size=30, embed_dim=32, num_heads=4, num_layers=3)).eval()
    inputs = {"input_ids": torch.randint(3, 30, (2, 6)), "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2])}
    result = explain(model, inputs, ["attention_flow"])["attention_flow"]
    assert result.scores.shape == (2, 6) and torch.all(result.scores[1, 4:] == 0)
    assert result.layer_scores.shape == (2, 3, 6)
    assert torch.all(result.scores[:, :4] > 0)


@pytest.mark.slow
def test_method_on_minilm_sentiment():
    from attn_probe.capture import tokenize
    from attn_probe.models import load_model

    loaded = load_model("minilm-sentiment")
    texts = ["a gorgeous, witty movie", "the plot is dull and lifeless, and the acting wooden"]
    inputs = tokenize(loaded.tokenizer, texts)
    result = explain(loaded.model, inputs, ["attention_flow"], tokenizer=loaded.tokenizer)["attention_flow"]
    assert result.scores.shape == inputs.input_ids.shape
    assert torch.all(result.scores[inputs.attention_mask == 0] == 0)
    graph = residual_attention(capture(loaded.model, inputs).weights, inputs.attention_mask)
    length = int(inputs.attention_mask[0].sum())
    matrices = graph[0][:, :length, :length].double().numpy()
    np.testing.assert_allclose(result.scores[0, :length].numpy(), networkx_flows(matrices, 0), atol=1e-6)
