"""Launch settings shared by the Triton kernels: elements per program (and a context that imposes
the CUDA block sizes on every device), the accumulator dtype, and reference functions compiled as
Triton device functions."""
from __future__ import annotations

import contextlib
import contextvars
import types

import torch
import triton
import triton.language as tl


_CUDA_BLOCK_DIVISOR: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "cuda_block_divisor", default=None)


@contextlib.contextmanager
def cuda_block_sizes(divisor: int = 1):
    """Within this context every launch, on any device, takes the block size of a CUDA launch
    divided by ``divisor`` (a power of 2): the interpreter then runs the multi-block paths of the
    GPU (several programs per row, several blocks per loop), and launches captured for an
    ahead-of-time compilation carry the CUDA block sizes."""
    if divisor < 1 or divisor & (divisor - 1):
        raise ValueError(f"divisor must be a power of 2 >= 1, got {divisor!r}")
    token = _CUDA_BLOCK_DIVISOR.set(divisor)
    try:
        yield
    finally:
        _CUDA_BLOCK_DIVISOR.reset(token)


#: elements one thread handles per pass of a program that sweeps a whole row (see :func:`row_warps`)
ELEMENTS_PER_THREAD = 256


def block_size(numel: int, device: torch.device, gpu_block: int = 256) -> int:
    """Elements per program: ``gpu_block`` on a GPU (and in :func:`cuda_block_sizes`); under the
    interpreter, where every program instance costs about 1 ms, one large block."""
    divisor = _CUDA_BLOCK_DIVISOR.get()
    if divisor is not None:
        cap = max(gpu_block // divisor, 1)
    else:
        cap = gpu_block if device.type == "cuda" else 1 << 15
    return min(cap, triton.next_power_of_2(max(int(numel), 1)))


def row_warps(numel: int) -> int:
    """Warps of a program that sweeps a row of ``numel`` elements per pass (the threshold solve:
    one program per (b, k), so few programs at B = 1): the fewest of 4, 8, 16, 32 that keep each
    thread at <= :data:`ELEMENTS_PER_THREAD` elements per pass (8 at 224 px, 50,176 pixels)."""
    warps = 4
    while warps < 32 and numel > warps * 32 * ELEMENTS_PER_THREAD:
        warps *= 2
    return warps


def acc_dtype(dtype: torch.dtype):
    """Accumulator dtype for inputs of ``dtype``: float64 stays float64, everything else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def taps_dtype(dtype: torch.dtype) -> torch.dtype:
    """The torch dtype of :func:`acc_dtype` (filter taps are stored in it)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def device_function(fn):
    """The plain-Python function ``fn`` (arithmetic operators only, such as
    :func:`sas_fast.ops.reference.solve_bracket`) as a Triton device function: ``triton.jit`` of
    the same code (source read from ``fn``'s file), bound to this module's globals, where the
    interpreter finds the ``triton.language`` module it patches (the reference imports no Triton)."""
    return triton.jit(types.FunctionType(fn.__code__, globals(), fn.__name__, fn.__defaults__,
                                         fn.__closure__))
