"""One torch thread for a block: tiny models run many small passes, which a thread pool slows down on a shared,
busy machine (seen: 10-30x); the previous thread count comes back afterwards, whatever happens inside."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
