import pytest
import torch


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
