"""Shared pieces of the Triton backend: launch sizes, accumulator dtype, and the 1-D window sum
``y[.., l, ..] = sum_d taps[d] x[.., l + offset + d, ..]`` along one axis (zero outside ``x``),
which gives every separable Gaussian pass (valid blur, its transpose, the pyramid's blurs)."""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import reference


def block_size(numel: int, device: torch.device, gpu_block: int = 512) -> int:
    """Elements per program: ``gpu_block`` on a GPU; under the interpreter, where every program
    instance costs about 1 ms, one large block."""
    cap = gpu_block if device.type == "cuda" else 1 << 15
    return min(cap, triton.next_power_of_2(max(int(numel), 1)))


def acc_dtype(dtype: torch.dtype):
    """Accumulator dtype for inputs of ``dtype``: float64 stays float64, everything else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _window_sum_kernel(x_ptr, taps_ptr, y_ptr, numel, n_in, n_out, inner, offset, window,
                       out_batch_numel, out_batch_stride, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """``x`` is ``outer x n_in x inner`` (contiguous), ``y`` is ``outer x n_out x inner`` written at
    ``(idx // out_batch_numel) * out_batch_stride + idx % out_batch_numel`` (a batch-strided view)."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < numel
    s = idx % inner
    pos = (idx // inner) % n_out
    base = x_ptr + (idx // (inner * n_out)) * n_in * inner + s
    acc = tl.zeros([BLOCK], dtype=ACC)
    for d in range(window):
        src = pos + offset + d
        ok = valid & (src >= 0) & (src < n_in)
        acc += tl.load(taps_ptr + d).to(ACC) * tl.load(base + src * inner, mask=ok, other=0.0).to(ACC)
    out = (idx // out_batch_numel) * out_batch_stride + idx % out_batch_numel
    tl.store(y_ptr + out, acc, mask=valid)


def window_sum(x: torch.Tensor, taps: torch.Tensor, dim: int, offset: int, n_out: int,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """``y = sum_d taps[d] x.narrow(dim, l + offset + d)`` for l = 0..n_out-1, zero outside ``x``.

    ``offset = 0``, ``n_out = n - len(taps) + 1``: valid correlation; ``offset = -(len(taps) - 1)``,
    ``n_out = n + len(taps) - 1``: its transpose (full convolution, symmetric taps);
    ``offset = -radius``, ``n_out = n``: zero-padded 'same' filter. ``out`` (optional) may be a
    view whose every ``out[b]`` is contiguous (a slice of a larger batch).
    """
    x = x.contiguous()
    dim = dim % x.dim()
    shape = list(x.shape)
    n_in, inner = shape[dim], math.prod(shape[dim + 1:])
    shape[dim] = n_out
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    assert list(out.shape) == shape and out[0].is_contiguous()
    numel = out.numel()
    block = block_size(numel, x.device)
    taps = taps.to(device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    _window_sum_kernel[(triton.cdiv(numel, block),)](
        x, taps.contiguous(), out, numel, n_in, n_out, inner, offset, taps.numel(),
        out[0].numel(), out.stride(0), ACC=acc_dtype(x.dtype), BLOCK=block)
    return out


def gaussian(sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    """The reference's normalised Gaussian taps (float64; cast at launch)."""
    return reference.gaussian_taps(sigma, radius, torch.float64, device)
