"""The C++ CPU kernels of ``csrc/`` (extension ``sas_fast._C``) behind the op signatures of
:mod:`sas_fast.ops.reference`.

The extension defines real operators ``torch.ops.sas_fast.*`` (``TORCH_LIBRARY``); this
module loads it and registers their autograd formulas and fake (shape-only) kernels, so
they pass ``torch.library.opcheck`` and trace under ``torch.compile``. It imports without
the extension: :func:`unavailable_reason` then says why.

Operators (shapes as in :mod:`sas_fast.ops.reference`):

- ``smooth_softmax_pool(premask, window, beta) -> (schedule, smoothed, stats)``; ``stats``
  ``B x 2 x H x W`` float64 holds each window's max and exp-sum for the backward.
- ``threshold_masks(schedule, areas, sharpness, thresholds_init, implicit_grad, tol, max_iter)
  -> (masks, thresholds)``.
- ``blur_pyramid(images, levels, max_blur)`` (no gradient), ``pyramid_mask(pyramid, masks)``.
- ``masked_images(schedule, thresholds, pyramid, sharpness, insertion, deletion, implicit_grad,
  channels_last)``: the insertion and / or deletion images straight from the schedule, the masks
  recomputed in the backward (``csrc/masked_images.cpp``).
- ``*_backward``: the gradient kernels used by the autograd formulas below.
"""
from __future__ import annotations

import importlib.util

import torch

_LOAD_ERROR: str | None = None
try:
    _spec = importlib.util.find_spec("sas_fast._C")
    if _spec is None or _spec.origin is None:
        raise ImportError("the C++ extension sas_fast._C is not built; run "
                          "`pip install --no-build-isolation -e .` in the source tree")
    torch.ops.load_library(_spec.origin)
except (ImportError, OSError) as exc:
    _LOAD_ERROR = f"C++ backend unavailable: {exc}"


def unavailable_reason(device: torch.device) -> str | None:
    """None if the kernels can run on ``device``; otherwise why not."""
    if _LOAD_ERROR is not None:
        return _LOAD_ERROR
    if torch.device(device).type != "cpu":
        return f"the C++ backend runs on CPU tensors only, not on {torch.device(device).type}"
    return None


def smooth_softmax_pool(premask: torch.Tensor, window: int, beta: float = 1.0) -> torch.Tensor:
    """``B x 1 x (H+2r) x (W+2r) -> B x 1 x H x W``: SoftMaxPool(Smooth(premask)), paper eq. 2."""
    return torch.ops.sas_fast.smooth_softmax_pool(premask, window, float(beta))[0]


def threshold_masks(schedule: torch.Tensor, areas: torch.Tensor, sharpness: float,
                    thresholds_init: torch.Tensor | None = None, implicit_grad: bool = True,
                    tol: float = 1e-4, max_iter: int = 50):
    """``(masks B x K x H x W, thresholds B x K)``, ``m_k = sigmoid(s (schedule - t_k))`` of
    areas ``mean m_k^2 = a_k`` (Levenberg-Marquardt solve with a bracket safeguard; implicit or
    detached gradient)."""
    areas = torch.as_tensor(areas, dtype=schedule.dtype).flatten()
    if thresholds_init is not None:
        thresholds_init = thresholds_init.detach().to(schedule.dtype)
    return torch.ops.sas_fast.threshold_masks(schedule, areas, float(sharpness), thresholds_init,
                                              bool(implicit_grad), float(tol), int(max_iter))


def solve_thresholds(schedule: torch.Tensor, areas: torch.Tensor, sharpness: float,
                     thresholds_init: torch.Tensor | None = None, tol: float = 1e-4,
                     max_iter: int = 50) -> torch.Tensor:
    """Thresholds ``B x K`` of :func:`threshold_masks` alone (its solve; the masks it also
    writes are dropped at once, never saved for a backward)."""
    return threshold_masks(schedule.detach(), areas, sharpness, thresholds_init, False, tol, max_iter)[1]


def masked_images(schedule: torch.Tensor, thresholds: torch.Tensor, pyramid: torch.Tensor,
                  sharpness: float, modes: tuple = ("insertion", "deletion"),
                  implicit_grad: bool = True, channels_last: bool = False) -> torch.Tensor:
    """``B x (M K) x C x H x W``: the images of ``pyramid_mask`` for the masks
    ``sigmoid(s (schedule - t_k))`` (insertion) and / or ``1 - masks`` (deletion), in ``modes``
    order, without storing the masks; differentiable in ``schedule`` (implicit or detached)."""
    if tuple(modes) not in (("insertion",), ("deletion",), ("insertion", "deletion")):
        raise ValueError(f"modes must be insertion and / or deletion in that order, got {modes}")
    dtype = torch.promote_types(schedule.dtype, pyramid.dtype)
    return torch.ops.sas_fast.masked_images(
        schedule.to(dtype), thresholds.detach().to(dtype), pyramid.detach().to(dtype), float(sharpness),
        "insertion" in modes, "deletion" in modes, bool(implicit_grad), bool(channels_last))


def blur_pyramid(images: torch.Tensor, levels: int = 8, max_blur: float = 20.0) -> torch.Tensor:
    """``B x C x H x W -> B x L x C x H x W``, level l blurred by sigma ``max_blur (1 - l/(L-1))``."""
    return torch.ops.sas_fast.blur_pyramid(images.detach(), levels, float(max_blur))


def pyramid_mask(pyramid: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(B x L x C x H x W, B x K x H x W) -> B x K x C x H x W``, masks interpolate pyramid levels."""
    dtype = torch.promote_types(pyramid.dtype, masks.dtype)
    return torch.ops.sas_fast.pyramid_mask(pyramid.to(dtype), masks.to(dtype))


def _register() -> None:
    """Fake kernels (output shapes only) and autograd formulas of the operators."""
    lib = "sas_fast::"

    @torch.library.register_fake(lib + "smooth_softmax_pool")
    def _(premask, window, beta):
        r = window // 2
        b, _, hp, wp = premask.shape
        out = premask.new_empty(b, 1, hp - 2 * r, wp - 2 * r)
        return out, torch.empty_like(out), premask.new_empty(b, 2, hp - 2 * r, wp - 2 * r,
                                                             dtype=torch.float64)

    @torch.library.register_fake(lib + "smooth_softmax_pool_backward")
    def _(grad, smoothed, out, stats, window, beta):
        b, _, h, w = smoothed.shape
        return smoothed.new_empty(b, 1, h + 2 * (window // 2), w + 2 * (window // 2))

    @torch.library.register_fake(lib + "threshold_masks")
    def _(schedule, areas, sharpness, thresholds_init, implicit_grad, tol, max_iter):
        b, _, h, w = schedule.shape
        k = areas.shape[0]
        return schedule.new_empty(b, k, h, w), schedule.new_empty(b, k)

    @torch.library.register_fake(lib + "threshold_masks_backward")
    def _(grad, masks, thresholds, sharpness, implicit_grad):
        b, _, h, w = masks.shape
        return masks.new_empty(b, 1, h, w)

    @torch.library.register_fake(lib + "blur_pyramid")
    def _(images, levels, max_blur):
        b, c, h, w = images.shape
        return images.new_empty(b, levels, c, h, w)

    @torch.library.register_fake(lib + "pyramid_mask")
    def _(pyramid, masks):
        b, _, c, h, w = pyramid.shape
        return pyramid.new_empty(b, masks.shape[1], c, h, w)

    @torch.library.register_fake(lib + "pyramid_mask_backward")
    def _(grad, pyramid, masks):
        return torch.empty_like(masks)

    @torch.library.register_fake(lib + "masked_images")
    def _(schedule, thresholds, pyramid, sharpness, insertion, deletion, implicit_grad, channels_last):
        b, _, c, h, w = pyramid.shape
        mk = (int(insertion) + int(deletion)) * thresholds.shape[1]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return torch.empty(b * mk, c, h, w, dtype=pyramid.dtype, device=pyramid.device,
                           memory_format=fmt).view(b, mk, c, h, w)

    @torch.library.register_fake(lib + "masked_images_backward")
    def _(grad, schedule, thresholds, pyramid, sharpness, insertion, deletion, implicit_grad):
        return torch.empty_like(schedule, memory_format=torch.contiguous_format)

    def ssp_setup(ctx, inputs, output):
        _, ctx.window, ctx.beta = inputs
        out, smoothed, stats = output
        ctx.mark_non_differentiable(smoothed, stats)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(smoothed, out, stats)

    def ssp_backward(ctx, grad, _grad_smoothed, _grad_stats):
        if grad is None:
            return None, None, None
        grad_premask = torch.ops.sas_fast.smooth_softmax_pool_backward(
            grad, *ctx.saved_tensors, ctx.window, ctx.beta)
        return grad_premask, None, None

    torch.library.register_autograd(lib + "smooth_softmax_pool", ssp_backward, setup_context=ssp_setup)

    def masks_setup(ctx, inputs, output):
        ctx.sharpness, ctx.implicit_grad = inputs[2], inputs[4]
        masks, thresholds = output
        ctx.mark_non_differentiable(thresholds)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(masks, thresholds)

    def masks_backward(ctx, grad_masks, _grad_thresholds):
        if grad_masks is None:
            return (None,) * 7
        masks, thresholds = ctx.saved_tensors
        grad = torch.ops.sas_fast.threshold_masks_backward(grad_masks, masks, thresholds,
                                                           ctx.sharpness, ctx.implicit_grad)
        return (grad,) + (None,) * 6

    torch.library.register_autograd(lib + "threshold_masks", masks_backward, setup_context=masks_setup)

    def pm_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def pm_backward(ctx, grad):
        if ctx.needs_input_grad[0]:
            raise NotImplementedError("the C++ pyramid_mask is differentiable w.r.t. masks only; "
                                      "build the pyramid without gradient (blur_pyramid)")
        return None, torch.ops.sas_fast.pyramid_mask_backward(grad, *ctx.saved_tensors)

    torch.library.register_autograd(lib + "pyramid_mask", pm_backward, setup_context=pm_setup)

    def mi_setup(ctx, inputs, output):
        schedule, thresholds, pyramid, ctx.sharpness, ctx.insertion, ctx.deletion, ctx.implicit_grad, _ = inputs
        ctx.save_for_backward(schedule, thresholds, pyramid)

    def mi_backward(ctx, grad):
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            raise NotImplementedError("the C++ masked_images is differentiable w.r.t. the schedule only")
        grad_x = torch.ops.sas_fast.masked_images_backward(
            grad, *ctx.saved_tensors, ctx.sharpness, ctx.insertion, ctx.deletion, ctx.implicit_grad)
        return (grad_x,) + (None,) * 7

    torch.library.register_autograd(lib + "masked_images", mi_backward, setup_context=mi_setup)


if _LOAD_ERROR is None:
    _register()
