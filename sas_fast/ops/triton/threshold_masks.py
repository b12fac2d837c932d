"""Masks of prescribed areas (paper eq. 3-6) as Triton kernels: solve, masks, implicit gradient.

Shapes: schedule ``x`` ``B x 1 x H x W`` (N = H W pixels), areas ``a`` ``[K]`` ->
masks ``m`` ``B x K x H x W``, thresholds ``t`` ``B x K``.

Forward: one program per (b, k) runs the bracket-safeguarded Levenberg-Marquardt solve of
``r(t) = A(t) - a_k = 0``, ``A(t) = mean_i sigmoid(s (x_i - t))^2``, exactly as
:func:`sas_fast.ops.reference.solve_thresholds`: ``J = A' = -2 s mean sig^2 (1 - sig)``; least
squares on ``rho(t) = logit(sqrt A) - logit(sqrt a_k)`` (same root as r, linear in t for a
constant schedule), ``rho' = J / (2 A (1 - sqrt A))``, Newton point ``t_N = t - rho / rho'``, LM
point (Marquardt's scaling) ``t_LM = t + (t_N - t) / (1 + lambda)``. The damping lambda starts
at 0 (undamped: Newton) and after every LM step follows Marquardt's rule: ``lambda / 10`` if the
step reduced ``|r|``, else ``max(10 lambda, 1)``. Each step evaluates ``t_LM`` if it is defined
(0 < A < 1, J < 0) and strictly inside the bracket ``[lo, hi]`` (shrunk by every evaluated
point), else the bisection ``(lo + hi) / 2``; stop at ``|r| < tol`` or ``max_iter`` steps; keep
the point of least ``|r|``. One pass over the pixels per step gives both A and J. Then it writes
``m_k = sigmoid(s (x - t_k))`` (unless the thresholds alone are asked for,
:func:`solve_thresholds`: then no masks exist). Areas 0 / 1: exact 0 / 1 masks,
``t = +inf / -inf``. The bracket is set up inside the kernel (one more pass: min and max of the
row, then the reference's :func:`~sas_fast.ops.reference.solve_bracket`, the same function
compiled as a device function), and so is the start's clamp into it; the start itself is the warm
start, or for a cold start the reference's :func:`~sas_fast.ops.reference.quantile_start`
(``torch.quantile``, the one solve set-up left in torch ops). A warm-started solve is one launch.

Backward (docs/SPEC.md section 3): ``G_ki = dL/dm_ki s m_ki (1 - m_ki)``, ``w_ki = m_ki^2 (1 - m_ki)``,
``dL/dx_i = sum_k [G_ki - w_ki (sum_j G_kj) / (sum_j w_kj + eps)]`` (implicit), or
``sum_k G_ki`` (thresholds held fixed). A per-(b, k) reduction kernel, then a per-pixel kernel.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .. import reference
from .launch import acc_dtype, block_size, device_function, row_warps

_EPS = 1e-12
_bracket = device_function(reference.solve_bracket)


@triton.jit
def _row_min_max(x_row, N, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """``(min_i x_i, max_i x_i)`` of one schedule row."""
    low = tl.full([BLOCK], float("inf"), ACC)
    high = tl.full([BLOCK], float("-inf"), ACC)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < N
        x = tl.load(x_row + offs, mask=ok, other=0.0).to(ACC)
        low = tl.minimum(low, tl.where(ok, x, float("inf")))
        high = tl.maximum(high, tl.where(ok, x, float("-inf")))
    return tl.min(low, axis=0), tl.max(high, axis=0)


@triton.jit
def _evaluate(x_row, t, a, logit_a, s, N, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """``(r(t), t_N(t))``: ``A - a`` and the undamped (Newton) point on rho (NaN where it is
    undefined)."""
    sq = tl.zeros([BLOCK], ACC)
    cube = tl.zeros([BLOCK], ACC)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < N
        sig = tl.sigmoid(s * (tl.load(x_row + offs, mask=ok, other=0.0).to(ACC) - t))
        sig2 = tl.where(ok, sig * sig, 0.0)
        sq += sig2
        cube += sig2 * (1 - sig)
    area = tl.sum(sq, axis=0) / N
    jac = -2 * s * tl.sum(cube, axis=0) / N
    defined = (area > 0) & (area < 1) & (jac < 0)
    root = tl.sqrt(tl.where(defined, area, 0.25))
    step = (tl.log(root / (1 - root)) - logit_a) * 2 * area * (1 - root) / tl.where(defined, jac, -1.0)
    return area - a, tl.where(defined, t - step, float("nan"))


@triton.jit
def _solve_kernel(x_ptr, a_ptr, t0_ptr, t_ptr, m_ptr, K, N, s: tl.float64, tol: tl.float64,
                  max_iter, write_masks, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Program (b, k): threshold ``t[b, k]`` from the start ``t0[b, k]`` (clamped into the bracket),
    and if ``write_masks`` the mask row ``m[b, k, :]``."""
    s, tol = tl.full([], s, ACC), tl.full([], tol, ACC)
    pid = tl.program_id(0)
    x_row = x_ptr + (pid // K).to(tl.int64) * N
    m_row = m_ptr + pid.to(tl.int64) * N
    a = tl.load(a_ptr + pid % K).to(ACC)
    if (a > 0) & (a < 1):
        logit_a = tl.log(tl.sqrt(a) / (1 - tl.sqrt(a)))
        x_min, x_max = _row_min_max(x_row, N, ACC, BLOCK)
        lo, hi = _bracket(x_min, x_max, logit_a, s)
        t = tl.minimum(tl.maximum(tl.load(t0_ptr + pid).to(ACC), lo), hi)
        r, t_newton = _evaluate(x_row, t, a, logit_a, s, N, ACC, BLOCK)
        lo = tl.where(r > 0, tl.maximum(lo, t), lo)
        hi = tl.where(r <= 0, tl.minimum(hi, t), hi)
        t_best = t
        r_best = r
        damping = tl.zeros([], ACC)  # Marquardt's lambda
        it = 0
        while (it < max_iter) & (tl.abs(r) >= tol):
            t_lm = t + (t_newton - t) / (1 + damping)
            lm = (t_lm > lo) & (t_lm < hi)
            t_new = tl.where(lm, t_lm, (lo + hi) / 2)
            r_new, t_newton = _evaluate(x_row, t_new, a, logit_a, s, N, ACC, BLOCK)
            marquardt = tl.where(tl.abs(r_new) < tl.abs(r), damping / 10, tl.maximum(10 * damping, 1.0))
            damping = tl.where(lm, marquardt, damping)
            lo = tl.where(r_new > 0, tl.maximum(lo, t_new), lo)
            hi = tl.where(r_new <= 0, tl.minimum(hi, t_new), hi)
            t = t_new
            r = r_new
            better = tl.abs(r) < tl.abs(r_best)
            t_best = tl.where(better, t, t_best)
            r_best = tl.where(better, r, r_best)
            it += 1
        tl.store(t_ptr + pid, t_best)
        if write_masks != 0:
            for start in range(0, N, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                ok = offs < N
                x = tl.load(x_row + offs, mask=ok, other=0.0).to(ACC)
                tl.store(m_row + offs, tl.sigmoid(s * (x - t_best)), mask=ok)
    else:
        tl.store(t_ptr + pid, tl.where(a > 0, float("-inf"), float("inf")))
        if write_masks != 0:
            fill = tl.zeros([BLOCK], ACC) + tl.where(a > 0, 1.0, 0.0)
            for start in range(0, N, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                tl.store(m_row + offs, fill, mask=offs < N)


@triton.jit
def _area_coefficient_kernel(g_ptr, m_ptr, c_ptr, N, s: tl.float64, eps: tl.float64,
                             ACC: tl.constexpr, BLOCK: tl.constexpr):
    """``c[b, k] = sum_j G_kj / (sum_j w_kj + eps)``."""
    s, eps = tl.full([], s, ACC), tl.full([], eps, ACC)
    pid = tl.program_id(0)
    g_row = g_ptr + pid.to(tl.int64) * N
    m_row = m_ptr + pid.to(tl.int64) * N
    sum_g = tl.zeros([BLOCK], ACC)
    sum_w = tl.zeros([BLOCK], ACC)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < N
        m = tl.load(m_row + offs, mask=ok, other=0.0).to(ACC)
        sum_g += tl.load(g_row + offs, mask=ok, other=0.0).to(ACC) * s * m * (1 - m)
        sum_w += m * m * (1 - m)
    tl.store(c_ptr + pid, tl.sum(sum_g, axis=0) / (tl.sum(sum_w, axis=0) + eps))


@triton.jit
def _schedule_grad_kernel(g_ptr, m_ptr, c_ptr, dx_ptr, K, N, s: tl.float64, IMPLICIT: tl.constexpr,
                          ACC: tl.constexpr, BLOCK: tl.constexpr):
    """``dx[b, i] = sum_k G_ki - c[b, k] w_ki`` (the second term only if IMPLICIT)."""
    s = tl.full([], s, ACC)
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    acc = tl.zeros([BLOCK], ACC)
    for k in range(K):
        row = (b * K + k) * N
        m = tl.load(m_ptr + row + offs, mask=ok, other=0.0).to(ACC)
        term = tl.load(g_ptr + row + offs, mask=ok, other=0.0).to(ACC) * s * m * (1 - m)
        if IMPLICIT:
            term -= tl.load(c_ptr + b * K + k).to(ACC) * m * m * (1 - m)
        acc += term
    tl.store(dx_ptr + b * N + offs, acc, mask=ok)


def _solve(x: torch.Tensor, areas: torch.Tensor, sharpness: float, thresholds_init, tol: float,
           max_iter: int, masks: torch.Tensor | None = None) -> torch.Tensor:
    """Thresholds ``B x K`` of schedule rows ``x`` ``B x N`` (contiguous) for ``areas`` ``[K]``, one
    launch when warm-started; the masks are written into ``masks`` ``B x K x N`` if given."""
    (b, n), k = x.shape, areas.numel()
    areas = areas.to(device=x.device, dtype=x.dtype).contiguous()
    if thresholds_init is None:
        start = reference.quantile_start(x, reference.solved_areas(areas)[1])
    else:
        start = thresholds_init.detach().contiguous()
    t = torch.empty(b, k, dtype=x.dtype, device=x.device)
    _solve_kernel[(b * k,)](x, areas, start, t, t if masks is None else masks, k, n,
                            float(sharpness), float(tol), int(max_iter), int(masks is not None),
                            ACC=acc_dtype(x.dtype), BLOCK=block_size(n, x.device, gpu_block=1024),
                            num_warps=row_warps(n))
    return t


class ThresholdMasks(torch.autograd.Function):
    """``(x B x 1 x H x W, areas [K]) -> (masks B x K x H x W, thresholds B x K)``."""

    @staticmethod
    def forward(ctx, schedule, areas, sharpness, thresholds_init, implicit_grad, tol, max_iter):
        x = schedule.detach().flatten(1).contiguous()                # B x N
        masks = torch.empty(x.shape[0], areas.numel(), x.shape[1], dtype=x.dtype, device=x.device)
        t = _solve(x, areas, sharpness, thresholds_init, tol, max_iter, masks)
        b, k = t.shape
        masks = masks.view(b, k, *schedule.shape[-2:])
        ctx.save_for_backward(masks)
        ctx.sharpness, ctx.implicit_grad = float(sharpness), bool(implicit_grad)
        ctx.mark_non_differentiable(t)
        return masks, t

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_masks, grad_thresholds):
        (masks,) = ctx.saved_tensors
        b, k, h, w = masks.shape
        n, acc = h * w, acc_dtype(masks.dtype)
        grad = grad_masks.to(masks.dtype).contiguous()
        coef = torch.zeros(b, k, dtype=masks.dtype, device=masks.device)
        if ctx.implicit_grad:
            _area_coefficient_kernel[(b * k,)](grad, masks, coef, n, ctx.sharpness, _EPS, ACC=acc,
                                               BLOCK=block_size(n, masks.device, gpu_block=1024),
                                               num_warps=row_warps(n))
        dx = torch.empty(b, 1, h, w, dtype=masks.dtype, device=masks.device)
        block = block_size(n, masks.device)
        _schedule_grad_kernel[(b, triton.cdiv(n, block))](grad, masks, coef, dx, k, n, ctx.sharpness,
                                                          IMPLICIT=ctx.implicit_grad, ACC=acc,
                                                          BLOCK=block)
        return dx, None, None, None, None, None, None


def threshold_masks(schedule: torch.Tensor, areas: torch.Tensor, sharpness: float,
                    thresholds_init: torch.Tensor | None = None, implicit_grad: bool = True,
                    tol: float = 1e-4, max_iter: int = 50):
    """``(masks B x K x H x W, thresholds B x K)``: ``m_k = sigmoid(s (x - t_k))``, ``mean m_k^2 = a_k``."""
    return ThresholdMasks.apply(schedule, areas, sharpness, thresholds_init, implicit_grad, tol,
                                max_iter)


def solve_thresholds(schedule: torch.Tensor, areas: torch.Tensor, sharpness: float,
                     thresholds_init: torch.Tensor | None = None, tol: float = 1e-4,
                     max_iter: int = 50) -> torch.Tensor:
    """Thresholds ``B x K`` of :func:`threshold_masks` alone: the same kernel, no masks written or
    allocated (no gradient)."""
    with torch.no_grad():
        return _solve(schedule.detach().flatten(1).contiguous(), areas, sharpness, thresholds_init,
                      tol, max_iter)
