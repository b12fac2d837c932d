"""The SaS ops, with backend dispatch.

``backend``: ``"reference"`` (plain PyTorch, :mod:`sas_fast.ops.reference`), ``"triton"``
(fused kernels: compiled on CUDA tensors, interpreted on CPU tensors when
``TRITON_INTERPRET=1``), ``"cpp"`` (the ``csrc/`` CPU kernels), or ``"auto"``: the fastest
available for the tensor's device (Triton on CUDA, C++ on CPU; never the Triton interpreter,
which is a test tool), falling back to the reference, so ``"auto"`` works wherever the
reference does. Inputs and scalar parameters are checked here, once per call for every
backend; the C++ kernels (float32 / float64) run float16 / bfloat16 inputs in float32.
``backend`` is keyword-only in every op. The backend contract (what a backend module defines)
and the checklists for adding an op or a backend: ``sas_fast/ops/README.md``.
"""
from __future__ import annotations

import importlib
import weakref

import torch

from ..checks import is_int, is_real, warn_caller
from . import reference

BACKENDS = ("reference", "triton", "cpp")
#: the ops every backend module defines, with the reference's signatures (sas_fast/ops/README.md)
OPS = ("smooth_softmax_pool", "threshold_masks", "solve_thresholds", "masked_images",
       "blur_pyramid", "pyramid_mask")
_FALLBACK_WARNED = False  # the "auto falls back to the reference on CPU" warning was given
_LAST_CHECKED = (lambda: None, -1)  # (weak reference to the areas last found in [0, 1], their version)


def _backend_module(name: str):
    """The module implementing backend ``name``, or None if it cannot be imported. What such a
    module defines (the :data:`OPS` with the reference's signatures, and
    ``unavailable_reason(device) -> str | None``) is the backend contract of
    ``sas_fast/ops/README.md``."""
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
        warn_caller(f"sas_fast: backend='auto' uses the slow reference ops on CPU ({reason}); "
                    "build the C++ kernels with `pip install --no-build-isolation -e .`",
                    RuntimeWarning)


def _impl(op: str, backend: str, device: torch.device, dtype: torch.dtype):
    """The backend's ``op``; the C++ kernels (float32 / float64 only) run float16 / bfloat16
    inputs in float32 and return the inputs' dtype."""
    name = resolve_backend(backend, device)
    fn = getattr(_backend_module(name), op)
    if name != "cpp" or dtype not in (torch.float16, torch.bfloat16):
        return fn

    def upcast(*args):
        out = fn(*(a.float() if isinstance(a, torch.Tensor) and a.dtype == dtype else a for a in args))
        return tuple(o.to(dtype) for o in out) if isinstance(out, tuple) else out.to(dtype)
    return upcast


def _check_float(name: str, x: torch.Tensor, ndim: int, like: tuple | None = None):
    """``x`` a floating-point ``ndim``-D tensor, on the device of ``like = (name, tensor)``."""
    if not isinstance(x, torch.Tensor) or x.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if like is not None and x.device != like[1].device:
        raise ValueError(f"{name} is on {x.device} but {like[0]} on {like[1].device}; "
                         "put both on one device")


def _check_int(name: str, value, low: int, odd: bool = False) -> int:
    """``value`` as a Python int, checked to be an (odd) integer >= ``low``."""
    if not is_int(value) or value < low or (odd and value % 2 == 0):
        raise ValueError(f"{name} must be {'an odd' if odd else 'an'} integer >= {low}, got {value!r}")
    return int(value)


def _check_real(name: str, value, low: float, strict: bool):
    """``value`` a finite real number ``> low`` (``strict``) or ``>= low``."""
    if not (is_real(value) and (value > low if strict else value >= low)):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")


def _readable(x: torch.Tensor) -> bool:
    """``x``'s values can be checked: it holds data (not ``meta``) and no CUDA graph is being
    captured on its device (no host sync allowed then)."""
    return x.device.type != "meta" and not (x.is_cuda and torch.cuda.is_current_stream_capturing())


def smooth_softmax_pool(premask: torch.Tensor, window: int, beta: float = 1.0, *,
                        backend: str = "auto") -> torch.Tensor:
    """Schedule = SoftMaxPool(Smooth(premask)) (paper eq. 2).

    ``premask`` ``B x 1 x (H+2r) x (W+2r)`` -> ``B x 1 x H x W``, r = window // 2. Smooth is a
    valid Gaussian convolution (sigma = (window - 1) / 4); SoftMaxPool is
    ``out_i = sum_{j in N(i)} softmax(beta x)_j x_j`` over the reflection-padded window.
    ``window``: an odd integer >= 1; ``beta``: a finite number > 0.
    """
    _check_float("premask", premask, 4)
    window = _check_int("window", window, 1, odd=True)
    _check_real("beta", beta, 0, strict=True)
    h, w = premask.shape[-2] - 2 * (window // 2), premask.shape[-1] - 2 * (window // 2)
    if premask.shape[1] != 1 or min(h, w) < window:
        raise ValueError(f"premask must be B x 1 x (H+2r) x (W+2r) with H, W >= window={window}, "
                         f"got {tuple(premask.shape)}")
    return _impl("smooth_softmax_pool", backend, premask.device, premask.dtype)(premask, window, beta)


def threshold_masks(schedule: torch.Tensor, areas, sharpness: float,
                    thresholds_init: torch.Tensor | None = None, implicit_grad: bool = True,
                    tol: float = 1e-4, max_iter: int = 50, *, backend: str = "auto"):
    """Masks ``sigmoid(s (schedule - t_k))`` whose sizes ``mean m^2`` equal ``areas``.

    ``schedule`` ``B x 1 x H x W``, ``areas`` ``[K]`` in [0, 1] ->
    ``(masks B x K x H x W, thresholds B x K)``. Thresholds come from a batched Levenberg-Marquardt
    solve (Marquardt damping, bracket safeguard; warm-started from ``thresholds_init`` ``B x K``);
    areas 0 / 1 give exact all-0 / all-1 masks (thresholds +inf / -inf). The gradient is
    the implicit one of docs/SPEC.md section 3, or with ``implicit_grad=False`` the thresholds are
    held fixed. ``sharpness`` and ``tol``: finite numbers > 0; ``max_iter``: an integer >= 0 (0: the start).
    """
    max_iter = _check_solve(schedule, sharpness, tol, max_iter)
    if not isinstance(implicit_grad, bool):
        raise ValueError(f"implicit_grad must be True or False, got {implicit_grad!r}")
    areas = _check_areas(areas, schedule)
    _check_thresholds_init(thresholds_init, schedule, areas)
    fn = _impl("threshold_masks", backend, schedule.device, schedule.dtype)
    return fn(schedule, areas, sharpness, thresholds_init, implicit_grad, tol, max_iter)


def _check_solve(schedule: torch.Tensor, sharpness, tol, max_iter) -> int:
    """The threshold solve's arguments: ``schedule`` ``B x 1 x H x W``, ``sharpness`` and ``tol``
    finite > 0, ``max_iter`` an integer >= 0 (returned as a Python int)."""
    _check_float("schedule", schedule, 4)
    if schedule.shape[1] != 1:
        raise ValueError(f"schedule must be B x 1 x H x W, got {tuple(schedule.shape)}")
    _check_real("sharpness", sharpness, 0, strict=True)
    _check_real("tol", tol, 0, strict=True)
    return _check_int("max_iter", max_iter, 0)


def _check_areas(areas, schedule: torch.Tensor) -> torch.Tensor:
    """``areas`` as a flat tensor like ``schedule``'s, checked to be non-empty and in [0, 1] (NaN
    fails); the tensor checked last, if unchanged since (same object, same version), is not
    checked again, so a run that passes the same areas every step pays no per-step host sync."""
    global _LAST_CHECKED
    areas = torch.as_tensor(areas, dtype=schedule.dtype, device=schedule.device).flatten()
    if _LAST_CHECKED[0]() is areas and _LAST_CHECKED[1] == areas._version:
        return areas
    if areas.numel() < 1 or (_readable(areas) and not bool(((areas >= 0) & (areas <= 1)).all())):
        raise ValueError(f"areas must be a non-empty list of values in [0, 1], got {areas.tolist()}")
    if _readable(areas):
        _LAST_CHECKED = weakref.ref(areas), areas._version
    return areas


def _check_thresholds_init(thresholds_init, schedule: torch.Tensor, areas: torch.Tensor) -> None:
    if thresholds_init is not None:
        _check_float("thresholds_init", thresholds_init, 2, like=("schedule", schedule))
        if tuple(thresholds_init.shape) != (schedule.shape[0], areas.numel()):
            raise ValueError(f"thresholds_init must be B x K = {(schedule.shape[0], areas.numel())}, "
                             f"got {tuple(thresholds_init.shape)}")


def solve_thresholds(schedule: torch.Tensor, areas, sharpness: float,
                     thresholds_init: torch.Tensor | None = None, tol: float = 1e-4,
                     max_iter: int = 50, *, backend: str = "auto") -> torch.Tensor:
    """The thresholds of :func:`threshold_masks` alone (no gradient): ``B x 1 x H x W``,
    ``areas`` ``[K]`` -> ``B x K`` with ``mean_i sigmoid(s (x_i - t_k))^2 = a_k`` (``+inf`` / ``-inf``
    for areas 0 / 1), by the backend's own solve, warm-started from ``thresholds_init`` if given."""
    max_iter = _check_solve(schedule, sharpness, tol, max_iter)
    areas = _check_areas(areas, schedule)
    _check_thresholds_init(thresholds_init, schedule, areas)
    if thresholds_init is not None:
        thresholds_init = thresholds_init.detach()
    fn = _impl("solve_thresholds", backend, schedule.device, schedule.dtype)
    return fn(schedule.detach(), areas, sharpness, thresholds_init, tol, max_iter)


#: the image blocks of masked_images, in order, for each mode name
_MODES = {"insertion": ("insertion",), "deletion": ("deletion",), "both": ("insertion", "deletion")}


def masked_images(schedule: torch.Tensor, thresholds: torch.Tensor, pyramid: torch.Tensor,
                  sharpness: float, mode: str = "both", implicit_grad: bool = True,
                  channels_last: bool = False, *, backend: str = "auto") -> torch.Tensor:
    """The model's input batch straight from the schedule, the masks never stored.

    ``schedule`` ``B x 1 x H x W``, ``thresholds`` ``B x K`` (from :func:`solve_thresholds`; held
    constant), ``pyramid`` ``B x L x C x H x W`` -> ``B x (M K) x C x H x W``: with
    ``m_k = sigmoid(s (schedule - t_k))`` the insertion images ``pyramid_mask(P, m)`` (mode
    ``"insertion"``), the deletion images ``pyramid_mask(P, 1 - m)`` (``"deletion"``), or both in
    that order (``"both"``, M = 2). Equal to ``threshold_masks`` then ``pyramid_mask``; the
    gradient w.r.t. the schedule includes the implicit threshold term of docs/SPEC.md section 3
    (``implicit_grad=False``: thresholds held fixed). ``channels_last``: the result's
    ``flatten(0, 1)`` is a channels-last ``(B M K) x C x H x W`` tensor (same values).
    """
    _check_float("schedule", schedule, 4)
    _check_float("thresholds", thresholds, 2, like=("schedule", schedule))
    _check_float("pyramid", pyramid, 5, like=("schedule", schedule))
    _check_real("sharpness", sharpness, 0, strict=True)
    if not isinstance(implicit_grad, bool):
        raise ValueError(f"implicit_grad must be True or False, got {implicit_grad!r}")
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
    fn = _impl("masked_images", backend, schedule.device, torch.promote_types(schedule.dtype, pyramid.dtype))
    return fn(schedule, thresholds.detach(), pyramid.detach(), sharpness, _MODES[mode],
              implicit_grad, channels_last)


def blur_pyramid(images: torch.Tensor, levels: int = 8, max_blur: float = 20.0, *,
                 backend: str = "auto") -> torch.Tensor:
    """``B x C x H x W -> B x L x C x H x W``: level l blurred with sigma ``max_blur (1 - l/(L-1))``
    (level 0 most blurred, level L - 1 the image). No gradient. ``levels``: an integer >= 2;
    ``max_blur``: a finite number >= 0."""
    _check_float("images", images, 4)
    levels = _check_int("levels", levels, 2)
    _check_real("max_blur", max_blur, 0, strict=False)
    return _impl("blur_pyramid", backend, images.device, images.dtype)(images, levels, max_blur)


def pyramid_mask(pyramid: torch.Tensor, masks: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Masked images ``B x K x C x H x W`` from a pyramid ``B x L x C x H x W`` and masks
    ``B x K x H x W`` in [0, 1]: linear interpolation between the two pyramid levels around
    ``m (L - 1)``. Differentiable in ``masks``; use ``1 - masks`` for deletion images. The mask
    values are checked (a host sync; skipped while a CUDA graph is captured)."""
    _check_float("pyramid", pyramid, 5)
    _check_float("masks", masks, 4, like=("pyramid", pyramid))
    b, _, _, h, w = pyramid.shape
    if masks.shape[0] != b or tuple(masks.shape[-2:]) != (h, w):
        raise ValueError(f"masks {tuple(masks.shape)} do not match pyramid {tuple(pyramid.shape)}")
    if masks.numel() and _readable(masks):
        lo, hi = torch.aminmax(masks.detach())
        if not bool((lo >= 0) & (hi <= 1)):
            raise ValueError(f"masks must lie in [0, 1], got values in [{float(lo):g}, {float(hi):g}]")
    dtype = torch.promote_types(pyramid.dtype, masks.dtype)
    return _impl("pyramid_mask", backend, pyramid.device, dtype)(pyramid, masks)


__all__ = ["BACKENDS", "OPS", "blur_pyramid", "masked_images", "pyramid_mask", "resolve_backend",
           "smooth_softmax_pool", "solve_thresholds", "threshold_masks", "unavailable_reason"]
