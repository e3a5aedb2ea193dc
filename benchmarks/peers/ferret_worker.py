"""ferret's side of the ``ferret`` benchmark: run by the *peer* interpreter (ferret-xai's own venv), never ours.

It imports nothing from attn_probe (that environment has transformers 4.x and numpy 1.x) and talks JSON lines:
one request per line on stdin, one reply per line on the original stdout (library prints are sent to stderr, so
they cannot corrupt a reply). A failed request is answered (``ok: false`` with the traceback), not fatal.
Requests (``{"cmd": ...}``):

- ``load``: ``model_dir``, ``texts``, ``threads``, ``device``: load the classifier and tokenizer by path (ferret
  and transformers are imported here), run the full pipeline once (warm-up); reply with versions, each text's
  token ids and logits (to check that both sides see the same model and tokens).
- ``time``: ``what`` = ``"full"`` (per text: predict, explain with saliency, gradient x input and integrated
  gradients, evaluate with AOPC comprehensiveness, sufficiency and tau-LOO) or ``"explain"`` (without the
  evaluation); reply with the seconds it took over all texts (``time.perf_counter`` here: no pipe overhead).
- ``results``: the last timed ``full`` run's scores (L1-normalised over the tokens, ferret's default) and
  evaluations, and integrated gradients with a [MASK] baseline (attn_probe's definition; raw scores, untimed).
- ``eraser_k``: ``items`` = ``[{"index", "scores", "target", "ks"}]``: ferret's comprehensiveness and sufficiency
  for exactly the top ``k`` tokens of the given scores (``based_on="k"``, one ``k`` at a time; the scores are
  shifted to be positive because ``only_pos=False`` fails in ferret 0.4.2), and whether ferret's decode /
  re-tokenize of each perturbed text gives back the perturbed ids.
- ``quit``.

ferret installed without its dependencies (``pip install --no-deps``, e.g. on a machine without a network, beside
another interpreter's transformers 5 and numpy 2): ``import ferret`` imports datasets, pytreebank, thermostat (which
pulls in spaCy), lime and shap at module level, but nothing used here calls them (they serve its LIME and SHAP
explainers and its data set loaders). Each one that is not installed is replaced by a placeholder module that
raises if anything in it is used (:func:`placeholders`); ``load`` reports which ones stood in.

This is the code a ferret user writes (``Benchmark(model, tokenizer, explainers=..., evaluators=...)``,
``bench.score``, ``bench.explain``, ``bench.evaluate_explanations``), restricted to the explainers and
evaluators that have a counterpart in attn_probe.
"""

from __future__ import annotations

import time

from worker_loop import claim_stdout, serve  # the file beside this one: the script's folder is on sys.path

PROTOCOL = claim_stdout()  # before the imports below: whatever they print goes to stderr, not into a reply

import numpy as np  # noqa: E402

STATE: dict = {}


#: What ``import ferret`` (0.4.2) imports at module level and the code paths used here never call: name ->
#: the submodules it imports from them (``from lime.lime_text import ...``, ``from shap.maskers import ...``).
IMPORT_ONLY = {"datasets": (), "pytreebank": (), "thermostat": (), "lime": ("lime_text",), "shap": ("maskers",)}
PLACEHOLDERS: list[str] = []  # the names of IMPORT_ONLY that placeholders stand in for in this process


def placeholders() -> list[str]:
    """Put a placeholder module in ``sys.modules`` for each package of :data:`IMPORT_ONLY` that is not installed
    (an installed one is left alone); return their names. Any attribute of a placeholder is a function that raises
    ``ImportError`` when called, so ``from lime.lime_text import LimeTextExplainer`` works and using it does not."""
    import importlib.machinery
    import importlib.util
    import sys
    import types

    def attribute(module: str):
        def get(name: str):
            if name.startswith("__"):
                raise AttributeError(name)

            def unavailable(*args, **kwargs):
                raise ImportError(f"{module}.{name}: {module.split('.')[0]} is not installed (a placeholder stands in)")

            unavailable.__name__ = name
            return unavailable

        return get

    made = []
    for name, submodules in IMPORT_ONLY.items():
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        for full in (name, *(f"{name}.{sub}" for sub in submodules)):
            module = types.ModuleType(full, f"placeholder for {full} (not installed; see ferret_worker.py)")
            module.__spec__ = importlib.machinery.ModuleSpec(full, None, is_package=full == name)
            module.__getattr__ = attribute(full)  # PEP 562
            sys.modules[full] = module
        for sub in submodules:
            setattr(sys.modules[name], sub, sys.modules[f"{name}.{sub}"])
        made.append(name)
    return made


def _ferret():
    """ferret and transformers, imported on the first ``load`` (so that the pipe works, and can be tested, with
    any interpreter: without ferret, ``load`` is answered with the ImportError)."""
    if "ferret" not in STATE:  # once, before the first import of ferret
        PLACEHOLDERS.extend(placeholders())
        STATE["ferret"] = True
    import ferret
    import torch
    import transformers

    return ferret, torch, transformers


def mask_baseline_ig(model, tokenizer):
    """ferret's integrated gradients (x input) with attn_probe's baseline: [MASK] for every token but [CLS], [SEP]."""
    ferret, torch, _ = _ferret()

    class MaskBaselineIG(ferret.IntegratedGradientExplainer):
        def _generate_baselines(self, input_len):
            tok = self.helper.tokenizer
            ids = [tok.cls_token_id] + [tok.mask_token_id] * (input_len - 2) + [tok.sep_token_id]
            return self.helper._get_input_embeds_from_ids(torch.tensor(ids, device=self.device)).unsqueeze(0)

    return MaskBaselineIG(model, tokenizer, multiply_by_inputs=True)


def load(request: dict) -> dict:
    ferret, torch, transformers = _ferret()
    torch.set_num_threads(int(request["threads"]))
    path = request["model_dir"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    # float32 as on our side (transformers 5 would keep the dtype of the saved weights); `dtype`: transformers >= 4.56
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    model = model.eval().to(request["device"])
    explainers = [
        ferret.GradientExplainer(model, tokenizer, multiply_by_inputs=False),  # "Gradient": captum Saliency
        ferret.GradientExplainer(model, tokenizer, multiply_by_inputs=True),  # "Gradient (x Input)": InputXGradient
        ferret.IntegratedGradientExplainer(
            model, tokenizer, multiply_by_inputs=True
        ),  # "Integrated Gradient (x Input)"
    ]
    evaluators = [
        ferret.AOPC_Comprehensiveness_Evaluation(model, tokenizer),
        ferret.AOPC_Sufficiency_Evaluation(model, tokenizer),
        ferret.TauLOO_Evaluation(model, tokenizer),
    ]
    bench = ferret.Benchmark(model, tokenizer, explainers=explainers, evaluators=evaluators)
    STATE.update(model=model, tokenizer=tokenizer, bench=bench, texts=list(request["texts"]))
    STATE["sync"] = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    ids, logits = [], []
    with torch.no_grad():
        for text in STATE["texts"]:
            item = tokenizer(text, return_tensors="pt", truncation=True)
            ids.append(item["input_ids"][0].tolist())
            item = {key: value.to(model.device) for key, value in item.items()}
            logits.append(model(**item).logits[0].tolist())
    STATE["last_full"] = pipeline("full")  # warm-up
    return {
        "versions": {
            "ferret-xai": _version("ferret-xai"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "captum": _version("captum"),
        },
        "threads": torch.get_num_threads(),
        "ids": ids,
        "logits": logits,
        "explainers": [explainer.NAME for explainer in explainers],
        "placeholders": list(PLACEHOLDERS),
    }


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def pipeline(what: str) -> list[dict]:
    """What a ferret user runs per text; returns the explanations and evaluations."""
    _, torch, _ = _ferret()
    bench = STATE["bench"]
    out = []
    for text in STATE["texts"]:
        probabilities = bench.score(text, return_dict=False)
        target = int(torch.argmax(probabilities))
        explanations = bench.explain(text, target=target, show_progress=False)  # L1-normalised, the default
        evaluations = None
        if what == "full":
            evaluations = bench.evaluate_explanations(explanations, target=target, show_progress=False)
        out.append({"target": target, "explanations": explanations, "evaluations": evaluations})
    return out


def timed(request: dict) -> dict:
    STATE["sync"]()  # CUDA: the clock brackets the device's work too (on the CPU: nothing)
    start = time.perf_counter()
    output = pipeline(request["what"])
    STATE["sync"]()
    seconds = time.perf_counter() - start
    if request["what"] == "full":
        STATE["last_full"] = output
    return {"seconds": seconds}


def results(request: dict) -> dict:
    """The last timed ``full`` run's explanations (L1-normalised, ferret's default) and evaluations, and integrated
    gradients with a [MASK] baseline (untimed, raw scores)."""
    masked = mask_baseline_ig(STATE["model"], STATE["tokenizer"])
    examples = []
    for text, item in zip(STATE["texts"], STATE["last_full"], strict=True):
        evaluations = {
            explanation.explainer: {e.name: float(e.score) for e in evaluation.evaluation_scores}
            for explanation, evaluation in zip(item["explanations"], item["evaluations"], strict=True)
        }
        examples.append(
            {
                "target": item["target"],
                "tokens": list(item["explanations"][0].tokens),
                "scores": {e.explainer: np.asarray(e.scores, dtype=float).tolist() for e in item["explanations"]},
                "evaluations": evaluations,
                "ig_mask_baseline": np.asarray(masked(text, item["target"]).scores, dtype=float).tolist(),
            }
        )
    return {"examples": examples}


def eraser_k(request: dict) -> dict:
    from ferret.explainers.explanation import Explanation

    bench, tokenizer = STATE["bench"], STATE["tokenizer"]
    comprehensiveness, sufficiency = bench.evaluators[0], bench.evaluators[1]
    out = []
    for item in request["items"]:
        text = STATE["texts"][item["index"]]
        tokens = bench.helper.get_tokens(text)
        ids = tokenizer(text, truncation=True)["input_ids"][1:-1]
        scores = np.asarray(item["scores"], dtype=float)
        # ferret's only_pos=False path fails for k >= 2 (``numpy_array == []`` in _get_id_tokens_top_k raises), so
        # the scores are shifted to be positive (the same top k) and only_pos=True keeps every top-k token.
        shifted = scores - scores.min() + 1.0
        explanation = Explanation(text, tokens, shifted, "given", item["target"])
        order = scores[1:-1].argsort()
        rows = []
        for k in item["ks"]:
            args = {"only_pos": True, "removal_args": {"based_on": "k", "thresholds": [int(k)]}}
            top = sorted(order[-int(k) :].tolist())
            without = [token for i, token in enumerate(ids) if i not in top]
            only = [ids[i] for i in top]
            rows.append(
                {
                    "k": int(k),
                    "comprehensiveness": float(
                        comprehensiveness.compute_evaluation(explanation, item["target"], **args).score
                    ),
                    "sufficiency": float(sufficiency.compute_evaluation(explanation, item["target"], **args).score),
                    "round_trip": _round_trips(tokenizer, without) and _round_trips(tokenizer, only),
                }
            )
        out.append({"index": item["index"], "rows": rows})
    return {"items": out}


def _round_trips(tokenizer, ids: list[int]) -> bool:
    """Whether ferret's decode-then-tokenize of a perturbed sequence gives back exactly its ids."""
    again = tokenizer(tokenizer.decode(ids), truncation=True)["input_ids"][1:-1]
    return list(again) == list(ids)


COMMANDS = {"load": load, "time": timed, "results": results, "eraser_k": eraser_k}


if __name__ == "__main__":
    serve(COMMANDS, PROTOCOL)
