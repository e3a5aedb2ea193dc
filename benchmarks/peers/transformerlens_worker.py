"""TransformerLens's side of the ``transformer_lens`` benchmark: run by the *peer* interpreter (TransformerLens's
own venv), never ours.

It imports nothing from attn_probe and talks JSON lines: one request per line on stdin, one reply per line on the
original stdout (library prints go to stderr, so they cannot corrupt a reply). Requests (``{"cmd": ...}``):

- ``load``: ``model_dir``, ``prompts``, ``input_ids`` and ``attention_mask`` (our padded batch, right padding),
  ``threads``: boot a ``TransformerBridge`` from the local directory (``TransformerBridge.boot_transformers(path)``;
  the bridge forces eager attention and keeps the raw Hugging Face weights); reply with versions, the hook names
  it captures, whether its own ``to_tokens`` gives the same ids, and what it does to the text by default.
- ``time``: ``what`` = ``"patterns"`` (``run_with_cache`` under ``torch.no_grad()`` with a ``names_filter`` keeping
  every layer's ``hook_pattern``, stacked to ``[batch, layers, heads, q, k]``) or ``"defaults"`` (``run_with_cache``
  as a first-time user calls it: every hook point cached, autograd on); reply with the seconds (measured here).
- ``results``: ``out_dir``: write the stacked patterns and the logits of the patterns run as ``.npy`` files there.
- ``quit``.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

STATE: dict[str, Any] = {}


def _is_pattern(name: str) -> bool:
    return name.endswith("attn.hook_pattern")


def load(request: dict) -> dict:
    import torch
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(request["threads"]))
    bridge = TransformerBridge.boot_transformers(request["model_dir"], device="cpu", dtype=torch.float32)
    bridge.eval()
    input_ids = torch.tensor(request["input_ids"], dtype=torch.long)
    attention_mask = torch.tensor(request["attention_mask"], dtype=torch.long)
    names = [name for name in bridge.hook_dict if _is_pattern(name)]
    names.sort(key=lambda name: int(name.split(".")[1]))  # blocks.{layer}.attn.hook_pattern
    STATE.update(bridge=bridge, input_ids=input_ids, attention_mask=attention_mask, names=names)
    prompts = list(request["prompts"])
    own = bridge.to_tokens(prompts, prepend_bos=False, padding_side="right")
    default = bridge.to_tokens(prompts[0])  # what a bare to_tokens(text) (and so run_with_cache(text)) feeds it
    return {
        "versions": {name: _version(name) for name in ("transformer-lens", "transformers", "torch")},
        "transformers": transformers.__version__,
        "attn_implementation": str(getattr(bridge.cfg, "attn_implementation", None) or _hf_attn(bridge)),
        "threads": torch.get_num_threads(),
        "hook_names": names,
        "hook_points": len(bridge.hook_dict),
        "same_ids_from_to_tokens": own.shape == input_ids.shape
        and bool((own == input_ids)[attention_mask.bool()].all()),
        "default_to_tokens_first_prompt": default[0].tolist(),
    }


def _hf_attn(bridge: Any) -> str:
    for module in bridge.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            return str(config._attn_implementation)
    return "?"


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def patterns() -> tuple[Any, Any]:
    """``(logits, [batch, layers, heads, q, k])``: every layer's attention pattern, nothing else cached."""
    import torch

    with torch.no_grad():
        logits, cache = STATE["bridge"].run_with_cache(
            STATE["input_ids"], attention_mask=STATE["attention_mask"], names_filter=_is_pattern
        )
        return logits, torch.stack([cache[name] for name in STATE["names"]], dim=1)


def defaults() -> Any:
    """``run_with_cache`` as its docs show it: every hook point, autograd left on."""
    return STATE["bridge"].run_with_cache(STATE["input_ids"], attention_mask=STATE["attention_mask"])


def timed(request: dict) -> dict:
    work = {"patterns": patterns, "defaults": defaults}[request["what"]]
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    return {"seconds": seconds}


def results(request: dict) -> dict:
    import numpy as np

    logits, stacked = patterns()
    _, cache = defaults()
    out = request["out_dir"]
    np.save(os.path.join(out, "patterns.npy"), stacked.float().numpy())
    np.save(os.path.join(out, "logits.npy"), logits.float().numpy())
    return {"patterns_shape": list(stacked.shape), "default_cache_entries": len(cache)}


COMMANDS = {"load": load, "time": timed, "results": results}


if __name__ == "__main__":
    from worker_loop import serve  # the file beside this one: the script's folder is on sys.path

    serve(COMMANDS)
