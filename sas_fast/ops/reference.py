"""Plain-PyTorch reference implementations of the three SaS ops: the oracle.

Every fused backend (Triton, C++) is tested against these. They are written to be
read: each function states its shapes and formula and uses only differentiable
PyTorch ops, so autograd supplies the backward pass (the threshold solve is the one
exception: it runs under ``no_grad`` and its implicit gradient is built in explicitly).
The Python-side math the fused backends share is defined here once, as small named functions:
the smoothing's sigma and taps, the pyramid's sigma and radius per level, the threshold solve's
solved areas, bracket and cold start.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_taps(sigma: float, radius: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian ``exp(-x^2 / (2 sigma^2))`` at x = -radius..radius, ``[2 radius + 1]``.

    sigma = 0 gives the identity filter ``[0, .., 1, .., 0]``.
    """
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    if sigma <= 0:
        taps = (x == 0).to(torch.float64)
    else:
        taps = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return (taps / taps.sum()).to(dtype)


def smoothing_sigma(window: int) -> float:
    """Sigma of the schedule's Gaussian smoothing for a ``window``-pixel window: ``(window - 1) / 4``
    (the window then spans +-2 sigma)."""
    return (window - 1) / 4.0


def smoothing_taps(window: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The smoothing's taps ``[window]``: :func:`gaussian_taps` of :func:`smoothing_sigma`, radius
    ``window // 2``."""
    return gaussian_taps(smoothing_sigma(window), window // 2, dtype, device)


def pyramid_blur(level: int, levels: int, max_blur: float) -> tuple:
    """``(sigma, radius)`` of pyramid level ``level`` of ``levels``: ``sigma = max_blur (1 - l / (L - 1))``
    (level 0 the most blurred, level L - 1 the image, sigma 0), taps at ``+-radius``,
    ``radius = ceil(4 sigma)``."""
    sigma = max_blur * (1 - level / (levels - 1))
    return sigma, math.ceil(4 * sigma)


def _separable_conv(x: torch.Tensor, taps: torch.Tensor, padding: int) -> torch.Tensor:
    """Depthwise 2-D convolution of ``x`` (N x C x H x W) with ``taps`` along W then H."""
    c = x.shape[1]
    n = taps.numel()
    kw = taps.view(1, 1, 1, n).expand(c, 1, 1, n)
    kh = taps.view(1, 1, n, 1).expand(c, 1, n, 1)
    x = F.conv2d(x, kw, padding=(0, padding), groups=c)
    return F.conv2d(x, kh, padding=(padding, 0), groups=c)


def gaussian_smooth(premask: torch.Tensor, window: int) -> torch.Tensor:
    """Valid Gaussian blur: ``B x 1 x (H+2r) x (W+2r) -> B x 1 x H x W``, r = window // 2.

    Taps ``exp(-x^2 / (2 sigma^2))``, sigma = (window - 1) / 4, normalised to sum 1.
    """
    return _separable_conv(premask, smoothing_taps(window, premask.dtype, premask.device), padding=0)


def softmax_pool(x: torch.Tensor, window: int, beta: float = 1.0) -> torch.Tensor:
    """SoftMaxPool (paper eq. 2): ``out_i = sum_{j in N(i)} p_j x_j``, ``p = softmax(beta x)`` over N(i).

    N(i) is the ``window x window`` neighbourhood of pixel i (stride 1) in ``x``
    reflection-padded by r = window // 2, so ``B x C x H x W -> B x C x H x W``.

    The 2-D window is the product of a row window and a column window, so the sums
    split: a row pass reduces each row window to the online-softmax triple
    (max m, sum of exp e = sum exp(beta (x - m)), weighted sum t = sum x exp(beta (x - m)))
    and a column pass merges the triples, rescaling by exp(beta (m - M)) with M the
    column maximum. ``out = T / E``. Exact, never exp() of a raw value, O(window) per pixel.
    """
    r = window // 2
    xp = F.pad(x, (r, r, r, r), mode="reflect")
    rows = xp.unfold(3, window, 1)                          # B x C x (H+2r) x W x ws
    m = rows.amax(dim=-1, keepdim=True)
    p = torch.exp(beta * (rows - m))
    e, t, m = p.sum(-1), (p * rows).sum(-1), m.squeeze(-1)  # B x C x (H+2r) x W each
    m_col, e_col, t_col = (v.unfold(2, window, 1) for v in (m, e, t))  # B x C x H x W x ws
    big_m = m_col.amax(dim=-1, keepdim=True)
    scale = torch.exp(beta * (m_col - big_m))
    return (t_col * scale).sum(-1) / (e_col * scale).sum(-1)


def smooth_softmax_pool(premask: torch.Tensor, window: int, beta: float = 1.0) -> torch.Tensor:
    """Schedule from pre-mask (paper eq. 2): ``SoftMaxPool(Smooth(premask))``.

    ``premask``: ``B x 1 x (H+2r) x (W+2r)`` -> schedule ``B x 1 x H x W``, r = window // 2.
    """
    return softmax_pool(gaussian_smooth(premask, window), window, beta)


def mask_area(masks: torch.Tensor) -> torch.Tensor:
    """Size of a soft mask (paper eq. 4-5): ``mean_i m_i^2``, ``B x K x H x W -> B x K``."""
    return masks.square().mean(dim=(-2, -1))


def solved_areas(areas: torch.Tensor) -> tuple:
    """``(inner, a_in)``: which areas the threshold solve solves (``0 < a < 1``; areas 0 / 1 give
    thresholds +inf / -inf) and the areas with the others replaced by 0.5 (any inner value: their
    solve's values are discarded)."""
    inner = (areas > 0) & (areas < 1)
    return inner, torch.where(inner, areas, torch.full_like(areas, 0.5))


def root_area_logit(areas: torch.Tensor) -> torch.Tensor:
    """``logit(sqrt a) = log(sqrt a / (1 - sqrt a))``, the LM solve's target value of
    ``rho = logit(sqrt A(t))`` (areas in (0, 1))."""
    root = areas.sqrt()
    return torch.log(root / (1 - root))


def solve_bracket(x_min, x_max, logit_root_area, sharpness):
    """Initial bracket ``(lo, hi)`` of the threshold solve: ``lo = min x - (logit(sqrt a) + 1) / s``,
    ``hi = max x - (logit(sqrt a) - 1) / s``.

    At ``t = lo`` every ``sig_i = sigmoid(s (x_i - t)) >= sigmoid(logit(sqrt a) + 1) > sqrt a``, so
    ``r(lo) = mean sig^2 - a >= 0``; at ``hi`` likewise ``r(hi) <= 0``: the root lies in between.
    Arithmetic only, so it runs on torch tensors and, compiled as a Triton device function
    (``ops/triton/launch.py::device_function``), inside the Triton solve kernel."""
    return x_min - (logit_root_area + 1) / sharpness, x_max - (logit_root_area - 1) / sharpness


def quantile_start(x: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """Cold start of the threshold solve: the ``(1 - a_k)`` quantile of each schedule row,
    ``x`` ``B x N``, ``areas`` ``[K]`` (inner) -> ``B x K`` (contiguous). Clamped into
    :func:`solve_bracket` by the solve. Half-precision rows are ranked in float32
    (``torch.quantile`` takes float32 and float64 only); the start comes back in ``x``'s dtype."""
    wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return torch.quantile(wide, 1 - areas.to(wide.dtype), dim=1).T.to(x.dtype).contiguous()


@torch.no_grad()
def solve_thresholds(schedule: torch.Tensor, areas: torch.Tensor, sharpness: float,
                     thresholds_init: torch.Tensor | None = None, tol: float = 1e-4,
                     max_iter: int = 50, return_iterations: bool = False):
    """Batched Levenberg-Marquardt solve, bracket-safeguarded, for ``t`` with ``mean_i sigmoid(s (x_i - t))^2 = a``.

    ``schedule`` ``B x 1 x H x W``, ``areas`` ``[K]`` in [0, 1] -> thresholds ``B x K`` (and, with
    ``return_iterations``, the number of steps each (b, k) took, ``B x K`` int64).
    Residual ``r(t) = A(t) - a``, ``A(t) = mean_i sig_i^2`` (decreasing in t), ``A' = J =
    -2 s mean_i sig_i^2 (1 - sig_i)``. The least-squares problem ``min rho(t)^2`` is solved on
    ``rho(t) = logit(sqrt A(t)) - logit(sqrt a)`` (same root and sign as r; exactly linear,
    ``s (x - t) - logit sqrt a``, when all pixels are equal, and nearly so in the exponential
    tails), ``rho' = J / (2 A (1 - sqrt A))``. The LM step with Marquardt's scaling,
    ``(rho'^2 + lambda rho'^2) d = -rho' rho``, is ``t_LM = t - rho / (rho' (1 + lambda))``: the
    Newton step shortened by ``1 + lambda``. The damping ``lambda`` (one per (b, k), 0 at the
    start, so undamped steps are Newton steps) follows Marquardt's rule: after an LM step that
    reduced ``|r|``, ``lambda / 10``; after one that did not, ``max(10 lambda, 1)``. Safeguard: the
    root stays bracketed by ``[lo, hi]`` (initially :func:`solve_bracket`: ``min x - (logit(sqrt a)
    + 1) / s`` and ``max x - (logit(sqrt a) - 1) / s``, where r >= 0 and r <= 0), shrunk by every
    evaluated point. Each step evaluates one point: ``t_LM`` if it is defined (0 < A < 1, J < 0)
    and strictly inside the bracket, otherwise the bisection ``(lo + hi) / 2`` (lambda unchanged).
    So the solve converges quadratically near the root, an overshooting step is retried shorter,
    and flat stretches of r (J = 0, steps leaving the bracket) cannot stall it.
    Start: ``thresholds_init`` (warm start) or the (1 - a) quantile of the schedule
    (:func:`quantile_start`), clamped into the bracket. Stops when ``max |r| < tol`` or after
    ``max_iter`` steps; returns the evaluated point of least ``|r|``. Areas 0 and 1 are not solved: their thresholds are
    +inf / -inf (masks exactly 0 / 1).
    """
    x = schedule.flatten(1).unsqueeze(1)                    # B x 1 x N
    a = areas.to(x.dtype).view(1, -1)                        # 1 x K
    inner, a_in = solved_areas(a)
    logit = root_area_logit(a_in)
    lo, hi = solve_bracket(x.amin(-1), x.amax(-1), logit, sharpness)   # B x K each
    if thresholds_init is None:
        t = quantile_start(x.squeeze(1), a_in.squeeze(0))
    else:
        t = torch.where(inner, thresholds_init.to(x.dtype), torch.zeros_like(lo))
    t = torch.minimum(torch.maximum(t, lo), hi)

    def evaluate(t):
        """``(r(t), t_N(t))``; the undamped (Newton) point t_N is NaN where it is undefined."""
        sig = torch.sigmoid(sharpness * (x - t.unsqueeze(-1)))
        area = sig.square().mean(-1)
        jac = -2 * sharpness * (sig.square() * (1 - sig)).mean(-1)
        root = area.sqrt()
        defined = (area > 0) & (area < 1) & (jac < 0)
        step = (torch.log(root / (1 - root)) - logit) * 2 * area * (1 - root) / jac
        return area - a_in, torch.where(defined, t - step, torch.full_like(t, math.nan))

    r, t_newton = evaluate(t)
    lo = torch.where(r > 0, torch.maximum(lo, t), lo)
    hi = torch.where(r <= 0, torch.minimum(hi, t), hi)
    t_best, r_best = t, r
    damping = torch.zeros_like(t)                            # Marquardt's lambda per (b, k)
    steps = torch.zeros(t.shape, dtype=torch.int64, device=t.device)
    for _ in range(max_iter):
        active = inner & (r.abs() >= tol)
        if not active.any():
            break
        t_lm = t + (t_newton - t) / (1 + damping)
        lm = (t_lm > lo) & (t_lm < hi)
        t_new = torch.where(lm, t_lm, (lo + hi) / 2)
        r_new, t_newton_new = evaluate(t_new)
        marquardt = torch.where(r_new.abs() < r.abs(), damping / 10, (10 * damping).clamp(min=1))
        damping = torch.where(active & lm, marquardt, damping)
        lo = torch.where(active & (r_new > 0), torch.maximum(lo, t_new), lo)
        hi = torch.where(active & (r_new <= 0), torch.minimum(hi, t_new), hi)
        t, r, t_newton = (torch.where(active, new, old) for new, old in
                          ((t_new, t), (r_new, r), (t_newton_new, t_newton)))
        better = r.abs() < r_best.abs()
        t_best, r_best = torch.where(better, t, t_best), torch.where(better, r, r_best)
        steps += active
    big = torch.tensor(float("inf"), dtype=t.dtype, device=t.device)
    t = torch.where(inner, t_best, torch.where(a <= 0, big, -big))
    return (t, steps) if return_iterations else t


def threshold_masks(schedule: torch.Tensor, areas: torch.Tensor, sharpness: float,
                    thresholds_init: torch.Tensor | None = None, implicit_grad: bool = True,
                    tol: float = 1e-4, max_iter: int = 50):
    """Masks of prescribed areas from a schedule (paper eq. 3-6).

    ``schedule`` ``B x 1 x H x W``, ``areas`` ``[K]`` -> ``(masks B x K x H x W, thresholds B x K)``:
    ``t_k`` from :func:`solve_thresholds` (no autograd through the iterations), masks from
    :func:`masks_from_thresholds`.
    """
    t = solve_thresholds(schedule.detach(), areas, sharpness, thresholds_init, tol, max_iter)
    return masks_from_thresholds(schedule, t, sharpness, implicit_grad), t


def masks_from_thresholds(schedule: torch.Tensor, thresholds: torch.Tensor, sharpness: float,
                          implicit_grad: bool = True) -> torch.Tensor:
    """``m_k = sigmoid(s (x - t_k))``: ``B x 1 x H x W`` and solved ``B x K`` -> ``B x K x H x W``.

    ``t_k = +inf / -inf`` (areas 0 / 1) give exact all-0 / all-1 masks.

    Gradient. With ``implicit_grad`` the thresholds follow the schedule through the
    implicit function theorem: ``dt_k/dx_j = w_kj / sum_i w_ki``, ``w = m^2 (1 - m)``.
    It is built in by the first-order identity ``t = t* + sum_j (w_j / sum w) (x_j - stopgrad(x_j))``
    (value ``t*``, gradient ``w / sum w``), so autograd gives docs/SPEC.md section 3:
    ``dL/dx_i = sum_k [G_ki - w_ki sum_j G_kj / sum_j w_kj]``, ``G = dL/dm * s m (1 - m)``.
    Without it the thresholds are constants (``dL/dx_i = sum_k G_ki``).
    """
    t = thresholds.detach().to(schedule.dtype)
    x = schedule.flatten(2)                                  # B x 1 x N
    inner = torch.isfinite(t)
    t_use = torch.where(inner, t, torch.zeros_like(t))
    logits = sharpness * (x - t_use.unsqueeze(-1))           # B x K x N
    if implicit_grad and schedule.requires_grad:
        with torch.no_grad():
            m = torch.sigmoid(logits)
            w = m.square() * (1 - m)
            w = w / (w.sum(-1, keepdim=True) + 1e-12)
        shift = (w * (x - x.detach())).sum(-1, keepdim=True)  # value 0, gradient w / sum w
        logits = logits - sharpness * shift
    masks = torch.sigmoid(logits)
    masks = torch.where(inner.unsqueeze(-1), masks, (t < 0).to(masks.dtype).unsqueeze(-1).expand_as(masks))
    return masks.view(*t.shape, *schedule.shape[-2:])


@torch.no_grad()
def blur_pyramid(images: torch.Tensor, levels: int = 8, max_blur: float = 20.0) -> torch.Tensor:
    """Extremal-Perturbation blur pyramid: ``B x C x H x W -> B x L x C x H x W`` (no grad).

    Level l is the image blurred by a separable Gaussian of sigma
    ``max_blur * (1 - l / (L - 1))`` with taps at ``-ceil(4 sigma)..ceil(4 sigma)`` and zero
    padding: level 0 is the most blurred, level L - 1 the image itself.
    """
    out = []
    for level in range(levels):
        sigma, radius = pyramid_blur(level, levels, max_blur)
        taps = gaussian_taps(sigma, radius, images.dtype, images.device)
        out.append(_separable_conv(images, taps, padding=radius))
    return torch.stack(out, dim=1)


def pyramid_mask(pyramid: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Apply masks through the blur pyramid: ``(B x L x C x H x W, B x K x H x W) -> B x K x C x H x W``.

    ``w = m (L - 1)``, ``k = min(floor(w), L - 2)``, ``f = w - k``,
    ``out = (1 - f) P[k] + f P[k + 1]``; m = 0 gives the most blurred level, m = 1 the image.
    Gradient to m: ``(L - 1) (P[k + 1] - P[k])``, summed over channels (k is piecewise constant).
    """
    b, levels, c, h, w_ = pyramid.shape
    k_masks = masks.shape[1]
    w = masks * (levels - 1)
    k = w.detach().floor().clamp(0, levels - 2).long()
    f = (w - k).unsqueeze(2)                                   # B x K x 1 x H x W
    idx = k.unsqueeze(2).unsqueeze(2).expand(b, k_masks, 1, c, h, w_)
    levels_b = pyramid.unsqueeze(1).expand(b, k_masks, levels, c, h, w_)
    lo = torch.gather(levels_b, 2, idx).squeeze(2)
    hi = torch.gather(levels_b, 2, idx + 1).squeeze(2)
    return (1 - f) * lo + f * hi


def masked_images(schedule: torch.Tensor, thresholds: torch.Tensor, pyramid: torch.Tensor,
                  sharpness: float, modes: tuple = ("insertion", "deletion"),
                  implicit_grad: bool = True, channels_last: bool = False) -> torch.Tensor:
    """The model's input batch straight from the schedule (the composition of the ops above).

    ``schedule`` ``B x 1 x H x W``, solved ``thresholds`` ``B x K`` (constants), ``pyramid``
    ``B x L x C x H x W`` -> ``B x (M K) x C x H x W``, M = len(modes): for each mode in order the
    K images ``pyramid_mask(P, m)`` (insertion) or ``pyramid_mask(P, 1 - m)`` (deletion),
    ``m = masks_from_thresholds(schedule, thresholds, sharpness, implicit_grad)``.
    ``channels_last``: the values in the memory layout whose ``flatten(0, 1)`` is channels-last.
    """
    masks = masks_from_thresholds(schedule, thresholds, sharpness, implicit_grad)
    out = torch.cat([pyramid_mask(pyramid, masks if mode == "insertion" else 1 - masks)
                     for mode in modes], dim=1)
    if channels_last:
        b, mk = out.shape[:2]
        out = out.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (b, mk))
    return out
