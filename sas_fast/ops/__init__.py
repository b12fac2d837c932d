"""The SaS ops, with backend dispatch.

``backend``: ``"reference"`` (plain PyTorch, :mod:`sas_fast.ops.reference`), ``"triton"``
(fused kernels: compiled on CUDA tensors, interpreted on CPU tensors when
``TRITON_INTERPRET=1``), ``"cpp"`` (the ``csrc/`` CPU kernels), or ``"auto"``: the fastest
available for the tensor's device (Triton on CUDA, C++ on CPU; never the Triton interpreter,
which is a test tool), falling back to the reference, so ``"auto"`` works wherever the
reference does. Inputs are checked here, once for every backend.
"""
from __future__ import annotations

import importlib
import warnings
import weakref

import torch

from . import reference

BACKENDS = ("reference", "triton", "cpp")
_FALLBACK_WARNED = False  # the "auto falls back to the reference on CPU" warning was given
_LAST_CHECKED = (lambda: None, -1)  # (weak reference to the areas last found in [0, 1], their version)


def _backend_module(name: str):
    """The module implementing backend ``name`` (it defines the op functions and
    ``unavailable_reason(device) -> str | None``), or None if it cannot be imported."""
    if name == "reference":
        return reference
    try:
        return importlib.import_module(f"sas_fast.ops.{name}")
    except (ImportError, OSError):
        return None


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on ``device`` (None if it can)."""
    if backend == "reference":
        return None
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; choose one of {('auto',) + BACKENDS}"
    module = _backend_module(backend)
    if module is None:
        return f"backend {backend!r} is not installed in this build of sas_fast"
    return module.unavailable_reason(torch.device(device))


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend that ``backend`` (possibly ``"auto"``) means on ``device``."""
    device = torch.device(device)
    if backend == "auto":
        order = ("triton",) if device.type == "cuda" else ("cpp",)
        for name in order:
            if unavailable_reason(name, device) is None:
                return name
        if device.type == "cpu":
            _warn_reference_fallback(unavailable_reason("cpp", device))
        return "reference"
    reason = unavailable_reason(backend, device)
    if reason is not None:
        raise ValueError(reason)
    return backend


def _warn_reference_fallback(reason: str) -> None:
    """Warn once per process that ``"auto"`` runs the slow reference ops on CPU."""
    global _FALLBACK_WARNED
    if not _FALLBACK_WARNED:
        _FALLBACK_WARNED = True
        warnings.warn(f"sas_fast: backend='auto' uses the slow reference ops on CPU ({reason}); "
                      "build the C++ kernels with `pip install --no-build-isolation -e .`",
                      RuntimeWarning, stacklevel=4)


def _impl(op: str, backend: str, device: torch.device):
    return getattr(_backend_module(resolve_backend(backend, device)), op)


def _check_float(name: str, x: torch.Tensor, ndim: int):
    if not isinstance(x, torch.Tensor) or x.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")


def smooth_softmax_pool(premask: torch.Tensor, window: int, beta: float = 1.0,
                        backend: str = "auto") -> torch.Tensor:
    """Schedule = SoftMaxPool(Smooth(premask)) (paper eq. 2).

    ``premask`` ``B x 1 x (H+2r) x (W+2r)`` -> ``B x 1 x H x W``, r = window // 2. Smooth is a
    valid Gaussian convolution (sigma = (window - 1) / 4); SoftMaxPool is
    ``out_i = sum_{j in N(i)} softmax(beta x)_j x_j`` over the reflection-padded window.
    """
    _check_float("premask", premask, 4)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    h, w = premask.shape[-2] - 2 * (window // 2), premask.shape[-1] - 2 * (window // 2)
    if premask.shape[1] != 1 or min(h, w) < window:
        raise ValueError(f"premask must be B x 1 x (H+2r) x (W+2r) with H, W >= window={window}, "
                         f"got {tuple(premask.shape)}")
    return _impl("smooth_softmax_pool", backend, premask.device)(premask, window, beta)


def threshold_masks(schedule: torch.Tensor, areas, sharpness: float,
                    thresholds_init: torch.Tensor | None = None, implicit_grad: bool = True,
                    backend: str = "auto", tol: float = 1e-4, max_iter: int = 50):
    """Masks ``sigmoid(s (schedule - t_k))`` whose sizes ``mean m^2`` equal ``areas``.

    ``schedule`` ``B x 1 x H x W``, ``areas`` ``[K]`` in [0, 1] ->
    ``(masks B x K x H x W, thresholds B x K)``. Thresholds come from a batched
    Levenberg-Marquardt solve (warm-started from ``thresholds_init`` ``B x K`` if given);
    areas 0 / 1 give exact all-0 / all-1 masks (thresholds +inf / -inf). The gradient is
    the implicit one of SPEC section 3, or with ``implicit_grad=False`` the thresholds are
    held fixed.
    """
    _check_float("schedule", schedule, 4)
    if schedule.shape[1] != 1:
        raise ValueError(f"schedule must be B x 1 x H x W, got {tuple(schedule.shape)}")
    areas = _check_areas(areas, schedule)
    if thresholds_init is not None and tuple(thresholds_init.shape) != (schedule.shape[0], areas.numel()):
        raise ValueError(f"thresholds_init must be B x K = {(schedule.shape[0], areas.numel())}, "
                         f"got {tuple(thresholds_init.shape)}")
    fn = _impl("threshold_masks", backend, schedule.device)
    return fn(schedule, areas, sharpness, thresholds_init, implicit_grad, tol, max_iter)


def _check_areas(areas, schedule: torch.Tensor) -> torch.Tensor:
    """``areas`` as a flat tensor like ``schedule``'s, checked to lie in [0, 1]; the tensor checked
    last, if unchanged since (same object, same version), is not checked again, so a run that
    passes the same areas every step pays no per-step check (and no host sync)."""
    global _LAST_CHECKED
    areas = torch.as_tensor(areas, dtype=schedule.dtype, device=schedule.device).flatten()
    if _LAST_CHECKED[0]() is areas and _LAST_CHECKED[1] == areas._version:
        return areas
    capturing = areas.is_cuda and torch.cuda.is_current_stream_capturing()  # no sync in a graph
    if areas.numel() < 1 or (not capturing and bool(((areas < 0) | (areas > 1)).any())):
        raise ValueError(f"areas must be a non-empty list of values in [0, 1], got {areas.tolist()}")
    if not capturing:
        _LAST_CHECKED = weakref.ref(areas), areas._version
    return areas


def solve_thresholds(schedule: torch.Tensor, areas, sharpness: float,
                     thresholds_init: torch.Tensor | None = None, tol: float = 1e-4,
                     max_iter: int = 50, backend: str = "auto") -> torch.Tensor:
    """The thresholds of :func:`threshold_masks` alone (no gradient): ``B x 1 x H x W``,
    ``areas`` ``[K]`` -> ``B x K`` with ``mean_i sigmoid(s (x_i - t_k))^2 = a_k`` (``+inf`` / ``-inf``
    for areas 0 / 1), by the backend's own solve, warm-started from ``thresholds_init`` if given."""
    _check_float("schedule", schedule, 4)
    if schedule.shape[1] != 1:
        raise ValueError(f"schedule must be B x 1 x H x W, got {tuple(schedule.shape)}")
    areas = _check_areas(areas, schedule)
    if thresholds_init is not None and tuple(thresholds_init.shape) != (schedule.shape[0], areas.numel()):
        raise ValueError(f"thresholds_init must be B x K = {(schedule.shape[0], areas.numel())}, "
                         f"got {tuple(thresholds_init.shape)}")
    if thresholds_init is not None:
        thresholds_init = thresholds_init.detach()
    fn = _impl("solve_thresholds", backend, schedule.device)
    return fn(schedule.detach(), areas, sharpness, thresholds_init, tol, max_iter)


#: the image blocks of masked_images, in order, for each mode name
_MODES = {"insertion": ("insertion",), "deletion": ("deletion",), "both": ("insertion", "deletion")}


def masked_images(schedule: torch.Tensor, thresholds: torch.Tensor, pyramid: torch.Tensor,
                  sharpness: float, mode: str = "both", implicit_grad: bool = True,
                  channels_last: bool = False, backend: str = "auto") -> torch.Tensor:
    """The model's input batch straight from the schedule, the masks never stored.

    ``schedule`` ``B x 1 x H x W``, ``thresholds`` ``B x K`` (from :func:`solve_thresholds`; held
    constant), ``pyramid`` ``B x L x C x H x W`` -> ``B x (M K) x C x H x W``: with
    ``m_k = sigmoid(s (schedule - t_k))`` the insertion images ``pyramid_mask(P, m)`` (mode
    ``"insertion"``), the deletion images ``pyramid_mask(P, 1 - m)`` (``"deletion"``), or both in
    that order (``"both"``, M = 2). Equal to ``threshold_masks`` then ``pyramid_mask``; the
    gradient w.r.t. the schedule includes the implicit threshold term of SPEC section 3
    (``implicit_grad=False``: thresholds held fixed). ``channels_last``: the result's
    ``flatten(0, 1)`` is a channels-last ``(B M K) x C x H x W`` tensor (same values).
    """
    _check_float("schedule", schedule, 4)
    _check_float("thresholds", thresholds, 2)
    _check_float("pyramid", pyramid, 5)
    b, levels, _, h, w = pyramid.shape
    if tuple(schedule.shape) != (b, 1, h, w):
        raise ValueError(f"schedule must be B x 1 x H x W = {(b, 1, h, w)} for pyramid "
                         f"{tuple(pyramid.shape)}, got {tuple(schedule.shape)}")
    if thresholds.shape[0] != b or thresholds.shape[1] < 1:
        raise ValueError(f"thresholds must be B x K with B = {b}, K >= 1, got {tuple(thresholds.shape)}")
    if levels < 2:
        raise ValueError(f"pyramid must have at least 2 levels, got {levels}")
    if mode not in _MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {tuple(_MODES)}")
    fn = _impl("masked_images", backend, schedule.device)
    return fn(schedule, thresholds.detach(), pyramid.detach(), sharpness, _MODES[mode],
              implicit_grad, channels_last)


def blur_pyramid(images: torch.Tensor, levels: int = 8, max_blur: float = 20.0,
                 backend: str = "auto") -> torch.Tensor:
    """``B x C x H x W -> B x L x C x H x W``: level l blurred with sigma ``max_blur (1 - l/(L-1))``
    (level 0 most blurred, level L - 1 the image). No gradient."""
    _check_float("images", images, 4)
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    if max_blur < 0:
        raise ValueError(f"max_blur must be >= 0, got {max_blur}")
    return _impl("blur_pyramid", backend, images.device)(images, levels, max_blur)


def pyramid_mask(pyramid: torch.Tensor, masks: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Masked images ``B x K x C x H x W`` from a pyramid ``B x L x C x H x W`` and masks
    ``B x K x H x W`` in [0, 1]: linear interpolation between the two pyramid levels around
    ``m (L - 1)``. Differentiable in ``masks``; use ``1 - masks`` for deletion images."""
    _check_float("pyramid", pyramid, 5)
    _check_float("masks", masks, 4)
    b, _, _, h, w = pyramid.shape
    if masks.shape[0] != b or tuple(masks.shape[-2:]) != (h, w):
        raise ValueError(f"masks {tuple(masks.shape)} do not match pyramid {tuple(pyramid.shape)}")
    return _impl("pyramid_mask", backend, pyramid.device)(pyramid, masks)


__all__ = ["BACKENDS", "blur_pyramid", "masked_images", "pyramid_mask", "resolve_backend",
           "smooth_softmax_pool", "solve_thresholds", "threshold_masks", "unavailable_reason"]
