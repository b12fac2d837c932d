"""The Extremal-Perturbation blur pyramid and the masking operator (SPEC 2.7) as Triton kernels.

``blur_pyramid``: ``B x C x H x W -> B x L x C x H x W`` (no grad); level l is the image blurred
by a separable Gaussian of sigma ``max_blur (1 - l / (L - 1))``, taps at ``+-ceil(4 sigma)``
(:func:`~sas_fast.ops.reference.pyramid_blur`), zero padding: two window sums per level, written
straight into the pyramid.

``pyramid_mask``: ``(P B x L x C x H x W, m B x K x H x W) -> B x K x C x H x W``,
``w = m (L - 1)``, ``k = min(floor(w), L - 2)`` (and >= 0), ``f = w - k``,
``out = (1 - f) P[k] + f P[k + 1]``. Backward: ``dm = (L - 1) sum_c dout_c (P[k + 1] - P[k])_c``.
One program per (b, mask, pixel block) loads the mask once and loops over the channels (``C``,
a compile-time constant: a run has one channel count).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .. import reference
from .launch import acc_dtype, block_size
from .window import cached_taps, window_sum


@torch.no_grad()
def blur_pyramid(images: torch.Tensor, levels: int = 8, max_blur: float = 20.0) -> torch.Tensor:
    """``B x C x H x W -> B x L x C x H x W``, level 0 the most blurred, level L - 1 the image."""
    images = images.detach().contiguous()
    b, c, h, w = images.shape
    out = torch.empty(b, levels, c, h, w, dtype=images.dtype, device=images.device)
    for level in range(levels):
        sigma, radius = reference.pyramid_blur(level, levels, max_blur)
        if radius == 0:
            out[:, level] = images
            continue
        taps = cached_taps(sigma, radius, images)
        rows = window_sum(images, taps, 3, -radius, w)
        window_sum(rows, taps, 2, -radius, h, out=out[:, level])
    return out


@triton.jit
def _level_and_fraction(m, LEVELS: tl.constexpr):
    """``k = clamp(floor(m (L - 1)), 0, L - 2)`` and ``f = m (L - 1) - k``."""
    w = m * (LEVELS - 1)
    k = tl.minimum(tl.maximum(w, 0.0), LEVELS - 2).to(tl.int32)
    return k, w - k


@triton.jit
def _mask_forward_kernel(p_ptr, m_ptr, out_ptr, K, HW, C: tl.constexpr, LEVELS: tl.constexpr,
                         ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Program (b k, pixel block): ``out[b, k, c] = (1 - f) P[b, lev] + f P[b, lev + 1]`` for every c."""
    bk = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < HW
    k, f = _level_and_fraction(tl.load(m_ptr + bk * HW + offs, mask=ok, other=0.0).to(ACC), LEVELS)
    lo_ptr = p_ptr + ((bk // K) * LEVELS + k) * C * HW + offs
    for c in range(C):
        lo = tl.load(lo_ptr + c * HW, mask=ok, other=0.0).to(ACC)
        hi = tl.load(lo_ptr + (C + c) * HW, mask=ok, other=0.0).to(ACC)
        tl.store(out_ptr + (bk * C + c) * HW + offs, (1 - f) * lo + f * hi, mask=ok)


@triton.jit
def _mask_backward_kernel(p_ptr, m_ptr, g_ptr, dm_ptr, K, HW, C: tl.constexpr, LEVELS: tl.constexpr,
                          ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Program (b k, pixel block): ``dm[b, k] = (L - 1) sum_c dout[b, k, c] (P[lev + 1] - P[lev])_c``."""
    bk = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < HW
    k, f = _level_and_fraction(tl.load(m_ptr + bk * HW + offs, mask=ok, other=0.0).to(ACC), LEVELS)
    lo_ptr = p_ptr + ((bk // K) * LEVELS + k) * C * HW + offs
    acc = tl.zeros([BLOCK], ACC)
    for c in range(C):
        lo = tl.load(lo_ptr + c * HW, mask=ok, other=0.0).to(ACC)
        hi = tl.load(lo_ptr + (C + c) * HW, mask=ok, other=0.0).to(ACC)
        acc += tl.load(g_ptr + (bk * C + c) * HW + offs, mask=ok, other=0.0).to(ACC) * (hi - lo)
    tl.store(dm_ptr + bk * HW + offs, acc * (LEVELS - 1), mask=ok)


class PyramidMask(torch.autograd.Function):
    """``(pyramid B x L x C x H x W, masks B x K x H x W) -> B x K x C x H x W``.

    Differentiable in ``masks`` only (the pyramid is a constant, built under no_grad)."""

    @staticmethod
    def forward(ctx, pyramid: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        pyramid, masks = pyramid.detach().contiguous(), masks.detach().contiguous()
        b, levels, c, h, w = pyramid.shape
        k = masks.shape[1]
        dtype = torch.promote_types(pyramid.dtype, masks.dtype)
        out = torch.empty(b, k, c, h, w, dtype=dtype, device=pyramid.device)
        block = block_size(h * w, pyramid.device)
        _mask_forward_kernel[(b * k, triton.cdiv(h * w, block))](
            pyramid, masks, out, k, h * w, C=c, LEVELS=levels, ACC=acc_dtype(dtype), BLOCK=block)
        ctx.save_for_backward(pyramid, masks)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        pyramid, masks = ctx.saved_tensors
        b, levels, c, h, w = pyramid.shape
        k = masks.shape[1]
        grad = grad.contiguous()
        dm = torch.empty_like(masks)
        block = block_size(h * w, pyramid.device)
        _mask_backward_kernel[(b * k, triton.cdiv(h * w, block))](
            pyramid, masks, grad, dm, k, h * w, C=c, LEVELS=levels,
            ACC=acc_dtype(torch.promote_types(grad.dtype, masks.dtype)), BLOCK=block)
        return None, dm


def pyramid_mask(pyramid: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Masked images ``B x K x C x H x W`` (see the module docstring); differentiable in ``masks``."""
    return PyramidMask.apply(pyramid, masks)
