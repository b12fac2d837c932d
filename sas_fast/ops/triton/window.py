"""The 1-D window sum ``y[.., l, ..] = sum_d taps[d] x[.., l + offset + d, ..]`` along one axis
(zero outside ``x``) as a Triton kernel, which gives every separable Gaussian pass (the valid
blur, its transpose, the pyramid's blurs), and the Gaussian taps it reads, built once per
(filter, dtype, device) and cached: no per-call tensor set-up."""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .. import reference
from .launch import acc_dtype, block_size, taps_dtype


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
    ``offset = -radius``, ``n_out = n``: zero-padded 'same' filter. ``taps`` contiguous, on
    ``x``'s device, in ``taps_dtype(x.dtype)`` (as :func:`cached_taps` gives them). ``out``
    (optional) may be a view whose every ``out[b]`` is contiguous (a slice of a larger batch).
    """
    x = x.contiguous()
    dim = dim % x.dim()
    shape = list(x.shape)
    n_in, inner = shape[dim], math.prod(shape[dim + 1:])
    shape[dim] = n_out
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    assert list(out.shape) == shape and out[0].is_contiguous()
    assert taps.device == x.device and taps.dtype == taps_dtype(x.dtype) and taps.is_contiguous()
    numel = out.numel()
    block = block_size(numel, x.device)
    _window_sum_kernel[(triton.cdiv(numel, block),)](
        x, taps, out, numel, n_in, n_out, inner, offset, taps.numel(),
        out[0].numel(), out.stride(0), ACC=acc_dtype(x.dtype), BLOCK=block)
    return out


@functools.lru_cache(maxsize=128)
def _taps(sigma: float, radius: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return reference.gaussian_taps(sigma, radius, dtype, device)


def cached_taps(sigma: float, radius: int, like: torch.Tensor) -> torch.Tensor:
    """The reference's normalised Gaussian taps ``[2 radius + 1]`` (:func:`reference.gaussian_taps`,
    computed in float64) in ``taps_dtype(like.dtype)`` on ``like``'s device; built on the first
    call for each (sigma, radius, dtype, device), then reused (never written)."""
    return _taps(float(sigma), int(radius), taps_dtype(like.dtype), like.device)
