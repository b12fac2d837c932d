"""One SaS optimisation step: pre-mask -> schedule -> thresholds -> masked images -> loss -> gradient
(the masks themselves are recomputed inside the masked-images op, never stored).

Backend-agnostic: every tensor op goes through :mod:`sas_fast.ops`. The model's side is an
:class:`Objective`, which turns a batch of masked images into one score per image
(class logit, or feature distance for feature saliency, paper eq. 9).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import ops
from .config import SaSConfig

#: sign of each mode's score in the loss: class scores are maximised on insertion images and
#: minimised on deletion images (paper eq. 7); feature distances the other way round (eq. 9).
_CLASS_SIGN = {"insertion": -1.0, "deletion": 1.0}
_FEATURE_SIGN = {"insertion": 1.0, "deletion": -1.0}


def mode_names(mode: str) -> tuple:
    """``"both"`` -> ("insertion", "deletion"); otherwise the mode itself."""
    return ("insertion", "deletion") if mode == "both" else (mode,)


def mask_areas(num_masks: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Areas ``a_k = k / (K - 1)``, k = 0..K-1: from the fully-OFF to the fully-ON mask, ``[K]``."""
    return torch.linspace(0.0, 1.0, num_masks, dtype=dtype, device=device)


class _StopForward(Exception):
    """Raised by the feature hook: the layers after the captured one are not needed."""


class Objective:
    """Scores of masked images for one batch of explained images.

    Class saliency: ``score = f(x)[target]`` (a logit). Feature saliency (``layer`` given):
    ``score = || f^l(x_clean) - f^l(x) ||^2``. ``scores(x, rows)`` takes masked images
    ``N x C x H x W`` and ``rows`` (LongTensor[N], the explained image each belongs to).
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor,
                 layer: nn.Module | None = None, forward_args: tuple = ()):
        self.model, self.target, self.layer = model, target, layer
        self.forward_args = forward_args
        self.batch, self.input_dtype = images.shape[0], images.dtype
        self.sign = _FEATURE_SIGN if layer is not None else _CLASS_SIGN
        self.reference = None
        if layer is not None:
            with torch.no_grad():
                self.reference = self._features(images, torch.arange(self.batch, device=images.device))

    def _args(self, rows: torch.Tensor) -> tuple:
        """Extra forward arguments for these rows: tensors with a batch dimension are indexed."""
        return tuple(a[rows] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == self.batch
                     else a for a in self.forward_args)

    def _features(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        captured = []

        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ValueError(f"layer output must be a tensor, got {type(output).__name__}")
            if not output.is_floating_point():
                raise ValueError(f"layer output must be a floating-point tensor (feature distances are "
                                 f"differentiated), got dtype {output.dtype}; choose another layer")
            captured.append(output)
            raise _StopForward

        handle = self.layer.register_forward_hook(hook)
        try:
            self.model(x, *self._args(rows))
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ValueError("the layer given for feature saliency was not called by the model's forward")
        return captured[0]

    def scores(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """One score per masked image, ``[N]``; ``x`` is cast to the explained images' dtype."""
        x = x.to(self.input_dtype)
        if self.layer is None:
            logits = self.model(x, *self._args(rows))
            return logits.gather(1, self.target[rows].unsqueeze(1)).squeeze(1)
        feats = self._features(x, rows)
        return (feats - self.reference[rows]).flatten(1).square().sum(1)


@dataclass
class StepResult:
    """What one step reports: per-image loss ``[B]``, scores ``{mode: B x K'}`` of the
    evaluated masks (detached), and the solved thresholds ``B x K'`` for the warm start."""

    loss: torch.Tensor
    scores: dict
    thresholds: torch.Tensor


def input_channels_last(config: SaSConfig, device: torch.device) -> bool:
    """Whether the masked images reach the model channels-last: ``config.channels_last``, or if
    None, with a bf16 model and on the CPU in any precision."""
    if config.channels_last is not None:
        return config.channels_last
    return config.precision == "bf16" or device.type == "cpu"


class StepConstants:
    """What every step of a run reuses, built once: the default areas (the K - 2 inner areas
    ``k / (K - 1)``), per number K' of evaluated areas ``rows`` ``[B M K']`` (the explained
    image of each masked image) and ``sign`` ``B x M x K'`` (each score's sign in the loss), and
    the model input's memory layout (``config.channels_last``; by default channels-last with a
    bf16 model and on the CPU in any precision: fp32 SaS iterations 1.18-1.34x faster on an AVX2
    CPU, RESULTS.md "Speed on the CPU"), until a model refuses it (:func:`model_scores`)."""

    def __init__(self, premask: torch.Tensor, objective: Objective, config: SaSConfig):
        self.batch, self.device, self.modes = premask.shape[0], premask.device, mode_names(config.mode)
        self.areas = mask_areas(config.num_masks, premask.dtype, premask.device)[1:-1]
        self.mode_sign = [objective.sign[m] for m in self.modes]
        self.channels_last = input_channels_last(config, premask.device)
        self._rows_and_sign = {}

    def rows_and_sign(self, num_areas: int) -> tuple:
        """``(rows [B M K'], sign B x M x K')`` for ``num_areas`` = K' evaluated areas (cached)."""
        if num_areas not in self._rows_and_sign:
            b, m = self.batch, len(self.modes)
            rows = torch.arange(b, device=self.device).repeat_interleave(m * num_areas)
            sign = torch.tensor(self.mode_sign, device=self.device).view(1, m, 1).expand(b, m, num_areas)
            self._rows_and_sign[num_areas] = rows, sign.contiguous()
        return self._rows_and_sign[num_areas]


def sas_step(premask: torch.Tensor, pyramid: torch.Tensor, objective: Objective,
             config: SaSConfig, thresholds: torch.Tensor | None,
             areas: torch.Tensor | None = None, constants: StepConstants | None = None,
             combine=None) -> StepResult:
    """Forward and backward of one step; accumulates ``d loss / d premask`` into ``premask.grad``.

    ``premask`` ``B x 1 x (H+2r) x (W+2r)``, ``pyramid`` ``B x L x C x H x W``, ``areas`` ``[K']``
    the mask areas evaluated this step (default: the K - 2 inner areas ``k / (K - 1)``; the
    fully-OFF and fully-ON masks add constants, SPEC 2.8), ``thresholds`` ``B x K'`` or None,
    ``constants`` the run's :class:`StepConstants` (built here if not given).
    Schedule, then the thresholds alone (:func:`ops.solve_thresholds`), then the model's input
    batch straight from them (:func:`ops.masked_images`: the masks are never stored). The masked
    images go through the model in micro-batches of at most ``config.max_batch``; their input
    gradients are accumulated and then pushed back through the mask pipeline once,
    so the result does not depend on ``max_batch``. ``combine`` (optional) takes the schedule
    gradients of the K' areas one by one, ``K' x B x 1 x H x W``, and returns the schedule
    gradient to push into the pre-mask (:mod:`sas_fast.control_variate`). Loss (eq. 7):
    insertion ``-sum_k z_k``, deletion ``+sum_k z_k`` (signs swapped for feature saliency, eq. 9). Nothing here copies
    between host and device or waits for the device, so a CUDA graph can capture the step.
    """
    backend = config.backend
    constants = constants or StepConstants(premask, objective, config)
    areas = constants.areas if areas is None else areas
    b, modes = premask.shape[0], constants.modes
    rows, sign = constants.rows_and_sign(areas.numel())
    schedule = ops.smooth_softmax_pool(premask, config.window, config.beta, backend=backend)
    thresholds = ops.solve_thresholds(schedule, areas, config.sharpness, thresholds,
                                      tol=config.threshold_tol, max_iter=config.threshold_max_iter,
                                      backend=backend)
    images = ops.masked_images(schedule, thresholds, pyramid, config.sharpness, config.mode,
                               config.implicit_grad, channels_last=constants.channels_last,
                               backend=backend)
    batch = images.detach().flatten(0, 1)                  # (B M K') x C x H x W, the model's input

    chunk = config.max_batch or batch.shape[0]
    flat_sign = sign.view(-1)
    scores, grads = [], []
    for start in range(0, batch.shape[0], chunk):
        part = slice(start, start + chunk)
        x, s = model_scores(objective, batch if chunk >= batch.shape[0] else batch[part], rows[part],
                            config, constants)
        if s.requires_grad:                                 # else the scores ignore the input
            s.backward(flat_sign[part])                     # d (sum sign * s) / d x
        scores.append(s.detach())
        grads.append(torch.zeros_like(x) if x.grad is None else x.grad)
    grad = grads[0] if len(grads) == 1 else torch.cat(grads)
    grad = grad.unflatten(0, images.shape[:2])
    if combine is None:
        images.backward(grad)
    else:
        schedule.backward(combine(per_area_gradients(images, schedule, grad, len(modes))))

    scores = (scores[0] if len(scores) == 1 else torch.cat(scores)).view(b, len(modes), areas.numel())
    loss = scores.flatten(1).mv(sign[0].flatten())          # sum_{m, k} sign_mk z_bmk, one op
    return StepResult(loss=loss, scores={m: scores[:, i] for i, m in enumerate(modes)},
                      thresholds=thresholds)


def model_scores(objective: Objective, x: torch.Tensor, rows: torch.Tensor, config: SaSConfig,
                 constants: StepConstants) -> tuple:
    """``(x, scores)``: the model's scores of the masked images ``x`` (made a leaf that
    requires grad), under bf16 autocast if ``config.precision`` is bf16. A model that cannot
    take a channels-last input (a ``.view`` after a convolution, say) gets the images in the
    default layout instead, for this call and the rest of the run; an error it raises in that
    layout too, or running out of memory, is the caller's to see."""
    for last_try in (not constants.channels_last or x.is_contiguous(), True):
        x = x.detach().contiguous().requires_grad_(True) if last_try else x.requires_grad_(True)
        try:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16",
                                cache_enabled=not config.cuda_graph):
                return x, objective.scores(x, rows).float()
        except torch.cuda.OutOfMemoryError:
            raise                                           # not the layout's fault
        except RuntimeError:
            if last_try:
                raise
            constants.channels_last = False


def per_area_gradients(images: torch.Tensor, schedule: torch.Tensor, grad: torch.Tensor,
                       modes: int) -> torch.Tensor:
    """``K' x B x 1 x H x W``: the schedule gradient of each evaluated area alone (its insertion
    and deletion images), from ``grad`` ``B x (M K') x C x H x W``, the input gradients of the
    model's batch. One backward of the masked-images op per area: the areas share no
    threshold, so the K' gradients sum to the step's gradient."""
    areas = grad.shape[1] // modes
    per_area = grad.unflatten(1, (modes, areas))
    out = []
    for k in range(areas):
        alone = torch.zeros_like(per_area)
        alone[:, :, k] = per_area[:, :, k]
        out.append(torch.autograd.grad(images, schedule, alone.flatten(1, 2), retain_graph=True)[0])
    return torch.stack(out)
