"""Triton backend: fused forward and backward kernels for the SaS ops.

Same signatures as :mod:`sas_fast.ops.reference`; each op is a ``torch.autograd.Function``
in its own module (kernels and autograd wiring together):

- :func:`smooth_softmax_pool` (``smooth_softmax_pool.py``): Gaussian valid blur + the separable,
  stable soft-max-pool; backward as window sums, deterministic (gathers only, no atomics).
- :func:`threshold_masks` (``threshold_masks.py``): one program per (image, area) pair runs the
  Levenberg-Marquardt solve (Marquardt damping; the bracket, its safeguard, and the start clamp
  inside the kernel) and writes its mask; implicit-gradient backward. :func:`solve_thresholds`:
  the same solve, no masks written.
- :func:`blur_pyramid`, :func:`pyramid_mask` (``pyramid.py``).
- :func:`masked_images` (``masked_images.py``): the insertion / deletion images straight from
  the schedule and the thresholds, the masks recomputed in the backward.

Float scalars (``beta``, ``s``, ``tol``, ``eps``) are ``tl.float64`` kernel parameters, converted
to the accumulator dtype inside each kernel: float64 kernels compute with the caller's exact
values (an unannotated Python float would compile as an fp32 argument).

Shared pieces: ``window.py`` (the window-sum kernel of every separable Gaussian pass, and the
Gaussian taps, built once and cached), ``launch.py`` (block sizes, accumulator dtype). The
Python-side math (smoothing and pyramid sigmas, taps, the solve's bracket and cold start) is the
reference's own (:mod:`sas_fast.ops.reference`), called from here.

CUDA tensors run the compiled kernels. CPU tensors run under the Triton interpreter, only when
``TRITON_INTERPRET=1`` was set before this package was imported (Triton reads it when the
kernels are decorated). The package imports without Triton; :func:`unavailable_reason` then
says so.
"""
from __future__ import annotations

import os

import torch

__all__ = ["unavailable_reason"]

try:
    import triton  # noqa: F401
except ImportError as exc:
    _IMPORT_ERROR = f"triton is not importable ({exc}); install triton>=3.4"
else:
    _IMPORT_ERROR = None
    __all__ += ["blur_pyramid", "masked_images", "pyramid_mask", "smooth_softmax_pool",
                "solve_thresholds", "threshold_masks"]
    from .masked_images import masked_images
    from .pyramid import blur_pyramid, pyramid_mask
    from .smooth_softmax_pool import smooth_softmax_pool
    from .threshold_masks import solve_thresholds, threshold_masks

#: the kernels run under the interpreter (TRITON_INTERPRET=1 at import time)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(device: torch.device) -> str | None:
    """None if the Triton kernels can run on tensors of ``device``, else why not."""
    device = torch.device(device)
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if INTERPRETED and os.environ.get("TRITON_INTERPRET") == "1":
            return None
        if os.environ.get("TRITON_INTERPRET") == "1":
            return ("TRITON_INTERPRET=1 was set after sas_fast.ops.triton was imported; "
                    "set it before importing sas_fast to run the Triton kernels on CPU tensors")
        return "Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 for the CPU interpreter)"
    return f"Triton kernels do not run on device type {device.type!r}"

