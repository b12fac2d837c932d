"""The public entry point :func:`attribute` (:class:`sas_fast.SaS` in :mod:`sas_fast.explainer` wraps it).

Checks the caller's input, guards the caller's model (eval mode, frozen parameters, all
restored afterwards, also on error), and runs the optimisation loop of docs/SPEC.md section 4:
Adam on the pre-mask, one :class:`sas_fast.iteration.IterationRunner` call per iteration,
output the min-max normalised schedule (paper eq. 8) of the last pre-mask, or with
``average_tail`` of the mean pre-mask over the run's last iterations.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from . import ops
from .checks import (FiniteWatch, autograd_on, check_images, guarded_model, model_logits, outside_inference,
                     resolve_layer, resolve_target, warn_caller)
from .config import SaSConfig, make_config
from .cpu_memory import MALLOC_ENV, default_max_batch, tune_malloc
from .fits import check_fits
from .initial import initial_premask
from .iteration import IterationRunner
from .precision import resolve_precision
from .step import Objective, mask_areas, mode_names


@dataclass
class SaSTrace:
    """What the paper's figure 3 plots, recorded with ``return_trace=True``.

    ``areas`` ``[K]``; ``iterations`` the T recorded iterations; ``scores`` ``{mode: T x B x K}``,
    the score of every mask (class logit, or feature distance) at those iterations, before
    that iteration's update (the OFF and ON ends are constant; with ``area_samples`` the masks
    not evaluated at that iteration are NaN); ``saliency`` ``T x B x H x W``, the normalised
    schedule at those iterations, before their update (so at iteration i: the map after i
    Adam steps; never tail-averaged); ``loss`` ``N x B`` for the N iterations run
    (``iterations``, or fewer under ``max_seconds``; with ``area_samples``: the unbiased estimate
    of the full loss, ``(K - 2) / area_samples`` times the sampled sum); ``passes`` ``[B]``,
    the model image-passes spent on each image (forward + input-gradient backward of one
    masked image = 1; the init map's pass included; the one forward pass of the clean image is not counted);
    ``zero_gradient`` ``[B]`` bool, True for an image whose pre-mask got a zero gradient in every
    iteration (its map is the random start; a ``RuntimeWarning`` says so; None in a trace made
    by hand); ``precision`` the model precision used, ``"fp32"`` or ``"bf16"``, and
    ``precision_reason`` why (``"requested"``, ``"requested; emulated: ..."`` for bf16 on a CPU
    without it, or what ``precision="auto"`` found, see
    :mod:`sas_fast.precision`).
    """

    areas: torch.Tensor
    iterations: list
    scores: dict
    saliency: torch.Tensor
    loss: torch.Tensor
    passes: torch.Tensor
    zero_gradient: torch.Tensor | None = None
    precision: str = "fp32"
    precision_reason: str = ""


def _trace_points(config: SaSConfig) -> list:
    if config.trace_iterations:
        return sorted({int(i) for i in config.trace_iterations if 0 <= int(i) < config.iterations})
    n = config.iterations
    return sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1})


def _end_scores(objective: Objective, pyramid: torch.Tensor, modes) -> dict:
    """Scores of the constant OFF and ON masks, ``{mode: B x 2}``."""
    b = pyramid.shape[0]
    rows = torch.arange(b, device=pyramid.device)
    with torch.no_grad():
        off, on = (objective.scores(pyramid[:, i], rows).float() for i in (0, -1))
    return {m: torch.stack([off, on] if m == "insertion" else [on, off], dim=1) for m in modes}


class TimeBudget:
    """``allows(it)``: whether iteration ``it`` may start, i.e. it is expected to end within
    ``max_seconds`` of ``start`` (by the mean time of the iterations run since ``begin()``;
    the first always starts). ``max_seconds=None``: no budget."""

    def __init__(self, max_seconds: float | None, start: float, device: torch.device):
        if max_seconds is not None and (isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float))
                                        or not math.isfinite(max_seconds) or max_seconds <= 0):
            raise ValueError(f"max_seconds must be None or a finite number of seconds > 0, got {max_seconds!r}")
        self.max_seconds, self.start, self.device = max_seconds, start, device
        self.loop_start = start

    def begin(self) -> None:
        self.loop_start = time.perf_counter()

    def allows(self, it: int) -> bool:
        if self.max_seconds is None or it == 0:
            return True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        return now - self.start + (now - self.loop_start) / it <= self.max_seconds


def _check_flags(return_trace, progress) -> None:
    """``return_trace`` a bool, ``progress`` a bool or None (a string such as "no" is refused)."""
    if not isinstance(return_trace, bool):
        raise ValueError(f"return_trace must be True or False, got {return_trace!r}")
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"progress must be True, False or None, got {progress!r}")


def _resolved(config: SaSConfig, images: torch.Tensor) -> tuple:
    """(config with window, max_blur, backend and precision filled in, the
    :class:`~sas_fast.precision.Precision` chosen), after checking the images and that the run's
    buffers fit in memory (:func:`sas_fast.fits.check_fits`)."""
    if images.dim() == 4:
        config = config.resolved(*images.shape[-2:])
    check_images(images, config.window or 3)
    if config.precision == "bf16" and images.dtype in (torch.float64, torch.float16):
        raise ValueError(f"precision='bf16' runs a float32 model under bfloat16 autocast, but the images "
                         f"are {images.dtype}: use precision='fp32' (or 'auto'), or float32 images and model")
    precision = resolve_precision(config.precision, images.device, images.dtype)
    check_fits(config, images, 8 if images.dtype == torch.float64 else 4)
    config = dataclasses.replace(config, backend=ops.resolve_backend(config.backend, images.device),
                                 precision=precision.precision)
    return config, precision


def run_sas(model: nn.Module, images: torch.Tensor, target=None, *, layer=None,
            config: SaSConfig, return_trace: bool = False, progress: bool | None = None,
            additional_forward_args=None, max_seconds: float | None = None):
    """SaS on a batch: ``B x C x H x W`` -> schedule ``B x H x W`` in [0, 1] (float32).

    See :func:`attribute` for the arguments; ``config`` holds every hyperparameter.
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    config.validate()
    _check_flags(return_trace, progress)
    budget = TimeBudget(max_seconds, start, images.device)
    config, precision = _resolved(config, images)
    if images.device.type == "cpu" and os.environ.get(MALLOC_ENV) == "1":
        tune_malloc()
    layer = resolve_layer(model, layer)
    if layer is not None and config.init != "noise":
        raise ValueError(f"init={config.init!r} starts from a class-score map; feature saliency (layer=) "
                         "needs init='noise'")
    args = additional_forward_args
    args = () if args is None else tuple(args) if isinstance(args, (tuple, list)) else (args,)
    if any(m.training for m in model.modules()):
        warn_caller("the model is in train mode; SaS evaluates it in eval mode (BatchNorm, dropout) "
                    "and restores train mode afterwards")

    with autograd_on(model), guarded_model(model):
        images = outside_inference(images.detach())
        args = tuple(outside_inference(a) for a in args)
        with torch.no_grad():
            logits = model_logits(model, images, args, classifier=layer is None)
        target = resolve_target(target, logits) if layer is None else None
        objective = Objective(model, images, target, layer, args)
        config = dataclasses.replace(config, max_batch=config.max_batch or default_max_batch(
            objective, images, config.precision == "bf16"))
        saliency, trace = _optimise(objective, images, config, budget, return_trace, progress)
    if not return_trace:
        return saliency
    trace.precision, trace.precision_reason = precision
    return saliency, trace


def _optimise(objective: Objective, images: torch.Tensor, config: SaSConfig, budget: TimeBudget,
              return_trace: bool, progress: bool | None) -> tuple:
    """(saliency, :class:`SaSTrace` or None): the pre-mask's start and the iterations of the run."""
    b, _, h, w = images.shape
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32   # of the masks
    pyramid = ops.blur_pyramid(images.to(dtype), config.levels, config.max_blur, backend=config.backend)
    r = config.window // 2
    generator = torch.Generator().manual_seed(config.seed)
    noise = torch.randn(1, 1, h + 2 * r, w + 2 * r, generator=generator)
    premask = initial_premask(noise, objective, images, config)
    iteration = IterationRunner(premask, pyramid, objective, config)

    modes = mode_names(config.mode)
    points = set(_trace_points(config)) if return_trace else set()
    ends = _end_scores(objective, pyramid, modes) if return_trace else None
    recorded = {m: [] for m in modes}
    snapshots, losses = [], []
    moved = torch.zeros(b, dtype=torch.bool, device=images.device)   # a non-zero gradient seen, per image
    watch = FiniteWatch(modes, config.iterations, images.device)
    tail, mean, averaged = config.average_start(), None, 0       # the tail average of the pre-mask
    bar = tqdm(range(config.iterations), desc="SaS", leave=False,
               disable=None if progress is None else not progress)
    budget.begin()
    for it in bar:
        if not budget.allows(it):
            break
        if it in points:
            snapshots.append(_saliency(premask, config))
        step = iteration()
        losses.append(step.loss.clone())
        moved |= premask.grad.flatten(1).ne(0).any(1)
        watch.update(it, step.scores, premask)
        if tail is not None and it >= tail:
            averaged += 1
            mean = premask.detach().clone() if mean is None else mean.lerp_(premask.detach(), 1 / averaged)
        if it in points:
            for m in modes:
                inner = torch.full((b, config.num_masks - 2), float("nan"), device=images.device)
                inner[:, iteration.index.to(images.device)] = step.scores[m]
                recorded[m].append(torch.cat([ends[m][:, :1], inner, ends[m][:, 1:]], 1))
    bar.close()
    done = len(losses)
    if done < config.iterations:
        watch.check()
    zero_gradient = ~moved.cpu()
    if bool(zero_gradient.any()):
        warn_caller(f"image(s) {zero_gradient.nonzero().flatten().tolist()} got a zero gradient in every "
                    f"one of {done} iterations: the model's score does not depend on the masked image "
                    f"(or sharpness={config.sharpness:g} makes every mask binary), so their map is the "
                    "random start, not an explanation", RuntimeWarning)
    saliency = _saliency(premask if mean is None else mean, config)
    if not return_trace:
        return saliency, None
    passes = torch.full((b,), config.init_passes() + done * config.passes_per_iteration(), dtype=torch.long)
    return saliency, SaSTrace(areas=mask_areas(config.num_masks), iterations=sorted(p for p in points if p < done),
                              scores={m: torch.stack(v) for m, v in recorded.items()},
                              saliency=torch.stack(snapshots),
                              loss=torch.stack(losses) * iteration.sampler.weight, passes=passes,
                              zero_gradient=zero_gradient)


def _saliency(premask: torch.Tensor, config: SaSConfig) -> torch.Tensor:
    """The schedule of ``premask``, min-max normalised per image (paper eq. 8): ``B x H x W`` float32."""
    with torch.no_grad():
        schedule = ops.smooth_softmax_pool(premask, config.window, config.beta,
                                           backend=config.backend).squeeze(1)
    lo = schedule.amin(dim=(1, 2), keepdim=True)
    span = schedule.amax(dim=(1, 2), keepdim=True) - lo
    saliency = torch.where(span > 0, (schedule - lo) / span.clamp_min(1e-30), torch.zeros_like(schedule))
    return saliency.float()


class _FromPreset:
    """Default of :func:`attribute`'s config arguments: the preset's value is used."""

    def __repr__(self) -> str:
        return "<the preset's value>"


FROM_PRESET = _FromPreset()


def attribute(model: nn.Module, images: torch.Tensor, target=None, *, mode: str = FROM_PRESET,
              num_masks: int = FROM_PRESET, iterations: int = FROM_PRESET, layer=None,
              seed: int = FROM_PRESET, backend: str = FROM_PRESET, preset: str = "default",
              return_trace: bool = False, progress: bool | None = None,
              additional_forward_args=None, max_seconds: float | None = None, **options):
    """Saliency as a Schedule for a batch of images: ``B x H x W`` maps in [0, 1].

    The algorithm (pre-mask -> schedule -> masks at K areas -> insertion / deletion scores of
    the masked images -> Adam on the pre-mask; docs/SPEC.md sections 2-4) is written out in
    :meth:`SaS.attribute`, the same computation with a ``B x 1 x H x W`` result.
    ``mode``, ``num_masks``, ``iterations``, ``seed``, ``backend`` and ``**options`` left out
    take the preset's value.

    Args:
        model: classifier ``B x C x H x W -> B x classes`` (logits); used in eval mode, left as found.
        images: ``B x C x H x W`` floating point, normalised as the model expects; any H, W
            at least the smoothing window. The schedule and masks are computed in float64 for
            float64 images, in float32 otherwise.
        target: class per image: an int (every image), a list of B ints, or a LongTensor of B
            (or one) entries; None = the model's top-1 class.
        mode: loss of paper eq. 7: ``"insertion"``, ``"deletion"`` or ``"both"``.
        num_masks: K, masks of areas ``k / (K - 1)``, from fully OFF to fully ON (>= 3).
        iterations: Adam steps on the pre-mask (>= 1).
        layer: an ``nn.Module`` inside ``model`` (or its name): feature saliency (paper eq. 9),
            ``sum_k ||f^l(x) - f^l(Mask(x, m_k))||^2`` minimised on insertion images
            (maximised on deletion images); ``target`` is then ignored.
        seed: seed of the N(0, 1) pre-mask init (the same for every image of the batch, so an
            image's result does not depend on its batch-mates).
        backend: ``"auto"``, ``"reference"``, ``"triton"`` or ``"cpp"`` (see :mod:`sas_fast.ops`).
        preset: a name in :data:`sas_fast.config.PRESETS` (or a ``SaSConfig``) whose settings
            the arguments given override. ``"default"`` is the ``fastest`` schedule (2 of the
            ``num_masks - 2`` inner areas per iteration, so ``num_masks - 2`` must be even, or
            pass ``area_samples``); ``"paper-cifar"`` is the paper's (every area).
        return_trace: also return a :class:`SaSTrace` (figure-3 score profiles).
        progress: show a progress bar (None: only on a terminal).
        additional_forward_args: extra positional arguments of ``model``; tensors whose first
            dimension is B are indexed per image.
        max_seconds: a wall-clock budget for the whole call: no iteration is started that
            would end after it (estimated from the mean of those run), so fewer than
            ``iterations`` may run; the map is then the one after the iterations run (what a
            run with that many ``iterations`` gives, with a constant learning rate).
            ``trace.passes`` counts what ran. None (default): no budget.
        **options: any other :class:`sas_fast.config.SaSConfig` field (``lr``, ``window``,
            ``max_blur``, ``sharpness``, ``max_batch``, ``implicit_grad``, ``cuda_graph``, ...;
            ``precision``: ``"auto"`` (default: bf16 autocast where the device computes bf16
            natively and the images are float32, see :mod:`sas_fast.precision`), ``"fp32"``, ``"bf16"``).

    Returns:
        ``B x H x W`` float32 in [0, 1] on the images' device (min-max normalised schedule,
        paper eq. 8); with ``return_trace`` a tuple ``(saliency, trace)``.

    Raises ``ValueError`` naming the argument for a bad input or a run that cannot fit in memory
    (:mod:`sas_fast.fits`), before any work; ``RuntimeError`` if another thread is using the
    model. Warns (``RuntimeWarning``, and ``trace.zero_gradient``) when an image's pre-mask got no
    gradient at all. Nothing process-wide is changed: glibc's malloc settings
    (:func:`sas_fast.cpu_memory.tune_malloc`) are applied only with ``SAS_FAST_TUNE_MALLOC=1``
    (the ``sas-fast`` command applies them in its own process).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> import sas_fast
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
        >>> images = torch.randn(2, 3, 16, 12)          # B x C x H x W, any H, W >= window
        >>> saliency = sas_fast.attribute(model, images, target=3, iterations=5, num_masks=6)
        >>> saliency.shape, saliency.dtype
        (torch.Size([2, 16, 12]), torch.float32)
        >>> float(saliency.amin()), float(saliency.amax())
        (0.0, 1.0)
    """
    given = dict(mode=mode, num_masks=num_masks, iterations=iterations, seed=seed, backend=backend)
    config = make_config(preset, **{k: v for k, v in given.items() if v is not FROM_PRESET}, **options)
    return run_sas(model, images, target, layer=layer, config=config, return_trace=return_trace,
                   progress=progress, additional_forward_args=additional_forward_args,
                   max_seconds=max_seconds)

