"""Reduce attention to what reports need, one example at a time, so memory stays flat as a dataset grows.

A run keeps per (example, layer, head) summaries of every example (:func:`summarise_attention`) and the full
matrices of a few chosen examples only (:func:`select_sample`, stored in float16 by ``Run.write(samples=...)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from attn_probe.store.errors import StoreError

SUMMARY_COLUMNS = [
    "example_id",
    "layer",
    "head",
    "n_queries",
    "n_keys",
    "entropy",
    "max_weight",
    "special_share",
    "first_share",
    "self_share",
    "mean_distance",
]


def _numpy(array: Any, dtype: Any = None) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor (torch is not imported here)
        array = array.detach().to("cpu")
        if dtype is not None and str(array.dtype) in ("torch.bfloat16", "torch.float16"):
            array = array.float()
        array = array.numpy()
    return np.asarray(array, dtype=dtype)


def summarise_attention(
    weights: Any,
    special: Any = None,
    real: Any = None,
    *,
    example_id: int = 0,
    rows: str | int = "all",
) -> pd.DataFrame:
    """One row per (layer, head) of one example's attention ``weights`` ``[layers, heads, n, n]`` (numpy/torch).

    Only real tokens are read, as queries and as keys (``real``: ``[n]`` bool, True = a token, False =
    padding; default all). ``rows``: ``"all"`` real query rows, or one query position (e.g. the row that
    feeds the output: [CLS], or the predicting position of a decoder). Query rows whose weights are all zero
    (a query with no key) are left out. Per (layer, head), averaged over the query rows read:

    - ``entropy``: ``-Σ_j α_ij ln α_ij`` in nats (0 = one key, ``ln n_keys`` = uniform);
    - ``max_weight``: the largest weight of the row;
    - ``special_share``: weight on the ``special`` tokens (``[n]`` bool: [CLS], [SEP], BOS ...); NaN without;
    - ``first_share``: weight on the first real token (the usual sink of a decoder);
    - ``self_share``: weight of a query on itself;
    - ``mean_distance``: ``Σ_j α_ij |i - j|``, in tokens.

    Layers are converted one at a time (float32), so a long context costs one layer's matrices, not all.
    """
    if getattr(weights, "ndim", None) != 4 or weights.shape[-1] != weights.shape[-2]:
        raise StoreError(f"weights must be [layers, heads, n, n] for one example, got shape {tuple(weights.shape)}")
    layers, heads, n, _ = (int(size) for size in weights.shape)
    real_mask = np.ones(n, dtype=bool) if real is None else _numpy(real, bool).reshape(-1)
    special_mask = None if special is None else _numpy(special, bool).reshape(-1)
    for mask, what in ((real_mask, "real"), (special_mask, "special")):
        if mask is not None and mask.shape != (n,):
            raise StoreError(f"{what} must be [n] = [{n}] booleans, got shape {mask.shape}")
    keys = np.flatnonzero(real_mask)
    if isinstance(rows, str):
        if rows != "all":
            raise StoreError(f"rows must be 'all' or a query position, got {rows!r}")
        queries = keys
    else:
        if not 0 <= int(rows) < n or not real_mask[int(rows)]:
            raise StoreError(f"rows={rows} is not the position of a real token (sequence of {n})")
        queries = np.array([int(rows)])
    distance = np.abs(queries[:, None] - keys[None, :]).astype(np.float32)  # [q, k]
    is_self = queries[:, None] == keys[None, :]  # [q, k]
    first = keys[:1]
    special_keys = None if special_mask is None else special_mask[keys]

    records = []
    for layer in range(layers):
        w = _numpy(weights[layer], np.float32)[:, queries][:, :, keys]  # [heads, q, k]
        row_sum = w.sum(-1)  # [heads, q]
        used = row_sum > 0  # a query with no key has an all-zero row
        count = used.sum(-1)  # [heads]

        def mean(per_row: np.ndarray, used: np.ndarray = used, count: np.ndarray = count) -> np.ndarray:
            total = np.where(used, per_row, 0.0).sum(-1)
            return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)

        plogp = np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0)
        columns = {
            "entropy": mean(-plogp.sum(-1)),
            "max_weight": mean(w.max(-1) if w.shape[-1] else np.zeros(w.shape[:2])),
            "special_share": (np.full(heads, np.nan) if special_keys is None else mean(w[:, :, special_keys].sum(-1))),
            "first_share": mean(w[:, :, : len(first)].sum(-1)),
            "self_share": mean((w * is_self).sum(-1)),
            "mean_distance": mean((w * distance).sum(-1)),
        }
        for head in range(heads):
            records.append(
                {
                    "example_id": int(example_id),
                    "layer": layer,
                    "head": head,
                    "n_queries": int(count[head]),
                    "n_keys": len(keys),
                    **{name: float(values[head]) for name, values in columns.items()},
                }
            )
    frame = pd.DataFrame.from_records(records, columns=SUMMARY_COLUMNS)
    return frame.astype({"example_id": "int64", "layer": "int64", "head": "int64", "n_queries": "int64"})


def summarise_batch(
    weights: Any,
    example_ids: Sequence[int],
    special: Any = None,
    real: Any = None,
    *,
    rows: str | Sequence[int] = "all",
) -> pd.DataFrame:
    """:func:`summarise_attention` for a batch ``[batch, layers, heads, n, n]``, one example at a time.

    ``special`` / ``real``: ``[batch, n]`` bool; ``rows``: ``"all"`` or one query position per example.
    """
    if getattr(weights, "ndim", None) != 5:
        raise StoreError(f"weights must be [batch, layers, heads, n, n], got shape {tuple(weights.shape)}")
    if len(example_ids) != weights.shape[0]:
        raise StoreError(f"{len(example_ids)} example ids for a batch of {weights.shape[0]}")
    frames = [
        summarise_attention(
            weights[index],
            None if special is None else special[index],
            None if real is None else real[index],
            example_id=int(example_id),
            rows=rows if isinstance(rows, str) else int(rows[index]),
        )
        for index, example_id in enumerate(example_ids)
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SUMMARY_COLUMNS)


def select_sample(example_ids: Iterable[int], size: int, seed: int = 0) -> set[int]:
    """``size`` of ``example_ids`` chosen at random with ``seed``: the examples whose full matrices are kept.

    The choice depends on the set of ids and the seed only (not their order), so a resumed run keeps the
    same examples as an uninterrupted one.
    """
    ids = np.array(sorted({int(example_id) for example_id in example_ids}), dtype=np.int64)
    if size >= len(ids):
        return set(ids.tolist())
    chosen = np.random.default_rng(seed).choice(ids, size=max(size, 0), replace=False)
    return set(chosen.tolist())
