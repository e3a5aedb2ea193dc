"""Named hook points: read or replace any intermediate tensor of our attention models.

Every intermediate that an analysis may want (q, k, v, logits, position term, weights, per-head
output, block output) passes through a :class:`HookPoint`. A hook is a function
``fn(tensor, hook_point) -> tensor | None``: returning ``None`` only reads, returning a tensor of the
same shape replaces the value for the rest of the forward pass.

Hooks are installed for the duration of a ``with`` block (:func:`hooks`, :func:`record`) and are
removed in a ``finally`` clause, so a forward pass that raises never leaves one behind.

Why not ``nn.Module.register_forward_hook``? A hook point has to be skipped at zero cost when nobody
listens (the attention module chooses the fused SDPA path only if no hook needs the weights), and it
must validate replacements; a plain list on the object does both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]


class HookPoint(nn.Module):
    """An identity on the forward path that calls the hooks registered on it.

    ``name`` is filled in with the module's dotted path (``layers.0.attention.hook_weights``) by
    :func:`hook_points`; a standalone attention module names its points relative to itself.
    """

    def __init__(self, shape_doc: str = "") -> None:
        super().__init__()
        self.shape_doc = shape_doc  # e.g. "[batch, heads, q, k]": what flows through this point
        self.name = ""
        self._hooks: list[HookFn] = []

    @property
    def has_hooks(self) -> bool:
        return bool(self._hooks)

    def add_hook(self, fn: HookFn) -> Callable[[], None]:
        """Register ``fn`` and return a function that removes it again."""
        self._hooks.append(fn)

        def remove() -> None:
            if fn in self._hooks:
                self._hooks.remove(fn)

        return remove

    def clear_hooks(self) -> None:
        self._hooks.clear()

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        # Skips nn.Module's call machinery when nobody listens: a hook point on a hot path is free.
        return super().__call__(tensor) if self._hooks else tensor

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        for fn in list(self._hooks):
            replaced = fn(tensor, self)
            if replaced is None:
                continue
            if not isinstance(replaced, torch.Tensor) or replaced.shape != tensor.shape:
                got = tuple(replaced.shape) if isinstance(replaced, torch.Tensor) else type(replaced).__name__
                raise ValueError(
                    f"hook on '{self.name}' returned {got}, but must return None (to read) or a tensor "
                    f"of the same shape {tuple(tensor.shape)} {self.shape_doc} (to replace)"
                )
            tensor = replaced
        return tensor

    def extra_repr(self) -> str:
        return self.shape_doc


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """All hook points of ``model`` by dotted name, with their ``name`` attribute set."""
    points = {}
    for name, module in model.named_modules():
        if isinstance(module, HookPoint):
            module.name = name
            points[name] = module
    return points


def resolve_hook_point(model: nn.Module, name: str) -> HookPoint:
    """Find one hook point by its full name; the error lists close names when it does not exist."""
    points = hook_points(model)
    if name in points:
        return points[name]
    suffix = name.rsplit(".", 1)[-1]
    close = [known for known in points if known.endswith(suffix)][:6] or list(points)[:6]
    raise KeyError(f"no hook point named '{name}' in {type(model).__name__}; some that exist: {close}")


@contextmanager
def hooks(model: nn.Module, hook_fns: Mapping[str, HookFn | list[HookFn]]) -> Iterator[None]:
    """Install hooks by hook-point name for the duration of the block; always removed on exit.

    >>> with hooks(model, {"layers.0.attention.hook_weights": uniform_weights(head=3)}):
    ...     output = model(input_ids)
    """
    removers: list[Callable[[], None]] = []
    try:
        for name, fns in hook_fns.items():
            point = resolve_hook_point(model, name)
            for fn in fns if isinstance(fns, list) else [fns]:
                removers.append(point.add_hook(fn))
        yield
    finally:
        for remove in reversed(removers):
            remove()


@contextmanager
def record(model: nn.Module, names: list[str], *, detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the tensors that pass the named hook points during the block.

    >>> with record(model, ["layers.1.attention.hook_weights"]) as cache:
    ...     model(input_ids)
    >>> cache["layers.1.attention.hook_weights"].shape   # [batch, heads, q, k]

    With ``detach=False`` the recorded tensors keep their graph (for gradient x attention).
    """
    cache: dict[str, torch.Tensor] = {}

    def make_reader(name: str) -> HookFn:
        def read(tensor: torch.Tensor, _point: HookPoint) -> None:
            cache[name] = tensor.detach() if detach else tensor

        return read

    with hooks(model, {name: make_reader(name) for name in names}):
        yield cache
