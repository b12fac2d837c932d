"""Test setup. TRITON_INTERPRET must be set before any Triton kernel module is imported,
so the Triton kernels run on CPU tensors under the interpreter. ``--runslow`` runs the
studies marked ``slow``."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow studies")


def pytest_collection_modifyitems(config, items):
    """Without ``--runslow`` the slow studies are deselected (reported as such), not skipped."""
    if config.getoption("--runslow"):
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
