"""Sparse attention patterns: a sliding window with global tokens (Longformer), and block-sparse / strided.

A pattern says which keys each query may see; inside it attention is ordinary softmax attention, so a
sparse head is *exactly* full attention with the pattern as an extra mask (that is how the tests check
it). What changes is the cost:

- **Without weights** (``need_weights=False`` and no hook on the logits, position term or weights),
  :func:`sparse_attention` never builds a ``[q, k]`` matrix. It computes the logits of each query only
  for the keys of its pattern, in a compact ``[batch, heads, n, slots]`` layout: for a window, blocks of
  ``B = max(window, 16)`` queries against their own and the neighbouring key blocks (``3B`` slots, ``2B``
  causal); for block-sparse, each block against itself, plus each query's residue class ``mod stride``;
  plus a column per global token. Every global token's own row is computed against all keys. Time and
  memory are ``O(n * (window + globals))`` for a window, ``O(n * (block_size + n / stride + globals))``
  for block-sparse (``stride=0``: no strided part, ``O(n * block_size)``; ``stride ~ sqrt(n)`` gives
  Child et al.'s ``O(n sqrt n)``).
- **With weights** (requested, or a hook that needs them), the module takes its explicit path with the
  pattern as a dense ``[n, n]`` mask: the weights handed back and seen by ``hook_weights`` are the usual
  dense ``[batch, heads, q, k]``, with **exact zeros outside the pattern**, rows summing to 1 over the
  visible keys. Every attention-derived method and every intervention reads them as it reads full
  attention. That path is ``O(n^2)`` in memory, on purpose: it is only taken when someone asked for the
  ``n x n`` matrix.

Position variants: absolute (``learned``, ``sinusoidal``) and ``rotary`` act on the inputs / queries and
keys as usual; the logit variants (``alibi``, ``t5``, ``shaw``, Shaw's value term included) are evaluated
only at the pattern's (query, key) pairs on the compact path.

Patterns are over *sequence indices* (columns), anchored at index 0: global tokens ``g`` are the first
``g`` columns (the ``[CLS]`` of an encoder) and blocks start at column 0. With right padding (what our
tokenizers and models use) a padded example sees exactly what it sees alone; with left padding the
blocks and the global columns would move.

Self-attention only (queries and keys of one sequence, ``q == k``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from attn_probe.attention.position import ALiBi, PositionEncoding, RelativeShaw, T5RelativeBias, t5_bucket

#: Smallest query block of the sliding-window path: tiny windows would otherwise mean many tiny matmuls.
MIN_WINDOW_BLOCK = 16


def _global_spec(spec: int | Sequence[int]) -> int | tuple[int, ...]:
    if isinstance(spec, bool):
        raise TypeError("global_tokens is a count (the first g tokens) or a list of token indices, not a bool")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"global_tokens must be >= 0, got {spec}")
        return spec
    positions = tuple(sorted({int(p) for p in spec}))
    if positions and positions[0] < 0:
        raise ValueError(f"global token indices must be >= 0 (counted from the start), got {positions[0]}")
    return positions


class SparsePattern(ABC):
    """Base of the sparse patterns (frozen dataclasses with a ``global_tokens`` field: the first ``g``
    tokens, or a list of token indices)."""

    name: ClassVar[str] = "sparse"
    global_tokens: int | tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "global_tokens", _global_spec(self.global_tokens))

    # -- what a subclass defines ------------------------------------------------------------------
    @abstractmethod
    def local_visible(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Whether ``query`` may see ``key`` (broadcasting index tensors), global tokens left aside."""

    @abstractmethod
    def local_segments(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> list[_Segment]:
        """The compact segments that cover :meth:`local_visible` exactly once per (query, key), from scaled
        queries; with ``causal`` they may leave out slots that only hold future keys."""

    # -- shared -----------------------------------------------------------------------------------
    def global_index(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        """``[g]`` the global token indices that exist in a sequence of ``n`` (later ones are ignored)."""
        if isinstance(self.global_tokens, int):
            return torch.arange(min(self.global_tokens, n), device=device)
        return torch.tensor([p for p in self.global_tokens if p < n], dtype=torch.long, device=device)

    def dense_mask(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        """``[n, n]`` bool, True where query ``i`` may see key ``j``: the pattern as a full-attention mask."""
        index = torch.arange(n, device=device)
        visible = self.local_visible(index[:, None], index[None, :])
        glob = self.global_index(n, device)
        if len(glob):
            visible[glob, :] = True
            visible[:, glob] = True
        return visible


@dataclass(frozen=True)
class SlidingWindow(SparsePattern):
    """Query ``i`` sees keys ``j`` with ``|i - j| <= window`` (``2 window + 1`` keys; ``window + 1`` causal),
    plus the global tokens, which see and are seen by every token (Beltagy et al. 2020, Longformer).

    >>> MultiHeadAttention(64, 4, kind=SlidingWindow(window=8, global_tokens=1))
    """

    name: ClassVar[str] = "sliding"
    window: int
    global_tokens: int | tuple[int, ...] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"a sliding window needs window >= 1 (keys on each side of a query), got {self.window!r}")

    def local_visible(self, query, key):
        return (query - key).abs() <= self.window

    def local_segments(self, q, k, v, causal=False):
        # >= window, so the band fits a block and its two neighbours; or the whole sequence (one block)
        block = max(1, min(max(self.window, MIN_WINDOW_BLOCK), q.shape[2]))
        offsets = (-1, 0) if causal else (-1, 0, 1)  # causal: the next block holds only future keys
        return [_block_segment(q, k, v, block, offsets, self.local_visible)]


@dataclass(frozen=True)
class BlockSparse(SparsePattern):
    """Query ``i`` sees the keys of its own block (``i // block_size == j // block_size``) and, with
    ``stride > 0``, every key ``j`` with ``(i - j) % stride == 0`` (Child et al. 2019's strided pattern),
    plus the global tokens.

    >>> MultiHeadAttention(64, 4, kind=BlockSparse(block_size=32, stride=32, global_tokens=1))
    """

    name: ClassVar[str] = "block_sparse"
    block_size: int
    stride: int = 0
    global_tokens: int | tuple[int, ...] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block-sparse attention needs block_size >= 1, got {self.block_size!r}")
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 0:
            raise ValueError(f"stride must be >= 0 (0: no strided part), got {self.stride!r}")

    def _same_block(self, query, key):
        return torch.div(query, self.block_size, rounding_mode="floor") == torch.div(
            key, self.block_size, rounding_mode="floor"
        )

    def local_visible(self, query, key):
        visible = self._same_block(query, key)
        if self.stride:
            visible = visible | ((query - key) % self.stride == 0)
        return visible

    def local_segments(self, q, k, v, causal=False):
        block = max(1, min(self.block_size, q.shape[2]))  # a sequence shorter than a block is one block
        segments = [_block_segment(q, k, v, block, (0,), lambda query, key: True)]
        if self.stride:

            def not_in_block(query, key):
                return ~self._same_block(query, key)

            segments.append(_strided_segment(q, k, v, self.stride, not_in_block))
        return segments


# --------------------------------------------------------------------------------------------------
# The compact computation.


@dataclass
class _Segment:
    """Some keys of every query: ``logits [b, h, n, W]`` (content, scaled), ``keys [n, W]`` the key index of
    each slot (-1 where the slot holds no key of the pattern), ``apply(weights [b, h, n, W]) -> [b, h, n, d]``."""

    logits: torch.Tensor
    keys: torch.Tensor
    apply: Callable[[torch.Tensor], torch.Tensor]


Visible = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _pad_rows(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero rows appended along dim 2 up to ``length``."""
    extra = length - x.shape[2]
    return F.pad(x, (0, 0, 0, extra)) if extra else x


def _block_segment(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, offsets: tuple[int, ...], keep: Visible
) -> _Segment:
    """Query block ``t`` against key blocks ``t + offset`` (``offsets`` consecutive): ``len(offsets) * block``
    slots per query. ``q`` comes scaled."""
    batch, heads, n, _ = q.shape
    num_blocks = -(-n // block)
    length = num_blocks * block
    before, after = max(-offsets[0], 0), max(offsets[-1], 0)  # zero blocks around the sequence

    def near(x: torch.Tensor) -> torch.Tensor:  # [b, h, n, d] -> [b, h, nb, W, d]: key blocks t + offset
        extra = (before * block, length - n + after * block)
        padded = F.pad(x, (0, 0, *extra)) if any(extra) else x
        padded = padded.reshape(batch, heads, before + num_blocks + after, block, x.shape[-1])
        if len(offsets) == 1:
            return padded
        return torch.cat([padded[:, :, before + o : before + o + num_blocks] for o in offsets], dim=3)

    q_blocks = _pad_rows(q, length).reshape(batch, heads, num_blocks, block, q.shape[-1])
    k_near, v_near = near(k), near(v)
    width = len(offsets) * block
    logits = q_blocks @ k_near.transpose(-1, -2)  # [b, h, nb, B, W]
    del k_near

    device = q.device
    block_index = torch.arange(num_blocks, device=device)[:, None, None]  # [nb, 1, 1]
    query = block_index * block + torch.arange(block, device=device)[None, :, None]  # [nb, B, 1]
    slot = torch.arange(width, device=device)
    slot_offset = torch.tensor(offsets, device=device)[slot // block]  # [W]
    key = (block_index + slot_offset) * block + slot % block  # [nb, 1, W]
    valid = torch.broadcast_to((key >= 0) & (key < n) & keep(query, key), (num_blocks, block, width))
    keys = torch.where(valid, key, -1).reshape(length, width)[:n]

    def apply(weights: torch.Tensor) -> torch.Tensor:
        w = _pad_rows(weights, length).reshape(batch, heads, num_blocks, block, width)
        return (w @ v_near).reshape(batch, heads, length, -1)[:, :, :n]

    return _Segment(logits.reshape(batch, heads, length, width)[:, :, :n], keys, apply)


def _strided_segment(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stride: int, keep: Visible) -> _Segment:
    """Each query against the keys of its residue class ``mod stride``: ``ceil(n / stride)`` slots per query.
    ``q`` comes scaled."""
    batch, heads, n, _ = q.shape
    per_class = -(-n // stride)
    length = per_class * stride

    def by_class(x: torch.Tensor) -> torch.Tensor:  # [b, h, n, d] -> [b, h, stride, per_class, d]
        return _pad_rows(x, length).reshape(batch, heads, per_class, stride, x.shape[-1]).transpose(2, 3)

    q_class, k_class, v_class = by_class(q), by_class(k), by_class(v)
    logits = q_class @ k_class.transpose(-1, -2)  # [b, h, S, A, A]
    logits = logits.transpose(2, 3).reshape(batch, heads, length, per_class)[:, :, :n]  # row a*S + r

    query = torch.arange(length, device=q.device)[:, None]  # [L, 1]
    key = query % stride + stride * torch.arange(per_class, device=q.device)[None, :]  # [L, A]
    valid = (key < n) & keep(query, key)
    keys = torch.where(valid, key, -1)[:n]

    def apply(weights: torch.Tensor) -> torch.Tensor:
        w = _pad_rows(weights, length).reshape(batch, heads, per_class, stride, per_class).transpose(2, 3)
        out = w @ v_class  # [b, h, S, A, dv]
        return out.transpose(2, 3).reshape(batch, heads, length, -1)[:, :, :n]

    return _Segment(logits, keys, apply)


def _gather_mask(allowed: torch.Tensor, query_index: torch.Tensor, safe_keys: torch.Tensor) -> torch.Tensor:
    """The user mask ``[B|1, H|1, Q|1, K]`` read at each slot: ``[B|1, H|1, m, W]``."""
    if allowed.shape[-2] == 1:  # key padding: one row for every query
        return allowed[:, :, 0][..., safe_keys]
    rows = allowed[:, :, query_index]  # [B|1, H|1, m, K]
    return rows.gather(-1, safe_keys.expand(*rows.shape[:2], *safe_keys.shape))


def slot_distance(
    query_positions: torch.Tensor, key_positions: torch.Tensor, query_index: torch.Tensor, safe_keys: torch.Tensor
) -> torch.Tensor:
    """``key - query`` position for every slot: ``[m, W]``, or ``[batch, m, W]`` for per-example positions."""
    return key_positions[..., safe_keys] - query_positions[..., query_index].unsqueeze(-1)


def _as_heads(term: torch.Tensor, per_example: bool) -> torch.Tensor:
    """``[heads, m, W]`` or ``[batch, heads, m, W]`` -> 4-d."""
    return term if per_example else term.unsqueeze(0)


def slot_logit_term(
    position: PositionEncoding, q_rows: torch.Tensor, distance: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A logit variant's term at each slot ``[b|1, h, m, W]``, and Shaw's table index (for its value term).

    The same numbers as ``position.logit_term`` gives for the full ``[q, k]`` grid, read only where needed.
    """
    per_example = distance.dim() == 3
    if isinstance(position, ALiBi):
        slopes = position.slopes.view(-1, 1, 1)  # [heads, 1, 1]
        span = distance.abs().to(slopes.dtype)
        term = -slopes * (span.unsqueeze(1) if per_example else span)
        return _as_heads(term, per_example).to(q_rows.dtype), None
    if isinstance(position, T5RelativeBias):
        bucket = t5_bucket(
            distance,
            bidirectional=position.bidirectional,
            num_buckets=position.num_buckets,
            max_distance=position.max_distance,
        )
        values = position.bias(bucket).movedim(-1, -3)  # [(batch,) heads, m, W]
        return _as_heads(values, per_example).to(q_rows.dtype), None
    if isinstance(position, RelativeShaw):
        index = distance.clamp(-position.max_distance, position.max_distance) + position.max_distance
        index = (index.unsqueeze(1) if per_example else index[None, None]).expand(
            *q_rows.shape[:3], distance.shape[-1]
        )  # [b, h, m, W]
        per_distance = q_rows @ position.key_table.weight.to(q_rows.dtype).T  # [b, h, m, 2D + 1]
        return per_distance.gather(-1, index) * scale, index
    raise ValueError(
        f"position variant {type(position).__name__} adds a logit term that sparse attention cannot evaluate "
        "on its pattern alone; use alibi, t5, shaw, rotary, learned, sinusoidal or none"
    )


def supports_position(position: PositionEncoding | None) -> bool:
    """Whether the compact path can evaluate this variant on the pattern."""
    return (
        position is None or position.acts_on != "logits" or isinstance(position, (ALiBi, T5RelativeBias, RelativeShaw))
    )


def _attend_slots(
    logits: torch.Tensor,
    keys: torch.Tensor,
    query_index: torch.Tensor,
    *,
    causal: bool,
    mask: torch.Tensor | None,
    position: PositionEncoding | None,
    query_positions: torch.Tensor | None,
    key_positions: torch.Tensor | None,
    q_rows: torch.Tensor,
    scale: float,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax over each query's slots: ``weights [b, h, m, W]`` (0 on empty or masked slots) and Shaw's
    value term ``[b, h, m, d]`` (or None)."""
    visible = keys >= 0  # [m, W]
    if causal:
        visible = visible & (keys <= query_index[:, None])
    safe_keys = keys.clamp_min(0)
    shaw_index = None
    if position is not None and position.acts_on == "logits":
        distance = slot_distance(query_positions, key_positions, query_index, safe_keys)
        term, shaw_index = slot_logit_term(position, q_rows, distance, scale)
        logits = logits + term
    if mask is not None:
        visible = visible & _gather_mask(mask, query_index, safe_keys)  # [B|1, H|1, m, W]
    logits = logits.masked_fill(~visible, float("-inf"))
    weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(q_rows.dtype)
    no_key = ~visible.any(dim=-1, keepdim=True)
    if no_key.device.type != "cpu" or bool(no_key.any()):  # as MultiHeadAttention: no host sync on a GPU
        weights = weights.masked_fill(no_key, 0.0)
    if dropout_p:
        weights = F.dropout(weights, dropout_p)
    value_term = None
    if shaw_index is not None and position.value_table is not None:
        buckets = weights.new_zeros(*weights.shape[:3], position.value_table.num_embeddings)
        buckets.scatter_add_(-1, shaw_index, weights)  # [b, h, m, 2D + 1]: weight per clipped distance
        value_term = buckets @ position.value_table.weight.to(weights.dtype)
    return weights, value_term


def sparse_attention(
    pattern: SparsePattern,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    position: PositionEncoding | None = None,
    query_positions: torch.Tensor | None = None,
    key_positions: torch.Tensor | None = None,
    q_plain: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Head outputs ``[b, h, n, dv]`` of softmax attention restricted to ``pattern``, never forming ``[n, n]``.

    ``q``, ``k``, ``v``: ``[b, h, n, d]`` (rotated if rotary; grouped keys already repeated). ``mask``: the
    user mask as :func:`~attn_probe.attention.masks.normalize_mask` returns it (True = may attend), or None.
    ``q_plain``: the queries before any rotation (Shaw's logit term reads them; default ``q``). Position
    tensors are needed only for the logit variants. Equals full attention with ``pattern.dense_mask(n)``
    and'ed into the mask (a query with no visible key gets a zero output).
    """
    n = q.shape[2]
    if k.shape[2] != n:
        raise ValueError(f"sparse attention is self-attention: {n} queries but {k.shape[2]} keys")
    q_plain = q if q_plain is None else q_plain
    device = q.device
    options = {
        "causal": causal,
        "mask": mask,
        "position": position,
        "query_positions": query_positions,
        "key_positions": key_positions,
        "scale": scale,
        "dropout_p": dropout_p,
    }
    q_scaled = q * scale  # [b, h, n, d]: cheaper than scaling the [b, h, n, slots] logits
    segments = pattern.local_segments(q_scaled, k, v, causal)
    glob = pattern.global_index(n, device)
    if len(glob):
        # Global columns: every query also sees them; skip those its local pattern already holds.
        query = torch.arange(n, device=device)[:, None]
        already = pattern.local_visible(query, glob[None, :])  # [n, g]
        k_glob, v_glob = k[:, :, glob], v[:, :, glob]
        segments.append(
            _Segment(
                q_scaled @ k_glob.transpose(-1, -2),  # [b, h, n, g]
                torch.where(already, -1, glob[None, :]),
                lambda weights: weights @ v_glob,
            )
        )
    widths = [segment.keys.shape[-1] for segment in segments]
    parts = [segment.logits for segment in segments]
    logits = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]  # [b, h, n, W]
    del parts
    keys = torch.cat([segment.keys for segment in segments], dim=-1)  # [n, W]
    weights, value_term = _attend_slots(logits, keys, torch.arange(n, device=device), q_rows=q_plain, **options)
    del logits
    head_output = sum(
        segment.apply(part) for segment, part in zip(segments, weights.split(widths, dim=-1), strict=True)
    )
    if value_term is not None:
        head_output = head_output + value_term
    if len(glob):
        # Global rows: a global token sees every key.
        logits = q_scaled[:, :, glob] @ k.transpose(-1, -2)  # [b, h, g, n]
        all_keys = torch.arange(n, device=device).expand(len(glob), n)
        weights, value_term = _attend_slots(logits, all_keys, glob, q_rows=q_plain[:, :, glob], **options)
        rows = weights @ v
        if value_term is not None:
            rows = rows + value_term
        head_output = head_output.index_copy(2, glob, rows.to(head_output.dtype))
    return head_output
