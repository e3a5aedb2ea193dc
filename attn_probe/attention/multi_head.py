"""Multi-head scaled dot-product attention, with every intermediate on a named hook point.

    logits  = q · k / (sqrt(d_k) * temperature)  [+ position term]      # [batch, heads, q, k]
    weights = softmax(logits over the keys a query may attend to)        # masked keys: exactly 0
    output  = out_proj(concat_h(weights @ v [+ position value term]))    # [batch, q, embed]

Two paths compute it. When nobody needs the weights (``need_weights=False`` and no hook on the
logits, position term or weights) it runs through ``torch.nn.functional.scaled_dot_product_attention``
(fused kernels, no ``[q, k]`` matrix kept); otherwise it forms the weights explicitly. Both give the
same output (within 1e-6 in float32), so what a probe sees is what the model computes.

Efficient kinds (``kind=``; see :func:`make_attention_kind`): ``"sliding"`` (a window with global tokens)
and ``"block_sparse"`` (blocks and strides) restrict softmax attention to a pattern
(:mod:`~attn_probe.attention.sparse`); ``"linear"`` replaces it with kernel attention
(:mod:`~attn_probe.attention.linear`). Without weights they never form a ``[q, k]`` matrix (``O(n w)``,
resp. ``O(n)``). With weights they take the same explicit path as full attention and hand back the same
dense ``[batch, heads, q, k]`` weights: zeros outside a sparse pattern; the implied, row-normalised
``φ(q)·φ(k)`` for linear attention. Hooks and interventions see and edit those, as for full attention.

Hook points (names relative to the module; shapes as they flow):

    hook_q            [batch, heads, q, head_dim]     after the projection, before any rotation
    hook_k            [batch, kv_heads, k, head_dim]  idem
    hook_v            [batch, kv_heads, k, head_dim]
    hook_position     [batch or 1, heads, q, k]       additive position term (logit variants only)
    hook_logits       [batch, heads, q, k]            content + position, before masking
    hook_weights      [batch, heads, q, k]            after softmax and masking, before dropout
    hook_head_output  [batch, heads, q, head_dim]     weights @ v (+ value term), before out_proj
    hook_output       [batch, q, embed]               after out_proj
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attn_probe.attention.hooks import HookPoint
from attn_probe.attention.linear import LINEAR_POSITIONS, LinearAttention, kernel_logits, linear_attention
from attn_probe.attention.masks import combine_masks, normalize_mask
from attn_probe.attention.position import PositionEncoding
from attn_probe.attention.sparse import BlockSparse, SlidingWindow, SparsePattern, sparse_attention, supports_position

#: The attention kinds a model can be built with (``TransformerConfig.attention``).
ATTENTION_KINDS = ("full", "sliding", "block_sparse", "linear")
AttentionKind = SlidingWindow | BlockSparse | LinearAttention


def make_attention_kind(name: str = "full", **options: Any) -> AttentionKind | None:
    """The attention kind ``name`` with its options; None for full attention.

    - ``"full"``: no options.
    - ``"sliding"``: ``window`` (keys on each side, required), ``global_tokens`` (the first g tokens, or a
      list of indices; default 0).
    - ``"block_sparse"``: ``block_size`` (required), ``stride`` (0 = none), ``global_tokens``.
    - ``"linear"``: ``chunk_size`` (of the causal running sums; default 64).

    >>> make_attention_kind("sliding", window=16, global_tokens=1)
    SlidingWindow(window=16, global_tokens=1)
    """
    builders: dict[str, Any] = {"sliding": SlidingWindow, "block_sparse": BlockSparse, "linear": LinearAttention}
    if name == "full":
        if options:
            raise ValueError(f"full attention takes no options, got {sorted(options)}")
        return None
    if name not in builders:
        raise ValueError(f"unknown attention kind {name!r}; choose one of {', '.join(ATTENTION_KINDS)}")
    try:
        return builders[name](**options)
    except TypeError as error:
        fields = ", ".join(f.name for f in dataclasses.fields(builders[name]))
        raise ValueError(f"bad options {options} for {name!r} attention ({error}); its options are: {fields}") from None


@dataclass
class LogitParts:
    """A head's logits split into what the tokens say and what their positions add.

    All ``[batch, heads, q, k]``. ``content`` is ``q·k * scale`` of the projected token
    representations with no position information applied in this module; ``position = total -
    content``. ``exact`` is True when the position part is a separate additive term (Shaw keys, T5,
    ALiBi); for rotary and absolute variants it is the interaction that position adds to the dot
    product, so it also depends on the content.
    """

    content: torch.Tensor
    position: torch.Tensor
    total: torch.Tensor
    exact: bool


class MultiHeadAttention(nn.Module):
    """Multi-head attention with pluggable positions, grouped-query heads and hook points.

    Args:
        embed_dim: width of the query input and of the output.
        num_heads: number of query heads.
        position: a :class:`PositionEncoding` (or None for no position information).
        dropout: dropout on the attention weights while training.
        bias: biases on the q/k/v/output projections.
        num_kv_heads: key/value heads for grouped-query attention (default: ``num_heads``).
        head_dim: width of a head (default: ``embed_dim // num_heads``).
        kdim, vdim: widths of the key and value inputs for cross-attention (default: ``embed_dim``).
        temperature: divides the logits with ``sqrt(d_k)``: ``q·k / (sqrt(d_k) * temperature)``.
        scale: replaces ``1 / sqrt(d_k)`` altogether (T5 uses 1.0); the temperature still applies.
        kind: ``None`` / ``"full"`` (softmax over all keys), a :class:`SlidingWindow`, :class:`BlockSparse` or
            :class:`LinearAttention` (or its name with default options, see :func:`make_attention_kind`).
            Sparse kinds and causal linear attention are self-attention (as many queries as keys). Linear
            attention has no logit scale, temperature or attention dropout, and takes only the position
            variants of ``LINEAR_POSITIONS``.

    >>> attention = MultiHeadAttention(64, 4, position=Rotary(16))
    >>> output, weights = attention(x, mask=padding_mask, need_weights=True)  # weights [b, 4, n, n]
    >>> local = MultiHeadAttention(64, 4, kind=SlidingWindow(window=8, global_tokens=1))
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        position: PositionEncoding | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        kdim: int | None = None,
        vdim: int | None = None,
        temperature: float = 1.0,
        scale: float | None = None,
        kind: AttentionKind | str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(kind, str):
            kind = make_attention_kind(kind)
        _check_kind(kind, position, dropout, temperature, scale)
        self.kind = kind
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(
                    f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}: pick a divisor "
                    "or pass head_dim explicitly"
                )
            head_dim = embed_dim // num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} must be a multiple of num_kv_heads {num_kv_heads}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.temperature = temperature
        self.scale = (head_dim**-0.5 if scale is None else scale) / temperature
        self.position = position

        self.q_proj = nn.Linear(embed_dim, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, num_kv_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias)

        self.hook_q = HookPoint("[batch, heads, q, head_dim]")
        self.hook_k = HookPoint("[batch, kv_heads, k, head_dim]")
        self.hook_v = HookPoint("[batch, kv_heads, k, head_dim]")
        self.hook_position = HookPoint("[batch or 1, heads, q, k]")
        self.hook_logits = HookPoint("[batch, heads, q, k]")
        self.hook_weights = HookPoint("[batch, heads, q, k]")
        self.hook_head_output = HookPoint("[batch, heads, q, head_dim]")
        self.hook_output = HookPoint("[batch, q, embed]")

    # ----------------------------------------------------------------------------------------------
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``query`` ``[batch, q, embed]`` to ``key``/``value`` ``[batch, k, kdim/vdim]``.

        Self-attention when ``key`` and ``value`` are None. ``mask``: True/1 = may attend, as
        ``[batch, k]``, ``[batch, q, k]`` or ``[batch, heads, q, k]``. ``positions``: token positions
        ``[n]`` or ``[batch, n]`` for self-attention (default ``0..n-1``).

        Returns ``(output [batch, q, embed], weights [batch, heads, q, k] or None)``. Weights are the
        distribution before dropout; a query with no key to attend to gets all-zero weights and a
        zero head output.
        """
        if (key is None) != (value is None):
            raise ValueError("pass both key and value for cross-attention, or neither for self-attention")
        self._check_inputs(query, key)
        query_positions, key_positions = self._positions(query, key, positions)
        query, key, value = self._embed_positions(query, key, value, query_positions, key_positions)

        q, k, v = self._project(query, key, value)  # [b, h, q, d], [b, kv, k, d], [b, kv, k, d]
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.position is not None:
            q_rotated, k_rotated = self.position.rotate(q, k, query_positions, key_positions)
        else:
            q_rotated, k_rotated = q, k
        k_rotated, v = self._repeat_kv(k_rotated), self._repeat_kv(v)  # [b, h, k, d]

        batch, num_queries = q.shape[0], q.shape[2]
        if isinstance(self.kind, SparsePattern):
            head_output, weights_out = self._sparse(
                q, q_rotated, k_rotated, v, mask, causal, need_weights, query_positions, key_positions
            )
        elif isinstance(self.kind, LinearAttention):
            head_output, weights_out = self._linear(q_rotated, k_rotated, v, mask, causal, need_weights)
        else:
            head_output, weights_out = self._full(
                q, q_rotated, k_rotated, v, mask, causal, need_weights, query_positions, key_positions
            )
        head_output = self.hook_head_output(head_output)  # [b, h, q, d]

        merged = head_output.transpose(1, 2).reshape(batch, num_queries, self.num_heads * self.head_dim)
        output = self.hook_output(self.out_proj(merged))  # [b, q, embed]
        return output, weights_out

    @property
    def kind_name(self) -> str:
        """``"full"``, ``"sliding"``, ``"block_sparse"`` or ``"linear"``."""
        return "full" if self.kind is None else self.kind.name

    # ----------------------------------------------------------------------------------------------
    def _full(self, q, q_rotated, k_rotated, v, mask, causal, need_weights, query_positions, key_positions):
        batch, num_queries, num_keys = q.shape[0], q.shape[2], k_rotated.shape[2]
        position_term = None
        if self.position is not None:
            position_term = self.position.logit_term(q, query_positions, key_positions, self.scale)
            if position_term is not None:
                position_term = self.hook_position(position_term)

        explicit = need_weights or self._weights_observed()
        if not explicit and causal and mask is None and position_term is None and num_queries == num_keys:
            # The fused kernel applies causality itself: no mask tensor to build.
            head_output = F.scaled_dot_product_attention(
                q_rotated, k_rotated, v, dropout_p=self._dropout_p(), is_causal=True, scale=self.scale
            )
            weights_out = None
        else:
            allowed = combine_masks(mask, causal, batch, num_queries, num_keys, q.device)  # [b|1, h|1, q, k]
            # Rows with no key to attend to come from a user mask, or from causality with more queries than keys
            # (the queries are the last positions, so the first q - k precede every key and would softmax to
            # NaN); causality alone with q <= k keeps each query's diagonal.
            may_lack_keys = mask is not None or (causal and num_queries > num_keys)
            no_key = _rows_without_keys(allowed) if may_lack_keys else None  # [b|1, h|1, q, 1] or None
            if explicit:
                head_output, weights = self._explicit(
                    q_rotated, k_rotated, v, position_term, allowed, no_key, query_positions, key_positions
                )
                weights_out = weights if need_weights else None
            else:
                head_output = self._fused(q_rotated, k_rotated, v, position_term, allowed, no_key)
                weights_out = None
        return head_output, weights_out

    def _sparse(self, q, q_rotated, k_rotated, v, mask, causal, need_weights, query_positions, key_positions):
        """A sparse pattern: the compact ``O(n w)`` path, or the explicit path with the pattern as a dense mask."""
        batch, n = q.shape[0], q.shape[2]
        if k_rotated.shape[2] != n:
            raise ValueError(
                f"{self.kind.name} attention is self-attention over one sequence: got {n} queries and "
                f"{k_rotated.shape[2]} keys"
            )
        explicit = (
            need_weights or self.hook_logits.has_hooks or self.hook_weights.has_hooks or self.hook_position.has_hooks
        )
        if not explicit:
            allowed = normalize_mask(mask.to(q.device), batch, n, n) if mask is not None else None
            head_output = sparse_attention(
                self.kind,
                q_rotated,
                k_rotated,
                v,
                scale=self.scale,
                mask=allowed,
                causal=causal,
                position=self.position,
                query_positions=query_positions,
                key_positions=key_positions,
                q_plain=q,
                dropout_p=self._dropout_p(),
            )
            return head_output, None
        position_term = None
        if self.position is not None:
            position_term = self.position.logit_term(q, query_positions, key_positions, self.scale)
            if position_term is not None:
                position_term = self.hook_position(position_term)
        pattern = self.kind.dense_mask(n, q.device)[None, None]  # [1, 1, n, n]
        allowed = combine_masks(mask, causal, batch, n, n, q.device)
        allowed = pattern if allowed is None else allowed & pattern
        head_output, weights = self._explicit(
            q_rotated, k_rotated, v, position_term, allowed, _rows_without_keys(allowed), query_positions, key_positions
        )
        return head_output, weights if need_weights else None

    def _linear(self, q_rotated, k_rotated, v, mask, causal, need_weights):
        """Linear attention: ``O(n)`` running sums, or the implied weights through the explicit path."""
        batch, num_queries, num_keys = q_rotated.shape[0], q_rotated.shape[2], k_rotated.shape[2]
        allowed = normalize_mask(mask.to(q_rotated.device), batch, num_queries, num_keys) if mask is not None else None
        key_padding_only = allowed is None or (allowed.shape[1] == 1 and allowed.shape[2] == 1)
        explicit = need_weights or self.hook_logits.has_hooks or self.hook_weights.has_hooks
        if not explicit and key_padding_only and not (causal and num_queries != num_keys):
            head_output = linear_attention(
                q_rotated,
                k_rotated,
                v,
                key_padding=None if allowed is None else allowed[:, 0, 0, :],
                causal=causal,
                chunk_size=self.kind.chunk_size,
            )
            return head_output, None
        # Weights wanted, or a mask that is not a key padding (per query or per head): the quadratic form.
        allowed = combine_masks(mask, causal, batch, num_queries, num_keys, q_rotated.device)
        no_key = _rows_without_keys(allowed) if allowed is not None else None
        head_output, weights = self._explicit(q_rotated, k_rotated, v, None, allowed, no_key, None, None)
        return head_output, weights if need_weights else None

    # ----------------------------------------------------------------------------------------------
    def split_logits(
        self, query: torch.Tensor, key: torch.Tensor | None = None, *, positions: torch.Tensor | None = None
    ) -> LogitParts:
        """Split each head's logits into content and position parts (no masking, no hooks).

        >>> parts = attention.split_logits(x)
        >>> share = parts.position.var(-1).mean() / parts.total.var(-1).mean()
        """
        self._check_inputs(query, key)
        value = key
        query_positions, key_positions = self._positions(query, key, positions)
        q_plain, k_plain, _ = self._project(query, key, value)
        content = self._logits(q_plain, self._repeat_kv(k_plain))  # [b, h, q, k]
        if self.position is None:
            return LogitParts(content, torch.zeros_like(content), content, exact=True)
        term = self.position.logit_term(q_plain, query_positions, key_positions, self.scale)
        if term is not None:
            position = torch.broadcast_to(term, content.shape)
            return LogitParts(content, position, content + position, exact=True)
        # Rotary or absolute: rebuild the logits the forward pass computes, take the difference.
        q_in, k_in, v_in = self._embed_positions(query, key, value, query_positions, key_positions)
        q, k, _ = self._project(q_in, k_in, v_in)
        q, k = self.position.rotate(q, k, query_positions, key_positions)
        total = self._logits(q, self._repeat_kv(k))
        return LogitParts(content, total - content, total, exact=False)

    # ----------------------------------------------------------------------------------------------
    def _check_inputs(self, query: torch.Tensor, key: torch.Tensor | None) -> None:
        if query.dim() != 3:
            raise ValueError(f"query must be [batch, q, embed], got shape {tuple(query.shape)}")
        if query.shape[-1] != self.embed_dim:
            raise ValueError(f"query has width {query.shape[-1]}, but this attention expects {self.embed_dim}")
        if key is not None and (key.dim() != 3 or key.shape[0] != query.shape[0]):
            raise ValueError(
                f"key must be [batch, k, kdim] with the query's batch {query.shape[0]}, got {tuple(key.shape)}"
            )

    def _positions(
        self, query: torch.Tensor, key: torch.Tensor | None, positions: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Query and key positions; None when this module has no position variant to feed."""
        num_queries = query.shape[1]
        if positions is not None:
            if key is not None:
                raise ValueError("positions are for self-attention; cross-attention uses 0..n-1 on each side")
            if positions.shape[-1] != num_queries or positions.dim() not in (1, 2):
                raise ValueError(
                    f"positions must be [n] or [batch, n] with n={num_queries}, got {tuple(positions.shape)}"
                )
            return positions, positions
        if self.position is None:
            return None, None
        query_positions = torch.arange(num_queries, device=query.device)
        if key is None:
            return query_positions, query_positions
        return query_positions, torch.arange(key.shape[1], device=query.device)

    def _embed_positions(self, query, key, value, query_positions, key_positions):
        """Absolute variants act on the inputs (a model applies them once to its embeddings instead)."""
        if self.position is None or self.position.acts_on != "input":
            return query, key, value
        query = self.position.embed(query, query_positions)
        if key is None:
            return query, None, None
        return query, self.position.embed(key, key_positions), self.position.embed(value, key_positions)

    def _project(self, query, key, value):
        source_k = query if key is None else key
        source_v = query if value is None else value
        return (
            self._split_heads(self.q_proj(query), self.num_heads),  # [b, h, q, d]
            self._split_heads(self.k_proj(source_k), self.num_kv_heads),  # [b, kv, k, d]
            self._split_heads(self.v_proj(source_v), self.num_kv_heads),  # [b, kv, k, d]
        )

    def _split_heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, heads, self.head_dim).transpose(1, 2)

    def _repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        """Grouped-query attention: each key/value head serves ``num_heads / num_kv_heads`` query heads."""
        groups = self.num_heads // self.num_kv_heads
        return x if groups == 1 else x.repeat_interleave(groups, dim=1)

    def _logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if isinstance(self.kind, LinearAttention):
            return kernel_logits(q, k)  # log(φ(q)·φ(k)): its softmax is the implied attention
        return (q @ k.transpose(-1, -2)) * self.scale  # [b, h, q, k]

    def _weights_observed(self) -> bool:
        return (
            self.hook_logits.has_hooks
            or self.hook_weights.has_hooks
            or (self.position is not None and self.position.needs_weights)
        )

    def _dropout_p(self) -> float:
        return self.dropout if self.training else 0.0

    def _explicit(self, q, k, v, position_term, allowed, no_key, query_positions, key_positions):
        logits = self._logits(q, k)  # [b, h, q, k]
        if position_term is not None:
            logits = logits + position_term
        logits = self.hook_logits(logits)
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(q.dtype)  # [b, h, q, k]
        if no_key is not None:
            # A query with no allowed key softmaxes -inf everywhere (NaN): give it zero weight instead,
            # without hiding NaNs that come from the inputs of any other row.
            weights = weights.masked_fill(no_key, 0.0)
        weights = self.hook_weights(weights)
        dropped = F.dropout(weights, self.dropout, self.training) if self.dropout else weights
        head_output = dropped @ v  # [b, h, q, d]
        if self.position is not None:
            value_term = self.position.value_term(dropped, query_positions, key_positions)
            if value_term is not None:
                head_output = head_output + value_term
        return head_output, weights

    def _fused(self, q, k, v, position_term, allowed, no_key):
        attn_mask = position_term
        if allowed is not None:
            if no_key is not None:
                allowed = allowed | no_key  # rows with no key would give NaN: open them, zero them below
            attn_mask = allowed if attn_mask is None else attn_mask.masked_fill(~allowed, float("-inf"))
        output = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self._dropout_p(), scale=self.scale
        )  # [b, h, q, d]
        return output if no_key is None else output.masked_fill(no_key, 0.0)


def _check_kind(
    kind: AttentionKind | None, position: PositionEncoding | None, dropout: float, temperature: float, scale
) -> None:
    if kind is not None and not isinstance(kind, (SlidingWindow, BlockSparse, LinearAttention)):
        raise TypeError(
            f"kind must be None, a name ({', '.join(ATTENTION_KINDS)}), SlidingWindow, BlockSparse or "
            f"LinearAttention; got {type(kind).__name__}"
        )
    if isinstance(kind, SparsePattern) and not supports_position(position):
        raise ValueError(
            f"position variant {type(position).__name__} adds a logit term that {kind.name} attention cannot "
            "evaluate on its pattern alone; use alibi, t5, shaw, rotary, learned, sinusoidal or none"
        )
    if isinstance(kind, LinearAttention):
        if position is not None and position.name not in LINEAR_POSITIONS:
            raise ValueError(
                f"linear attention cannot use position variant {position.name!r}: it adds a term to softmax "
                "logits, and kernel attention has no logits to add it to (no feature-map form); choose one of "
                f"{', '.join(LINEAR_POSITIONS)}"
            )
        if dropout:
            raise ValueError("linear attention has no attention-weight dropout (its O(n) form never forms weights)")
        if temperature != 1.0 or scale is not None:
            raise ValueError("linear attention has no softmax, so no logit scale or temperature: leave them unset")


def _rows_without_keys(allowed: torch.Tensor) -> torch.Tensor | None:
    """``[b|1, h|1, q, 1]`` True where a query may attend to nothing.

    On the CPU, None when no such row exists (the usual case), so the big tensors are not filled. On
    an accelerator that check would wait for the device to catch up (a sync per layer, which costs
    more than the fill), so the mask is returned as it is.
    """
    no_key = ~allowed.any(dim=-1, keepdim=True)
    if no_key.device.type == "cpu" and not bool(no_key.any()):
        return None
    return no_key
