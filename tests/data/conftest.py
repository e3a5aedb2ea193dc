"""A tiny byte-level BPE tokenizer for the data tests (the MiniLM one and tiny_bert come from tests/conftest.py)."""

import pytest

from tests.capture.test_tokens import gpt2_style_tokenizer


@pytest.fixture(scope="session")
def byte_level_tokenizer():
    """' are' and ' is' are single tokens; most nouns fall apart into bytes (several tokens per word)."""
    return gpt2_style_tokenizer()
