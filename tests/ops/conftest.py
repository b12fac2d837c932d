"""Fixtures shared by the op tests."""
import pytest
import torch


@pytest.fixture
def nan_filled_empty():
    """``torch.empty`` (also ``at::empty`` in C++) returns NaN-filled memory: deterministic mode
    fills uninitialised memory, so an output element a kernel forgets stays NaN."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    assert torch.empty(16, dtype=torch.float64).isnan().all()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
