"""Model calls on a CPU without page-fault storms: micro-batches and two glibc malloc settings.

A SaS step sends ``M (K - 2) B`` masked images through the model (36 for the demo). PyTorch's
CPU tensors come straight from ``malloc``, and glibc serves every block above its mmap
threshold (32 MiB at most) with a fresh ``mmap`` and unmaps it on free, so with all 36 images
in one call every large activation is mapped, zero-filled page by page and unmapped again, every
iteration: EfficientNet-Lite0 at 224 px, forward + input gradient of 36 images, one thread,
took 1.0 M page faults and 2.2 s system time next to 2.6-3.1 s user time per step. Two fixes:

- :func:`default_max_batch`: micro-batches of about :data:`CPU_CHUNK_BYTES` of masked images
  (6 images at 224 px, 341 at 32 px) keep each activation below 32 MiB and the working set
  small (peak RSS 0.9 GiB instead of 3.4 GiB); the result does not depend on the chunking;
- :func:`tune_malloc`: ``M_MMAP_THRESHOLD`` = 32 MiB (the ceiling glibc's own adaptive
  threshold climbs to) and ``M_TRIM_THRESHOLD`` = 256 MiB (default: at most 64 MiB), so the
  blocks freed after one chunk stay in the heap for the next instead of going back to the kernel.

Together: 0 page faults and 0.0 s system time per step (chunks alone: 0.2 M faults, 0.45 s).
"""
from __future__ import annotations

import ctypes
import os
import platform

import torch

#: masked-image bytes per model call on a CPU when ``max_batch`` is None
CPU_CHUNK_BYTES = 4 << 20
#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`tune_malloc` sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 256 << 20
#: set to ``0`` to leave glibc's malloc settings alone
OPT_OUT = "SAS_FAST_TUNE_MALLOC"

_tuned: str | None = None


def default_max_batch(images: torch.Tensor) -> int | None:
    """Masked images per model call for ``images`` (``B x C x H x W``, the masked images' dtype)
    when ``max_batch`` is None: about :data:`CPU_CHUNK_BYTES` on a CPU, all at once elsewhere."""
    if images.device.type != "cpu":
        return None
    return max(1, CPU_CHUNK_BYTES // (images[0].numel() * images.element_size()))


def tune_malloc() -> str:
    """Apply the two ``mallopt`` settings once per process (glibc only) and say what was done.

    Skipped when the C library is not glibc, when ``SAS_FAST_TUNE_MALLOC=0``, or when
    ``GLIBC_TUNABLES`` sets malloc options (the user's choice wins). The settings stay for the
    life of the process; they only change when freed memory goes back to the kernel.
    """
    global _tuned
    if _tuned is None:
        _tuned = _apply()
    return _tuned


def _apply() -> str:
    if os.environ.get(OPT_OUT) == "0":
        return f"skipped: {OPT_OUT}=0"
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "skipped: GLIBC_TUNABLES sets malloc options"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "skipped: the C library is not glibc"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError as err:
        return f"skipped: {err}"
    done = [libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
    if done != [1, 1]:
        return f"mallopt refused: {done}"
    return f"mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB"
