"""Load a model and its tokenizer, and know its family (how its attention is captured).

``load_model`` takes an offline short name (``minilm``, ``smollm2-135m``, ``minilm-sentiment``), a
local directory, or a Hugging Face id.
"""

from attn_probe.models.families import Family, UnsupportedModelError, detect_family
from attn_probe.models.load import TASKS, LoadedModel, load_model, task_from_config
from attn_probe.models.offline import OFFLINE_MODELS, describe_offline, load_offline, offline_model_path

__all__ = [
    "OFFLINE_MODELS",
    "TASKS",
    "Family",
    "LoadedModel",
    "UnsupportedModelError",
    "describe_offline",
    "detect_family",
    "load_model",
    "load_offline",
    "offline_model_path",
    "task_from_config",
]
