import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same seed, so tiny random models are the same on every run."""
    torch.manual_seed(0)
    yield
