"""Helpers the benchmark scripts share."""
from __future__ import annotations

import numpy as np
import torch


def sync(device=None) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on a CPU."""
    if torch.device(device or "cpu").type == "cuda":
        torch.cuda.synchronize()


def paired(a, b, digits: int = 3) -> str:
    """``mean ± se (wins/N)`` of the paired differences ``a - b`` (one per image; se nan for one
    image), the form every study table and result row uses."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    se = d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else float("nan")
    return f"{d.mean():+.{digits}f} ± {se:.{digits}f} ({int((d > 0).sum())}/{d.size})"
