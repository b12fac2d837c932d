"""Model calls on a CPU without page-fault storms: micro-batches and two glibc malloc settings.

A SaS step sends ``M (K - 2) B`` masked images through the model (36 for the demo, 576 for 16
images). PyTorch's CPU tensors come straight from ``malloc``, and glibc serves every block
above its mmap threshold with a fresh ``mmap`` and unmaps it on free; blocks below it come from
the heap, whose free top goes back to the kernel once it exceeds the trim threshold. With too
many images in one call every large activation is mapped, zero-filled page by page and unmapped
again, every iteration: EfficientNet-Lite0 at 224 px, forward + input gradient of 36 images, one
thread, took 1.0 M page faults and 2.2 s system time next to 2.6-3.1 s user time per step. Two fixes:

- :func:`default_max_batch`: micro-batches sized by the model's measured activation memory
  (:func:`activation_bytes`, one probe per model, image shape, dtype, precision and layer): each
  activation the model saves for the backward stays below :data:`MMAP_THRESHOLD` and all of
  them together below :data:`ACTIVATION_BUDGET`, so a micro-batch's blocks come from the heap
  and stay there for the next; the result does not depend on the chunking;
- :func:`tune_malloc`: ``M_MMAP_THRESHOLD`` = 32 MiB (the ceiling glibc's own adaptive
  threshold climbs to) and ``M_TRIM_THRESHOLD`` = 256 MiB (default: at most 64 MiB), so the
  blocks freed after one chunk stay in the heap for the next instead of going back to the kernel.

The former rule, about 4 MiB of masked images per call whatever the model (341 images at 32 px),
left the paper's ResNet8 (3.2 MiB of saved activations per 32-px image in fp32, the largest
0.5 MiB; 1.8 and 0.25 MiB in bf16) with activations of 85-170 MiB, each mapped afresh; this rule
gives 40 images per call in fp32 and 71 in bf16. ``benchmarks/speed/cpu_batching_ab.py``
(16 images, 5 iterations, one thread, Xeon with AVX-512 + AMX-BF16 shared with other jobs, so
compare CPU time, not wall time): fp32 4.7 M page faults and 20-26 % system time before, 80 k
and 1 % after, 1.14-1.30x less CPU time (median of 3 pairs 1.15x); bf16 (``precision="auto"``
there) 0.8-1.0 M faults and 12-16 % system time before, 90 k and 2 % after, but no faster
(0.92-0.99x): a model call has a fixed cost (ResNet8, one thread: about 33 ms in bf16, 6 ms of
it autocast casting the frozen weights again, and 20 ms in fp32), and 9 calls per step instead
of 2 cost about as much user time as the page faults did.
"""
from __future__ import annotations

import ctypes
import os
import platform
import weakref

import torch

#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`tune_malloc` sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 256 << 20
#: environment variable: ``1`` lets a library call (:func:`sas_fast.attribute`) tune malloc too,
#: ``0`` keeps even the ``sas-fast`` command from doing it
MALLOC_ENV = "SAS_FAST_TUNE_MALLOC"

#: the most activation memory (bytes) one model call may hold on a CPU: half the trim threshold
ACTIVATION_BUDGET = TRIM_THRESHOLD // 2
#: masked images in the probe of :func:`activation_bytes`
PROBE_IMAGES = 2

_tuned: str | None = None
_batches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # model -> {probe key: max_batch}


def default_max_batch(objective, images: torch.Tensor, bf16: bool = False) -> int | None:
    """Masked images per model call when ``max_batch`` is None: all at once off the CPU; on a CPU
    as many as keep every activation the model saves below :data:`MMAP_THRESHOLD` and all of them
    below :data:`ACTIVATION_BUDGET`. ``objective`` is the run's :class:`sas_fast.step.Objective`,
    ``images`` the explained images ``B x C x H x W``; measured once per model, image shape,
    dtype, ``bf16`` (autocast) and feature layer."""
    if images.device.type != "cpu":
        return None
    key = (tuple(images.shape[1:]), images.dtype, bf16, objective.layer)
    known = _batches.setdefault(objective.model, {})
    if key not in known:
        total, largest = activation_bytes(objective, images, bf16)
        known[key] = max(1, min(ACTIVATION_BUDGET // max(total, 1), MMAP_THRESHOLD // max(largest, 1)))
    return known[key]


def activation_bytes(objective, images: torch.Tensor, bf16: bool = False) -> tuple:
    """``(total, largest)`` bytes per masked image of the tensors with a batch dimension that the
    model's forward saves for the input gradient, from one forward of :data:`PROBE_IMAGES` copies
    of the first image (no backward; the model sees them like any masked image)."""
    x = images[:1].expand(PROBE_IMAGES, *images.shape[1:]).clone().requires_grad_(True)
    saved = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dim() > 0 and t.shape[0] == PROBE_IMAGES:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        objective.scores(x, torch.zeros(PROBE_IMAGES, dtype=torch.long, device=images.device))
    return sum(saved.values()) // PROBE_IMAGES, max(saved.values(), default=0) // PROBE_IMAGES


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
    if os.environ.get(MALLOC_ENV) == "0":
        return f"skipped: {MALLOC_ENV}=0"
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
