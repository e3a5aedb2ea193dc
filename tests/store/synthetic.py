"""A deterministic synthetic run: tables whose rows depend on the example id alone."""

from pathlib import Path

import numpy as np
import pandas as pd

IDENTITY = {"model": "tiny-bert", "fingerprint": "abc123", "methods": ["saliency", "attention_rollout"], "steps": 8}


def example_rows(example_id: int) -> pd.DataFrame:
    """A deterministic tidy table for one example: its rows depend on the id alone."""
    rng = np.random.default_rng(example_id)
    n = 1 + example_id % 4
    return pd.DataFrame(
        {
            "example_id": np.full(n, example_id, dtype=np.int64),
            "token_index": np.arange(n, dtype=np.int64),
            "token": [f"t{example_id}_{i}" for i in range(n)],
            "score": rng.normal(size=n),
            "weight": rng.random(n).astype(np.float32),
            "special": np.arange(n) == 0,
            "rank": pd.array([i if i % 2 else None for i in range(n)], dtype="Int64"),
        }
    )


def chunk_tables(ids: list[int]) -> dict[str, pd.DataFrame]:
    scores = pd.concat([example_rows(i) for i in ids], ignore_index=True)
    heads = pd.DataFrame(
        {
            "example_id": np.repeat(np.array(ids, dtype=np.int64), 2),
            "head": np.tile(np.arange(2, dtype=np.int64), len(ids)),
            "entropy": [float(i) + h / 10 for i in ids for h in range(2)],
        }
    )
    return {"scores": scores, "heads": heads}


def expected_table(name: str, ids: list[int]) -> pd.DataFrame:
    return chunk_tables(sorted(ids))[name].reset_index(drop=True)


def three_chunks(path: Path, samples: bool = False) -> None:
    """A run at ``path`` with examples 0..5 in three chunks ([0, 1], [2, 3], [4, 5]); a sample of 0, 2, 4."""
    from attn_probe.store import Run

    with Run.open(path, IDENTITY) as run:
        for ids in ([0, 1], [2, 3], [4, 5]):
            extra = {"attention": {ids[0]: np.full((1, 1, 2, 2), 0.5)}} if samples else None
            run.write(ids, chunk_tables(ids), samples=extra)


def flip_byte(path: Path) -> None:
    """Damage ``path`` without changing its size: only its sha256 can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
