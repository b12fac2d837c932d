"""Schedule = SoftMaxPool(Smooth(premask)) (paper eq. 2) as Triton kernels, forward and backward.

Shapes: premask ``P`` ``B x 1 x (H+2r) x (W+2r)`` -> schedule ``B x 1 x H x W``, r = ws // 2.

Forward, four launches, each O(ws) per pixel (the triples go through global memory):
1. ``x = blur_cols(blur_rows(P))``: valid Gaussian blur, the reference's smoothing taps
   (:func:`~sas_fast.ops.reference.smoothing_taps`, sigma = (ws - 1) / 4, built once per window
   and cached), two window sums.
2. Row pass: for row y and column j the online-softmax triple of the row window of the
   reflection-padded ``xp`` (never materialised: indices are reflected on load)
   ``m = max_d xp[y, j+d]``, ``e = sum_d exp(beta (xp - m))``, ``t = sum_d xp exp(beta (xp - m))``;
   the padded rows are reflections of these H rows, so only H rows are stored.
3. Column pass: ``M = max_d m[refl(i+d-r)]``, ``E = sum_d e exp(beta (m - M))``, ``T`` likewise;
   ``out = T / E``. Every exponent is <= 0: stable for any range of values.

Backward, four launches, deterministic (every output element is one program's own gather: no
atomics, no ``reflection_pad2d_backward``). With ``c_i = g_i / E_i`` (``g`` the output gradient),
``d out_i / d xp_v = p_iv (1 + beta (xp_v - out_i))`` splits the same way:
- column pass (``H x W``): ``A_y = sum_i n_y(i) c_i exp(beta (m_y - M_i))`` and
  ``B_y = sum_i n_y(i) c_i exp(beta (m_y - M_i)) (out_i - m_y)``, where ``n_y(i)`` counts the
  padded rows u that reflect to row y and lie in the column window of output i;
- row pass (``H x W``): ``dx_v = sum_j n_v(j) exp(beta (x_v - m_j)) (A_j + beta ((x_v - m_j) A_j
  - B_j))``, ``n_v(j)`` likewise for the padded columns of pixel v in row window j. ``x_v <= m_j
  <= M_i`` keeps every exponent <= 0 and the differences are local, so large offsets do not cancel.
  Reflection folding: ``n_y(i) = [0 <= i < H] (1 + [y >= 1, i <= r - y] + [y <= H - 2,
  i >= 2 H - 2 - y - r])`` for ``|i - y| <= r`` (the top and bottom mirror images of row y lie
  in the windows of those i, which are all within r of y); the same along columns;
- the blur is transposed (full convolution with the same symmetric taps, two window sums).

The window is a compile-time constant (``WINDOW``) of the four pooling kernels: a run has one
window, so each kernel compiles once per run and its window loops have a known trip count.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .. import reference
from .launch import acc_dtype, block_size
from .window import cached_taps, window_sum


@triton.jit
def _reflect(i, n):
    """Index in ``[-(n-1), 2(n-1)]`` reflected into ``[0, n)`` without repeating the edge."""
    i = tl.abs(i)
    return tl.where(i > n - 1, 2 * (n - 1) - i, i)


@triton.jit
def _fold_count(y, i, n, r):
    """How many of the reflection-padded positions of ``y`` (``|i - y| <= r``) lie in window ``i``."""
    inside = (i >= 0) & (i < n)
    top = (y >= 1) & (i <= r - y)
    bottom = (y <= n - 2) & (i >= 2 * n - 2 - y - r)
    return tl.where(inside, 1 + top.to(tl.int32) + bottom.to(tl.int32), 0)


@triton.jit
def _rows_forward_kernel(x_ptr, m_ptr, e_ptr, t_ptr, beta: tl.float64, H, W, numel,
                         WINDOW: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Triples ``(m, e, t)`` ``B x H x W`` of the row windows of the reflection-padded x."""
    beta = tl.full([], beta, ACC)
    R = WINDOW // 2
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < numel
    j = idx % W
    row = x_ptr + (idx - j)
    m = tl.full([BLOCK], float("-inf"), ACC)
    for d in range(WINDOW):
        m = tl.maximum(m, tl.load(row + _reflect(j + d - R, W), mask=valid, other=0.0).to(ACC))
    e = tl.zeros([BLOCK], ACC)
    t = tl.zeros([BLOCK], ACC)
    for d in range(WINDOW):
        v = tl.load(row + _reflect(j + d - R, W), mask=valid, other=0.0).to(ACC)
        p = tl.exp(beta * (v - m))
        e += p
        t += p * v
    tl.store(m_ptr + idx, m, mask=valid)
    tl.store(e_ptr + idx, e, mask=valid)
    tl.store(t_ptr + idx, t, mask=valid)


@triton.jit
def _cols_forward_kernel(m_ptr, e_ptr, t_ptr, big_m_ptr, big_e_ptr, out_ptr, beta: tl.float64, H, W,
                         numel, WINDOW: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Merge the row triples of padded rows i..i+ws-1: ``M, E`` and ``out = T / E``, ``B x H x W``."""
    beta = tl.full([], beta, ACC)
    R = WINDOW // 2
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < numel
    i = (idx // W) % H
    base = idx - i * W                      # (b, 0, j)
    big_m = tl.full([BLOCK], float("-inf"), ACC)
    for d in range(WINDOW):
        at = base + _reflect(i + d - R, H) * W
        big_m = tl.maximum(big_m, tl.load(m_ptr + at, mask=valid, other=0.0).to(ACC))
    big_e = tl.zeros([BLOCK], ACC)
    big_t = tl.zeros([BLOCK], ACC)
    for d in range(WINDOW):
        at = base + _reflect(i + d - R, H) * W
        scale = tl.exp(beta * (tl.load(m_ptr + at, mask=valid, other=0.0).to(ACC) - big_m))
        big_e += scale * tl.load(e_ptr + at, mask=valid, other=1.0).to(ACC)
        big_t += scale * tl.load(t_ptr + at, mask=valid, other=0.0).to(ACC)
    tl.store(big_m_ptr + idx, big_m, mask=valid)
    tl.store(big_e_ptr + idx, big_e, mask=valid)
    tl.store(out_ptr + idx, big_t / big_e, mask=valid)


@triton.jit
def _cols_backward_kernel(grad_ptr, m_ptr, big_m_ptr, big_e_ptr, out_ptr, a_ptr, b_ptr,
                          beta: tl.float64, H, W, numel, WINDOW: tl.constexpr, ACC: tl.constexpr,
                          BLOCK: tl.constexpr):
    """``A_y, B_y`` (``B x H x W``): sums over the outputs i whose column window holds a padded
    copy of row y, each counted once per copy."""
    beta = tl.full([], beta, ACC)
    R = WINDOW // 2
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < numel
    y = (idx // W) % H
    base = idx - y * W                      # (b, 0, j)
    m_y = tl.load(m_ptr + idx, mask=valid, other=0.0).to(ACC)
    acc_a = tl.zeros([BLOCK], ACC)
    acc_b = tl.zeros([BLOCK], ACC)
    for d in range(WINDOW):
        i = y - R + d
        count = _fold_count(y, i, H, R)
        ok = valid & (count > 0)
        at = base + i * W
        c = count * (tl.load(grad_ptr + at, mask=ok, other=0.0).to(ACC)
                     / tl.load(big_e_ptr + at, mask=ok, other=1.0).to(ACC))
        w = c * tl.exp(beta * tl.where(ok, m_y - tl.load(big_m_ptr + at, mask=ok, other=0.0).to(ACC), 0.0))
        acc_a += w
        acc_b += w * (tl.load(out_ptr + at, mask=ok, other=0.0).to(ACC) - m_y)
    tl.store(a_ptr + idx, acc_a, mask=valid)
    tl.store(b_ptr + idx, acc_b, mask=valid)


@triton.jit
def _rows_backward_kernel(x_ptr, m_ptr, a_ptr, b_ptr, dx_ptr, beta: tl.float64, H, W, numel,
                          WINDOW: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Gradient ``B x H x W`` w.r.t. the blurred x, the reflection padding folded back."""
    beta = tl.full([], beta, ACC)
    R = WINDOW // 2
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < numel
    v = idx % W
    row = idx - v                           # (b, y, 0)
    xv = tl.load(x_ptr + idx, mask=valid, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK], ACC)
    for d in range(WINDOW):
        j = v - R + d
        count = _fold_count(v, j, W, R)
        ok = valid & (count > 0)
        diff = tl.where(ok, xv - tl.load(m_ptr + row + j, mask=ok, other=0.0).to(ACC), 0.0)
        a = tl.load(a_ptr + row + j, mask=ok, other=0.0).to(ACC)
        bb = tl.load(b_ptr + row + j, mask=ok, other=0.0).to(ACC)
        acc += count * tl.exp(beta * diff) * (a + beta * (diff * a - bb))
    tl.store(dx_ptr + idx, acc, mask=valid)


def _launch(kernel, numel, device, *args, window, acc):
    block = block_size(numel, device)
    kernel[(triton.cdiv(numel, block),)](*args, numel, WINDOW=window, ACC=acc, BLOCK=block)


def _smoothing_taps(window: int, like: torch.Tensor) -> torch.Tensor:
    """The reference's smoothing taps ``[window]`` for tensors like ``like`` (cached)."""
    return cached_taps(reference.smoothing_sigma(window), window // 2, like)


class SmoothSoftmaxPool(torch.autograd.Function):
    """``premask B x 1 x (H+2r) x (W+2r) -> schedule B x 1 x H x W`` (see the module docstring)."""

    @staticmethod
    def forward(ctx, premask: torch.Tensor, window: int, beta: float) -> torch.Tensor:
        r = window // 2
        p = premask.detach()[:, 0].contiguous()                      # B x (H+2r) x (W+2r)
        h, w = p.shape[1] - 2 * r, p.shape[2] - 2 * r
        taps, acc = _smoothing_taps(window, p), acc_dtype(p.dtype)
        x = window_sum(window_sum(p, taps, 2, 0, w), taps, 1, 0, h)   # B x H x W
        m, e, t = (torch.empty_like(x) for _ in range(3))
        _launch(_rows_forward_kernel, m.numel(), p.device, x, m, e, t, beta, h, w, window=window,
                acc=acc)
        big_m, big_e, out = (torch.empty_like(x) for _ in range(3))
        _launch(_cols_forward_kernel, x.numel(), p.device, m, e, t, big_m, big_e, out, beta, h, w,
                window=window, acc=acc)
        ctx.save_for_backward(x, m, big_m, big_e, out)
        ctx.window, ctx.beta = window, beta
        return out.unsqueeze(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, m, big_m, big_e, out = ctx.saved_tensors
        window, beta, r = ctx.window, ctx.beta, ctx.window // 2
        b, h, w = x.shape
        acc = acc_dtype(x.dtype)
        grad = grad[:, 0].to(x.dtype).contiguous()
        a, bb, dx = (torch.empty_like(x) for _ in range(3))
        _launch(_cols_backward_kernel, x.numel(), x.device, grad, m, big_m, big_e, out, a, bb, beta,
                h, w, window=window, acc=acc)
        _launch(_rows_backward_kernel, x.numel(), x.device, x, m, a, bb, dx, beta, h, w, window=window,
                acc=acc)
        taps = _smoothing_taps(window, x)
        dp = window_sum(window_sum(dx, taps, 1, -2 * r, h + 2 * r), taps, 2, -2 * r, w + 2 * r)
        return dp.unsqueeze(1), None, None


def smooth_softmax_pool(premask: torch.Tensor, window: int, beta: float = 1.0) -> torch.Tensor:
    """``B x 1 x (H+2r) x (W+2r) -> B x 1 x H x W``: SoftMaxPool(Smooth(premask)), r = window // 2."""
    return SmoothSoftmaxPool.apply(premask, window, float(beta))
