"""Helpers the benchmark scripts share."""
from __future__ import annotations

import torch


def sync(device=None) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on a CPU."""
    if torch.device(device or "cpu").type == "cuda":
        torch.cuda.synchronize()
