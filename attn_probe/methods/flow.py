"""Attention flow (Abnar & Zuidema 2020): the max-flow from each input token to the target, exact and fast.

The graph is the one rollout walks (:func:`attn_probe.methods.graph.residual_attention`): nodes are
``(layer l = 0..L, position p)``, and for every layer ``l = 1..L`` an edge runs from ``(l-1, key j)`` to
``(l, query i)`` with capacity ``A_l[i, j]``. The flow of input token ``j`` for the output node ``(L, t)`` is
the value of a maximum flow from ``(0, j)`` to ``(L, t)``: one max-flow problem per (input, output) pair.
Public implementations build a networkx graph and call its max-flow once per pair (a quarter of a second
per example at 12 layers and 16 tokens, minutes at 128 tokens, hours for a full flow matrix); this module
gives the same values, certified, in milliseconds (``benchmarks/attention_flow.py``).

How: each (input, output) pair is one max-flow problem, and all the pairs asked for are solved in one call
of a compiled solver written for this graph's shape (:mod:`attn_probe.methods.layered_maxflow`: FIFO
push-relabel with exact initial labels and the gap heuristic, on dense per-layer arrays, compiled by numba).
One layer needs no solver (the flow is the edge, ``A_1[t, j]``); from two layers on the middle is a general
transportation network (two layers: ``sum_k min(A_1[k, j], A_2[t, k])``, which the tests check the solver
against).

**Error bound.** Capacities stay real (float64). The solver treats a residual ``<= eps`` as saturated and
returns, per problem, the capacity of the cut its final residual graph leaves (an upper bound, summed from
the real capacities) and the value of the (pre)flow it found (a lower bound). The value reported is the
cut's capacity, exact whenever that cut is a minimum cut (the usual case: equal to networkx's to ~1e-15 in
the tests), and never more than ``upper - lower`` above the exact max-flow. ``eps`` is chosen so that this
gap stays below ``tolerance`` (default 1e-6); problems whose gap does not are solved again with ``eps`` at
the float64 rounding floor, and a warning names any still above it (none seen in the tests).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from attn_probe.methods.base import ExplainContext, Explanation, MethodInfo, register
from attn_probe.methods.graph import residual_attention
from attn_probe.methods.layered_maxflow import max_flows

DEFAULT_TOLERANCE = 1e-6
_ROUNDING = 64 * np.finfo(np.float64).eps  # relative float64 noise of a sum of a few hundred flows


# ------------------------------------------------------------------------------------------------------
# Public functions on plain arrays
# ------------------------------------------------------------------------------------------------------
def flow_to(
    matrices: np.ndarray | torch.Tensor,
    target: int,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    return_bound: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``[n]``: the max-flow from every input node ``(0, j)`` to the output node ``(L, target)``.

    ``matrices``: ``[L, n, n]`` per-layer transition matrices (rows = queries, columns = keys; real tokens
    only), e.g. one example of :func:`residual_attention`. Values are non-negative capacities; row-stochastic
    matrices give flows in ``[0, 1]``. ``tolerance``: the certified error bound (> 0). With
    ``return_bound=True`` also returns ``[n]`` certified bounds: ``|value - exact| <= bound <= tolerance``.
    """
    graph = _as_graph(matrices, tolerance)
    n = graph.shape[-1]
    t = _node(target, n)
    if len(graph) == 1:  # one edge from (0, j) to (1, t)
        values, bound = graph[0][t].copy(), np.zeros(n)
        return (values, bound) if return_bound else values
    values, bound = _solve(graph, np.arange(n), np.full(n, t), tolerance)
    return (values, bound) if return_bound else values


def flow_matrix(
    matrices: np.ndarray | torch.Tensor,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    return_bound: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``[n, n]``: ``out[t, j]`` = the max-flow from input ``(0, j)`` to output ``(L, t)``, for every pair.

    Rows are output (query) positions, columns input (key) positions, as in the attention matrices.
    """
    graph = _as_graph(matrices, tolerance)
    n = graph.shape[-1]
    if len(graph) == 1:
        values, bound = graph[0].copy(), np.zeros((n, n))
        return (values, bound) if return_bound else values
    values, bound = _solve(graph, np.tile(np.arange(n), n), np.repeat(np.arange(n), n), tolerance)  # pair (t, j)
    values, bound = values.reshape(n, n), bound.reshape(n, n)
    return (values, bound) if return_bound else values


def layer_flows_to(
    matrices: np.ndarray | torch.Tensor,
    target: int,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    return_bound: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``[L, n]``: row ``l`` = :func:`flow_to` of the graph truncated after layer ``l`` (0-based), i.e. the
    flow from every input into ``(l + 1, target)``. The last row is ``flow_to(matrices, target)``."""
    graph = _as_graph(matrices, tolerance)
    n = graph.shape[-1]
    t = _node(target, n)
    values, bound = np.empty((len(graph), n)), np.zeros((len(graph), n))
    values[0] = graph[0][t]  # one layer: the edge itself
    for depth in range(2, len(graph) + 1):  # checked once above, so each depth goes straight to the solver
        values[depth - 1], bound[depth - 1] = _solve(graph[:depth], np.arange(n), np.full(n, t), tolerance)
    return (values, bound) if return_bound else values


# ------------------------------------------------------------------------------------------------------
# The method
# ------------------------------------------------------------------------------------------------------
FLOW_INFO = MethodInfo(
    id="attention_flow",
    family="attention",
    needs_gradients=False,
    cost="1 forward (shared) + n max-flows per example on a (L+1) x n layered graph",
    sign="non-negative: how much of the target node's unit inflow can come from the token (max-flow, in [0, 1]); "
    "not a distribution: the flows of an example need not sum to 1",
    description="Abnar & Zuidema's attention flow: the max-flow from each input token's node to the target row's "
    "node at the output layer, through the head-combined attention graph with the residual connection. "
    "Exact (certified to `tolerance`), all tokens of an example solved together in compiled max-flow calls.",
    reference="Abnar & Zuidema (2020), Quantifying Attention Flow in Transformers, ACL",
)


@register(FLOW_INFO)
def attention_flow(
    context: ExplainContext,
    *,
    residual: float = 0.5,
    heads: str = "mean",
    output_layer: int = -1,
    layer_scores: bool = True,
    normalize: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Explanation:
    """Scores: the flow from each real token to the target row at ``output_layer`` (0 at padding).

    ``residual``, ``heads``: how the graph is built (:func:`residual_attention`). ``output_layer``: the layer
    whose output node is the sink (0-based over the main stack's layers, negative from the end; default the
    last). ``layer_scores``: also compute ``layer_scores[:, l]``, the flow into the target's node after layer
    ``l`` (the graph truncated there), for every layer (about ``L / 2`` times the cost of the scores).
    ``normalize``: divide each example's scores (and each layer's) by their sum, as the paper's code does.
    ``tolerance``: the certified bound on every flow's error (``details["max_error_bound"]``).
    """
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    captured = context.capture()
    weights = captured.weights  # [b, L, H, q, k]
    mask = context.attention_mask.to(weights.device)
    batch, layers = weights.shape[:2]
    if weights.shape[-1] != mask.shape[-1] or weights.shape[-2] != mask.shape[-1]:
        raise ValueError(
            f"attention_flow needs self-attention over the inputs; the main stack {captured.main_stack!r} has "
            f"weights of shape {tuple(weights.shape)} for inputs of length {mask.shape[-1]}"
        )
    if not -layers <= output_layer < layers:
        raise ValueError(f"output_layer must be in [{-layers}, {layers - 1}] for a {layers}-layer model")
    output_layer %= layers
    graph = residual_attention(weights, mask, residual=residual, heads=heads)  # [b, L, n, n]
    rows = context.target_rows().to(mask.device)
    n = mask.shape[-1]
    scores = torch.zeros(batch, n, dtype=torch.float64)
    per_layer = torch.zeros(batch, layers, n, dtype=torch.float64) if layer_scores else None
    worst = 0.0
    for example in range(batch):
        real = torch.nonzero(mask[example].bool()).flatten()
        row = int(rows[example])
        if not bool(mask[example, row]):
            raise ValueError(f"example {example}: the target row {row} is padding")
        target = int(torch.searchsorted(real, torch.tensor(row, device=real.device)))
        matrices = graph[example][:, real][:, :, real].double().cpu().numpy()  # [L, m, m], real tokens only
        columns = real.cpu()
        if per_layer is not None:
            values, bound = layer_flows_to(matrices, target, tolerance=tolerance, return_bound=True)
            per_layer[example][:, columns] = torch.from_numpy(values)
            scores[example, columns] = per_layer[example, output_layer, columns]
        else:
            values, bound = flow_to(matrices[: output_layer + 1], target, tolerance=tolerance, return_bound=True)
            scores[example, columns] = torch.from_numpy(values)
        worst = max(worst, float(bound.max(initial=0.0)))
    if normalize:
        scores = scores / scores.sum(-1, keepdim=True).clamp_min(1e-12)
        if per_layer is not None:
            per_layer = per_layer / per_layer.sum(-1, keepdim=True).clamp_min(1e-12)
    return context.finish(
        FLOW_INFO,
        scores.to(weights.device),
        layer_scores=None if per_layer is None else per_layer.to(weights.device),
        details={"max_error_bound": worst, "target_rows": rows.detach().cpu()},
        options={
            "residual": residual,
            "heads": heads,
            "output_layer": output_layer,
            "layer_scores": layer_scores,
            "normalize": normalize,
            "tolerance": tolerance,
        },
    )


# ------------------------------------------------------------------------------------------------------
# The solver
# ------------------------------------------------------------------------------------------------------
def _as_graph(matrices: np.ndarray | torch.Tensor, tolerance: float) -> np.ndarray:
    """The capacities as contiguous float64 ``[L, n, n]``, checked (and the tolerance with them)."""
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    if isinstance(matrices, torch.Tensor):
        matrices = matrices.detach().cpu().double().numpy()
    graph = np.ascontiguousarray(matrices, dtype=np.float64)
    if graph.ndim != 3 or graph.shape[1] != graph.shape[2] or graph.shape[0] < 1 or graph.shape[1] < 1:
        raise ValueError(f"matrices must be [layers >= 1, n, n], got shape {graph.shape}")
    if not np.isfinite(graph).all() or (graph < 0).any():
        raise ValueError("capacities must be finite and non-negative")
    return graph


def _node(target: int, n: int) -> int:
    if not -n <= int(target) < n:
        raise ValueError(f"target {target} is out of range for {n} tokens")
    return int(target) % n


def _solve(
    graph: np.ndarray, sources: np.ndarray, sinks: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Max-flows from ``(0, sources[c])`` to ``(L, sinks[c])`` of ``graph [L >= 2, n, n]``: values and bounds ``[C]``.

    The solver's gap is at most ``eps`` per edge crossing its final cut plus ``eps`` per node left holding
    excess: with ``eps = tolerance / (2 * (edges + nodes))`` it is below half the tolerance by construction,
    unless float64 rounding (``_ROUNDING`` of the largest capacity) is the larger, then rounding decides.
    """
    layers, n = graph.shape[0], graph.shape[-1]
    largest = float(graph.max(initial=0.0))
    if largest == 0.0:
        return np.zeros(len(sources)), np.zeros(len(sources))
    floor = _ROUNDING * largest
    eps = max(tolerance / (2.0 * (layers * n * n + layers * n)), floor)
    sources, sinks = np.ascontiguousarray(sources, np.int64), np.ascontiguousarray(sinks, np.int64)
    upper, lower = max_flows(graph, sources, sinks, eps)
    loose = np.nonzero(upper - lower > tolerance)[0]
    if len(loose) and eps > floor:  # only rounding can do this; once more at the finest eps that means anything
        upper[loose], lower[loose] = max_flows(graph, sources[loose], sinks[loose], floor)
    bound = np.maximum(upper - lower, 0.0)
    if (bound > tolerance).any():
        warnings.warn(
            f"attention flow: {int((bound > tolerance).sum())} max-flows certified only to {float(bound.max()):.3g} "
            f"(asked: {tolerance:g}); float64 rounding of these capacities does not allow a tighter certificate",
            RuntimeWarning,
            stacklevel=3,
        )
    return upper, bound
