"""inseq's side of the ``inseq`` benchmark: run by the *peer* interpreter (inseq's own venv), never ours.

It imports nothing from attn_probe and talks JSON lines: one request per line on stdin, one reply per line on the
original stdout (library prints go to stderr, so they cannot corrupt a reply). Requests (``{"cmd": ...}``):

- ``load``: ``model_dir``, ``prompts``, ``contrast`` (``[" are", " is"]``), ``n_steps``, ``replacement_id``,
  ``threads``: load the model with ``inseq.load_model`` by path (inseq's defaults: eager attention, float32),
  register the step function ``attn_probe_contrast`` = ``logit(contrast[0]) - logit(contrast[1])`` at the
  predicting position and force every continuation to ``contrast[0]``; reply with versions, each prompt's token ids
  and the contrast's value on each prompt. (``results`` runs every method, which warms them up before ``time``.)
- ``time``: ``method`` (``saliency``, ``attention`` or ``integrated_gradients``): one ``model.attribute`` call over
  all prompts; reply with its seconds (measured here, so no pipe overhead).
- ``results``: every method's raw scores per prompt (over the prompt's tokens): saliency's L2 norm over the
  embedding, attention's ``[n, layers, heads]`` row of the predicting position, integrated gradients summed over
  the embedding (signed) and its L2 norm, with attn_probe's baseline, and what inseq's default aggregation shows
  (``aggregate()``: L2 norm then normalised to sum 1 for gradients; mean over layers and heads for attention),
  integrated gradients then with inseq's own baseline.
- ``quit``.

This is the code an inseq user writes (``inseq.load_model(path, method)``, ``model.attribute(prompts,
generated_texts=..., attributed_fn=...)``) with one addition that only the agreement check uses: the integrated
gradients baseline set to attn_probe's (see :func:`attn_probe_baseline_ids`).
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

STATE: dict[str, Any] = {}
STEP_FUNCTION = "attn_probe_contrast"
METHODS = ("saliency", "attention", "integrated_gradients")


def attn_probe_baseline_ids(input_ids: Any, attention_mask: Any, replacement_id: int, special_ids: set[int]) -> Any:
    """attn_probe's integrated-gradients baseline for a decoder-only LM: every real token replaced by
    ``replacement_id`` except the first real one (the prompt's start) and special tokens; padding kept.

    inseq's own replaces every token but EOS by ``unk_token_id`` (the first token included)."""
    import torch

    real = attention_mask.bool()
    keep = ~real | torch.isin(input_ids, torch.tensor(sorted(special_ids), dtype=input_ids.dtype))
    rows = torch.arange(input_ids.shape[0])
    keep[rows, real.long().argmax(dim=1)] = True
    return torch.where(keep, input_ids, torch.full_like(input_ids, replacement_id))


def load(request: dict) -> dict:
    import inseq
    import torch
    import transformers

    torch.set_num_threads(int(request["threads"]))
    logging.getLogger("inseq").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    model = inseq.load_model(request["model_dir"], "saliency")
    tokenizer = model.tokenizer
    first, second = request["contrast"]
    ids_a, ids_b = (
        tokenizer(first, add_special_tokens=False).input_ids,
        tokenizer(second, add_special_tokens=False).input_ids,
    )
    if len(ids_a) != 1 or len(ids_b) != 1:
        raise ValueError(f"{request['contrast']} must be single tokens, got {ids_a} and {ids_b}")
    a, b = ids_a[0], ids_b[0]

    def contrast(args: Any) -> Any:
        logits = args.attribution_model.output2logits(args.forward_output)  # [batch, vocab] at the predicting position
        return logits[:, a] - logits[:, b]

    inseq.register_step_function(contrast, STEP_FUNCTION, overwrite=True)
    prompts = list(request["prompts"])
    STATE.update(
        model=model, prompts=prompts, generated=[p + first for p in prompts], n_steps=int(request["n_steps"]),
        baseline="inseq",
    )  # fmt: skip
    special = set(tokenizer.all_special_ids)
    replacement = int(request["replacement_id"])
    original_encode = model.encode

    def encode(*args: Any, **kwargs: Any) -> Any:
        encoded = original_encode(*args, **kwargs)
        if STATE["baseline"] == "attn_probe" and encoded.baseline_ids is not None:
            encoded.baseline_ids = attn_probe_baseline_ids(
                encoded.input_ids, encoded.attention_mask, replacement, special
            )
        return encoded

    model.encode = encode  # the instance attribute shadows the method; inseq calls attribution_model.encode(...)
    ids, values = [], []
    with torch.no_grad():
        for prompt, generated in zip(prompts, STATE["generated"], strict=True):
            prompt_ids = tokenizer(prompt).input_ids
            if tokenizer(generated).input_ids != [*prompt_ids, a]:
                raise ValueError(f"{generated!r} does not tokenize as {prompt!r} + {first!r}")
            ids.append(prompt_ids)
            logits = model.model(input_ids=torch.tensor([prompt_ids])).logits[0, -1]
            values.append(float(logits[a] - logits[b]))
    return {
        "versions": {name: _version(name) for name in ("inseq", "transformers", "torch", "captum")},
        "transformers": transformers.__version__,
        "attn_implementation": str(getattr(model.model.config, "_attn_implementation", "?")),
        "threads": torch.get_num_threads(),
        "ids": ids,
        "values": values,
        "contrast_ids": [a, b],
    }


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def attribute(method: str) -> Any:
    """One ``model.attribute`` call over every prompt, continuation forced to the contrast's first token."""
    extra: dict[str, Any] = {}
    if method == "integrated_gradients":
        extra["n_steps"] = STATE["n_steps"]  # captum's default quadrature: Gauss-Legendre, as ours
    if method != "attention":  # attention does not depend on the target (inseq warns if one is given)
        extra["attributed_fn"] = STEP_FUNCTION
    return STATE["model"].attribute(
        STATE["prompts"], generated_texts=STATE["generated"], method=method, show_progress=False, **extra
    )


def timed(request: dict) -> dict:
    start = time.perf_counter()
    attribute(request["method"])
    return {"seconds": time.perf_counter() - start}


def _rows(output: Any) -> list[Any]:
    """Each prompt's target attributions at the one generated step, prompt tokens only: ``[n, ...]``."""
    rows = []
    for sequence, prompt in zip(output.sequence_attributions, STATE["prompts"], strict=True):
        scores = sequence.target_attributions[:, 0]  # [n + 1, ...]: the prompt's tokens and the forced token (NaN)
        rows.append(scores[: len(scores) - 1])
        if len(scores) - 1 != len(sequence.target) - 1:
            raise ValueError(f"unexpected attribution shape {tuple(scores.shape)} for {prompt!r}")
    return rows


def _defaults(output: Any) -> list[list[float]]:
    """What inseq shows by default (``aggregate()``), over the prompt's tokens."""
    return [sequence.aggregate().target_attributions[:-1, 0].tolist() for sequence in output.sequence_attributions]


def results(request: dict) -> dict:
    STATE["baseline"] = "attn_probe"
    try:
        saliency = attribute("saliency")
        attention = attribute("attention")
        matched = attribute("integrated_gradients")
    finally:
        STATE["baseline"] = "inseq"
    own = attribute("integrated_gradients")
    return {
        "ids": [[token.id for token in sequence.target][:-1] for sequence in saliency.sequence_attributions],
        "saliency_l2": [row.norm(dim=-1).tolist() for row in _rows(saliency)],
        "saliency_default": _defaults(saliency),
        "attention": [row.tolist() for row in _rows(attention)],  # [n, layers, heads] per prompt
        "attention_default": _defaults(attention),
        "ig_matched_sum": [row.sum(dim=-1).tolist() for row in _rows(matched)],
        "ig_matched_l2": [row.norm(dim=-1).tolist() for row in _rows(matched)],
        "ig_inseq_baseline_sum": [row.sum(dim=-1).tolist() for row in _rows(own)],
        "ig_default": _defaults(own),
    }


COMMANDS = {"load": load, "time": timed, "results": results}


if __name__ == "__main__":
    from worker_loop import serve  # the file beside this one: the script's folder is on sys.path

    serve(COMMANDS)
