"""Attention flow (Abnar & Zuidema 2020): the max-flow from each input token to the target, exact and fast.

The graph is the one rollout walks (:func:`attn_probe.methods.graph.residual_attention`): nodes are
``(layer l = 0..L, position p)``, and for every layer ``l = 1..L`` an edge runs from ``(l-1, key j)`` to
``(l, query i)`` with capacity ``A_l[i, j]``. The flow of input token ``j`` for the output node ``(L, t)`` is
the value of a maximum flow from ``(0, j)`` to ``(L, t)``: one max-flow problem per (input, output) pair.
Public implementations build a networkx graph and call its max-flow once per pair (a quarter of a second
per example at 12 layers and 16 tokens, minutes at 128 tokens, hours for a full flow matrix); this module
gives the same values, certified, in milliseconds (``benchmarks/attention_flow.py``).

How:

1. **Depth 1 and 2 have closed forms.** One layer: the flow is the edge, ``A_1[t, j]``. Two layers: the
   paths ``(0, j) -> (1, k) -> (2, t)`` share no edge, so the flow is ``sum_k min(A_1[k, j], A_2[t, k])``.
   From three layers on it is a general max-flow problem (the middle is an arbitrary transportation network).
2. **All the (input, output) problems of a graph in one compiled max-flow call.** The problems share
   everything but their first and last layer, so each becomes a copy of one template network (source star,
   middle layers, sink star); the copies are joined by a super-source and a super-sink whose edges never
   saturate, and ``scipy.sparse.csgraph.maximum_flow`` (Dinic, in C) solves them together: a maximum flow of
   the union, restricted to one copy, is a maximum flow of that copy, because the copies share no edge.
3. **Integer capacities, then a certificate.** scipy needs int32 capacities (int64 ones are *silently*
   truncated to int32: a capacity of ``2**40 + 3`` comes back as 3), so capacities are scaled by a power of
   two ``S <= 2**30`` and floored. The integer flow divided by ``S`` is then a *feasible* flow of the real
   graph: its value is a lower bound. The nodes reachable from the source in the integer residual graph form
   a cut, whose capacity measured with the *real* capacities (float64, full graph) is an upper bound. The
   answer is that cut's capacity: by max-flow/min-cut duality it is exact whenever that cut is a minimum cut
   of the real graph (the usual case), and it is never more than ``upper - lower`` above the exact value.
4. **Refinement until the certificate is tight.** While ``upper - lower > tolerance`` for some copy, the
   residual network of the flow found so far (its max-flow is at most the gap) is solved again with a
   finer scale ``S' ~ 2**30 / gap``: each round gains about 30 bits.
5. **Big graphs start from the strong edges.** When a copy has more than ``_PRUNE_ABOVE`` middle edges it
   starts with those of capacity ``>= 0.5 / n`` and every edge into the target's own positions; cuts are
   always measured on the full graph, and a missing edge that crosses the cut of an unfinished copy is added
   and that copy solved again from its current flow. Pruning changes the time, never the answer.

**Error bound.** Every value ``v`` comes with an explicit feasible flow of value ``lower`` and is the capacity
of a cut, so ``lower <= exact <= v`` and ``v - exact <= v - lower <= tolerance`` (default 1e-6), up to
float64 rounding of the sums (~1e-15). One round leaves a gap below ``E / S = E / 2**30`` for a cut of
``E`` edges (a 640-edge cut: 6e-7); a smaller ``tolerance`` costs refinement rounds, not accuracy. In
practice the value is the exact min-cut capacity (equal to networkx's to ~1e-16 in the tests); the largest
difference seen in 14,000 random graphs at tolerance 1e-6 was 2.6e-8.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from attn_probe.methods.base import ExplainContext, Explanation, MethodInfo, register
from attn_probe.methods.graph import residual_attention

DEFAULT_TOLERANCE = 1e-6
_SCALE_LIMIT = 2**30  # integer capacities stay <= 2**30: int32 for scipy, with room for rounding noise
_MAX_ENTRIES = 3_000_000  # sparse entries per scipy call; copies are chunked to fit
_PRUNE_ABOVE = 8_000  # middle edges per copy above which a copy starts from the strong edges only ...
_PRUNE_RELATIVE = 0.5  # ... those of capacity >= 0.5 / n (plus every edge into the target's positions)
_FULL_AFTER_ROUNDS = 4  # after this many rounds an unfinished copy gets every edge
_MAX_ROUNDS = 24


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
    values, bound = _flows(graph, graph[0].T, np.broadcast_to(graph[-1][t], (n, n)), tolerance, np.full(n, t))
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
    sources = np.broadcast_to(graph[0].T[None], (n, n, n)).reshape(n * n, n)  # copy (t, j): A_1[:, j]
    sinks = np.broadcast_to(graph[-1][:, None, :], (n, n, n)).reshape(n * n, n)  # copy (t, j): A_L[t, :]
    values, bound = _flows(graph, sources, sinks, tolerance, np.repeat(np.arange(n), n))
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
    pairs = [flow_to(graph[: depth + 1], target, tolerance=tolerance, return_bound=True) for depth in range(len(graph))]
    values = np.stack([value for value, _ in pairs])
    bound = np.stack([error for _, error in pairs])
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


def _flows(
    graph: np.ndarray, sources: np.ndarray, sinks: np.ndarray, tolerance: float, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Max-flows of ``C`` copies of one layered network (``L >= 2``) that differ in their first and last layer.

    Copy ``c`` has source edges ``(0) -> (1, i)`` of capacity ``sources[c, i]``, the middle layers of
    ``graph`` (``graph[1:-1]``), and sink edges ``(L-1, k) -> (L)`` of capacity ``sinks[c, k]``, which are
    those of the output position ``targets[c]``. Returns the values (capacities of certified cuts) and their
    error bounds ``[C]``.
    """
    if graph.shape[0] == 2:  # edge-disjoint two-edge paths through the one middle layer
        values = np.minimum(sources, sinks).sum(-1)
        return values, np.zeros_like(values)
    values, bound = np.zeros(len(sources)), np.zeros(len(sources))
    pruned = _Solver.prunes(graph)
    groups = [np.arange(len(sources))] if not pruned else [np.nonzero(targets == t)[0] for t in np.unique(targets)]
    for group in groups:  # a pruned solver starts with the rows of its target active: one solver per target
        solver = _Solver(graph, tolerance, np.unique(targets[group]))
        values[group], bound[group] = solver.solve(sources[group], sinks[group])
    return values, bound


@dataclass
class _Template:
    """One copy's network in local node ids, with its sparse entries sorted the way CSR wants them.

    Local nodes: 0 = source, ``1 + l * n + i`` = position ``i`` of middle layer ``l`` (``l = 0..K``, i.e.
    graph layers 1..L-1), ``nodes - 1`` = sink. Edges: ``n`` source edges, the active middle edges, ``n``
    sink edges. Every edge has a forward entry and a backward entry (the residual of the flow already sent
    along it), and each copy has two more: its source's entry back to the super-source (local column -1)
    and its sink's edge to the super-sink (local column ``nodes``).
    """

    n: int
    nodes: int
    edges: int
    cols: np.ndarray  # [entries] local column of each sorted entry
    forward: np.ndarray  # [edges] position of each edge's forward entry
    backward: np.ndarray  # [edges] position of each edge's backward entry
    to_super_source: int  # position of the source's entry back to the super-source
    to_super_sink: int  # position of the sink's edge to the super-sink
    indptr: np.ndarray  # [nodes + 1] CSR row pointers of one copy

    @property
    def entries(self) -> int:
        return len(self.cols)

    @classmethod
    def build(cls, n: int, layers: int, mid_from: np.ndarray, mid_to: np.ndarray) -> _Template:
        nodes = layers * n + 2
        sink = nodes - 1
        positions = np.arange(n)
        tails = np.concatenate([np.zeros(n, np.int64), mid_from, 1 + (layers - 1) * n + positions])
        heads = np.concatenate([1 + positions, mid_to, np.full(n, sink)])
        edges = len(tails)
        rows = np.concatenate([tails, heads, [0, sink]])
        cols = np.concatenate([heads, tails, [-1, nodes]])
        order = np.lexsort((cols, rows))
        where = np.empty_like(order)
        where[order] = np.arange(len(order))
        return cls(
            n=n,
            nodes=nodes,
            edges=edges,
            cols=cols[order],
            forward=where[:edges],
            backward=where[edges : 2 * edges],
            to_super_source=int(where[2 * edges]),
            to_super_sink=int(where[2 * edges + 1]),
            indptr=np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=nodes))]),
        )


class _Solver:
    """Certified max-flows of copies of ``graph`` that differ in their source and sink edges (see the module)."""

    def __init__(self, graph: np.ndarray, tolerance: float, targets: np.ndarray) -> None:
        self.tolerance = tolerance
        self.layers = graph.shape[0] - 1  # middle layers: graph layers 1..L-1
        self.n = n = graph.shape[-1]
        self.middle = graph[1:-1]  # [K, n, n]
        m, i, k = np.nonzero(self.middle > 0)
        self.mid_from = 1 + m * n + k  # (middle layer m, key k) ...
        self.mid_to = 1 + (m + 1) * n + i  # ... -> (middle layer m + 1, query i)
        self.mid_cap = self.middle[m, i, k]
        if self.prunes(graph):  # strong edges, and every edge into the targets' own positions
            self.active = (self.mid_cap >= _PRUNE_RELATIVE / n) | np.isin(i, targets)
        else:
            self.active = np.ones(len(self.mid_cap), dtype=bool)

    @staticmethod
    def prunes(graph: np.ndarray) -> bool:
        return (graph.shape[0] - 2) * graph.shape[-1] ** 2 > _PRUNE_ABOVE

    # ------------------------------------------------------------------------------------------------
    def solve(self, sources: np.ndarray, sinks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        upper = np.minimum(sources.sum(-1), sinks.sum(-1))  # the source star and the sink star are cuts
        lower = np.zeros(len(upper))
        todo = np.nonzero(upper > self.tolerance)[0]
        start = 0
        while start < len(todo):
            entries = 2 * (2 * self.n + int(self.active.sum())) + 2
            chunk = todo[start : start + max(1, _MAX_ENTRIES // entries)]
            start += len(chunk)
            upper[chunk], lower[chunk] = self._solve_chunk(sources[chunk], sinks[chunk], upper[chunk])
        return upper, np.maximum(upper - lower, 0.0)

    def _solve_chunk(self, sources: np.ndarray, sinks: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.n
        upper = upper.copy()
        lower = np.zeros_like(upper)
        live = np.arange(len(upper))  # copies not certified yet
        active = np.nonzero(self.active)[0]
        flow: np.ndarray | None = None  # [live, edges]: source edges, active middle edges, sink edges
        for round_ in range(_MAX_ROUNDS):
            if round_ >= _FULL_AFTER_ROUNDS:
                self.active[:] = True
            if len(active) != int(self.active.sum()):  # edges were added: carry the flows over
                grown = np.nonzero(self.active)[0]
                if flow is not None:
                    carried = np.zeros((len(flow), 2 * n + len(grown)))
                    carried[:, :n], carried[:, -n:] = flow[:, :n], flow[:, -n:]
                    carried[:, n + np.searchsorted(grown, active)] = flow[:, n:-n]
                    flow = carried
                active = grown
            template = _Template.build(n, self.layers, self.mid_from[active], self.mid_to[active])
            gained, sent, scale, reach = self._round(
                template, sources[live], self.mid_cap[active], sinks[live], flow, upper[live] - lower[live]
            )
            lower[live] += gained
            upper[live] = np.minimum(upper[live], self._cut(reach, sources[live], sinks[live]))
            unfinished = upper[live] - lower[live] > self.tolerance
            if not unfinished.any():
                return upper, lower
            moved = sent[unfinished][:, template.forward] / scale
            flow = moved if flow is None else flow[unfinished] + moved
            self._add_crossing_edges(reach[unfinished])
            live = live[unfinished]
        warnings.warn(
            f"attention flow: {len(live)} max-flows not certified to {self.tolerance:g} after {_MAX_ROUNDS} rounds "
            f"(largest remaining bound {float((upper - lower)[live].max()):.3g})",
            RuntimeWarning,
            stacklevel=5,
        )
        return upper, lower

    @staticmethod
    def _round(
        template: _Template,
        sources: np.ndarray,
        middle: np.ndarray,
        sinks: np.ndarray,
        flow: np.ndarray | None,
        bound: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """One integer max-flow over the residual networks of ``len(bound)`` copies, joined.

        Returns the value gained per copy, the integer flow of every entry ``[copies, entries]`` with the
        scale that divides it, and the nodes reachable from each source in the residual ``[copies, nodes]``.
        """
        copies, nodes = len(bound), template.nodes
        clip = float(bound.max())  # no copy can carry more, so no edge needs to hold more
        scale = 2.0 ** math.floor(math.log2(_SCALE_LIMIT / clip))

        def integer(values: np.ndarray) -> np.ndarray:
            return np.floor(np.clip(values, 0.0, clip) * scale).astype(np.int32)

        if flow is None:  # the first round: no flow yet, the middle is the same in every copy
            shared = np.zeros(template.entries, np.int32)
            shared[template.forward[template.n : -template.n]] = integer(middle)
            data = np.tile(shared, (copies, 1))
            data[:, template.forward[: template.n]] = integer(sources)
            data[:, template.forward[-template.n :]] = integer(sinks)
        else:
            capacity = np.concatenate([sources, np.broadcast_to(middle, (copies, len(middle))), sinks], axis=1)
            data = np.zeros((copies, template.entries), np.int32)
            data[:, template.forward] = integer(capacity - flow)
            data[:, template.backward] = integer(flow)
        # The super edges must never saturate (a saturated one would hide the copy's cut): more than all the
        # copy's source can send. (Rounding noise can let a copy carry a few units more than bound * scale.)
        out_of_source = data[:, template.forward[: template.n]].sum(-1, dtype=np.int64)
        never_full = np.minimum(out_of_source + 1, np.iinfo(np.int32).max).astype(np.int32)
        data[:, template.to_super_sink] = never_full
        super_sink = 1 + copies * nodes
        offset = 1 + np.arange(copies, dtype=np.int32) * nodes
        columns = offset[:, None] + template.cols.astype(np.int32)[None, :]
        columns[:, template.to_super_source] = 0
        columns[:, template.to_super_sink] = super_sink
        indices = np.concatenate([offset, columns.ravel(), offset + (nodes - 1)])
        values = np.concatenate([never_full, data.ravel(), np.zeros(copies, np.int32)])
        row_ends = (np.arange(copies)[:, None] * template.entries + template.indptr[None, 1:]).ravel()
        indptr = np.concatenate([[0, copies], copies + row_ends, [copies + row_ends[-1] + copies]]).astype(np.int32)
        network = sp.csr_array((values, indices, indptr), shape=(super_sink + 1, super_sink + 1))
        network.has_sorted_indices = True
        result = maximum_flow(network, 0, super_sink)
        sent = result.flow
        if sent.nnz != network.nnz or not np.array_equal(sent.indptr, indptr):
            raise RuntimeError("scipy's maximum_flow changed the network's structure; cannot map the flow back")
        sent_values = np.asarray(sent.data)
        residual = sp.csr_array(((values > sent_values).view(np.int8), indices, indptr), shape=network.shape)
        residual.eliminate_zeros()
        reached = breadth_first_order(residual, 0, directed=True, return_predecessors=False)
        reach = np.zeros(super_sink + 1, dtype=bool)
        reach[reached] = True
        per_copy = sent_values[copies : copies + copies * template.entries].reshape(copies, template.entries)
        return sent_values[:copies] / scale, per_copy, scale, reach[1:super_sink].reshape(copies, nodes)

    def _cut(self, reach: np.ndarray, sources: np.ndarray, sinks: np.ndarray) -> np.ndarray:
        """Capacity, on the full real-valued graph, of the cut ``reach`` (source side) of every copy."""
        if reach[:, -1].any() or not reach[:, 0].all():
            raise RuntimeError("internal error: a residual cut does not separate a source from its sink")
        inside = reach[:, 1:-1].reshape(len(reach), self.layers, self.n).astype(np.float64)  # [C, K + 1, n]
        cut = (sources * (1.0 - inside[:, 0])).sum(-1) + (sinks * inside[:, -1]).sum(-1)
        for layer, matrix in enumerate(self.middle):  # edges (layer, k) -> (layer + 1, i) leaving the inside
            cut += ((inside[:, layer] @ matrix.T) * (1.0 - inside[:, layer + 1])).sum(-1)
        return cut

    def _add_crossing_edges(self, reach: np.ndarray) -> None:
        """Activate every missing middle edge that crosses the cut of an unfinished copy."""
        missing = np.nonzero(~self.active)[0]
        step = max(1, _MAX_ENTRIES // max(1, len(reach)))
        for start in range(0, len(missing), step):
            part = missing[start : start + step]
            crossing = (reach[:, self.mid_from[part]] & ~reach[:, self.mid_to[part]]).any(0)
            self.active[part[crossing]] = True
