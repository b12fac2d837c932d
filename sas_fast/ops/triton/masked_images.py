"""The model's input batch straight from the schedule (SPEC 2.6-2.7 fused) as Triton kernels;
the masks are never stored.

Shapes: schedule ``x`` ``B x 1 x H x W`` (N = H W pixels), solved thresholds ``t`` ``B x K``,
pyramid ``P`` ``B x L x C x H x W`` -> images ``B x (J K) x C x H x W``, J = number of modes
(insertion block first, then deletion).

Forward, one program per (b, k, pixel block): ``m = sigmoid(s (x - t_k))`` (``t = +inf / -inf``:
m = 0 / 1), rounded to the schedule's dtype as ``threshold_masks`` stores it; ``v = m``
(insertion) or ``1 - m`` (deletion), ``w = v (L - 1)``, ``lev = min(floor(w), L - 2)``,
``f = w - lev``, ``out = (1 - f) P[lev] + f P[lev + 1]`` for every channel, written contiguous
or channels-last (strides). The channel count ``C`` is a compile-time constant (a run has one).

Backward, two launches, no atomics: program (b, pixel block) recomputes m for every k and
``dL/dm_ki = (L - 1) sum_j sign_j sum_c dout_jkci (P[lev_j + 1] - P[lev_j])_ci`` (sign -1 for
deletion), ``G_ki = dL/dm_ki s m (1 - m)``, and writes ``sum_k G_ki`` plus the block's partial
sums of ``G`` and ``w = m^2 (1 - m)`` per k. Then (implicit gradient, docs/SPEC.md section 3)
program (b, pixel block) adds the partial sums in a fixed order and writes
``dL/dx_i = sum_k [G_ki - w_ki (sum_j G_kj) / (sum_j w_kj + eps)]``; detached: ``sum_k G_ki``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .pyramid import _level_and_fraction
from .launch import acc_dtype, block_size

_EPS = 1e-12


@triton.jit
def _mask(x_ptr, t_ptr, b, k, K, offs, ok, N, s, ACC: tl.constexpr):
    """``(m, finite)``: the mask values of image b, area k at pixels ``offs``, in the schedule's
    dtype then ACC, and whether ``t[b, k]`` is finite."""
    t = tl.load(t_ptr + b * K + k).to(ACC)
    finite = tl.abs(t) < float("inf")
    x = tl.load(x_ptr + b * N + offs, mask=ok, other=0.0)
    m = tl.sigmoid(s * (x.to(ACC) - tl.where(finite, t, 0.0)))
    m = tl.where(finite, m, tl.where(t < 0, 1.0, 0.0)).to(x.dtype).to(ACC)
    return m, finite


@triton.jit
def _forward_kernel(x_ptr, t_ptr, p_ptr, out_ptr, K, N, s: tl.float64, sc, si, C: tl.constexpr,
                    J: tl.constexpr, FIRST_DELETION: tl.constexpr, LEVELS: tl.constexpr,
                    ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Program (b k, pixel block): the J images of mask (b, k) at these pixels, every channel."""
    s = tl.full([], s, ACC)
    bk = tl.program_id(0).to(tl.int64)
    b, k = bk // K, bk % K
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    m, _ = _mask(x_ptr, t_ptr, b, k, K, offs, ok, N, s, ACC)
    for j in tl.static_range(J):
        v = 1 - m if (FIRST_DELETION or j == 1) else m
        lev, f = _level_and_fraction(v, LEVELS)
        lo_ptr = p_ptr + (b * LEVELS + lev) * C * N + offs
        out_row = out_ptr + ((b * J + j) * K + k) * C * N + offs * si
        for c in range(C):
            lo = tl.load(lo_ptr + c * N, mask=ok, other=0.0).to(ACC)
            hi = tl.load(lo_ptr + (C + c) * N, mask=ok, other=0.0).to(ACC)
            tl.store(out_row + c * sc, (1 - f) * lo + f * hi, mask=ok)


@triton.jit
def _gradient_kernel(g_ptr, x_ptr, t_ptr, p_ptr, acc_ptr, part_ptr, K, N, s: tl.float64, gb, gjk,
                     gc, gi, C: tl.constexpr, J: tl.constexpr, FIRST_DELETION: tl.constexpr,
                     LEVELS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Program (b, pixel block): ``acc[b, i] = sum_k G_ki``; ``part[b, block, k] = (sum G, sum w)``."""
    s = tl.full([], s, ACC)
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    acc = tl.zeros([BLOCK], ACC)
    part_row = part_ptr + (b * tl.num_programs(1) + blk) * K * 2
    for k in range(K):
        m, finite = _mask(x_ptr, t_ptr, b, k, K, offs, ok, N, s, ACC)
        dm = tl.zeros([BLOCK], ACC)
        for j in tl.static_range(J):
            deletion = FIRST_DELETION or j == 1
            lev, _ = _level_and_fraction(1 - m if deletion else m, LEVELS)
            lo_ptr = p_ptr + (b * LEVELS + lev) * C * N + offs
            g_row = g_ptr + b * gb + (j * K + k) * gjk + offs * gi
            dot = tl.zeros([BLOCK], ACC)
            for c in range(C):
                lo = tl.load(lo_ptr + c * N, mask=ok, other=0.0).to(ACC)
                hi = tl.load(lo_ptr + (C + c) * N, mask=ok, other=0.0).to(ACC)
                dot += tl.load(g_row + c * gc, mask=ok, other=0.0).to(ACC) * (hi - lo)
            dm += -dot if deletion else dot
        keep = tl.where(ok, tl.where(finite, 1.0, 0.0), 0.0)   # 0: padding, or m exactly 0 / 1
        grad_k = keep * dm * (LEVELS - 1) * s * m * (1 - m)
        acc += grad_k
        tl.store(part_row + 2 * k, tl.sum(grad_k, axis=0))
        tl.store(part_row + 2 * k + 1, tl.sum(keep * m * m * (1 - m), axis=0))
    tl.store(acc_ptr + b * N + offs, acc, mask=ok)


@triton.jit
def _implicit_kernel(acc_ptr, part_ptr, x_ptr, t_ptr, dx_ptr, K, N, s: tl.float64, eps: tl.float64,
                     BLOCKS, BLOCKS_P2: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Program (b, pixel block): ``dx = acc - sum_k w_k (sum G_k) / (sum w_k + eps)``."""
    s, eps = tl.full([], s, ACC), tl.full([], eps, ACC)
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    out = tl.load(acc_ptr + b * N + offs, mask=ok, other=0.0).to(ACC)
    blocks = tl.arange(0, BLOCKS_P2)
    for k in range(K):
        parts = part_ptr + (b * BLOCKS + blocks) * K * 2 + 2 * k
        sum_g = tl.sum(tl.load(parts, mask=blocks < BLOCKS, other=0.0).to(ACC), axis=0)
        sum_w = tl.sum(tl.load(parts + 1, mask=blocks < BLOCKS, other=0.0).to(ACC), axis=0)
        m, finite = _mask(x_ptr, t_ptr, b, k, K, offs, ok, N, s, ACC)
        out -= tl.where(finite, m * m * (1 - m), 0.0) * (sum_g / (sum_w + eps))
    tl.store(dx_ptr + b * N + offs, out, mask=ok)


class MaskedImages(torch.autograd.Function):
    """``(schedule B x 1 x H x W, thresholds B x K, pyramid B x L x C x H x W) -> B x (J K) x C x H x W``.

    Differentiable in ``schedule`` only (thresholds and pyramid are constants)."""

    @staticmethod
    def forward(ctx, schedule, thresholds, pyramid, sharpness, modes, implicit_grad, channels_last):
        if tuple(modes) not in (("insertion",), ("deletion",), ("insertion", "deletion")):
            raise ValueError(f"modes must be insertion and / or deletion in that order, got {modes}")
        dtype = torch.promote_types(schedule.dtype, pyramid.dtype)
        x = schedule.detach().to(dtype).contiguous()
        t = thresholds.detach().to(dtype).contiguous()
        p = pyramid.detach().to(dtype).contiguous()
        b, levels, c, h, w = p.shape
        k, n, j = t.shape[1], h * w, len(modes)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty(b * j * k, c, h, w, dtype=dtype, device=p.device, memory_format=fmt)
        block = block_size(n, p.device)
        _forward_kernel[(b * k, triton.cdiv(n, block))](
            x, t, p, out, k, n, float(sharpness), out.stride(1), out.stride(3), C=c, J=j,
            FIRST_DELETION=modes[0] == "deletion", LEVELS=levels, ACC=acc_dtype(dtype), BLOCK=block)
        ctx.save_for_backward(x, t, p)
        ctx.sharpness, ctx.modes, ctx.implicit_grad = float(sharpness), tuple(modes), bool(implicit_grad)
        return out.view(b, j * k, c, h, w)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, t, p = ctx.saved_tensors
        b, levels, c, h, w = p.shape
        k, n, acc = t.shape[1], h * w, acc_dtype(x.dtype)
        grad = grad.to(x.dtype)
        if grad.stride(3) != w * grad.stride(4):      # then pixel i is at i * stride(4)
            grad = grad.contiguous()
        block = block_size(n, x.device)
        blocks = triton.cdiv(n, block)
        sums = torch.empty(b, n, dtype=x.dtype, device=x.device)
        parts = torch.empty(b, blocks, k, 2, dtype=x.dtype, device=x.device)
        _gradient_kernel[(b, blocks)](
            grad, x, t, p, sums, parts, k, n, ctx.sharpness, grad.stride(0), grad.stride(1),
            grad.stride(2), grad.stride(4), C=c, J=len(ctx.modes), FIRST_DELETION=ctx.modes[0] == "deletion",
            LEVELS=levels, ACC=acc, BLOCK=block)
        if not ctx.implicit_grad:
            return sums.view(b, 1, h, w), None, None, None, None, None, None
        dx = torch.empty(b, 1, h, w, dtype=x.dtype, device=x.device)
        _implicit_kernel[(b, blocks)](sums, parts, x, t, dx, k, n, ctx.sharpness, _EPS, blocks,
                                      BLOCKS_P2=triton.next_power_of_2(blocks), ACC=acc, BLOCK=block)
        return dx, None, None, None, None, None, None


def masked_images(schedule: torch.Tensor, thresholds: torch.Tensor, pyramid: torch.Tensor,
                  sharpness: float, modes: tuple = ("insertion", "deletion"),
                  implicit_grad: bool = True, channels_last: bool = False) -> torch.Tensor:
    """Insertion and / or deletion images ``B x (J K) x C x H x W`` straight from the schedule
    (see the module docstring); differentiable in ``schedule``."""
    return MaskedImages.apply(schedule, thresholds, pyramid, sharpness, tuple(modes), implicit_grad,
                              channels_last)

